//! Faults and privileges against the real binary: relaunch as PID 1, orphans
//! and daemons, a stop during a reload and a reload during a stop, fd
//! exhaustion at spawn, a child stuck in its drain, `--user nobody`, a
//! soak of 200 reloads that must end with the fds, memory and children it
//! started with, and a server that served restarting at once after crashes.
//!
//! Already covered elsewhere, so not repeated: a stranger's READY=1
//! (ready.rs), kill -9 of relaunch and a child ignoring TERM at stop
//! (core.rs).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// Runs a relaunch client command; kills it if it has not exited within
/// `limit`, so a hang is a test failure, not a stuck suite.
fn cli(args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let child = Command::new(relaunch_bin())
        .args(args)
        .env_remove("RELAUNCH_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (out, hung) = match rx.recv_timeout(limit) {
        Ok(out) => (out.unwrap(), false),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (rx.recv().unwrap().unwrap(), true)
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if hung {
        return (None, format!("HUNG for {limit:?}; output: {text}"));
    }
    (out.status.code(), text)
}

/// The pid of the `n`th "started pid=" line (1-based).
fn started_pid(r: &Relaunch, n: usize) -> i32 {
    let line = r.log.wait_n("started pid=", n, T);
    line.split("started pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether /proc still has an entry for `pid` (a zombie counts: not reaped).
fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|c| state_of(*c) == Some('Z'))
        .collect()
}

fn fds_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn fd_listing(pid: i32) -> String {
    fds_of(pid)
        .into_iter()
        .map(|fd| {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
            let target = target.display().to_string();
            // Name Unix sockets (notify sockets are "@...g<generation>").
            let name = target
                .strip_prefix("socket:[")
                .and_then(|i| i.strip_suffix(']'))
                .and_then(unix_socket_name)
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            format!("{fd} -> {target}{name}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bound name of the Unix socket with this inode, from /proc/net/unix.
fn unix_socket_name(inode: &str) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(6) == Some(inode))?;
    row.split_whitespace().nth(7).map(String::from)
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Opens the fifo for writing (it waits for the reader) and says "go".
fn release(fifo: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
    f.write_all(b"go\n").unwrap();
}

/// A child that leaves an orphan (held on a fifo until the test releases it)
/// and a burst of short-lived orphans, then waits for TERM. Returns the script.
fn orphan_maker(dir: &TempDir) -> String {
    let d = dir.0.display();
    mkfifo(&dir.join("fifo"));
    std::fs::write(
        dir.join("orphan.sh"),
        format!(
            "echo up > {d}/orphan_up.tmp; mv {d}/orphan_up.tmp {d}/orphan_up\nread x < {d}/fifo\n"
        ),
    )
    .unwrap();
    format!(
        "trap 'echo graceful > {d}/termed; exit 0' TERM\n\
         ( sh {d}/orphan.sh & )\n\
         for i in 1 2 3 4 5 6 7 8 9 10; do ( true & ); done\n\
         echo up > {d}/main_up\n\
         sleep 600 & wait\n"
    )
}

/// With relaunch (pid `rl`, as seen from here) running `orphan_maker`:
/// every orphan lands on relaunch and is reaped once it exits.
fn orphans_are_reaped(rl: i32, dir: &TempDir) {
    wait_for("the child and its orphan", T, || {
        (dir.join("main_up").exists() && dir.join("orphan_up").exists()).then_some(())
    });
    let orphan = wait_for("the held orphan to be re-parented to relaunch", T, || {
        // The orphan's command line is `sh DIR/orphan.sh`; the child's merely mentions it.
        let want = format!("sh {} ", dir.join("orphan.sh").display());
        children_of(rl).into_iter().find(|p| cmdline(*p) == want)
    });
    release(&dir.join("fifo"));
    wait_for(&format!("the orphan {orphan} to be reaped"), T, || {
        (!proc_exists(orphan)).then_some(())
    });
    // The short-lived burst is gone too: only the child itself is left.
    let only = wait_for("relaunch to have exactly one child", T, || {
        let kids = children_of(rl);
        (kids.len() == 1).then_some(kids)
    });
    assert!(
        cmdline(only[0]).contains("trap"),
        "the one child left is the server: {}",
        cmdline(only[0])
    );
    assert_eq!(zombie_children(rl), Vec::<i32>::new());
}

#[test]
fn as_pid_1_in_a_pid_namespace_it_reaps_orphans_and_stops_on_term() {
    if !require_tool("unshare") {
        return;
    }
    let dir = TempDir::new("pid1");
    let script = orphan_maker(&dir);
    // --kill-child: if unshare goes, relaunch goes (unshare ignores TERM itself).
    let mut r = Relaunch::start_with(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                relaunch_bin(),
            ])
            .args([
                "-l",
                "127.0.0.1:0",
                "--stop-timeout",
                "5s",
                "--",
                "sh",
                "-c",
                &script,
            ]),
    );
    r.log.wait("started pid=", T);
    let rl = wait_for("relaunch inside the namespace", T, || {
        children_of(r.pid()).first().copied()
    });
    let nspid = std::fs::read_to_string(format!("/proc/{rl}/status")).unwrap();
    let nspid = nspid
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_string();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "relaunch is PID 1 in its namespace: {nspid}"
    );
    orphans_are_reaped(rl, &dir);

    let t = Instant::now();
    unsafe { libc::kill(rl, libc::SIGTERM) };
    let status = r.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", r.log.text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped gracefully, not by the stop timeout"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("termed")).unwrap().trim(),
        "graceful"
    );
}

