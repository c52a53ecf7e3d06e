//! One look of `--ready http:PATH` or `--ready tcp` at a generation, over a
//! connection of relaunch's own that reaches that generation alone
//! (`Group::probe`). Blocking, bounded by [`PROBE_WAIT`]: run it on a
//! helper thread. The connection may be kept for the next look: one that
//! is still waiting in the accept queue is waited on again rather than
//! joined by another each time, so a generation slow to start never fills
//! its queue with probes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::plan::options::Probe;
use crate::proc;

/// How long one look waits for an answer (or, for `tcp`, an accept).
pub const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long a probe's connect may take, on the loop's thread (loopback:
/// microseconds, unless the queue is full and the handshake dropped).
pub const CONNECT_WAIT: Duration = Duration::from_millis(100);
/// How long an unanswered `http` connection is waited on across looks
/// before a fresh one is tried (the app may have taken it and hung).
const KEEP_FOR: Duration = Duration::from_secs(5);
/// The longest status line read.
const LINE_MAX: usize = 512;

/// A probe connection and what was done on it.
pub struct Conn {
    stream: TcpStream,
    /// The request went out.
    sent: bool,
    /// What came back so far.
    got: Vec<u8>,
    opened: Instant,
}

impl Conn {
    pub fn new(socket: socket2::Socket) -> Conn {
        Conn {
            stream: socket.into(),
            sent: false,
            got: Vec::new(),
            opened: Instant::now(),
        }
    }

    /// Still worth waiting on: an answer after [`KEEP_FOR`] would tell of
    /// another time (a `--health` check ten seconds ago).
    pub fn fresh(&self) -> bool {
        self.opened.elapsed() < KEEP_FOR
    }

    /// Established, and nothing was ever sent or received on it (an `exec:`
    /// command that did not use it): the next command can have it, rather
    /// than another connection joining the queue.
    pub fn untouched(&self) -> bool {
        // SAFETY: a plain struct filled by the kernel, its size given.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        // The byte counts are there since Linux 4.1 and 4.2.
        let known = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
        r == 0
            && len as usize >= known
            && info.tcpi_state == proc::TCP_ESTABLISHED
            && info.tcpi_bytes_acked <= 1
            && info.tcpi_bytes_received == 0
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// What one look found: the connection to keep for the next one, if any,
/// and Ok (healthy, how) or Err (not yet, why). `pids`: every process of
/// the generation now (for `tcp`).
pub fn look(conn: Conn, probe: &Probe, pids: &[i32]) -> (Option<Conn>, Result<String, String>) {
    match probe {
        Probe::Http(path) => http(conn, path),
        Probe::Tcp => tcp(conn, pids),
        Probe::Exec(_) => (None, Err("exec: is not a connection probe".into())),
    }
}

/// `GET path` over HTTP/1.0: 2xx or 3xx is healthy.
fn http(mut conn: Conn, path: &str) -> (Option<Conn>, Result<String, String>) {
    let what = format!("GET {path}");
    if !conn.sent {
        let host = conn
            .stream
            .peer_addr()
            .map_or_else(|_| "localhost".into(), |a| a.to_string());
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: relaunch\r\n\r\n");
        if let Err(e) = conn.stream.write_all(request.as_bytes()) {
            return (None, Err(format!("{what}: cannot send the request ({e})")));
        }
        conn.sent = true;
    }
    let end = Instant::now() + PROBE_WAIT;
    let mut buf = [0u8; 256];
    loop {
        if let Some(line) = status_line(&conn.got) {
            return (None, answered(&what, &line));
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let keep = conn.fresh();
            let why = format!("{what}: no answer within {} ms", PROBE_WAIT.as_millis());
            return (keep.then_some(conn), Err(why));
        }
        let _ = conn.stream.set_read_timeout(Some(left));
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                let why = match conn.got.is_empty() {
                    true => format!("{what}: the connection was closed without an answer"),
                    false => format!("{what}: not an HTTP answer: {:?}", shown(&conn.got)),
                };
                return (None, Err(why));
            }
            Ok(n) => conn.got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (None, Err(format!("{what}: {e}"))),
        }
    }
}

/// The status line, once it is all there (or as much as is read of one).
fn status_line(got: &[u8]) -> Option<String> {
    match got.iter().position(|&b| b == b'\n') {
        Some(i) => Some(shown(&got[..i])),
        None if got.len() >= LINE_MAX => Some(shown(got)),
        None => None,
    }
}

/// What an app sent, printable and short.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(LINE_MAX)]);
    text.trim_end()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// "GET /healthz answered 500 Internal Server Error", healthy or not.
fn answered(what: &str, line: &str) -> Result<String, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    let reason = parts.next().unwrap_or("").trim();
    match code {
        Some(code) if version.starts_with("HTTP/") => {
            let said = format!("{what} answered {code} {reason}")
                .trim_end()
                .to_string();
            match code {
                200..=399 => Ok(said),
                _ => Err(said),
            }
        }
        _ => Err(format!("{what}: not an HTTP answer: {line:?}")),
    }
}

