//! Apps that probe their port before binding it (the seeds' trading app and
//! viewer: `connect_ex(("127.0.0.1", port)) == 0` means "in use") and fall
//! back to the next one. relaunch holds the port, so the probe finds it in
//! use: relaunch says so, naming both ports.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// A uvicorn app that probes its configured port, then falls back through
/// the others given.
const UVICORN_APP: &str = r#"
import os, socket, sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{os.getpid()} {scope['client'][0]}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

def in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

def pick(ports):
    for port in ports:
        if not in_use(port):
            return port
        print(f"port {port} is in use, trying the next one", flush=True)
    sys.exit("no free port")

port = pick([int(p) for p in sys.argv[1:]])
uvicorn.run(app, host="0.0.0.0", port=port, log_level="warning")
"#;

/// Whether the python3 on PATH imports `module`, run as `uid` (None: as
/// the tests run; a python under /root is out of other users' reach).
/// Only outside CI may it be missing.
pub(crate) fn python_has(module: &str, uid: Option<u32>) -> bool {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &format!("import {module}")]);
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    let has = require_tool("python3") && cmd.status().is_ok_and(|s| s.success());
    let who = uid.map_or(String::new(), |u| format!(" as uid {u}"));
    if !has {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 cannot import {module}{who} under CI=true: pip install -r .ci/requirements.txt"
        );
        eprintln!("skipping: python3 cannot import {module}{who}");
    }
    has
}

/// The app, and the held port followed by 3 fallback ports.
fn probing_app(tag: &str) -> (TempDir, String, [u16; 4]) {
    let dir = TempDir::new(tag);
    let script = dir.join("app.py");
    std::fs::write(&script, UVICORN_APP).unwrap();
    let script = script.display().to_string();
    (
        dir,
        script,
        [free_port(), free_port(), free_port(), free_port()],
    )
}

#[test]
fn a_fallback_to_another_port_is_said_with_both_ports() {
    if !python_has("uvicorn", None) {
        return;
    }
    let (dir, script, ports) = probing_app("probe-fallback");
    let [held, fallback, ..] = ports;
    let ctl = dir.join("ctl.sock");
    let p: Vec<String> = ports.iter().map(u16::to_string).collect();
    let r = Relaunch::start(&[
        "--port",
        &p[0],
        "--control",
        ctl.to_str().unwrap(),
        "--",
        "python3",
        &script,
        &p[0],
        &p[1],
        &p[2],
        &p[3],
    ]);
    // It serves where it fell back to; the held port gets nobody.
    let at: SocketAddr = ([127, 0, 0, 1], fallback).into();
    wait_serving(at);
    // Long before --ready-timeout (60 s).
    let line = r.log.wait("fell back", Duration::from_secs(15));
    assert!(
        line.contains(&format!(":{held}")) && line.contains(&format!(":{fallback}")),
        "both ports: {line}"
    );
    assert!(line.contains("probe"), "the likely cause: {line}");
    assert!(line.contains("--refuse-probes"), "what to do: {line}");
    assert!(!line.contains("--ready delay"), "{line}");
    // `status` shows where the app listens.
    let shown = status(&ctl);
    assert!(
        shown.contains(&format!("0.0.0.0:{fallback}")),
        "status: {shown}"
    );
    // Said once, though the scan sees it on every look.
    assert_eq!(r.log.count("fell back"), 1, "{}", r.log.text());
}

/// The pid in an answer ("PID CLIENT").
fn pid_of(body: &str) -> i32 {
    body.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

#[test]
fn with_probes_refused_the_app_serves_on_the_held_port_through_a_crash_and_a_reload() {
    if !python_has("uvicorn", None) {
        return;
    }
    let (_dir, script, ports) = probing_app("probe-refused");
    let [held, fallback, ..] = ports;
    let p: Vec<String> = ports.iter().map(u16::to_string).collect();
    let r = Relaunch::start(&[
        "--port",
        &p[0],
        "--refuse-probes",
        "--",
        "python3",
        &script,
        &p[0],
        &p[1],
        &p[2],
        &p[3],
    ]);
    let addr: SocketAddr = ([127, 0, 0, 1], held).into();
    let first = wait_serving(addr);
    let line = r.log.wait("ECONNREFUSED", T);
    assert!(line.contains(&format!(":{held}")), "{line}");
    r.log.wait("itself: it got relaunch's socket", T);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", fallback)).is_err(),
        "it fell back to {fallback} anyway"
    );

    // kill -9: the restarted app probes again, is refused again, and binds
    // (the first child's refusal is said; each child's is said once).
    let load = Load::start(addr, 8);
    wait_for("the load running", T, || get(addr).ok());
    unsafe { libc::kill(pid_of(&first), libc::SIGKILL) };
    let second = wait_new_pid(addr, &first);
    let rep = load.finish();
    // What the killed process had accepted dies with it; nothing is refused
    // or left waiting.
    assert_eq!(rep.refused + rep.timeout, 0, "kill -9: {:?}", rep.errors);
    assert!(rep.failed() <= 8, "kill -9: {rep:?}");
    assert!(rep.ok > 0);

    // A reload under load: 0 failed.
    let load = Load::start(addr, 8);
    wait_for("the load running", T, || get(addr).ok());
    r.signal(libc::SIGHUP);
    wait_new_pid(addr, &second);
    r.log.wait("reload done", T);
    let rep = load.finish();
    // Nothing refused or left waiting. uvicorn resets the odd connection it
    // accepted but had not read when SIGTERM came (draining the old
    // generation is another matter): a few, never more.
    assert_eq!(rep.refused + rep.timeout, 0, "reload: {:?}", rep.errors);
    assert!(rep.failed() * 50 <= rep.ok, "reload: {rep:?}");
    let log = r.log.text();
    assert!(!log.contains("fell back"), "{log}");
    assert_eq!(r.log.count("serves on 0.0.0.0"), 0, "{log}");
}

#[test]
fn refusing_probes_without_interception_is_a_usage_error() {
    let (status, log) = run_to_exit(
        &[
            "-l",
            "127.0.0.1:0",
            "--refuse-probes",
            "--no-intercept",
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--no-intercept"), "{log}");
}
