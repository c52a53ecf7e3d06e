//! What `--refuse-probes` costs (`--only connect-cost`). seccomp cannot read
//! a connect's address, so with the trap every connect a child makes waits
//! for relaunch's answer: a database pool, a cache client, the resolver's
//! UDP connects. A connect-heavy client (`handoff --connects`: connect to a
//! listener of its own, accept, close both, again, on one thread) runs under
//! relaunch with the trap and without it, in alternating rounds; the line
//! gives connects/s each way and their ratio. Under 0.95 the trap stays
//! opt-in.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::procs::{Proc, free_port};
use crate::stats;
use crate::targets::Ctx;

const WAIT: Duration = Duration::from_secs(30);
/// The ratio (with / without) at which the trap could be on by default.
pub const DEFAULT_ON_AT: f64 = 0.95;

/// Client mode: connects to a listener of its own, accepts and closes both
/// ends, for `secs` (accept and close are not trapped, and nothing else
/// sets the pace); prints the count, then waits to be stopped (relaunch
/// would restart a child that exits).
pub fn client(secs: f64) -> ExitCode {
    let listener = match TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?, l))) {
        Ok(l) => l,
        Err(e) => {
            println!("handoff-connects: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (addr, listener) = listener;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut n, mut failed) = (0u64, 0u64);
    while Instant::now() < end {
        let Ok(s) = TcpStream::connect(addr) else {
            failed += 1;
            continue;
        };
        // RST on close: no TIME_WAIT piling up over the ephemeral ports.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: SO_LINGER with a linger struct on our own socket.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        // On loopback the handshake is done when connect returns.
        let accepted = listener.accept();
        drop(s);
        drop(accepted);
        n += 1;
    }
    println!(
        "handoff-connects: {n} connects in {:.3} s, {failed} failed",
        start.elapsed().as_secs_f64()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Prints what it measured and returns the acceptance line.
pub fn run(plan: &Plan, ctx: &Ctx) -> Vec<(String, bool)> {
    match measure(plan, ctx) {
        Ok((with, without)) => {
            let (w, wo) = (stats::median(&with), stats::median(&without));
            let ratio = w / wo;
            println!(
                "connect cost, --refuse-probes: {w:.0} connects/s with the connect trap, {wo:.0} \
                 without: ratio {ratio:.2} (rounds with: {}; without: {})",
                join(&with),
                join(&without)
            );
            vec![(
                format!(
                    "--refuse-probes: a connect-heavy client keeps {ratio:.2} of its connects/s; \
                     under {DEFAULT_ON_AT} the trap is opt-in (it is)"
                ),
                ratio < DEFAULT_ON_AT,
            )]
        }
        Err(e) => {
            println!("connect cost: FAILED: {e}");
            vec![(format!("connect cost: {e}"), false)]
        }
    }
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// connects/s per round: (with the trap, without).
fn measure(plan: &Plan, ctx: &Ctx) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (secs, rounds) = match plan.mode {
        "smoke" => (0.2, 1),
        "quick" => (1.0, 5),
        _ => (2.0, 7),
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        with.push(rate(ctx, true, secs, round)?);
        without.push(rate(ctx, false, secs, round)?);
    }
    Ok((with, without))
}

fn rate(ctx: &Ctx, trap: bool, secs: f64, round: usize) -> Result<f64, String> {
    let port = free_port()?.to_string();
    let mut cmd = Command::new(&ctx.relaunch);
    cmd.args(["--port", &port, "--ready", "delay:10ms"]);
    if trap {
        cmd.arg("--refuse-probes");
    }
    cmd.arg("--")
        .arg(&ctx.bench)
        .args(["--connects", "--secs", &secs.to_string()])
        .env("RUST_LOG", "info");
    let name = format!(
        "connect-cost-{}-{round}",
        if trap { "trap" } else { "plain" }
    );
    let mut p = Proc::spawn(&name, &mut cmd, &ctx.log_dir)?;
    let line = p.lines.wait_for(WAIT, |ls| {
        ls.iter()
            .find(|l| l.starts_with("handoff-connects:"))
            .cloned()
    });
    p.stop(Duration::from_secs(5));
    let line = line.ok_or_else(|| format!("{name}: the client never reported"))?;
    parse(&line).ok_or_else(|| format!("{name}: cannot read {line:?}"))
}

/// connects/s from "handoff-connects: N connects in S s, F failed".
fn parse(line: &str) -> Option<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n: f64 = words.get(1)?.parse().ok()?;
    let s: f64 = words.get(4)?.parse().ok()?;
    (s > 0.0).then_some(n / s)
}

pub fn self_check() -> Result<(), String> {
    let r = parse("handoff-connects: 5000 connects in 0.500 s, 0 failed");
    if r != Some(10000.0) {
        return Err(format!("parse: {r:?}"));
    }
    Ok(())
}