#[test]
fn a_child_that_leaves_orphans_has_them_reaped_by_relaunch() {
    let dir = TempDir::new("subreaper");
    let script = orphan_maker(&dir);
    let mut r = Relaunch::start(&["-l", "127.0.0.1:0", "--", "sh", "-c", &script]);
    orphans_are_reaped(r.pid(), &dir);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait_exit(T).code(), Some(0), "{}", r.log.text());
    assert!(
        r.log.count("started pid=") == 1,
        "an orphan's exit is not the child's: {}",
        r.log.text()
    );
}

/// Kills a process the test left behind, whatever the outcome.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn a_daemon_left_behind_does_not_keep_the_port_after_relaunch_exits() {
    // The classic daemon: the started process forks, the fork forks the real
    // worker (which keeps fd 3, the listener) and both parents exit at once.
    // With --restart never relaunch then exits; the promise is that no orphan
    // holds the port afterwards.
    let dir = TempDir::new("daemon");
    let d = dir.0.display();
    mkfifo(&dir.join("fifo"));
    // Its stdio goes to /dev/null so it cannot hold the test's pipes open.
    let script = format!(
        "( sh -c 'exec </dev/null >/dev/null 2>&1; echo $$ > {d}/daemon.pid.tmp; mv {d}/daemon.pid.tmp {d}/daemon.pid; read x < {d}/fifo' & ); while [ ! -s {d}/daemon.pid ]; do sleep 0.01; done; exit 0"
    );
    let mut r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let addr = r.listen_addr(3);
    let daemon: i32 = wait_for("the daemon's pid", T, || {
        std::fs::read_to_string(dir.join("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let _guard = KillOnDrop(daemon);
    let status = r.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", r.log.text());
    let end = Instant::now() + Duration::from_secs(5);
    while pid_alive(daemon) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let holds = std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .map(|fds| fds.flatten().any(|f| f.file_name() == "3"))
        .unwrap_or(false);
    assert!(
        !pid_alive(daemon),
        "relaunch exited but the daemon {daemon} its child left is still running{}; log:\n{}",
        if holds {
            " and holds fd 3, the listener"
        } else {
            ""
        },
        r.log.text()
    );
    wait_for("the port to bind again", Duration::from_secs(5), || {
        std::net::TcpListener::bind(addr).ok()
    });
}

#[test]
fn stop_during_a_reload_stops_both_generations() {
    let app = App::new("stop-in-reload", &pid_server(""));
    let mut r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--stop-timeout",
        "3s",
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old: i32 = wait_serving(addr).parse().unwrap();
    // Generation 2 takes 30 s to start: it is still starting when TERM comes.
    app.deploy(&pid_server("--delay 30"));
    r.signal(libc::SIGHUP);
    r.log.wait("reload: starting generation 2", T);
    let new = started_pid(&r, 2);
    assert_ne!(new, old);
    let t = Instant::now();
    r.signal(libc::SIGTERM);
    let status = r.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{}", r.log.text());
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "within the stop timeout: {:?}",
        t.elapsed()
    );
    assert!(
        !pid_alive(old) && !pid_alive(new),
        "both generations stopped"
    );
    assert_eq!(r.log.count("reload done"), 0);
}

#[test]
fn reload_during_a_stop_is_refused_and_the_stop_completes() {
    let app = App::new(
        "reload-in-stop",
        &format!("exec {} --ignore-term\n", probe().display()),
    );
    let ctl = app.control().display().to_string();
    let mut r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "127.0.0.1:0",
                "--stop-timeout",
                "2s",
                "--control",
                &ctl,
                "--",
                &app.script(),
            ])
            .env("PROBE_OUT", app.dir.join("report.json")),
    );
    let rep = read_report(&app.dir.join("report.json"));
    let child = rep["pid"].as_i64().unwrap() as i32;
    let t = Instant::now();
    r.signal(libc::SIGTERM);
    r.log.wait("sending SIGTERM", T);
    // The child ignores TERM, so relaunch is stopping for 2 s: ask for reloads.
    r.signal(libc::SIGHUP);
    r.log.wait("SIGHUP: reload", T);
    let (code, out) = cli(&["reload", "--control", &ctl], Duration::from_secs(5));
    assert_ne!(
        code,
        Some(0),
        "a reload during a stop must not succeed: {out}"
    );
    assert!(code.is_some(), "{out}");
    let status = r.wait_exit(Duration::from_secs(6));
    assert_eq!(status.code(), Some(0), "{}", r.log.text());
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "KILL came before the stop timeout"
    );
    assert!(r.log.text().contains("sending SIGKILL"), "{}", r.log.text());
    assert_eq!(r.log.count("starting generation 2"), 0, "{}", r.log.text());
    assert!(!pid_alive(child));
}

