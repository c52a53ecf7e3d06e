//! On demand: `--lazy` starts the first generation at the first connection;
//! `--idle-stop` stops the children after a quiet spell and the next
//! connection starts them again. Nothing is refused in between.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// Whether the kernel lists a TCP listener on `port` (what `ss -ltn`
/// shows), read from /proc so that looking does not connect.
fn listening(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&hex) && f[3] == "0A"
            })
        })
    })
}

fn relaunch_status(control: &std::path::Path, json: bool) -> String {
    let mut cmd = Command::new(relaunch_bin());
    cmd.args(["status", "--control", control.to_str().unwrap()]);
    if json {
        cmd.arg("--json");
    }
    String::from_utf8(cmd.output().unwrap().stdout).unwrap()
}

/// A GET in a thread, started at once: (answer, latency).
fn get_in_thread(addr: SocketAddr) -> std::thread::JoinHandle<(std::io::Result<String>, Duration)> {
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = get(addr);
        (r, t.elapsed())
    })
}

#[test]
fn lazy_starts_the_first_generation_at_the_first_connection() {
    let dir = TempDir::new("lazy");
    let control = dir.join("ctl.sock");
    let server = example("pid_server");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--lazy",
        "--control",
        control.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
        "--delay",
        "0.8",
    ]);
    let addr = r.listen_addr(3);
    r.log.wait("waiting for the first connection", T);
    let shown = relaunch_status(&control, false);
    assert!(
        shown.starts_with(&format!(
            "relaunch (pid {}): waiting for the first connection\nidle since ",
            r.pid()
        )),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_str(&relaunch_status(&control, true)).unwrap();
    assert_eq!(json["state"], "waiting for the first connection");
    assert!(json["idle_secs"].as_f64().is_some(), "{json}");
    // A reload has nothing to reload and starts nothing.
    let out = Command::new(relaunch_bin())
        .args(["reload", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to reload"),
        "{out:?}"
    );
    r.signal(libc::SIGHUP);
    r.log.wait_n("nothing to reload", 2, T);
    assert_eq!(children_of(r.pid()), Vec::<i32>::new(), "no child yet");
    assert!(listening(addr.port()));

    // The first connection, then more while the app starts (0.8 s).
    let first = get_in_thread(addr);
    r.log
        .wait("a connection is waiting: starting generation 1", T);
    let more: Vec<_> = (0..6)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            get_in_thread(addr)
        })
        .collect();
    let (answer, latency) = first.join().unwrap();
    let pid = answer.expect("the first connection is answered");
    assert!(
        latency >= Duration::from_millis(800),
        "answered in {latency:?}, before the app could have started"
    );
    for t in more {
        let (answer, _) = t.join().unwrap();
        assert_eq!(answer.expect("answered too"), pid, "one child serves all");
    }
    assert_eq!(children_of(r.pid()), vec![pid.parse::<i32>().unwrap()]);
    assert_eq!(r.log.count(" started pid="), 1);
    r.log.wait("serving: generation 1", T);
    let shown = relaunch_status(&control, false);
    assert!(shown.contains("serving, generation 1"), "{shown}");
    assert!(!shown.contains("idle since"), "{shown}");
}

/// A UDP listener: the first datagram starts the child and is still there
/// for it to read (relaunch only waited for readability).
#[test]
fn lazy_udp_starts_at_the_first_datagram_and_leaves_it_to_the_child() {
    if !require_tool("python3") {
        return;
    }
    let echo = "import socket\n\
                s = socket.socket(fileno=3)\n\
                while True:\n    d, a = s.recvfrom(512)\n    s.sendto(d, a)\n";
    let r = Relaunch::start(&[
        "-l",
        "udp:127.0.0.1:0",
        "--lazy",
        "--",
        "python3",
        "-c",
        echo,
    ]);
    let line = r.log.wait(" as fd 3 ", T);
    let addr: SocketAddr = line
        .split("listening on udp:")
        .nth(1)
        .unwrap()
        .split(" as fd")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    r.log.wait("waiting for the first connection", T);
    assert!(children_of(r.pid()).is_empty());
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.send_to(b"first", addr).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).expect("the first datagram's echo");
    assert_eq!(&buf[..n], b"first");
    assert_eq!(children_of(r.pid()).len(), 1);
}

