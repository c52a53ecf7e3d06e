//! Supervision: a crashed child is restarted on the same socket (at once if
//! it had served), a child killed under load refuses nothing, other signals
//! reach the child, a child ignoring TERM is killed after --stop-timeout, and
//! a killed relaunch leaves no child holding the port. Orphans are reaped, as
//! a subreaper and as PID 1; a daemon the child leaves behind does not keep
//! the port once relaunch exits; a program whose lookup on PATH hangs does
//! not freeze relaunch.

use std::ffi::CString;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(20);

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

/// The pid of the `n`th "started pid=" line (1-based).
pub(crate) fn started_pid(r: &Relaunch, n: usize) -> i32 {
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

pub(crate) fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|c| state_of(*c) == Some('Z'))
        .collect()
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
