//! sd_notify in both directions.
//!
//! Down: [`NotifySocket`] is the `NOTIFY_SOCKET` relaunch serves to one child
//! generation. It is an abstract-namespace datagram socket
//! (`@relaunch/<our pid>/<tag>/<random>`, nothing on disk to clean up) with
//! `SO_PASSCRED`, so every datagram carries the sender's pid and uid from the
//! kernel. [`NotifySocket::recv`] returns only well-formed messages and drops,
//! with a debug line, any datagram that:
//! - has no credentials, or a pid the kernel could not map (0),
//! - is larger than [`MAX_DATAGRAM`] bytes (detected with `MSG_TRUNC`),
//! - has an embedded NUL (one trailing NUL is tolerated, as systemd does),
//! - is not UTF-8 or not `KEY=VALUE` lines (see [`parse`]).
//!
//! The sender is checked when its datagram arrives, not later: a short-lived
//! sender (`systemd-notify`) is gone by the time the message is handled.
//! Abstract sockets have no file permissions, so any process in our network
//! namespace can send here. With each datagram:
//! - the kernel hands us a pidfd of the sender (`SO_PASSPIDFD`, Linux 6.5+;
//!   before that we open one with `pidfd_open`, and before 5.3 go without);
//! - we read the sender's line of parents from /proc up to relaunch
//!   ([`proc::lineage`]), and keep it in the [`Message`] only if the pidfd
//!   shows the sender still exists afterwards: then its pid was not reused
//!   while we read. A MAINPID= is checked the same way.
//! - a sender whose parents do not lead to relaunch is a stranger: dropped
//!   here, at the cost of one /proc read once it is known (a stranger never
//!   becomes one of ours), and logged at most once per pid per
//!   [`QUIET_FOR`]. The caller asks [`Message::sent_by_any_of`] with the
//!   generation's roots, since only it knows them, and reads nothing.
//!
//! File descriptors that arrive (`SCM_RIGHTS`) are never wanted, except the
//! one of `BARRIER=1`: its sender waits until it is closed, so it stays open
//! in the [`Message`] until the message has been handled (dropped). The
//! others are closed before `recv` returns, whether the message is kept or
//! not. The /proc reads happen on tokio's blocking pool, off the event loop;
//! `recv` is therefore not cancel-safe: run it in a task of its own.
//!
//! Up: [`Systemd`] sends relaunch's own state to the service manager named by
//! relaunch's inherited `NOTIFY_SOCKET` (a path or `@abstract`). Sends never
//! block and never fail loudly: systemd may be gone, and losing a status line
//! must not stop the launcher. Status text is flattened to one line so a
//! child's text can never inject extra fields.
//!
//! Model: systemd `src/shared/notify-recv.c`.

use std::ffi::OsStr;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram as StdDatagram};

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::proc::{self, Lineage, Pidfd};

/// Largest datagram accepted; systemd uses the same bound (PIPE_BUF).
pub const MAX_DATAGRAM: usize = 4096;

/// The kernel's limit on fds in one message (SCM_MAX_FD). Sizing the control
/// buffer for all of them means the control data is never truncated, so every
/// fd that arrives is seen and closed, never leaked.
const SCM_MAX_FD: usize = 253;

/// How often `bind` retries when the random name is already taken.
const BIND_ATTEMPTS: usize = 8;

/// A rejected sender is logged at most once per pid in this long.
pub const QUIET_FOR: Duration = Duration::from_secs(30);

/// SO_PASSPIDFD and SCM_PIDFD (Linux 6.5), not in every libc yet. The
/// option's number differs on alpha, mips, parisc and sparc: there we go
/// without (and fall back to pidfd_open).
const SO_PASSPIDFD: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)) {
    Some(76)
} else {
    None
};
const SCM_PIDFD: libc::c_int = 0x04;

/// One generation's notify socket.
pub struct NotifySocket {
    sock: UnixDatagram,
    env: String,
    /// Checked messages not yet returned by `recv`.
    checked: Mutex<VecDeque<Message>>,
    /// Datagrams were read and are being checked: neither in the socket nor
    /// in `checked` yet (an upgrade waits for this to clear).
    busy: AtomicBool,
}

/// Datagrams read in one go and checked in one trip to the blocking pool:
/// under a flood, one hop per datagram would drain the socket too slowly.
const BATCH: usize = 64;

