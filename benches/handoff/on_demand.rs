//! The figures for `--lazy` and `--idle-stop`, printed as lines after
//! the scenarios (`--only on-demand` runs just these):
//!
//! - first request under `--lazy`: from connect to the answer, with a
//!   server that takes D to start. Expected: D plus the start itself, the
//!   same allowance as a crash restart (D + 150 ms).
//! - `--idle-stop 1s`: from the last answer to relaunch telling the child to
//!   stop (expected between 1 s and 1 s + one measuring interval, 1.25 s),
//!   then, once it is gone, the next request's wait (a new start: D again).
//!
//! Every request must be answered.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::load::request;
use crate::plan::Plan;
use crate::procs::Proc;
use crate::stats;
use crate::targets::{Ctx, listening_port};

const WAIT: Duration = Duration::from_secs(30);
/// `--idle-stop` used here, and the most a stop may lag behind it (one
/// measuring interval, a quarter of it).
const IDLE_STOP_S: f64 = 1.0;
const IDLE_SLACK_S: f64 = 0.25;
/// A start's allowance beyond the server's own delay (as for the crash
/// scenario), and a stop decision's (a late timer on a busy machine, the
/// log line).
const START_SLACK_MS: f64 = 150.0;
const STOP_SLACK_MS: f64 = 50.0;

/// Prints what it measured and returns the acceptance lines.
pub fn run(plan: &Plan, ctx: &Ctx) -> Vec<(String, bool)> {
    let rounds = if plan.mode == "smoke" { 1 } else { 3 };
    let delay = plan.delays[0];
    let mut lines = Vec::new();
    match first_requests(ctx, delay, rounds) {
        Ok(ms) => {
            let median = stats::median(&ms);
            println!(
                "on demand, --lazy: first request answered after {} ms (server start {delay} s)",
                join(&ms)
            );
            let limit = delay * 1000.0 + START_SLACK_MS;
            lines.push((
                format!(
                    "--lazy: the first request waits about the server's start, <= {limit:.0} ms median (got {median:.0} ms)"
                ),
                median <= limit,
            ));
        }
        Err(e) => {
            println!("on demand, --lazy: FAILED: {e}");
            lines.push((format!("--lazy first request: {e}"), false));
        }
    }
    match idle_cycles(ctx, delay, rounds) {
        Ok((stopped, woken)) => {
            println!(
                "on demand, --idle-stop {IDLE_STOP_S} s: told to stop {} ms after the last answer; \
                 once gone, the next request answered after {} ms",
                join(&stopped),
                join(&woken)
            );
            let lo = IDLE_STOP_S * 1000.0;
            let hi = (IDLE_STOP_S + IDLE_SLACK_S) * 1000.0 + STOP_SLACK_MS;
            let worst = stopped.iter().copied().fold(0.0, f64::max);
            let least = stopped.iter().copied().fold(f64::MAX, f64::min);
            lines.push((
                format!(
                    "--idle-stop {IDLE_STOP_S} s: stops {lo:.0}-{hi:.0} ms after the last answer (got {least:.0}-{worst:.0} ms)"
                ),
                least >= lo && worst <= hi,
            ));
        }
        Err(e) => {
            println!("on demand, --idle-stop: FAILED: {e}");
            lines.push((format!("--idle-stop cycles: {e}"), false));
        }
    }
    lines
}

fn join(ms: &[f64]) -> String {
    ms.iter()
        .map(|m| format!("{m:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// relaunch `args` over the bench server with `delay`; it and its address.
fn start(ctx: &Ctx, name: &str, args: &[&str], delay: f64) -> Result<(Proc, SocketAddr), String> {
    let mut cmd = Command::new(&ctx.relaunch);
    cmd.args(["-l", "127.0.0.1:0"])
        .args(args)
        .arg("--")
        .arg(&ctx.bench)
        .args(["--server", "--delay", &delay.to_string()])
        .env("RUST_LOG", "info");
    let p = Proc::spawn(name, &mut cmd, &ctx.log_dir)?;
    let port = p
        .lines
        .wait_for(WAIT, |ls| ls.iter().find_map(|l| listening_port(l)))
        .ok_or("relaunch did not log its port")?;
    Ok((p, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn wait_line(p: &Proc, needle: &str, n: usize) -> Result<(), String> {
    p.lines
        .wait_for(WAIT, |ls| {
            (ls.iter().filter(|l| l.contains(needle)).count() >= n).then_some(())
        })
        .ok_or_else(|| format!("relaunch never logged {needle:?} ({n}x)"))
}

fn timed_request(addr: SocketAddr) -> Result<f64, String> {
    let t = Instant::now();
    request(addr, WAIT).map_err(|e| format!("a request failed: {e}"))?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Connect to the answer of a fresh relaunch --lazy's first request, ms.
fn first_requests(ctx: &Ctx, delay: f64, rounds: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for round in 0..rounds {
        let (mut p, addr) = start(ctx, &format!("lazy-{round}"), &["--lazy"], delay)?;
        wait_line(&p, "waiting for the first connection", 1)?;
        let ms = timed_request(addr);
        p.stop(Duration::from_secs(5));
        out.push(ms?);
    }
    Ok(out)
}

/// (last answer to the stop decision, next request's wait), ms each.
fn idle_cycles(ctx: &Ctx, delay: f64, rounds: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (mut p, addr) = start(
        ctx,
        "idle-stop",
        &["--lazy", "--idle-stop", &format!("{IDLE_STOP_S}s")],
        delay,
    )?;
    let mut stopped = Vec::new();
    let mut woken = Vec::new();
    let result = (|| {
        timed_request(addr)?;
        for n in 1..=rounds {
            let last = Instant::now();
            wait_line(&p, "no connection for", n)?;
            stopped.push(last.elapsed().as_secs_f64() * 1000.0);
            // Gone, so the next request meets a fresh start.
            wait_line(&p, "stopped while idle", n)?;
            woken.push(timed_request(addr)?);
        }
        Ok::<(), String>(())
    })();
    p.stop(Duration::from_secs(5));
    result.map(|()| (stopped, woken))
}
