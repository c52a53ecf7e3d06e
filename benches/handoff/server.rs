//! `handoff --server`: the one HTTP/1.1 server every scenario runs. It answers
//! every request with `<pid>\n` and `Connection: close`.
//!
//! - `--delay SECS`: sleep before touching the socket (a slow import).
//! - The listener: `--naive PORT` binds 127.0.0.1:PORT itself (SO_REUSEADDR,
//!   retrying with backoff on EADDRINUSE: the seeds' fix); else fd 3 from
//!   LISTEN_FDS (listenfd; LISTEN_PID is checked when present); else the fd in
//!   SERVER_STARTER_PORT (`host:port=fd;...`).
//! - READY=1 to NOTIFY_SOCKET once it accepts, unless `--no-notify`.
//! - SIGTERM/SIGINT: stop accepting by dropping our fd of the listener (never
//!   shutdown(2): the socket may be shared with the next generation), finish
//!   in-flight requests, exit 0.
//! - HANDOFF_EXEC_LOG=PATH: append `<pid> <CLOCK_REALTIME ns>` as soon as the
//!   loader hands over (`.preinit_array`, before libc's and Rust's own
//!   initialisation and `main`), for the SIGHUP-to-exec figure.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use listenfd::ListenFd;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

const READ_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;
/// The naive server gives up binding after this long.
const BIND_GIVE_UP: Duration = Duration::from_secs(60);

pub struct Options {
    pub delay: f64,
    pub notify: bool,
    pub naive_port: Option<u16>,
}

pub fn main(opts: Options) -> ExitCode {
    let pid = std::process::id();
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-server[{pid}]: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> Result<(), String> {
    let delay = Duration::try_from_secs_f64(opts.delay)
        .map_err(|_| format!("--delay takes seconds >= 0, not {}", opts.delay))?;
    std::thread::sleep(delay);
    let listener = match opts.naive_port {
        Some(port) => bind_with_retry(port)?,
        None => take_inherited()?,
    };
    // tokio needs O_NONBLOCK. It is shared by every holder of the socket;
    // every generation of this server sets the same mode, so they agree.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve(listener, opts.notify))
        .map_err(|e| format!("serving: {e}"))
}

/// Stamps the exec time before anything of the program's own start-up runs:
/// the loader calls the executable's `.preinit_array` once every library is
/// mapped and relocated, before libc's, Rust's and our own initialisation.
/// Only the servers of relaunch targets have HANDOFF_EXEC_LOG set.
#[used]
#[unsafe(link_section = ".preinit_array")]
static STAMP_EXEC: extern "C" fn(libc::c_int, *const *const u8, *const *const u8) = stamp_exec;

/// Raw libc calls only: nothing is initialised yet, so no std, no allocation.
extern "C" fn stamp_exec(_argc: libc::c_int, _argv: *const *const u8, envp: *const *const u8) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain syscall (or vDSO call) into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let Some(path) = env_value(envp, b"HANDOFF_EXEC_LOG=") else {
        return;
    };
    let mut line = [0u8; 48];
    // SAFETY: getpid cannot fail.
    let mut len = decimal(unsafe { libc::getpid() } as u64, &mut line);
    line[len] = b' ';
    len += 1;
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    len += decimal(ns, &mut line[len..]);
    line[len] = b'\n';
    len += 1;
    // One short O_APPEND write per process, so lines never interleave.
    // SAFETY: `path` is a NUL-terminated string of the environment; `line` is local.
    unsafe {
        let fd = libc::open(
            path.cast(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, line.as_ptr().cast(), len);
            libc::close(fd);
        }
    }
}

/// The value of `key` (given with its `=`) in a NULL-terminated envp.
fn env_value(envp: *const *const u8, key: &[u8]) -> Option<*const u8> {
    if envp.is_null() {
        return None;
    }
    let mut i = 0;
    loop {
        // SAFETY: envp is the NULL-terminated array the loader passes; each
        // entry is NUL-terminated, and we stop at the first NUL or mismatch.
        unsafe {
            let entry = *envp.add(i);
            if entry.is_null() {
                return None;
            }
            if (0..key.len()).all(|j| *entry.add(j) == key[j]) {
                return Some(entry.add(key.len()));
            }
        }
        i += 1;
    }
}

