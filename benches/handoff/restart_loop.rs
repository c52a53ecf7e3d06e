//! `handoff --loop -- COMMAND...`: the stop-then-start restart loop people
//! pair with systemd-style activation today. It runs COMMAND; on SIGHUP it
//! sends SIGTERM, waits for the exit, then starts COMMAND again; on
//! SIGTERM/SIGINT it stops COMMAND and exits. Fds it inherited (systemfd's
//! socket) pass to every COMMAND, so the socket outlives the restarts;
//! wrapping systemd-socket-activate instead, each start binds anew.
//!
//! It announces `handoff-loop: pid N` on stderr so the bench can signal it
//! when something (systemfd) execs into it.

use std::ffi::OsString;
use std::process::{Child, Command, ExitCode};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

pub fn main(command: &[OsString]) -> ExitCode {
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-loop: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &[OsString]) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("nothing to run: give a command after --".into());
    };
    // Installed before the first child, so an early SIGHUP is not lost.
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let start = || {
        Command::new(program)
            .args(args)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))
    };
    eprintln!("handoff-loop: pid {}", std::process::id());
    let mut child = start()?;
    for sig in signals.forever() {
        stop(&mut child);
        if sig != SIGHUP {
            return Ok(());
        }
        child = start()?;
    }
    Ok(())
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
    }
    let _ = child.wait();
}
