//! Unmodified servers: apps that bind the held port themselves,
//! with no LISTEN_FDS code, no --compat and no placeholders, get relaunch's
//! socket through seccomp interception. Each case serves, loses no
//! connection to `kill -9` or a SIGHUP reload, keeps relaunch's backlog after
//! the app's listen(), and sees the client's real address.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// Python that answers `GET /` with "PID CLIENT_ADDRESS"; `Handler` for
/// socketserver, `Web` for http.server.
const HANDLERS: &str = r#"
import os, signal, socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler

def answer(client):
    body = f"{os.getpid()} {client}\n".encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline().strip():
            pass
        self.wfile.write(answer(self.client_address[0]))

class Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.wfile.write(answer(self.client_address[0]))
        self.close_connection = True
    def log_message(self, *args):
        pass

def stop_on_term(*servers):
    # The usual graceful stop: finish the request in hand, then exit.
    def stop(*_):
        for s in servers:
            threading.Thread(target=s.shutdown).start()
    signal.signal(signal.SIGTERM, stop)
"#;

/// The seeds' pattern, `TCPServer(("0.0.0.0", P))` with
/// allow_reuse_address and SO_REUSEPORT set before bind.
const SOCKETSERVER_APP: &str = r#"
class Server(socketserver.TCPServer):
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

server = Server(("0.0.0.0", int(sys.argv[1])), Handler)
stop_on_term(server)
server.serve_forever()
server.server_close()
"#;

/// Writes `body` (after the shared handlers) to a temporary app.py.
fn app(dir: &TempDir, body: &str) -> String {
    let path = dir.join("app.py");
    std::fs::write(&path, format!("{HANDLERS}\n{body}")).unwrap();
    path.display().to_string()
}

fn python_ready() -> bool {
    require_tool("python3") && require_tool("ss")
}

/// What relaunch's listen(SOMAXCONN) gives on this machine.
fn full_backlog() -> u32 {
    let sysctl: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sysctl.min(libc::SOMAXCONN as u32)
}

/// The listeners on `port` are relaunch's, not the app's, with its backlog.
fn assert_full_backlog(port: u16) {
    let found = held_listeners_on(port);
    assert!(
        found.iter().all(|(_, b)| *b == full_backlog()),
        "the app's listen() must not change the backlog: {found:?}"
    );
}

/// SO_REUSEPORT set by the app landed on its throwaway socket: a stranger
/// with SO_REUSEPORT cannot share the held port.
fn assert_no_reuseport(addr: SocketAddr) {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    let err = s.bind(&addr.into()).and_then(|()| s.listen(1)).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EADDRINUSE),
        "a stranger shared {addr}: {err}"
    );
}

/// (pid, client address) from an answer: its first number and its last word
/// ("PID CLIENT", or the dashboard's "dashboard pid PID, you are CLIENT").
fn split(body: &str) -> (i32, String) {
    let pid = body
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"));
    let client = body.split_whitespace().last().unwrap_or_default();
    (pid, client.to_string())
}

/// What a self-binding app under relaunch must show: it serves with the
/// right client address, relaunch's backlog, no shared port, then `kill -9`
/// loses no connection and a SIGHUP reload no request (`cut_off`: a server
/// that drops its in-flight requests on exit may reset a few, never refuse).
fn serves_unchanged(r: &Relaunch, port: u16, client: &str, cut_off: bool) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = wait_serving(addr);
    let (pid, seen) = split(&first);
    assert_eq!(seen, client, "the app sees the client's address");
    r.log.wait("itself: it got relaunch's socket", T);
    assert_full_backlog(port);
    assert_no_reuseport(addr);

    // kill -9: the socket stays, connections wait for the restarted app.
    let load = Load::start(addr, 4);
    wait_for("the load running", T, || get(addr).ok());
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let second = wait_new_pid(addr, &first);
    let rep = load.finish();
    assert_eq!(
        rep.refused + rep.timeout,
        0,
        "kill -9 refused connections: {:?}",
        rep.errors
    );
    assert!(rep.ok > 0);
    assert_full_backlog(port);

    // SIGHUP: the next generation binds too, and gets the same socket.
    let load = Load::start(addr, 4);
    r.signal(libc::SIGHUP);
    wait_new_pid(addr, &second);
    r.log.wait("reload done", T);
    let rep = load.finish();
    if cut_off {
        assert_eq!(rep.refused + rep.timeout, 0, "{:?}", rep.errors);
        assert!(rep.failed() * 50 <= rep.ok, "{rep:?}");
    } else {
        assert_eq!(
            rep.failed(),
            0,
            "the reload failed requests: {:?}",
            rep.errors
        );
    }
    assert_full_backlog(port);
}

#[test]
fn socketserver_binding_the_port_itself_serves_from_relaunchs_socket() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-socketserver");
    let port = free_port();
    let p = port.to_string();
    let r = Relaunch::start(&[
        "--port",
        &p,
        "--",
        "python3",
        &app(&dir, SOCKETSERVER_APP),
        &p,
    ]);
    serves_unchanged(&r, port, "127.0.0.1", false);
    // --port took the app's family and address: an IPv4 socket on 0.0.0.0.
    let log = r.log.text();
    assert!(log.contains(&format!("now holds 0.0.0.0:{port}")), "{log}");
    assert!(
        log.contains(&format!("bound 0.0.0.0:{port} itself")),
        "{log}"
    );
}

