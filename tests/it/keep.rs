//! `--keep-previous`: after a reload, the old generation, once idle, is
//! kept frozen for the window, and `relaunch rollback` has it answering
//! again at once while the newer one drains. Under 8 clients.

use std::time::Duration;

use crate::canary::{Served, as_root, pids_of, serve};
use crate::util::*;

const T: Duration = Duration::from_secs(30);
const CLIENTS: usize = 8;

/// pid_server under `relaunch --keep-previous 60s`, serving.
fn kept_server(tag: &str) -> Served {
    let server = example("pid_server").display().to_string();
    serve(tag, &["--keep-previous", "60s"], &[&server])
}

/// The state letter of /proc/PID/stat ('T': stopped by a signal).
fn proc_state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn rollback_returns_to_the_kept_generation_with_no_failed_request() {
    if !as_root("keep previous") {
        return;
    }
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = kept_server("keep-previous");
    let load = Load::start(addr, CLIENTS);
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let new = pids_of(&ctl, 2).pop().expect("generation 2 runs");
    assert_eq!(pids_of(&ctl, 1), vec![old.clone()], "generation 1 is kept");
    assert_eq!(proc_state(&old), Some('T'), "the kept one is frozen");
    for _ in 0..20 {
        assert_eq!(get(addr).unwrap(), new, "no traffic to the kept one");
    }
    let st = status(std::path::Path::new(&ctl));
    assert!(
        st.contains("generation 1 (pids [") && st.contains("kept for rollback until"),
        "{st}"
    );
    let (code, out) = cli(&["rollback", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("generation 1 serves every new connection"),
        "{out}"
    );
    assert_ne!(proc_state(&old), Some('T'), "thawed");
    for _ in 0..20 {
        assert_eq!(get(addr).unwrap(), old, "the previous version answers");
    }
    wait_for("the newer generation to stop", T, || {
        (!pid_alive(new.parse().unwrap())).then_some(())
    });
    let rep = load.finish();
    let sum = rep.summary();
    assert_eq!(rep.failed(), 0, "{sum}");
    assert!(rep.ok > 0, "{sum}");
    assert!(!status(std::path::Path::new(&ctl)).contains("kept for rollback"));
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// Where new connections cannot be steered back, `--keep-previous` is a
/// usage error that says why.
#[test]
fn keep_previous_is_refused_where_it_cannot_steer_back() {
    let server = example("pid_server").display().to_string();
    let port = free_port().to_string();
    let (s, log) = run_to_exit(
        &[
            "--port",
            &port,
            "--keep-previous",
            "60s",
            "--no-drain",
            "--",
            &server,
        ],
        T,
    );
    assert_eq!(s.code(), Some(2), "{log}");
    assert!(log.contains("--no-drain"), "{log}");
    if !as_root("keep previous beside a Unix listener") {
        return;
    }
    let dir = TempDir::new("keep-unix");
    let spec = format!("web=unix:{}", dir.join("app.sock").display());
    let (s, log) = run_to_exit(&["-l", &spec, "--keep-previous", "60s", "--", &server], T);
    assert_eq!(s.code(), Some(2), "{log}");
    assert!(
        log.contains("--keep-previous") && log.contains("web is a Unix socket"),
        "{log}"
    );
}

/// `relaunch upgrade` while a generation is kept: the new image keeps it
/// frozen, with its socket, and `relaunch rollback` still returns to it.
#[test]
fn an_upgrade_carries_the_kept_generation_on() {
    if !as_root("keep previous upgrade") {
        return;
    }
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = kept_server("keep-upgrade");
    let load = Load::start(addr, CLIENTS);
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let new = pids_of(&ctl, 2).pop().expect("generation 2 runs");
    let (code, out) = cli(&["upgrade", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let st = status(std::path::Path::new(&ctl));
    assert!(st.contains("kept for rollback until"), "{st}");
    assert_eq!(proc_state(&old), Some('T'), "still frozen");
    for _ in 0..20 {
        assert_eq!(get(addr).unwrap(), new, "no traffic to the kept one");
    }
    let (code, out) = cli(&["rollback", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    for _ in 0..20 {
        assert_eq!(get(addr).unwrap(), old, "the previous version answers");
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{}", rep.summary());
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}