#[test]
fn a_child_ignoring_term_in_its_drain_is_killed_and_the_reload_completes() {
    let report = TempDir::new("drain-report");
    let out = report.join("gen1.json");
    let app = App::new(
        "drain",
        &format!(
            "PROBE_OUT={} exec {} --ignore-term --serve\n",
            out.display(),
            probe().display()
        ),
    );
    let ctl = app.control().display().to_string();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--stop-timeout",
        "1s",
        "--control",
        &ctl,
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old = read_report(&out)["pid"].as_i64().unwrap() as i32;
    assert_eq!(wait_serving(addr), old.to_string());
    app.deploy(&pid_server(""));
    let t = Instant::now();
    let (code, text) = cli(&["reload", "--control", &ctl], Duration::from_secs(15));
    assert_eq!(code, Some(0), "{text}");
    r.log.wait("sending SIGKILL", T);
    wait_for(
        "the stuck old generation to be gone",
        Duration::from_secs(5),
        || (!pid_alive(old)).then_some(()),
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "KILL came before --stop-timeout"
    );
    let new = wait_serving(addr);
    assert_ne!(new, old.to_string());
    assert_eq!(zombie_children(r.pid()), Vec::<i32>::new());
}

/// Sets relaunch's soft RLIMIT_NOFILE; returns the old soft limit.
fn set_nofile(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) },
        0
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn fd_exhaustion_at_a_reload_is_a_clear_error_and_the_old_child_serves_on() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--",
        example("pid_server").to_str().unwrap(),
    ]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    r.log.wait("serving: generation 1", T);
    let before = fds_of(r.pid());
    // Every fd below the soft limit but one is taken; what is open stays open.
    let lowest_free = (0..).find(|n| !before.contains(n)).unwrap();
    let load = Load::start(addr, 2);
    // One free slot: a notify socket may still be made, a pipe (two) may not.
    let saved = set_nofile(r.pid(), lowest_free as u64 + 1);
    r.signal(libc::SIGHUP);
    let failed = r.log.wait("reload failed", T);
    set_nofile(r.pid(), saved);
    let rep = load.finish();
    assert!(
        failed.contains("Too many open files") || failed.contains("EMFILE"),
        "{failed}"
    );
    assert!(failed.contains("generation 1 keeps serving"), "{failed}");
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    // The window can be short on a busy machine: what matters is that no
    // other pid ever answered (the old one is asked directly just below).
    assert!(
        rep.pids.iter().all(|p| p == &old),
        "only the old child answered: {:?}",
        rep.pids
    );
    assert!(pid_alive(r.pid()), "relaunch is still running");
    assert_eq!(get(addr).unwrap(), old);

    // With fds again, the next reload works and nothing of the failed one is left.
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let new = wait_new_pid(addr, &old);
    assert_ne!(new, old);
    wait_for("the old child to be gone", T, || {
        (!pid_alive(old.parse().unwrap())).then_some(())
    });
    let settled = Instant::now() + Duration::from_secs(5);
    while fds_of(r.pid()).len() != before.len() && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fds_of(r.pid()).len(),
        before.len(),
        "an fd of the generation that could not start was leaked; before: {before:?}; now:\n{}",
        fd_listing(r.pid())
    );
}