/// The README's front page, as written there.
#[test]
fn the_front_page_dashboard_serves_unchanged() {
    if !python_ready() {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let dashboard = example_src("dashboard.py");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["--port", &p, "--", "python3", dashboard.to_str().unwrap()])
            .env("PORT", &p),
    );
    serves_unchanged(&r, port, "127.0.0.1", false);
}

#[test]
fn a_shell_wrapper_that_forks_is_covered() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-sh");
    let port = free_port();
    let p = port.to_string();
    // `|| exit 1` keeps sh from exec'ing: python is sh's child.
    let line = format!("python3 {} {p} || exit 1", app(&dir, SOCKETSERVER_APP));
    let r = Relaunch::start(&["--port", &p, "--", "sh", "-c", &line]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (pid, _) = split(&wait_serving(addr));
    let leader: i32 = r
        .log
        .wait("started pid=", T)
        .split("pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        pid, leader,
        "python is the shell's child, not the child itself"
    );
    serves_unchanged(&r, port, "127.0.0.1", false);
}

#[test]
fn flask_app_run_without_compat() {
    if !python_ready() || !python_has("flask") {
        return;
    }
    let dir = TempDir::new("ic-flask");
    let port = free_port();
    let p = port.to_string();
    let body = r#"
from flask import Flask, request
web = Flask(__name__)

@web.route("/")
def index():
    return f"{os.getpid()} {request.remote_addr}\n", 200, {"Connection": "close"}

web.run(host="0.0.0.0", port=int(sys.argv[1]))
"#;
    let r = Relaunch::start(&[
        "--port",
        &p,
        // werkzeug has no SIGTERM handler; INT stops it between requests.
        "--stop-signal",
        "INT",
        "--",
        "python3",
        &app(&dir, body),
        &p,
    ]);
    // werkzeug serves on daemon threads and does not wait for them on exit.
    serves_unchanged(&r, port, "127.0.0.1", true);
}

#[test]
fn two_held_ports_and_one_of_the_apps_own() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-three");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let body = r#"
from http.server import ThreadingHTTPServer

class Server(ThreadingHTTPServer):
    daemon_threads = False
    allow_reuse_address = True
    def server_bind(self):
        # The seeds' pattern; on the third port it lets generations overlap.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

servers = [Server(("127.0.0.1", int(p)), Web) for p in sys.argv[1:4]]
stop_on_term(*servers)
# The main thread serves too: Python runs signal handlers only there, and
# a main thread parked in join() may never see the SIGTERM.
threads = [threading.Thread(target=s.serve_forever) for s in servers[1:]]
for t in threads:
    t.start()
servers[0].serve_forever()
for t in threads:
    t.join()
for s in servers:
    s.server_close()
"#;
    let a = format!("a=127.0.0.1:{p1}");
    let b = format!("b=127.0.0.1:{p2}");
    let script = app(&dir, body);
    let r = Relaunch::start(&[
        "-l",
        &a,
        "-l",
        &b,
        "--",
        "python3",
        &script,
        &p1.to_string(),
        &p2.to_string(),
        &p3.to_string(),
    ]);
    let third: SocketAddr = ([127, 0, 0, 1], p3).into();
    wait_serving(third);
    r.log.wait(&format!("bound 127.0.0.1:{p1} itself"), T);
    r.log.wait(&format!("bound 127.0.0.1:{p2} itself"), T);
    // The third port is the app's own: relaunch neither holds nor touches it.
    let own = listeners_on(p3);
    assert!(
        own.iter()
            .all(|(l, _)| l.contains("python3") && !l.contains("relaunch")),
        "{own:?}"
    );
    assert!(
        !r.log.text().contains(&format!(":{p3} itself")),
        "{}",
        r.log.text()
    );
    for port in [p1, p2] {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert_eq!(split(&wait_serving(addr)).1, "127.0.0.1");
        assert_full_backlog(port);
        assert_no_reuseport(addr);
    }
    // kill -9: both held ports keep every connection for the restarted app.
    let a: SocketAddr = ([127, 0, 0, 1], p1).into();
    let first = wait_serving(a);
    let loads: Vec<Load> = [p1, p2]
        .iter()
        .map(|&p| Load::start(([127, 0, 0, 1], p).into(), 3))
        .collect();
    unsafe { libc::kill(split(&first).0, libc::SIGKILL) };
    wait_new_pid(a, &first);
    for load in loads {
        let rep = load.finish();
        assert!(rep.ok > 0);
        assert_eq!(rep.refused + rep.timeout, 0, "{:?}", rep.errors);
    }
    let loads: Vec<Load> = [p1, p2]
        .iter()
        .map(|&p| Load::start(([127, 0, 0, 1], p).into(), 3))
        .collect();
    let before = wait_serving(third);
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    for load in loads {
        let rep = load.finish();
        assert!(rep.ok > 0);
        assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
        assert!(
            rep.pids.len() >= 2,
            "both generations served: {:?}",
            rep.pids
        );
    }
    assert_ne!(wait_new_pid(third, &before), before);
}

