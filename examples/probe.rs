//! The test probe: a child that reports exactly what it inherited, then does
//! what its flags say. Integration tests run it under relaunch.
//!
//! It has no Rust `main` of its own (`#![no_main]`), because std's start-up
//! code would change what we want to see: it ignores SIGPIPE and reopens
//! closed fds 0-2 on /dev/null. Only std, libc and serde_json are used; the
//! raw state is read from the kernel, never through listenfd.
//!
//! Report: one JSON object, written atomically (PATH.tmp, then rename) to the
//! file named by `PROBE_OUT`, or to stdout when that is unset:
//!
//! - `pid`, `ppid`, `pgid`, `sid`, `uid`, `gid`, `groups`, `argv`, `cwd`
//! - `listen_fds`, `listen_pid`, `listen_fdnames`, `notify_socket`,
//!   `relaunch_worker`: those env vars as strings, null when unset; `env`: all
//! - `sigblk`, `sigign`: hex masks from /proc/self/status; `sigpipe_ignored`
//! - `fds`: every open fd, sorted: `{fd, cloexec, nonblocking, target, socket,
//!   type, family, addr, listening, reuseport}`. `socket` is a bool; the
//!   socket fields are null for other fds. `type` is "stream"/"dgram"/
//!   "seqpacket", `family` "inet"/"inet6"/"unix", `addr` the local address
//!   ("127.0.0.1:5000", "[::]:5000", "/tmp/x.sock", "@name", "" if unnamed).
//!
//! Then, in this order:
//! - `--exit N`: exit with code N (after READY=1 if `--notify`).
//! - `--ignore-term`: SIGTERM is ignored from now on (combine with the rest).
//! - `--serve`: answer HTTP on fd 3 (any listening stream socket) with
//!   `<pid>\n` and `Connection: close`, one request at a time. SIGTERM or
//!   SIGINT stops accepting at once, finishes the request in hand, exits 0.
//! - `--notify`: send READY=1 to NOTIFY_SOCKET (a path or "@abstract") once
//!   serving, or right away without `--serve`.
//! - otherwise (or `--sleep`): block until SIGTERM or SIGINT, then exit 0.
//!
//! Unknown arguments (`--fd=3 --port=5000`) are only recorded in `argv`.
//! Exit codes of its own: 2 for a bad flag or an fd 3 that cannot be served,
//! 3 when the report cannot be written.
#![cfg_attr(not(test), no_main)]

use std::collections::BTreeMap;
use std::ffi::{CStr, c_int, c_void};
use std::fs::File;
use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use serde_json::{Value, json};

/// The fd the systemd protocol puts the first listener at.
const LISTENER: RawFd = 3;

#[cfg(not(test))]
#[unsafe(no_mangle)]
pub extern "C" fn main(argc: c_int, argv: *const *const libc::c_char) -> c_int {
    let args = read_argv(argc, argv);
    // Taken before anything else opens an fd.
    let report = report(&args);
    // A reader of the report may signal at once: a probe told to ignore
    // SIGTERM must already do so (setting a disposition opens no fd).
    if args.iter().any(|a| a == "--ignore-term") {
        set_handler(libc::SIGTERM, libc::SIG_IGN);
    }
    if let Err(e) = write_report(&report) {
        eprintln!("probe: cannot write the report: {e}");
        return 3;
    }
    let flags = match Flags::parse(&args) {
        Ok(f) => f,
        Err(msg) => {
            eprintln!("probe: {msg}");
            return 2;
        }
    };
    behave(&flags)
}

fn read_argv(argc: c_int, argv: *const *const libc::c_char) -> Vec<String> {
    let mut out = Vec::new();
    if argv.is_null() {
        return out;
    }
    for i in 0..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: the C runtime passes argc valid, NUL-terminated strings.
        let p = unsafe { *argv.add(i) };
        if p.is_null() {
            break;
        }
        out.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    }
    out
}

// ---------------------------------------------------------------- report

