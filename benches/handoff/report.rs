//! The outputs: the table on stdout, `handoff.json` (one object per
//! scenario plus the footprint and the machine), and the acceptance lines
//! (what relaunch promises, and the footprint's targets), printed, never
//! enforced.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::footprint::{Footprint, SCALE_EARLY, Scale};
use crate::load::Outcome;
use crate::plan::{IDLE_TARGET_SECS, Plan};
use crate::scenario::{Scenario, Status};
use crate::stats;
use crate::targets::Kind;

const MAX_FAILURES_LISTED: usize = 500;

/// The footprint's targets: idle memory, and SIGHUP to the new child's exec.
const RSS_TARGET_KIB: u64 = 3 * 1024;
const HUP_TO_EXEC_TARGET_MS: f64 = 1.0;
/// Issue 19: relaunch's RSS after many reloads against after the first few.
const SCALE_GROWTH_KIB: u64 = 256;
/// A crashed child is serving again within its own start time plus this.
const CRASH_MARGIN_MS: f64 = 150.0;
/// Throughput of the self-binding server under interception against itself
/// without relaunch.
const INTERCEPT_RATIO_TARGET: f64 = 0.98;

pub struct Outputs {
    pub json: PathBuf,
    pub svg: PathBuf,
}

impl Outputs {
    /// Beside the logs: target/bench/.
    pub fn new(log_dir: &Path) -> Outputs {
        let dir = log_dir.parent().unwrap_or(log_dir);
        Outputs {
            json: dir.join("handoff.json"),
            svg: dir.join("handoff.svg"),
        }
    }
}

pub fn status_text(s: &Scenario) -> String {
    match &s.status {
        Status::Ran => {
            let f = &s.figures;
            format!("{} ok, {} failed, {} pids", f.ok, f.failed, f.pids)
        }
        Status::Skipped(why) => why.clone(),
        Status::Failed(e) => format!("FAILED: {e}"),
    }
}

