//! Readiness: notify senders checked where datagrams arrive, a stranger's
//! READY=1 and a flood from a stranger, `--ready auto` seeing servers that
//! wait in epoll, poll or accept (and those that /proc sampling misses), a
//! scan that notify chatter cannot starve and that, hung by a child, does not
//! freeze relaunch, and life without /proc.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::reload::reload_cli;
use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// The "ready after N ms" line of the given generation, once relaunch logged it.
fn ready_line(r: &Relaunch, generation: u64) -> String {
    let needle = format!("generation={generation}");
    wait_for(&format!("generation {generation} ready"), T, || {
        r.log
            .all()
            .into_iter()
            .find(|l| l.contains("ready after") && l.contains(&needle))
    })
}

/// N of generation's "ready after N ms".
fn ready_ms(r: &Relaunch, generation: u64) -> u64 {
    let line = ready_line(r, generation);
    line.split("ready after ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {line:?}"))
}

#[test]
fn systemd_notify_from_inside_the_child_is_accepted_every_time() {
    // systemd-notify sends READY=1, then BARRIER=1 with an fd, and exits as
    // soon as that fd is closed: a short-lived sender that must be checked
    // when its datagram arrives, not later.
    if !require_tool("systemd-notify") {
        return;
    }
    let app = App::new(
        "sd-notify",
        &format!("systemd-notify --ready\n{}", pid_server("--no-notify")),
    );
    let ctl = app.control();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--ready-timeout",
        "5s",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    r.log.wait("serving: generation 1", T);
    for n in 2..=21 {
        let (code, out) = reload_cli(&ctl);
        assert_eq!(code, 0, "reload to generation {n}: {out}");
    }
    assert_eq!(
        r.log.count("ignoring a notify message"),
        0,
        "{}",
        r.log.text()
    );
}

/// Sends `rate` datagrams per second to the abstract socket `name` until stopped.
struct Stranger {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stranger {
    fn start(name: &str, rate: u32) -> Self {
        let to = UnixAddr::from_abstract_name(name).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        // A full queue must not stall the sender: it just tries again.
        sock.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let every = Duration::from_secs(1) / rate;
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            let end = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                if sock.send_to_addr(b"READY=1\nSTATUS=hi", &to).is_ok() {
                    sent2.fetch_add(1, Ordering::Relaxed);
                }
                next += every;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        });
        Stranger {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

#[test]
fn a_stranger_flooding_the_notify_socket_does_not_delay_readiness() {
    let app = App::new("flood", "");
    let ns = app.dir.join("ns");
    app.deploy(&format!(
        "echo \"$NOTIFY_SOCKET\" > {ns}.tmp && mv {ns}.tmp {ns}\nsleep 0.3\n{}",
        pid_server("--no-notify"),
        ns = ns.display()
    ));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "auto",
        "--ready-timeout",
        "10s",
        "--",
        &app.script(),
    ]);
    let quiet = ready_ms(&r, 1);
    std::fs::remove_file(&ns).unwrap();
    r.signal(libc::SIGHUP);
    let name = wait_for("generation 2's NOTIFY_SOCKET", T, || {
        std::fs::read_to_string(&ns).ok()
    });
    let name = name.trim().strip_prefix('@').expect("an abstract socket");
    let stranger = Stranger::start(name, 1000);
    let line = r.log.wait("reload ", T);
    let sent = stranger.finish();
    assert!(line.contains("reload done"), "{line}");
    let flooded = ready_ms(&r, 2);
    eprintln!("ready after {quiet} ms, {flooded} ms under a flood of {sent} datagrams");
    assert!(sent > 100, "the stranger sent only {sent} datagrams");
    assert!(
        flooded < quiet + 500,
        "ready after {flooded} ms under a flood, {quiet} ms without"
    );
    // Rejected senders are logged at most once per pid and period.
    assert!(
        r.log.count("ignoring a notify message") <= 1,
        "{}",
        r.log.text()
    );
}

