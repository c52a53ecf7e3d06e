//! The developer loop: a save in a Rust crate, then its build,
//! then the new version answering, under client load. Printed as lines after
//! the scenarios:
//!
//! - relaunch `--watch src --build "cargo build"`: the old binary serves
//!   during the build; target: the new version answers within 2 s of the
//!   save, 0 failed requests.
//! - relaunch `--watch . -- python3 app.py`, no build step: the same target.
//! - `systemfd --no-pid -s http::PORT -- cargo watch -x run` (the setup
//!   systemfd's README shows), and `cargo watch -x run` restarting a server
//!   that binds the port itself: both stop the old server when the build
//!   starts. Each runs where its tools are installed (`bench/setup.sh`),
//!   and is skipped otherwise.
//!
//! The crate is made here (no dependencies, so it builds offline) and builds
//! into `target/devloop`, kept between runs. Its server answers with its pid,
//! like the bench's own server, so "the new version answers" is "a pid not
//! seen before the save answers".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::load::{Load, Outcome, Sample};
use crate::plan::Plan;
use crate::procs::{Proc, find_tool, free_port};
use crate::targets::{Ctx, listening_port};

/// A save must be served within this.
const TARGET_SECS: f64 = 2.0;
/// The load: a developer's browser and a test loop, not a load test. The
/// build needs the CPUs (2 here): closed-loop clients at full speed would
/// time how fast cargo runs beside them, not the loop.
const CLIENTS: usize = 4;
const CLIENT_PAUSE: Duration = Duration::from_millis(10);
/// A first (cold) build of the crate, or a save's build on a busy machine.
const BUILD_WAIT: Duration = Duration::from_secs(180);

struct Outcomes {
    /// Save to the new version's first answer, seconds.
    served_after: Vec<f64>,
    /// Requests started between a save and the new version's first answer.
    during: usize,
    failed: usize,
    /// The slowest of those, ms.
    worst_ms: f64,
}

/// Prints what it measured and returns the acceptance lines, and whether
/// relaunch's run broke (which fails the bench, as a broken scenario does).
pub fn run(plan: &Plan, ctx: &Ctx) -> (Vec<(String, bool)>, bool) {
    let mut broken = false;
    let saves = if plan.mode == "smoke" { 1 } else { 3 };
    let mut lines = Vec::new();
    for (peer, what) in [(Peer::Relaunch, "Rust"), (Peer::RelaunchPython, "Python")] {
        let name = peer.name();
        if peer == Peer::RelaunchPython && find_tool("python3").is_none() {
            println!("dev-loop, {name}: skipped (python3 not installed)");
            lines.push((format!("dev loop, {what}: python3 not installed"), false));
            continue;
        }
        match measure(plan, ctx, peer, saves) {
            Ok(o) => {
                let median = print(name, &o);
                lines.push((
                    format!(
                        "dev loop, {what}: relaunch serves a save within {TARGET_SECS} s (got \
                         {median:.2} s, median of {saves}), 0 failed requests meanwhile (got {})",
                        o.failed
                    ),
                    median <= TARGET_SECS && o.failed == 0,
                ));
            }
            Err(e) => {
                println!("dev-loop, {name}: FAILED: {e}");
                lines.push((format!("dev loop, {what}: {e}"), false));
                broken = true;
            }
        }
    }
    for peer in [Peer::SystemfdCargoWatch, Peer::CargoWatch] {
        let name = peer.name();
        // CI's smoke run stays short and the same wherever peers happen to be.
        if plan.mode == "smoke" {
            println!("dev-loop, {name}: skipped (--smoke)");
            continue;
        }
        if let Some(tool) = peer.needs().iter().find(|t| find_tool(t).is_none()) {
            println!("dev-loop, {name}: skipped ({tool} not installed; see bench/setup.sh)");
            continue;
        }
        match measure(plan, ctx, peer, saves) {
            Ok(o) => {
                print(name, &o);
            }
            Err(e) => println!("dev-loop, {name}: FAILED: {e}"),
        }
    }
    (lines, broken)
}

