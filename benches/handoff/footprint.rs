//! What relaunch itself costs: memory and wakeups while idle, its throughput
//! effect (none expected: it is not in the data path), and how it holds up
//! at scale. Counters come from /proc of relaunch's own pid, all threads.

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::Load;
use crate::plan::Plan;
use crate::procs::Proc;
use crate::stats;
use crate::targets::{Ctx, Kind, Target};

pub struct Footprint {
    pub idle: Idle,
    /// relaunch --lazy before the first connection: no child, nothing to do.
    pub lazy: Idle,
    pub hup_to_exec_ms: Vec<f64>,
    /// The same server started directly by the bench (posix_spawn), to its
    /// exec stamp: this machine's floor for any launcher.
    pub exec_floor_ms: Vec<f64>,
    pub throughput: Throughput,
    pub scale: Scale,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub rss_kib: u64,
    /// CPU time of all threads, ns (schedstat).
    pub cpu_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub threads: usize,
    pub fds: usize,
}

pub fn counters(pid: i32) -> Result<Counters, String> {
    let dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .map_err(|e| format!("cannot read {dir}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut c = Counters {
        rss_kib: field("VmRSS:"),
        ..Counters::default()
    };
    let tasks = std::fs::read_dir(format!("{dir}/task"))
        .map_err(|e| format!("cannot list {dir}/task: {e}"))?;
    for task in tasks.flatten() {
        let p = task.path();
        c.threads += 1;
        if let Ok(s) = std::fs::read_to_string(p.join("schedstat")) {
            c.cpu_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(p.join("status")) {
            for l in s.lines() {
                let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
                if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                    c.voluntary_switches += num(v);
                } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                    c.involuntary_switches += num(v);
                }
            }
        }
    }
    c.fds = std::fs::read_dir(format!("{dir}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(c)
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub secs: f64,
    pub rss_kib: u64,
    /// Where the resident pages are, from /proc/PID/smaps(_rollup).
    pub rss: Rss,
    pub cpu_ms: f64,
    pub context_switches: u64,
    pub threads: usize,
    /// relaunch's keeper (the process that ends what relaunch started if it
    /// is killed): most of its pages are relaunch's, shared since the fork.
    pub keeper: Option<Rss>,
}

/// Resident memory by where it comes from, KiB.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rss {
    /// smaps_rollup's Rss: every resident page, shared ones included.
    pub total: u64,
    /// relaunch's own binary (code, read-only data, relocated data).
    pub binary: u64,
    pub libc: u64,
    /// Other files: the dynamic loader, libgcc_s.
    pub other_files: u64,
    /// Heap, stacks, anonymous mappings.
    pub anonymous: u64,
    /// smaps_rollup's Private_Dirty: what only this process wrote.
    pub private_dirty: u64,
}

pub fn rss(pid: i32) -> Result<Rss, String> {
    let dir = format!("/proc/{pid}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .map_err(|e| format!("cannot read {dir}/{f}: {e}"))
    };
    let exe = std::fs::read_link(format!("{dir}/exe"))
        .map_err(|e| format!("cannot read {dir}/exe: {e}"))?;
    let mut r = smaps(&read("smaps")?, &exe.to_string_lossy());
    let rollup = read("smaps_rollup")?;
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    r.total = field("Rss:");
    r.private_dirty = field("Private_Dirty:");
    Ok(r)
}

/// The `relaunch-keeper` that holds the other end of one of `pid`'s pipes.
fn keeper_of(pid: i32) -> Option<i32> {
    let pipes = |p: i32| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .filter(|l| l.to_string_lossy().starts_with("pipe:"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ours = pipes(pid);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let p: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
        (comm.trim() == "relaunch-keeper" && pipes(p).iter().any(|x| ours.contains(x))).then_some(p)
    })
}

/// Sums each mapping's `Rss:` by its path. A mapping's header line is
/// `start-end perms offset dev inode [path]`; the path may hold spaces.
fn smaps(text: &str, exe: &str) -> Rss {
    let mut r = Rss::default();
    let mut path = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            path = words.skip(4).collect::<Vec<_>>().join(" ");
        } else if first == "Rss:" {
            let kib = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let bucket = if path == exe {
                &mut r.binary
            } else if path.contains("/libc.so") {
                &mut r.libc
            } else if path.starts_with('/') {
                &mut r.other_files
            } else {
                &mut r.anonymous
            };
            *bucket += kib;
        }
    }
    r.total = r.binary + r.libc + r.other_files + r.anonymous;
    r
}

/// relaunch with one server, left alone. Started first and read last, so
/// the idle window costs no time of its own.
pub struct IdleWatch {
    held: Held,
    since: Instant,
    before: Counters,
}

