//! "Is the new generation waiting for connections yet?", answered from /proc.
//!
//! `--ready auto` needs to know, without any help from the app, when a freshly
//! started generation waits on one of relaunch's listening sockets. relaunch
//! calls [`scan_each`] every few milliseconds while a generation is starting, with
//! the generation's root pid(s) and the inodes of its listeners (from
//! [`socket_inode`]).
//!
//! # How it works
//!
//! [`scan_each`] walks the process tree under the roots ([`proc::tree`]): every process
//! and every thread of the child and of its descendants (gunicorn masters fork
//! workers, `sh -c` wrappers fork the real server). In each process:
//!
//! 1. "Our fds" are the fd numbers whose `/proc/PID/fd/N` link is
//!    `socket:[INODE]` with INODE one of our listeners. They are always
//!    resolved, because descendants may dup the sockets away from 3, 4, ….
//! 2. Epoll: for each `anon_inode:[eventpoll]` fd, `/proc/PID/fdinfo/FD` lists
//!    the registered targets as `tfd: N events: HEX … ino:HEX`. A target whose
//!    `ino` is one of our inodes, registered for EPOLLIN, counts as waiting
//!    (being registered is enough: an event loop registers its listeners and
//!    then sits in `epoll_wait`). Kernels that print no `ino:` fall back to
//!    resolving `tfd` through this process's fd table.
//! 3. Blocking calls: `/proc/PID/task/TID/syscall` shows the syscall a thread
//!    is blocked in and its arguments. `accept`/`accept4` on one of our fds
//!    counts. For `poll`/`ppoll` the `struct pollfd` array, and for
//!    `select`/`pselect6` the read `fd_set`, are read from the process with
//!    `process_vm_readv` and must name one of our fds for reading. Syscall
//!    numbers are per architecture: x86_64 and aarch64 are known; elsewhere
//!    only the epoll check works.
//! 4. Accepted connections: a process holding a TCP socket whose local
//!    address is a listener's and which is not listening (per
//!    `/proc/net/tcp` and `tcp6`) has accepted from it, so it is ready. A
//!    server busy serving is rarely caught blocked by steps 1-3; a server that
//!    holds its connections is caught here. Unix listeners are not checked
//!    this way.
//!
//! Processes and threads that vanish mid-scan are skipped: a scan is a
//! snapshot and the caller simply scans again.
//!
//! # Where it cannot see
//!
//! [`Verdict::NotYet`] carries a `blind` reason when the scan could not look
//! somewhere, so relaunch can warn that auto-readiness may never fire:
//!
//! - Permissions: `/proc/PID/syscall`, `/proc/PID/fd` and `process_vm_readv`
//!   need ptrace-level access. A child running as another user, one that made
//!   itself non-dumpable, `kernel.yama.ptrace_scope` >= 2, or a seccomp/LSM
//!   policy can deny them.
//! - io_uring: an accept or poll submitted to an io_uring instance shows no
//!   syscall and no epoll entry. A process holding `anon_inode:[io_uring]` is
//!   reported when nothing else was found.
//!
//! And where it is blind without knowing it (NotYet forever, no reason given):
//!
//! - a server that accepts in a helper process that does not descend from the
//!   child (handed the socket over a Unix socket, or daemonized by a double
//!   fork so that it was reparented away from the tree);
//! - busy-polling with non-blocking `accept` and no poll/select/epoll at all,
//!   until it holds a connection it accepted (step 4);
//! - 32-bit programs on a 64-bit kernel (their syscall numbers differ);
//! - threads created without a shared fd table (`clone` without CLONE_FILES);
//! - a `poll` with more than [`MAX_POLLFDS`] entries where ours come later.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;

use crate::proc::{self, Link};

/// The inode of a socket, the identity that survives dup and fork.
pub fn socket_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {} is not a socket", fd.as_raw_fd()),
        ));
    }
    Ok(st.st_ino)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Found: which pid/tid and how ("epoll", "accept4", "poll", "select",
    /// ...), for the log line. For "epoll", `tid` is the pid: the
    /// registration belongs to the process, not to a thread.
    Waiting {
        pid: i32,
        tid: i32,
        how: &'static str,
    },
    /// Process `pid` holds a connection accepted from one of our listeners:
    /// it has demonstrably accepted. Sampling syscalls can miss a server that
    /// is busy serving; this cannot.
    Accepted { pid: i32 },
    /// Not yet. `blind` explains, when we could not look (EPERM on
    /// /proc/PID/syscall or process_vm_readv, yama ptrace_scope, an io_uring
    /// instance seen and nothing else found), why auto-readiness may never
    /// fire. It is a complete sentence with what to do, ready to log.
    NotYet { blind: Option<String> },
    /// /proc is not there at all (said once at start, see [`proc_missing`]).
    NoProc,
}

