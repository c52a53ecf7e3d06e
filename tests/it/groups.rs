//! A generation is its process groups, not its leaders: processes of an old
//! group that outlive their leader are stopped too.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// A leader (`sleep`) with a child in its group that ignores SIGTERM.
const PREFORK: &str = r#"sh -c "trap '' TERM; exec sleep 300" & exec sleep 300"#;

/// The one child relaunch has started, once its group has `n` members.
fn leader_with_members(r: &Relaunch, n: usize) -> i32 {
    wait_for("the child and its group", T, || {
        let kids = children_of(r.pid());
        let leader = *kids.first()?;
        (kids.len() == 1 && group_members(leader).len() >= n).then_some(leader)
    })
}

#[test]
fn reload_ends_the_old_group_not_only_its_leader() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:200ms",
        "--stop-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        PREFORK,
    ]);
    r.log.wait("serving: generation 1", T);
    let old = leader_with_members(&r, 2);
    let sighup = Instant::now();
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let left = group_members(old);
    assert!(
        left.is_empty(),
        "reload declared done while group {old} still has {left:?}"
    );
    assert!(
        sighup.elapsed() >= Duration::from_secs(1),
        "the TERM-ignoring member can only be gone after --stop-timeout (SIGKILL)"
    );
    r.log.wait("SIGKILL", T);
}

#[test]
fn a_crashed_leader_does_not_leave_its_workers_serving() {
    let dir = TempDir::new("linger");
    let control = dir.join("ctl.sock");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:200ms",
        "--stop-timeout",
        "3s",
        "--control",
        control.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        PREFORK,
    ]);
    r.log.wait("serving: generation 1", T);
    let old = leader_with_members(&r, 2);
    let worker = group_members(old).into_iter().find(|&p| p != old).unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    // The leader is gone; its worker lingers until the group is stopped.
    let shown = wait_for("status showing the lingering worker", T, || {
        let s = status(&control);
        (s.contains("lingering") && s.contains(&worker.to_string())).then_some(s)
    });
    assert!(shown.contains(&old.to_string()), "{shown}");
    let killed = Instant::now();
    wait_for(
        &format!("group {old} to be empty"),
        Duration::from_secs(10),
        || group_members(old).is_empty().then_some(()),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "the lingering worker was not SIGKILLed after --stop-timeout"
    );
    // The restarted worker serves in a group of its own.
    let new = leader_with_members(&r, 2);
    assert_ne!(new, old);
}

/// A leader (`sleep`) whose child leaves the process group (`setsid`),
/// ignores SIGTERM and writes its pid to `$ESCAPED`: once the leader is
/// gone it lands on relaunch, outside every group relaunch signals.
const ESCAPES: &str = r#"setsid sh -c 'echo $$ > "$ESCAPED.tmp"; mv "$ESCAPED.tmp" "$ESCAPED"; trap "" TERM; exec sleep 300' & exec sleep 300"#;

fn escaped_pid(path: &std::path::Path) -> i32 {
    wait_for("the escaped process's pid", T, || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
}

/// A prototype saw requests split between the new generation and a process
/// of the old one that had setsid'd away: a reload must end such leftovers
/// too, with the same TERM, then SIGKILL after --stop-timeout.
#[test]
fn reload_ends_a_process_that_escaped_the_old_group() {
    let dir = TempDir::new("escape");
    let control = dir.join("ctl.sock");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .env("ESCAPED", dir.join("g1"))
            .args([
                "-l",
                "127.0.0.1:0",
                "--ready",
                "delay:200ms",
                "--stop-timeout",
                "3s",
                "--control",
                control.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                ESCAPES,
            ]),
    );
    r.log.wait("serving: generation 1", T);
    let escaped = escaped_pid(&dir.join("g1"));
    let old = leader_with_members(&r, 1);
    assert_ne!(proc_pgrp(escaped), old, "it left the group");
    let sighup = Instant::now();
    r.signal(libc::SIGHUP);
    // While it is being stopped, `relaunch status` says so.
    let shown = wait_for("status showing the escaped process", T, || {
        let s = status(&control);
        s.contains("escaped").then_some(s)
    });
    assert!(shown.contains(&escaped.to_string()), "{shown}");
    assert!(shown.contains("reloading"), "{shown}");
    r.log.wait("reload done", T);
    assert!(
        !pid_alive(escaped),
        "reload declared done while escaped pid {escaped} of generation 1 runs"
    );
    assert!(
        sighup.elapsed() >= Duration::from_secs(3),
        "the TERM-ignoring escaped process can only be gone after --stop-timeout (SIGKILL)"
    );
    r.log
        .wait(&format!("pid {escaped} did not stop; sending SIGKILL"), T);
}

