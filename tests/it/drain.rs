//! Reloads that lose nothing for apps that die on SIGTERM. Each app is
//! written the usual way (tests/apps/drain/): it binds the port itself (bind
//! interception hands it relaunch's socket), has no signal handler, and
//! spends 30 ms on each request, so requests are in flight at every reload.
//! Under 8 clients making one connection per request, 5 reloads fail no
//! request of any kind: the old generation gets no new connection, and is
//! stopped only once it is idle. Then a `kill -9` of the app refuses
//! nothing. Also: a websockets server's old generation keeps its open
//! connections until `--drain-timeout`, and `status` shows them meanwhile.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::intercept_peers::{dynamically_linked, go_binary};
use crate::util::*;

const T: Duration = Duration::from_secs(30);
const RELOADS: usize = 5;
const CLIENTS: usize = 8;

fn app(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps/drain")
        .join(name)
        .display()
        .to_string()
}

/// Waits for `f`, failing at once (with the log) if relaunch exits meanwhile.
fn while_running<V>(r: &mut Relaunch, what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let end = Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if let Some(status) = r.child.try_wait().unwrap() {
            panic!(
                "relaunch exited ({status}) while waiting for {what}; log:\n{}",
                r.log.text()
            );
        }
        assert!(
            Instant::now() < end,
            "timed out after {T:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `relaunch --port P OPTIONS -- APP...`, each `PORT` in APP replaced by
/// P, on a free port P; on another one if P was taken meanwhile (the
/// clients' own ports come from the same range, and they use many).
pub fn start_on_a_free_port(options: &[&str], app: &[&str]) -> (Relaunch, u16) {
    for _ in 0..3 {
        let port = free_port();
        let p = port.to_string();
        let mut args = vec!["--port", &p];
        args.extend(options);
        args.push("--");
        let app: Vec<String> = app.iter().map(|a| a.replace("PORT", &p)).collect();
        args.extend(app.iter().map(String::as_str));
        let mut r = Relaunch::start(&args);
        let bound = wait_for("relaunch to bind or exit", T, || {
            if r.log.count("listening on") > 0 {
                return Some(true);
            }
            r.child.try_wait().unwrap().map(|_| false)
        });
        if bound {
            return (r, port);
        }
        let status = r.wait_exit(T);
        let log = r.log.text();
        assert!(
            log.contains("already in use"),
            "relaunch exited ({status}) before binding:\n{log}"
        );
    }
    panic!("three free ports in a row were taken before relaunch could bind them");
}

/// Some 300 ms of load on one process alone: 10 requests, each answered
/// by `pid`.
fn serves_alone(addr: SocketAddr, pid: &str, when: &str) {
    for _ in 0..10 {
        let got = get(addr).unwrap_or_else(|e| panic!("{when}: {e}"));
        assert_eq!(got, pid, "{when}, only pid {pid} serves");
    }
}

/// `relaunch --port P -- APP... P`: 5 reloads under load fail no request,
/// then a `kill -9` of the serving process refuses none.
fn loses_nothing(tag: &str, app: &[&str]) {
    let dir = TempDir::new(tag);
    let ctl = dir.join("ctl.sock").display().to_string();
    let (mut r, port) = start_on_a_free_port(&["--control", &ctl], app);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let last = reloads_lose_nothing(&mut r, addr, &ctl);

    let load = Load::start(addr, CLIENTS);
    wait_serving(addr);
    unsafe { libc::kill(last.parse().unwrap(), libc::SIGKILL) };
    let new = wait_new_pid(addr, &last);
    serves_alone(addr, &new, "after the kill");
    let rep = load.finish();
    let sum = rep.summary();
    // What the killed process had accepted is lost with it (reset or cut
    // short); what waited in the queue is answered by its replacement.
    assert_eq!(rep.refused + rep.timeout, 0, "kill -9: {sum}");
    assert!(rep.ok > 0, "kill -9: the load ran: {sum}");
}

/// 5 reloads of relaunch `r` (control socket `ctl`) under load on `addr`
/// fail no request; the pid serving at the end.
fn reloads_lose_nothing(r: &mut Relaunch, addr: SocketAddr, ctl: &str) -> String {
    let mut last = while_running(r, "the app's first answer", || get(addr).ok());
    assert_eq!(r.log.count("drain is off"), 0, "{}", r.log.text());
    let load = Load::start(addr, CLIENTS);
    serves_alone(addr, &last, "before the first reload");
    for n in 1..=RELOADS {
        let (code, out) = cli(&["reload", "--control", ctl], T);
        assert_eq!(code, Some(0), "reload {n}: {out}");
        let old = last;
        last = wait_new_pid(addr, &old);
        // The next reload comes once the old generation is gone, so each
        // one's stop happens under load, and generations never pile up.
        let old: i32 = old.parse().unwrap();
        wait_for(
            &format!("reload {n}: the old generation's pid {old} to be gone"),
            T,
            || (!pid_alive(old)).then_some(()),
        );
        serves_alone(addr, &last, &format!("after reload {n}"));
    }
    let rep = load.finish();
    let sum = rep.summary();
    assert!(rep.ok > 0, "the load ran: {sum}");
    assert_eq!(
        rep.failed(),
        0,
        "failed requests over {RELOADS} reloads: {sum}"
    );
    assert!(
        rep.pids.len() > RELOADS,
        "the load saw every generation: {sum}"
    );
    last
}

/// A TCP socket that systemd made with ReusePort=yes (made here as PID 1
/// makes it: as root, SO_REUSEPORT, listening; passed as fd 3): relaunch,
/// root too, adds each generation's socket to its group, so the old
/// generation drains as with a port relaunch bound.
#[test]
fn a_reuseport_socket_from_a_socket_unit_drains_too() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").is_err(), "CI runs as root");
        eprintln!("socket unit drain: NOT RUN: needs root");
        return;
    }
    let dir = TempDir::new("drain-socket-unit");
    let ctl = dir.join("ctl.sock").display().to_string();
    let a = app("threading_server.py");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_port(true).unwrap();
    let port = free_port();
    sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
        .unwrap();
    sock.listen(128).unwrap();
    let fd = sock.as_raw_fd();
    let p = port.to_string();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" "$@""#,
        relaunch_bin(),
        "--control",
        &ctl,
        "--",
        "python3",
        &a,
        &p,
    ]);
    // SAFETY: dup2 between fork and exec, on fds this test owns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            let done = match fd {
                3 => libc::fcntl(3, libc::F_SETFD, 0),
                _ => libc::dup2(fd, 3),
            };
            if done < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut r = Relaunch::start_with(&mut cmd);
    drop(sock);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    reloads_lose_nothing(&mut r, addr, &ctl);
    assert!(
        r.log.count("finishes what it accepted") >= RELOADS,
        "{}",
        r.log.text()
    );
}