/// A valid notify datagram and who sent it (per the kernel), with what was
/// learned about the sender and its MAINPID= when it arrived.
#[derive(Debug)]
pub struct Message {
    pub pid: i32,
    pub fields: Vec<(String, String)>,
    /// The sender and its parents below relaunch, read when it arrived;
    /// None when that could not be proven (it was gone, or no /proc).
    sender: Option<Vec<i32>>,
    /// The same for the process MAINPID= names.
    main: Option<Vec<i32>>,
    /// The fd of BARRIER=1, closed when the message is dropped (handled).
    _barrier: Option<OwnedFd>,
}

impl NotifySocket {
    /// Binds an abstract-namespace datagram socket with a unique name
    /// ("@relaunch/<our pid>/<tag>/<random u64>") and SO_PASSCRED.
    /// Must be called inside a tokio runtime.
    pub fn bind(tag: &str) -> io::Result<Self> {
        if tag.is_empty()
            || tag
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_control())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "notify socket tag {tag:?} must be non-empty, without '/' or control characters"
                ),
            ));
        }
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let name = format!(
                "relaunch/{}/{tag}/{:016x}",
                std::process::id(),
                fastrand::u64(..)
            );
            match bind_abstract(&name) {
                Ok(fd) => {
                    let std = StdDatagram::from(fd);
                    std.set_nonblocking(true)?;
                    let sock = UnixDatagram::from_std(std)?;
                    return Ok(NotifySocket {
                        sock,
                        env: format!("@{name}"),
                        checked: Mutex::new(VecDeque::new()),
                        busy: AtomicBool::new(false),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    /// The socket an earlier image bound and gave its children as `env`
    /// (see `supervise::handover`). Must be called inside a tokio runtime.
    pub fn adopt(fd: OwnedFd, env: String) -> io::Result<Self> {
        let std = StdDatagram::from(fd);
        std.set_nonblocking(true)?;
        Ok(NotifySocket {
            sock: UnixDatagram::from_std(std)?,
            env,
            checked: Mutex::new(VecDeque::new()),
            busy: AtomicBool::new(false),
        })
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether datagrams already read are still being checked.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// The value to give the child as NOTIFY_SOCKET (e.g. "@relaunch/123/g2/...").
    pub fn env_value(&self) -> &str {
        &self.env
    }

    /// Next valid datagram from a process under relaunch. Invalid ones are
    /// dropped with a debug line, strangers with a rate-limited warning; fds
    /// that arrive are closed, except a barrier's, which the message keeps.
    /// Not cancel-safe (see the module doc).
    pub async fn recv(&self) -> io::Result<Message> {
        let fd = self.sock.as_raw_fd();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(libc::ucred, RawFd, [RawFd; SCM_MAX_FD]);
        loop {
            if let Some(m) = self.lock().pop_front() {
                return Ok(m);
            }
            let batch = self.read_batch(fd, &mut buf, &mut cmsg).await?;
            self.check_and_queue(batch).await;
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Waits for one datagram, then takes what else is queued; busy from
    /// the first datagram on.
    async fn read_batch(
        &self,
        fd: RawFd,
        buf: &mut [u8],
        cmsg: &mut [u8],
    ) -> io::Result<Vec<(Message, Option<OwnedFd>)>> {
        let first = self
            .sock
            .async_io(Interest::READABLE, || recv_raw(fd, buf, cmsg))
            .await?;
        self.busy.store(true, Ordering::Release);
        let mut batch: Vec<(Message, Option<OwnedFd>)> = Vec::new();
        batch.extend(accept_raw(first, buf));
        // Bounded by datagrams read, valid or not, so a flood cannot
        // keep this task from yielding.
        for _ in 1..BATCH {
            match self
                .sock
                .try_io(Interest::READABLE, || recv_raw(fd, buf, cmsg))
            {
                Ok(raw) => batch.extend(accept_raw(raw, buf)),
                // Whatever else went wrong comes again at the next wait,
                // after what was read is handled.
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Checks the senders on the blocking pool (they read /proc) and queues
    /// the messages of processes under relaunch.
    async fn check_and_queue(&self, batch: Vec<(Message, Option<OwnedFd>)>) {
        if batch.is_empty() {
            return;
        }
        let (msgs, whos): (Vec<Message>, Vec<_>) = batch
            .into_iter()
            .map(|(m, pidfd)| {
                let who = (m.pid, pidfd, m.mainpid());
                (m, who)
            })
            .unzip();
        let checked = tokio::task::spawn_blocking(move || {
            whos.into_iter()
                .map(|(pid, pidfd, main)| check(pid, pidfd, main))
                .collect::<Vec<_>>()
        })
        .await;
        let checked = match checked {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("notify sender check failed: {e}");
                return;
            }
        };
        let mut queue = self.lock();
        for (mut msg, verdict) in msgs.into_iter().zip(checked) {
            // None: a stranger, logged by check.
            if let Some((sender, main)) = verdict {
                msg.sender = sender;
                msg.main = main;
                queue.push_back(msg);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A raw datagram decoded, with the fds it carried dealt with: a barrier's
/// kept in the message, the others closed. None (with a debug line) when
/// invalid. Returns the sender's pidfd beside it.
fn accept_raw(raw: Raw, buf: &[u8]) -> Option<(Message, Option<OwnedFd>)> {
    let data = &buf[..raw.len.min(buf.len())];
    let mut msg = match decode(data, raw.len, raw.ctrunc, raw.cred) {
        Ok(msg) => msg,
        Err(why) => {
            tracing::debug!(pid = ?raw.cred.map(|c| c.0), "dropping notify datagram: {why}");
            return None;
        }
    };
    let mut fds = raw.fds;
    if msg.flag("BARRIER") && fds.len() == 1 {
        msg._barrier = fds.pop();
    }
    if !fds.is_empty() {
        tracing::debug!(
            count = fds.len(),
            pid = msg.pid,
            "closing fds sent to the notify socket unasked"
        );
    }
    // Unwanted fds close here, kept message or not.
    drop(fds);
    Some((msg, raw.pidfd))
}

/// A process and its parents below relaunch; None when unproven.
type Chain = Option<Vec<i32>>;

/// The /proc side of a datagram's arrival (blocking). None for a stranger;
/// otherwise the chains of the sender and of MAINPID=.
fn check(pid: i32, pidfd: Option<OwnedFd>, main: Option<i32>) -> Option<(Chain, Chain)> {
    let home = std::process::id() as i32;
    let pidfd = pidfd
        .map(Pidfd::from_owned)
        .or_else(|| Pidfd::open(pid).ok());
    let sender = match lineage(pid, pidfd.as_ref(), home) {
        Lineage::Under(chain) => Some(chain),
        Lineage::Outside => {
            Rejects::note(pid);
            return None;
        }
        Lineage::Unknown => None,
    };
    let main = main.and_then(|m| {
        let fd = Pidfd::open(m).ok();
        match lineage(m, fd.as_ref(), home) {
            Lineage::Under(chain) => Some(chain),
            _ => None,
        }
    });
    Some((sender, main))
}

/// `pid`'s lineage, trusted only if `pidfd` (when we have one) shows the
/// process still exists after the reads. Known strangers cost one read.
fn lineage(pid: i32, pidfd: Option<&Pidfd>, home: i32) -> Lineage {
    let Some(first) = proc::stat(pid) else {
        return Lineage::Unknown;
    };
    if Rejects::known(pid, first.start) {
        return Lineage::Outside;
    }
    let found = proc::lineage(pid, first, home, proc::stat);
    if pidfd.is_some_and(|fd| !fd.exists()) {
        return Lineage::Unknown;
    }
    if found == Lineage::Outside {
        Rejects::remember(pid, first.start);
    }
    found
}

/// Whether a rejected message from `pid` deserves a warning: at most one per
/// pid per QUIET_FOR, and at most ten in all, so that a stranger forking a
/// new sender for every datagram cannot flood the log either.
pub fn worth_a_warning(pid: i32) -> bool {
    static LAST: Mutex<Vec<(i32, Instant)>> = Mutex::new(Vec::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    last.retain(|(_, at)| at.elapsed() < QUIET_FOR);
    if last.len() >= 10 || last.iter().any(|(p, _)| *p == pid) {
        return false;
    }
    last.push((pid, Instant::now()));
    true
}

/// Senders found outside relaunch's tree, by pid and start time: a
/// stranger never becomes one of ours, so one /proc read tells it again.
struct Rejects;

const MAX_REJECTS: usize = 1024;

static REJECTED: Mutex<Option<HashMap<i32, (u64, Instant)>>> = Mutex::new(None);

impl Rejects {
    fn with<T>(f: impl FnOnce(&mut HashMap<i32, (u64, Instant)>) -> T) -> T {
        let mut g = REJECTED.lock().unwrap_or_else(|e| e.into_inner());
        f(g.get_or_insert_with(HashMap::new))
    }

    fn known(pid: i32, start: u64) -> bool {
        Self::with(|m| match m.get_mut(&pid) {
            Some((s, seen)) if *s == start => {
                *seen = Instant::now();
                true
            }
            _ => false,
        })
    }

    fn remember(pid: i32, start: u64) {
        Self::with(|m| {
            // Bounded: forget senders not heard from in a while, and all of
            // them if that is not enough (forgetting only costs a /proc read).
            if m.len() >= MAX_REJECTS {
                m.retain(|_, (_, seen)| seen.elapsed() < QUIET_FOR);
                if m.len() >= MAX_REJECTS / 2 {
                    m.clear();
                }
            }
            m.insert(pid, (start, Instant::now()));
        })
    }

    /// A datagram from stranger `pid` was dropped.
    fn note(pid: i32) {
        if worth_a_warning(pid) {
            tracing::warn!(
                sender = pid,
                "ignoring a notify message from pid {pid}, a process outside relaunch's children; \
                 further ones from it are dropped without a word for {}s",
                QUIET_FOR.as_secs()
            );
        }
    }
}

impl Message {
    fn get(&self, key: &str) -> Option<&str> {
        // First occurrence wins, as in systemd.
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, v)| k == key && v == "1")
    }
    pub fn ready(&self) -> bool {
        self.flag("READY")
    }
    pub fn reloading(&self) -> bool {
        self.flag("RELOADING")
    }
    pub fn stopping(&self) -> bool {
        self.flag("STOPPING")
    }
    pub fn status(&self) -> Option<&str> {
        self.get("STATUS")
    }
    /// MAINPID as a positive pid; anything else is ignored.
    pub fn mainpid(&self) -> Option<i32> {
        self.get("MAINPID")
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|&p| p > 0)
    }

    /// Whether one of `roots` or a descendant sent this, as seen when it
    /// arrived. `roots[0]` is the child relaunch forked: its pid cannot be
    /// reused before relaunch reaps it, so a sender that was gone before it
    /// could be checked still counts when it is that child itself.
    pub fn sent_by_any_of(&self, roots: &[i32]) -> bool {
        match &self.sender {
            Some(chain) => chain.iter().any(|p| roots.contains(p)),
            None => roots.first() == Some(&self.pid),
        }
    }

    /// MAINPID=, if it named a process under one of `roots` when it arrived.
    pub fn main_pid_under(&self, roots: &[i32]) -> Option<i32> {
        let chain = self.main.as_ref()?;
        chain
            .iter()
            .any(|p| roots.contains(p))
            .then_some(self.mainpid())
            .flatten()
    }
}

/// Pure: newline-separated KEY=VALUE lines; empty lines skipped; a line
/// without '=' is an error; NUL is an error.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(format!("NUL byte at offset {at}"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 at offset {}", e.valid_up_to()))?;
    let mut fields = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} has no '=': {line:?}", i + 1));
        };
        if key.is_empty() {
            return Err(format!("line {} has an empty key: {line:?}", i + 1));
        }
        fields.push((key.to_string(), value.to_string()));
    }
    Ok(fields)
}

/// What one `recvmsg` returned, before validation. Fds close on drop.
struct Raw {
    /// The datagram's real length (MSG_TRUNC makes the kernel report it even
    /// when it did not fit).
    len: usize,
    ctrunc: bool,
    cred: Option<(i32, u32)>,
    fds: Vec<OwnedFd>,
    /// The sender's pidfd (SCM_PIDFD), when the kernel sends one.
    pidfd: Option<OwnedFd>,
}

/// Pure: the checks notify-recv.c makes, in its order.
fn decode(
    data: &[u8],
    real_len: usize,
    ctrunc: bool,
    cred: Option<(i32, u32)>,
) -> Result<Message, String> {
    if ctrunc {
        return Err("control data truncated".into());
    }
    if real_len > MAX_DATAGRAM || data.len() < real_len {
        return Err(format!(
            "{real_len} bytes, more than the {MAX_DATAGRAM} allowed"
        ));
    }
    let Some((pid, _uid)) = cred else {
        return Err("no sender credentials".into());
    };
    if pid <= 0 {
        return Err(format!("sender pid {pid} is not visible from here"));
    }
    // A trailing NUL is what a C sender writing sizeof(buf) leaves; tolerate it.
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    let fields = parse(data)?;
    Ok(Message {
        pid,
        fields,
        sender: None,
        main: None,
        _barrier: None,
    })
}

/// One non-blocking `recvmsg`. WouldBlock passes through so tokio re-arms.
fn recv_raw(fd: RawFd, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Raw> {
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<()>(fd, &mut iov, Some(cmsg), flags) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        };
        let mut raw = Raw {
            len: msg.bytes,
            ctrunc: msg.flags.contains(MsgFlags::MSG_CTRUNC),
            cred: None,
            fds: Vec::new(),
            pidfd: None,
        };
        // cmsgs() refuses when MSG_CTRUNC is set; the buffer is sized so it
        // cannot be (see SCM_MAX_FD), and decode drops such a message anyway.
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(uc) => {
                        raw.cred = Some((uc.pid(), uc.uid()));
                    }
                    ControlMessageOwned::ScmRights(fds) => {
                        raw.fds.extend(fds.into_iter().map(own_fd));
                    }
                    // A negative value is the error the kernel met making it
                    // (the sender is gone): no pidfd then.
                    ControlMessageOwned::Unknown(u)
                        if u.cmsg_header.cmsg_level == libc::SOL_SOCKET
                            && u.cmsg_header.cmsg_type == SCM_PIDFD =>
                    {
                        if let Ok(b) = <[u8; 4]>::try_from(&u.data_bytes[..]) {
                            let fd = RawFd::from_ne_bytes(b);
                            if fd >= 0 {
                                raw.pidfd = Some(own_fd(fd));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        return Ok(raw);
    }
}

fn own_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel just installed this fd in our table for this message;
    // nothing else in the process knows its number, so we are its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn bind_abstract(name: &str) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // Before bind, so no datagram can be queued without credentials.
    socket::setsockopt(&fd, sockopt::PassCred, &true)?;
    if let Some(opt) = SO_PASSPIDFD {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, an int option with its size. Kernels before
        // 6.5 refuse it (ENOPROTOOPT); recv then opens a pidfd itself.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    socket::bind(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Client for relaunch's own service manager.
pub struct Systemd {
    sock: StdDatagram,
    target: SocketAddr,
    /// For log lines.
    name: String,
}

impl Systemd {
    /// From relaunch's own NOTIFY_SOCKET value (snapshot taken at start).
    /// Supports paths and "@abstract". None when unset, empty or unusable.
    pub fn from_env(value: Option<&OsStr>) -> Option<Self> {
        let value = value?;
        let bytes = value.as_bytes();
        let target = match target_addr(bytes) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(
                    "ignoring NOTIFY_SOCKET={}: {why}; systemd will not hear from relaunch",
                    value.to_string_lossy()
                );
                return None;
            }
        };
        let sock = match StdDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot create a socket to notify systemd: {e}");
                return None;
            }
        };
        Some(Systemd {
            sock,
            target,
            name: value.to_string_lossy().into_owned(),
        })
    }

    /// Sends one datagram; errors are logged at debug level and otherwise
    /// ignored (systemd may be gone); never blocks.
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.target) {
            tracing::debug!(socket = %self.name, "notify to systemd failed: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// What Type=notify-reload requires before the matching READY=1.
    pub fn reloading(&self, status: &str) {
        self.send(&reloading_msg(monotonic_usec(), status));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `FDSTORE=1` with `fd` as `name`: systemd keeps a copy while the unit
    /// lives and hands it back (`LISTEN_FDS`) when it starts relaunch again.
    /// systemd drops it, with a line in its journal, unless the unit sets
    /// `FileDescriptorStoreMax=`; nothing comes back to say so.
    pub fn store(&self, name: &str, fd: RawFd) -> io::Result<()> {
        let msg = format!("FDSTORE=1\nFDNAME={}", one_line(name));
        let to = nix_addr(self.name.as_bytes()).map_err(io::Error::from)?;
        let fds = [fd];
        socket::sendmsg(
            self.sock.as_raw_fd(),
            &[io::IoSlice::new(msg.as_bytes())],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&to),
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// `FDSTOREREMOVE=1`: drop what the store keeps as `name`.
    pub fn unstore(&self, name: &str) {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={}", one_line(name)));
    }

    /// `fd` in the store as `name`, in place of what it kept there: the
    /// store keeps every fd sent under a name and would hand back the old
    /// one too, so it is dropped first.
    pub fn restore(&self, name: &str, fd: RawFd) -> io::Result<()> {
        self.unstore(name);
        self.store(name, fd)
    }
}

/// NOTIFY_SOCKET's value as nix's address (for sendmsg with fds).
fn nix_addr(value: &[u8]) -> nix::Result<UnixAddr> {
    match value.split_first() {
        Some((b'@', name)) => UnixAddr::new_abstract(name),
        _ => UnixAddr::new(value),
    }
}

/// Pure: Ok(None) for unset-equivalent (empty), Err for values we cannot use.
fn target_addr(value: &[u8]) -> Result<Option<SocketAddr>, String> {
    match value.first() {
        None => Ok(None),
        Some(b'@') => SocketAddr::from_abstract_name(&value[1..])
            .map(Some)
            .map_err(|e| e.to_string()),
        Some(b'/') => SocketAddr::from_pathname(OsStr::from_bytes(value))
            .map(Some)
            .map_err(|e| e.to_string()),
        Some(_) => Err("expected an absolute path or @abstract name".into()),
    }
}

/// Pure: newlines and NULs would split or end the datagram's field.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\0'], " ")
}

fn reloading_msg(now_usec: u64, status: &str) -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={now_usec}\nSTATUS={}",
        one_line(status)
    )
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares against.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists
    // on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn sender() -> StdDatagram {
        StdDatagram::unbound().expect("unbound datagram socket")
    }

    fn addr_of(ns: &NotifySocket) -> SocketAddr {
        let name = ns.env_value().strip_prefix('@').expect("abstract name");
        SocketAddr::from_abstract_name(name).expect("abstract address")
    }

    async fn next(ns: &NotifySocket) -> Message {
        tokio::time::timeout(DEADLINE, ns.recv())
            .await
            .expect("no notify message within 5 s")
            .expect("recv failed")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn receives_with_our_credentials() {
        let ns = NotifySocket::bind("g1").unwrap();
        let pid = std::process::id();
        assert!(ns.env_value().starts_with(&format!("@relaunch/{pid}/g1/")));
        sender()
            .send_to_addr(b"READY=1\nSTATUS=hi", &addr_of(&ns))
            .unwrap();
        let m = next(&ns).await;
        assert_eq!(m.pid, pid as i32);
        assert!(m.ready());
        assert!(!m.reloading());
        assert_eq!(m.status(), Some("hi"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn names_are_unique() {
        let a = NotifySocket::bind("g").unwrap();
        let b = NotifySocket::bind("g").unwrap();
        assert_ne!(a.env_value(), b.env_value());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_tags_are_refused() {
        for tag in ["", "a/b", "a\0b", "a\nb"] {
            let e = NotifySocket::bind(tag)
                .err()
                .expect("tag should be refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{tag:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn invalid_datagrams_are_skipped() {
        let ns = NotifySocket::bind("bad").unwrap();
        let to = addr_of(&ns);
        let s = sender();
        s.send_to_addr(b"READY=1\0STATUS=nul", &to).unwrap();
        s.send_to_addr(b"READY=1\nSTATUS=\xff", &to).unwrap();
        s.send_to_addr(b"READY", &to).unwrap();
        let big = format!("STATUS={}", "x".repeat(MAX_DATAGRAM));
        s.send_to_addr(big.as_bytes(), &to).unwrap();
        s.send_to_addr(b"STATUS=second\n", &to).unwrap();
        let m = next(&ns).await;
        assert_eq!(m.fields, vec![("STATUS".into(), "second".into())]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn accepts_exactly_max_size_and_trailing_nul() {
        let ns = NotifySocket::bind("max").unwrap();
        let to = addr_of(&ns);
        let s = sender();
        let max = format!("STATUS={}", "y".repeat(MAX_DATAGRAM - 7));
        assert_eq!(max.len(), MAX_DATAGRAM);
        s.send_to_addr(max.as_bytes(), &to).unwrap();
        s.send_to_addr(b"STOPPING=1\0", &to).unwrap();
        assert_eq!(
            next(&ns).await.status().map(str::len),
            Some(MAX_DATAGRAM - 7)
        );
        assert!(next(&ns).await.stopping());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fds_sent_unasked_are_closed() {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let ns = NotifySocket::bind("fds").unwrap();
        let (rd, wr) = nix::unistd::pipe().unwrap();
        fcntl(&rd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let s = sender();
        let to = UnixAddr::new_abstract(&ns.env_value().as_bytes()[1..]).unwrap();
        let fds = [wr.as_raw_fd()];
        socket::sendmsg(
            s.as_raw_fd(),
            &[IoSlice::new(b"READY=1")],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        let m = next(&ns).await;
        assert!(m.ready());
        drop(wr);
        // EOF only if no write end is left open anywhere, i.e. recv closed
        // the copy it received; a leak shows up as EAGAIN.
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&rd, &mut b), Ok(0));
    }

    #[test]
    fn the_kernel_hands_over_the_senders_pidfd() {
        let fd = bind_abstract(&format!("relaunch-test-pidfd/{}", fastrand::u64(..))).unwrap();
        let Some(opt) = SO_PASSPIDFD else { return };
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket and an int-sized out buffer.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            eprintln!("SO_PASSPIDFD unknown to this kernel (before 6.5): pidfd_open is used");
            return;
        }
        assert_eq!(on, 1, "bind_abstract asks for SCM_PIDFD");
        let addr = socket::getsockname::<UnixAddr>(fd.as_raw_fd()).unwrap();
        socket::sendto(sender().as_raw_fd(), b"READY=1", &addr, MsgFlags::empty()).unwrap();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(libc::ucred, RawFd, [RawFd; SCM_MAX_FD]);
        let raw = recv_raw(fd.as_raw_fd(), &mut buf, &mut cmsg).unwrap();
        assert_eq!(raw.cred.map(|c| c.0), Some(std::process::id() as i32));
        let pidfd = Pidfd::from_owned(raw.pidfd.expect("a pidfd with the datagram"));
        assert!(pidfd.exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_barrier_fd_stays_open_until_the_message_is_dropped() {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let ns = NotifySocket::bind("barrier").unwrap();
        let (rd, wr) = nix::unistd::pipe().unwrap();
        fcntl(&rd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let to = UnixAddr::new_abstract(&ns.env_value().as_bytes()[1..]).unwrap();
        let fds = [wr.as_raw_fd()];
        socket::sendmsg(
            sender().as_raw_fd(),
            &[IoSlice::new(b"BARRIER=1")],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        drop(wr);
        let m = next(&ns).await;
        let mut b = [0u8; 1];
        // The message holds the only write end left: no EOF yet.
        assert_eq!(
            nix::unistd::read(&rd, &mut b),
            Err(nix::errno::Errno::EAGAIN)
        );
        drop(m);
        assert_eq!(nix::unistd::read(&rd, &mut b), Ok(0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn senders_and_mainpids_are_checked_on_arrival() {
        let ns = NotifySocket::bind("who").unwrap();
        // A child of ours that sends READY=1 and MAINPID= of itself, then
        // stays until its stdin closes.
        let script = format!(
            "import os, socket, sys\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             s.sendto(b'READY=1\\nMAINPID=%d' % os.getpid(), '\\0' + {:?})\n\
             s.sendto(b'MAINPID=1', '\\0' + {:?})\n\
             sys.stdin.read()\n",
            &ns.env_value()[1..],
            &ns.env_value()[1..]
        );
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 must be installed for these tests");
        let pid = child.id() as i32;
        let m = next(&ns).await;
        assert_eq!(m.pid, pid);
        assert!(m.sent_by_any_of(&[pid]));
        assert!(m.sent_by_any_of(&[12345678, pid]));
        assert!(!m.sent_by_any_of(&[12345678]));
        assert_eq!(m.main_pid_under(&[pid]), Some(pid));
        assert_eq!(m.main_pid_under(&[12345678]), None);
        // MAINPID=1 is not ours, whoever sends it.
        let m = next(&ns).await;
        assert!(m.sent_by_any_of(&[pid]));
        assert_eq!(m.mainpid(), Some(1));
        assert_eq!(m.main_pid_under(&[pid]), None);
        drop(child.stdin.take());
        child.wait().unwrap();

        // Sent by relaunch itself: under no child.
        sender().send_to_addr(b"READY=1", &addr_of(&ns)).unwrap();
        let m = next(&ns).await;
        assert!(!m.sent_by_any_of(&[pid]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn systemd_client_reaches_abstract_socket() {
        let ns = NotifySocket::bind("up").unwrap();
        let sd = Systemd::from_env(Some(OsStr::new(ns.env_value()))).expect("client");
        sd.ready("x\ny=1");
        let m = next(&ns).await;
        assert!(m.ready());
        // The newline in the status must not have become a field.
        assert_eq!(m.status(), Some("x y=1"));
        assert_eq!(m.fields.len(), 2);

        sd.reloading("reloading");
        let before = monotonic_usec();
        let m = next(&ns).await;
        assert!(m.reloading());
        let usec: u64 = m
            .fields
            .iter()
            .find(|(k, _)| k == "MONOTONIC_USEC")
            .and_then(|(_, v)| v.parse().ok())
            .expect("MONOTONIC_USEC is an integer");
        assert!(
            usec <= before && before - usec < 5_000_000,
            "{usec} vs {before}"
        );

        sd.stopping();
        assert!(next(&ns).await.stopping());
        sd.status("s");
        assert_eq!(next(&ns).await.status(), Some("s"));
    }

    #[test]
    fn systemd_client_reaches_path_socket() {
        let dir = std::env::temp_dir().join(format!(
            "relaunch-notify-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let rx = StdDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(DEADLINE)).unwrap();
        let sd = Systemd::from_env(Some(path.as_os_str())).expect("client");
        sd.status("on disk");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(&buf[..n.unwrap()], b"STATUS=on disk");
    }

    /// What systemd's fd store reads: the old socket's name dropped first,
    /// then the new fd under that name, so only the new one comes back.
    #[test]
    fn restore_drops_the_name_then_stores_the_new_fd() {
        let name = format!(
            "relaunch-restore-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        );
        let rx = StdDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_read_timeout(Some(DEADLINE)).unwrap();
        let sd = Systemd::from_env(Some(OsStr::new(&format!("@{name}")))).expect("client");
        let new = StdDatagram::unbound().unwrap();
        sd.restore("relaunch.http", new.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"FDSTOREREMOVE=1\nFDNAME=relaunch.http");
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = socket::recvmsg::<()>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let fds: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                socket::ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let bytes = msg.bytes;
        assert_eq!(&buf[..bytes], b"FDSTORE=1\nFDNAME=relaunch.http");
        assert_eq!(fds.len(), 1);
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        // SAFETY: SCM_RIGHTS just gave us this fd.
        let got = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let inode = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(
            inode(got.as_fd()),
            inode(new.as_fd()),
            "another socket was stored"
        );
    }

    #[test]
    fn systemd_from_env_values() {
        assert!(Systemd::from_env(None).is_none());
        assert!(Systemd::from_env(Some(OsStr::new(""))).is_none());
        assert!(Systemd::from_env(Some(OsStr::new("relative/path"))).is_none());
        assert!(Systemd::from_env(Some(OsStr::new("vsock:2:1234"))).is_none());
        let long = format!("/{}", "a".repeat(200));
        assert!(Systemd::from_env(Some(OsStr::new(&long))).is_none());
        assert!(Systemd::from_env(Some(OsStr::new("@x"))).is_some());
        assert!(Systemd::from_env(Some(OsStr::new("/run/systemd/notify"))).is_some());
    }

    #[test]
    fn send_to_nobody_is_quiet() {
        let sd = Systemd::from_env(Some(OsStr::new("@relaunch-test-nobody-listens"))).unwrap();
        sd.ready("x"); // must neither panic nor block
    }

    type Case = (&'static [u8], &'static [(&'static str, &'static str)]);

    #[test]
    fn parse_table() {
        let ok: &[Case] = &[
            (b"", &[]),
            (b"\n\n", &[]),
            (b"READY=1", &[("READY", "1")]),
            (
                b"READY=1\nSTATUS=a=b\n",
                &[("READY", "1"), ("STATUS", "a=b")],
            ),
            (b"STATUS=", &[("STATUS", "")]),
            (b"\nA=1\n\nB=2", &[("A", "1"), ("B", "2")]),
            (b"STATUS= sp ace ", &[("STATUS", " sp ace ")]),
            ("STATUS=héllo".as_bytes(), &[("STATUS", "héllo")]),
        ];
        for (input, want) in ok {
            let got = parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{input:?}");
        }
        let bad: &[(&[u8], &str)] = &[
            (b"READY", "line 1 has no '='"),
            (b"A=1\nnope", "line 2 has no '='"),
            (b"=1", "line 1 has an empty key"),
            (b"A=1\0", "NUL byte at offset 3"),
            (b"A=\xff", "not valid UTF-8 at offset 2"),
        ];
        for (input, want) in bad {
            let e = parse(input).expect_err("should fail");
            assert!(e.starts_with(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn decode_checks() {
        let c = Some((42, 1000));
        assert!(decode(b"READY=1", 7, false, c).is_ok());
        assert!(decode(b"READY=1\0", 8, false, c).is_ok());
        assert!(decode(b"READY=1\0\0", 9, false, c).is_err());
        assert!(
            decode(b"READY=1", 7, false, None)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(decode(b"READY=1", 7, false, Some((0, 0))).is_err());
        assert!(decode(b"READY=1", 7, true, c).is_err());
        assert!(decode(b"READY=1", MAX_DATAGRAM + 1, false, c).is_err());
    }

    #[test]
    fn message_accessors() {
        let m = |s: &str| decode(s.as_bytes(), s.len(), false, Some((1, 0))).unwrap();
        assert!(!m("READY=0").ready());
        assert!(m("STATUS=a\nREADY=1").ready());
        assert_eq!(m("STATUS=a\nSTATUS=b").status(), Some("a"));
        assert_eq!(m("MAINPID=123").mainpid(), Some(123));
        assert_eq!(m("MAINPID=0").mainpid(), None);
        assert_eq!(m("MAINPID=-5").mainpid(), None);
        assert_eq!(m("MAINPID=x").mainpid(), None);
        assert_eq!(m("").mainpid(), None);
    }

    #[test]
    fn reloading_message_shape() {
        assert_eq!(
            reloading_msg(17, "a\nb"),
            "RELOADING=1\nMONOTONIC_USEC=17\nSTATUS=a b"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_roundtrips_fields(fields in proptest::collection::vec(("[A-Z_]{1,8}", "[^\n\0]{0,16}"), 0..8)) {
            let text: String = fields.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let got = parse(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(got, fields);
        }
    }
}
