//! The canary (`--only canary`): the bench server under relaunch, then
//! `relaunch reload --canary 10%`, then N new connections (one request
//! each) from the plan's clients: the canary's measured share, with its
//! 95% interval (a binomial draw of N). Then `relaunch rollback` under
//! the same load: how long after it was asked a new connection still
//! reached the canary, how long the command took (the canary drained and
//! stopped), and the requests that failed meanwhile. Needs root (steering).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::load::request;
use crate::plan::Plan;
use crate::procs::{Proc, free_port};
use crate::targets::Ctx;

const WAIT: Duration = Duration::from_secs(30);
const PERCENT: f64 = 10.0;
/// The acceptance's bound on the share, in points.
const BOUND: f64 = 3.0;

/// Prints what it measured; returns the acceptance lines, and whether a
/// run broke.
pub fn run(plan: &Plan, ctx: &Ctx) -> (Vec<(String, bool)>, bool) {
    if !nix::unistd::geteuid().is_root() {
        let line = "canary: skipped (steering needs root)".to_string();
        println!("{line}");
        return (vec![(line, false)], false);
    }
    let n = if plan.mode == "smoke" { 2_000 } else { 20_000 };
    match measure(plan, ctx, n) {
        Ok(m) => {
            let p = m.canary as f64 / m.answered.max(1) as f64;
            let share = 100.0 * p;
            let ci = 100.0 * 1.96 * (p * (1.0 - p) / m.answered.max(1) as f64).sqrt();
            println!(
                "canary, --canary {PERCENT}%: {share:.2}% of {} new connections (95% interval \
                 ± {ci:.2} points), {} failed",
                m.answered, m.failed
            );
            println!(
                "canary rollback: the last new connection to reach the canary was made {:.1} ms \
                 after `relaunch rollback` was asked; the command answered in {:.0} ms (the \
                 canary drained and stopped); {} request(s) failed meanwhile",
                m.last_to_canary_ms, m.rollback_ms, m.rollback_failed
            );
            (
                vec![
                    (
                        format!(
                            "canary share under --canary {PERCENT}%: {share:.2}% of {} new \
                             connections ({PERCENT}% ± {BOUND} points), {} failed",
                            m.answered, m.failed
                        ),
                        (share - PERCENT).abs() <= BOUND && m.failed == 0,
                    ),
                    (
                        format!(
                            "canary rollback: new connections all go back within {:.1} ms \
                             (50 ms), {} failed",
                            m.last_to_canary_ms, m.rollback_failed
                        ),
                        m.last_to_canary_ms <= 50.0 && m.rollback_failed == 0,
                    ),
                ],
                false,
            )
        }
        Err(e) => {
            println!("canary: FAILED: {e}");
            (vec![(format!("canary: broke: {e}"), false)], true)
        }
    }
}

struct Measured {
    canary: usize,
    answered: usize,
    failed: usize,
    last_to_canary_ms: f64,
    rollback_ms: f64,
    rollback_failed: usize,
}