/// One snapshot per group of roots (a child and its MAINPID): is any process
/// under them waiting on one of `inodes`, or holding a connection accepted
/// from one? The process table, and /proc/net when needed, are read once for
/// all groups, not once per child.
pub fn scan_each(groups: &[Vec<i32>], inodes: &HashSet<u64>) -> Vec<Verdict> {
    if !proc::available() {
        return groups.iter().map(|_| Verdict::NoProc).collect();
    }
    let trees = proc::Trees::new();
    groups
        .iter()
        .map(|roots| verdict(trees.tree(roots), inodes))
        .collect()
}

/// The one line relaunch says at start when /proc cannot be read: what is
/// lost and what to do. None when /proc is there.
pub fn proc_missing(auto: bool) -> Option<String> {
    if proc::available() {
        return None;
    }
    let ready = if auto {
        "--ready auto cannot see when a server waits for connections, so a new \
         generation counts as ready when it sends READY=1 itself or at --ready-timeout; "
    } else {
        ""
    };
    Some(format!(
        "/proc cannot be read here (not mounted, or hidden): {ready}notify messages are \
         trusted only from the child itself, not from its descendants; orphans the server \
         leaves behind cannot be found, so they are not stopped when relaunch exits. Use \
         --ready notify (READY=1 from the server process) or --ready delay:D, or mount /proc"
    ))
}

fn verdict(pids: Vec<i32>, inodes: &HashSet<u64>) -> Verdict {
    let mut notes = Notes::default();
    for pid in pids {
        if let Some(found) = scan_process(pid, inodes, &mut notes) {
            return found;
        }
    }
    let uring = notes.uring.map(|pid| {
        format!(
            "pid {pid} uses io_uring, whose waits /proc cannot show; \
             auto readiness may never fire: pick another --ready mode"
        )
    });
    Verdict::NotYet {
        blind: notes.blind.or(uring),
    }
}

/// Reads the TCP sockets that matter (listening, or connected and not yet
/// closed by their holder) when a process holds a socket that is not a
/// listener, right after its fds were listed: a fast server holds a
/// connection for well under a millisecond, so no snapshot is reused.
/// Returns the first pid in `held` (pid, socket inode) whose socket is a
/// connection accepted from one of the listeners in `inodes`.
fn accepted(held: &[(i32, u64)], inodes: &HashSet<u64>) -> Option<i32> {
    if held.is_empty() {
        return None;
    }
    let states = (1 << proc::TCP_LISTEN) | (1 << proc::TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);
    let tcp = proc::tcp_sockets(states).unwrap_or_default();
    accepted_by(&tcp, held, inodes)
}

/// The peer closed first; the server still holds the socket.
const TCP_CLOSE_WAIT: u8 = 0x08;

/// Pure: a connection a listener accepted has the listener's local address
/// (the concrete one, for a wildcard listener) and is not in LISTEN.
fn accepted_by(tcp: &[proc::InetEntry], held: &[(i32, u64)], inodes: &HashSet<u64>) -> Option<i32> {
    let listeners: Vec<SocketAddr> = tcp
        .iter()
        .filter(|e| e.state == proc::TCP_LISTEN && inodes.contains(&e.inode))
        .map(|e| e.local)
        .collect();
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let from_listener = |local: SocketAddr| {
        listeners.iter().any(|l| {
            l.port() == local.port()
                && (l.ip().is_unspecified() || unmap(l.ip()) == unmap(local.ip()))
        })
    };
    let conns: HashMap<u64, SocketAddr> = tcp
        .iter()
        .filter(|e| e.state != proc::TCP_LISTEN && e.inode != 0 && from_listener(e.local))
        .map(|e| (e.inode, e.local))
        .collect();
    held.iter()
        .find(|(_, ino)| conns.contains_key(ino))
        .map(|&(pid, _)| pid)
}

