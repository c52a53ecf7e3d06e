//! One run: every scenario at every delay, then the footprint, then the
//! outputs. A scenario that cannot run (peer missing) is reported as
//! skipped; one that breaks is reported with its error and makes the run
//! exit 1, so CI's smoke run notices rot. Figures are never asserted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::footprint::{self, Footprint};
use crate::load::{Load, pause};
use crate::plan::Plan;
use crate::procs::find_tool;
use crate::report;
use crate::scenario::{Scenario, Status};
use crate::stats;
use crate::targets::{Ctx, Kind, Target};

pub fn run_all(plan: &Plan, only: &[String], with_footprint: bool) -> Result<ExitCode, String> {
    let ctx = context()?;
    let started = Instant::now();
    eprintln!(
        "handoff: {} run, delays {:?} s, {} connections; logs in {}",
        plan.mode,
        plan.delays,
        plan.conns,
        ctx.log_dir.display()
    );
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    // `--only scale`: the footprint's scale measurement alone.
    let scale_alone = !only.is_empty() && wanted("scale");
    let with_footprint = with_footprint && !scale_alone;
    // Watched while everything else runs: idle means relaunch does nothing,
    // whatever the rest of the machine does.
    let idle = if with_footprint {
        Some((
            footprint::IdleWatch::start(&ctx)?,
            footprint::IdleWatch::start_lazy(&ctx)?,
        ))
    } else {
        None
    };

    let mut scenarios = Vec::new();
    for &delay in &plan.delays {
        for kind in Kind::ALL {
            if !only.is_empty() && !only.iter().any(|o| kind.name().contains(o.as_str())) {
                continue;
            }
            let s = match kind.needs().filter(|tool| find_tool(tool).is_none()) {
                Some(tool) => Scenario::empty(
                    kind,
                    delay,
                    Status::Skipped(format!("skipped ({tool} not installed)")),
                ),
                None => run_one(kind, delay, plan, &ctx),
            };
            eprintln!(
                "handoff: {} @{delay}s: {}",
                kind.name(),
                report::status_text(&s)
            );
            scenarios.push(s);
        }
    }

    let mut readiness = if wanted("readiness") {
        crate::readiness::run(plan, &ctx)
    } else {
        Vec::new()
    };
    let mut dev_loop_broke = false;
    if wanted("dev-loop") {
        let (lines, broke) = crate::devloop::run(plan, &ctx);
        readiness.extend(lines);
        dev_loop_broke = broke;
    }
    if wanted("on-demand") {
        readiness.extend(crate::on_demand::run(plan, &ctx));
    }
    if wanted("connect-cost") {
        readiness.extend(crate::connect_cost::run(plan, &ctx));
    }
    let mut drain_broke = false;
    if wanted("drain") {
        let (lines, broke) = crate::drain::run(plan, &ctx);
        readiness.extend(lines);
        drain_broke = broke;
    }

    let mut canary_broke = false;
    if wanted("canary") {
        let (lines, broke) = crate::canary::run(plan, &ctx);
        readiness.extend(lines);
        canary_broke = broke;
    }
    let mut keep_broke = false;
    if wanted("keep") {
        let (lines, broke) = crate::keep::run(plan, &ctx);
        readiness.extend(lines);
        keep_broke = broke;
    }

    let scale = if scale_alone {
        Some(footprint::scale(plan, &ctx)?)
    } else {
        None
    };

    let footprint = match idle {
        Some((idle, lazy)) => Some(Footprint {
            idle: idle.finish(plan.idle)?,
            lazy: lazy.finish(plan.idle)?,
            hup_to_exec_ms: scenarios
                .iter()
                .filter(|s| matches!(s.kind, Kind::Reload | Kind::ReloadAuto))
                .flat_map(|s| s.hup_to_exec_ms.iter().copied())
                .collect(),
            exec_floor_ms: footprint::exec_floor(&ctx, 10)?,
            throughput: footprint::throughput(plan, &ctx)?,
            scale: footprint::scale(plan, &ctx)?,
        }),
        None => None,
    };

    let out = report::Outputs::new(&ctx.log_dir);
    report::print_table(&scenarios, footprint.as_ref());
    if let Some(sc) = &scale {
        println!(
            "| launcher footprint | |\n|---|---|\n{}",
            report::scale_rows(sc)
        );
        readiness.push(report::scale_acceptance(sc));
    }
    report::write_json(&out.json, plan, &scenarios, footprint.as_ref())?;
    crate::chart::draw(&out.svg, &scenarios)?;
    if plan.mode != "smoke" {
        report::print_acceptance(&scenarios, footprint.as_ref(), &readiness);
    }
    println!(
        "\nwrote {} and {} in {:.0} s",
        out.json.display(),
        out.svg.display(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&ctx.run_dir);
    let broken = dev_loop_broke
        || drain_broke
        || canary_broke
        || keep_broke
        || scenarios
            .iter()
            .any(|s| matches!(s.status, Status::Failed(_)));
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn run_one(kind: Kind, delay: f64, plan: &Plan, ctx: &Ctx) -> Scenario {
    let tag = format!("{}-{delay}", kind.name());
    let mut target = match Target::start(kind, delay, ctx, &tag) {
        Ok(t) => t,
        Err(e) => return Scenario::empty(kind, delay, Status::Failed(e)),
    };
    let epoch = Instant::now();
    let load = Load::start(target.addr(), plan.conns, epoch, plan.timeout);
    let mut status = Status::Ran;
    let mut restarts_at = Vec::new();
    pause(plan.warmup);
    for _ in 0..plan.restarts {
        let began = epoch.elapsed().as_secs_f64();
        if kind.restarts() {
            restarts_at.push(began);
            if let Err(e) = target.restart(&load.seen) {
                status = Status::Failed(e);
                break;
            }
        }
        if kind == Kind::Crash {
            pause((began + plan.crash_every - epoch.elapsed().as_secs_f64()).max(0.0));
        } else {
            pause(plan.gap);
        }
    }
    pause(plan.tail);
    let secs = epoch.elapsed().as_secs_f64();
    let samples = load.finish();
    let hup_to_exec_ms = target.hup_to_exec_ms();
    target.stop();
    Scenario {
        kind,
        delay,
        status,
        figures: stats::figures(&samples, secs),
        restarts_at,
        secs,
        hup_to_exec_ms,
        samples,
    }
}

fn context() -> Result<Ctx, String> {
    let relaunch = PathBuf::from(env!("CARGO_BIN_EXE_relaunch"));
    let bench =
        std::env::current_exe().map_err(|e| format!("cannot find this bench's own binary: {e}"))?;
    // target/<profile>/relaunch -> target/bench
    let out = relaunch
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("bench"))
        .ok_or("cannot place target/bench next to the relaunch binary")?;
    let log_dir = out.join("logs");
    let run_dir = std::env::temp_dir().join(format!("handoff-{}", std::process::id()));
    for d in [&log_dir, &run_dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    Ok(Ctx {
        bench,
        relaunch,
        log_dir,
        run_dir,
    })
}
