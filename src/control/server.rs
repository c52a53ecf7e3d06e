//! The server side: `relaunch --control PATH`.
//!
//! What it guarantees:
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
//! - Each connection runs in its own task ([`crate::serve`]'s accept loop,
//!   which `--metrics` shares), so a long `reload` doesn't block `status`.
//!   A request is one line of at most 64 KiB, read within 5 s. If the
//!   supervisor is gone (receiver or reply dropped), the peer is told
//!   "relaunch is shutting down".

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::protocol::{MAX_REQUEST, Request, Response, parse_request};
use crate::error::{Error, Result};
use crate::serve::{self, Conn, Limits, Read};
use crate::sockets::file::{self, SocketFile};

/// A request is one line of at most 64 KiB (a byte more is too long),
/// read within 5 s; the answer is written within 5 s of being known; any
/// number of peers at once (the file mode and the peer check gate them).
const LIMITS: Limits = Limits {
    request: MAX_REQUEST as usize + 1,
    io: Duration::from_secs(5),
    exchange: None,
    connections: None,
};
/// Queue of requests waiting for the supervisor.
const QUEUE: usize = 16;

/// A request from a peer and where to send the answer.
pub struct Incoming {
    pub request: Request,
    pub reply: Reply,
}

/// Where one answer goes: the task that writes it on the peer's connection.
/// The connection's fd is known so that an answer still owed when relaunch
/// upgrades itself can be handed to the new image ([`Reply::adopt`]).
#[derive(Debug)]
pub struct Reply {
    tx: oneshot::Sender<Response>,
    conn: RawFd,
}

impl Reply {
    /// A reply to a peer on connection `conn` (-1: none, as in tests).
    pub fn new(conn: RawFd) -> (Reply, oneshot::Receiver<Response>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx, conn }, rx)
    }

    /// False when nobody waits for the answer any more.
    pub fn send(self, response: Response) -> bool {
        self.tx.send(response).is_ok()
    }

    /// The peer's connection, or -1.
    pub fn conn(&self) -> RawFd {
        self.conn
    }

    /// The answer owed on connection `fd`, handed over by the previous
    /// image: a task writes it there once it is sent. Must be called inside
    /// a tokio runtime; `fd` becomes ours.
    pub fn adopt(fd: RawFd) -> io::Result<Reply> {
        // SAFETY: the handover names fds the previous image left open for
        // us alone; each is adopted once.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        let stream = UnixStream::from_std(std)?;
        let (reply, answer) = Reply::new(fd);
        tokio::spawn(async move {
            let response = answer
                .await
                .unwrap_or_else(|_| error("relaunch is shutting down".into()));
            write_answer(Conn::new(stream, LIMITS), response).await;
        });
        Ok(reply)
    }
}

/// A control client owed an answer, by the number the runtime gave it: the
/// supervisor decides with ids, the connections stay in [`Replies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyId(u64);

/// The answers owed, by id.
#[derive(Debug, Default)]
pub struct Replies {
    next: u64,
    owed: std::collections::HashMap<ReplyId, Reply>,
}

impl Replies {
    /// Keeps `reply` until its answer is sent; the id names it.
    pub fn hold(&mut self, reply: Reply) -> ReplyId {
        self.next += 1;
        let id = ReplyId(self.next);
        self.owed.insert(id, reply);
        id
    }

    /// The reply named `id`, once.
    pub fn take(&mut self, id: ReplyId) -> Option<Reply> {
        self.owed.remove(&id)
    }

    /// The connection of the reply named `id` (see [`Reply::conn`]).
    pub fn conn(&self, id: ReplyId) -> Option<RawFd> {
        self.owed.get(&id).map(Reply::conn).filter(|&fd| fd >= 0)
    }
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

    /// The listening fd, the path and the (device, inode) the path must
    /// still name to be removed: what the next image needs (see
    /// `supervise::handover`).
    pub fn handover(&self) -> (RawFd, PathBuf, (u64, u64)) {
        let (path, identity) = self._file.path_identity();
        (self.listener.as_raw_fd(), path, identity)
    }

    /// The control socket an earlier image served; `fd` becomes ours.
    /// Must be called inside a tokio runtime.
    pub fn adopt(fd: RawFd, path: PathBuf, identity: (u64, u64)) -> io::Result<Server> {
        // SAFETY: the handover names fds the previous image left open for
        // us alone; each is adopted once.
        let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        Ok(Server {
            listener: UnixListener::from_std(std)?,
            _file: SocketFile::adopt(path.clone(), identity),
            path,
        })
    }

    /// Spawns the accept loop on the current runtime and returns the requests
    /// it receives. Each one must be answered through its `reply`.
    pub fn serve(self) -> mpsc::Receiver<Incoming> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let Server {
            path,
            listener,
            _file: file,
        } = self;
        let our_uid = nix::unistd::geteuid().as_raw();
        let closer = tx.clone();
        let closed = async move { closer.closed().await };
        let each = move |conn| handle(conn, tx.clone(), our_uid);
        let what = format!("control socket {}", path.display());
        tokio::spawn(async move {
            serve::accept_loop(listener, what, LIMITS, closed, each).await;
            // Removes the socket file, if still ours.
            drop(file);
        });
        rx
    }
}