/// `relaunch -l unix:PATH -- APP... PATH`: 5 reloads under load fail no
/// request, whatever the app does to the socket file first; then relaunch
/// removes the file it leaves at the end.
fn unix_loses_nothing(tag: &str, app: &[&str]) {
    let dir = TempDir::new(tag);
    let ctl = dir.join("ctl.sock").display().to_string();
    let path = dir.join("app.sock");
    let spec = format!("unix:{}", path.display());
    let app: Vec<String> = app
        .iter()
        .map(|a| a.replace("PATH", &path.display().to_string()))
        .collect();
    let mut args = vec!["-l", &spec, "--control", &ctl, "--"];
    args.extend(app.iter().map(String::as_str));
    let mut r = Relaunch::start(&args);
    let peer = Peer::Unix(path.clone());
    let mut last = while_running(&mut r, "the app's first answer", || get_from(&peer).ok());
    assert_eq!(r.log.count("drain is off"), 0, "{}", r.log.text());

    let load = Load::start_at(peer.clone(), CLIENTS);
    for n in 1..=RELOADS {
        let (code, out) = cli(&["reload", "--control", &ctl], T);
        assert_eq!(code, Some(0), "reload {n}: {out}");
        let old = last;
        last = while_running(
            &mut r,
            &format!("reload {n}: a pid other than {old}"),
            || get_from(&peer).ok().filter(|p| *p != old),
        );
        let old: i32 = old.parse().unwrap();
        while_running(
            &mut r,
            &format!("reload {n}: the old generation's pid {old} to be gone"),
            || (!pid_alive(old)).then_some(()),
        );
    }
    let rep = load.finish();
    let sum = rep.summary();
    assert!(rep.ok > 0, "the load ran: {sum}");
    assert_eq!(
        rep.failed(),
        0,
        "failed requests over {RELOADS} reloads: {sum}\n{}",
        r.log.text()
    );
    assert!(
        rep.pids.len() > RELOADS,
        "the load saw every generation: {sum}"
    );
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "ctl.sock")
        .collect();
    assert!(left.is_empty(), "files left: {left:?}\n{}", r.log.text());
}

