//! Test helpers: run the real binary, read what the probe child saw, drive
//! client load. Everything waits on an event under a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn relaunch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_relaunch")
}

/// An example binary built by `cargo test` (target/debug/examples/NAME).
pub fn example(name: &str) -> PathBuf {
    let p = Path::new(relaunch_bin())
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --examples`",
        p.display()
    );
    p
}

pub fn example_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

pub fn probe() -> PathBuf {
    example("probe")
}

/// Fails the test when a tool is missing under CI; elsewhere says so and skips.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required under CI=true but is not installed");
        }
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

/// Whether python3 can import `module` (installed from .ci/requirements.txt);
/// as [`require_tool`], a missing one fails under CI=true and skips elsewhere.
pub fn python_has(module: &str) -> bool {
    if !require_tool("python3") {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{module} is required under CI=true: pip install -r .ci/requirements.txt"
        );
        eprintln!("skipping: python3 cannot import {module}");
    }
    ok
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "relaunch-it-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the probe's JSON report once it has been written (atomically).
pub fn read_report(path: &Path) -> serde_json::Value {
    wait_for(
        &format!("probe report {}", path.display()),
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            serde_json::from_str(&text).ok()
        },
    )
}

/// The probe's record of fd `n`.
pub fn fd(report: &serde_json::Value, n: i64) -> &serde_json::Value {
    report["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == n)
        .unwrap_or_else(|| panic!("fd {n} missing in {report:#}"))
}

/// The fd numbers the probe had open, sorted.
pub fn fd_numbers(report: &serde_json::Value) -> Vec<i64> {
    report["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fd"].as_i64().unwrap())
        .collect()
}

/// A failed assertion while holding the lock must not turn into an abort.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Collected stderr lines of a running process, waitable.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, l: String) {
        let (m, c) = &*self.0;
        lock(m).push(l);
        c.notify_all();
    }
    pub fn all(&self) -> Vec<String> {
        lock(&self.0.0).clone()
    }
    pub fn text(&self) -> String {
        self.all().join("\n")
    }
    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|l| l.contains(needle)).count()
    }
    /// Waits until `n` lines contain `needle`; returns the last of them.
    pub fn wait_n(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let (m, c) = &*self.0;
        let end = Instant::now() + timeout;
        let mut g = lock(m);
        loop {
            let hits: Vec<&String> = g.iter().filter(|l| l.contains(needle)).collect();
            if hits.len() >= n {
                return hits[n - 1].clone();
            }
            let now = Instant::now();
            assert!(
                now < end,
                "timed out waiting for {n}x {needle:?}; stderr so far:\n{}",
                g.join("\n")
            );
            g = c
                .wait_timeout(g, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    pub fn wait(&self, needle: &str, timeout: Duration) -> String {
        self.wait_n(needle, 1, timeout)
    }
}

/// A running relaunch. Dropping it stops it (TERM, then KILL) and dumps its log.
pub struct Relaunch {
    pub child: Child,
    pub log: Lines,
    reader: Option<JoinHandle<()>>,
    pub status: Option<ExitStatus>,
}

impl Relaunch {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(relaunch_bin()).args(args))
    }

    pub fn start_with(cmd: &mut Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relaunch");
        let log = Lines::default();
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => l2.push(l),
                    Err(_) => break,
                }
            }
        });
        Relaunch {
            child,
            log,
            reader: Some(reader),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The address of the listener logged as fd `fd`.
    pub fn listen_addr(&self, fd: i32) -> SocketAddr {
        let line = self
            .log
            .wait(&format!(" as fd {fd} "), Duration::from_secs(10));
        let addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split(" as fd")
            .next()
            .unwrap();
        addr.parse()
            .unwrap_or_else(|_| panic!("not an address: {addr}"))
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit within `timeout`; panics (with the log) if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                self.status = Some(s);
                return s;
            }
            assert!(
                Instant::now() < end,
                "relaunch did not exit within {timeout:?}; log:\n{}",
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Relaunch {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- relaunch log ----\n{}\n----------------------",
                self.log.text()
            );
        }
    }
}

/// Runs relaunch to completion (with a deadline) and returns (status, stderr).
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut r = Relaunch::start(args);
    let s = r.wait_exit(timeout);
    (s, r.log.text())
}

/// Where a test's clients connect.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// GET / from `peer` and return the body.
pub fn get_from(peer: &Peer) -> std::io::Result<String> {
    match peer {
        Peer::Tcp(addr) => get(*addr),
        Peer::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            request(s)
        }
    }
}

/// GET / and return the body (the server's pid in our examples).
pub fn get(addr: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    request(s)
}

fn request(mut s: impl Read + Write) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let body = buf
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    if !buf.starts_with("HTTP/1.") || body.is_empty() {
        return Err(std::io::Error::other(format!("bad response: {buf:?}")));
    }
    Ok(body)
}

pub fn wait_serving(addr: SocketAddr) -> String {
    wait_for(
        &format!("an answer on {addr}"),
        Duration::from_secs(20),
        || get(addr).ok(),
    )
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: usize,
    pub refused: usize,
    pub reset: usize,
    pub timeout: usize,
    pub other: usize,
    pub pids: std::collections::BTreeSet<String>,
    pub errors: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn failed(&self) -> usize {
        self.refused + self.reset + self.timeout + self.other
    }

    /// Every count, the pids that answered and the first errors, for an
    /// assertion's message.
    pub fn summary(&self) -> String {
        format!(
            "ok {}, refused {}, reset {}, timeout {}, other (short answers) {}, pids {:?}, first \
             errors {:?}",
            self.ok, self.refused, self.reset, self.timeout, self.other, self.pids, self.errors
        )
    }
}

/// `conns` threads doing connect → request → response until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(addr: SocketAddr, conns: usize) -> Self {
        Load::start_at(Peer::Tcp(addr), conns)
    }

    pub fn start_at(peer: Peer, conns: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..conns)
            .map(|_| {
                let stop = stop.clone();
                let peer = peer.clone();
                std::thread::spawn(move || {
                    let mut r = LoadReport::default();
                    // Bounded: a test never loops forever.
                    let end = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let t = Instant::now();
                        match get_from(&peer) {
                            Ok(pid) => {
                                r.ok += 1;
                                r.pids.insert(pid);
                                r.latencies.push(t.elapsed());
                            }
                            Err(e) => {
                                match e.kind() {
                                    std::io::ErrorKind::ConnectionRefused => r.refused += 1,
                                    std::io::ErrorKind::ConnectionReset => r.reset += 1,
                                    std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::WouldBlock => r.timeout += 1,
                                    _ => r.other += 1,
                                }
                                if r.errors.len() < 5 {
                                    r.errors.push(e.to_string());
                                }
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().unwrap();
            total.ok += r.ok;
            total.refused += r.refused;
            total.reset += r.reset;
            total.timeout += r.timeout;
            total.other += r.other;
            total.pids.extend(r.pids);
            total.errors.extend(r.errors);
            total.latencies.extend(r.latencies);
        }
        total
    }
}

/// Waits until the set of pids answering on `addr` no longer contains `old`.
pub fn wait_new_pid(addr: SocketAddr, old: &str) -> String {
    wait_for(
        &format!("a pid other than {old} answering"),
        Duration::from_secs(30),
        || get(addr).ok().filter(|p| p != old),
    )
}

pub fn pid_alive(pid: i32) -> bool {
    // Zombies count as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Children of `pid` per /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// A deployable "app": a script that runs whatever `mode` says, so a test can
/// change what the next generation is, as a deploy would.
pub struct App {
    pub dir: TempDir,
}

impl App {
    pub fn new(tag: &str, mode: &str) -> Self {
        let dir = TempDir::new(tag);
        let script = dir.join("app.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\n. {}\n", dir.join("mode").display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let app = App { dir };
        app.deploy(mode);
        app
    }
    /// `mode` is shell, sourced by the app script; it should `exec` the server.
    pub fn deploy(&self, mode: &str) {
        let tmp = self.dir.join("mode.tmp");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(tmp, self.dir.join("mode")).unwrap();
    }
    pub fn script(&self) -> String {
        self.dir.join("app.sh").display().to_string()
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
}

pub fn pid_server(args: &str) -> String {
    format!("exec {} {args}\n", example("pid_server").display())
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // state ppid pgrp ...
        if rest.len() > 2 && rest[0] != "Z" && rest[2] == pgid.to_string() {
            out.push(pid);
        }
    }
    out
}

/// `relaunch status` of the relaunch at `control`, as printed.
pub fn status(control: &std::path::Path) -> String {
    let out = std::process::Command::new(relaunch_bin())
        .args(["status", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until relaunch answers on its control socket `ctl`.
pub fn wait_control(ctl: &str) {
    wait_for("relaunch's control socket", Duration::from_secs(30), || {
        let answered = cli(&["status", "--control", ctl], Duration::from_secs(30)).0;
        (answered == Some(0)).then_some(())
    });
}

/// A TCP port free on loopback a moment ago.
/// A port nothing listens on, below the ephemeral range: a port the kernel
/// handed out at bind(0) may be taken, before relaunch binds it, as the
/// local port of one of the load's many client connections.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let base = (low / 2).max(1024);
    let span = low - base;
    // Each test process starts elsewhere: several may run at once.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let free = |ip: &str| TcpListener::bind((ip, port)).is_ok();
        if free("0.0.0.0") && free("::") && free("127.0.0.1") {
            return port;
        }
    }
    panic!("no free port in {base}..{low}");
}

/// (Recv-Q, Send-Q) of every TCP listener on `port`; Send-Q is the backlog.
/// The listeners on `port`, each of which relaunch holds (as root, a
/// held port has a socket per generation alive); an app's own fails.
pub fn held_listeners_on(port: u16) -> Vec<(String, u32)> {
    let found = listeners_on(port);
    assert!(!found.is_empty(), "nothing listens on {port}");
    for (line, _) in &found {
        assert!(
            line.contains("\"relaunch\""),
            "a listener on {port} that relaunch does not hold: {found:?}"
        );
    }
    found
}

pub fn listeners_on(port: u16) -> Vec<(String, u32)> {
    let out = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (l.to_string(), cols[2].parse().unwrap())
        })
        .collect()
}

/// The keeper of the relaunch `pid` (the process that ends what relaunch
/// started if relaunch is killed): the `relaunch-keeper` that holds the
/// other end of one of relaunch's pipes.
pub fn keeper_of(pid: i32) -> Option<i32> {
    let pipes = |p: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|l| l.to_string_lossy().into_owned())
                    .filter(|l| l.starts_with("pipe:"))
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

/// Runs a relaunch client command; kills it if it has not exited within
/// `limit`, so a hang is a test failure, not a stuck suite.
pub fn cli(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let child = Command::new(relaunch_bin())
        .args(args)
        .env_remove("RELAUNCH_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (out, hung) = match rx.recv_timeout(limit) {
        Ok(out) => (out.unwrap(), false),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (rx.recv().unwrap().unwrap(), true)
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if hung {
        return (None, format!("HUNG for {limit:?}; output: {text}"));
    }
    (out.status.code(), text)
}