/// What is watched: relaunch serving a child, or relaunch --lazy waiting.
enum Held {
    Serving(Target),
    Waiting(Proc),
}

impl Held {
    fn pid(&self) -> i32 {
        match self {
            Held::Serving(t) => t.proc.pid(),
            Held::Waiting(p) => p.pid(),
        }
    }
}

impl IdleWatch {
    pub fn start(ctx: &Ctx) -> Result<IdleWatch, String> {
        // relaunch's defaults (--ready auto), a server that never notifies.
        let target = Target::start(Kind::ReloadAuto, 0.0, ctx, "idle")?;
        target
            .proc
            .lines
            .wait_for(Duration::from_secs(20), |ls| {
                ls.iter().any(|l| l.contains("ready after")).then_some(())
            })
            .ok_or("idle: relaunch never saw its child ready")?;
        let before = counters(target.proc.pid())?;
        Ok(IdleWatch {
            held: Held::Serving(target),
            since: Instant::now(),
            before,
        })
    }

    /// relaunch --lazy with nobody connecting: it waits in epoll on its
    /// listener, with no child and no timer.
    pub fn start_lazy(ctx: &Ctx) -> Result<IdleWatch, String> {
        let mut cmd = Command::new(&ctx.relaunch);
        cmd.args(["-l", "127.0.0.1:0", "--lazy", "--"])
            .arg(&ctx.bench)
            .arg("--server");
        let proc = Proc::spawn("idle-lazy", &mut cmd, &ctx.log_dir)?;
        proc.lines
            .wait_for(Duration::from_secs(20), |ls| {
                ls.iter()
                    .any(|l| l.contains("waiting for the first connection"))
                    .then_some(())
            })
            .ok_or("idle-lazy: relaunch --lazy never said it waits")?;
        // The line comes just before it blocks in epoll for the first time:
        // that block is its start-up's last context switch, not idling.
        std::thread::sleep(Duration::from_millis(250));
        let before = counters(proc.pid())?;
        Ok(IdleWatch {
            held: Held::Waiting(proc),
            since: Instant::now(),
            before,
        })
    }