pub fn table(scenarios: &[Scenario], fp: Option<&Footprint>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | delay | restarts | ok | refused | reset | timeout | p50 ms | p99 ms | max ms | pids |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in scenarios {
        let name = s.kind.name();
        match &s.status {
            Status::Skipped(why) => {
                let _ = writeln!(t, "| {name} | {} s | {why} |||||||||", s.delay);
            }
            _ => {
                let f = &s.figures;
                let broke = if let Status::Failed(_) = s.status {
                    " (broke, see log)"
                } else {
                    ""
                };
                let _ = writeln!(
                    t,
                    "| {name}{broke} | {} s | {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.0} | {} |",
                    s.delay,
                    s.restarts_at.len(),
                    f.ok,
                    f.refused,
                    f.reset,
                    f.timeout,
                    f.p50_ms,
                    f.p99_ms,
                    f.max_ms,
                    f.pids
                );
            }
        }
    }
    if let Some(fp) = fp {
        let i = &fp.idle;
        let h = &fp.hup_to_exec_ms;
        let tp = &fp.throughput;
        let sc = &fp.scale;
        let _ = writeln!(t);
        let _ = writeln!(t, "| launcher footprint | |");
        let _ = writeln!(t, "|---|---|");
        let r = &i.rss;
        let _ = writeln!(
            t,
            "| RSS, idle | {} KiB (binary {}, libc {}, other files {}, anonymous {}; private dirty {}) |",
            r.total, r.binary, r.libc, r.other_files, r.anonymous, r.private_dirty
        );
        let _ = match &i.keeper {
            Some(k) => writeln!(
                t,
                "| RSS of the keeper, idle | {} KiB (private dirty {}; the rest shared with relaunch) |",
                k.total, k.private_dirty
            ),
            None => writeln!(t, "| RSS of the keeper, idle | not found |"),
        };
        let _ = writeln!(
            t,
            "| CPU time / context switches over {:.0} s idle | {:.3} ms / {} |",
            i.secs, i.cpu_ms, i.context_switches
        );
        let _ = writeln!(
            t,
            "| the same, `--lazy` waiting for its first connection (no child) | {:.3} ms / {} over {:.0} s; RSS {} KiB |",
            fp.lazy.cpu_ms, fp.lazy.context_switches, fp.lazy.secs, fp.lazy.rss.total
        );
        let _ = writeln!(
            t,
            "| SIGHUP to the new child's exec (median / max of {}) | {:.2} ms / {:.2} ms |",
            h.len(),
            stats::median(h),
            h.iter().copied().fold(0.0, f64::max)
        );
        let _ = writeln!(
            t,
            "| the same server spawned by the bench itself, no launcher (median of {}) | {:.2} ms |",
            fp.exec_floor_ms.len(),
            stats::median(&fp.exec_floor_ms)
        );
        let _ = writeln!(
            t,
            "| throughput under relaunch / self-bound | {:.3} ({:.0} / {:.0} req/s; rounds {}) |",
            tp.ratio,
            stats::median(&tp.under_relaunch),
            stats::median(&tp.self_bound),
            rounds(&tp.round_ratios)
        );
        let _ = writeln!(
            t,
            "| relaunch's CPU time / context switches under that load | {:.3} ms / {} |",
            tp.relaunch_cpu_ms_under_load, tp.relaunch_switches_under_load
        );
        let _ = writeln!(
            t,
            "| throughput of the self-binding server under relaunch (interception) / self-bound | {:.3} ({:.0} / {:.0} req/s; rounds {}) |",
            tp.intercept_ratio,
            stats::median(&tp.intercepted),
            stats::median(&tp.self_bound),
            rounds(&tp.intercept_round_ratios)
        );
        let _ = writeln!(
            t,
            "| relaunch's CPU time / context switches under that load | {:.3} ms / {} |",
            tp.intercept_cpu_ms_under_load, tp.intercept_switches_under_load
        );
        t.push_str(&scale_rows(sc));
    }
    t
}

/// The scale measurement's rows of the footprint table.
pub fn scale_rows(sc: &Scale) -> String {
    format!(
        "| scale: {} listeners, {} workers binding a port themselves (interception), {} reloads | {} failed; reload median {:.0} ms, max {:.0} ms |\n\
         | scale: relaunch fds / threads / RSS before → reload {} → reload {} | {} → {} → {} / {} → {} → {} / {} KiB → {} KiB → {} KiB |\n",
        sc.listeners,
        sc.workers,
        sc.reloads,
        sc.reload_failures,
        sc.reload_ms_median,
        sc.reload_ms_max,
        SCALE_EARLY.min(sc.reloads),
        sc.reloads,
        sc.before.fds,
        sc.early.fds,
        sc.after.fds,
        sc.before.threads,
        sc.early.threads,
        sc.after.threads,
        sc.before.rss_kib,
        sc.early.rss_kib,
        sc.after.rss_kib
    )
}

pub fn print_table(scenarios: &[Scenario], fp: Option<&Footprint>) {
    println!("\n{}", table(scenarios, fp));
    for s in scenarios {
        if let Status::Failed(e) = &s.status {
            println!("{} @{}s broke: {e}\n", s.kind.name(), s.delay);
        }
    }
}