/// The app stops its accept loop with shutdown(SHUT_RDWR) on the
/// listener, which on the shared socket would stop it for everyone and reset
/// the queued connections.
#[test]
fn an_app_that_shuts_its_listener_down_loses_nothing_on_reload() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-shutdown");
    let port = free_port();
    let p = port.to_string();
    let body = r#"
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(16)

def on_term(*_):
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept below

signal.signal(signal.SIGTERM, on_term)

def serve(conn, client):
    with conn:
        f = conn.makefile("rb")
        while f.readline().strip():
            pass
        conn.sendall(answer(client[0]))

workers = []
while True:
    try:
        conn, client = listener.accept()
    except OSError:
        break
    t = threading.Thread(target=serve, args=(conn, client))
    t.start()
    workers.append(t)
for t in workers:
    t.join()
"#;
    let r = Relaunch::start(&[
        "-l",
        &format!("127.0.0.1:{p}"),
        "--",
        "python3",
        &app(&dir, body),
        &p,
    ]);
    serves_unchanged(&r, port, "127.0.0.1", false);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let load = Load::start(addr, 8);
    let mut last = wait_serving(addr);
    for n in 2..=4 {
        r.signal(libc::SIGHUP);
        r.log.wait_n("reload done", n, T);
        last = wait_new_pid(addr, &last);
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    r.log.wait("shut down relaunch's socket", T);
    // Each old generation ended by its own loop, not by the stop timeout.
    assert!(
        !r.log.text().contains("did not stop within"),
        "{}",
        r.log.text()
    );
    assert_full_backlog(port);
}

/// A Python app binding `host` in `family` under relaunch's `listen` args.
fn bind_under(
    tag: &str,
    listen: &[&str],
    family: &str,
    host: &str,
    port: u16,
) -> (Relaunch, TempDir) {
    let dir = TempDir::new(tag);
    let body = format!(
        r#"
class Server(socketserver.TCPServer):
    address_family = socket.{family}
    allow_reuse_address = True

server = Server(("{host}", int(sys.argv[1])), Handler)
stop_on_term(server)
server.serve_forever()
"#
    );
    let script = app(&dir, &body);
    let mut args: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
    args.extend(["--", "python3", &script, &port.to_string()].map(String::from));
    // Dropped in this order: relaunch stops before the app's directory goes.
    (
        Relaunch::start_with(Command::new(relaunch_bin()).args(&args)),
        dir,
    )
}

#[test]
fn families_meet_without_garbled_client_addresses() {
    if !python_ready() {
        return;
    }
    // (relaunch holds, the app binds, the client it sees)
    let cases: [(&str, &str, &str, &str); 4] = [
        ("0.0.0.0", "AF_INET", "0.0.0.0", "127.0.0.1"),
        // An IPv6 socket given the IPv4 one: larger buffers, the real family.
        ("0.0.0.0", "AF_INET6", "::", "127.0.0.1"),
        ("", "AF_INET6", "::", "::ffff:127.0.0.1"),
        ("", "AF_INET", "0.0.0.0", "127.0.0.1"),
    ];
    for (held, family, host, client) in cases {
        let port = free_port();
        let spec = if held.is_empty() {
            vec!["--port".to_string(), port.to_string()]
        } else {
            vec!["-l".to_string(), format!("{held}:{port}")]
        };
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        let (r, _dir) = bind_under("ic-family", &spec, family, host, port);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (_, seen) = split(&wait_serving(addr));
        assert_eq!(
            seen,
            client,
            "held {held:?}, app {family} {host}: log\n{}",
            r.log.text()
        );
        assert_full_backlog(port);
    }
}

#[test]
fn a_narrower_bind_than_held_is_refused_not_widened() {
    if !python_ready() {
        return;
    }
    let port = free_port();
    let held = format!("0.0.0.0:{port}");
    let (r, _dir) = bind_under(
        "ic-narrow",
        &["-l", &held, "--restart", "never"],
        "AF_INET",
        "127.0.0.1",
        port,
    );
    let line = r.log.wait("refused with EADDRINUSE", T);
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("every interface"), "{line}");
    assert!(line.contains(&format!("-l 127.0.0.1:{port}")), "{line}");
    // The app saw EADDRINUSE, as it would without relaunch.
    r.log.wait("Address already in use", T);
}