/// One line; returns the median save-to-answer time.
fn print(name: &str, o: &Outcomes) -> f64 {
    let median = crate::stats::median(&o.served_after);
    let each: Vec<String> = o.served_after.iter().map(|s| format!("{s:.2}")).collect();
    println!(
        "dev-loop, {name}: save to new version answering {median:.2} s (each: {} s); during \
         build and swap {} requests, {} failed, slowest {:.0} ms",
        each.join(", "),
        o.during,
        o.failed,
        o.worst_ms
    );
    median
}

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Relaunch,
    RelaunchPython,
    SystemfdCargoWatch,
    CargoWatch,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Relaunch => "relaunch --watch src --build \"cargo build\"",
            Peer::RelaunchPython => "relaunch --watch . -- python3 app.py",
            Peer::SystemfdCargoWatch => "systemfd + cargo watch -x run",
            Peer::CargoWatch => "cargo watch -x run (self-binding server)",
        }
    }

    fn needs(self) -> &'static [&'static str] {
        match self {
            Peer::Relaunch => &["cargo"],
            Peer::RelaunchPython => &["python3"],
            Peer::SystemfdCargoWatch => &["cargo", "systemfd", "cargo-watch"],
            Peer::CargoWatch => &["cargo", "cargo-watch"],
        }
    }
}