/// Entries read from a `poll` array at most; 128 KiB per look.
pub const MAX_POLLFDS: usize = 16 * 1024;
/// Highest `select` nfds we believe; the kernel itself caps it near RLIMIT_NOFILE.
const MAX_SELECT_FDS: i32 = 1 << 20;
const EPOLLIN: u32 = libc::EPOLLIN as u32;

// ---------------------------------------------------------------- OS side --

/// What we could not look at, kept for the verdict.
#[derive(Default)]
struct Notes {
    blind: Option<String>,
    uring: Option<i32>,
}

impl Notes {
    fn denied(&mut self, what: &str, e: &io::Error) {
        tracing::debug!("readiness scan: cannot read {what}: {e}");
        if self.blind.is_none() {
            self.blind = Some(format!(
                "cannot read {what}: {e}{}; auto readiness cannot see this \
                 process and may never fire: pick another --ready mode",
                denial_cause()
            ));
        }
    }
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Why the kernel said no, as far as we can tell.
fn denial_cause() -> String {
    match proc::ptrace_scope().as_deref() {
        Some("2") => " (kernel.yama.ptrace_scope=2 allows this only with CAP_SYS_PTRACE)".into(),
        Some("3") => " (kernel.yama.ptrace_scope=3 forbids it entirely)".into(),
        _ => " (the process may run as another user, be non-dumpable, or be \
               confined by seccomp or an LSM)"
            .into(),
    }
}

fn scan_process(pid: i32, inodes: &HashSet<u64>, notes: &mut Notes) -> Option<Verdict> {
    let fds = match list_fds(pid, inodes) {
        Ok(fds) => fds,
        Err(e) => {
            if is_denied(&e) {
                notes.denied(&format!("/proc/{pid}/fd"), &e);
            }
            return None; // otherwise gone
        }
    };
    let held: Vec<(i32, u64)> = fds.others.iter().map(|&ino| (pid, ino)).collect();
    if let Some(pid) = accepted(&held, inodes) {
        return Some(Verdict::Accepted { pid });
    }
    for &epfd in &fds.epolls {
        let text = match proc::fdinfo(pid, epfd) {
            Ok(t) => t,
            Err(e) => {
                if is_denied(&e) {
                    notes.denied(&format!("/proc/{pid}/fdinfo/{epfd}"), &e);
                }
                continue;
            }
        };
        if parse_epoll_fdinfo(&text)
            .iter()
            .any(|t| epoll_hit(t, inodes, &fds.ours))
        {
            return Some(Verdict::Waiting {
                pid,
                tid: pid,
                how: "epoll",
            });
        }
    }
    // Without one of our fds no thread here can block on our sockets.
    if !fds.ours.is_empty()
        && let Some(found) = scan_threads(pid, &fds.ours, notes)
    {
        return Some(found);
    }
    if fds.uring && notes.uring.is_none() {
        notes.uring = Some(pid);
    }
    None
}

fn scan_threads(pid: i32, ours: &HashMap<i32, u64>, notes: &mut Notes) -> Option<Verdict> {
    for tid in proc::tasks(pid) {
        let line = match proc::syscall(pid, tid) {
            Ok(l) => l,
            Err(e) => {
                if is_denied(&e) {
                    notes.denied(&format!("/proc/{pid}/task/{tid}/syscall"), &e);
                }
                continue;
            }
        };
        let Some(Syscall::In { nr, args }) = parse_syscall(&line) else {
            continue;
        };
        let Some(wait) = classify(WAITS, nr, &args) else {
            continue;
        };
        match wait_hits(pid, &wait, ours) {
            Ok(true) => {
                return Some(Verdict::Waiting {
                    pid,
                    tid,
                    how: wait.how(),
                });
            }
            Ok(false) => {}
            Err(e) if is_denied(&e) => {
                notes.denied(&format!("the memory of pid {pid} (process_vm_readv)"), &e)
            }
            Err(_) => {} // gone, or the array moved under us
        }
    }
    None
}

/// A process's fds that matter to us.
#[derive(Default)]
struct Fds {
    /// fd number -> inode, for our listeners only.
    ours: HashMap<i32, u64>,
    /// Inodes of the other sockets: maybe connections it accepted.
    others: Vec<u64>,
    epolls: Vec<i32>,
    uring: bool,
}

fn list_fds(pid: i32, inodes: &HashSet<u64>) -> io::Result<Fds> {
    let mut fds = Fds::default();
    for (fd, link) in proc::fds(pid)? {
        match link {
            Link::Socket(ino) if inodes.contains(&ino) => {
                fds.ours.insert(fd, ino);
            }
            Link::Socket(ino) => fds.others.push(ino),
            Link::Epoll => fds.epolls.push(fd),
            Link::Uring => fds.uring = true,
            Link::Other => {}
        }
    }
    Ok(fds)
}

fn wait_hits(pid: i32, wait: &Wait, ours: &HashMap<i32, u64>) -> io::Result<bool> {
    match *wait {
        Wait::Accept { fd, .. } => Ok(ours.contains_key(&fd)),
        Wait::Poll { addr, nfds, .. } => {
            if addr == 0 || nfds == 0 {
                return Ok(false);
            }
            let n = (nfds as usize).min(MAX_POLLFDS);
            let bytes = read_mem(pid, addr, n * POLLFD_SIZE)?;
            Ok(pollfds_hit(&bytes, ours))
        }
        Wait::Select { nfds, readfds, .. } => {
            let nfds = nfds.min(MAX_SELECT_FDS);
            let Some(&max) = ours.keys().filter(|&&fd| fd < nfds).max() else {
                return Ok(false);
            };
            if readfds == 0 {
                return Ok(false);
            }
            // Only the words up to our highest fd matter.
            let len = (max as usize / 64 + 1) * 8;
            let bytes = read_mem(pid, readfds, len)?;
            Ok(fdset_hit(&bytes, ours.keys().copied(), nfds))
        }
    }
}

/// Copy `len` bytes at `addr` out of process `pid`.
fn read_mem(pid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    use nix::sys::uio::{RemoteIoVec, process_vm_readv};
    let base = usize::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec { base, len }];
    match process_vm_readv(
        nix::unistd::Pid::from_raw(pid),
        &mut [io::IoSliceMut::new(&mut buf)],
        &remote,
    ) {
        Ok(n) => {
            // A short read means the range ends in unmapped memory: judge what we got.
            buf.truncate(n);
            Ok(buf)
        }
        // Kernels built without CROSS_MEMORY_ATTACH: /proc/PID/mem needs the same access.
        Err(nix::errno::Errno::ENOSYS) => {
            proc::read_mem(pid, addr, &mut buf)?;
            Ok(buf)
        }
        Err(e) => Err(e.into()),
    }
}