#[test]
fn unix_threading_server_that_removes_the_file_loses_nothing_to_reloads() {
    let py = app("unix_threading_server.py");
    unix_loses_nothing("unix-threading", &["python3", &py, "PATH"]);
}

#[test]
fn unix_asyncio_server_loses_nothing_to_reloads() {
    let py = app("unix_asyncio_server.py");
    unix_loses_nothing("unix-asyncio", &["python3", &py, "PATH"]);
}

/// gunicorn takes its generation's socket from LISTEN_FDS (its --bind is
/// then ignored): an app that does not bind the path drains the same way.
#[test]
fn gunicorn_on_a_unix_socket_loses_nothing_to_reloads() {
    if !require_tool("gunicorn") {
        return;
    }
    let apps = example_src("").display().to_string();
    unix_loses_nothing(
        "unix-gunicorn",
        &[
            "gunicorn",
            "--chdir",
            &apps,
            "--workers",
            "2",
            "--bind",
            "unix:PATH",
            "gunicorn_app:app",
        ],
    );
}

#[test]
fn threading_tcp_server_with_reuseport_loses_nothing_to_reloads() {
    if !require_tool("python3") {
        return;
    }
    let a = app("threading_server.py");
    loses_nothing("drain-threading", &["python3", &a, "PORT"]);
}

#[test]
fn asyncio_server_loses_nothing_to_reloads() {
    if !require_tool("python3") {
        return;
    }
    let a = app("asyncio_server.py");
    loses_nothing("drain-asyncio", &["python3", &a, "PORT"]);
}

/// The shell stays between relaunch and the app (no exec), and outlives it.
#[test]
fn sh_wrapper_around_a_python_server_loses_nothing_to_reloads() {
    if !require_tool("python3") {
        return;
    }
    let script = format!("python3 {} PORT; echo done", app("threading_server.py"));
    loses_nothing("drain-sh", &["sh", "-c", &script]);
}

#[test]
fn go_net_http_loses_nothing_to_reloads() {
    let Some(server) = go_binary("drain", include_str!("../apps/drain/server.go")) else {
        return;
    };
    assert!(!dynamically_linked(&server), "CGO_ENABLED=0 builds static");
    let bin = server.display().to_string();
    loses_nothing("drain-go", &[&bin, "PORT"]);
}

#[test]
fn node_http_loses_nothing_to_reloads() {
    if !require_tool("node") {
        return;
    }
    let a = app("server.js");
    loses_nothing("drain-node", &["node", &a, "PORT"]);
}

/// werkzeug binds 127.0.0.1: relaunch's `--port` socket moves there.
#[test]
fn flask_app_run_loses_nothing_to_reloads() {
    if !python_has("flask") {
        return;
    }
    let a = app("flask_server.py");
    loses_nothing("drain-flask", &["python3", &a, "PORT"]);
}

/// A websocket client's connection: who served it and when it ended.
struct WsConn {
    pid: String,
    closed: Option<Instant>,
}

/// Opens a websocket on `addr`; the stream, past the server's 101 answer.
fn ws_open(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )?;
    let mut s = BufReader::new(s);
    let mut status = String::new();
    s.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("no upgrade: {status:?}")));
    }
    loop {
        let mut line = String::new();
        if s.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            return Ok(s);
        }
    }
}

/// The next text frame's text; None at a close frame. Server frames are
/// not masked; pings (every 20 s by default) do not come within a test.
fn ws_text(s: &mut BufReader<TcpStream>) -> io::Result<Option<String>> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head)?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b)?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b)?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        match head[0] & 0x0f {
            0x1 => return Ok(Some(String::from_utf8_lossy(&payload).into_owned())),
            0x8 => return Ok(None),
            _ => continue,
        }
    }
}