fn report(argv: &[String]) -> Value {
    let fds: Vec<Value> = open_fds().into_iter().map(describe_fd).collect();
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let var = |name: &str| env.get(name).cloned();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let sigblk = status_field(&status, "SigBlk");
    let sigign = status_field(&status, "SigIgn");
    let sigpipe_ignored = sigign
        .as_deref()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(|mask| mask & (1 << (libc::SIGPIPE - 1)) != 0);
    // SAFETY: these calls only read process attributes.
    let (pid, ppid, pgid, sid, uid, gid) = unsafe {
        (
            libc::getpid(),
            libc::getppid(),
            libc::getpgrp(),
            libc::getsid(0),
            libc::getuid(),
            libc::getgid(),
        )
    };
    let cwd = std::fs::read_link("/proc/self/cwd")
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    json!({
        "pid": pid,
        "ppid": ppid,
        "pgid": pgid,
        "sid": sid,
        "uid": uid,
        "gid": gid,
        "groups": groups(),
        "argv": argv,
        "cwd": cwd,
        "listen_fds": var("LISTEN_FDS"),
        "listen_pid": var("LISTEN_PID"),
        "listen_fdnames": var("LISTEN_FDNAMES"),
        "notify_socket": var("NOTIFY_SOCKET"),
        "relaunch_worker": var("RELAUNCH_WORKER"),
        "env": env,
        "sigblk": sigblk,
        "sigign": sigign,
        "sigpipe_ignored": sigpipe_ignored,
        "fds": fds,
    })
}

/// The value of a `Name:\tvalue` line of /proc/self/status.
fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    })
}

fn groups() -> Vec<libc::gid_t> {
    // SAFETY: a zero-sized query, then a buffer of the size it returned.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(n) else {
        return Vec::new();
    };
    let mut buf = vec![0 as libc::gid_t; len];
    let got = unsafe { libc::getgroups(n, buf.as_mut_ptr()) };
    buf.truncate(usize::try_from(got).unwrap_or(0));
    buf
}

/// Every open fd, without the one used to list them.
fn open_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    // The listing's own fd is closed by now, so it no longer answers.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1);
    fds.sort_unstable();
    fds
}

fn describe_fd(fd: RawFd) -> Value {
    // SAFETY: fcntl and fstat only read the state of an fd.
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    let fl_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let is_socket =
        unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    let mut v = json!({
        "fd": fd,
        "cloexec": fd_flags != -1 && fd_flags & libc::FD_CLOEXEC != 0,
        "nonblocking": fl_flags != -1 && fl_flags & libc::O_NONBLOCK != 0,
        "target": target,
        "socket": is_socket,
        "type": null,
        "family": null,
        "addr": null,
        "listening": null,
        "reuseport": null,
    });
    if is_socket {
        v["type"] = json!(sockopt(fd, libc::SO_TYPE).map(type_name));
        v["family"] = json!(sockopt(fd, libc::SO_DOMAIN).map(family_name));
        v["addr"] = json!(local_addr(fd));
        v["listening"] = json!(sockopt(fd, libc::SO_ACCEPTCONN).map(|x| x != 0));
        v["reuseport"] = json!(sockopt(fd, libc::SO_REUSEPORT).map(|x| x != 0));
    }
    v
}

fn sockopt(fd: RawFd, name: c_int) -> Option<c_int> {
    let mut val: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: val and len describe a buffer of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut val).cast::<c_void>(),
            &mut len,
        )
    };
    (r == 0).then_some(val)
}

fn type_name(t: c_int) -> String {
    match t {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "dgram".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        other => format!("type-{other}"),
    }
}

fn family_name(f: c_int) -> String {
    match f {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_UNIX => "unix".into(),
        other => format!("family-{other}"),
    }
}

