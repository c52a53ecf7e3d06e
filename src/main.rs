//! relaunch: hold the listening sockets, hand them to a server by the systemd
//! protocol, and restart or redeploy it without refusing a connection.

mod backoff;
mod cli;
mod compat;
mod control;
mod duration;
mod error;
mod fallback;
mod inherit;
mod notify;
mod placeholders;
mod procscan;
mod run;
mod sockets;
mod spawn;
mod spec;
mod supervisor;
mod who;
mod wrapper;

use clap::Parser;

use crate::cli::{Cli, Sub};
use crate::control::Request;
use crate::error::{Error, Result};

fn main() {
    // Before anything else: what our parent gave us, and sane fds 0-2.
    spawn::ensure_std_fds();
    let snapshot = run::Snapshot::take();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(cli.run.quiet);
    let code = match dispatch(cli, snapshot) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relaunch: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli, snapshot: run::Snapshot) -> Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the event loop: {e}")))?;
    match cli.command {
        None => runtime.block_on(run::run(cli.run, snapshot)),
        Some(Sub::Who(args)) => who::run(&args),
        Some(Sub::Status { client, json }) => {
            runtime.block_on(control::client(&client, Request::Status, json))
        }
        Some(Sub::Reload { client }) => {
            runtime.block_on(control::client(&client, Request::Reload, false))
        }
        Some(Sub::Stop { client }) => {
            runtime.block_on(control::client(&client, Request::Stop, false))
        }
    }
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
