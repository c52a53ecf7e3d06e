//! Operating relaunch: the control socket (`status`, `reload`, `stop`), the
//! accept queue in `status`, `status --check` for health probes,
//! `--metrics`, and `--log-format json`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::reload::reload_cli;
use crate::util::*;

const T: Duration = Duration::from_secs(20);

fn status(ctl: &Path, extra: &[&str]) -> Output {
    Command::new(relaunch_bin())
        .arg("status")
        .args(extra)
        .arg("--control")
        .arg(ctl)
        .output()
        .unwrap()
}

fn status_json(ctl: &Path) -> serde_json::Value {
    let out = status(ctl, &["--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `status` row of listener `name`, with single spaces.
fn listener_row(text: &str, name: &str) -> String {
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"));
    row.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// With the child stopped (SIGSTOP), connections wait in the held backlog;
/// `status` shows them waiting, then drained once the child runs again, and
/// every client gets its answer.
#[test]
fn status_shows_connections_waiting_while_the_child_is_stopped() {
    let app = App::new("queue", &pid_server(""));
    let ctl = app.control();
    // A Unix listener the app leaves alone: its queue only fills.
    let unix = app.dir.join("adm.sock");
    let _r = Relaunch::start(&[
        "-l",
        "http=127.0.0.1:0",
        "-l",
        &format!("adm=unix:{}", unix.display()),
        "--backlog",
        "512",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr: SocketAddr = _r.listen_addr(3);
    let child: i32 = wait_serving(addr).parse().unwrap();
    let l = &status_json(&ctl)["listeners"][0];
    assert_eq!(
        (l["waiting"].as_u64(), l["backlog"].as_u64()),
        (Some(0), Some(512)),
        "{l}"
    );

    unsafe { libc::kill(child, libc::SIGSTOP) };
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr)))
        .collect();
    let waiting = wait_for("20 connections waiting in status", T, || {
        let s = status_json(&ctl);
        let w = s["listeners"][0]["waiting"].as_u64()?;
        (w >= 20).then_some(w)
    });
    let text = String::from_utf8(status(&ctl, &[]).stdout).unwrap();
    assert_eq!(
        listener_row(&text, "http"),
        format!("http {addr} fd 3 waiting {waiting} / 512"),
        "{text}"
    );

    unsafe { libc::kill(child, libc::SIGCONT) };
    for c in clients {
        assert_eq!(
            c.join().unwrap().expect("every client is answered"),
            child.to_string()
        );
    }
    let text = String::from_utf8(status(&ctl, &[]).stdout).unwrap();
    assert_eq!(
        listener_row(&text, "http"),
        format!("http {addr} fd 3 waiting 0 / 512"),
        "{text}"
    );

    // Unix stream listeners too (unix_diag).
    let _held: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&unix).unwrap())
        .collect();
    let l = &status_json(&ctl)["listeners"][1];
    assert_eq!(
        (l["waiting"].as_u64(), l["backlog"].as_u64()),
        (Some(3), Some(512)),
        "{l}"
    );
}

/// `status --check`: 1 and one line while starting, 0 and silence while a
/// ready generation serves, 1 while a crashed app restarts, 1 and one line
/// once relaunch is gone.
#[test]
fn status_check_passes_only_while_a_ready_generation_serves() {
    let app = App::new("check", &pid_server("--delay 2"));
    let ctl = app.control();
    let mut r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let check = || status(&ctl, &["--check"]);
    wait_for("the control socket", T, || ctl.exists().then_some(()));
    let out = check();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("not ready: relaunch (pid ") && err.contains("is starting"),
        "{err}"
    );

    let ok = wait_for("status --check to pass", T, || {
        let out = check();
        out.status.success().then_some(out)
    });
    assert!(ok.stdout.is_empty() && ok.stderr.is_empty(), "{ok:?}");
    let crashed: i32 = wait_serving(r.listen_addr(3)).parse().unwrap();

    // Crashed: its restart takes 2 s to be ready again, and fails the check meanwhile.
    unsafe { libc::kill(crashed, libc::SIGKILL) };
    wait_for("the restarted child", T, || {
        let child = &status_json(&ctl)["children"][0];
        (child["pid"].as_i64()? != i64::from(crashed) && child["state"] == "starting").then_some(())
    });
    let out = check();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no child of generation 1 is ready"), "{err}");
    wait_for("status --check to pass again", T, || {
        check().status.success().then_some(())
    });

    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    let out = check();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("not ready: no relaunch is listening"),
        "{err}"
    );
}

