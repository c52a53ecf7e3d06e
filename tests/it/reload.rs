//! Zero-downtime reloads (and the old generation serving on when the new one
//! fails), workers and the control socket. How readiness is seen: ready.rs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

pub(crate) fn reload_cli(control: &Path) -> (i32, String) {
    let out = Command::new(relaunch_bin())
        .args(["reload", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn distinct_pids(addr: SocketAddr, want: usize) -> BTreeSet<String> {
    let load = Load::start(addr, 8);
    let mut seen = BTreeSet::new();
    wait_for(&format!("{want} distinct pids"), T, || {
        seen.extend(get(addr).ok());
        (seen.len() >= want).then_some(())
    });
    let rep = load.finish();
    seen.extend(rep.pids);
    seen
}

#[test]
fn sighup_reloads_under_load_without_a_failed_request() {
    let app = App::new("hup", &pid_server("--delay 0.5"));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--", &app.script()]);
    let addr = r.listen_addr(3);
    let mut last = wait_serving(addr);
    let load = Load::start(addr, 8);
    for n in 1..=3 {
        r.signal(libc::SIGHUP);
        r.log.wait_n("reload done", n, T);
        last = wait_new_pid(addr, &last);
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(rep.pids.len(), 4, "{:?}", rep.pids);
}

#[test]
fn new_generation_that_crashes_leaves_the_old_one_serving() {
    let app = App::new("crash", &pid_server(""));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--control",
        app.control().to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    app.deploy("echo 'bad deploy' >&2; exit 3\n");
    let load = Load::start(addr, 4);
    let (code, out) = reload_cli(&app.control());
    let rep = load.finish();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("exited with status 3 before it was ready"),
        "{out}"
    );
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(get(addr).unwrap(), old);
    assert!(rep.pids.iter().all(|p| p == &old), "{:?}", rep.pids);
}

#[test]
fn never_ready_under_notify_times_out_and_old_keeps_serving() {
    let app = App::new("never", &pid_server(""));
    let ctl = app.control();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--ready-timeout",
        "2s",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    // The new version takes the socket but never says READY=1.
    app.deploy(&pid_server("--no-notify"));
    let load = Load::start(addr, 4);
    let (code, out) = reload_cli(&ctl);
    let rep = load.finish();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("was not ready within 2s"), "{out}");
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    r.log.wait("stopped", T);
    assert_eq!(get(addr).unwrap(), old);
}

#[test]
fn workers_share_the_socket_and_reload_together() {
    let app = App::new("workers", &pid_server("--delay 0.2"));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--workers", "3", "--", &app.script()]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    let first = distinct_pids(addr, 3);
    assert_eq!(first.len(), 3, "{first:?}");
    let load = Load::start(addr, 8);
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let second = distinct_pids(addr, 3);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert!(first.is_disjoint(&second), "{first:?} {second:?}");
    let all: BTreeSet<_> = first.union(&second).collect();
    assert_eq!(all.len(), 6);
}

#[test]
fn a_dead_worker_is_restarted_alone() {
    let app = App::new("worker-crash", &pid_server(""));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--workers", "2", "--", &app.script()]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    let pids = distinct_pids(addr, 2);
    let victim: i32 = pids.iter().next().unwrap().parse().unwrap();
    unsafe { libc::kill(victim, libc::SIGKILL) };
    r.log.wait("killed by signal 9 (SIGKILL)", T);
    r.log.wait_n("started", 3, T);
    let after = distinct_pids(addr, 2);
    assert_eq!(
        after.intersection(&pids).count(),
        1,
        "the other worker kept running: {pids:?} {after:?}"
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

#[test]
fn reloads_during_a_reload_coalesce_into_one() {
    let app = App::new("coalesce", &pid_server("--delay 0.5"));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--", &app.script()]);
    let addr = r.listen_addr(3);
    wait_serving(addr);
    r.signal(libc::SIGHUP);
    r.log.wait("reload: starting generation 2", T);
    // Three more while generation 2 starts, each one seen by relaunch.
    for n in 2..=4 {
        r.signal(libc::SIGHUP);
        r.log.wait_n("SIGHUP: reload", n, T);
    }
    r.log.wait_n("reload done", 2, T);
    wait_serving(addr);
    assert_eq!(
        r.log.count("reload: starting generation 3"),
        1,
        "{}",
        r.log.text()
    );
    assert_eq!(
        r.log.count("reload: starting generation 4"),
        0,
        "{}",
        r.log.text()
    );
}

#[test]
fn talks_to_systemd_around_start_reload_and_stop() {
    let app = App::new("sd", &pid_server(""));
    let path = app.dir.join("notify.sock");
    let sd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sd.set_read_timeout(Some(T)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sd.recv(&mut buf).expect("a datagram from relaunch");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--", &app.script()])
            .env("NOTIFY_SOCKET", &path),
    );
    // The listener it bound, offered to systemd's fd store first.
    let offer = next();
    assert_eq!(offer, "FDSTORE=1\nFDNAME=relaunch.http");
    let first = next();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        first.contains("STATUS=serving: generation 1, pid "),
        "{first}"
    );
    r.signal(libc::SIGHUP);
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready = next();
    assert!(
        ready.contains("READY=1") && ready.contains("generation 2"),
        "{ready}"
    );
    r.signal(libc::SIGTERM);
    assert!(next().contains("STOPPING=1"));
    assert_eq!(r.wait_exit(T).code(), Some(0));
}