// -------------------------------------------------------------- pure side --

/// One line of /proc/PID/task/TID/syscall.
#[derive(Debug, PartialEq, Eq)]
enum Syscall {
    /// On a CPU: nothing to read.
    Running,
    /// Blocked, but not in a syscall (`-1 sp pc`).
    Outside,
    /// `NR arg0 … arg5 sp pc`: NR in decimal, the rest in hex.
    In { nr: i64, args: [u64; 6] },
}

fn parse_syscall(line: &str) -> Option<Syscall> {
    let line = line.trim();
    if line == "running" {
        return Some(Syscall::Running);
    }
    let mut it = line.split_ascii_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return Some(Syscall::Outside);
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let tok = it.next()?;
        *a = u64::from_str_radix(tok.strip_prefix("0x").unwrap_or(tok), 16).ok()?;
    }
    Some(Syscall::In { nr, args })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Accept,
    Poll,
    Select,
}

/// (syscall number, name, argument shape) of the calls that mean "waiting".
type Table = &'static [(i64, &'static str, Shape)];

const X86_64: Table = &[
    (43, "accept", Shape::Accept),
    (288, "accept4", Shape::Accept),
    (7, "poll", Shape::Poll),
    (271, "ppoll", Shape::Poll),
    (23, "select", Shape::Select),
    (270, "pselect6", Shape::Select),
];
// Also used by the tests on every architecture.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const AARCH64: Table = &[
    (202, "accept", Shape::Accept),
    (242, "accept4", Shape::Accept),
    (73, "ppoll", Shape::Poll),
    (72, "pselect6", Shape::Select),
];
#[cfg(target_arch = "x86_64")]
const WAITS: Table = X86_64;
#[cfg(target_arch = "aarch64")]
const WAITS: Table = AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const WAITS: Table = &[];