/// The pid that pushes frames on a new websocket to `addr`.
fn ws_pid(addr: SocketAddr) -> Option<String> {
    let mut s = ws_open(addr).ok()?;
    let text = ws_text(&mut s).ok()??;
    text.split(' ').next().map(String::from)
}

/// Clients that each hold a websocket, read its frames, and reconnect at
/// once when it closes.
struct WsClients {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<WsConn>>>,
    refused: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl WsClients {
    fn start(addr: SocketAddr, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|_| {
                let (stop, conns) = (stop.clone(), conns.clone());
                let (refused, failed) = (refused.clone(), failed.clone());
                std::thread::spawn(move || {
                    let end = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let opened = ws_open(addr).and_then(|mut s| {
                            let first = ws_text(&mut s)?
                                .ok_or_else(|| io::Error::other("closed before the first frame"))?;
                            Ok((s, first))
                        });
                        let (mut s, first) = match opened {
                            Ok(o) => o,
                            Err(e) => {
                                if e.kind() == io::ErrorKind::ConnectionRefused {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failed.lock().unwrap().push(e.to_string());
                                }
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        };
                        let pid = first.split(' ').next().unwrap_or("").to_string();
                        let i = {
                            let mut c = conns.lock().unwrap();
                            c.push(WsConn { pid, closed: None });
                            c.len() - 1
                        };
                        // Until the server closes it (or stops answering).
                        while !stop.load(Ordering::Relaxed)
                            && matches!(ws_text(&mut s), Ok(Some(_)))
                        {}
                        conns.lock().unwrap()[i].closed = Some(Instant::now());
                    }
                })
            })
            .collect();
        WsClients {
            stop,
            conns,
            refused,
            failed,
            threads,
        }
    }

    /// Open connections served by `pid`.
    fn open_to(&self, pid: &str) -> usize {
        let c = self.conns.lock().unwrap();
        c.iter()
            .filter(|c| c.pid == pid && c.closed.is_none())
            .count()
    }

    /// When the first connection to `pid` closed, if one has.
    fn first_close_of(&self, pid: &str) -> Option<Instant> {
        let c = self.conns.lock().unwrap();
        c.iter()
            .filter(|c| c.pid == pid)
            .filter_map(|c| c.closed)
            .min()
    }

    /// (refused connects, other failed connects).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.refused.load(Ordering::Relaxed), failed)
    }
}

