//! The handoff benchmark: relaunch beside what people do today, on the same
//! machine, in the same run. `docs/bench.md` explains every figure.
//!
//!     cargo bench --bench handoff -- --quick    # < 90 s on 2 cores
//!     cargo bench --bench handoff               # the full run
//!     cargo bench --bench handoff -- --smoke    # CI: one restart each, no thresholds
//!
//! The binary is also the one server every scenario runs (`--server`) and the
//! stop-then-start loop the peers are paired with (`--loop`): one program,
//! so no scenario gets a faster server than another.
//!
//! Outputs: a table on stdout, `target/bench/handoff.json`,
//! `target/bench/handoff.svg`, and every process's log in `target/bench/logs/`.
//! Under `cargo test --benches` (no `--bench` flag) it only runs its
//! self-checks of the pure parts, so tests stay fast.

mod canary;
mod chart;
mod connect_cost;
mod devloop;
mod drain;
mod footprint;
mod keep;
mod load;
mod on_demand;
mod plan;
mod procs;
mod readiness;
mod report;
mod restart_loop;
mod scenario;
mod scenarios;
mod server;
mod stats;
mod targets;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "handoff",
    about = "relaunch's handoff benchmark (see docs/bench.md)"
)]
struct Args {
    /// A short run: one delay (0.3 s), two restarts per scenario, fewer reloads at scale
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// For CI: one restart per scenario, tiny durations, no thresholds
    #[arg(long)]
    smoke: bool,
    /// Run only the scenarios whose name contains this (repeatable)
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Skip the footprint measurements (idle, throughput, scale)
    #[arg(long)]
    no_footprint: bool,
    /// Run every scenario with this server start-up delay only, in seconds
    #[arg(long, value_name = "SECS")]
    app_delay: Option<f64>,
    /// Restarts per scenario
    #[arg(long, value_name = "N")]
    restarts: Option<usize>,
    /// Passed by `cargo bench`; without it (`cargo test`) only the self-checks run
    #[arg(long, hide = true)]
    bench: bool,

    /// Server mode: the HTTP server every scenario runs
    #[arg(long, hide = true)]
    server: bool,
    /// Server mode: seconds to sleep before touching the socket
    #[arg(long, hide = true, default_value_t = 0.0)]
    delay: f64,
    /// Server mode: do not send READY=1
    #[arg(long, hide = true)]
    no_notify: bool,
    /// Server mode: bind 127.0.0.1:PORT itself (SO_REUSEADDR, retry on EADDRINUSE)
    #[arg(long, hide = true, value_name = "PORT")]
    naive: Option<u16>,

    /// Client mode: connect to a listener of its own, accept, close, over and over, for --secs
    #[arg(long, hide = true)]
    connects: bool,
    #[arg(long, hide = true, default_value_t = 1.0)]
    secs: f64,

    /// Loop mode: run COMMAND; on SIGHUP stop it, then start it again
    #[arg(long = "loop", hide = true)]
    restart_loop: bool,
    #[arg(last = true, hide = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.server {
        return server::main(server::Options {
            delay: args.delay,
            notify: !args.no_notify,
            naive_port: args.naive,
        });
    }
    if args.connects {
        return connect_cost::client(args.secs);
    }
    if args.restart_loop {
        return restart_loop::main(&args.command);
    }
    if !args.bench {
        return self_check();
    }
    let mut plan = if args.smoke {
        plan::Plan::smoke()
    } else if args.quick {
        plan::Plan::quick()
    } else {
        plan::Plan::full()
    };
    if let Some(d) = args.app_delay {
        plan.delays = vec![d];
    }
    if let Some(n) = args.restarts {
        plan.restarts = n;
    }
    match scenarios::run_all(&plan, &args.only, !args.no_footprint) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handoff: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Check = fn() -> Result<(), String>;

/// What `cargo test --benches` runs: the pure parts, no processes.
fn self_check() -> ExitCode {
    let checks: &[(&str, Check)] = &[
        ("stats", stats::self_check),
        ("server", server::self_check),
        ("targets", targets::self_check),
        ("load", load::self_check),
        ("footprint", footprint::self_check),
        ("devloop", devloop::self_check),
        ("connect_cost", connect_cost::self_check),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        if let Err(e) = check() {
            eprintln!("handoff self-check {name}: FAILED: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return ExitCode::FAILURE;
    }
    eprintln!(
        "handoff: self-checks ok ({} groups); run `cargo bench --bench handoff -- --quick` for numbers",
        checks.len()
    );
    ExitCode::SUCCESS
}