/// A server /proc sampling cannot catch waiting: it polls a non-blocking
/// accept between short sleeps. It holds each connection for 100 ms and
/// writes the wall-clock time (seconds of the UTC day) of its first accept.
const BUSY_SERVER: &str = r#"
import os, signal, socket, sys, time
out = sys.argv[1]
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
time.sleep(0.5)
s = socket.socket(fileno=3)
s.setblocking(False)
first = True
while True:
    try:
        c, _ = s.accept()
    except BlockingIOError:
        time.sleep(0.002)
        continue
    if first:
        first = False
        with open(out + '.tmp', 'w') as f:
            f.write('%.6f' % (time.time() % 86400))
        os.rename(out + '.tmp', out)
    c.setblocking(True)
    c.recv(4096)
    time.sleep(0.1)
    c.sendall(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n%d\n' % os.getpid())
    c.close()
"#;

#[test]
fn auto_readiness_sees_a_server_that_accepted_a_connection() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("accepted", "");
    let script = app.dir.join("busy.py");
    std::fs::write(&script, BUSY_SERVER).unwrap();
    let first = app.dir.join("first");
    app.deploy(&format!(
        "exec python3 {} {}\n",
        script.display(),
        first.display()
    ));
    let ctl = app.control();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "auto",
        "--ready-timeout",
        "10s",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    // Clients hammer from the start, so each generation has connections to hold.
    let load = Load::start(addr, 8);
    r.log.wait("serving: generation 1", T);
    std::fs::remove_file(&first).unwrap();
    let (code, out) = reload_cli(&ctl);
    load.finish();
    assert_eq!(code, 0, "{out}");
    let accepted: f64 = std::fs::read_to_string(&first)
        .expect("generation 2 accepted")
        .parse()
        .unwrap();
    let line = ready_line(&r, 2);
    assert!(line.contains("accepted"), "{line}");
    let seen = seconds_of_day(&line);
    let late = (seen - accepted).rem_euclid(86400.0);
    eprintln!("ready seen {:.0} ms after the first accept", late * 1000.0);
    // Loose (the bench's target is 0.1 s): a busy 2-core machine may starve
    // relaunch for a while; without this signal it is never seen at all.
    assert!(
        late < 3.0,
        "ready seen {late:.3} s after generation 2's first accept: {line}"
    );
}

/// The UTC time of day of a log line's timestamp ("2026-11-27T05:26:44.654962Z").
fn seconds_of_day(line: &str) -> f64 {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|t| t.split('T').nth(1))
        .and_then(|t| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn without_proc_notify_still_works_and_the_loss_is_said_once() {
    // Root only (mount namespace); CI is root.
    if !nix_is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "this test needs root under CI"
        );
        eprintln!("skipping: needs root to mount over /proc");
        return;
    }
    if !require_tool("unshare") {
        return;
    }
    let app = App::new("noproc", &pid_server(""));
    let ctl = app.control();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /proc && exec {} \"$@\"",
            relaunch_bin()
        ))
        .args([
            "sh",
            "-l",
            "127.0.0.1:0",
            "--ready",
            "auto",
            "--ready-timeout",
            "5s",
            "--control",
            ctl.to_str().unwrap(),
            "--",
            &app.script(),
        ]);
    let r = Relaunch::start_with(&mut cmd);
    let addr = r.listen_addr(3);
    let line = r.log.wait("/proc", T);
    for what in ["--ready notify", "--ready delay:", "orphans"] {
        assert!(line.contains(what), "{line}");
    }
    r.log.wait("serving: generation 1", T);
    let old = wait_serving(addr);
    let t = Instant::now();
    let (code, out) = reload_cli(&ctl);
    assert_eq!(code, 0, "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "READY=1 should end the reload, not the 5 s timeout: {:?}",
        t.elapsed()
    );
    assert_ne!(get(addr).unwrap(), old);
    assert_eq!(r.log.count("/proc"), 1, "{}", r.log.text());
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_strangers_ready_is_ignored() {
    let app = App::new("stranger", &pid_server(""));
    let report = app.dir.join("gen2.json");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--ready-timeout",
        "3s",
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let old = wait_serving(addr);
    app.deploy(&format!(
        "export PROBE_OUT={}\nexec {} --sleep\n",
        report.display(),
        probe().display()
    ));
    r.signal(libc::SIGHUP);
    let rep = read_report(&report);
    let notify = rep["notify_socket"].as_str().unwrap().to_string();
    let name = notify.strip_prefix('@').expect("an abstract notify socket");
    let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let to =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name,
        )
        .unwrap();
    stranger.send_to_addr(b"READY=1", &to).unwrap();
    r.log.wait(
        &format!("ignoring a notify message from pid {}", std::process::id()),
        T,
    );
    r.log
        .wait("reload failed: generation 2 was not ready within 3s", T);
    assert_eq!(get(addr).unwrap(), old);
    assert_eq!(r.log.count("generation 2 is ready"), 0);
}

