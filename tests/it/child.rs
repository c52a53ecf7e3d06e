//! What the child gets, and what relaunch leaves behind: the handover
//! (exactly its listeners as fds from 3, LISTEN_PID, LISTEN_FDNAMES), in
//! order and by name, bound or inherited from systemd; signal dispositions,
//! environment, files, and its user and groups under `--user`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(15);

/// `--port` and an explicit `http=` listener both reach the child: the
/// explicit name is reserved first, so `--port` gets `http2` and neither is
/// taken for an inherited socket and dropped.
#[test]
fn port_and_an_explicit_http_listener_both_reach_the_child() {
    let dir = TempDir::new("names");
    let out = dir.join("report.json");
    let (p1, p2) = (free_port(), free_port());
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["--port", &p1.to_string()])
            .args(["-l", &format!("http=127.0.0.1:{p2}")])
            .args(["--", probe().to_str().unwrap()])
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3, 4], "{rep:#}");
    assert_eq!(rep["listen_fds"], "2");
    assert_eq!(rep["listen_fdnames"], "http2:http");
    assert_eq!(fd(&rep, 3)["addr"], format!("[::]:{p1}"));
    assert_eq!(fd(&rep, 4)["addr"], format!("127.0.0.1:{p2}"));
    assert_eq!(r.log.count("inherited"), 0, "{}", r.log.text());
}

/// On kernels without `close_range(CLOSE_RANGE_CLOEXEC)` (before 5.11) an
/// fd leaked to relaunch by its parent still stays out of every child. The
/// test-only variable makes relaunch take the fallback path on any kernel.
#[test]
fn a_leaked_fd_stays_out_of_the_child_without_close_range() {
    let dir = TempDir::new("leak");
    let out = dir.join("report.json");
    let mut cmd = Command::new(relaunch_bin());
    cmd.args(["-l", "127.0.0.1:0", "--", probe().to_str().unwrap()])
        .env("PROBE_OUT", &out)
        .env("RELAUNCH_TEST_NO_CLOSE_RANGE", "1");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            // dup2 gives a copy without close-on-exec: a leak into relaunch.
            if fd < 0 || libc::dup2(fd, 60) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _r = Relaunch::start_with(&mut cmd);
    let rep = read_report(&out);
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3], "{rep:#}");
}

/// An ignored SIGRTMAX inherited by relaunch is reset for the child: the
/// reset covers every signal up to SIGRTMAX itself.
#[test]
fn an_ignored_sigrtmax_is_reset_for_the_child() {
    let dir = TempDir::new("rtmax");
    let out = dir.join("report.json");
    let mut cmd = Command::new(relaunch_bin());
    cmd.args(["-l", "127.0.0.1:0", "--", probe().to_str().unwrap()])
        .env("PROBE_OUT", &out);
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGRTMAX(), libc::SIG_IGN);
            Ok(())
        });
    }
    let _r = Relaunch::start_with(&mut cmd);
    let rep = read_report(&out);
    let ign = u64::from_str_radix(rep["sigign"].as_str().unwrap(), 16).unwrap();
    let rtmax = 1u64 << (libc::SIGRTMAX() - 1);
    assert_eq!(
        ign & rtmax,
        0,
        "SIGRTMAX left ignored in the child: {ign:x}"
    );
}

/// `RELAUNCH_CONTROL` (the env form of --control) does not reach the child.
#[test]
fn relaunch_control_does_not_leak_to_the_child() {
    let dir = TempDir::new("ctlenv");
    let out = dir.join("report.json");
    let ctl = dir.join("ctl.sock");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--", probe().to_str().unwrap()])
            .env("RELAUNCH_CONTROL", &ctl)
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    assert!(rep["env"].get("RELAUNCH_CONTROL").is_none(), "{rep:#}");
    r.log.wait("control socket listening", T);
}

/// relaunch runs itself with glibc settings of its own (through
/// GLIBC_TUNABLES): the child gets the environment's GLIBC_TUNABLES as
/// given, or none, and relaunch keeps its name.
#[test]
fn glibc_tunables_reach_the_child_as_given() {
    for given in [None, Some(""), Some("glibc.malloc.check=0")] {
        let dir = TempDir::new("tunables");
        let out = dir.join("report.json");
        let mut cmd = Command::new(relaunch_bin());
        cmd.args(["-l", "127.0.0.1:0", "--", probe().to_str().unwrap()])
            .env("PROBE_OUT", &out);
        match given {
            Some(v) => cmd.env("GLIBC_TUNABLES", v),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        let r = Relaunch::start_with(&mut cmd);
        let rep = read_report(&out);
        let env = &rep["env"];
        assert_eq!(
            env.get("GLIBC_TUNABLES").and_then(|v| v.as_str()),
            given,
            "{rep:#}"
        );
        let tunables: Vec<&String> = env
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.contains("TUNABLES"))
            .collect();
        assert_eq!(tunables.len(), usize::from(given.is_some()), "{rep:#}");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", r.pid())).unwrap();
        assert_eq!(comm.trim(), "relaunch");
    }
}