/// A failed test stops its clients too.
impl Drop for WsClients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A reload with 6 websocket clients pushed to: none is refused; the old
/// generation keeps its 6 connections, shown by `status`, until
/// `--drain-timeout 3s` stops it; the clients then reconnect to the new one.
#[test]
fn websockets_old_generation_keeps_its_connections_until_the_drain_timeout() {
    const DRAIN: Duration = Duration::from_secs(3);
    const WS: usize = 6;
    if !python_has("websockets") {
        return;
    }
    let dir = TempDir::new("drain-ws");
    let ctl = dir.join("ctl.sock").display().to_string();
    let a = app("ws_server.py");
    let (mut r, port) = start_on_a_free_port(
        &["--control", &ctl, "--drain-timeout", "3s"],
        &["python3", &a, "PORT"],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let old = while_running(&mut r, "the first websocket", || ws_pid(addr));

    let clients = WsClients::start(addr, WS);
    wait_for(&format!("{WS} clients on pid {old}"), T, || {
        (clients.open_to(&old) == WS).then_some(())
    });
    let reload = Instant::now();
    // `relaunch reload` answers once the old generation is gone: after the drain.
    let reloading = {
        let ctl = ctl.clone();
        std::thread::spawn(move || cli(&["reload", "--control", &ctl], T))
    };
    let new = wait_for("a websocket from the new generation", T, || {
        ws_pid(addr).filter(|p| p != &old)
    });

    // While it drains, status shows the old generation's connections,
    // until it is stopped.
    let want = format!("generation 1 (draining): {WS} open connection(s)");
    let old_pid: i32 = old.parse().unwrap();
    let mut seen = false;
    wait_for("the old generation to be stopped", T, || {
        let shown = status(dir.join("ctl.sock").as_path());
        // Until the first measure is back, it says so.
        let measuring = !seen && shown.contains("generation 1 (draining): measuring");
        if shown.contains(&want) {
            seen = true;
        } else if reload.elapsed() < DRAIN - Duration::from_millis(300) && !measuring {
            panic!(
                "{:?} after the reload, status does not show {want:?}:\n{shown}",
                reload.elapsed()
            );
        }
        (!pid_alive(old_pid)).then_some(())
    });
    assert!(seen, "status never showed {want:?}");
    let (code, out) = reloading.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    let gone = reload.elapsed();
    let first_close = clients
        .first_close_of(&old)
        .expect("the old generation's connections closed")
        .duration_since(reload);
    assert!(
        first_close >= DRAIN - Duration::from_millis(100),
        "a connection to the old generation closed {first_close:?} after the reload, before --drain-timeout {DRAIN:?}"
    );
    assert!(
        gone < DRAIN + Duration::from_secs(5),
        "the old generation was stopped {gone:?} after the reload; --drain-timeout is {DRAIN:?}"
    );
    wait_for(&format!("{WS} clients on the new pid {new}"), T, || {
        (clients.open_to(&new) == WS).then_some(())
    });
    let after = status(dir.join("ctl.sock").as_path());
    assert!(!after.contains("draining"), "{after}");

    let (refused, failed) = clients.finish();
    assert_eq!(
        refused, 0,
        "refused websocket connects; other failures: {failed:?}"
    );
    assert_eq!(failed, Vec::<String>::new(), "failed websocket connects");
}

/// A socket made as `uid` (the fsuid of this thread around `socket()`),
/// SO_REUSEPORT, bound to `addr` and listening: what a process running as
/// that uid could make.
pub fn listener_as(uid: u32, addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setfsuid changes only this short-lived thread's fsuid.
            unsafe { libc::setfsuid(uid) };
            let made = Socket::new(Domain::for_address(addr), Type::STREAM, None);
            // SAFETY: as above; back to root before the thread ends.
            unsafe { libc::setfsuid(0) };
            let sock = made?;
            sock.set_reuse_address(true)?;
            sock.set_reuse_port(true)?;
            sock.bind(&addr.into())?;
            sock.listen(128)?;
            sock.set_nonblocking(true)?;
            Ok(sock)
        })
        .join()
        .unwrap()
    })
}

/// Nobody else can join the port's group: root and the app's uid get
/// EADDRINUSE. A listener that could (it runs as the group's own uid,
/// which nothing should) gets no connection, before or after a reload, and
/// the log names it; the reload then stops the old generation at once.
#[test]
fn no_connection_is_steered_to_a_listener_relaunch_does_not_own() {
    use std::os::unix::fs::MetadataExt;
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var("CI").is_err(), "CI runs as root");
        eprintln!("foreign listener: NOT RUN: needs root");
        return;
    }
    let dir = TempDir::new("drain-foreign");
    let ctl = dir.join("ctl.sock").display().to_string();
    let a = app("threading_server.py");
    let (mut r, port) = start_on_a_free_port(&["--control", &ctl], &["python3", &a, "PORT"]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = while_running(&mut r, "the app's first answer", || get(addr).ok());
    // The group's owner: the uid of the socket the child was given.
    let owner = std::fs::metadata(format!("/proc/{first}/fd/3"))
        .unwrap()
        .uid();
    assert_ne!(owner, 0, "the group is owned by a uid of its own");
    for uid in [0, 65534] {
        for ip in ["0.0.0.0", "127.0.0.1"] {
            let at: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let e = listener_as(uid, at).expect_err("nobody joins the group");
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EADDRINUSE),
                "uid {uid} on {at}"
            );
        }
    }
    let stranger =
        listener_as(owner, ([0, 0, 0, 0], port).into()).expect("the owner's uid can join");
    let load = Load::start(addr, CLIENTS);
    serves_alone(addr, &first, "with the stranger in the group");
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let next = wait_new_pid(addr, &first);
    serves_alone(addr, &next, "after the reload");
    let rep = load.finish();
    assert!(rep.ok > 0, "{}", rep.summary());
    let mut taken = 0;
    while stranger.accept().is_ok() {
        taken += 1;
    }
    assert_eq!(taken, 0, "connections reached the stranger");
    let log = r.log.text();
    assert!(
        log.contains("a listener relaunch does not own is on port"),
        "the log names it:\n{log}"
    );
    assert!(log.contains("without a drain"), "{log}");
}