fn auto_ready(tag: &str, server: &str, how: &str, graceful: bool) {
    let app = App::new(tag, server);
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--ready", "auto", "--", &app.script()]);
    let addr = r.listen_addr(3);
    // Generation 1 is seen by the same scan; reload only after that.
    r.log.wait("serving: generation 1", T);
    let mut last = wait_serving(addr);
    let load = graceful.then(|| Load::start(addr, 4));
    for n in 1..=2 {
        r.signal(libc::SIGHUP);
        r.log.wait_n("reload done", n, T);
        last = wait_new_pid(addr, &last);
    }
    if let Some(load) = load {
        let rep = load.finish();
        assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    }
    // Generation 1 is seen before any client connects; under load a later
    // one may be seen first holding a connection it accepted.
    let ready = r.log.wait(&format!("waits in {how}"), T);
    assert!(
        ready.contains("ready after") && ready.contains("generation=1"),
        "{ready}"
    );
    assert_eq!(r.log.count("ready after"), 3, "{}", r.log.text());
}

#[test]
fn auto_readiness_sees_an_epoll_server() {
    // tokio registers the listener in epoll; --no-notify leaves only /proc to go on.
    auto_ready(
        "auto-epoll",
        &pid_server("--delay 0.3 --no-notify"),
        "epoll",
        true,
    );
}

#[test]
fn auto_readiness_sees_a_poll_server() {
    // Python's socketserver waits in poll(2).
    let py = example_src("py_server.py");
    auto_ready(
        "auto-poll",
        &format!("exec python3 {} --delay 0.3 --no-notify\n", py.display()),
        "poll",
        true,
    );
}

#[test]
fn auto_readiness_sees_a_blocking_accept() {
    // Blocked in accept(2). A server like this cannot stop between requests
    // without a race of its own (TERM may land just after accept returns), so
    // this test checks detection only; the load tests use graceful servers.
    let code = "import os,socket\ns=socket.socket(fileno=3)\nwhile True:\n c,_=s.accept()\n c.recv(4096)\n c.sendall(b'HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n\\r\\n%d\\n' % os.getpid())\n c.close()\n";
    auto_ready(
        "auto-accept",
        &format!("exec python3 -c \"{code}\"\n"),
        "accept",
        false,
    );
}

/// A child that sends STATUS= from 4 threads, every 2 ms each; after 300 ms
/// of that it notes the time (seconds of the UTC day) in argv[1] and waits
/// in accept.
const CHATTY: &str = r#"
import os, socket, sys, threading, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def chatter():
    while True:
        try:
            s.sendto(b"STATUS=busy", addr)
        except OSError:
            pass
        time.sleep(0.002)
for _ in range(4):
    threading.Thread(target=chatter, daemon=True).start()
time.sleep(0.3)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(repr(time.time() % 86400))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
l = socket.socket(fileno=3)
while True:
    c, _ = l.accept()
    c.close()
"#;

#[test]
fn notify_chatter_does_not_starve_the_readiness_scan() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("chatter");
    let mark = dir.join("accepting");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready-timeout",
        "60s",
        "--",
        "python3",
        "-c",
        CHATTY,
        mark.to_str().unwrap(),
    ]);
    // The scan runs on its own schedule, however many datagrams arrive.
    let line = r.log.wait("ready after", Duration::from_secs(20));
    assert!(line.contains("waits in accept"), "{line}");
    let accepting: f64 = std::fs::read_to_string(&mark).unwrap().parse().unwrap();
    let late = (seconds_of_day(&line) - accepting).rem_euclid(86400.0);
    assert!(
        late < 0.3,
        "seen ready {:.0} ms after the app began to accept: {line}",
        late * 1000.0
    );
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
