//! Supervision: a crashed child is restarted on the same socket, a child
//! killed under load refuses nothing, other signals reach the child, a child
//! ignoring TERM is killed after --stop-timeout, and a killed relaunch leaves
//! no child holding the port.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(15);

#[test]
fn crashing_child_is_restarted_on_the_same_socket() {
    let dir = TempDir::new("crash");
    let out = dir.join("report.json");
    let probe = probe();
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "127.0.0.1:0",
                "--",
                probe.to_str().unwrap(),
                "--exit",
                "3",
            ])
            .env("PROBE_OUT", &out),
    );
    let addr = r.listen_addr(3);
    r.log.wait_n("started", 3, T);
    assert!(r.log.count("exited with status 3") >= 2);
    let rep = read_report(&out);
    assert_eq!(fd(&rep, 3)["addr"], addr.to_string());
}

#[test]
fn kill_9_of_the_child_under_load_refuses_nothing() {
    let pid_server = example("pid_server");
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--", pid_server.to_str().unwrap()]);
    let addr = r.listen_addr(3);
    let first = wait_serving(addr);
    let load = Load::start(addr, 4);
    unsafe { libc::kill(first.parse().unwrap(), libc::SIGKILL) };
    let second = wait_new_pid(addr, &first);
    let rep = load.finish();
    assert_eq!(rep.refused, 0, "{:?}", rep.errors);
    assert_eq!(rep.timeout, 0, "{:?}", rep.errors);
    // SIGKILL loses only what the dead child had accepted: at most one per client.
    assert!(rep.failed() <= 4, "{:?}", rep.errors);
    assert!(rep.ok > 0);
    assert_ne!(first, second);
}

#[test]
fn child_ignoring_term_is_killed_after_stop_timeout() {
    let dir = TempDir::new("stuck");
    let out = dir.join("report.json");
    let probe = probe();
    let mut r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "127.0.0.1:0",
                "--stop-timeout",
                "1s",
                "--",
                probe.to_str().unwrap(),
                "--ignore-term",
            ])
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    let t = Instant::now();
    r.signal(libc::SIGTERM);
    let status = r.wait_exit(Duration::from_secs(4));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "KILL came before the stop timeout"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "we stopped it: exit 0\n{}",
        r.log.text()
    );
    assert!(r.log.text().contains("sending SIGKILL"));
    assert!(!pid_alive(rep["pid"].as_i64().unwrap() as i32));
}

#[test]
fn other_signals_are_forwarded_to_the_child() {
    let dir = TempDir::new("fwd");
    let flag = dir.join("got-usr1");
    let script = format!(
        "trap 'echo usr1 > {}; exit 0' USR1; echo ready > {}.ready; while :; do sleep 0.05; done",
        flag.display(),
        flag.display()
    );
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_for("child ready", T, || {
        std::fs::metadata(format!("{}.ready", flag.display())).ok()
    });
    r.signal(libc::SIGUSR1);
    wait_for("USR1 delivered", T, || std::fs::read_to_string(&flag).ok());
}

#[test]
fn killed_relaunch_leaves_no_child_holding_the_port() {
    let pid_server = example("pid_server");
    let mut r = Relaunch::start(&["-l", "127.0.0.1:0", "--", pid_server.to_str().unwrap()]);
    let addr = r.listen_addr(3);
    let child: i32 = wait_serving(addr).parse().unwrap();
    r.signal(libc::SIGKILL);
    r.wait_exit(T);
    wait_for(
        "the child to die with relaunch (PDEATHSIG)",
        Duration::from_secs(5),
        || (!pid_alive(child)).then_some(()),
    );
    wait_for("the port to bind again", Duration::from_secs(5), || {
        TcpListener::bind(addr).ok()
    });
}