pub fn write_json(
    path: &Path,
    plan: &Plan,
    scenarios: &[Scenario],
    fp: Option<&Footprint>,
) -> Result<(), String> {
    let list: Vec<Value> = scenarios.iter().map(scenario_json).collect();
    let footprint = fp.map(|fp| {
        json!({
            "idle": fp.idle,
            "lazy_waiting": fp.lazy,
            "hup_to_exec_ms": fp.hup_to_exec_ms,
            "exec_floor_ms": fp.exec_floor_ms,
            "throughput": fp.throughput,
            "scale": fp.scale,
        })
    });
    let doc = json!({
        "mode": plan.mode,
        "plan": {
            "delays_s": plan.delays,
            "connections": plan.conns,
            "restarts_per_scenario": plan.restarts,
            "request_timeout_s": plan.timeout.as_secs_f64(),
        },
        "machine": machine(),
        "scenarios": list,
        "footprint": footprint,
    });
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| format!("cannot encode the results: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn scenario_json(s: &Scenario) -> Value {
    let (status, error) = match &s.status {
        Status::Ran => ("ran", None),
        Status::Skipped(why) => ("skipped", Some(why.clone())),
        Status::Failed(e) => ("failed", Some(e.clone())),
    };
    json!({
        "scenario": s.kind.name(),
        "delay_s": s.delay,
        "status": status,
        "error": error,
        "secs": s.secs,
        "restarts_at_s": s.restarts_at,
        "figures": s.figures,
        "hup_to_exec_ms": s.hup_to_exec_ms,
        "failures": failures(s),
    })
}

/// The first failed requests, for a closer look than the chart gives.
fn failures(s: &Scenario) -> Vec<Value> {
    s.samples
        .iter()
        .filter(|x| x.outcome != Outcome::Ok)
        .take(MAX_FAILURES_LISTED)
        .map(|x| json!({"at_s": x.at, "ms": x.latency_ms, "kind": format!("{:?}", x.outcome).to_lowercase()}))
        .collect()
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo").lines().find_map(|l| {
        l.strip_prefix("model name")?
            .split_once(':')
            .map(|(_, v)| v.trim().to_string())
    });
    let os = read("/etc/os-release").lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim_matches('"').to_string())
    });
    let mem_kib = read("/proc/meminfo").lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "os": os,
        "mem_kib": mem_kib,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "relaunch": env!("CARGO_PKG_VERSION"),
    })
}