#[test]
fn a_reload_of_a_program_that_cannot_run_answers_and_the_old_one_serves_on() {
    let app = App::new("noexec", &pid_server(""));
    let ctl = app.control().display().to_string();
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--control", &ctl, "--", &app.script()]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    // The deploy broke the program itself: spawn fails before any child exists.
    std::fs::set_permissions(app.script(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = cli(&["reload", "--control", &ctl], Duration::from_secs(10));
    assert_eq!(
        code,
        Some(1),
        "`relaunch reload` must answer a reload that failed at spawn: {out}"
    );
    assert!(out.contains("permission denied"), "{out}");
    assert_eq!(get(addr).unwrap(), old);
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

#[test]
fn soak_200_reloads_under_load_leave_no_fd_memory_or_zombie_behind() {
    const WARM_UP: usize = 20;
    const RELOADS: usize = 200;
    // Allocator pools and tokio's slabs settle in the warm-up; after it, a leak
    // of 8 KiB per reload (one notify socket's buffers, one child record) would
    // add 1.4 MiB over the 180 measured reloads, well above this bound.
    const RSS_TOLERANCE_KIB: u64 = 1024;
    let dir = TempDir::new("soak");
    let ctl = dir.join("ctl.sock").display().to_string();
    let server = example("pid_server");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--control",
        &ctl,
        "--",
        server.to_str().unwrap(),
    ]);
    let rl = r.pid();
    let addr = r.listen_addr(3);
    let first = wait_serving(addr);
    // Once READY=1 is handled, no check of its sender holds a pidfd any more.
    r.log.wait("serving: generation 1", T);
    let fds_before = fds_of(rl);
    let load = Load::start(addr, 4);
    let t = Instant::now();
    let mut rss_warm = 0;
    for n in 1..=RELOADS {
        let (code, out) = cli(&["reload", "--control", &ctl], Duration::from_secs(20));
        assert_eq!(code, Some(0), "reload {n}: {out}");
        if n == WARM_UP {
            rss_warm = vm_rss_kib(rl);
        }
    }
    let took = t.elapsed();
    let rep = load.finish();
    let last = get(addr).unwrap();
    assert_ne!(last, first);
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert!(rep.ok > 0);
    let one_child = wait_for("exactly one child left", T, || {
        let kids = children_of(rl);
        (kids.len() == 1).then_some(kids)
    });
    assert_eq!(one_child[0].to_string(), last);
    assert_eq!(zombie_children(rl), Vec::<i32>::new());
    // Control connections close just after their answer: let them settle.
    let settled = Instant::now() + Duration::from_secs(5);
    while fds_of(rl) != fds_before && Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fds_of(rl).len(),
        fds_before.len(),
        "fds before: {fds_before:?}; now:\n{}",
        fd_listing(rl)
    );
    let rss_end = vm_rss_kib(rl);
    eprintln!(
        "soak: {RELOADS} reloads in {took:?} ({} requests served); VmRSS {rss_warm} KiB after {WARM_UP}, {rss_end} KiB at the end",
        rep.ok
    );
    assert!(
        rss_end <= rss_warm + RSS_TOLERANCE_KIB,
        "VmRSS grew from {rss_warm} KiB to {rss_end} KiB over {} reloads",
        RELOADS - WARM_UP
    );
}

