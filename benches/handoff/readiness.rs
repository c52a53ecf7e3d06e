//! How soon `--ready auto` sees a new generation ready, when something makes
//! it hard (a flood of strangers' datagrams, a busy select() server). Printed as lines after the scenarios:
//!
//! - flood: the readiness delay of a reload, quiet and while a stranger (a
//!   process outside relaunch's tree) sends 1000 datagrams/s to the new
//!   generation's NOTIFY_SOCKET. Target: at most 50 ms extra.
//! - select: a select() server with a slow start, reloaded while 8 clients
//!   hammer the old generation: how long after the new one's first accept
//!   relaunch saw it ready. Target: at most 100 ms.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::load::Load;
use crate::plan::Plan;
use crate::procs::{Proc, find_tool};
use crate::stats;
use crate::targets::{Ctx, listening_port};

const WAIT: Duration = Duration::from_secs(30);

/// Prints what it measured and returns the acceptance lines (the readiness
/// targets).
pub fn run(plan: &Plan, ctx: &Ctx) -> Vec<(String, bool)> {
    let mut lines = Vec::new();
    let reloads = if plan.mode == "smoke" { 1 } else { 3 };
    match flood(ctx, reloads) {
        Ok((quiet, flooded)) => {
            let extra = flooded - quiet;
            println!(
                "readiness, stranger at 1000 datagrams/s: ready after {quiet:.0} ms quiet, \
                 {flooded:.0} ms flooded (median of {reloads}): {extra:+.0} ms"
            );
            lines.push((
                format!(
                    "a stranger at 1000 datagrams/s delays readiness <= 50 ms (got {extra:+.0} ms)"
                ),
                extra <= 50.0,
            ));
        }
        Err(e) => {
            println!("readiness, stranger flood: FAILED: {e}");
            lines.push((format!("stranger flood: {e}"), false));
        }
    }
    if find_tool("python3").is_none() {
        println!("readiness, select() server under load: skipped (python3 not installed)");
        lines.push((
            "select() server under load: python3 not installed".into(),
            false,
        ));
        return lines;
    }
    let delay = if plan.mode == "smoke" { 0.3 } else { 1.5 };
    match select_server(ctx, delay, reloads) {
        Ok(late) => {
            let worst = late.iter().copied().fold(0.0, f64::max);
            let each = late
                .iter()
                .map(|l| format!("{l:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "readiness, select() server starting in {delay} s under 8 clients: ready seen \
                 {each} ms after its first accept"
            );
            lines.push((
                format!(
                    "--ready auto sees a busy select() server ready <= 100 ms after its first accept (got {each} ms)"
                ),
                !late.is_empty() && worst <= 100.0,
            ));
        }
        Err(e) => {
            println!("readiness, select() server: FAILED: {e}");
            lines.push((format!("select() server: {e}"), false));
        }
    }
    lines
}

/// relaunch --ready auto over `sh -c SCRIPT`; returns it and its port.
fn start(ctx: &Ctx, name: &str, script: &str) -> Result<(Proc, u16), String> {
    let mut cmd = Command::new(&ctx.relaunch);
    cmd.args([
        "-l",
        "127.0.0.1:0",
        "--ready",
        "auto",
        "--ready-timeout",
        "20s",
    ])
    .args(["--", "sh", "-c", script])
    .env("RUST_LOG", "info");
    let p = Proc::spawn(name, &mut cmd, &ctx.log_dir)?;
    let port = p
        .lines
        .wait_for(WAIT, |ls| ls.iter().find_map(|l| listening_port(l)))
        .ok_or("relaunch did not log its port")?;
    Ok((p, port))
}

/// The "ready after" line of `generation`.
fn ready_line(p: &Proc, generation: u64) -> Result<String, String> {
    let needle = format!("generation={generation} ");
    p.lines
        .wait_for(WAIT, |ls| {
            ls.iter()
                .find(|l| l.contains("ready after") && l.contains(&needle))
                .cloned()
        })
        .ok_or_else(|| format!("generation {generation} was not seen ready"))
}

fn ready_ms(line: &str) -> Result<f64, String> {
    line.split("ready after ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no delay in {line:?}"))
}