#[test]
fn a_bare_port_takes_the_address_the_app_binds() {
    if !python_ready() {
        return;
    }
    let port = free_port();
    let ctl_dir = TempDir::new("ic-loopback-ctl");
    let ctl = ctl_dir.join("ctl.sock");
    let (r, _dir) = bind_under(
        "ic-loopback",
        &[
            "--port",
            &port.to_string(),
            "--control",
            ctl.to_str().unwrap(),
        ],
        "AF_INET",
        "127.0.0.1",
        port,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_serving(addr);
    r.log.wait(&format!("now holds 127.0.0.1:{port}"), T);
    // Only loopback's 127.0.0.1: 127.0.0.2 (also loopback) is not served.
    let other: SocketAddr = ([127, 0, 0, 2], port).into();
    let err = std::net::TcpStream::connect_timeout(&other, Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let found = held_listeners_on(port);
    assert!(
        found
            .iter()
            .all(|(l, _)| l.contains(&format!("127.0.0.1:{port}"))),
        "{found:?}"
    );
    // `relaunch status` shows where it moved.
    let out = Command::new(relaunch_bin())
        .args(["status", "--json", "--control", ctl.to_str().unwrap()])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["listeners"][0]["address"],
        format!("127.0.0.1:{port}"),
        "{status:#}"
    );
}

/// `--lazy` and `--idle-stop` watch the socket bound at start, so `--port`
/// does not move under them: a bind of another address is refused, and the
/// log names the `-l` that works, instead of a move that resets the waking
/// connection or that the idle gauge never sees.
#[test]
fn on_demand_keeps_the_bare_port_where_it_is() {
    if !python_ready() {
        return;
    }
    for option in [&["--lazy"][..], &["--idle-stop", "1h"]] {
        let port = free_port();
        let mut listen = vec!["--port".to_string(), port.to_string()];
        listen.extend(option.iter().map(|s| s.to_string()));
        let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
        let (r, _dir) = bind_under("ic-on-demand", &listen, "AF_INET", "0.0.0.0", port);
        if option[0] == "--lazy" {
            // The first connection starts the app; it waits in the backlog.
            let addr = r.listen_addr(3);
            let _waiting = std::net::TcpStream::connect_timeout(&addr, T).unwrap();
        }
        let line = r.log.wait("refused with EADDRINUSE", T);
        assert!(
            line.contains(&format!("-l 0.0.0.0:{port}")),
            "{option:?}: {line}"
        );
        assert!(
            !r.log.text().contains("now holds"),
            "{option:?}: moved: {}",
            r.log.text()
        );
    }
}

/// `NoNewPrivs:` of a process: the filter needs it only without root.
fn no_new_privs(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn under_user_the_filter_follows_the_privilege_drop() {
    if !python_ready() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("intercept --user: NOT RUN: relaunch must start as root to use --user");
        return;
    }
    let dir = TempDir::new("ic-user");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    let p = port.to_string();
    let script = app(&dir, SOCKETSERVER_APP);
    let r = Relaunch::start(&[
        "--port", &p, "--user", "nobody", "--", "python3", &script, &p,
    ]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (pid, client) = split(&wait_serving(addr));
    assert_eq!(client, "127.0.0.1");
    r.log.wait("itself: it got relaunch's socket", T);
    // Not root any more: the kernel wants no_new_privs before the filter.
    assert_eq!(no_new_privs(pid), "1");
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        uid.lines()
            .any(|l| l.starts_with("Uid:") && !l.contains("\t0\t")),
        "{uid}"
    );
    assert_full_backlog(port);

    // As root, no no_new_privs: setuid programs the app runs keep working.
    let port = free_port();
    let p = port.to_string();
    let r = Relaunch::start(&["--port", &p, "--", "python3", &script, &p]);
    let (pid, _) = split(&wait_serving(([127, 0, 0, 1], port).into()));
    r.log.wait("itself: it got relaunch's socket", T);
    assert_eq!(no_new_privs(pid), "0");
}

/// relaunch under relaunch: the inner one's children cannot have a second
/// notifier (EBUSY). One line says so, and they run as without interception.
#[test]
fn a_second_notifier_is_refused_with_one_line() {
    let inner = relaunch_bin();
    let server = example("pid_server");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--",
        inner,
        "--",
        server.to_str().unwrap(),
    ]);
    let line = r.log.wait("bind interception is off", T);
    assert!(line.contains("another seccomp notifier"), "{line}");
    // The inner child still runs, from LISTEN_FDS as today; its restart
    // does not repeat the line.
    let addr = r.listen_addr(3);
    let first = wait_serving(addr);
    unsafe { libc::kill(first.parse().unwrap(), libc::SIGKILL) };
    wait_new_pid(addr, &first);
    assert_eq!(
        r.log.count("bind interception is off"),
        1,
        "{}",
        r.log.text()
    );
}

/// GET / over a Unix socket; the body.
pub(crate) fn get_unix(path: &std::path::Path) -> std::io::Result<String> {
    get_from(&Peer::Unix(path.to_path_buf()))
}

/// A Unix stream server binding a relative path from its own directory.
#[test]
fn a_unix_socket_server_binding_its_path_itself() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-unix");
    let body = r#"
