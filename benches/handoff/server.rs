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
//! - HANDOFF_EXEC_LOG=PATH: append `<pid> <CLOCK_REALTIME ns>` first thing in
//!   main, before parsing arguments, for the SIGHUP-to-exec figure.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Called first thing in the bench's `main`, in every mode; only the
/// servers of relaunch targets have HANDOFF_EXEC_LOG set.
pub fn record_exec_time() {
    let Some(path) = std::env::var_os("HANDOFF_EXEC_LOG") else {
        return;
    };
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let line = format!("{} {ns}\n", std::process::id());
    // One short O_APPEND write per process, so lines never interleave.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
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