/// Median readiness delay of `reloads` reloads, quiet and flooded.
fn flood(ctx: &Ctx, reloads: usize) -> Result<(f64, f64), String> {
    let ns = ctx.run_dir.join("flood.ns");
    let script = format!(
        "echo \"$NOTIFY_SOCKET\" > {ns}.tmp && mv {ns}.tmp {ns}; exec {} --server --delay 0.3 --no-notify",
        ctx.bench.display(),
        ns = ns.display()
    );
    let (mut p, _) = start(ctx, "readiness-flood", &script)?;
    ready_line(&p, 1)?;
    let mut quiet = Vec::new();
    let mut flooded = Vec::new();
    let mut generation = 1;
    for round in 0..reloads * 2 {
        let flood = round % 2 == 1;
        let _ = std::fs::remove_file(&ns);
        generation += 1;
        p.signal(Signal::SIGHUP)?;
        let stranger = if flood {
            let name = wait_file(&ns)?;
            let name = name
                .trim()
                .strip_prefix('@')
                .ok_or("NOTIFY_SOCKET is not abstract")?
                .to_string();
            Some(Stranger::start(&name)?)
        } else {
            None
        };
        let ms = ready_ms(&ready_line(&p, generation)?);
        reload_done(&p, generation)?;
        if let Some(s) = stranger {
            s.stop();
        }
        if flood {
            flooded.push(ms?);
        } else {
            quiet.push(ms?);
        }
    }
    p.stop(Duration::from_secs(5));
    Ok((stats::median(&quiet), stats::median(&flooded)))
}

fn wait_file(path: &Path) -> Result<String, String> {
    let end = Instant::now() + WAIT;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            return Ok(s);
        }
        if Instant::now() > end {
            return Err(format!("{} never appeared", path.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// 1000 datagrams/s from this process, which relaunch did not start.
struct Stranger {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Stranger {
    fn start(name: &str) -> Result<Stranger, String> {
        let to = UnixAddr::from_abstract_name(name).map_err(|e| e.to_string())?;
        let sock = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let _ = sock.send_to_addr(b"READY=1\nSTATUS=stranger", &to);
                next += Duration::from_millis(1);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        Ok(Stranger { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// A select() server: sleeps `delay` s, then answers with its pid; writes
/// the wall-clock time (seconds of the UTC day) of its first accept to
/// ARGV[1]-PID.
const SELECT_SERVER: &str = r#"
import os, select, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
out = '%s-%d' % (sys.argv[1], os.getpid())
time.sleep(float(sys.argv[2]))
s = socket.socket(fileno=3)
first = True
while True:
    select.select([s], [], [])
    c, _ = s.accept()
    if first:
        first = False
        with open(out + '.tmp', 'w') as f:
            f.write('%.6f' % (time.time() % 86400))
        os.rename(out + '.tmp', out)
    c.recv(4096)
    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n%07d\n' % (os.getpid() % 10000000))
    c.close()
"#;

/// Per reload: ms between the new generation's first accept and the moment
/// relaunch logged it ready.
fn select_server(ctx: &Ctx, delay: f64, reloads: usize) -> Result<Vec<f64>, String> {
    let script_path = ctx.run_dir.join("select_server.py");
    std::fs::write(&script_path, SELECT_SERVER).map_err(|e| e.to_string())?;
    let first = ctx.run_dir.join("first");
    let script = format!(
        "exec python3 {} {} {delay}",
        script_path.display(),
        first.display()
    );
    let (mut p, port) = start(ctx, "readiness-select", &script)?;
    ready_line(&p, 1)?;
    let load = Load::start(
        ([127, 0, 0, 1], port).into(),
        8,
        Instant::now(),
        Duration::from_secs(5),
    );
    let mut late = Vec::new();
    for generation in 2..2 + reloads as u64 {
        p.signal(Signal::SIGHUP)?;
        let line = ready_line(&p, generation)?;
        let pid = line
            .split("pid=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .ok_or_else(|| format!("no pid in {line:?}"))?;
        let accepted: f64 = wait_file(Path::new(&format!("{}-{pid}", first.display())))?
            .trim()
            .parse()
            .map_err(|e| format!("first accept time: {e}"))?;
        let seen = seconds_of_day(&line)?;
        late.push((seen - accepted).rem_euclid(86400.0) * 1000.0);
        reload_done(&p, generation)?;
    }
    load.finish();
    p.stop(Duration::from_secs(5));
    Ok(late)
}

/// The UTC time of day of a log line's timestamp ("2026-11-27T05:26:44.654962Z ...").
fn seconds_of_day(line: &str) -> Result<f64, String> {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|t| t.split('T').nth(1))
        .and_then(|t| t.strip_suffix('Z'))
        .ok_or_else(|| format!("no timestamp in {line:?}"))?;
    let parts: Vec<f64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [h, m, s] => Ok(h * 3600.0 + m * 60.0 + s),
        _ => Err(format!("bad timestamp in {line:?}")),
    }
}

fn reload_done(p: &Proc, generation: u64) -> Result<(), String> {
    p.lines
        .wait_for(WAIT, |ls| {
            ls.iter()
                .any(|l| l.contains(&format!("reload done: generation {generation} ")))
                .then_some(())
        })
        .ok_or_else(|| format!("reload to generation {generation} did not finish"))
}