/// Sends `raw`, says that is all, and reads until the server closes (10 s
/// at most).
fn http(addr: SocketAddr, raw: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One sample as Python's prometheus_client parsed it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, serde_json::Value>,
    value: f64,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// GET /metrics, parsed by Python's prometheus_client text parser; None
/// when that is not installed (outside CI).
fn scrape(metrics: SocketAddr) -> Option<Vec<Sample>> {
    use std::io::Write;
    let answer = http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut py = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No module named 'prometheus_client'") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "python3 -m pip install prometheus-client (.ci/requirements.txt) is required under CI=true"
            );
        }
        eprintln!("skipping: Python's prometheus_client is not installed");
        return None;
    }
    assert!(out.status.success(), "the parser refused:\n{err}\n{body}");
    let rows: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    Some(
        rows.into_iter()
            .map(|(name, labels, value)| Sample {
                name,
                labels,
                value,
            })
            .collect(),
    )
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:#?}"))
        .value
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `--metrics`: the text parses with Prometheus' own Python parser; the
/// counters follow 2 reloads and 1 crash; 1000 garbage requests leave
/// relaunch serving with a flat fd count; a connection past the limit is
/// closed at once.
#[test]
fn metrics_count_reloads_and_crashes_and_shrug_off_garbage() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("metrics", &pid_server(""));
    let ctl = app.control();
    let r = Relaunch::start(&[
        "-l",
        "http=127.0.0.1:0",
        "--control",
        ctl.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let line = r.log.wait("metrics on http://", T);
    let metrics: SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let first = wait_serving(addr);
    wait_for("generation 1 ready", T, || {
        status_json(&ctl)["ready"].as_bool()?.then_some(())
    });
    let Some(m) = scrape(metrics) else {
        return;
    };
    let listener = [("listener", "http"), ("address", &*addr.to_string())];
    assert_eq!(value(&m, "relaunch_generation", &[]), 1.0);
    assert_eq!(value(&m, "relaunch_ready", &[]), 1.0);
    assert_eq!(value(&m, "relaunch_children", &[("state", "ready")]), 1.0);
    assert_eq!(
        value(&m, "relaunch_reloads_total", &[("result", "done")]),
        0.0
    );
    assert_eq!(
        value(&m, "relaunch_restarts_total", &[("reason", "signal")]),
        0.0
    );
    assert_eq!(value(&m, "relaunch_time_to_ready_seconds_count", &[]), 1.0);
    assert_eq!(
        value(&m, "relaunch_listener_waiting_connections", &listener),
        0.0
    );
    assert!(value(&m, "relaunch_listener_backlog", &listener) >= 128.0);
    assert!(value(&m, "relaunch_uptime_seconds", &[]) > 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&m, "relaunch_build_info", &[("version", version)]),
        1.0
    );

    for _ in 0..2 {
        let (code, out) = crate::reload::reload_cli(&ctl);
        assert_eq!(code, 0, "{out}");
    }
    let serving = get(addr).unwrap();
    assert_ne!(serving, first);
    unsafe { libc::kill(serving.parse().unwrap(), libc::SIGKILL) };
    wait_new_pid(addr, &serving);
    wait_for("the restarted child ready", T, || {
        status_json(&ctl)["ready"].as_bool()?.then_some(())
    });
    let m = scrape(metrics).unwrap();
    assert_eq!(value(&m, "relaunch_generation", &[]), 3.0);
    assert_eq!(
        value(&m, "relaunch_reloads_total", &[("result", "done")]),
        2.0
    );
    assert_eq!(
        value(&m, "relaunch_reloads_total", &[("result", "failed_exited")]),
        0.0
    );
    assert_eq!(
        value(&m, "relaunch_restarts_total", &[("reason", "signal")]),
        1.0
    );
    assert_eq!(
        value(&m, "relaunch_restarts_total", &[("reason", "exit")]),
        0.0
    );
    assert_eq!(value(&m, "relaunch_time_to_ready_seconds_count", &[]), 3.0);

    // Garbage, 8 clients at a time: each is answered (400/404/405) or
    // closed, and nothing is left open.
    let fds = fd_count(r.pid());
    let garbage: [&[u8]; 8] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /metrics HTTP/9\r\n\r\n",
        b"\r\n\r\n",
        &[b'A'; 9000],
        b"GET /metrics HTTP/1.1\r\n", // cut short
        b"",
    ];
    // One that never finishes its request is closed after 5 s.
    let slow = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let t = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        (t.elapsed(), buf)
    });
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..125 {
                    let raw = garbage[(t + i) % garbage.len()];
                    if let Ok(answer) = http(metrics, raw) {
                        let ok = answer.is_empty()
                            || ["400", "404", "405"]
                                .iter()
                                .any(|c| answer.starts_with(&format!("HTTP/1.1 {c} ")));
                        assert!(ok, "{raw:?} -> {answer:?}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (waited, answer) = slow.join().unwrap();
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert_eq!(get(addr).unwrap(), get(addr).unwrap(), "still serving");
    wait_for("relaunch's fd count back where it was", T, || {
        (fd_count(r.pid()) <= fds).then_some(())
    });

    // At most 16 at once: the 17th is closed at once; the scrape works
    // again once the idle ones go.
    let idle: Vec<_> = (0..16)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    wait_for("16 connections held", T, || {
        (fd_count(r.pid()) >= fds + 16).then_some(())
    });
    {
        use std::io::Read;
        // Closed at once, not after the 5 s a slow client gets.
        let mut extra = std::net::TcpStream::connect(metrics).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        match extra.read(&mut [0u8; 64]) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    drop(idle);
    wait_for("the slots free again", T, || {
        (fd_count(r.pid()) <= fds).then_some(())
    });
    assert_eq!(
        value(&scrape(metrics).unwrap(), "relaunch_generation", &[]),
        3.0
    );
}

/// Every line parses as JSON and carries `pid` and `generation`.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{log}"));
            assert!(v["pid"].is_u64(), "no pid: {l}");
            assert!(v.get("generation").is_some(), "no generation: {l}");
            assert!(v["message"].is_string() && v["level"].is_string(), "{l}");
            v
        })
        .collect()
}