class Unix(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline().strip():
            pass
        self.wfile.write(answer("unix"))

server = socketserver.UnixStreamServer("app.sock", Unix)
stop_on_term(server)
server.serve_forever()
"#;
    let script = app(&dir, body);
    let r = Relaunch::start_with(Command::new(relaunch_bin()).current_dir(&dir.0).args([
        "-l",
        "unix:app.sock",
        "--",
        "python3",
        &script,
    ]));
    let path = dir.join("app.sock");
    let first = wait_for("an answer on app.sock", T, || get_unix(&path).ok());
    let line = r.log.wait("itself: it got relaunch's socket", T);
    assert!(line.contains("app.sock"), "{line}");
    // kill -9 under a client loop: every connection waits for the restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get_unix(&path) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let (pid, _) = split(&first);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let second = wait_for("a new pid on app.sock", T, || {
        get_unix(&path).ok().filter(|b| *b != first)
    });
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    wait_for("a third pid", T, || {
        get_unix(&path).ok().filter(|b| *b != second)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(ok > 0);
    // A request the killed server held may be cut; none is refused.
    assert!(
        failed
            .iter()
            .all(|e| !e.contains("refused") && !e.contains("No such file")),
        "{failed:?}"
    );
}

/// asyncio deletes a socket file it finds at its path before binding: the
/// unlink of relaunch's is answered, not done, so the file stays, and the
/// app's bind gets the socket there.
#[test]
fn an_app_that_deletes_the_socket_file_first_still_gets_one() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-asyncio-unix");
    let body = r#"
import asyncio

async def handle(reader, writer):
    while (await reader.readline()).strip():
        pass
    writer.write(answer("unix"))
    await writer.drain()
    writer.close()

async def main():
    await asyncio.sleep(1)  # a slow start: a client connects before the bind
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()

asyncio.run(main())
"#;
    let script = app(&dir, body);
    let path = dir.join("app.sock");
    let spec = format!("unix:{}", path.display());
    let mut r = Relaunch::start(&[
        "-l",
        &spec,
        "--",
        "python3",
        &script,
        path.to_str().unwrap(),
    ]);
    // Connected before the app binds (and deletes the file): answered by
    // the app once it serves, not cut off.
    r.log.wait("listening on unix:", T);
    let first = get_unix(&path).expect("an early client is answered");
    r.log.wait("deleted relaunch's socket file", T);
    assert!(path.exists(), "the socket file stays");
    assert_eq!(
        r.log.count("bound a new socket there"),
        0,
        "{}",
        r.log.text()
    );
    r.log.wait("itself: it got relaunch's socket", T);
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    wait_for("the new generation on app.sock", T, || {
        get_unix(&path).ok().filter(|b| *b != first)
    });
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    assert!(
        !r.log.text().contains("did not stop within"),
        "{}",
        r.log.text()
    );
    // The file relaunch made is removed on exit like the first one.
    assert!(!path.exists(), "{} left behind", path.display());
}

/// Go 1.24's listeners are MPTCP sockets where the kernel has MPTCP: they
/// get the TCP listener like any other.
#[test]
fn an_mptcp_socket_gets_the_tcp_listener() {
    if !python_ready() {
        return;
    }
    let mptcp = std::fs::read_to_string("/proc/sys/net/mptcp/enabled");
    if mptcp.map(|v| v.trim() != "1").unwrap_or(true) {
        eprintln!("intercept mptcp: NOT RUN: this kernel has MPTCP off");
        return;
    }
    let dir = TempDir::new("ic-mptcp");
    let body = r#"
class Server(socketserver.TCPServer):
    def __init__(self, *args):
        super().__init__(*args, bind_and_activate=False)
        self.socket.close()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP
        self.server_bind()
        self.server_activate()

server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
stop_on_term(server)
server.serve_forever()
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", "python3", &app(&dir, body), &p]);
    let (_, client) = split(&wait_serving(([127, 0, 0, 1], port).into()));
    assert_eq!(client, "127.0.0.1");
    r.log.wait("itself: it got relaunch's socket", T);
    assert_full_backlog(port);
}

/// A bind that a signal interrupts after relaunch put its socket in place is
/// restarted by the kernel on the socket it now is: it must succeed, not
/// fail with EINVAL. (The same call made twice shows it without the race.)
#[test]
fn a_restarted_bind_of_the_held_address_succeeds() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-rebind");
    let body = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.bind(("127.0.0.1", int(sys.argv[1])))
try:
    s.bind(("127.0.0.1", int(sys.argv[1]) + 1))
    print("a bind elsewhere worked", file=sys.stderr, flush=True)
except OSError as e:
    print(f"a bind elsewhere: errno {e.errno}", file=sys.stderr, flush=True)
s.listen(5)
while True:
    c, a = s.accept()
    with c:
        c.recv(1000)
        c.sendall(answer(a[0]))
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", "python3", &app(&dir, body), &p]);
    wait_serving(([127, 0, 0, 1], port).into());
    r.log
        .wait(&format!("a bind elsewhere: errno {}", libc::EINVAL), T);
}

/// shutdown() of the held socket, restarted by a signal after relaunch put
/// a private socket in its place, succeeds (the same call twice shows it);
/// the app's accept then ends, and relaunch's listener still listens.
#[test]
fn a_restarted_shutdown_of_the_held_socket_succeeds() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-reshut");
    let body = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(5)