pub fn client(ctx: &Ctx, args: &[&str], control: &std::path::Path) -> Result<(), String> {
    let out = Command::new(&ctx.relaunch)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .map_err(|e| format!("cannot run relaunch {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "relaunch {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The first answer at `addr` (the serving pid) once relaunch says it
/// serves too, or why there is none.
fn first_answer(addr: SocketAddr, relaunch: &mut Proc) -> Result<u32, String> {
    let end = Instant::now() + WAIT;
    loop {
        match request(addr, Duration::from_secs(2)) {
            // A canary is refused until relaunch has seen it ready too.
            Ok(pid) => {
                return relaunch
                    .lines
                    .wait_for(WAIT, |ls| {
                        ls.iter()
                            .any(|l| l.contains("serving: generation"))
                            .then_some(pid)
                    })
                    .ok_or_else(|| "relaunch never said it serves".into());
            }
            Err(_) if relaunch.exited() => {
                return Err(format!("relaunch exited: {}", relaunch.lines.tail(3)));
            }
            Err(_) if Instant::now() >= end => return Err("no answer".into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// relaunch with `options` over the bench server on a free port, its
/// control socket at NAME.sock, once it serves: the process, the address,
/// the control socket and the first answer's pid.
pub fn start(
    ctx: &Ctx,
    name: &str,
    options: &[&str],
) -> Result<(Proc, SocketAddr, PathBuf, u32), String> {
    let port = free_port()?;
    let p = port.to_string();
    let control = ctx.run_dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(&ctx.relaunch);
    cmd.args(["--port", &p])
        .args(options)
        .arg("--control")
        .arg(&control)
        .arg("--")
        .arg(&ctx.bench)
        .arg("--server")
        .env("RUST_LOG", "info");
    let mut relaunch = Proc::spawn(name, &mut cmd, &ctx.log_dir)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let old = first_answer(addr, &mut relaunch)?;
    Ok((relaunch, addr, control, old))
}

fn measure(plan: &Plan, ctx: &Ctx, n: usize) -> Result<Measured, String> {
    let (mut relaunch, addr, control, old) = start(ctx, "canary", &[])?;
    let out = (|| {
        client(
            ctx,
            &["reload", "--canary", &format!("{PERCENT}%")],
            &control,
        )?;
        // N new connections from the plan's clients.
        let left = Arc::new(AtomicUsize::new(n));
        let threads: Vec<_> = (0..plan.conns)
            .map(|_| {
                let left = left.clone();
                let timeout = plan.timeout;
                std::thread::spawn(move || {
                    let (mut old_n, mut other, mut failed) = (0, 0, 0);
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                        .is_ok()
                    {
                        match request(addr, timeout) {
                            Ok(pid) if pid == old => old_n += 1,
                            Ok(_) => other += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (old_n, other, failed)
                })
            })
            .collect();
        let (mut old_n, mut canary, mut failed) = (0, 0, 0);
        for t in threads {
            let (o, c, f) = t.join().map_err(|_| "a client panicked")?;
            old_n += o;
            canary += c;
            failed += f;
        }
        // Rollback under load: each client notes when it started a
        // request that the canary answered.
        let r = rollback_under_load(ctx, plan, addr, &control)?;
        let last = r
            .answers
            .iter()
            .filter(|(_, pid)| *pid != old)
            .map(|(at, _)| *at)
            .max()
            .unwrap_or_default();
        let (asked, rollback_ms, rollback_failed) = (r.asked, r.rollback_ms, r.failed);
        Ok(Measured {
            canary,
            answered: old_n + canary,
            failed,
            last_to_canary_ms: last.saturating_sub(asked).as_secs_f64() * 1000.0,
            rollback_ms,
            rollback_failed,
        })
    })();
    relaunch.stop(Duration::from_secs(15));
    out
}

/// What clients saw across a `relaunch rollback`.
pub struct RolledBack {
    /// Each answer: when its request started (from the epoch), and the pid
    /// that answered it.
    pub answers: Vec<(Duration, u32)>,
    pub failed: usize,
    /// When the rollback was asked (from the epoch).
    pub asked: Duration,
    pub rollback_ms: f64,
}

/// `relaunch rollback` asked 300 ms into the plan's clients' load, which
/// goes on 300 ms after it answers.
pub fn rollback_under_load(
    ctx: &Ctx,
    plan: &Plan,
    addr: SocketAddr,
    control: &std::path::Path,
) -> Result<RolledBack, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let threads: Vec<_> = (0..plan.conns)
        .map(|_| {
            let stop = stop.clone();
            let timeout = plan.timeout;
            std::thread::spawn(move || {
                let (mut seen, mut failed) = (Vec::new(), 0);
                while !stop.load(Ordering::Relaxed) {
                    let at = epoch.elapsed();
                    match request(addr, timeout) {
                        Ok(pid) => seen.push((at, pid)),
                        Err(_) => failed += 1,
                    }
                }
                (seen, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = epoch.elapsed();
    let done = client(ctx, &["rollback"], control);
    let rollback_ms = (epoch.elapsed() - asked).as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut out = RolledBack {
        answers: Vec::new(),
        failed: 0,
        asked,
        rollback_ms,
    };
    for t in threads {
        let (seen, f) = t.join().map_err(|_| "a client panicked")?;
        out.failed += f;
        out.answers.extend(seen);
    }
    done?;
    Ok(out)
}