/// Whether a peer with `peer_uid` may control a relaunch running as `our_uid`.
fn allowed(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == our_uid
}

/// Serves one connection: one request line in, one answer line out.
async fn handle(mut conn: Conn<UnixStream>, tx: mpsc::Sender<Incoming>, our_uid: u32) {
    let Some(response) = answer(&mut conn, &tx, our_uid).await else {
        return;
    };
    write_answer(conn, response).await;
}

/// Writes one answer line and closes, within the io deadline.
async fn write_answer(conn: Conn<UnixStream>, response: Response) {
    let mut line = match serde_json::to_vec(&response) {
        Ok(l) => l,
        Err(e) => {
            warn!("control socket: cannot encode answer: {e}");
            br#"{"result":"error","message":"relaunch could not encode its answer"}"#.to_vec()
        }
    };
    line.push(b'\n');
    if let Err(e) = conn.answer(&line).await {
        debug!("control socket: cannot send answer: {e}");
    }
}

/// The answer for one connection, or None when the peer sent nothing at all
/// (a probe, or a client that gave up).
async fn answer(
    conn: &mut Conn<UnixStream>,
    tx: &mpsc::Sender<Incoming>,
    our_uid: u32,
) -> Option<Response> {
    let (peer_uid, peer_pid) = match peer(conn.stream(), our_uid) {
        Ok(p) => p,
        Err(refused) => return Some(refused),
    };
    let mut line = match conn.read(|b| b.contains(&b'\n')).await {
        Read::Late => {
            return Some(error(
                "no request within 5 s: send one JSON line such as \"status\"".into(),
            ));
        }
        Read::Failed(e) => {
            debug!(peer_pid, "control socket: cannot read request: {e}");
            return Some(error(format!("cannot read the request: {e}")));
        }
        Read::Nothing => {
            debug!(peer_pid, "control socket: peer closed without a request");
            return None;
        }
        Read::Request(line) => line,
    };
    if let Some(end) = line.iter().position(|&b| b == b'\n') {
        line.truncate(end + 1);
    }
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
    let (reply, answer) = Reply::new(conn.stream().as_raw_fd());
    if tx.send(Incoming { request, reply }).await.is_err() {
        return Some(error("relaunch is shutting down".into()));
    }
    Some(
        answer
            .await
            .unwrap_or_else(|_| error("relaunch is shutting down".into())),
    )
}

/// The peer's uid and pid, if it may control this relaunch; else the refusal.
fn peer(stream: &UnixStream, our_uid: u32) -> Result<(u32, i32), Response> {
    let cred = match getsockopt(stream, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            warn!("control socket: cannot identify the peer: {e}");
            return Err(error(format!("relaunch cannot identify you: {e}")));
        }
    };
    let (peer_uid, peer_pid) = (cred.uid(), cred.pid());
    if !allowed(peer_uid, our_uid) {
        warn!(
            peer_uid,
            peer_pid, "control socket: refused a peer of another user"
        );
        return Err(error(format!(
            "permission denied: uid {peer_uid} may not control this relaunch (only uid {our_uid} and root may)"
        )));
    }
    Ok((peer_uid, peer_pid))
}

fn error(message: String) -> Response {
    Response::Error { message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::exchange;
    use crate::control::testing::{DEADLINE, TempDir, answer_one, within};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// The supervisor names a client by its id; the answer goes to that
    /// client alone, and once.
    #[test]
    fn an_answer_owed_goes_out_once_to_the_client_named() {
        let mut owed = Replies::default();
        let (a, mut got_a) = Reply::new(7);
        let (b, mut got_b) = Reply::new(-1);
        let (a, b) = (owed.hold(a), owed.hold(b));
        assert_ne!(a, b);
        assert_eq!(owed.conn(a), Some(7));
        assert_eq!(owed.conn(b), None, "no connection to hand over");
        assert!(owed.take(b).unwrap().send(Response::Error {
            message: "test".into()
        }));
        assert!(owed.take(b).is_none(), "answered twice");
        assert!(got_b.try_recv().is_ok());
        assert!(got_a.try_recv().is_err(), "answered the wrong client");
        assert_eq!(owed.conn(a), Some(7));
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
    async fn long_request_does_not_block_others() {
        let dir = TempDir::new("concurrent");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        within(async {
            let reload = exchange(&path, &Request::Reload, DEADLINE);
            let supervisor = async {
                let pending_reload = rx.recv().await.unwrap();
                assert_eq!(pending_reload.request, Request::Reload);
                // While the reload is pending, a status is still answered.
                let (status, ()) = tokio::join!(
                    exchange(&path, &Request::Status, DEADLINE),
                    answer_one(&mut rx, Request::Status, Response::Status(Box::default()))
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
            tokio::join!(exchange(&path, &Request::Reload, DEADLINE), async {
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
                exchange(&path, &Request::Stop, DEADLINE),
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
}