fn local_addr(fd: RawFd) -> Option<String> {
    // SAFETY: sockaddr_storage is plain data, large enough for any family;
    // the casts below read only the variant the kernel says it wrote.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe { libc::getsockname(fd, (&raw mut ss).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    let len = len as usize;
    match c_int::from(ss.ss_family) {
        libc::AF_INET => {
            let sin = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(format!("{ip}:{}", u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id).to_string())
        }
        libc::AF_UNIX => {
            let sun = unsafe { &*(&raw const ss).cast::<libc::sockaddr_un>() };
            let path_len = len.saturating_sub(offset_of!(libc::sockaddr_un, sun_path));
            let bytes: Vec<u8> = sun.sun_path[..path_len.min(sun.sun_path.len())]
                .iter()
                .map(|&c| c as u8)
                .collect();
            Some(unix_addr_string(&bytes))
        }
        _ => None,
    }
}

/// "" for an unnamed socket, "@name" for an abstract one, else the path.
fn unix_addr_string(sun_path: &[u8]) -> String {
    match sun_path.split_first() {
        None => String::new(),
        Some((&0, name)) => format!("@{}", String::from_utf8_lossy(name)),
        Some(_) => {
            let end = sun_path
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(sun_path.len());
            String::from_utf8_lossy(&sun_path[..end]).into_owned()
        }
    }
}

fn write_report(report: &Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    match std::env::var_os("PROBE_OUT") {
        Some(path) if !path.is_empty() => {
            let mut tmp = path.clone();
            tmp.push(".tmp");
            std::fs::write(&tmp, text)?;
            // Readers see either no file or the whole report.
            std::fs::rename(&tmp, &path)
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }
}

// ------------------------------------------------------------- behaviour

#[derive(Debug, Default)]
struct Flags {
    exit: Option<i32>,
    ignore_term: bool,
    serve: bool,
    notify: bool,
}

impl Flags {
    fn parse(argv: &[String]) -> Result<Flags, String> {
        let mut f = Flags::default();
        let mut it = argv.iter().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--exit" => {
                    let v = it.next().ok_or("--exit needs a code: --exit 3")?;
                    f.exit = Some(parse_code(v)?);
                }
                s if s.starts_with("--exit=") => f.exit = Some(parse_code(&s[7..])?),
                "--ignore-term" => f.ignore_term = true,
                "--serve" => f.serve = true,
                "--notify" => f.notify = true,
                _ => {} // --sleep, and anything else: recorded in argv only
            }
        }
        Ok(f)
    }
}

fn parse_code(v: &str) -> Result<i32, String> {
    v.parse()
        .map_err(|_| format!("--exit takes an integer exit code, not {v:?}"))
}

fn behave(flags: &Flags) -> c_int {
    if let Some(code) = flags.exit {
        if flags.notify {
            notify_ready();
        }
        return code;
    }
    // Hold the stop signals while setting up, so one that arrives early is
    // handled by the handler below, never by the default action.
    let stop = [libc::SIGTERM, libc::SIGINT];
    set_blocked(&stop, true);
    if flags.ignore_term {
        set_handler(libc::SIGTERM, libc::SIG_IGN);
    }
    let handler = if flags.serve {
        if let Err(msg) = check_listener() {
            eprintln!("probe: --serve: {msg}");
            return 2;
        }
        on_stop_serving as extern "C" fn(c_int) as libc::sighandler_t
    } else {
        on_stop_sleeping as extern "C" fn(c_int) as libc::sighandler_t
    };
    set_handler(libc::SIGINT, handler);
    if !flags.ignore_term {
        set_handler(libc::SIGTERM, handler);
    }
    if flags.notify {
        notify_ready();
    }
    set_blocked(&stop, false);
    if flags.serve {
        serve()
    } else {
        loop {
            // SAFETY: pause only waits for a signal.
            unsafe { libc::pause() };
        }
    }
}

