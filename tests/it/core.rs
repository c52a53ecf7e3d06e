//! The handover protocol, supervision, stopping, a held port and Unix
//! socket files.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(15);

#[test]
fn probe_sees_exactly_its_socket_and_its_own_pid() {
    let dir = TempDir::new("layout");
    let out = dir.join("report.json");
    // A free port for --port (every interface); the tiny race is acceptable in a test.
    let port = TcpListener::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let probe = probe();
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["--port", &port, "--", probe.to_str().unwrap()])
            // Inherited values must be replaced, not passed through.
            .env("NOTIFY_SOCKET", "/nonexistent/outer")
            .env("LISTEN_FDNAMES", "stale")
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    let pid = rep["pid"].as_i64().unwrap();
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3], "{rep:#}");
    let f3 = fd(&rep, 3);
    assert_eq!(f3["cloexec"], false);
    assert_eq!(f3["listening"], true);
    assert_eq!(f3["reuseport"], false);
    assert_eq!(f3["addr"], format!("[::]:{port}"));
    assert_eq!(rep["listen_pid"], pid.to_string());
    assert_eq!(rep["listen_fds"], "1");
    assert_eq!(rep["listen_fdnames"], "http");
    assert_eq!(rep["relaunch_worker"], "0");
    assert_ne!(rep["notify_socket"], "/nonexistent/outer");
    assert!(rep["notify_socket"].as_str().unwrap().starts_with('@'));
    assert_eq!(rep["pgid"], pid, "the child leads its own process group");
    assert_eq!(rep["ppid"], r.pid());
    assert_eq!(rep["sigpipe_ignored"], false);
    assert_eq!(
        rep["sigblk"].as_str().map(|s| s.trim_start_matches('0')),
        Some(""),
        "empty signal mask"
    );
    r.log
        .wait(&format!("listening on [::]:{port} as fd 3 (http)"), T);
}

#[test]
fn named_listeners_tcp_ipv6_unix_udp_in_order() {
    let dir = TempDir::new("named");
    let out = dir.join("report.json");
    let sock = dir.join("admin.sock");
    let probe = probe();
    let admin = format!("admin=unix:{}", sock.display());
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "http=127.0.0.1:0",
                "-l",
                "ws=127.0.0.1:0",
                "-l",
                &admin,
                "-l",
                "dns=udp:127.0.0.1:0",
            ])
            .args([
                "-l",
                "v6=[::1]:0",
                "-l",
                "127.0.0.1:0",
                "--",
                probe.to_str().unwrap(),
            ])
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(rep["listen_fdnames"], "http:ws:admin:dns:v6:http2");
    assert_eq!(rep["listen_fds"], "6");
    assert_eq!(fd(&rep, 3)["addr"], r.listen_addr(3).to_string());
    assert_eq!(fd(&rep, 4)["addr"], r.listen_addr(4).to_string());
    assert_eq!(fd(&rep, 5)["addr"], sock.display().to_string());
    assert_eq!(fd(&rep, 5)["family"], "unix");
    assert_eq!(fd(&rep, 6)["type"], "dgram");
    assert_eq!(fd(&rep, 7)["family"], "inet6");
    for n in 3..=8 {
        assert_eq!(fd(&rep, n)["cloexec"], false);
    }
    drop(r);
    assert!(
        !sock.exists(),
        "the socket file relaunch created is removed on exit"
    );
}

#[test]
fn under_systemd_socket_activate_probe_gets_the_inherited_socket() {
    if !require_tool("systemd-socket-activate") {
        return;
    }
    let dir = TempDir::new("activate");
    let out = dir.join("report.json");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe = probe();
    let listen = format!("127.0.0.1:{port}");
    // `-l web=...` names the inherited socket, so relaunch must not bind again.
    let r = Relaunch::start_with(
        Command::new("systemd-socket-activate")
            .args([
                "-l",
                &listen,
                "--fdname=web",
                "-E",
                "PROBE_OUT",
                "-E",
                "RUST_LOG",
            ])
            .args([
                relaunch_bin(),
                "-l",
                &format!("web={listen}"),
                "--",
                probe.to_str().unwrap(),
            ])
            .env("PROBE_OUT", &out),
    );
    // systemd-socket-activate waits for a connection before it starts relaunch.
    let addr: SocketAddr = listen.parse().unwrap();
    let _first = wait_for("systemd-socket-activate to listen", T, || {
        std::net::TcpStream::connect(addr).ok()
    });
    let rep = read_report(&out);
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3], "{rep:#}");
    assert_eq!(rep["listen_fdnames"], "web");
    assert_eq!(rep["listen_pid"], rep["pid"].as_i64().unwrap().to_string());
    assert_eq!(fd(&rep, 3)["addr"], listen);
    r.log.wait("web: using the socket inherited", T);
}

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
fn held_port_names_the_holder() {
    let mut holder = Command::new("python3")
        .args(["-c", "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim();
    let t = Instant::now();
    let (status, log) = run_to_exit(
        &["-l", &format!("127.0.0.1:{port}"), "--", "true"],
        Duration::from_secs(5),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "port {port} is already in use by pid {} (python3",
            holder.id()
        )),
        "{log}"
    );
    assert!(log.contains("relaunch who"), "{log}");
}

#[test]
fn unix_socket_stale_file_is_replaced_and_live_one_refused() {
    let dir = TempDir::new("unix");
    let path = dir.join("app.sock");
    // A stale file: bound, then the owner went away.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let spec = format!("unix:{}", path.display());
    let r = Relaunch::start(&["-l", &spec, "--", "sleep", "60"]);
    r.log.wait("listening on unix:", T);
    // Now it is live: a second relaunch must refuse it.
    let (s, log) = run_to_exit(&["-l", &spec, "--", "true"], T);
    assert_eq!(s.code(), Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
    assert!(
        path.exists(),
        "the refused relaunch did not remove the live file"
    );
    drop(r);
    assert!(!path.exists());
    let (s, log) = run_to_exit(&["-l", "unix:/nonexistent-dir/x.sock", "--", "true"], T);
    assert_eq!(s.code(), Some(1), "{log}");
    assert!(log.contains("does not exist"), "{log}");
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

#[test]
fn unix_socket_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("unix-mode");
    let path = dir.join("app.sock");
    let default = dir.join("default.sock");
    let spec = format!("unix:{},mode=0640,group=65534", path.display());
    let spec2 = format!("unix:{}", default.display());
    let r = Relaunch::start(&["-l", &spec, "-l", &spec2, "--", "sleep", "60"]);
    r.log.wait("as fd 4", T);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), 65534);
    // The documented default, as systemd's SocketMode=.
    assert_eq!(
        std::fs::metadata(&default).unwrap().permissions().mode() & 0o777,
        0o666
    );
}