/// A blocking call that may be waiting on one of our fds.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    Accept {
        how: &'static str,
        fd: i32,
    },
    /// `struct pollfd *addr`, `nfds` entries.
    Poll {
        how: &'static str,
        addr: u64,
        nfds: u32,
    },
    /// `nfds`, `fd_set *readfds`.
    Select {
        how: &'static str,
        nfds: i32,
        readfds: u64,
    },
}

impl Wait {
    fn how(&self) -> &'static str {
        match self {
            Wait::Accept { how, .. } | Wait::Poll { how, .. } | Wait::Select { how, .. } => how,
        }
    }
}

fn classify(table: Table, nr: i64, args: &[u64; 6]) -> Option<Wait> {
    let &(_, how, shape) = table.iter().find(|(n, _, _)| *n == nr)?;
    // int and unsigned int arguments: the kernel ignores the upper register half.
    let low = |a: u64| a as u32;
    Some(match shape {
        Shape::Accept => Wait::Accept {
            how,
            fd: low(args[0]) as i32,
        },
        Shape::Poll => Wait::Poll {
            how,
            addr: args[0],
            nfds: low(args[1]),
        },
        Shape::Select => Wait::Select {
            how,
            nfds: low(args[0]) as i32,
            readfds: args[1],
        },
    })
}

/// One epoll registration from fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct EpollTarget {
    tfd: i32,
    events: Option<u32>,
    ino: Option<u64>,
}

/// `tfd: N events: HEX data: HEX  pos:P ino:HEX sdev:HEX` lines; older
/// kernels stop after `data:`.
fn parse_epoll_fdinfo(text: &str) -> Vec<EpollTarget> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("tfd:") else {
            continue;
        };
        let mut toks = rest.split_ascii_whitespace();
        let Some(tfd) = toks.next().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let mut target = EpollTarget {
            tfd,
            events: None,
            ino: None,
        };
        // Keys come as "key: value" or "key:value".
        while let Some(tok) = toks.next() {
            let Some((key, val)) = tok.split_once(':') else {
                continue;
            };
            let val = if val.is_empty() {
                toks.next().unwrap_or("")
            } else {
                val
            };
            match key {
                "events" => target.events = u32::from_str_radix(val, 16).ok(),
                "ino" => target.ino = u64::from_str_radix(val, 16).ok(),
                _ => {}
            }
        }
        out.push(target);
    }
    out
}

fn epoll_hit(t: &EpollTarget, inodes: &HashSet<u64>, ours: &HashMap<i32, u64>) -> bool {
    let ours = match t.ino {
        Some(ino) => inodes.contains(&ino),
        None => ours.contains_key(&t.tfd),
    };
    ours && t.events.is_none_or(|e| e & EPOLLIN != 0)
}

/// `struct pollfd { int fd; short events; short revents; }`.
const POLLFD_SIZE: usize = 8;

fn pollfds_hit(bytes: &[u8], ours: &HashMap<i32, u64>) -> bool {
    let wanted: i16 = libc::POLLIN | libc::POLLRDNORM;
    bytes.chunks_exact(POLLFD_SIZE).any(|p| {
        let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
        let events = i16::from_ne_bytes([p[4], p[5]]);
        events & wanted != 0 && ours.contains_key(&fd)
    })
}