/// The --ports-file does not outlive relaunch.
#[test]
fn the_ports_file_is_removed_on_exit() {
    let dir = TempDir::new("portsfile");
    let ports = dir.join("ports.json");
    let mut r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ports-file",
        ports.to_str().unwrap(),
        "--",
        "sleep",
        "60",
    ]);
    r.listen_addr(3);
    wait_for("the ports file", T, || ports.exists().then_some(()));
    r.signal(libc::SIGTERM);
    let s = r.wait_exit(T);
    assert!(s.success(), "{s:?}\n{}", r.log.text());
    assert!(!ports.exists(), "the ports file outlived relaunch");
}

/// Under --user, HOME, USER and LOGNAME are the user's, not root's, as
/// systemd's `User=` sets them.
#[test]
fn under_user_the_child_gets_that_users_home_and_names() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("user env: NOT RUN: relaunch must start as root to use --user");
        return;
    }
    let dir = TempDir::new("userenv");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = dir.join("report.json");
    let _r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--user", "nobody", "--"])
            .arg(probe())
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    let home = String::from_utf8(
        Command::new("sh")
            .args(["-c", "getent passwd nobody | cut -d: -f6"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(rep["env"]["HOME"], home.trim(), "{rep:#}");
    assert_eq!(rep["env"]["USER"], "nobody");
    assert_eq!(rep["env"]["LOGNAME"], "nobody");
}

/// `,nonblock` (systemd's NonBlocking=): the child gets that listener in
/// non-blocking mode and the others as they were bound, blocking. The mode
/// belongs to the socket, which every generation shares: a child that
/// clears it clears it for all, and relaunch sets it again for the next.
#[test]
fn nonblock_listeners_reach_each_generation_non_blocking_and_only_they() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("nonblock");
    let (gen1, gen2) = (dir.join("gen1.json"), dir.join("gen2.json"));
    let sock = dir.join("app.sock");
    let probe = probe();
    // The first generation clears the flag on fd 3 before the probe looks.
    let clears = format!(
        "PROBE_OUT={} exec python3 -c 'import fcntl, os, sys\n\
         fcntl.fcntl(3, fcntl.F_SETFL, fcntl.fcntl(3, fcntl.F_GETFL) & ~os.O_NONBLOCK)\n\
         os.execv(sys.argv[1], sys.argv[1:])' {} --notify\n",
        gen1.display(),
        probe.display()
    );
    let app = App::new("nonblock-app", &clears);
    let r = Relaunch::start(&[
        "-l",
        "a=127.0.0.1:0,nonblock",
        "-l",
        "b=127.0.0.1:0",
        "-l",
        &format!("c=unix:{},nonblock", sock.display()),
        "--",
        &app.script(),
    ]);
    let rep = read_report(&gen1);
    assert_eq!(fd_numbers(&rep), [0, 1, 2, 3, 4, 5], "{rep:#}");
    assert_eq!(fd(&rep, 3)["nonblocking"], false, "cleared by the child");
    assert_eq!(fd(&rep, 4)["nonblocking"], false, "{rep:#}");
    assert_eq!(fd(&rep, 5)["nonblocking"], true, "{rep:#}");
    assert_eq!(fd(&rep, 5)["addr"], sock.display().to_string());
    app.deploy(&format!(
        "PROBE_OUT={} exec {} --notify\n",
        gen2.display(),
        probe.display()
    ));
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let rep = read_report(&gen2);
    assert_eq!(fd(&rep, 3)["nonblocking"], true, "set again: {rep:#}");
    assert_eq!(fd(&rep, 4)["nonblocking"], false, "{rep:#}");
    assert_eq!(fd(&rep, 5)["nonblocking"], true, "{rep:#}");
}

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
    // As root, a held TCP port is a group of relaunch's own (the drain).
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(f3["reuseport"], root);
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
fn user_nobody_gets_uid_65534_its_groups_and_fd_3() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("user_nobody: NOT RUN: relaunch must start as root to use --user");
        return;
    }
    let dir = TempDir::new("nobody");
    // The child writes its report as nobody.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.join("report.json");
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "127.0.0.1:0",
                "--user",
                "nobody",
                "--",
                probe().to_str().unwrap(),
            ])
            .env("PROBE_OUT", &out),
    );
    let addr = r.listen_addr(3);
    let rep = read_report(&out);
    assert_eq!(rep["uid"], 65534, "{rep:#}");
    let nogroup = nobody_gid();
    assert_eq!(rep["gid"], nogroup, "{rep:#}");
    let groups: Vec<u64> = rep["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert!(!groups.contains(&0), "root's groups were kept: {groups:?}");
    assert_eq!(groups, nobody_groups(), "nobody's supplementary groups");
    let f3 = rep["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == 3)
        .expect("fd 3");
    assert_eq!(f3["listening"], true, "{rep:#}");
    assert_eq!(f3["cloexec"], false);
    assert_eq!(f3["addr"], addr.to_string());
    assert_eq!(rep["listen_pid"], rep["pid"].as_i64().unwrap().to_string());
}

fn nobody_gid() -> u64 {
    let out = Command::new("id").args(["-g", "nobody"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn nobody_groups() -> Vec<u64> {
    let out = Command::new("id").args(["-G", "nobody"]).output().unwrap();
    let mut g: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    g.sort();
    g
}