#[test]
fn a_live_socket_relaunch_may_not_connect_to_is_never_unlinked() {
    if unsafe { libc::geteuid() } != 0 || !require_tool("setpriv") {
        eprintln!("live socket of another user: NOT RUN: needs root and setpriv");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    // A shared folder: relaunch (as nobody) may create files here, and may
    // unlink root's, but must not: root's server is live on it.
    let dir = TempDir::new("others-sock");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let spec = format!("unix:{}", path.display());
    let mut r = Relaunch::start_with(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                relaunch_bin(),
            ])
            .args(["-l", &spec, "--restart", "never", "--", "true"]),
    );
    let status = r.wait_exit(T);
    let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
    assert_eq!(
        now,
        Some(inode),
        "relaunch replaced a live socket it could not connect to (EACCES is not ECONNREFUSED); log:\n{}",
        r.log.text()
    );
    assert_eq!(status.code(), Some(1), "{}", r.log.text());
    drop(live);
}

/// A server that became ready and served is restarted at once after a
/// crash, every time, not after a backoff that doubles per crash.
#[test]
fn a_crash_after_serving_restarts_at_once_every_time() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:50ms",
        "--",
        "sleep",
        "300",
    ]);
    for n in 1..=3 {
        r.log.wait_n("ready after", n, T);
        // Served: ready for longer than backoff::SERVED_FOR (1 s).
        std::thread::sleep(Duration::from_millis(1300));
        let pid = started_pid(&r, n);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let line = r.log.wait_n("restarting in", n, T);
        assert!(
            line.contains("restarting in 0 ms"),
            "crash {n} of a child that served waited: {line}\n{}",
            r.log.text()
        );
        started_pid(&r, n + 1);
    }
}

/// Blocks in poll() on a pollfd array in a userfaultfd-registered page that
/// nobody serves, so reading that array from outside (process_vm_readv, as
/// the readiness scan does) blocks too. Writes argv[1] first, or exits 3 if
/// userfaultfd is not allowed here.
const STUCK_IN_POLL: &str = r#"
import ctypes, os, platform, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
uffd = libc.syscall(dict(x86_64=323, aarch64=282)[platform.machine()], os.O_CLOEXEC)
api = ctypes.create_string_buffer(struct.pack("QQQ", 0xAA, 0, 0))
if uffd < 0 or libc.ioctl(uffd, ctypes.c_ulong(0xC018AA3F), api) != 0:
    sys.exit(3)
addr = libc.mmap(None, 4096, 3, 0x22, -1, 0)
reg = ctypes.create_string_buffer(struct.pack("QQQQ", addr, 4096, 1, 0))
if libc.ioctl(uffd, ctypes.c_ulong(0xC020AA00), reg) != 0:
    sys.exit(3)
open(sys.argv[1], "w").close()
libc.poll(ctypes.c_void_p(addr), 1, -1)
"#;