/// gunicorn with two workers, two of them side by side (`--workers 2`):
/// a crashed master is restarted in its generation, on its generation's
/// socket, and a reload follows; under 8 clients nothing is refused or
/// times out, and only what the killed master's workers held is cut.
#[test]
fn gunicorn_masters_crash_and_reload_without_a_refusal() {
    if !require_tool("gunicorn") {
        return;
    }
    let dir = TempDir::new("drain-gunicorn");
    let ctl = dir.join("ctl.sock").display().to_string();
    let apps = example_src("").display().to_string();
    let (mut r, port) = start_on_a_free_port(
        &["--workers", "2", "--control", &ctl],
        &[
            "gunicorn",
            "--chdir",
            &apps,
            "--workers",
            "2",
            "gunicorn_app:app",
        ],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while_running(&mut r, "the first answer", || get(addr).ok());
    let masters = wait_for("two gunicorn masters", T, || {
        let kids = children_of(r.pid());
        (kids.len() == 2).then_some(kids)
    });
    let load = Load::start(addr, CLIENTS);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to a child of relaunch's that this test started.
    unsafe { libc::kill(masters[0], libc::SIGKILL) };
    r.log.wait("restarting in", T);
    wait_for("the crashed master to be back", T, || {
        let kids = children_of(r.pid());
        (kids.len() == 2 && !kids.contains(&masters[0])).then_some(())
    });
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let rep = load.finish();
    let sum = rep.summary();
    assert!(rep.ok > 0, "{sum}");
    assert_eq!(rep.refused + rep.timeout, 0, "{sum}");
    // The killed master's workers die with the requests they held (a
    // reset or a short answer); a reload itself cuts nothing.
    assert!(rep.failed() <= 2 * CLIENTS, "{sum}");
}

/// `relaunch upgrade` while an old generation drains: the new image goes
/// on measuring it (status still shows it), stops it at the drain timeout,
/// and the reload's client gets its answer; the load loses nothing.
#[test]
fn an_upgrade_carries_a_drain_in_progress() {
    let dir = TempDir::new("drain-upgrade");
    let ctl = dir.join("ctl.sock").display().to_string();
    let a = app("threading_server.py");
    let (mut r, port) = start_on_a_free_port(
        &["--control", &ctl, "--drain-timeout", "4s"],
        &["python3", &a, "PORT"],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let old = while_running(&mut r, "the first answer", || get(addr).ok());
    // A client that sends nothing keeps a handler of the old generation busy.
    let held = TcpStream::connect(addr).unwrap();
    let load = Load::start(addr, CLIENTS);
    upgrade_mid_drain(&dir, &ctl, &old, held);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{}", rep.summary());
    r.log.wait("the drain timeout passed", T);
}

/// A reload whose old generation (pid `old`) stays busy with `held`, and
/// `relaunch upgrade` while it drains: the new image goes on showing it
/// draining, and the reload's client is answered once the drain timeout
/// stopped it.
fn upgrade_mid_drain(dir: &TempDir, ctl: &str, old: &str, held: impl Sized) {
    let reloading = {
        let ctl = ctl.to_string();
        std::thread::spawn(move || cli(&["reload", "--control", &ctl], T))
    };
    let ctl_path = dir.join("ctl.sock");
    wait_for("the old generation to drain", T, || {
        status(&ctl_path)
            .contains("generation 1 (draining): 1 open connection(s)")
            .then_some(())
    });
    let (code, out) = cli(&["upgrade", "--control", ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let shown = status(&ctl_path);
    assert!(shown.contains("generation 1 (draining)"), "{shown}");
    let (code, out) = reloading.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    let old: i32 = old.parse().unwrap();
    assert!(!pid_alive(old), "the drain timeout stopped it");
    drop(held);
}

/// The same over a Unix socket: the new image carries each generation's
/// socket and the file at the held name, goes on measuring the old one,
/// and renames the next generation's in at the next reload.
#[test]
fn an_upgrade_carries_a_unix_drain_in_progress() {
    let dir = TempDir::new("drain-upgrade-unix");
    let ctl = dir.join("ctl.sock").display().to_string();
    let path = dir.join("app.sock");
    let spec = format!("unix:{}", path.display());
    let a = app("unix_threading_server.py");
    let p = path.display().to_string();
    let mut r = Relaunch::start(&[
        "-l",
        &spec,
        "--control",
        &ctl,
        "--drain-timeout",
        "4s",
        "--",
        "python3",
        &a,
        &p,
    ]);
    let peer = Peer::Unix(path.clone());
    let old = while_running(&mut r, "the first answer", || get_from(&peer).ok());
    // A client that sends nothing keeps a handler of the old generation busy.
    let held = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let load = Load::start_at(peer.clone(), CLIENTS);
    upgrade_mid_drain(&dir, &ctl, &old, held);
    // The carried group renames the next generation in.
    let second = get_from(&peer).unwrap();
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    while_running(&mut r, "a third generation", || {
        get_from(&peer).ok().filter(|p| *p != second)
    });
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{}\n{}", rep.summary(), r.log.text());
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    assert!(!path.exists(), "{}", r.log.text());
}

/// What keep-alive clients saw.
#[derive(Debug, Default)]
struct KeptAlive {
    ok: usize,
    /// Requests sent again on a new connection: their reused connection
    /// ended before any byte of the answer (what Go's Transport, browsers
    /// and urllib3 do for a GET).
    retried: usize,
    /// Answers that said `Connection: close`.
    closed: usize,
    failed: usize,
    errors: Vec<String>,
    pids: std::collections::BTreeSet<String>,
}

/// One request on `s`: the body and whether the server said it closes the
/// connection, or the error and whether any byte of the answer had come.
fn exchange(s: &mut BufReader<TcpStream>) -> Result<(String, bool), (bool, io::Error)> {
    send(s, "/").map_err(|e| (false, e))?;
    answer(s)
}

fn send(s: &mut BufReader<TcpStream>, path: &str) -> io::Result<()> {
    s.get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
}

/// [`exchange`]'s answer half.
fn answer(s: &mut BufReader<TcpStream>) -> Result<(String, bool), (bool, io::Error)> {
    let mut line = String::new();
    match s.read_line(&mut line) {
        Ok(0) => return Err((false, io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => {}
        Err(e) => return Err((false, e)),
    }
    let some = |e| (true, e);
    let mut len = 0;
    let mut close = false;
    loop {
        let mut h = String::new();
        if s.read_line(&mut h).map_err(some)? == 0 {
            return Err((true, io::ErrorKind::UnexpectedEof.into()));
        }
        if h == "\r\n" {
            break;
        }
        let h = h.to_ascii_lowercase();
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        close |= h.starts_with("connection:") && h.contains("close");
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(some)?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err((true, io::Error::other(line)));
    }
    Ok((String::from_utf8_lossy(&body).trim().to_string(), close))
}

/// `n` clients, each on one keep-alive connection, sending GETs back to
/// back until `stop`.
fn keep_alive_load(
    addr: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<KeptAlive>> {
    (0..n)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut k = KeptAlive::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut reused = false;
                let end = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let s = match &mut conn {
                        Some(s) => s,
                        None => match TcpStream::connect_timeout(&addr, T) {
                            Ok(c) => {
                                c.set_read_timeout(Some(T)).unwrap();
                                reused = false;
                                conn.insert(BufReader::new(c))
                            }
                            Err(e) => {
                                k.failed += 1;
                                k.errors.push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    match exchange(s) {
                        Ok((pid, close)) => {
                            k.ok += 1;
                            k.pids.insert(pid);
                            reused = true;
                            if close {
                                k.closed += 1;
                                conn = None;
                            }
                        }
                        Err((false, _)) if reused => {
                            k.retried += 1;
                            conn = None;
                        }
                        Err((_, e)) => {
                            k.failed += 1;
                            k.errors.push(e.to_string());
                            conn = None;
                        }
                    }
                }
                k
            })
        })
        .collect()
}

/// Go's net/http keeps connections alive and never closes an idle one (no
/// IdleTimeout): its keep-alive clients stay on the old generation until
/// `--drain-timeout`. Then their connections stop reading: a request in
/// flight is answered (a 2.5 s one that the stop would have cut), and the
/// next one goes to the new generation. Clients that send a GET again when
/// a reused connection ends before any byte of its answer (Go's Transport,
/// browsers, urllib3) lose nothing; each sends at most one again per reload
/// (the server closes right after its answer, while the client may already
/// be sending its next request on that connection).
#[test]
fn keep_alive_clients_move_to_the_new_generation_at_the_drain_timeout_without_a_failure() {
    const DRAIN: Duration = Duration::from_secs(2);
    const RELOADS: usize = 2;
    let Some(server) = go_binary(
        "drain-keepalive",
        include_str!("../apps/drain/keepalive_server.go"),
    ) else {
        return;
    };
    let bin = server.display().to_string();
    let dir = TempDir::new("drain-keepalive");
    let ctl = dir.join("ctl.sock").display().to_string();
    let (mut r, port) = start_on_a_free_port(
        &["--control", &ctl, "--drain-timeout", "2s"],
        &[&bin, "PORT"],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = while_running(&mut r, "the first answer", || get(addr).ok());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = keep_alive_load(addr, CLIENTS, Arc::clone(&stop));
    let mut old = first;
    for n in 1..=RELOADS {
        // A slow request in flight on the old generation at the timeout.
        let mut slow = BufReader::new(TcpStream::connect_timeout(&addr, T).unwrap());
        slow.get_ref().set_read_timeout(Some(T)).unwrap();
        send(&mut slow, "/slow").unwrap();
        let at = Instant::now();
        let (code, out) = cli(&["reload", "--control", &ctl], T);
        assert_eq!(code, Some(0), "reload {n}: {out}");
        let new = wait_new_pid(addr, &old);
        let (pid, _) = answer(&mut slow).unwrap_or_else(|(_, e)| {
            panic!(
                "reload {n}: the slow request was cut: {e}\n{}",
                r.log.text()
            )
        });
        assert_eq!(pid, old, "reload {n}: answered by the old generation");
        let gone: i32 = old.parse().unwrap();
        while_running(&mut r, &format!("reload {n}: pid {gone} gone"), || {
            (!pid_alive(gone)).then_some(())
        });
        eprintln!(
            "reload {n}: the old generation was gone {:?} after it (--drain-timeout {DRAIN:?})",
            at.elapsed()
        );
        old = new;
    }
    stop.store(true, Ordering::Relaxed);
    let all: Vec<KeptAlive> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let sum = |f: fn(&KeptAlive) -> usize| all.iter().map(f).sum::<usize>();
    let (ok, retried, failed) = (sum(|k| k.ok), sum(|k| k.retried), sum(|k| k.failed));
    let closed = sum(|k| k.closed);
    let errors: Vec<&String> = all.iter().flat_map(|k| &k.errors).take(5).collect();
    eprintln!(
        "keep-alive: {ok} answered ({closed} with Connection: close), {retried} sent again, \
         {failed} failed"
    );
    assert!(ok > 0);
    assert_eq!(failed, 0, "errors {errors:?}\n{}", r.log.text());
    assert!(
        all.iter().all(|k| k.retried <= RELOADS),
        "a client sent more than one request again per reload: {:?}",
        all.iter().map(|k| k.retried).collect::<Vec<_>>()
    );
    assert!(
        all.iter().all(|k| k.pids.len() > RELOADS),
        "every client reached every generation: {:?}",
        all.iter().map(|k| &k.pids).collect::<Vec<_>>()
    );
    assert_eq!(
        r.log.count("connections stop reading"),
        RELOADS,
        "{}",
        r.log.text()
    );
    // Each time it went idle once its reads ended, before the stop's grace
    // ran out: nothing was left for the stop to cut.
    assert_eq!(
        r.log.count("after its connections stopped reading"),
        0,
        "{}",
        r.log.text()
    );
}