/// The same after a crash: the restarted child does not share the socket
/// with what its predecessor left behind.
#[test]
fn a_crash_ends_what_escaped_the_crashed_group() {
    let dir = TempDir::new("escape-crash");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .env("ESCAPED", dir.join("pid"))
            .args([
                "-l",
                "127.0.0.1:0",
                "--ready",
                "delay:200ms",
                "--stop-timeout",
                "1s",
                "--",
                "sh",
                "-c",
                ESCAPES,
            ]),
    );
    r.log.wait("serving: generation 1", T);
    let escaped = escaped_pid(&dir.join("pid"));
    let old = leader_with_members(&r, 1);
    std::fs::remove_file(dir.join("pid")).unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for(
        &format!("escaped pid {escaped} to end"),
        Duration::from_secs(10),
        || (!pid_alive(escaped)).then_some(()),
    );
    // The restarted child's own escaped process is its to keep.
    let second = escaped_pid(&dir.join("pid"));
    assert!(pid_alive(second));
    assert_eq!(r.log.count(&format!("pid {second}")), 0, "{}", r.log.text());
}

fn proc_pgrp(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    rest[2].parse().unwrap()
}

/// The prototype's symptom: a server whose helper setsid's away with the
/// listener and answers on it. After a reload, only the new generation may
/// answer.
const SPLITS: &str = r#"
import os, signal, socket
listener = socket.socket(fileno=3)
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    conn, _ = listener.accept()
    conn.recv(4096)
    body = str(os.getpid()).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    conn.close()
"#;

#[test]
fn after_a_reload_no_escaped_process_of_the_old_generation_answers() {
    if !require_tool("python3") {
        return;
    }
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--stop-timeout",
        "1s",
        "--",
        "python3",
        "-c",
        SPLITS,
    ]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    // The leader and its escaped helper share the socket.
    let mut old = std::collections::BTreeSet::new();
    wait_for("answers from two pids", T, || {
        old.extend(get(addr).ok());
        (old.len() == 2).then_some(())
    });
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    for _ in 0..40 {
        let pid = get(addr).unwrap();
        assert!(
            !old.contains(&pid),
            "pid {pid} of generation 1 answered after the reload"
        );
    }
}

/// Answers every request with its pid on fd 3. With argv[1] = N it first
/// forks N workers that ignore SIGTERM and share the listener, as a prefork
/// server's do.
const TREE: &str = r#"
import os, signal, socket, sys
listener = socket.socket(fileno=3)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        break
while True:
    conn, _ = listener.accept()
    conn.recv(4096)
    body = str(os.getpid()).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    conn.close()
"#;

/// Everything that runs under `pid`, per /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Starts relaunch on `command` (argv after `--`, where "TREE" stands for the
/// server above), waits until `n` processes under it answer, then kill -9s
/// relaunch: within the deadline nothing that ran under it is left and the
/// port binds again.
fn nothing_outlives_kill_9(command: &[&str], n: usize) {
    if !require_tool("python3") {
        return;
    }
    let mut args = vec!["-l", "127.0.0.1:0", "--stop-timeout", "1s", "--"];
    args.extend(command.iter().map(|a| if *a == "TREE" { TREE } else { a }));
    let r = Relaunch::start(&args);
    let addr = r.listen_addr(3);
    let mut answered = std::collections::BTreeSet::new();
    wait_for(&format!("answers from {n} pids"), T, || {
        answered.extend(get(addr).ok());
        (answered.len() >= n).then_some(())
    });
    let mut tree = descendants(r.pid());
    // It must not outlive relaunch either (beyond its work).
    tree.push(keeper_of(r.pid()).expect("relaunch's keeper runs"));
    // Whatever happens below, nothing of this test keeps running.
    struct Sweep(Vec<i32>);
    impl Drop for Sweep {
        fn drop(&mut self) {
            for &p in &self.0 {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let _sweep = Sweep(tree.clone());
    let killed = Instant::now();
    r.signal(libc::SIGKILL);
    let deadline = Duration::from_secs(5);
    let end = killed + deadline;
    let mut left: Vec<i32> = tree.clone();
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        left.retain(|&p| pid_alive(p));
    }
    let listing: Vec<String> = left
        .iter()
        .map(|&p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            format!("{p} ({})", cmd.chars().take(60).collect::<String>())
        })
        .collect();
    assert!(
        left.is_empty(),
        "{deadline:?} after kill -9 of relaunch, {} of {} processes that ran under it live on: {listing:?}; \
         answered by {answered:?}",
        left.len(),
        tree.len(),
    );
    wait_for("the port to bind again", end - Instant::now(), || {
        std::net::TcpListener::bind(addr).ok()
    });
}

#[test]
fn a_server_behind_a_shell_wrapper_dies_with_a_killed_relaunch() {
    // sh -c without exec: only the shell is relaunch's child.
    nothing_outlives_kill_9(&["sh", "-c", "python3 -c \"$0\" 0; exit 0", "TREE"], 1);
}

#[test]
fn a_setsid_grandchild_dies_with_a_killed_relaunch() {
    // Its parent waits for it...
    nothing_outlives_kill_9(
        &["sh", "-c", "setsid python3 -c \"$0\" 0 & wait", "TREE"],
        1,
    );
    // ...or left it to relaunch, the subreaper, at once.
    nothing_outlives_kill_9(
        &[
            "sh",
            "-c",
            "(setsid python3 -c \"$0\" 0 &); exec sleep 300",
            "TREE",
        ],
        1,
    );
}

#[test]
fn prefork_workers_die_with_a_killed_relaunch() {
    // The master gets PR_SET_PDEATHSIG; its workers ignore SIGTERM.
    nothing_outlives_kill_9(&["python3", "-c", "TREE", "3"], 4);
}