    pub fn finish(self, secs: f64) -> Result<Idle, String> {
        let left = secs - self.since.elapsed().as_secs_f64();
        if left > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(left));
        }
        let pid = self.held.pid();
        let after = counters(pid)?;
        let rss = rss(pid)?;
        let keeper = keeper_of(pid).and_then(|k| self::rss(k).ok());
        let secs = self.since.elapsed().as_secs_f64();
        match self.held {
            Held::Serving(target) => target.stop(),
            Held::Waiting(mut proc) => {
                let started = proc.lines.count(" started pid=");
                proc.stop(Duration::from_secs(5));
                if started > 0 {
                    return Err(
                        "idle-lazy: relaunch --lazy started a child while nobody connected".into(),
                    );
                }
            }
        }
        Ok(Idle {
            secs,
            rss_kib: after.rss_kib,
            rss,
            cpu_ms: after.cpu_ns.saturating_sub(self.before.cpu_ns) as f64 / 1e6,
            context_switches: (after.voluntary_switches + after.involuntary_switches)
                .saturating_sub(self.before.voluntary_switches + self.before.involuntary_switches),
            threads: after.threads,
            keeper,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Answered requests per second, one per round.
    pub under_relaunch: Vec<f64>,
    pub self_bound: Vec<f64>,
    /// median(under relaunch) / median(self-bound).
    pub ratio: f64,
    /// The same ratio round by round: its spread is the noise.
    pub round_ratios: Vec<f64>,
    /// The self-binding server unmodified under relaunch (bind
    /// interception), one per round, and its ratio to self-bound.
    pub intercepted: Vec<f64>,
    pub intercept_ratio: f64,
    pub intercept_round_ratios: Vec<f64>,
    /// relaunch's CPU time and context switches meanwhile: a bind is
    /// answered once per child, so none under load means no call of the
    /// server's requests makes a round trip to relaunch.
    pub intercept_cpu_ms_under_load: f64,
    pub intercept_switches_under_load: u64,
    /// relaunch's own CPU time and context switches while under load, summed
    /// over the rounds: not in the data path means none.
    pub relaunch_cpu_ms_under_load: f64,
    pub relaunch_switches_under_load: u64,
}

/// The same server, no restarts: under relaunch (given the socket, and
/// binding it itself through interception), then binding the port itself.
pub fn throughput(plan: &Plan, ctx: &Ctx) -> Result<Throughput, String> {
    let (mut under, mut own, mut intercepted) = (Vec::new(), Vec::new(), Vec::new());
    let mut spent = Counters::default();
    let mut intercept_spent = Counters::default();
    let mut relaunch_round = |round: usize, under: &mut Vec<f64>| -> Result<(), String> {
        let (r, c) = rate(Kind::Steady, plan, ctx, &format!("tput-relaunch-{round}"))?;
        under.push(r);
        spent.cpu_ns += c.cpu_ns;
        spent.voluntary_switches += c.voluntary_switches + c.involuntary_switches;
        Ok(())
    };
    for round in 0..plan.tput_rounds {
        // A-B then B-A, so a drift over the run falls on both sides.
        if round % 2 == 0 {
            relaunch_round(round, &mut under)?;
        }
        let tag = format!("tput-intercept-{round}");
        let (r, c) = rate(Kind::Intercept, plan, ctx, &tag)?;
        intercepted.push(r);
        intercept_spent.cpu_ns += c.cpu_ns;
        intercept_spent.voluntary_switches += c.voluntary_switches + c.involuntary_switches;
        own.push(rate(Kind::NaiveRebind, plan, ctx, &format!("tput-self-{round}"))?.0);
        if round % 2 == 1 {
            relaunch_round(round, &mut under)?;
        }
    }
    let per_round = |xs: &[f64]| -> Vec<f64> {
        xs.iter()
            .zip(&own)
            .map(|(x, o)| x / o.max(f64::MIN_POSITIVE))
            .collect()
    };
    let of_medians = |xs: &[f64]| stats::median(xs) / stats::median(&own).max(f64::MIN_POSITIVE);
    Ok(Throughput {
        ratio: of_medians(&under),
        round_ratios: per_round(&under),
        intercept_ratio: of_medians(&intercepted),
        intercept_round_ratios: per_round(&intercepted),
        intercept_cpu_ms_under_load: intercept_spent.cpu_ns as f64 / 1e6,
        intercept_switches_under_load: intercept_spent.voluntary_switches,
        under_relaunch: under,
        self_bound: own,
        intercepted,
        relaunch_cpu_ms_under_load: spent.cpu_ns as f64 / 1e6,
        relaunch_switches_under_load: spent.voluntary_switches,
    })
}

/// Answered requests per second, and what the launcher process (the
/// target's own pid) spent meanwhile.
fn rate(kind: Kind, plan: &Plan, ctx: &Ctx, tag: &str) -> Result<(f64, Counters), String> {
    let target = Target::start(kind, 0.0, ctx, tag)?;
    if kind == Kind::Steady {
        // The first answer can come before relaunch has handled READY=1:
        // that handling is start-up, not load.
        target
            .proc
            .lines
            .wait_for(Duration::from_secs(20), |ls| {
                ls.iter()
                    .any(|l| l.contains("serving: generation"))
                    .then_some(())
            })
            .ok_or_else(|| format!("{tag}: relaunch never said it serves"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = counters(target.proc.pid())?;
    let epoch = Instant::now();
    let load = Load::start(target.addr(), plan.conns, epoch, plan.timeout);
    std::thread::sleep(Duration::from_secs_f64(plan.tput_secs));
    let secs = epoch.elapsed().as_secs_f64();
    let f = stats::figures(&load.finish(), secs);
    let after = counters(target.proc.pid())?;
    target.stop();
    if f.failed > 0 {
        return Err(format!(
            "{tag}: {} requests failed in a run without restarts; see its log",
            f.failed
        ));
    }
    let spent = Counters {
        cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
        voluntary_switches: after
            .voluntary_switches
            .saturating_sub(before.voluntary_switches),
        involuntary_switches: after
            .involuntary_switches
            .saturating_sub(before.involuntary_switches),
        ..Counters::default()
    };
    Ok((f.ok_per_sec, spent))
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub listeners: usize,
    pub workers: usize,
    pub reloads: usize,
    pub reload_failures: usize,
    pub reload_ms_median: f64,
    pub reload_ms_max: f64,
    pub before: Counters,
    /// After reload [`SCALE_EARLY`] (or the last, if fewer): the memory
    /// relaunch grows into once, which later reloads must not add to.
    pub early: Counters,
    pub after: Counters,
}

/// The reload whose RSS later ones are held to.
pub const SCALE_EARLY: usize = 10;

/// Starts the bench's server `n` times straight from here (no launcher in
/// between) and times each spawn to the server's exec stamp, ms.
pub fn exec_floor(ctx: &Ctx, n: usize) -> Result<Vec<f64>, String> {
    let log = ctx.run_dir.join("floor.exec");
    let mut out = Vec::new();
    for _ in 0..n {
        let _ = std::fs::remove_file(&log);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut child = Command::new(&ctx.bench)
            .args(["--server", "--delay", "0"])
            .env("HANDOFF_EXEC_LOG", &log)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("exec floor: cannot start the server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let stamp = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(&e) = crate::targets::exec_times(&text).first() {
                break Some(e);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let _ = child.kill();
        let _ = child.wait();
        let stamp = stamp.ok_or("exec floor: the server never stamped its exec")?;
        out.push(stamp.saturating_sub(t) as f64 / 1e6);
    }
    let _ = std::fs::remove_file(&log);
    Ok(out)
}

/// Many listeners, many workers, many reloads through the control socket:
/// relaunch's fds and memory must not grow.
pub fn scale(plan: &Plan, ctx: &Ctx) -> Result<Scale, String> {
    let sock = ctx.run_dir.join("scale.sock");
    // Every worker binds the first listener's port itself, as the seeds'
    // apps do: each bind is answered by interception, on its thread.
    let port = crate::procs::free_port()?.to_string();
    let mut cmd = Command::new(&ctx.relaunch);
    cmd.args(["-q", "-l", &format!("127.0.0.1:{port}")]);
    for _ in 1..plan.scale_listeners {
        cmd.args(["-l", "127.0.0.1:0"]);
    }
    cmd.args([
        "--workers",
        &plan.scale_workers.to_string(),
        "--ready",
        "notify",
        "--control",
    ])
    .arg(&sock)
    .arg("--")
    .arg(&ctx.bench)
    .args(["--server", "--delay", "0", "--naive", &port]);
    let mut proc = Proc::spawn("scale", &mut cmd, &ctx.log_dir)?;
    wait_all_ready(ctx, &sock, plan.scale_workers, &mut proc)?;
    let before = counters(proc.pid())?;
    let mut times = Vec::with_capacity(plan.scale_reloads);
    let mut failures = 0;
    let mut early = None;
    for n in 1..=plan.scale_reloads {
        let t = Instant::now();
        let ok = Command::new(&ctx.relaunch)
            .args(["reload", "--control"])
            .arg(&sock)
            .output()
            .map_err(|e| format!("scale: cannot run `relaunch reload`: {e}"))?
            .status
            .success();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        failures += usize::from(!ok);
        if n == SCALE_EARLY.min(plan.scale_reloads) {
            early = Some(counters(proc.pid())?);
        }
    }
    wait_all_ready(ctx, &sock, plan.scale_workers, &mut proc)?;
    let after = counters(proc.pid())?;
    proc.stop(Duration::from_secs(15));
    Ok(Scale {
        listeners: plan.scale_listeners,
        workers: plan.scale_workers,
        reloads: plan.scale_reloads,
        reload_failures: failures,
        reload_ms_median: stats::median(&times),
        reload_ms_max: times.iter().copied().fold(0.0, f64::max),
        early: early.unwrap_or_else(|| before.clone()),
        before,
        after,
    })
}

/// Polls `relaunch status --json` until `workers` children of one
/// generation are ready and nothing else runs.
fn wait_all_ready(
    ctx: &Ctx,
    sock: &std::path::Path,
    workers: usize,
    proc: &mut Proc,
) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < end {
        if proc.exited() {
            return Err(format!("scale: relaunch exited:\n{}", proc.lines.tail(15)));
        }
        let out = Command::new(&ctx.relaunch)
            .args(["status", "--json", "--control"])
            .arg(sock)
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last)
                && let Some(children) = v["children"].as_array()
                && children.len() == workers
                && children.iter().all(|c| c["state"] == "ready")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "scale: {workers} workers not all ready within 60 s; last status:\n{last}"
    ))
}

pub fn self_check() -> Result<(), String> {
    let text = "\
5600aa000000-5600aa100000 r-xp 00001000 fe:00 42 /usr/local/bin/relaunch
Rss:                 100 kB
Private_Dirty:         0 kB
7f0000000000-7f0000100000 r-xp 00026000 fe:00 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  50 kB
7f0000200000-7f0000210000 r-xp 00001000 fe:00 8 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
Rss:                  20 kB
5600bb000000-5600bb021000 rw-p 00000000 00:00 0                          [heap]
Rss:                   8 kB
7f0000300000-7f0000301000 rw-p 00000000 00:00 0 
Rss:                   4 kB
7f0000400000-7f0000401000 r--p 00000000 fe:00 9 /tmp/a file with spaces
Rss:                   2 kB
";
    let got = smaps(text, "/usr/local/bin/relaunch");
    let want = Rss {
        total: 184,
        binary: 100,
        libc: 50,
        other_files: 22,
        anonymous: 12,
        private_dirty: 0,
    };
    if got != want {
        return Err(format!("smaps: {got:?}, want {want:?}"));
    }
    Ok(())
}
