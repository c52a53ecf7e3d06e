//! relaunch: hold the listening sockets, hand them to a server by the systemd
//! protocol, and restart or redeploy it without refusing a connection.

mod cli;
mod control;
mod counts;
mod duration;
mod error;
mod exit;
mod intercept;
mod logging;
mod metrics;
mod plan;
mod proc;
mod ready;
mod serial;
mod serve;
mod sigmask;
mod sockets;
mod supervise;
mod table;
mod version;
mod who;

use clap::Parser;

use crate::cli::{Cli, Shell, Sub};
use crate::control::Request;
use crate::error::{Error, Result};
use crate::supervise::{driver, handover, spawn};

fn main() {
    // Before anything else: what our parent gave us, and sane fds 0-2.
    spawn::ensure_std_fds();
    spawn::raise_fd_limit(std::env::var_os(handover::ENV).is_some());
    one_malloc_arena();
    // An upgrade's handshake, run by the relaunch that would exec us.
    if std::env::args_os().nth(1).as_deref() == Some(handover::CHECK_FLAG.as_ref()) {
        upgrade_check();
    }
    // We are the new image of a relaunch that upgraded itself.
    if let Some(value) = std::env::var_os(handover::ENV) {
        std::process::exit(upgraded(&value));
    }
    let snapshot = plan::Snapshot::take();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            logging::print(
                3,
                &format!("relaunch: {}", usage_error(&e.render().to_string())),
            );
            std::process::exit(2);
        }
    };
    logging::init(cli.run.quiet, cli.run.log_format == "json");
    let code = match dispatch(cli, snapshot) {
        Ok(code) => code,
        Err(e) => {
            logging::print(3, &format!("relaunch: error: {e}"));
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Every thread allocates from the main arena. glibc gives each thread
/// that meets a locked arena one of its own (up to 8 per core), and each
/// keeps the pages it touched: with a bind-interception thread per child, a
/// few hundred KiB more after every batch of reloads. relaunch's threads
/// allocate little and seldom, so the shared lock costs nothing.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: one integer option, set before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// clap's error in our shape: one line, then its tip (or ours) as the hint.
fn usage_error(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut what = lines
        .next()
        .unwrap_or("error: invalid command line")
        .to_string();
    // "the following required arguments were not provided:" names them next.
    if what.ends_with(':')
        && let Some(next) = lines.next()
    {
        what = format!("{what} {next}");
    }
    let rest: Vec<&str> = lines.collect();
    // An invalid value: say which ones are valid.
    if let Some(values) = rest.iter().find(|l| l.starts_with("[possible values: ")) {
        what = format!("{what} {values}");
    }
    let hint = rest
        .iter()
        .find_map(|l| l.strip_prefix("tip: "))
        .unwrap_or("run `relaunch --help` for the options; the server's command goes after --");
    format!("{what}\n  hint: {hint}")
}

/// `relaunch --upgrade-check FORMAT`: the handshake of an upgrade.
#[cold]
#[inline(never)]
fn upgrade_check() -> ! {
    let (code, line) = handover::check::<driver::Carried>(
        std::env::args_os().nth(2).as_deref(),
        std::io::stdin().lock(),
    );
    if code == 0 {
        println!("{line}");
    } else {
        logging::print(3, &line);
    }
    std::process::exit(code);
}

/// The new image: adopt the state and go on serving.
fn upgraded(value: &std::ffi::OsStr) -> i32 {
    let result = handover::take::<driver::Carried>(value).and_then(|state| {
        logging::init(state.carried.driver.quiet(), state.carried.driver.json());
        let runtime = runtime()?;
        let result = runtime.block_on(driver::run(driver::Boot::Adopted(state)));
        runtime.shutdown_background();
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::print(3, &format!("relaunch: error: {e}"));
            e.exit_code()
        }
    }
}

/// One thread runs the loop (fork is well-defined); the blocking pool's
/// threads block every signal, so each one reaches the loop's thread, where
/// an upgrade can keep it pending across the exec.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(|| {
            sigmask::block_all();
        })
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the event loop: {e}")))
}

fn dispatch(cli: Cli, snapshot: plan::Snapshot) -> Result<i32> {
    let runtime = runtime()?;
    let result = match cli.command {
        None => runtime.block_on(driver::run(driver::Boot::Fresh(cli.run, snapshot))),
        Some(Sub::Who(args)) => who::run(&args),
        Some(Sub::Status {
            client,
            check: true,
            ..
        }) => runtime.block_on(control::check(&client)),
        Some(Sub::Status { client, json, .. }) => {
            runtime.block_on(control::client(&client, Request::Status, json))
        }
        Some(Sub::Reload { client }) => {
            runtime.block_on(control::client(&client, Request::Reload, false))
        }
        Some(Sub::Stop { client }) => {
            runtime.block_on(control::client(&client, Request::Stop, false))
        }
        Some(Sub::Upgrade { client, binary }) => {
            // Relative to here, not to where relaunch runs.
            let binary = match binary.map(std::path::absolute).transpose() {
                Ok(b) => b,
                Err(e) => return Err(Error::usage(format!("--binary: {e}"))),
            };
            runtime.block_on(control::client(&client, Request::Upgrade { binary }, false))
        }
        Some(Sub::Completions { shell }) => completions(shell),
    };
    // A /proc read stuck on a hung mount must not keep relaunch from exiting.
    runtime.shutdown_background();
    result
}

/// Written by build.rs from the clap definitions; embedded as text, so the
/// generators are not in the binary.
fn completions(shell: Shell) -> Result<i32> {
    let script = match shell {
        Shell::Bash => include_str!(concat!(
            env!("OUT_DIR"),
            "/assets/completions/relaunch.bash"
        )),
        Shell::Zsh => include_str!(concat!(env!("OUT_DIR"), "/assets/completions/_relaunch")),
        Shell::Fish => include_str!(concat!(
            env!("OUT_DIR"),
            "/assets/completions/relaunch.fish"
        )),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(script.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(0),
        Err(e) => Err(Error::runtime(format!(
            "cannot write the completion script to stdout: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_invalid_value_names_the_valid_ones() {
        use clap::Parser;
        for args in [
            &["relaunch", "completions", "tcsh"][..],
            &["relaunch", "--restart", "sometimes", "--", "true"][..],
        ] {
            let e = super::Cli::try_parse_from(args).unwrap_err();
            let said = super::usage_error(&e.render().to_string());
            assert!(said.contains("[possible values: "), "{args:?}: {said}");
        }
    }

    #[test]
    fn usage_errors_are_one_line_and_a_hint() {
        let clap = "error: the following required arguments were not provided:\n  <COMMAND>...\n\nUsage: relaunch [OPTIONS] -- <COMMAND>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::usage_error(clap),
            "error: the following required arguments were not provided: <COMMAND>...\n  hint: run `relaunch --help` for the options; the server's command goes after --"
        );
        let tip = "error: unexpected argument '-1' found\n\n  tip: to pass '-1' as a value, use '-- -1'\n\nUsage: x\n";
        assert_eq!(
            super::usage_error(tip),
            "error: unexpected argument '-1' found\n  hint: to pass '-1' as a value, use '-- -1'"
        );
    }
}