/// An `fd_set` is an array of 64-bit longs on the architectures we know.
fn fdset_hit(bytes: &[u8], fds: impl Iterator<Item = i32>, nfds: i32) -> bool {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect();
    fds.filter(|&fd| (0..nfds).contains(&fd)).any(|fd| {
        let fd = fd as usize;
        words.get(fd / 64).is_some_and(|w| w >> (fd % 64) & 1 == 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One group, through the path the supervisor uses.
    fn scan(roots: &[i32], inodes: &HashSet<u64>) -> Verdict {
        scan_each(&[roots.to_vec()], inodes).remove(0)
    }

    // ------------------------------------------------------------ pure --

    #[test]
    fn syscall_lines() {
        // Captured from `cat /proc/self/syscall` (a read on fd 3).
        let line = "0 0x3 0x7fb962837000 0x20000 0x7fb9628cab60 0xffffffff 0x0 0x7ffef45a54f8 0x7fb9629b32ad\n";
        assert_eq!(
            parse_syscall(line),
            Some(Syscall::In {
                nr: 0,
                args: [0x3, 0x7fb962837000, 0x20000, 0x7fb9628cab60, 0xffffffff, 0]
            })
        );
        assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
        assert_eq!(
            parse_syscall("-1 0x7ffef45a54f8 0x7fb9629b32ad\n"),
            Some(Syscall::Outside)
        );
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("43 0x3 0x0"), None); // truncated
        assert_eq!(parse_syscall("43 zz 0 0 0 0 0 0 0"), None);
    }

    #[test]
    fn classify_per_arch() {
        let args = |a0: u64, a1: u64| [a0, a1, 0, 0, 0, 0];
        assert_eq!(
            classify(X86_64, 288, &args(3, 0)),
            Some(Wait::Accept {
                how: "accept4",
                fd: 3
            })
        );
        // The upper half of an int argument is garbage the kernel ignores.
        assert_eq!(
            classify(X86_64, 43, &args(0xdead_beef_0000_0005, 0)),
            Some(Wait::Accept {
                how: "accept",
                fd: 5
            })
        );
        assert_eq!(
            classify(X86_64, 7, &args(0x7f00, 2)),
            Some(Wait::Poll {
                how: "poll",
                addr: 0x7f00,
                nfds: 2
            })
        );
        assert_eq!(
            classify(X86_64, 270, &args(4, 0x7f10)),
            Some(Wait::Select {
                how: "pselect6",
                nfds: 4,
                readfds: 0x7f10
            })
        );
        assert_eq!(classify(X86_64, 0, &args(3, 0)), None); // read
        assert_eq!(
            classify(AARCH64, 242, &args(3, 0)),
            Some(Wait::Accept {
                how: "accept4",
                fd: 3
            })
        );
        assert_eq!(
            classify(AARCH64, 73, &args(0x10, 1)),
            Some(Wait::Poll {
                how: "ppoll",
                addr: 0x10,
                nfds: 1
            })
        );
        assert_eq!(classify(AARCH64, 7, &args(0x10, 1)), None); // no poll there
    }

    #[test]
    fn epoll_fdinfo_modern_and_old() {
        let modern = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
            tfd:        3 events:       19 data:                3  pos:0 ino:1ce6 sdev:9\n\
            tfd:       12 events:        4 data:     7f0000000001  pos:0 ino:2a sdev:9\n";
        assert_eq!(
            parse_epoll_fdinfo(modern),
            vec![
                EpollTarget {
                    tfd: 3,
                    events: Some(0x19),
                    ino: Some(0x1ce6)
                },
                EpollTarget {
                    tfd: 12,
                    events: Some(0x4),
                    ino: Some(0x2a)
                },
            ]
        );
        let old = "pos:\t0\nflags:\t02\ntfd:        5 events:       19 data:                5\n";
        assert_eq!(
            parse_epoll_fdinfo(old),
            vec![EpollTarget {
                tfd: 5,
                events: Some(0x19),
                ino: None
            }]
        );
        assert_eq!(parse_epoll_fdinfo("tfd: x events: 1\nflags: 0\n"), vec![]);
    }

    #[test]
    fn epoll_hit_rules() {
        let inodes: HashSet<u64> = [0x1ce6].into();
        let ours: HashMap<i32, u64> = [(7, 0x1ce6)].into();
        let t = |tfd, events, ino| EpollTarget { tfd, events, ino };
        assert!(epoll_hit(&t(3, Some(0x19), Some(0x1ce6)), &inodes, &ours));
        // ino wins over the fd number when present.
        assert!(!epoll_hit(&t(7, Some(0x19), Some(0x99)), &inodes, &ours));
        // Old kernels: resolve tfd through the fd table.
        assert!(epoll_hit(&t(7, Some(0x1), None), &inodes, &ours));
        assert!(!epoll_hit(&t(3, Some(0x1), None), &inodes, &ours));
        // Registered for writing only (or a fired EPOLLONESHOT): not waiting.
        assert!(!epoll_hit(&t(3, Some(0x4), Some(0x1ce6)), &inodes, &ours));
    }

    fn pollfd(fd: i32, events: i16) -> Vec<u8> {
        let mut v = fd.to_ne_bytes().to_vec();
        v.extend(events.to_ne_bytes());
        v.extend(0i16.to_ne_bytes());
        v
    }

    #[test]
    fn pollfd_arrays() {
        let ours: HashMap<i32, u64> = [(9, 1)].into();
        let pollin = libc::POLLIN;
        let pollout = libc::POLLOUT;
        let mut bytes = pollfd(0, pollin);
        bytes.extend(pollfd(9, pollin));
        assert!(pollfds_hit(&bytes, &ours));
        assert!(!pollfds_hit(&pollfd(9, pollout), &ours));
        assert!(!pollfds_hit(&pollfd(-9, pollin), &ours));
        assert!(!pollfds_hit(&pollfd(9, pollin)[..7], &ours)); // torn read
        assert!(pollfds_hit(&pollfd(9, libc::POLLRDNORM), &ours));
    }

    #[test]
    fn accepted_connections() {
        let e = |local: &str, state, inode| proc::InetEntry {
            proto: "tcp",
            local: local.parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state,
            inode,
            rx_queue: 0,
            tx_queue: 0,
        };
        let tcp = [
            e("0.0.0.0:8000", proc::TCP_LISTEN, 10),
            e("[::1]:9000", proc::TCP_LISTEN, 11),
            e("127.0.0.1:8000", proc::TCP_ESTABLISHED, 20),
            e("127.0.0.1:8000", proc::TCP_LISTEN, 21), // someone else's listener
            e("[::ffff:10.0.0.1]:8000", 0x08, 22),     // CLOSE_WAIT still counts
            e("[::1]:9000", proc::TCP_ESTABLISHED, 23),
            e("127.0.0.1:44000", proc::TCP_ESTABLISHED, 24), // a client socket
            e("127.0.0.1:8001", proc::TCP_ESTABLISHED, 25),
        ];
        let ours: HashSet<u64> = [10, 11].into();
        assert_eq!(accepted_by(&tcp, &[(7, 20)], &ours), Some(7));
        assert_eq!(accepted_by(&tcp, &[(7, 24), (8, 22)], &ours), Some(8));
        assert_eq!(accepted_by(&tcp, &[(7, 23)], &ours), Some(7));
        for ino in [21, 24, 25, 10, 99] {
            assert_eq!(accepted_by(&tcp, &[(7, ino)], &ours), None, "{ino}");
        }
        // Not our listener: its connections do not count.
        assert_eq!(accepted_by(&tcp, &[(7, 20)], &[11].into()), None);
    }

    #[test]
    fn fd_sets() {
        let mut set = vec![0u8; 16];
        let mut put = |fd: usize| {
            let mut w = u64::from_ne_bytes(set[fd / 64 * 8..fd / 64 * 8 + 8].try_into().unwrap());
            w |= 1 << (fd % 64);
            set[fd / 64 * 8..fd / 64 * 8 + 8].copy_from_slice(&w.to_ne_bytes());
        };
        put(3);
        put(70);
        assert!(fdset_hit(&set, [3].into_iter(), 4));
        assert!(!fdset_hit(&set, [3].into_iter(), 3)); // beyond nfds
        assert!(!fdset_hit(&set, [4, 5].into_iter(), 100));
        assert!(fdset_hit(&set, [5, 70].into_iter(), 71));
        assert!(!fdset_hit(&set[..8], [70].into_iter(), 71)); // short read
        assert!(!fdset_hit(&set, [-1].into_iter(), 71));
    }

    // ---------------------------------------------------- real processes --

    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Kills the child's whole process group (grandchildren too) on drop.
    struct Guard(Child);

    impl Drop for Guard {
        fn drop(&mut self) {
            let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    struct Probe {
        guard: Guard,
        stdin: ChildStdin,
        // Kept open so the probe never dies of a broken pipe.
        _stdout: BufReader<ChildStdout>,
        pid: i32,
    }

    impl Probe {
        /// Let the child go on to `body` after its NotYet phase.
        fn go(&mut self) {
            self.stdin.write_all(b"go\n").unwrap();
            self.stdin.flush().unwrap();
        }
    }

    const PROLOGUE: &str = "\
import os, select, selectors, socket, sys, threading, time
s = socket.socket(fileno=3)
print('parked', flush=True)
sys.stdin.readline()
";

    /// python3 with `listener` as fd 3, parked on stdin until `go`.
    fn spawn(listener: &TcpListener, body: &str) -> Probe {
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(format!("{PROLOGUE}{body}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // Test-only remap; relaunch's own spawn code does this properly.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, 3) == 3
                };
                if ok {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd
            .spawn()
            .expect("python3 must be installed for these tests");
        let pid = child.id() as i32;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let guard = Guard(child);
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "parked\n", "the probe died before parking");
        Probe {
            guard,
            stdin,
            _stdout: stdout,
            pid,
        }
    }

    fn listener() -> (TcpListener, HashSet<u64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = socket_inode(l.as_fd()).unwrap();
        (l, [ino].into())
    }

    fn wait_until_waiting(roots: &[i32], inodes: &HashSet<u64>) -> (i32, i32, &'static str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = scan(roots, inodes);
            if let Verdict::Waiting { pid, tid, how } = v {
                return (pid, tid, how);
            }
            assert!(Instant::now() < deadline, "still {v:?} after 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start a probe, check NotYet while it is parked, release it, and wait.
    fn found(body: &str) -> (Probe, HashSet<u64>, (i32, i32, &'static str)) {
        let (l, inodes) = listener();
        let mut p = spawn(&l, body);
        assert_eq!(scan(&[p.pid], &inodes), Verdict::NotYet { blind: None });
        p.go();
        let hit = wait_until_waiting(&[p.pid], &inodes);
        (p, inodes, hit)
    }

    #[test]
    fn socket_inode_rejects_non_sockets() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let err = socket_inode(f.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn sees_epoll_registration() {
        let body = "sel = selectors.EpollSelector()\nsel.register(s, selectors.EVENT_READ)\nsel.select()\n";
        let (p, _, (pid, _, how)) = found(body);
        assert_eq!((pid, how), (p.pid, "epoll"));
    }

    #[test]
    fn sees_blocking_accept_on_our_socket_only() {
        let (p, _, (pid, tid, how)) = found("s.accept()\n");
        assert_eq!((pid, tid), (p.pid, p.pid));
        assert!(matches!(how, "accept" | "accept4"), "{how}");
        // Another listener's inode: the same wait must not count.
        let (_other, other_inodes) = listener();
        assert_eq!(
            scan(&[p.pid], &other_inodes),
            Verdict::NotYet { blind: None }
        );
    }

    #[test]
    fn sees_poll() {
        let body = "p = select.poll()\np.register(0, select.POLLIN)\np.register(s, select.POLLIN)\np.poll()\n";
        let (_p, _, (_, _, how)) = found(body);
        assert!(matches!(how, "poll" | "ppoll"), "{how}");
    }

    #[test]
    fn sees_select() {
        let (_p, _, (_, _, how)) = found("select.select([0, s], [], [])\n");
        assert!(matches!(how, "select" | "pselect6"), "{how}");
    }

    #[test]
    fn sees_a_non_main_thread() {
        let body = "t = threading.Thread(target=s.accept)\nt.start()\nt.join()\n";
        let (p, _, (pid, tid, how)) = found(body);
        assert_eq!(pid, p.pid);
        assert_ne!(tid, p.pid, "the main thread is in join, not accept");
        assert!(matches!(how, "accept" | "accept4"), "{how}");
    }

    #[test]
    fn sees_a_forked_grandchild_through_a_dup() {
        // The grandchild waits on fd 9 with fd 3 closed: only resolving links finds it.
        let body = "\
pid = os.fork()
if pid == 0:
    os.dup2(3, 9)
    os.close(3)
    socket.socket(fileno=9).accept()
    os._exit(0)
os.waitpid(pid, 0)
";
        let (p, _, (pid, _, how)) = found(body);
        assert_ne!(pid, p.pid);
        assert!(matches!(how, "accept" | "accept4"), "{how}");
        assert!(proc::tree(&[p.pid]).contains(&pid));
    }

    #[test]
    fn sees_a_connection_it_accepted() {
        let (l, inodes) = listener();
        let addr = l.local_addr().unwrap();
        let mut p = spawn(&l, "c, _ = s.accept()\ntime.sleep(30)\n");
        p.go();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = scan(&[p.pid], &inodes);
            if v == (Verdict::Accepted { pid: p.pid }) {
                break;
            }
            assert!(Instant::now() < deadline, "still {v:?} after 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn holding_the_socket_is_not_waiting() {
        let (l, inodes) = listener();
        let mut p = spawn(&l, "time.sleep(30)\n");
        p.go();
        for _ in 0..6 {
            assert_eq!(scan(&[p.pid], &inodes), Verdict::NotYet { blind: None });
            std::thread::sleep(Duration::from_millis(50));
        }
        // A dead probe would make this test pass for the wrong reason.
        assert!(p.guard.0.try_wait().unwrap().is_none(), "the probe exited");
    }
}
