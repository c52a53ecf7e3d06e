//! Operating relaunch: the accept queue in `status`, `status --check` for
//! health probes, `--metrics`, and `--log-format json`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

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

/// With the child stopped (SIGSTOP), connections wait in the held backlog;
/// `status` shows them waiting, then drained once the child runs again, and
/// every client gets its answer.
#[test]
fn status_shows_connections_waiting_while_the_child_is_stopped() {
    let app = App::new("queue", &pid_server(""));
    let ctl = app.control();
    let _r = Relaunch::start(&[
        "-l",
        "http=127.0.0.1:0",
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
    let line = format!("http  {addr}  fd 3  waiting {waiting} / 512");
    assert!(text.contains(&line), "no {line:?} in:\n{text}");

    unsafe { libc::kill(child, libc::SIGCONT) };
    for c in clients {
        assert_eq!(
            c.join().unwrap().expect("every client is answered"),
            child.to_string()
        );
    }
    let text = String::from_utf8(status(&ctl, &[]).stdout).unwrap();
    assert!(text.contains("waiting 0 / 512"), "{text}");
}

/// `status --check`: 1 and one line while starting, 0 and silence while a
/// ready generation serves, 1 and one line once relaunch is gone.
#[test]
fn status_check_passes_only_while_a_ready_generation_serves() {
    let app = App::new("check", &pid_server("--delay 1.5"));
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
    wait_serving(r.listen_addr(3));

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