/// The acceptance lines, for the reader; they never fail the run.
pub fn print_acceptance(scenarios: &[Scenario], fp: Option<&Footprint>, extra: &[(String, bool)]) {
    let ran = |k: Kind| {
        scenarios
            .iter()
            .filter(move |s| s.kind == k && matches!(s.status, Status::Ran))
    };
    let mut lines = Vec::new();
    for k in [Kind::Reload, Kind::ReloadAuto, Kind::Crash, Kind::Intercept]
        .into_iter()
        .filter(|&k| ran(k).count() > 0)
    {
        let refused: usize = ran(k).map(|s| s.figures.refused).sum();
        lines.push((
            format!("{}: 0 refused (got {refused})", k.name()),
            refused == 0,
        ));
    }
    for k in [Kind::Reload, Kind::ReloadAuto]
        .into_iter()
        .filter(|&k| ran(k).count() > 0)
    {
        let failed: usize = ran(k).map(|s| s.figures.failed).sum();
        lines.push((
            format!("{}: 0 failures of any kind (got {failed})", k.name()),
            failed == 0,
        ));
    }
    // A crash of a server that was ready costs its start time, not a
    // backoff, however briefly it served.
    for s in ran(Kind::Crash) {
        let f = &s.figures;
        let limit = s.delay * 1000.0 + CRASH_MARGIN_MS;
        let kills = s.restarts_at.len();
        let kills = match s
            .restarts_at
            .windows(2)
            .map(|w| w[1] - w[0])
            .reduce(f64::min)
        {
            Some(apart) => format!("{kills} kills {apart:.1} s apart"),
            None => format!("{kills} kill"),
        };
        lines.push((
            format!(
                "relaunch-crash @{}s, {kills}: worst latency <= start time + {CRASH_MARGIN_MS:.0} ms \
                 = {limit:.0} ms, 0 refused (got {:.0} ms, {} refused)",
                s.delay, f.max_ms, f.refused
            ),
            f.max_ms <= limit && f.refused == 0,
        ));
    }
    if ran(Kind::NaiveRebind).count() > 0 {
        let naive: usize = ran(Kind::NaiveRebind).map(|s| s.figures.failed).sum();
        lines.push((
            format!("naive-rebind: shows failures (got {naive})"),
            naive > 0,
        ));
    }
    if let Some(fp) = fp {
        lines.push(scale_acceptance(&fp.scale));
        let rss = fp.idle.rss.total;
        lines.push((
            format!("idle RSS <= {RSS_TARGET_KIB} KiB (got {rss} KiB)"),
            rss <= RSS_TARGET_KIB,
        ));
        let h = &fp.hup_to_exec_ms;
        let median = stats::median(h);
        lines.push((
            format!(
                "SIGHUP to the new child's exec <= {HUP_TO_EXEC_TARGET_MS} ms, median (got {median:.2} ms over {} reloads, max {:.2} ms; this machine's floor, the bench spawning the same server itself: {:.2} ms)",
                h.len(),
                h.iter().copied().fold(0.0, f64::max),
                stats::median(&fp.exec_floor_ms)
            ),
            !h.is_empty() && median <= HUP_TO_EXEC_TARGET_MS,
        ));
        let i = &fp.idle;
        let short = if i.secs < IDLE_TARGET_SECS {
            format!("; this window is shorter than {IDLE_TARGET_SECS:.0} s")
        } else {
            String::new()
        };
        lines.push((
            format!(
                "0 wakeups over {IDLE_TARGET_SECS:.0} s idle (got {} context switches, {:.3} ms CPU over {:.0} s{short})",
                i.context_switches, i.cpu_ms, i.secs
            ),
            i.context_switches == 0 && i.secs >= IDLE_TARGET_SECS,
        ));
        let l = &fp.lazy;
        lines.push((
            format!(
                "0 wakeups over {IDLE_TARGET_SECS:.0} s waiting with --lazy (got {} context switches, {:.3} ms CPU over {:.0} s)",
                l.context_switches, l.cpu_ms, l.secs
            ),
            l.context_switches == 0 && l.secs >= IDLE_TARGET_SECS,
        ));
        let tp = &fp.throughput;
        let (lo, hi) = tp
            .round_ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let r = tp.ratio;
        // Noise: the spread of the round-by-round ratios, or 5%, whichever is wider.
        let ok = (r - 1.0).abs() <= 0.05 || (lo <= 1.0 && 1.0 <= hi);
        lines.push((
            format!(
                "throughput ratio within noise of 1.00 (got {r:.3}; rounds {lo:.3} to {hi:.3})"
            ),
            ok,
        ));
        let r = tp.intercept_ratio;
        lines.push((
            format!(
                "throughput with bind interception / self-bound >= {INTERCEPT_RATIO_TARGET} \
                 (got {r:.3}; rounds {})",
                rounds(&tp.intercept_round_ratios)
            ),
            r >= INTERCEPT_RATIO_TARGET,
        ));
    }
    lines.extend(extra.iter().cloned());
    println!("acceptance (what relaunch promises, and the targets; never enforced):");
    for (what, ok) in lines {
        println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
    }
}

/// RSS after the last reload against after reload [`SCALE_EARLY`].
pub fn scale_acceptance(sc: &Scale) -> (String, bool) {
    let grew = sc.after.rss_kib.saturating_sub(sc.early.rss_kib);
    (
        format!(
            "scale: RSS at reload {} within {SCALE_GROWTH_KIB} KiB of reload {} \
             ({} workers; got {} KiB → {} KiB, +{grew} KiB)",
            sc.reloads,
            SCALE_EARLY.min(sc.reloads),
            sc.workers,
            sc.early.rss_kib,
            sc.after.rss_kib
        ),
        grew <= SCALE_GROWTH_KIB,
    )
}

/// Round-by-round ratios, as the report and the acceptance lines print them.
fn rounds(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