/// The generation accepted the probe: its end of the connection left the
/// accept queue and is in the fds of one of `pids` (sock_diag, then the fd
/// tables). An app that accepted it and closed it at once shows as the
/// connection's end (a FIN): only its processes accept from its socket.
fn tcp(conn: Conn, pids: &[i32]) -> (Option<Conn>, Result<String, String>) {
    let (ours, theirs) = match (conn.stream.local_addr(), conn.stream.peer_addr()) {
        (Ok(l), Ok(p)) => (unmapped(l), unmapped(p)),
        (Err(e), _) | (_, Err(e)) => return (None, Err(format!("the probe connection: {e}"))),
    };
    let end = Instant::now() + PROBE_WAIT;
    let mut last_error = None;
    loop {
        match closed_by_peer(&conn.stream) {
            Ok(true) => {
                return (
                    None,
                    Ok("accepted a probe connection (and closed it)".into()),
                );
            }
            Ok(false) => {}
            Err(e) => return (None, Err(format!("the probe connection failed: {e}"))),
        }
        match accepted_by(ours, theirs, pids) {
            Ok(Some(pid)) => {
                return (None, Ok(format!("pid {pid} accepted a probe connection")));
            }
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= end {
            let why = match last_error {
                Some(e) => format!("cannot see whether it accepted a probe connection: {e}"),
                None => format!(
                    "no process of it accepted a probe connection within {} ms (it waits in \
                     the accept queue)",
                    PROBE_WAIT.as_millis()
                ),
            };
            return (Some(conn), Err(why));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The peer ended the connection (read 0 without waiting); a reset is an
/// error.
fn closed_by_peer(stream: &TcpStream) -> io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    stream.set_nonblocking(false)?;
    match r {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Which of `pids` holds the far end of the connection `ours` → `theirs`.
fn accepted_by(ours: SocketAddr, theirs: SocketAddr, pids: &[i32]) -> io::Result<Option<i32>> {
    let states = 1 << proc::TCP_ESTABLISHED | 1 << proc::TCP_CLOSE_WAIT;
    let tcp = proc::tcp_sockets_on(states, &[theirs.port()])?;
    let Some(inode) = tcp
        .iter()
        .find(|e| unmapped(e.remote) == ours && unmapped(e.local) == theirs)
        .map(|e| e.inode)
        .filter(|&i| i != 0)
    else {
        // Still in the queue: an fd gets an inode at accept.
        return Ok(None);
    };
    for &pid in pids {
        if crate::sockets::drain::held_sockets(&[pid])?.contains_key(&inode) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpListener, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = socket2::Socket::from(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        (l, Conn::new(s))
    }

    fn me() -> Vec<i32> {
        vec![std::process::id() as i32]
    }

    #[test]
    fn status_lines_decide_health() {
        let w = "GET /h";
        assert_eq!(
            answered(w, "HTTP/1.0 200 OK"),
            Ok("GET /h answered 200 OK".into())
        );
        assert_eq!(
            answered(w, "HTTP/1.1 302 Found"),
            Ok("GET /h answered 302 Found".into())
        );
        assert_eq!(
            answered(w, "HTTP/1.0 500 Internal Server Error"),
            Err("GET /h answered 500 Internal Server Error".into())
        );
        assert_eq!(
            answered(w, "HTTP/1.1 404"),
            Err("GET /h answered 404".into())
        );
        assert!(
            answered(w, "SSH-2.0-OpenSSH")
                .unwrap_err()
                .contains("not an HTTP answer")
        );
        assert_eq!(
            status_line(b"HTTP/1.0 200 OK\r\nX"),
            Some("HTTP/1.0 200 OK".into())
        );
        assert_eq!(status_line(b"HTTP/1.0 2"), None);
    }

    #[test]
    fn an_http_answer_is_read_and_an_unanswered_request_is_kept() {
        let (l, conn) = pair();
        // Nothing accepts: no answer, the connection is kept.
        let (kept, r) = http(conn, "/healthz");
        assert!(r.unwrap_err().contains("no answer within"));
        let conn = kept.expect("kept while it waits in the queue");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.0 500 Internal Server Error\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&req[..n]).to_string()
        });
        let (kept, r) = http(conn, "/healthz");
        assert!(kept.is_none());
        assert_eq!(
            r,
            Err("GET /healthz answered 500 Internal Server Error".into())
        );
        let req = server.join().unwrap();
        assert!(
            req.starts_with("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"), "sent once, whole: {req:?}");
    }

    #[test]
    fn a_connection_used_either_way_or_closed_is_not_untouched() {
        let (l, conn) = pair();
        assert!(conn.untouched(), "a new connection");
        let (mut server, _) = l.accept().unwrap();
        assert!(conn.untouched(), "accepted, nothing sent");
        (&conn.stream).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        assert!(!conn.untouched(), "something was sent");
        let (l, conn) = pair();
        let (mut server, _) = l.accept().unwrap();
        server.write_all(b"y").unwrap();
        wait_until(|| !conn.untouched());
        let (l, conn) = pair();
        drop(l.accept().unwrap());
        wait_until(|| !conn.untouched());
    }

    fn wait_until(f: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < end, "not within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_kept_connection_is_fresh_only_for_a_while() {
        let (_l, mut conn) = pair();
        assert!(conn.fresh());
        conn.opened -= KEEP_FOR;
        assert!(!conn.fresh());
    }

    #[test]
    fn a_connection_closed_without_an_answer_is_said() {
        let (l, conn) = pair();
        drop(l.accept().unwrap());
        let (kept, r) = http(conn, "/");
        assert!(kept.is_none());
        let e = r.unwrap_err();
        assert!(
            e.contains("closed without an answer") || e.contains("reset"),
            "{e}"
        );
    }

    #[test]
    fn tcp_is_healthy_once_a_process_holds_the_accepted_end() {
        let (l, conn) = pair();
        let (kept, r) = tcp(conn, &me());
        assert!(r.unwrap_err().contains("waits in the accept queue"));
        let conn = kept.unwrap();
        let (held, _) = l.accept().unwrap();
        // Accepted, but by a process that is not the generation's.
        let (kept, r) = tcp(conn, &[]);
        assert!(r.is_err());
        let (kept, r) = tcp(kept.unwrap(), &me());
        assert!(kept.is_none());
        let how = r.unwrap();
        assert!(
            how.contains(&format!("pid {} accepted", std::process::id())),
            "{how}"
        );
        drop(held);
    }

    #[test]
    fn tcp_counts_an_accepted_and_closed_probe() {
        let (l, conn) = pair();
        drop(l.accept().unwrap());
        let (kept, r) = tcp(conn, &[]);
        assert!(kept.is_none());
        assert!(r.unwrap().contains("closed it"));
    }
}