#[test]
fn idle_stop_stops_the_child_keeps_the_listener_and_starts_again() {
    let dir = TempDir::new("idle");
    let control = dir.join("ctl.sock");
    let server = example("pid_server");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--idle-stop",
        "1s",
        "--control",
        control.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
    ]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    let first = wait_serving(addr);

    // A connection held open (no request yet) is not idleness.
    let mut held = TcpStream::connect(addr).unwrap();
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_millis(2500) {
        assert!(
            relaunch_status(&control, false).contains("serving, generation 1"),
            "stopped while a connection was open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.log.count("no connection for"), 0);
    held.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.trim_end().ends_with(&first), "{answer}");
    drop(held);
    let quiet_since = Instant::now();

    r.log
        .wait("stopped while idle; waiting for a connection", T);
    assert!(
        quiet_since.elapsed() >= Duration::from_secs(1),
        "stopped {:?} after the last connection",
        quiet_since.elapsed()
    );
    let old: i32 = first.parse().unwrap();
    assert!(!pid_alive(old), "the child is gone");
    assert!(children_of(r.pid()).is_empty());
    assert!(listening(addr.port()), "the listener remains");
    let shown = relaunch_status(&control, false);
    assert!(
        shown.contains("waiting for a connection, generation 1\nidle since "),
        "{shown}"
    );

    // The next connection starts generation 2 and is answered.
    let second = get(addr).expect("answered after the idle stop");
    assert_ne!(second, first);
    r.log.wait("starting generation 2", T);
}

/// Ten stop/start cycles under a client that pauses longer than the idle
/// time between bursts, every other burst landing the moment the idle
/// child is told to stop: every request is answered, none refused.
#[test]
fn idle_stop_cycles_refuse_nothing() {
    let dir = TempDir::new("cycles");
    let control = dir.join("ctl.sock");
    let server = example("pid_server");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--lazy",
        "--idle-stop",
        "400ms",
        "--control",
        control.to_str().unwrap(),
        "--",
        server.to_str().unwrap(),
        "--delay",
        "0.1",
    ]);
    let addr = r.listen_addr(3);
    let stops = || r.log.count("no connection for");
    let waiting = || relaunch_status(&control, false).contains("waiting for a connection");
    let mut report = LoadReport::default();
    let mut bursts = 0;
    let mut stops_before = 0;
    while stops() < 10 {
        // A burst served whole by a child that is stopping starts no new
        // one (nothing is left waiting), so there may be more bursts than
        // cycles; every other burst comes once no child runs, and does.
        assert!(bursts < 20, "{bursts} bursts for {} stops", stops());
        if bursts > 0 {
            if bursts % 2 == 1 {
                wait_for("the idle stop to begin", T, || {
                    (stops() > stops_before || waiting()).then_some(())
                });
            } else {
                wait_for("no child to run", T, || waiting().then_some(()));
            }
        }
        stops_before = stops();
        let load = Load::start(addr, 3);
        std::thread::sleep(Duration::from_millis(150));
        let got = load.finish();
        report.ok += got.ok;
        report.refused += got.refused;
        report.reset += got.reset;
        report.timeout += got.timeout;
        report.other += got.other;
        report.errors.extend(got.errors);
        report.pids.extend(got.pids);
        bursts += 1;
    }
    assert_eq!(report.failed(), 0, "{report:?}");
    assert!(report.ok >= 10, "{report:?}");
    assert!(
        report.pids.len() >= 5,
        "each burst after a stop has its own child: {:?}",
        report.pids
    );
    assert!(r.log.count(" started pid=") >= 10);
}

