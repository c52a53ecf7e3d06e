//! The control socket: `relaunch --control PATH` serves it, and the
//! subcommands `relaunch status [--json]`, `relaunch reload` and
//! `relaunch stop` are its client.
//!
//! Protocol: the client connects to the Unix stream socket at PATH and sends
//! one JSON line, a [`Request`] (`"status"`, `"reload"` or `"stop"`); the
//! server answers one JSON line, a [`Response`] tagged by `"result"`, and
//! closes. `reload` answers only once the reload has succeeded or failed,
//! which can take minutes, so the client has no timeout on the answer (only
//! on connecting and sending, 5 s each).
//!
//! What the server guarantees:
//! - The socket file follows `sockets::file` (one policy for every socket
//!   file relaunch creates): mode 0600 set on the socket before `bind`, so
//!   it is never reachable wider, then made exact on the pinned inode.
//! - Only root and relaunch's own effective uid are served (SO_PEERCRED);
//!   the file mode is the first gate, this is the second. Refusals are
//!   answered with [`Response::Error`] and logged at warn.
//! - An existing file at PATH is replaced only if it is a socket nobody
//!   accepts on; the file is removed when the [`Server`] is dropped, only if
//!   PATH still names the inode we bound. After [`Server::serve`] the server
//!   lives in its accept task, which ends (and so removes the file) when the
//!   [`Incoming`] receiver is dropped or the runtime shuts down.
//! - Each connection runs in its own task, so a long `reload` doesn't block
//!   `status`. A request is one line of at most 64 KiB, read within 5 s.
//!   If the supervisor is gone (receiver or reply dropped), the peer is told
//!   "relaunch is shutting down".

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::sockets::file::{self, SocketFile};