/// Writes `n` in decimal at the start of `buf`; returns its length.
fn decimal(mut n: u64, buf: &mut [u8]) -> usize {
    let mut tmp = [0u8; 20];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

fn take_inherited() -> Result<std::net::TcpListener, String> {
    let mut fds = ListenFd::from_env();
    if fds.len() > 0 {
        return match fds.take_tcp_listener(0) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err("fd 3 was already taken".into()),
            Err(e) => Err(format!("fd 3 is not a TCP listener: {e}")),
        };
    }
    if let Ok(spec) = std::env::var("SERVER_STARTER_PORT") {
        let fd = starter_fd(&spec)
            .ok_or_else(|| format!("cannot read an fd from SERVER_STARTER_PORT={spec:?}"))?;
        return adopt_fd(fd);
    }
    Err("no socket given: set LISTEN_FDS or SERVER_STARTER_PORT, or pass --naive PORT".into())
}

/// The first fd of Server::Starter's `host:port=fd;host:port=fd`.
pub fn starter_fd(spec: &str) -> Option<RawFd> {
    let first = spec.split(';').next()?;
    let (_, fd) = first.rsplit_once('=')?;
    fd.trim().parse().ok().filter(|fd| *fd >= 0)
}

fn adopt_fd(fd: RawFd) -> Result<std::net::TcpListener, String> {
    let stat = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
        .map_err(|e| format!("fd {fd} from SERVER_STARTER_PORT is not open: {e}"))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("fd {fd} from SERVER_STARTER_PORT is not a socket"));
    }
    // SAFETY: the fd is open, is a socket, and was handed to us to own.
    Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) })
}

fn bind_with_retry(port: u16) -> Result<std::net::TcpListener, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let give_up = Instant::now() + BIND_GIVE_UP;
    let mut wait = Duration::from_millis(50);
    loop {
        match bind_once(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && Instant::now() < give_up => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("cannot bind {addr}: {e}")),
        }
    }
}

fn bind_once(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(libc::SOMAXCONN)?;
    Ok(s.into())
}

async fn serve(listener: std::net::TcpListener, notify: bool) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if notify {
        sd_notify_ready();
    }
    let body: &'static str = format!("{}\n", std::process::id()).leak();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { conns.spawn(answer(stream, body)); }
                Err(e) => accept_failed(e).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Closes only our fd; queued connections stay with the socket's other holders.
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Running out of fds is ours to wait out; retrying at once would spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answer(mut stream: TcpStream, body: &'static str) {
    match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(true)) => {}
        _ => return,
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// True once the blank line that ends the request head has arrived.
async fn read_head(stream: &mut TcpStream) -> io::Result<bool> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(true);
        }
        if head.len() > MAX_HEAD {
            return Ok(false);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn sd_notify_ready() {
    let Ok(target) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let addr = match target.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(&target)?,
        };
        sock.send_to_addr(b"READY=1", &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        eprintln!("handoff-server: cannot send READY=1 to {target}: {e}");
    }
}

pub fn self_check() -> Result<(), String> {
    let mut buf = [0u8; 20];
    for n in [0u64, 7, 1_795_758_627_761_025_914, u64::MAX] {
        let len = decimal(n, &mut buf);
        if buf[..len] != *n.to_string().as_bytes() {
            return Err(format!("decimal({n}) = {:?}", &buf[..len]));
        }
    }
    let vars = [
        &b"A=1\0"[..],
        b"HANDOFF_EXEC_LOGX=no\0",
        b"HANDOFF_EXEC_LOG=/x\0",
    ];
    let mut envp: Vec<*const u8> = vars.iter().map(|v| v.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: the value points into `vars`, NUL-terminated.
    let got = env_value(envp.as_ptr(), b"HANDOFF_EXEC_LOG=").map(|p| {
        unsafe { std::ffi::CStr::from_ptr(p.cast()) }
            .to_bytes()
            .to_vec()
    });
    if got.as_deref() != Some(&b"/x"[..]) {
        return Err(format!("env_value: {got:?}"));
    }
    if env_value(envp[2..].as_ptr(), b"A=").is_some()
        || env_value(std::ptr::null(), b"A=").is_some()
    {
        return Err("env_value found a missing key".into());
    }
    let cases = [
        ("127.0.0.1:8000=5", Some(5)),
        ("127.0.0.1:8000=5;/tmp/s=6", Some(5)),
        ("8000=7", Some(7)),
        ("127.0.0.1:8000", None),
        ("x=-1", None),
        ("", None),
    ];
    for (spec, want) in cases {
        let got = starter_fd(spec);
        if got != want {
            return Err(format!("starter_fd({spec:?}) = {got:?}, want {want:?}"));
        }
    }
    Ok(())
}