fn measure(plan: &Plan, ctx: &Ctx, peer: Peer, saves: usize) -> Result<Outcomes, String> {
    if let Some(tool) = peer.needs().iter().find(|t| find_tool(t).is_none()) {
        return Err(format!("{tool} is not on PATH"));
    }
    let dir = ctx.run_dir.join(format!("devloop-{}", peer as u8));
    let _ = std::fs::remove_dir_all(&dir);
    let save = |n| match peer {
        Peer::RelaunchPython => make_python(&dir, n),
        _ => make_crate(&dir, n),
    };
    save(0)?;
    let target = target_dir(ctx)?;
    let bin = target.join("debug/devloop");
    let tag = format!("devloop-{}", peer as u8);
    let (proc, port) = match peer {
        Peer::Relaunch => {
            let mut c = Command::new(&ctx.relaunch);
            c.args(["-l", "127.0.0.1:0", "--watch", "src", "--build"])
                .arg("cargo build --offline --quiet")
                .arg("--")
                .arg(&bin);
            let p = spawn(&tag, &mut c, &dir, &target, ctx)?;
            let port = p
                .lines
                .wait_for(BUILD_WAIT, |ls| ls.iter().find_map(|l| listening_port(l)))
                .ok_or("relaunch did not log its port")?;
            (p, port)
        }
        Peer::RelaunchPython => {
            let mut c = Command::new(&ctx.relaunch);
            c.args([
                "-l",
                "127.0.0.1:0",
                "--watch",
                ".",
                "--",
                "python3",
                "app.py",
            ]);
            let p = spawn(&tag, &mut c, &dir, &target, ctx)?;
            let port = p
                .lines
                .wait_for(BUILD_WAIT, |ls| ls.iter().find_map(|l| listening_port(l)))
                .ok_or("relaunch did not log its port")?;
            (p, port)
        }
        Peer::SystemfdCargoWatch => {
            let port = free_port()?;
            let mut c = Command::new("systemfd");
            c.args(["--no-pid", "-s", &format!("http::127.0.0.1:{port}"), "--"])
                .args(cargo_watch());
            (spawn(&tag, &mut c, &dir, &target, ctx)?, port)
        }
        Peer::CargoWatch => {
            let port = free_port()?;
            let mut c = Command::new("cargo");
            c.args(&cargo_watch()[1..]).env("PORT", port.to_string());
            (spawn(&tag, &mut c, &dir, &target, ctx)?, port)
        }
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let first = Instant::now() + BUILD_WAIT;
    while crate::load::request(addr, Duration::from_secs(2)).is_err() {
        if Instant::now() > first {
            return Err(format!(
                "{} never answered; its log: {}",
                peer.name(),
                proc.lines.tail(10)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let epoch = Instant::now();
    let load = Load::paced(addr, CLIENTS, epoch, plan.timeout, CLIENT_PAUSE);
    std::thread::sleep(Duration::from_secs_f64(plan.warmup));
    let mut windows = Vec::new();
    for n in 1..=saves {
        let before = load.seen.snapshot();
        let saved = epoch.elapsed().as_secs_f64();
        save(n)?;
        let new = load.seen.wait_new(&before, BUILD_WAIT);
        let answered = epoch.elapsed().as_secs_f64();
        if new.is_none() {
            load.finish();
            return Err(format!(
                "save {n}: no new version answered within {} s; its log: {}",
                BUILD_WAIT.as_secs(),
                proc.lines.tail(10)
            ));
        }
        windows.push((saved, answered));
        std::thread::sleep(Duration::from_secs_f64(plan.gap));
    }
    let samples = load.finish();
    stop(proc);
    Ok(outcomes(&samples, &windows))
}

fn outcomes(samples: &[Sample], windows: &[(f64, f64)]) -> Outcomes {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| windows.iter().any(|&(a, b)| s.at >= a && s.at <= b))
        .collect();
    Outcomes {
        served_after: windows.iter().map(|(a, b)| b - a).collect(),
        during: inside.len(),
        failed: inside.iter().filter(|s| s.outcome != Outcome::Ok).count(),
        worst_ms: inside.iter().map(|s| s.latency_ms).fold(0.0, f64::max),
    }
}

/// `cargo watch -x run`, as systemfd's README pairs them.
fn cargo_watch() -> Vec<String> {
    [
        "cargo",
        "watch",
        "-q",
        "-w",
        "src",
        "-x",
        "run --offline --quiet",
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(tag: &str, c: &mut Command, dir: &Path, target: &Path, ctx: &Ctx) -> Result<Proc, String> {
    c.current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("RUST_LOG", "info");
    Proc::spawn(tag, c, &ctx.log_dir)
}

fn stop(mut p: Proc) {
    p.stop(Duration::from_secs(10));
}

/// target/devloop, beside the bench's own build: kept, so builds are warm.
fn target_dir(ctx: &Ctx) -> Result<PathBuf, String> {
    ctx.relaunch
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("devloop"))
        .ok_or_else(|| "cannot place target/devloop".into())
}

/// The crate at `dir`, its source at version `n` (each save changes the code,
/// so each build really compiles).
fn make_crate(dir: &Path, n: usize) -> Result<(), String> {
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .and_then(|_| std::fs::write(path, text))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if n == 0 {
        write(
            &dir.join("Cargo.toml"),
            "[package]\nname = \"devloop\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
        )?;
    }
    write(
        &dir.join("src/main.rs"),
        &SERVER.replace("VERSION_N", &n.to_string()),
    )
}

/// The Python app at `dir`, at version `n`: a stdlib server on fd 3 that
/// answers with its pid and stops gracefully on SIGTERM.
fn make_python(dir: &Path, n: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .and_then(|_| {
            std::fs::write(
                dir.join("app.py"),
                PYTHON.replace("VERSION_N", &n.to_string()),
            )
        })
        .map_err(|e| format!("cannot write {}: {e}", dir.join("app.py").display()))
}

const PYTHON: &str = r#"import os, signal, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = VERSION_N

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight

sock = socket.socket(fileno=3)
sock.setblocking(False)  # shared with the other generation
server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.1)
server.server_close()
"#;

/// The crate's server: answers every request with its pid; takes fd 3 when
/// LISTEN_FDS says so (relaunch, systemfd), else binds 127.0.0.1:$PORT; on
/// SIGTERM finishes the request in hand, then exits. std only.
const SERVER: &str = r#"use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

const VERSION: u32 = VERSION_N;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

unsafe extern "C" {
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn poll(fds: *mut PollFd, n: u64, timeout_ms: i32) -> i32;
}

fn main() {
    unsafe { signal(15, on_term) };
    let listener = if std::env::var("LISTEN_FDS").is_ok() {
        // SAFETY: the launcher passes the listener at fd 3.
        unsafe { TcpListener::from_raw_fd(3) }
    } else {
        let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
        TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind")
    };
    eprintln!("devloop version {VERSION}: pid {}", std::process::id());
    while !STOP.load(Ordering::SeqCst) {
        let mut fd = PollFd { fd: listener.as_raw_fd(), events: 1, revents: 0 };
        if unsafe { poll(&mut fd, 1, 100) } != 1 {
            continue;
        }
        let Ok((mut s, _)) = listener.accept() else { continue };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let body = format!("{}\n", std::process::id());
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
"#;

pub fn self_check() -> Result<(), String> {
    let ok = |at: f64| Sample {
        at,
        latency_ms: 1.0,
        outcome: Outcome::Ok,
        pid: 1,
    };
    let refused = Sample {
        outcome: Outcome::Refused,
        latency_ms: 30.0,
        ..ok(1.5)
    };
    let o = outcomes(&[ok(0.5), ok(1.2), refused, ok(3.0)], &[(1.0, 2.0)]);
    if o.served_after != [1.0] || o.during != 2 || o.failed != 1 || o.worst_ms != 30.0 {
        return Err(format!(
            "outcomes: {:?} {} {} {}",
            o.served_after, o.during, o.failed, o.worst_ms
        ));
    }
    if !SERVER.contains("VERSION_N") || !PYTHON.contains("VERSION_N") {
        return Err("the crate's source lost its version slot".into());
    }
    Ok(())
}