/// `--log-format json` through start, a reload, a crash and a stop, and an
/// error that ends relaunch.
#[test]
fn json_logs_are_one_object_a_line_with_pid_and_generation() {
    let app = App::new(
        "json",
        &format!("{} 2>/dev/null", pid_server("").trim_end()),
    );
    let mut r = Relaunch::start(&[
        "--log-format",
        "json",
        "-l",
        "127.0.0.1:0",
        "--",
        &app.script(),
    ]);
    let line = r.log.wait("listening on", T);
    let addr: SocketAddr = serde_json::from_str::<serde_json::Value>(&line).unwrap()["message"]
        .as_str()
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let first = wait_serving(addr);
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let second = get(addr).unwrap();
    assert_ne!(first, second);
    unsafe { libc::kill(second.parse().unwrap(), libc::SIGKILL) };
    wait_new_pid(addr, &second);
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    let lines = json_lines(&r.log.text());
    let me = u64::from(r.child.id());
    // About the child: its pid, its generation, its worker.
    let killed = lines
        .iter()
        .find(|v| {
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("killed by signal 9")
        })
        .expect("the crash is logged");
    assert_eq!(killed["pid"].to_string(), second);
    assert_eq!(
        (killed["generation"].as_u64(), killed["worker"].as_u64()),
        (Some(2), Some(0))
    );
    // About relaunch itself: its own pid; the serving generation once there is one.
    let stop = lines
        .iter()
        .find(|v| v["message"] == "SIGTERM: stopping")
        .unwrap();
    assert_eq!(
        (stop["pid"].as_u64(), stop["generation"].as_u64()),
        (Some(me), Some(2))
    );
    assert_eq!(lines[0]["pid"].as_u64(), Some(me));

    // An error that ends relaunch is a JSON line too, at level ERROR.
    let (status, log) = run_to_exit(
        &[
            "--log-format",
            "json",
            "-l",
            "127.0.0.1:0",
            "--",
            "/nonexistent/app",
        ],
        T,
    );
    assert_eq!(status.code(), Some(127), "{log}");
    let last = json_lines(&log).pop().unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/app"),
        "{last}"
    );
}

/// A --metrics address that is taken ends relaunch at start, saying so.
#[test]
fn a_metrics_address_in_use_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, log) = run_to_exit(&["-l", "127.0.0.1:0", "--metrics", &addr, "--", "true"], T);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot serve metrics on {addr}: ")),
        "{log}"
    );
    assert!(log.contains(&format!("`relaunch who {addr}`")), "{log}");
    assert!(
        !log.contains("started"),
        "no child before the metrics are up:\n{log}"
    );
}

#[test]
fn control_socket_status_reload_stop() {
    let app = App::new("control", &pid_server(""));
    let ctl = app.control();
    let ctl_s = ctl.to_str().unwrap();
    let mut r = Relaunch::start(&[
        "-l",
        "api=127.0.0.1:0",
        "--control",
        ctl_s,
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    let mode = std::fs::metadata(&ctl).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = Command::new(relaunch_bin())
        .args(["status", "--json", "--control", ctl_s])
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["children"][0]["pid"].to_string(), old);
    assert_eq!(status["listeners"][0]["name"], "api");
    assert_eq!(status["listeners"][0]["address"], addr.to_string());
    assert_eq!(status["generation"], 1);

    let (code, out) = reload_cli(&ctl);
    assert_eq!(code, 0, "{out}");
    let new = get(addr).unwrap();
    assert_ne!(new, old, "reload returned only once a new pid answers");
    assert!(!pid_alive(old.parse().unwrap()), "and the old one is gone");

    // Through the environment variable, as the docs say.
    let out = Command::new(relaunch_bin())
        .arg("stop")
        .env("RELAUNCH_CONTROL", &ctl)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(r.wait_exit(T).code(), Some(0));
    assert!(!ctl.exists(), "control socket removed on exit");
    let out = Command::new(relaunch_bin())
        .args(["status", "--control", ctl_s])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