/// `--workers 2`, each leader with a forked member that ignores SIGTERM:
/// the idle stop ends every process of every group before waiting again.
#[test]
fn idle_stop_ends_every_worker_group() {
    let server = example("pid_server");
    let script = format!(
        r#"sh -c "trap '' TERM; exec sleep 300" & exec {}"#,
        server.display()
    );
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--idle-stop",
        "500ms",
        "--stop-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    wait_serving(addr);
    let leaders = wait_for("two workers with a member each", T, || {
        let kids = children_of(r.pid());
        (kids.len() == 2 && kids.iter().all(|&k| group_members(k).len() >= 2)).then_some(kids)
    });
    r.log
        .wait("stopped while idle; waiting for a connection", T);
    for leader in leaders {
        assert_eq!(group_members(leader), Vec::<i32>::new(), "group {leader}");
    }
    assert!(
        r.log.count("SIGKILL") >= 1,
        "the TERM-ignoring members were killed"
    );
    assert!(children_of(r.pid()).is_empty());
    wait_serving(addr);
}

/// Nothing runs until the first connection, so a command that cannot run
/// is reported at start (127), not when a client has already connected.
#[test]
fn lazy_reports_a_missing_program_at_start() {
    let (status, log) = run_to_exit(
        &[
            "-l",
            "127.0.0.1:0",
            "--lazy",
            "--",
            "no-such-program-relaunch",
        ],
        T,
    );
    assert_eq!(status.code(), Some(127), "{log}");
    assert!(log.contains("command not found in PATH"), "{log}");
}

/// A Unix stream listener: started by the first connection, kept while a
/// connection is open (seen in /proc/net/unix by the listener's path),
/// stopped once quiet, and started again.
#[test]
fn unix_listener_lazy_and_idle_stop() {
    use std::os::unix::net::UnixStream;
    if !require_tool("python3") {
        return;
    }
    let server = "import os, socket, threading\n\
                  s = socket.socket(fileno=3)\n\
                  def serve(c):\n    with c:\n        if c.recv(16):\n            c.sendall(str(os.getpid()).encode())\n\
                  while True:\n    c, _ = s.accept()\n    threading.Thread(target=serve, args=(c,), daemon=True).start()\n";
    let dir = TempDir::new("lazy-unix");
    let path = dir.join("s.sock");
    let spec = format!("unix:{}", path.display());
    let r = Relaunch::start(&[
        "-l",
        &spec,
        "--lazy",
        "--idle-stop",
        "500ms",
        "--",
        "python3",
        "-c",
        server,
    ]);
    r.log.wait("waiting for the first connection", T);
    assert!(children_of(r.pid()).is_empty());
    let ask = || {
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        c.write_all(b"x").unwrap();
        let mut pid = String::new();
        c.read_to_string(&mut pid).unwrap();
        pid
    };
    let first = ask();
    assert!(!first.is_empty());
    r.log.wait("serving: generation 1", T);
    let held = UnixStream::connect(&path).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        r.log.count("no connection for"),
        0,
        "stopped while a connection was open"
    );
    assert_eq!(children_of(r.pid()), vec![first.parse::<i32>().unwrap()]);
    drop(held);
    r.log
        .wait("stopped while idle; waiting for a connection", T);
    assert!(children_of(r.pid()).is_empty());
    let second = ask();
    assert_ne!(second, first);
}

#[test]
fn a_stop_while_waiting_exits_zero_at_once() {
    let mut r = Relaunch::start(&["-l", "127.0.0.1:0", "--lazy", "--", "sleep", "300"]);
    r.log.wait("waiting for the first connection", T);
    let stop = Instant::now();
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait_exit(T).code(), Some(0), "{}", r.log.text());
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stop.elapsed()
    );
    assert_eq!(r.log.count(" started pid="), 0);
}
