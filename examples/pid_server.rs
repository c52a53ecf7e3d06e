//! The README's example app: a small HTTP server that answers every request
//! with its own pid, so a client can see which generation served it.
//!
//! Run it under relaunch (`relaunch -l 127.0.0.1:8000 -- target/debug/examples/pid_server`)
//! and it serves the inherited listener at fd 3 (via listenfd); run it alone
//! and it binds 127.0.0.1:${PORT:-8000} itself.
//!
//! - `--delay SECS`: sleep before touching the listener, like an app with a
//!   slow start-up. Connections meanwhile wait in relaunch's backlog.
//! - READY=1 goes to NOTIFY_SOCKET (a path or "@abstract") once it accepts,
//!   unless `--no-notify`.
//! - SIGTERM/SIGINT: stop accepting at once (the listener is dropped, so
//!   queued connections stay in the shared backlog for the next generation),
//!   finish in-flight requests for at most 10 s, exit 0.

use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use listenfd::ListenFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 16 * 1024;

#[derive(Parser)]
#[command(about = "Answer every HTTP request with this process's pid")]
struct Args {
    /// Seconds to sleep before touching the listener (imitates a slow start-up).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    delay: f64,
    /// Do not send READY=1 to NOTIFY_SOCKET.
    #[arg(long)]
    no_notify: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let pid = std::process::id();
    match run(args, pid) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pid_server[{pid}]: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, pid: u32) -> Result<(), String> {
    let delay = Duration::try_from_secs_f64(args.delay)
        .map_err(|_| format!("--delay takes a number of seconds >= 0, not {}", args.delay))?;
    std::thread::sleep(delay);

    let listener = take_listener(pid)?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listener's address: {e}"))?;
    // tokio needs a non-blocking socket. This sets O_NONBLOCK on a file
    // description shared with every generation; each generation of this app
    // does the same, so they all agree on the mode.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve(listener, addr, pid, !args.no_notify))
        .map_err(|e| format!("serving {addr}: {e}"))
}

/// fd 3 from LISTEN_FDS when we were given one, else a socket of our own.
fn take_listener(pid: u32) -> Result<std::net::TcpListener, String> {
    let mut fds = ListenFd::from_env();
    if fds.len() > 0 {
        return match fds.take_tcp_listener(0) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err("fd 3 was already taken".into()),
            Err(e) => Err(format!(
                "fd 3 is not a TCP listener ({e}); give pid_server a tcp: socket"
            )),
        };
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let addr = format!("127.0.0.1:{port}");
    eprintln!("pid_server[{pid}]: no LISTEN_FDS, binding {addr} myself");
    std::net::TcpListener::bind(&addr).map_err(|e| {
        format!("cannot bind {addr}: {e}; set PORT to a free port, or run under relaunch")
    })
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    pid: u32,
    notify: bool,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!("pid_server[{pid}]: serving http://{addr}/");
    if notify {
        sd_notify_ready(pid);
    }

    // One allocation that lives as long as the process.
    let body: &'static str = format!("{pid}\n").leak();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(answer(stream, body));
                }
                Err(e) => accept_failed(e).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    drop(listener);
    eprintln!(
        "pid_server[{pid}]: stopping, finishing {} request(s)",
        conns.len()
    );
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "pid_server[{pid}]: gave up on {} request(s) after {DRAIN_TIMEOUT:?}",
            conns.len()
        );
    }
    Ok(())
}

/// Per-connection failures are the client's business; running out of fds is
/// ours, and retrying at once would spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        eprintln!("pid_server: accept: {e}; pausing 100 ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answer(mut stream: TcpStream, body: &'static str) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        _ => return, // closed, timed out, or failed before a full head
    };
    let (status, body) = match parse_request_line(&head) {
        Some(_) => ("200 OK", body),
        None => ("400 Bad Request", "bad request\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Bytes up to the blank line that ends the head; None if the peer closed
/// first or sent more than MAX_HEAD.
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `METHOD TARGET HTTP/x.y` -> (method, target).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && !target.is_empty()
        && version.starts_with("HTTP/1.");
    ok.then_some((method, target))
}

/// sd_notify("READY=1"). A failure is logged, not fatal: the launcher's
/// ready deadline will tell the rest of the story.
fn sd_notify_ready(pid: u32) {
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
        eprintln!("pid_server[{pid}]: cannot send READY=1 to {target}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /x HTTP/1.1\r\nHost: a"),
            Some(("GET", "/x"))
        );
        assert_eq!(parse_request_line(b"HEAD / HTTP/1.0"), Some(("HEAD", "/")));
        assert_eq!(parse_request_line(b"GET /"), None);
        assert_eq!(parse_request_line(b"get / HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"GET / HTTP/2 extra"), None);
        assert_eq!(parse_request_line(b"\xff / HTTP/1.1"), None);
    }
}
