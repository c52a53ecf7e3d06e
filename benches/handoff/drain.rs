//! The drain (`--only drain`): an app that dies on SIGTERM
//! (`tests/apps/drain/asyncio_server.py`: asyncio, no signal handler, 30 ms
//! per request, binding its port itself) reloaded N times under the plan's
//! load (one connection per request). Its failed requests with relaunch's
//! default, the drain, beside the same with `--no-drain` (one shared
//! socket: the old generation is stopped while it holds accepted
//! requests). Expected: 0 with the drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::load::{self, Load, Outcome, pause};
use crate::plan::Plan;
use crate::procs::{Proc, find_tool, free_port};
use crate::targets::Ctx;

const WAIT: Duration = Duration::from_secs(30);
/// The acceptance's count of reloads; a smoke run does its one.
const RELOADS: usize = 5;

/// How one run ended.
enum Run {
    /// (failed, answered) requests over the reloads.
    Counted(usize, usize),
    /// This relaunch does not know the flag: what it said.
    Unsupported(String),
}

/// Prints what it measured; returns the acceptance line, and whether a
/// run broke (not a count: relaunch or the app did not do its part).
pub fn run(plan: &Plan, ctx: &Ctx) -> (Vec<(String, bool)>, bool) {
    if find_tool("python3").is_none() {
        println!("drain: skipped (python3 not installed)");
        return (
            vec![("drain: skipped (python3 not installed)".into(), false)],
            false,
        );
    }
    let n = if plan.mode == "smoke" {
        plan.restarts
    } else {
        plan.restarts.max(RELOADS)
    };
    let drain = measure(plan, ctx, n, None);
    let shared = measure(plan, ctx, n, Some("--no-drain"));
    for (what, r) in [("default flags", &drain), ("--no-drain", &shared)] {
        match r {
            Ok(Run::Counted(failed, ok)) => println!(
                "drain, {what}: {failed} failed, {ok} answered over {n} reload(s) of the asyncio app"
            ),
            Ok(Run::Unsupported(said)) => println!(
                "drain, {what}: not run: this relaunch rejects the flag (it said: {said}); \
                 it comes with the drain"
            ),
            Err(e) => println!("drain, {what}: FAILED: {e}"),
        }
    }
    let shown = |r: &Result<Run, String>, what: &str| match r {
        Ok(Run::Counted(failed, _)) => format!("{failed} ({what})"),
        Ok(Run::Unsupported(_)) => format!("n/a ({what}: this relaunch rejects the flag)"),
        Err(_) => format!("broke ({what}, see above)"),
    };
    let reloads = if n == 1 { "reload" } else { "reloads" };
    let line = (
        format!(
            "drain: failed requests over {n} {reloads}: {} vs {}",
            shown(&drain, "drain"),
            shown(&shared, "--no-drain")
        ),
        matches!(drain, Ok(Run::Counted(0, _))),
    );
    (vec![line], drain.is_err() || shared.is_err())
}

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/drain/asyncio_server.py")
}

/// `relaunch --port P [FLAG] -- python3 asyncio_server.py P`, reloaded `n`
/// times under load, each reload waited for through the control socket.
fn measure(plan: &Plan, ctx: &Ctx, n: usize, flag: Option<&str>) -> Result<Run, String> {
    let port = free_port()?;
    let p = port.to_string();
    let name = format!("drain-{}", if flag.is_some() { "shared" } else { "drain" });
    let control = ctx.run_dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(&ctx.relaunch);
    // A reload that never gets ready ends within its own deadline.
    cmd.args(["--port", &p, "--ready-timeout", "20s"])
        .args(flag)
        .arg("--control")
        .arg(&control);
    cmd.arg("--")
        .arg("python3")
        .arg(app())
        .arg(&p)
        .env("RUST_LOG", "info");
    let mut relaunch = Proc::spawn(&name, &mut cmd, &ctx.log_dir)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + WAIT;
    while load::request(addr, Duration::from_secs(2)).is_err() {
        if relaunch.exited() {
            let said = relaunch.lines.tail(3);
            return match flag {
                Some(f) if said.contains("unexpected argument") && said.contains(f) => {
                    Ok(Run::Unsupported(said.lines().next().unwrap_or("").into()))
                }
                _ => Err(format!("{name}: relaunch exited before serving: {said}")),
            };
        }
        if Instant::now() >= end {
            relaunch.stop(Duration::from_secs(5));
            return Err(format!("{name}: no answer within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = Load::start(addr, plan.conns, Instant::now(), plan.timeout);
    pause(plan.warmup);
    let mut broke = None;
    for i in 1..=n {
        let out = Command::new(&ctx.relaunch)
            .arg("reload")
            .arg("--control")
            .arg(&control)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                broke = Some(format!(
                    "{name}: reload {i} failed: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
                break;
            }
            Err(e) => {
                broke = Some(format!("{name}: cannot run `relaunch reload`: {e}"));
                break;
            }
        }
        pause(plan.gap);
    }
    // The last old generation drains meanwhile.
    pause(plan.tail);
    let samples = load.finish();
    relaunch.stop(Duration::from_secs(15));
    if let Some(e) = broke {
        return Err(e);
    }
    let failed = samples.iter().filter(|s| s.outcome != Outcome::Ok).count();
    Ok(Run::Counted(failed, samples.len() - failed))
}
