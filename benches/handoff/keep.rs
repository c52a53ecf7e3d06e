//! The rollback window (`--only keep`): the bench server under relaunch
//! `--keep-previous 60s`, a plain reload (the old generation is kept,
//! frozen, once idle), then `relaunch rollback` under the plan's clients:
//! how long after it was asked the previous version first answered, how
//! long after it a new connection still reached the newer one, and the
//! requests that failed meanwhile. Needs root (steering).

use std::time::Duration;

use crate::canary::{client, rollback_under_load, start};
use crate::load::request;
use crate::plan::Plan;
use crate::targets::Ctx;

/// The acceptance's bound on the previous version answering again.
const WITHIN_MS: f64 = 50.0;

/// Prints what it measured; returns the acceptance line, and whether the
/// run broke.
pub fn run(plan: &Plan, ctx: &Ctx) -> (Vec<(String, bool)>, bool) {
    if !nix::unistd::geteuid().is_root() {
        let line = "keep: skipped (steering needs root)".to_string();
        println!("{line}");
        return (vec![(line, false)], false);
    }
    match measure(plan, ctx) {
        Ok(m) => {
            println!(
                "rollback window (--keep-previous): the previous version first answered a new \
                 connection made {:.1} ms after `relaunch rollback` was asked, the last new \
                 connection to reach the newer one was made {:.1} ms after it; the command \
                 answered in {:.0} ms (the newer one drained and stopped); {} of {} request(s) \
                 failed",
                m.first_old_ms, m.last_new_ms, m.rollback_ms, m.failed, m.requests
            );
            let within = m.first_old_ms.max(m.last_new_ms);
            (
                vec![(
                    format!(
                        "rollback window: the previous version answers within {within:.1} ms \
                         ({WITHIN_MS} ms), {} failed",
                        m.failed
                    ),
                    within <= WITHIN_MS && m.failed == 0,
                )],
                false,
            )
        }
        Err(e) => {
            println!("keep: FAILED: {e}");
            (vec![(format!("keep: broke: {e}"), false)], true)
        }
    }
}

struct Measured {
    first_old_ms: f64,
    last_new_ms: f64,
    rollback_ms: f64,
    failed: usize,
    requests: usize,
}

fn measure(plan: &Plan, ctx: &Ctx) -> Result<Measured, String> {
    let (mut relaunch, addr, control, old) = start(ctx, "keep", &["--keep-previous", "60s"])?;
    let out = (|| {
        // Answered once the old generation is idle, and so kept.
        client(ctx, &["reload"], &control)?;
        let new = request(addr, plan.timeout).map_err(|e| format!("after the reload: {e}"))?;
        if new == old {
            return Err(format!("the reload left {old} serving"));
        }
        // Rollback under load: each client notes when it started each
        // request, and who answered it.
        let r = rollback_under_load(ctx, plan, addr, &control)?;
        let (asked, rollback_ms, failed) = (r.asked, r.rollback_ms, r.failed);
        let requests = r.answers.len() + failed;
        let (mut first_old, mut last_new) = (None, asked);
        for (at, pid) in r.answers {
            match pid == old {
                true if at >= asked => {
                    first_old = Some(first_old.map_or(at, |t: Duration| t.min(at)))
                }
                false => last_new = last_new.max(at),
                true => {}
            }
        }
        let first_old = first_old.ok_or("the previous version never answered again")?;
        let ms = |d: Duration| d.saturating_sub(asked).as_secs_f64() * 1000.0;
        Ok(Measured {
            first_old_ms: ms(first_old),
            last_new_ms: ms(last_new),
            rollback_ms,
            failed,
            requests,
        })
    })();
    relaunch.stop(Duration::from_secs(15));
    out
}