/// Longest request line we read.
const MAX_REQUEST: u64 = 64 * 1024;
/// Longest answer the client reads (a status with many children is a few KiB).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;
/// Connect, send and (server side) read-request and write-answer deadline.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Queue of requests waiting for the supervisor.
const QUEUE: usize = 16;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Status,
    Reload,
    Stop,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Reloaded { generation: u64, pids: Vec<i32> },
    ReloadFailed { generation: u64, reason: String },
    Stopping,
    Error { message: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Status {
    /// relaunch's own pid.
    pub pid: u32,
    /// The serving generation.
    pub generation: u64,
    /// "starting" | "serving" | "reloading" | "backing off" | "stopping"
    pub state: String,
    /// Last STATUS= from the serving generation.
    pub status_text: Option<String>,
    pub listeners: Vec<ListenerInfo>,
    pub children: Vec<ChildInfo>,
    pub last_reload: Option<ReloadInfo>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    pub address: String,
    pub fd: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ChildInfo {
    pub pid: i32,
    pub generation: u64,
    pub worker: usize,
    pub state: String,
    pub uptime_secs: f64,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// State "lingering": the leader exited and these processes of its
    /// group live on (they are being stopped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lingering: Vec<i32>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReloadInfo {
    pub generation: u64,
    pub ok: bool,
    pub message: String,
    pub seconds_ago: f64,
}

/// A request from a peer and where to send the answer.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The bound control socket. Dropping it removes the socket file if it is
/// still ours.
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    /// Removes the file on drop, if still ours.
    _file: SocketFile,
}

impl Server {
    /// Creates the control socket at `path` (mode 0600 from the start),
    /// replacing a stale socket file. Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Server> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::runtime(
                "control socket: Server::bind was called outside the tokio runtime",
            )
            .hint("this is a bug in relaunch; please report it"));
        }
        let label = format!("control socket {}", path.display());
        let in_use = format!(
            "stop it first (relaunch stop --control {}) or give this relaunch another --control path",
            path.display()
        );
        let role = file::Role {
            label: &label,
            elsewhere: "pick another --control path",
            in_use: &in_use,
        };
        let access = file::Access {
            mode: 0o600,
            owner: None,
            group: None,
        };
        let (socket, file) = file::bind(path, &access, &role)?;
        let listen = || -> io::Result<UnixListener> {
            socket.listen(libc::SOMAXCONN)?;
            socket.set_nonblocking(true)?;
            UnixListener::from_std(socket.into())
        };
        // On error `file` is dropped here, which removes it.
        let listener = listen().map_err(|e| {
            Error::runtime(format!("cannot set up {label}: {e}")).hint(
                "check the folder's permissions and free space, or pick another --control path",
            )
        })?;
        info!(path = %path.display(), "control socket listening");
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            _file: file,
        })
    }

    /// Spawns the accept loop on the current runtime and returns the requests
    /// it receives. Each one must be answered through its `reply`.
    pub fn serve(self) -> mpsc::Receiver<Incoming> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(self.accept_loop(tx));
        rx
    }

    async fn accept_loop(self, tx: mpsc::Sender<Incoming>) {
        let our_uid = nix::unistd::geteuid().as_raw();
        loop {
            tokio::select! {
                _ = tx.closed() => {
                    debug!(path = %self.path.display(), "control socket closing: nobody takes requests any more");
                    break;
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(stream, tx.clone(), our_uid));
                    }
                    Err(e) => {
                        // Typically EMFILE: back off a little instead of spinning.
                        warn!(path = %self.path.display(), "control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// Whether a peer with `peer_uid` may control a relaunch running as `our_uid`.
fn allowed(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == our_uid
}

/// Serves one connection: one request line in, one answer line out.
async fn handle(mut stream: UnixStream, tx: mpsc::Sender<Incoming>, our_uid: u32) {
    let Some(response) = answer(&mut stream, &tx, our_uid).await else {
        return;
    };
    let mut line = match serde_json::to_vec(&response) {
        Ok(l) => l,
        Err(e) => {
            warn!("control socket: cannot encode answer: {e}");
            br#"{"result":"error","message":"relaunch could not encode its answer"}"#.to_vec()
        }
    };
    line.push(b'\n');
    let write = async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    };
    match timeout(IO_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("control socket: cannot send answer: {e}"),
        Err(_) => debug!("control socket: peer did not take the answer within 5 s"),
    }
}

/// The answer for one connection, or None when the peer sent nothing at all
/// (a probe, or a client that gave up).
async fn answer(
    stream: &mut UnixStream,
    tx: &mpsc::Sender<Incoming>,
    our_uid: u32,
) -> Option<Response> {
    let cred = match getsockopt(&*stream, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            warn!("control socket: cannot identify the peer: {e}");
            return Some(error(format!("relaunch cannot identify you: {e}")));
        }
    };
    let (peer_uid, peer_pid) = (cred.uid(), cred.pid());
    if !allowed(peer_uid, our_uid) {
        warn!(
            peer_uid,
            peer_pid, "control socket: refused a peer of another user"
        );
        return Some(error(format!(
            "permission denied: uid {peer_uid} may not control this relaunch (only uid {our_uid} and root may)"
        )));
    }
    let line = match timeout(IO_TIMEOUT, read_request(stream)).await {
        Err(_) => {
            return Some(error(
                "no request within 5 s: send one JSON line such as \"status\"".into(),
            ));
        }
        Ok(Err(e)) => {
            debug!(peer_pid, "control socket: cannot read request: {e}");
            return Some(error(format!("cannot read the request: {e}")));
        }
        Ok(Ok(None)) => {
            debug!(peer_pid, "control socket: peer closed without a request");
            return None;
        }
        Ok(Ok(Some(line))) => line,
    };
    if line.len() as u64 > MAX_REQUEST {
        return Some(error(
            "request longer than 64 KiB: send one JSON line such as \"status\"".into(),
        ));
    }
    let request = match parse_request(&line) {
        Ok(r) => r,
        Err(message) => {
            warn!(peer_pid, "control socket: {message}");
            return Some(error(message));
        }
    };
    info!(peer_pid, peer_uid, ?request, "control request");
    let (reply, answer) = oneshot::channel();
    if tx.send(Incoming { request, reply }).await.is_err() {
        return Some(error("relaunch is shutting down".into()));
    }
    Some(
        answer
            .await
            .unwrap_or_else(|_| error("relaunch is shutting down".into())),
    )
}

/// Reads up to one line (more than MAX_REQUEST bytes means too long);
/// None if the peer sent nothing.
async fn read_request(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    BufReader::new((&mut *stream).take(MAX_REQUEST + 1))
        .read_until(b'\n', &mut line)
        .await?;
    Ok(if line.is_empty() { None } else { Some(line) })
}

fn error(message: String) -> Response {
    Response::Error { message }
}

fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| {
        "malformed request (not UTF-8): send one JSON line: \"status\", \"reload\" or \"stop\""
            .to_string()
    })?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!("malformed request ({e}): send one JSON line: \"status\", \"reload\" or \"stop\"")
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Control socket of the relaunch to talk to
    #[arg(long, env = "RELAUNCH_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// Runs a client command and prints the outcome (stdout on success, stderr
/// on a failed reload). Returns the exit code: 0 ok, 1 reload failed.
pub async fn client(args: &ClientArgs, request: Request, json: bool) -> Result<i32> {
    let path = args.control.as_deref().ok_or_else(|| {
        Error::usage("no control socket given").hint(
            "pass --control PATH or set RELAUNCH_CONTROL to the --control path of the running relaunch",
        )
    })?;
    let response = exchange(path, &request).await?;
    let (code, text) = render(&response, json)?;
    let written = if code == 0 {
        writeln!(io::stdout().lock(), "{text}")
    } else {
        writeln!(io::stderr().lock(), "{text}")
    };
    match written {
        // `relaunch status | head -1` is fine.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::runtime(format!("cannot print the answer: {e}")))
        }
        _ => Ok(code),
    }
}

