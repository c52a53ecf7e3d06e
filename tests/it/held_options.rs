//! An app cannot reconfigure relaunch's socket: SO_REUSEPORT (and the
//! reuseport BPF options) set on the socket it got from bind interception are
//! answered 0 without being applied, so no process can share the port.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::probes::python_has;
use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// The seeds' dashboard: Flask-SocketIO, with werkzeug's make_server wrapped
/// to set SO_REUSEADDR and SO_REUSEPORT on the server socket once it is
/// made (after bind).
const DASHBOARD: &str = r#"
import os, socket, sys
import werkzeug.serving
from flask import Flask, request
from flask_socketio import SocketIO

original_make_server = werkzeug.serving.make_server

def make_server_with_reuse(*args, **kwargs):
    server = original_make_server(*args, **kwargs)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except (AttributeError, OSError):
        pass
    return server

werkzeug.serving.make_server = make_server_with_reuse

app = Flask(__name__)
socketio = SocketIO(app, async_mode="threading")

@app.route("/")
def index():
    return f"{os.getpid()} {request.remote_addr}\n", 200, {"Connection": "close"}

socketio.run(app, host="0.0.0.0", port=int(sys.argv[1]), debug=False,
             allow_unsafe_werkzeug=True)
"#;

/// Binds `ip:port` with SO_REUSEADDR and SO_REUSEPORT and listens, as `uid`:
/// "bound", or the errno.
const SHARE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    print("bound")
except OSError as e:
    print(e.errno)
"#;

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A process of `uid` cannot share `port`, on the wildcard or on 127.0.0.1.
fn assert_unshared(uid: u32, port: u16, when: &str) {
    for ip in ["0.0.0.0", "127.0.0.1"] {
        let out = Command::new("python3")
            .args(["-c", SHARE, ip, &port.to_string()])
            .uid(uid)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            said,
            libc::EADDRINUSE.to_string(),
            "{when}: uid {uid} binding {ip}:{port} with SO_REUSEPORT: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn reuseport_set_after_bind_never_reaches_relaunchs_socket() {
    if !python_has("flask_socketio", None) || !require_tool("id") {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("reuseport after bind: NOT RUN: relaunch must start as root to use --user");
        return;
    }
    let dir = TempDir::new("reuseport-after-bind");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = dir.join("dashboard.py");
    std::fs::write(&script, DASHBOARD).unwrap();
    let script = script.display().to_string();
    for user in ["root", "nobody"] {
        if user != "root" && !python_has("flask_socketio", Some(uid_of(user))) {
            continue;
        }
        let port = free_port();
        let p = port.to_string();
        let r = Relaunch::start(&[
            "--port",
            &p,
            "--user",
            user,
            // werkzeug has no SIGTERM handler; INT stops it between requests.
            "--stop-signal",
            "INT",
            "--",
            "python3",
            &script,
            &p,
        ]);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let first = wait_serving(addr);
        r.log.wait("itself: it got relaunch's socket", T);
        let uid = uid_of(user);
        assert_unshared(uid, port, &format!("as {user}, before a reload"));
        let line = r.log.wait("SO_REUSEPORT on relaunch's socket", T);
        assert!(line.contains("not applied"), "{line}");

        let load = Load::start(addr, 8);
        r.signal(libc::SIGHUP);
        wait_new_pid(addr, &first);
        r.log.wait("reload done", T);
        let rep = load.finish();
        assert_eq!(rep.refused + rep.timeout, 0, "{:?}", rep.errors);
        // Said once per child: once for each generation.
        r.log.wait_n("SO_REUSEPORT on relaunch's socket", 2, T);
        assert_unshared(uid, port, &format!("as {user}, after a reload"));
        assert_eq!(
            r.log.count("SO_REUSEPORT on relaunch's socket"),
            2,
            "{}",
            r.log.text()
        );
    }
}
