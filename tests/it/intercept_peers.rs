//! Unmodified servers that bind the held port themselves, beyond the
//! Python ones of `intercept.rs`: uvicorn.run() from the app's own main, a
//! Node `http.createServer().listen(P)`, a static Go binary's
//! `net.Listen("tcp", ":P")`. No LISTEN_FDS code, no
//! --compat, no placeholders. Each serves, loses no connection to `kill -9`
//! and no request to a SIGHUP reload, keeps relaunch's backlog after its own
//! listen(), and sees the client's real address. Also: a stranger still
//! cannot bind the held port, and --no-intercept behaves as before, with the
//! hint in the log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// Not SOMAXCONN: Go listens with the sysctl's value, the same as relaunch's
/// default, so a shrunk (Node 511, uvicorn 2048) or grown (Go) backlog shows.
const BACKLOG: u32 = 1000;

fn assert_backlog_kept(port: u16, when: &str) {
    let found = held_listeners_on(port);
    assert!(
        found.iter().all(|(_, backlog)| *backlog == BACKLOG),
        "{when}: relaunch's listeners on {port}, with its backlog: {found:?}"
    );
}

/// "PID CLIENT" from the apps below.
fn split(body: &str) -> (i32, String) {
    let (pid, client) = body
        .split_once(' ')
        .unwrap_or_else(|| panic!("not 'pid client': {body:?}"));
    (pid.parse().unwrap(), client.to_string())
}

/// relaunch with `listen` (e.g. `--port P`) and --backlog, running `app`.
fn start(listen: &[&str], app: &[&str]) -> Relaunch {
    let backlog = BACKLOG.to_string();
    let mut args: Vec<&str> = listen.to_vec();
    args.extend(["--backlog", &backlog, "--"]);
    args.extend(app);
    Relaunch::start(&args)
}

/// It serves from relaunch's socket and sees `client` as the client's
/// address; relaunch's backlog is untouched by the app's listen().
fn serves(r: &Relaunch, port: u16, client: &str) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = wait_serving(addr);
    assert_eq!(split(&first).1, client, "the client address the app sees");
    r.log.wait("itself: it got relaunch's socket", T);
    assert_backlog_kept(port, "after the app's listen()");
    first
}

/// `kill -9` of the child under a client loop refuses nothing; a SIGHUP
/// reload fails nothing (`cut_off`: the server drops what it accepted but did
/// not read when it stops, so a few resets are its own, never a refusal).
fn survives_crash_and_reload(r: &Relaunch, port: u16, first: &str, cut_off: bool) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let load = Load::start(addr, 4);
    wait_for("the client loop running", T, || get(addr).ok());
    unsafe { libc::kill(split(first).0, libc::SIGKILL) };
    let second = wait_new_pid(addr, first);
    let rep = load.finish();
    assert_eq!(rep.refused + rep.timeout, 0, "kill -9: {rep:?}");
    assert!(rep.ok > 0, "{rep:?}");
    assert_backlog_kept(port, "after the restarted app's listen()");

    let load = Load::start(addr, 4);
    wait_for("the client loop running", T, || get(addr).ok());
    r.signal(libc::SIGHUP);
    wait_new_pid(addr, &second);
    r.log.wait("reload done", T);
    let rep = load.finish();
    if cut_off {
        assert_eq!(rep.refused + rep.timeout, 0, "reload: {rep:?}");
        assert!(rep.failed() * 50 <= rep.ok, "reload: {rep:?}");
    } else {
        assert_eq!(rep.failed(), 0, "reload: {rep:?}");
    }
    assert!(rep.ok > 0, "{rep:?}");
    assert_backlog_kept(port, "after the new generation's listen()");
}

/// A process outside the child's tree (this test) still gets EADDRINUSE on
/// the held port, SO_REUSEADDR or not.
fn strangers_cannot_bind(port: u16) {
    for at in [
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([0u16; 8], port)),
    ] {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        let err = s.bind(&at.into()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{at}: {err}");
    }
}

/// uvicorn.run() from the app's own main.
const UVICORN_APP: &str = r#"
import os, sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{os.getpid()} {scope['client'][0]}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

def main():
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

if __name__ == "__main__":
    main()
"#;

/// Node's http server on a port, the usual way.
const NODE_APP: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  const body = `${process.pid} ${req.socket.remoteAddress}\n`;
  res.writeHead(200, { 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
  res.end(body);
});
server.listen(Number(process.argv[2]));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
"#;

/// A Go server; built static (CGO_ENABLED=0) by [`go_server`].
const GO_APP: &str = r#"package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ln, err := net.Listen("tcp", ":"+os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "%d %s\n", os.Getpid(), host)
	})}
	done := make(chan struct{})
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		<-c
		srv.Shutdown(context.Background())
		close(done)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done // Serve returns at once; in-flight requests finish in Shutdown
}
"#;