/// Sends one request to the relaunch at `path` and reads its answer.
async fn exchange(path: &Path, request: &Request) -> Result<Response> {
    let p = path.display();
    let mut stream = match timeout(IO_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => {
            return Err(Error::runtime(format!(
                "relaunch on {p} did not accept the connection within 5 s"
            ))
            .hint("it may be overloaded or stuck; check its log"));
        }
        Ok(Err(e)) => return Err(connect_error(path, &e)),
        Ok(Ok(s)) => s,
    };
    let mut line = serde_json::to_vec(request)
        .map_err(|e| Error::runtime(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    match timeout(IO_TIMEOUT, stream.write_all(&line)).await {
        Err(_) => {
            return Err(Error::runtime(format!(
                "relaunch on {p} did not take the request within 5 s"
            ))
            .hint("it may be overloaded or stuck; check its log"));
        }
        Ok(Err(e)) => {
            return Err(
                Error::runtime(format!("cannot send the request to {p}: {e}"))
                    .hint("check relaunch's log; it may be stopping"),
            );
        }
        Ok(Ok(())) => {}
    }
    // No timeout: a reload answers only when it is over, possibly minutes later.
    let mut answer = Vec::new();
    BufReader::new((&mut stream).take(MAX_RESPONSE))
        .read_until(b'\n', &mut answer)
        .await
        .map_err(|e| {
            Error::runtime(format!("cannot read the answer from {p}: {e}"))
                .hint("check relaunch's log; it may have stopped")
        })?;
    if answer.is_empty() {
        return Err(Error::runtime(format!(
            "relaunch on {p} closed the connection without answering"
        ))
        .hint("check relaunch's log; it may have stopped"));
    }
    serde_json::from_slice(&answer).map_err(|e| {
        Error::runtime(format!("cannot understand the answer from {p}: {e}"))
            .hint("is the relaunch there the same version as this one?")
    })
}

fn connect_error(path: &Path, e: &io::Error) -> Error {
    let p = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => Error::runtime(format!(
            "no relaunch is listening on {p} (the file does not exist)"
        ))
        .hint(
            "check the --control path (or RELAUNCH_CONTROL) the running relaunch was started with",
        ),
        io::ErrorKind::ConnectionRefused => Error::runtime(format!(
            "nobody is listening on {p} (a stale socket: relaunch is not running)"
        ))
        .hint("start relaunch with this --control path, or remove the stale file"),
        io::ErrorKind::PermissionDenied => Error::runtime(format!(
            "permission denied on {p}: run as the same user as relaunch or root"
        )),
        _ => Error::runtime(format!("cannot connect to {p}: {e}")).hint(
            "check the --control path (or RELAUNCH_CONTROL) the running relaunch was started with",
        ),
    }
}

/// What to print for an answer, and the exit code; an Error answer is an error.
fn render(response: &Response, json: bool) -> Result<(i32, String)> {
    match response {
        Response::Status(status) if json => serde_json::to_string_pretty(status)
            .map(|text| (0, text))
            .map_err(|e| Error::runtime(format!("cannot encode the status as JSON: {e}"))),
        Response::Status(status) => Ok((0, render_status(status))),
        Response::Reloaded { generation, pids } => {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            let text = match pids.len() {
                0 => format!("reloaded: generation {generation} serving"),
                1 => format!(
                    "reloaded: generation {generation} serving (pid {})",
                    pids[0]
                ),
                _ => format!(
                    "reloaded: generation {generation} serving (pids {})",
                    pids.join(", ")
                ),
            };
            Ok((0, text))
        }
        Response::ReloadFailed { reason, .. } => Ok((1, format!("reload failed: {reason}"))),
        Response::Stopping => Ok((0, "relaunch is stopping".to_string())),
        Response::Error { message } => {
            let err = Error::runtime(format!("relaunch refused the request: {message}"));
            Err(if message.starts_with("permission denied") {
                err.hint("run as the same user as relaunch or root")
            } else {
                err.hint("check relaunch's log for details")
            })
        }
    }
}

fn render_status(s: &Status) -> String {
    let mut out = format!(
        "relaunch (pid {}): {}, generation {}\n",
        s.pid, s.state, s.generation
    );
    if let Some(text) = &s.status_text {
        out += &format!("status: {text}\n");
    }
    if s.listeners.is_empty() {
        out += "listeners: none\n";
    } else {
        out += "listeners:\n";
        let rows: Vec<Vec<String>> = s
            .listeners
            .iter()
            .map(|l| vec![l.name.clone(), l.address.clone(), format!("fd {}", l.fd)])
            .collect();
        out += &table(&rows);
    }
    if s.children.is_empty() {
        out += "children: none\n";
    } else {
        out += "children:\n";
        let mut rows = vec![
            [
                "PID",
                "GEN",
                "WORKER",
                "STATE",
                "UPTIME",
                "RESTARTS",
                "LAST EXIT",
            ]
            .map(String::from)
            .to_vec(),
        ];
        rows.extend(s.children.iter().map(|c| {
            vec![
                c.pid.to_string(),
                c.generation.to_string(),
                c.worker.to_string(),
                if c.lingering.is_empty() {
                    c.state.clone()
                } else {
                    let pids: Vec<String> = c.lingering.iter().map(|p| p.to_string()).collect();
                    format!("{} (pids {})", c.state, pids.join(", "))
                },
                human_secs(c.uptime_secs),
                c.restarts.to_string(),
                c.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        }));
        out += &table(&rows);
    }
    match &s.last_reload {
        None => out += "last reload: none",
        Some(r) => {
            out += &format!(
                "last reload: generation {} {} {} ago",
                r.generation,
                if r.ok { "succeeded" } else { "failed" },
                human_secs(r.seconds_ago)
            );
            if !r.message.is_empty() {
                out += &format!(": {}", r.message);
            }
        }
    }
    out
}

/// Indented, left-aligned columns, one line per row.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            line += &format!(" {cell:<width$} ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// "4.2s", "42s", "3m07s", "2h05m", "3d04h".
fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A fresh folder under the temp dir, removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "relaunch-control-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn within<F: Future>(f: F) -> F::Output {
        timeout(DEADLINE, f).await.expect("timed out")
    }

    /// Plays the supervisor for one request.
    async fn answer_one(rx: &mut mpsc::Receiver<Incoming>, expect: Request, response: Response) {
        let incoming = rx.recv().await.expect("a request");
        assert_eq!(incoming.request, expect);
        incoming.reply.send(response).expect("client still waiting");
    }

    /// Sends raw bytes to the server and returns the answer it gives.
    async fn raw_exchange(path: &Path, bytes: Vec<u8>) -> Response {
        let mut stream = UnixStream::connect(path).await.unwrap();
        let (mut rd, mut wr) = stream.split();
        let write = async move {
            // The server may answer and close before reading everything.
            let _ = wr.write_all(&bytes).await;
        };
        // Read just the line: after it, closing with our bytes unread makes
        // Linux report ECONNRESET instead of EOF.
        let mut answer = Vec::new();
        let mut rd = BufReader::new(&mut rd);
        let read = rd.read_until(b'\n', &mut answer);
        let ((), read) = tokio::join!(write, read);
        read.unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    fn sample_status() -> Status {
        Status {
            pid: 4242,
            generation: 3,
            state: "serving".into(),
            status_text: Some("accepting connections".into()),
            listeners: vec![ListenerInfo {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
                fd: 3,
            }],
            children: vec![ChildInfo {
                pid: 4250,
                generation: 3,
                worker: 0,
                state: "ready".into(),
                uptime_secs: 3725.0,
                restarts: 2,
                last_exit: Some("signal 9 (SIGKILL)".into()),
                lingering: Vec::new(),
            }],
            last_reload: Some(ReloadInfo {
                generation: 3,
                ok: true,
                message: "ready after 0.4s".into(),
                seconds_ago: 125.0,
            }),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode()
    }

    #[test]
    fn allowed_only_root_and_self() {
        for (peer, ours, ok) in [
            (0, 0, true),
            (0, 1000, true),
            (1000, 1000, true),
            (1001, 1000, false),
            (1000, 0, false),
            (65534, 1000, false),
        ] {
            assert_eq!(allowed(peer, ours), ok, "peer {peer} ours {ours}");
        }
    }

    #[test]
    fn parses_requests() {
        for (line, want) in [
            (&b"\"status\"\n"[..], Some(Request::Status)),
            (b"\"reload\"", Some(Request::Reload)),
            (b"  \"stop\"\r\n", Some(Request::Stop)),
            (b"\"STATUS\"\n", None),
            (b"status\n", None),
            (b"{\"request\":\"status\"}\n", None),
            (b"\"status\" \"stop\"\n", None),
            (b"\xff\n", None),
            (b"\n", None),
        ] {
            let got = parse_request(line);
            match want {
                Some(r) => assert_eq!(got, Ok(r), "{line:?}"),
                None => {
                    let msg = got.expect_err("should be refused");
                    assert!(msg.starts_with("malformed request"), "{msg}");
                    assert!(msg.contains("\"status\", \"reload\" or \"stop\""), "{msg}");
                }
            }
        }
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Reload).unwrap(),
            "\"reload\""
        );
        let r = Response::Reloaded {
            generation: 4,
            pids: vec![12, 13],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"result":"reloaded","generation":4,"pids":[12,13]}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Stopping).unwrap(),
            r#"{"result":"stopping"}"#
        );
        let failed: Response =
            serde_json::from_str(r#"{"result":"reload_failed","generation":5,"reason":"x"}"#)
                .unwrap();
        assert!(matches!(
            failed,
            Response::ReloadFailed { generation: 5, .. }
        ));
        let json = serde_json::to_string(&Response::Status(sample_status())).unwrap();
        assert!(
            json.starts_with(r#"{"result":"status","pid":4242,"#),
            "{json}"
        );
        let Response::Status(back) = serde_json::from_str(&json).unwrap() else {
            panic!("not a status: {json}");
        };
        assert_eq!(
            back.children[0].last_exit.as_deref(),
            Some("signal 9 (SIGKILL)")
        );
    }

    #[test]
    fn renders_answers() {
        let ok = |r: Response| render(&r, false).unwrap();
        assert_eq!(
            ok(Response::Reloaded {
                generation: 4,
                pids: vec![12, 13]
            }),
            (0, "reloaded: generation 4 serving (pids 12, 13)".into())
        );
        assert_eq!(
            ok(Response::Reloaded {
                generation: 2,
                pids: vec![7]
            }),
            (0, "reloaded: generation 2 serving (pid 7)".into())
        );
        assert_eq!(
            ok(Response::ReloadFailed {
                generation: 5,
                reason: "exited with status 1 before it was ready".into()
            }),
            (
                1,
                "reload failed: exited with status 1 before it was ready".into()
            )
        );
        assert_eq!(ok(Response::Stopping).0, 0);
        let err = render(
            &Response::Error {
                message: "permission denied: uid 7".into(),
            },
            false,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.msg.contains("permission denied: uid 7"), "{err}");
        assert!(err.hint.unwrap().contains("same user"));
    }

    #[test]
    fn renders_status() {
        let (code, text) = render(&Response::Status(sample_status()), false).unwrap();
        assert_eq!(code, 0);
        let want = "\
relaunch (pid 4242): serving, generation 3
status: accepting connections
listeners:
  http  127.0.0.1:8080  fd 3
children:
  PID   GEN  WORKER  STATE  UPTIME  RESTARTS  LAST EXIT
  4250  3    0       ready  1h02m   2         signal 9 (SIGKILL)
last reload: generation 3 succeeded 2m05s ago: ready after 0.4s";
        assert_eq!(text, want);

        let empty = render_status(&Status {
            state: "starting".into(),
            ..Status::default()
        });
        assert_eq!(
            empty,
            "relaunch (pid 0): starting, generation 0\nlisteners: none\nchildren: none\nlast reload: none"
        );

        let (_, json) = render(&Response::Status(sample_status()), true).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pid, 4242);
        assert!(json.contains("\n  \"generation\": 3"), "{json}");
    }

    #[test]
    fn human_durations() {
        for (secs, want) in [
            (0.0, "0.0s"),
            (4.25, "4.2s"),
            (42.9, "42s"),
            (187.0, "3m07s"),
            (7500.0, "2h05m"),
            (273_600.0, "3d04h"),
            (-1.0, "?"),
            (f64::NAN, "?"),
        ] {
            assert_eq!(human_secs(secs), want, "{secs}");
        }
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let p = Path::new("/run/x.sock");
        let msg = |kind| connect_error(p, &io::Error::from(kind)).msg;
        assert_eq!(
            msg(io::ErrorKind::NotFound),
            "no relaunch is listening on /run/x.sock (the file does not exist)"
        );
        assert_eq!(
            msg(io::ErrorKind::ConnectionRefused),
            "nobody is listening on /run/x.sock (a stale socket: relaunch is not running)"
        );
        assert_eq!(
            msg(io::ErrorKind::PermissionDenied),
            "permission denied on /run/x.sock: run as the same user as relaunch or root"
        );
        assert!(
            connect_error(p, &io::Error::from(io::ErrorKind::NotFound))
                .hint
                .unwrap()
                .contains("--control")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn socket_file_is_0600() {
        let dir = TempDir::new("mode");
        let path = dir.path("ctl.sock");
        let _server = Server::bind(&path).unwrap();
        let m = mode(&path);
        assert_eq!(m & 0o170000, libc::S_IFSOCK, "not a socket: {m:o}");
        assert_eq!(m & 0o7777, 0o600, "mode {m:o}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_round_trip() {
        let dir = TempDir::new("status");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();

        let (got, ()) = within(async {
            tokio::join!(
                exchange(&path, &Request::Status),
                answer_one(&mut rx, Request::Status, Response::Status(sample_status()))
            )
        })
        .await;
        let Response::Status(status) = got.unwrap() else {
            panic!("not a status");
        };
        assert_eq!(status.pid, 4242);
        assert_eq!(status.listeners[0].address, "127.0.0.1:8080");
        assert_eq!(status.children[0].restarts, 2);

        // The whole client command, text and JSON.
        let args = ClientArgs {
            control: Some(path.clone()),
        };
        for json in [false, true] {
            let (code, ()) = within(async {
                tokio::join!(
                    client(&args, Request::Status, json),
                    answer_one(&mut rx, Request::Status, Response::Status(sample_status()))
                )
            })
            .await;
            assert_eq!(code.unwrap(), 0);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reload_outcomes_set_exit_code() {
        let dir = TempDir::new("reload");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        let args = ClientArgs {
            control: Some(path.clone()),
        };
        for (response, want) in [
            (
                Response::ReloadFailed {
                    generation: 5,
                    reason: "not ready within 30s".into(),
                },
                1,
            ),
            (
                Response::Reloaded {
                    generation: 5,
                    pids: vec![10],
                },
                0,
            ),
            (Response::Stopping, 0),
        ] {
            let request = match response {
                Response::Stopping => Request::Stop,
                _ => Request::Reload,
            };
            let (code, ()) = within(async {
                tokio::join!(
                    client(&args, request.clone(), false),
                    answer_one(&mut rx, request.clone(), response)
                )
            })
            .await;
            assert_eq!(code.unwrap(), want);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn long_request_does_not_block_others() {
        let dir = TempDir::new("concurrent");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        within(async {
            let reload = exchange(&path, &Request::Reload);
            let supervisor = async {
                let pending_reload = rx.recv().await.unwrap();
                assert_eq!(pending_reload.request, Request::Reload);
                // While the reload is pending, a status is still answered.
                let (status, ()) = tokio::join!(
                    exchange(&path, &Request::Status),
                    answer_one(
                        &mut rx,
                        Request::Status,
                        Response::Status(Status::default())
                    )
                );
                assert!(matches!(status.unwrap(), Response::Status(_)));
                let _ = pending_reload.reply.send(Response::Reloaded {
                    generation: 2,
                    pids: vec![],
                });
            };
            let (reload, ()) = tokio::join!(reload, supervisor);
            assert!(matches!(
                reload.unwrap(),
                Response::Reloaded { generation: 2, .. }
            ));
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_and_oversized_requests_get_errors() {
        let dir = TempDir::new("malformed");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();

        let answer = within(raw_exchange(&path, b"hello\n".to_vec())).await;
        let Response::Error { message } = answer else {
            panic!("not an error: {answer:?}");
        };
        assert!(message.starts_with("malformed request"), "{message}");

        let answer = within(raw_exchange(&path, vec![b'"'; 70 * 1024])).await;
        let Response::Error { message } = answer else {
            panic!("not an error: {answer:?}");
        };
        assert!(
            message.starts_with("request longer than 64 KiB"),
            "{message}"
        );

        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gone_supervisor_means_shutting_down() {
        let dir = TempDir::new("gone");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        let (answer, ()) = within(async {
            tokio::join!(exchange(&path, &Request::Reload), async {
                drop(rx.recv().await.unwrap().reply);
            })
        })
        .await;
        let Response::Error { message } = answer.unwrap() else {
            panic!("not an error");
        };
        assert_eq!(message, "relaunch is shutting down");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_receiver_closes_and_removes_socket() {
        let dir = TempDir::new("closed");
        let path = dir.path("ctl.sock");
        let rx = Server::bind(&path).unwrap().serve();
        assert!(path.exists());
        drop(rx);
        within(async {
            while std::fs::symlink_metadata(&path).is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stale_socket_is_replaced() {
        let dir = TempDir::new("stale");
        let path = dir.path("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());

        let mut rx = Server::bind(&path).unwrap().serve();
        assert_eq!(mode(&path) & 0o7777, 0o600);
        let (got, ()) = within(async {
            tokio::join!(
                exchange(&path, &Request::Stop),
                answer_one(&mut rx, Request::Stop, Response::Stopping)
            )
        })
        .await;
        assert!(matches!(got.unwrap(), Response::Stopping));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn live_socket_is_an_error() {
        let dir = TempDir::new("live");
        let path = dir.path("ctl.sock");
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ino = std::fs::symlink_metadata(&path).unwrap().ino();

        let err = Server::bind(&path).err().expect("bind should fail");
        assert!(
            err.msg.starts_with(&format!(
                "control socket {} is already in use by pid {}",
                path.display(),
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.hint.unwrap().contains("relaunch stop --control"));
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_files_are_left_alone() {
        let dir = TempDir::new("file");
        let path = dir.path("ctl.sock");
        std::fs::write(&path, "keep me").unwrap();
        let err = Server::bind(&path).err().expect("bind should fail");
        assert!(err.msg.ends_with("exists and is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_folder_is_an_error() {
        let dir = TempDir::new("nofolder");
        let path = dir.path("nope/ctl.sock");
        let err = Server::bind(&path).err().expect("bind should fail");
        assert!(err.msg.ends_with("does not exist"), "{err}");
        assert!(err.hint.unwrap().contains("mkdir -p"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn too_long_path_is_an_error() {
        let dir = TempDir::new("long");
        let path = dir.path(&"x".repeat(120));
        let err = Server::bind(&path).err().expect("bind should fail");
        assert!(err.msg.contains("too long"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn client_errors() {
        let dir = TempDir::new("client");
        let missing = dir.path("missing.sock");
        let err = client(
            &ClientArgs {
                control: Some(missing.clone()),
            },
            Request::Status,
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.msg,
            format!(
                "no relaunch is listening on {} (the file does not exist)",
                missing.display()
            )
        );

        let stale = dir.path("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = exchange(&stale, &Request::Status).await.unwrap_err();
        assert!(err.msg.starts_with("nobody is listening on"), "{err}");

        let err = client(&ClientArgs { control: None }, Request::Status, false)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.hint.unwrap().contains("RELAUNCH_CONTROL"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn drop_removes_only_our_file() {
        let dir = TempDir::new("drop");
        let path = dir.path("ctl.sock");
        let server = Server::bind(&path).unwrap();
        assert!(path.exists());
        drop(server);
        assert!(std::fs::symlink_metadata(&path).is_err());

        let server = Server::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(server);
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "removed someone else's socket"
        );
    }

    #[test]
    fn bind_outside_runtime_is_an_error() {
        let dir = TempDir::new("noruntime");
        let err = Server::bind(&dir.path("ctl.sock"))
            .err()
            .expect("should fail");
        assert!(err.msg.contains("outside the tokio runtime"), "{err}");
        assert!(!dir.path("ctl.sock").exists());
    }

    /// A real peer of another uid is refused. Needs root to setuid a child.
    #[tokio::test(flavor = "current_thread")]
    async fn refuses_other_uid() {
        use nix::sys::wait::waitpid;
        use nix::unistd::{ForkResult, fork};
        use std::os::fd::AsRawFd;

        if !nix::unistd::geteuid().is_root() {
            eprintln!("refuses_other_uid: NOT RUN: needs root to setuid a child");
            return;
        }
        let dir = TempDir::new("otheruid");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        // Open the file gate so the peer-credential gate is what refuses.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

        // Everything the child needs, prepared before fork: it must not allocate.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        let request = b"\"status\"\n";
        let needle = b"permission denied";
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();

        // SAFETY: the child only makes raw syscalls on prepared data, then _exits.
        let child = match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                let verdict: u8 = (|| {
                    // Raw syscalls: change only this (the only) thread's creds.
                    if libc::syscall(libc::SYS_setgid, 65534) != 0
                        || libc::syscall(libc::SYS_setuid, 65534) != 0
                    {
                        return b'S';
                    }
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    if fd < 0 {
                        return b'F';
                    }
                    let sa = &addr as *const libc::sockaddr_un as *const libc::sockaddr;
                    if libc::connect(fd, sa, len) != 0 {
                        return b'C';
                    }
                    libc::send(
                        fd,
                        request.as_ptr().cast(),
                        request.len(),
                        libc::MSG_NOSIGNAL,
                    );
                    let mut buf = [0u8; 4096];
                    let mut n = 0;
                    while n < buf.len() {
                        let r = libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n);
                        if r <= 0 {
                            break;
                        }
                        n += r as usize;
                    }
                    if buf[..n].windows(needle.len()).any(|w| w == needle) {
                        b'D'
                    } else {
                        b'A'
                    }
                })();
                libc::write(wr.as_raw_fd(), (&verdict as *const u8).cast(), 1);
                libc::_exit(0);
            },
            ForkResult::Parent { child } => child,
        };
        drop(wr);
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(rd).unwrap();
        let mut verdict = [0u8; 1];
        within(async {
            tokio::select! {
                read = pipe.read_exact(&mut verdict) => read.map(drop).unwrap(),
                Some(_) = rx.recv() => panic!("a peer of uid 65534 was served"),
            }
        })
        .await;
        let _ = waitpid(child, None);
        assert_eq!(
            verdict[0] as char, 'D',
            "S: setuid failed, C: connect failed, A: the peer was served"
        );
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
    }

    /// Every request, spelled so that a new variant fails to compile here.
    fn all_requests() -> Vec<Request> {
        let all = vec![Request::Status, Request::Reload, Request::Stop];
        for r in &all {
            match r {
                Request::Status | Request::Reload | Request::Stop => {}
            }
        }
        all
    }

    fn request() -> impl proptest::strategy::Strategy<Value = Request> {
        proptest::sample::select(all_requests())
    }

    /// Bytes that look like JSON often enough to reach serde's deeper paths.
    fn jsonish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "[\\[\\]{}\":,a-z0-9_ \\\\\n.-]{0,64}".prop_map(String::into_bytes),
        ]
    }

    proptest::proptest! {
        #[test]
        fn parse_request_never_panics(bytes in jsonish()) {
            if let Err(msg) = parse_request(&bytes) {
                proptest::prop_assert!(msg.starts_with("malformed request"), "{}", msg);
            }
        }

        #[test]
        fn every_request_round_trips(req in request(), pad in "[ \t\r]{0,3}") {
            let mut line = serde_json::to_vec(&req).unwrap();
            line.extend_from_slice(pad.as_bytes());
            line.push(b'\n');
            proptest::prop_assert_eq!(parse_request(&line), Ok(req));
        }

        #[test]
        fn answers_of_any_bytes_never_panic_the_client(bytes in jsonish()) {
            if let Ok(r) = serde_json::from_slice::<Response>(&bytes) {
                // Whatever decodes also renders, as text and as JSON.
                let _ = render(&r, false);
                let _ = render(&r, true);
            }
        }

        #[test]
        fn answers_round_trip(
            generation in proptest::num::u64::ANY,
            pids in proptest::collection::vec(proptest::num::i32::ANY, 0..4),
            text in "\\PC{0,32}",
            kind in 0u8..4,
        ) {
            let r = match kind {
                0 => Response::Reloaded { generation, pids },
                1 => Response::ReloadFailed { generation, reason: text },
                2 => Response::Error { message: text },
                _ => Response::Stopping,
            };
            let json = serde_json::to_string(&r).unwrap();
            let back: Response = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
    }
}