/// Whether some thread of `pid` sits in process_vm_readv.
fn in_process_vm_readv(pid: i32) -> bool {
    let nr = if cfg!(target_arch = "aarch64") {
        "270 "
    } else {
        "310 "
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("syscall")).is_ok_and(|s| s.starts_with(nr))
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_child_that_hangs_the_proc_scan_does_not_freeze_the_event_loop() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("stuck");
    let ctl = dir.join("ctl.sock").display().to_string();
    let mark = dir.join("polling");
    let mut r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--control",
        &ctl,
        "--stop-timeout",
        "1s",
        "--",
        "python3",
        "-c",
        STUCK_IN_POLL,
        mark.to_str().unwrap(),
    ]);
    wait_for("the child to poll, or to say userfaultfd is off", T, || {
        (mark.exists() || r.log.text().contains("exited with status 3")).then_some(())
    });
    if !mark.exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "userfaultfd is needed under CI=true (run as root)");
        eprintln!("skipping: userfaultfd is not allowed here");
        return;
    }
    // The scan reads the child's pollfd array and blocks in the kernel.
    wait_for("the readiness scan to block", T, || {
        in_process_vm_readv(r.pid()).then_some(())
    });
    let (code, out) = cli(&["status", "--control", &ctl], Duration::from_secs(5));
    assert_eq!(code, Some(0), "the control socket must still answer: {out}");
    assert!(out.contains("starting"), "{out}");
    r.signal(libc::SIGTERM);
    let status = r.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", r.log.text());
}

/// A FUSE file system that answers FUSE_INIT and nothing else: any lookup
/// in it waits forever, like a hung network mount. argv: mount point, mark.
const STUCK_FS: &str = r#"
import ctypes, os, struct, sys
mnt, mark = sys.argv[1], sys.argv[2]
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
opts = ("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other" % fd).encode()
if libc.mount(b"stuckfs", mnt.encode(), b"fuse", 0, opts) != 0:
    sys.exit("mount: errno %d" % ctypes.get_errno())
open(mark, "w").close()
while True:
    req = os.read(fd, 1 << 20)
    _, opcode, unique = struct.unpack_from("<IIQ", req)
    if opcode == 26:
        _, _, readahead = struct.unpack_from("<III", req, 40)
        out = struct.pack("<IIIIHHI", 7, 22, readahead, 0, 0, 0, 4096)
        os.write(fd, struct.pack("<IiQ", 16 + len(out), 0, unique) + out)
"#;

/// The stuck file system's server; dropping it ends the server (pending
/// lookups then fail) and detaches the mount.
struct StuckFs {
    server: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Drop for StuckFs {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let mnt = CString::new(self.mnt.to_str().unwrap()).unwrap();
        // SAFETY: a plain syscall on a path we own.
        unsafe { libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_hung_mount_in_path_does_not_freeze_the_event_loop() {
    if !require_tool("python3") {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "this test needs root and /dev/fuse under CI=true");
        eprintln!("skipping: needs root and /dev/fuse");
        return;
    }
    let dir = TempDir::new("hungpath");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mark = dir.join("mounted");
    let fs = StuckFs {
        server: Command::new("python3")
            .args([
                "-c",
                STUCK_FS,
                mnt.to_str().unwrap(),
                mark.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
        mnt: mnt.clone(),
    };
    wait_for("the stuck file system to be mounted", T, || {
        mark.exists().then_some(())
    });
    let ctl = dir.join("ctl.sock").display().to_string();
    let path = format!("{}:/usr/bin:/bin", mnt.display());
    let r = Relaunch::start_with(Command::new(relaunch_bin()).env("PATH", path).args([
        "-l",
        "127.0.0.1:0",
        "--control",
        &ctl,
        "--",
        "sleep",
        "300",
    ]));
    // Looking for `sleep` in the first PATH folder hangs; whoever looks must
    // not be the thread that answers the control socket.
    wait_for("the control socket", T, || {
        Path::new(&ctl).exists().then_some(())
    });
    let (code, out) = cli(&["status", "--control", &ctl], Duration::from_secs(5));
    // A lookup the server has read waits even through SIGKILL: end the file
    // system before anything can fail, so a failure never hangs the suite.
    drop(fs);
    assert_eq!(code, Some(0), "the control socket must still answer: {out}");
    assert!(out.contains("starting"), "{out}");
    // The child's lookup fails with the file system gone; it says so through
    // its status pipe, and relaunch ends with the exec error.
    let mut r = r;
    r.wait_exit(T);
    assert!(
        r.log.text().contains("cannot run sleep"),
        "{}",
        r.log.text()
    );
}
