//! Apps that probe their port before binding it (the seeds' trading app and
//! viewer: `connect_ex(("127.0.0.1", port)) == 0` means "in use") and fall
//! back to the next one. relaunch holds the port, so the probe finds it in
//! use: relaunch says so, naming both ports.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

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
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")]})
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

pub(crate) fn python_has(module: &str) -> bool {
    let has = require_tool("python3")
        && Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{module} is required under CI=true: pip install -r .ci/requirements.txt"
        );
        eprintln!("skipping: python3 with {module} is not installed");
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
    if !python_has("uvicorn") {
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