extern "C" fn on_stop_sleeping(_: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Closing our listener fd is how the serve loop learns to stop: the next
/// accept fails with EBADF wherever the signal landed, so no wake-up is lost
/// and no accepted connection is dropped. The socket itself lives on in the
/// launcher, queued connections included.
extern "C" fn on_stop_serving(_: c_int) {
    // SAFETY: close is async-signal-safe.
    unsafe { libc::close(LISTENER) };
}

fn set_blocked(signals: &[c_int], blocked: bool) {
    // SAFETY: plain signal-mask manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}

fn set_handler(signal: c_int, handler: libc::sighandler_t) {
    // SAFETY: the handlers only call async-signal-safe functions. No
    // SA_RESTART, so a blocked accept or read returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(signal, &sa, std::ptr::null_mut());
    }
}

fn check_listener() -> Result<(), String> {
    let is_stream = sockopt(LISTENER, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
    let listening = sockopt(LISTENER, libc::SO_ACCEPTCONN) == Some(1);
    if is_stream && listening {
        Ok(())
    } else {
        Err(format!(
            "fd {LISTENER} is not a listening stream socket; \
             run the probe with one listener, e.g. under relaunch -l 127.0.0.1:0"
        ))
    }
}

/// Accepts until the stop handler closes the listener. The listener may be
/// blocking or not (that is the launcher's and the other generations' call),
/// and it is never changed here.
fn serve() -> c_int {
    let body = format!("{}\n", std::process::id());
    loop {
        // SAFETY: accept4 on our listener fd; the result is a new fd we own.
        let conn = unsafe {
            libc::accept4(
                LISTENER,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn >= 0 {
            // SAFETY: conn is a fresh fd that nothing else owns.
            let file = unsafe { File::from_raw_fd(conn) };
            answer(file, &body);
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EBADF) => return 0,
            Some(libc::EAGAIN) => wait_readable(LISTENER),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {} // EINTR, ECONNABORTED and the like: try again
        }
    }
}

fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. EINTR and POLLNVAL both lead back to accept,
    // which then sees the closed fd.
    unsafe { libc::poll(&mut p, 1, -1) };
}

/// Reads the request head (bounded in size and time) and answers it.
fn answer(mut conn: File, body: &str) {
    set_timeouts(&conn, Duration::from_secs(5));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}

fn set_timeouts(conn: &File, t: Duration) {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast::<c_void>(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }
}

/// sd_notify("READY=1"); failures are reported on stderr, not fatal, so a
/// test sees the missing readiness rather than a dead probe.
fn notify_ready() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        eprintln!("probe: --notify: NOTIFY_SOCKET is not set");
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let addr = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&target)?,
        };
        sock.send_to_addr(b"READY=1", &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        eprintln!("probe: cannot send READY=1 to {target}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses() {
        assert_eq!(unix_addr_string(b""), "");
        assert_eq!(unix_addr_string(b"\0name"), "@name");
        assert_eq!(unix_addr_string(b"/tmp/x.sock\0\0"), "/tmp/x.sock");
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tprobe\nSigBlk:\t0000000000000001\nSigIgn:\t0000000000001000\n";
        assert_eq!(
            status_field(status, "SigBlk").as_deref(),
            Some("0000000000000001")
        );
        assert_eq!(
            status_field(status, "SigIgn").as_deref(),
            Some("0000000000001000")
        );
        assert_eq!(status_field(status, "SigCgt"), None);
    }

    #[test]
    fn flags() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let f = Flags::parse(&argv("probe --fd=3 --exit 7 --notify")).unwrap();
        assert_eq!((f.exit, f.notify, f.serve), (Some(7), true, false));
        assert_eq!(
            Flags::parse(&argv("probe --exit=-1")).unwrap().exit,
            Some(-1)
        );
        assert!(Flags::parse(&argv("probe --exit")).is_err());
        assert!(Flags::parse(&argv("probe --exit x")).is_err());
        let f = Flags::parse(&argv("probe --serve --ignore-term --port=5000")).unwrap();
        assert!(f.serve && f.ignore_term && f.exit.is_none());
    }
}