s.shutdown(socket.SHUT_RDWR)
s.shutdown(socket.SHUT_RDWR)
try:
    s.accept()
except OSError as e:
    print(f"accept after shutdown: errno {e.errno}", file=sys.stderr, flush=True)
signal.pause()
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", "python3", &app(&dir, body), &p]);
    r.log
        .wait(&format!("accept after shutdown: errno {}", libc::EINVAL), T);
    r.log.wait("shut down relaunch's socket", T);
    assert_full_backlog(port);
}

/// Where the /proc scan is blind (here: an io_uring instance, whose waits
/// /proc cannot show), the app's listen() on the held socket tells
/// `--ready auto` it is ready, instead of --ready-timeout.
#[test]
fn a_listen_seen_by_interception_makes_a_blind_child_ready() {
    if !python_ready() {
        return;
    }
    let uring_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|v| v.trim() != "0")
        .unwrap_or(false);
    if uring_off {
        eprintln!("intercept listen hint: NOT RUN: io_uring is disabled here");
        return;
    }
    let dir = TempDir::new("ic-listen-hint");
    let body = r#"
import ctypes, time
params = ctypes.create_string_buffer(120)
ring = ctypes.CDLL(None, use_errno=True).syscall(425, 8, params)  # io_uring_setup
assert ring >= 0, ctypes.get_errno()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(5)
time.sleep(120)  # busy elsewhere: nothing for the scan to see
"#;
    let port = free_port();
    let held = format!("127.0.0.1:{port}");
    let r = Relaunch::start(&[
        "-l",
        &held,
        "--",
        "python3",
        &app(&dir, body),
        &port.to_string(),
    ]);
    let line = r.log.wait("ready after", T);
    assert!(
        line.contains("called listen() on relaunch's socket"),
        "{line}"
    );
}

/// `--no-intercept`: the child binds as it would without relaunch, and a
/// held port is in use.
#[test]
fn no_intercept_leaves_the_bind_to_the_kernel() {
    if !python_ready() {
        return;
    }
    let port = free_port();
    let held = format!("127.0.0.1:{port}");
    let (r, _dir) = bind_under(
        "ic-off",
        &["-l", &held, "--no-intercept", "--restart", "never"],
        "AF_INET",
        "127.0.0.1",
        port,
    );
    r.log.wait("Address already in use", T);
    assert!(!r.log.text().contains("itself"), "{}", r.log.text());
}

/// `--workers`: every worker binds the port at about the same moment; the
/// first moves `--port`'s socket where it binds, the others get that one.
#[test]
fn workers_binding_at_once_all_get_the_socket() {
    if !python_ready() {
        return;
    }
    let port = free_port();
    let p = port.to_string();
    let dashboard = example_src("dashboard.py");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["--port", &p, "--workers", "4", "--"])
            .args(["python3", dashboard.to_str().unwrap()])
            .env("PORT", &p),
    );
    r.log.wait_n("itself: it got relaunch's socket", 4, T);
    let log = r.log.text();
    assert_eq!(r.log.count("now holds 0.0.0.0:"), 1, "{log}");
    assert!(
        !log.contains("EADDRINUSE") && !log.contains("exited"),
        "{log}"
    );
    assert_full_backlog(port);
}

/// strace, following every process, logging seccomp() calls to `trace`,
/// with `extra` options, then relaunch.
fn traced(trace: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=seccomp", "-e", "signal=none"])
        .args(extra)
        .arg("-o")
        .arg(trace)
        .arg(relaunch_bin());
    cmd
}

/// Stops the relaunch that strace runs when dropped: strace's own end (the
/// `Relaunch` guard kills it) detaches its tracee, which would run on.
struct EndTraced(i32);

