//! The one reaper: `waitpid(-1)` for every exit, ours or an orphan's (we are
//! a subreaper, and may be PID 1), and the sweep of orphans on the way out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::warn;

use crate::proc;
use crate::supervise::supervisor::ExitStatus;

/// Collects every exited child without blocking.
pub fn reap(mut exited: impl FnMut(i32, ExitStatus)) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exited(pid.as_raw(), ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                exited(pid.as_raw(), ExitStatus::Signal(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Whether any process of the group `pgid` is left (zombies count until
/// they are reaped). A group outlives its leader; its id is not reused while
/// a member lives.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The processes of group `pgid`, zombies included (one nobody reaps keeps
/// the group alive), for `relaunch status`. Reads /proc: call it off the
/// event loop.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids: Vec<i32> = proc::pids()
        .into_iter()
        .filter(|&pid| proc::stat(pid).is_some_and(|s| s.pgrp == pgid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Processes that outlived their parents landed on us (a subreaper). None may
/// keep a socket once we are gone: stop signal, then SIGKILL after the timeout.
pub async fn end_orphans(sig: Signal, timeout: Duration) {
    let me = std::process::id() as i32;
    let kill_at = Instant::now() + timeout;
    let mut told = HashSet::new();
    let mut killed = false;
    loop {
        reap(|_, _| {});
        if !proc::available() {
            // Said at start too; here, whether anything was left behind.
            if matches!(
                waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ) {
                warn!(
                    "processes the server left behind are still running; without /proc relaunch \
                     cannot find them to stop them"
                );
            }
            return;
        }
        let left: Vec<i32> = proc::tree(&[me]).into_iter().filter(|&p| p != me).collect();
        if left.is_empty() {
            return;
        }
        for &pid in &left {
            if told.insert(pid) {
                warn!(
                    pid,
                    "an orphan outlived its parent; sending {}",
                    sig.as_str()
                );
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        if killed && Instant::now() >= kill_at + Duration::from_secs(5) {
            warn!(pids = ?left, "processes survive SIGKILL (stuck in the kernel?); leaving them");
            return;
        }
        if !killed && Instant::now() >= kill_at {
            for &pid in &left {
                warn!(pid, "orphan did not stop; sending SIGKILL");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