fn write_app(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn has_uvicorn() -> bool {
    require_tool("ss") && python_has("uvicorn")
}

/// The Go server of these tests; see [`go_binary`].
fn go_server() -> Option<PathBuf> {
    if !require_tool("ss") {
        return None;
    }
    go_binary("self_bind", GO_APP)
}

/// A Go program built from `src`, once per source, under target/it-go/ (a
/// rebuild takes a while), statically linked. None (skip) without go,
/// except under CI.
pub(crate) fn go_binary(name: &str, src: &str) -> Option<PathBuf> {
    // One build at a time in this process: tests run on threads.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !require_tool("go") {
        return None;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    let target = Path::new(relaunch_bin()).parent()?.parent()?;
    let dir = target.join("it-go");
    let bin = dir.join(format!("{name}-{:016x}", h.finish()));
    if bin.exists() {
        return Some(bin);
    }
    let tree = dir.join(format!("src-{}", std::process::id()));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("main.go"), src).unwrap();
    let tmp = dir.join(format!("build-{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg("main.go")
        .current_dir(&tree)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("cache"))
        .output()
        .expect("go build");
    let _ = std::fs::remove_dir_all(&tree);
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test binary may have built it meanwhile: same bytes.
    std::fs::rename(&tmp, &bin).unwrap();
    Some(bin)
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP header).
pub(crate) fn dynamically_linked(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn uvicorn_run_from_the_apps_main() {
    if !has_uvicorn() {
        return;
    }
    let dir = TempDir::new("peer-uvicorn");
    let app = write_app(&dir, "app.py", UVICORN_APP);
    let port = free_port();
    let p = port.to_string();
    let held = format!("127.0.0.1:{port}");
    let r = start(&["-l", &held], &["python3", &app, &p]);
    let first = serves(&r, port, "127.0.0.1");
    strangers_cannot_bind(port);
    // uvicorn closes what it accepted but did not read yet when it stops
    // (Kludex/uvicorn#2757).
    survives_crash_and_reload(&r, port, &first, true);
}

#[test]
fn uvicorn_under_a_bare_port_gets_its_own_address() {
    if !has_uvicorn() {
        return;
    }
    let dir = TempDir::new("peer-uvicorn-port");
    let app = write_app(&dir, "app.py", UVICORN_APP);
    let port = free_port();
    let p = port.to_string();
    let r = start(&["--port", &p], &["python3", &app, &p]);
    serves(&r, port, "127.0.0.1");
}

#[test]
fn node_listen_on_a_port() {
    if !require_tool("node") || !require_tool("ss") {
        return;
    }
    let dir = TempDir::new("peer-node");
    let app = write_app(&dir, "app.js", NODE_APP);
    let port = free_port();
    let p = port.to_string();
    let r = start(&["--port", &p], &["node", &app, &p]);
    // Node bound [::]: it sees the IPv4 client as a mapped address.
    let first = serves(&r, port, "::ffff:127.0.0.1");
    strangers_cannot_bind(port);
    survives_crash_and_reload(&r, port, &first, false);
}

#[test]
fn node_under_an_ipv4_wildcard_sees_ipv4_clients() {
    if !require_tool("node") || !require_tool("ss") {
        return;
    }
    let dir = TempDir::new("peer-node-v4");
    let app = write_app(&dir, "app.js", NODE_APP);
    let port = free_port();
    let p = port.to_string();
    let held = format!("0.0.0.0:{port}");
    let r = start(&["-l", &held], &["node", &app, &p]);
    serves(&r, port, "127.0.0.1");
}

#[test]
fn static_go_binary_listening_on_a_port() {
    let Some(server) = go_server() else {
        return;
    };
    assert!(!dynamically_linked(&server), "CGO_ENABLED=0 builds static");
    let port = free_port();
    let p = port.to_string();
    let bin = server.display().to_string();
    let r = start(&["--port", &p], &[&bin, &p]);
    // Go prints an IPv4-mapped peer in its IPv4 form.
    let first = serves(&r, port, "127.0.0.1");
    strangers_cannot_bind(port);
    survives_crash_and_reload(&r, port, &first, false);
}

#[test]
fn static_go_binary_under_an_ipv4_wildcard() {
    let Some(server) = go_server() else {
        return;
    };
    let port = free_port();
    let p = port.to_string();
    let held = format!("0.0.0.0:{port}");
    let bin = server.display().to_string();
    let r = start(&["-l", &held], &[&bin, &p]);
    serves(&r, port, "127.0.0.1");
}

/// The usual self-binding server, reduced to its bind: it dies of
/// EADDRINUSE while relaunch holds the port.
const SELF_BIND: &str = "import socket, sys\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(sys.argv[1])))\n\
s.listen(5)\n\
while True: s.accept()[0].close()\n";

const HINT: &str = "probably binds the port itself";

/// --no-intercept: as before interception, a child that binds the held port
/// itself dies of EADDRINUSE, over and over; relaunch says why and what to
/// do, once, not on every restart.
#[test]
fn a_self_binding_child_gets_the_hint_once() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--no-intercept",
        "--",
        "python3",
        "-c",
        SELF_BIND,
        "{port}",
    ]);
    r.log.wait("Address already in use", T);
    let hint = r.log.wait(HINT, T);
    for remedy in ["drop --no-intercept", "--compat", "{fd}", "LISTEN_FDS"] {
        assert!(hint.contains(remedy), "{remedy} missing from: {hint}");
    }
    // Three more restarts of the crash loop: still one hint.
    r.log.wait_n("restarting in", 4, T);
    assert_eq!(r.log.count(HINT), 1, "{}", r.log.text());
    assert_eq!(r.log.count("got relaunch's socket"), 0, "{}", r.log.text());
}

/// --no-intercept with the static Go binary: today's behaviour, EADDRINUSE
/// from its own bind, and the hint.
#[test]
fn no_intercept_gives_the_go_binary_addr_in_use_and_the_hint() {
    let Some(server) = go_server() else {
        return;
    };
    let port = free_port();
    let p = port.to_string();
    let bin = server.display().to_string();
    let r = Relaunch::start(&["--no-intercept", "--port", &p, "--", &bin, &p]);
    r.log.wait("address already in use", T);
    r.log.wait(HINT, T);
    r.log.wait_n("restarting in", 2, T);
    assert_eq!(r.log.count(HINT), 1, "{}", r.log.text());
    assert_eq!(r.log.count("got relaunch's socket"), 0, "{}", r.log.text());
}