impl Drop for EndTraced {
    fn drop(&mut self) {
        for pid in children_of(self.0) {
            // SAFETY: kill with plain integers.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // Bounded, and never a panic: this may run while unwinding.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The filter installs strace saw, in order.
fn filter_installs(trace: &std::path::Path) -> Vec<String> {
    let calls = std::fs::read_to_string(trace).unwrap();
    let installs: Vec<String> = calls
        .lines()
        .filter(|l| l.contains("SECCOMP_SET_MODE_FILTER") && l.contains("NEW_LISTENER"))
        .map(String::from)
        .collect();
    assert!(!installs.is_empty(), "no filter installed:\n{calls}");
    installs
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// The filter is not a sandbox: it is installed with
/// SECCOMP_FILTER_FLAG_SPEC_ALLOW, so kernels whose speculation mitigations
/// default to `seccomp` (before 5.16) do not force SSBD and STIBP on every
/// intercepted child. The flags as the kernel got them (strace), and the
/// child's mitigation state against a child without interception.
#[test]
fn the_filter_leaves_speculation_mitigations_alone() {
    if !require_tool("strace") {
        return;
    }
    let dir = TempDir::new("ic-spec");
    let trace = dir.join("seccomp.trace");
    let child = ["--", "sh", "-c", "exec grep ^Specul /proc/self/status >&2"];
    let mut traced = Relaunch::start_with(
        traced(&trace, &[])
            .args(["-l", "127.0.0.1:0", "--restart", "never"])
            .args(child),
    );
    assert!(traced.wait_exit(T).success(), "{}", traced.log.text());
    let installs = filter_installs(&trace);
    let install = &installs[0];
    assert!(
        install.contains("SECCOMP_FILTER_FLAG_SPEC_ALLOW"),
        "{install}"
    );
    // 6.0 and later: a signal after relaunch answered cannot end the call.
    if kernel_at_least(6, 0) {
        assert!(
            install.contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV") && !install.contains("= -1"),
            "{install}"
        );
    }
    let specul = |log: &Lines| -> Vec<String> {
        log.all()
            .into_iter()
            .filter(|l| l.starts_with("Specul"))
            .collect()
    };
    let with = specul(&traced.log);
    assert_eq!(with.len(), 2, "{}", traced.log.text());
    let mut plain = Relaunch::start(
        &[
            &["-l", "127.0.0.1:0", "--restart", "never", "--no-intercept"][..],
            &child[..],
        ]
        .concat(),
    );
    assert!(plain.wait_exit(T).success(), "{}", plain.log.text());
    assert_eq!(with, specul(&plain.log));
}

/// fds open in process `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// An app that binds and shuts down the held socket over and over: relaunch
/// answers each shutdown without keeping an fd for it.
#[test]
fn shutting_the_held_socket_down_again_and_again_leaks_no_fd() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-shut-leak");
    let body = r#"
for i in range(300):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(5)
    s.shutdown(socket.SHUT_RDWR)
    s.close()
print("shut down 300 times", file=sys.stderr, flush=True)
signal.pause()
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", "python3", &app(&dir, body), &p]);
    r.log.wait("shut down 300 times", T);
    let fds = open_fds(r.pid());
    assert!(fds < 100, "relaunch has {fds} fds open after 300 shutdowns");
    assert_full_backlog(port);
}

/// `Max open files` of a process: (soft, hard).
fn nofile(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line["Max open files".len()..].split_whitespace();
    (
        words.next().unwrap().to_string(),
        words.next().unwrap().to_string(),
    )
}

/// relaunch runs with its soft fd limit raised to the hard one (EMFILE
/// must not stop it from answering a trapped call), while every child gets
/// the soft limit relaunch was started with (select() wants 1024).
#[test]
fn relaunch_raises_its_fd_limit_and_the_child_keeps_the_one_given() {
    use std::os::unix::process::CommandExt;
    let server = example("pid_server");
    let mut cmd = Command::new(relaunch_bin());
    // SAFETY: setrlimit only, between fork and exec of the test's child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let dir = TempDir::new("ic-nofile");
    let ctl = dir.join("ctl.sock");
    cmd.arg("--control").arg(&ctl);
    cmd.args(["-l", "127.0.0.1:0", "--"]).arg(&server);
    let r = Relaunch::start_with(&mut cmd);
    let addr = r.listen_addr(3);
    let pid = wait_serving(addr);
    assert_eq!(nofile(&r.pid().to_string()), ("4096".into(), "4096".into()));
    assert_eq!(nofile(&pid), ("1024".into(), "4096".into()));
    // The next image of an upgrade inherits the raised limit: its children
    // still get the one relaunch first started with.
    let out = Command::new(relaunch_bin())
        .args(["upgrade", "--control"])
        .arg(&ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    r.signal(libc::SIGHUP);
    let next = wait_new_pid(addr, &pid);
    assert_eq!(nofile(&r.pid().to_string()), ("4096".into(), "4096".into()));
    assert_eq!(nofile(&next), ("1024".into(), "4096".into()));
}

/// The child could not send its notification fd to relaunch (here relaunch's
/// end is closed first, as a test hook): under a filter nobody answers, its
/// every bind would fail with ENOSYS. It is not run that way; a clear line
/// names it and why.
#[test]
fn a_child_whose_notification_fd_is_lost_is_named_not_run_crippled() {
    if !python_ready() {
        return;
    }
    let dir = TempDir::new("ic-lost");
    let body = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(5)
signal.pause()
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", &held, "--restart", "never", "--"])
            .args(["python3", &app(&dir, body), &p])
            .env("RELAUNCH_TEST_LOSE_NOTIFY_FD", "1"),
    );
    let line = r.log.wait("notification fd", T);
    assert!(line.contains("python3"), "{line}");
    assert!(line.contains("ENOSYS"), "{line}");
    assert!(
        !r.log.text().contains("Function not implemented"),
        "{}",
        r.log.text()
    );
}

/// Before 6.0 the kernel refuses SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV with
/// EINVAL (injected here by strace): the filter goes in without it, and the
/// app still gets relaunch's socket.
#[test]
fn a_kernel_without_killable_waits_still_intercepts() {
    if !python_ready() || !require_tool("strace") {
        return;
    }
    let dir = TempDir::new("ic-killable");
    let trace = dir.join("seccomp.trace");
    let body = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(5)
signal.pause()
"#;
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start_with(
        traced(&trace, &["-e", "inject=seccomp:error=EINVAL:when=1"])
            .args(["-l", &held, "--"])
            .args(["python3", &app(&dir, body), &p]),
    );
    let _end = EndTraced(r.pid());
    r.log.wait("itself: it got relaunch's socket", T);
    let installs = filter_installs(&trace);
    assert!(installs.len() >= 2, "{installs:?}");
    assert!(
        installs[0].contains("WAIT_KILLABLE_RECV") && installs[0].contains("EINVAL"),
        "{installs:?}"
    );
    assert!(
        !installs[1].contains("WAIT_KILLABLE_RECV") && !installs[1].contains("= -1"),
        "{installs:?}"
    );
    assert_full_backlog(port);
}

/// Compiles C source `src` with gcc into `dir`; the binary's path.
fn compile_c(dir: &TempDir, name: &str, src: &str) -> String {
    let c = dir.join(&format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(&c)
        .args(["-lpthread"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    bin.display().to_string()
}

/// A listener shut down where the filter cannot see (here an i386
/// shutdown, as io_uring's IORING_OP_SHUTDOWN would be) stops for real; the
/// app's next listen() must not answer 0 over a socket that does not
/// listen: relaunch listens on it again, and says so.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_listen_on_a_held_socket_that_stopped_listening_listens_again() {
    if !require_tool("gcc") {
        return;
    }
    let dir = TempDir::new("ic-relisten");
    let bin = compile_c(
        &dir,
        "relisten",
        r#"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* shutdown(2) through the i386 entry, which the filter lets run. */
static long shutdown32(int fd, int how) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(373), "b"(fd), "c"(how) : "memory");
    return ret;
}

static int listening(int s) {
    int on = 0;
    socklen_t len = sizeof on;
    getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &on, &len);
    return on;
}

int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 5)) {
        perror("bind");
        return 1;
    }
    long r = shutdown32(s, SHUT_RDWR);
    if (r == -38) {
        fprintf(stderr, "no i386 entry here\n");
        pause();
    }
    fprintf(stderr, "i386 shutdown: %ld, listening: %d\n", r, listening(s));
    if (listen(s, 5)) {
        perror("listen again");
        return 1;
    }
    fprintf(stderr, "listening after listen(): %d\n", listening(s));
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            perror("accept");
            return 1;
        }
        char buf[1024], out[128], body[32];
        read(c, buf, sizeof buf);
        int n = snprintf(body, sizeof body, "%d\n", getpid());
        int m = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", n, body);
        write(c, out, m);
        close(c);
    }
}
"#,
    );
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", &bin, &p]);
    let said = r.log.wait("i386 shutdown", T);
    if said.contains("no i386 entry") {
        eprintln!("relisten: NOT RUN: this kernel has no i386 syscall entry");
        return;
    }
    assert!(said.contains("listening: 0"), "{said}");
    r.log.wait("listening after listen(): 1", T);
    r.log.wait("had stopped listening", T);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_serving(addr);
    assert_full_backlog(port);
    let load = Load::start(addr, 8);
    wait_for("the load running", T, || get(addr).ok());
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
}

/// A thread with its own fd table (unshare(CLONE_FILES); clone without
/// CLONE_FILES is the same): its fd numbers name other files than its
/// process's. Its bind, listen and shutdown are answered for its own socket,
/// where ADDFD puts relaunch's.
#[test]
fn a_thread_with_its_own_fd_table_gets_the_socket() {
    if !require_tool("gcc") {
        return;
    }
    let dir = TempDir::new("ic-own-files");
    let bin = compile_c(
        &dir,
        "ownfiles",
        r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int port;

static void *serve(void *arg) {
    int n = *(int *)arg;
    if (unshare(CLONE_FILES)) {
        perror("unshare");
        exit(1);
    }
    /* In this thread's table only: the process's fd n stays a UDP socket. */
    close(n);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (s != n) {
        fprintf(stderr, "socket at %d, not %d\n", s, n);
        exit(1);
    }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a)) {
        perror("bind");
        exit(1);
    }
    if (listen(s, 5)) {
        perror("listen");
        exit(1);
    }
    fprintf(stderr, "thread with its own fd table listens\n");
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            perror("accept");
            exit(1);
        }
        char buf[1024], out[128], body[32];
        read(c, buf, sizeof buf);
        int k = snprintf(body, sizeof body, "%d\n", getpid());
        int m = snprintf(out, sizeof out,
                         "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", k, body);
        write(c, out, m);
        close(c);
    }
}

int main(int argc, char **argv) {
    port = atoi(argv[1]);
    int n = socket(AF_INET, SOCK_DGRAM, 0);
    pthread_t t;
    pthread_create(&t, NULL, serve, &n);
    pthread_join(t, NULL);
    return 0;
}
"#,
    );
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{p}");
    let r = Relaunch::start(&["-l", &held, "--", &bin, &p]);
    r.log.wait("thread with its own fd table listens", T);
    r.log.wait("itself: it got relaunch's socket", T);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_serving(addr);
    assert_full_backlog(port);
}
