//! The keeper: a process forked at start that outlives relaunch only to end
//! what relaunch started, when relaunch dies without doing so (kill -9, OOM).
//!
//! PR_SET_PDEATHSIG reaches only relaunch's own children. A server behind
//! `sh -c`, a prefork master's workers, a setsid'd helper: they live on,
//! re-parented to init, and keep the port. The keeper sees relaunch die as
//! the end of a pipe whose only writer is relaunch (it survives an upgrade's
//! exec, which keeps the pid), and then ends, with the stop signal and
//! SIGKILL after the stop timeout:
//! - every member of a process group relaunch started and has not seen
//!   empty (relaunch tells it each group as it starts it, and when it is
//!   gone, so a reused pgid is never taken for ours);
//! - every process that holds a socket relaunch handed to a child and
//!   started while relaunch lived (a setsid'd process that had landed on
//!   relaunch). Not one started before, which may be the service manager
//!   holding it in its fd store, nor after, which may be the next relaunch
//!   given the same sockets;
//! - everything under those, once seen there.
//!
//! It is forked before any thread exists (so it may allocate), keeps no fd
//! but fds 0 and 2 and its pipe, ignores the signals a terminal or a stop
//! sends relaunch's process group, and idles in read(): no wakeups, and its
//! resident memory is what it shares with relaunch at the fork.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::exit::ExitStatus;
use crate::proc::{self, Link};
use crate::supervise::reaper::{self, Escaped, Leftover};

/// How long processes may take to go after SIGKILL before the keeper says
/// so and leaves.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the keeper looks again while it ends processes.
const POLL: Duration = Duration::from_millis(20);

/// relaunch's end of the pipe.
struct Handle {
    pid: i32,
    pipe: OwnedFd,
    /// Socket inodes told already.
    inodes: HashSet<u64>,
    /// A write failed: said once.
    broken: bool,
}

static KEEPER: Mutex<Option<Handle>> = Mutex::new(None);

/// What an upgrade hands the next image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Saved {
    pub pid: i32,
    pub fd: RawFd,
}

/// One message, 16 bytes: what, a pid, a number.
const GROUP: u32 = 1;
const GONE: u32 = 2;
const INODE: u32 = 3;
const RECORD: usize = 16;

fn record(what: u32, pid: i32, n: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..4].copy_from_slice(&what.to_ne_bytes());
    r[4..8].copy_from_slice(&pid.to_ne_bytes());
    r[8..].copy_from_slice(&n.to_ne_bytes());
    r
}

/// Forks the keeper. Call before any thread exists: the keeper allocates.
pub fn start(stop: Signal, timeout: Duration) {
    // As PID 1, relaunch's death ends every process of its namespace.
    if std::process::id() == 1 {
        return;
    }
    if let Err(e) = try_start(stop, timeout) {
        warn!(
            "cannot start the keeper ({e}): if relaunch is killed (SIGKILL, OOM), processes its \
             children started may live on and keep the port"
        );
    }
}

fn try_start(stop: Signal, timeout: Duration) -> io::Result<()> {
    let threads = proc::tasks(std::process::id() as i32).len();
    if threads > 1 {
        return Err(io::Error::other(format!(
            "{threads} threads run already (a bug in relaunch)"
        )));
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // The keeper's pid, from the process between (it forks the keeper and
    // exits, so the keeper is not relaunch's child: relaunch's children are
    // the ones it started).
    let (pid_read, pid_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let between = {
        // No handler of relaunch's may run in the keeper: they write to the
        // event loop's signal pipe, which the keeper shares until it closes it.
        let _blocked = crate::sigmask::Blocked::new();
        // SAFETY: one thread (checked above), so the children may do
        // anything the parent could; neither returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(write);
            drop(pid_read);
            // SAFETY: as above.
            let keeper = unsafe { libc::fork() };
            if keeper == 0 {
                drop(pid_write);
                keep(read, stop, timeout)
            }
            let _ = nix::unistd::write(&pid_write, &keeper.to_ne_bytes());
            // SAFETY: ends the process between; nothing to flush.
            unsafe { libc::_exit(0) }
        }
        pid
    };
    if between < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(read);
    drop(pid_write);
    let mut bytes = [0u8; 4];
    let got = nix::unistd::read(pid_read.as_fd(), &mut bytes);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(between), None);
    let pid = match got {
        Ok(4) => i32::from_ne_bytes(bytes),
        _ => return Err(io::Error::other("the keeper did not start")),
    };
    if pid <= 0 {
        return Err(io::Error::other("fork failed"));
    }
    // A stuck keeper must never block the event loop.
    nix::fcntl::fcntl(
        &write,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    set(Handle {
        pid,
        pipe: write,
        inodes: HashSet::new(),
        broken: false,
    });
    Ok(())
}

fn set(h: Handle) {
    *KEEPER.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
}

fn with<T>(f: impl FnOnce(&mut Handle) -> T) -> Option<T> {
    KEEPER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .map(f)
}

/// The keeper's pid: no child's orphan, when it lands on relaunch (as PID 1).
pub fn pid() -> Option<i32> {
    with(|h| h.pid)
}

/// For the next image; its fd must survive the exec.
pub fn save() -> Option<Saved> {
    with(|h| Saved {
        pid: h.pid,
        fd: h.pipe.as_raw_fd(),
    })
}

/// The next image takes the pipe over (close-on-exec again already).
pub fn adopt(saved: Saved) {
    // SAFETY: handed over for us alone; adopted once.
    let pipe = unsafe { OwnedFd::from_raw_fd(saved.fd) };
    set(Handle {
        pid: saved.pid,
        pipe,
        inodes: HashSet::new(),
        broken: false,
    });
}

/// A child was started as process group `pgid` (`ticks`: [`reaper::boot_ticks`]
/// before the fork) and given these sockets.
pub fn started(pgid: i32, ticks: u64, fds: &[BorrowedFd<'_>]) {
    with(|h| {
        let mut out = record(GROUP, pgid, ticks).to_vec();
        for fd in fds {
            if let Ok(st) = nix::sys::stat::fstat(fd)
                && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                && h.inodes.insert(st.st_ino)
            {
                out.extend(record(INODE, 0, st.st_ino));
            }
        }
        send(h, &out);
    });
}

/// Process group `pgid` is empty: its id may be reused.
pub fn gone(pgid: i32) {
    with(|h| send(h, &record(GONE, pgid, 0)));
}

fn send(h: &mut Handle, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match nix::unistd::write(h.pipe.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                if !h.broken {
                    h.broken = true;
                    warn!(
                        pid = h.pid,
                        "cannot tell the keeper what relaunch started ({e}): if relaunch is \
                         killed, some of it may live on"
                    );
                }
                return;
            }
        }
    }
}

/// Whether `pid` was the keeper; says what it means that it ended.
pub fn exited(pid: i32, status: ExitStatus) -> bool {
    let Some(true) = with(|h| h.pid == pid) else {
        return false;
    };
    warn!(
        pid,
        "the keeper {status}: if relaunch is killed (SIGKILL, OOM), processes its children \
         started may live on and keep the port"
    );
    true
}

// ---------------------------------------------------------- the keeper --

/// The keeper's life: listen until relaunch is gone, then end what it left.
fn keep(read: OwnedFd, stop: Signal, timeout: Duration) -> ! {
    // SAFETY: plain calls on our own process.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"relaunch-keeper".as_ptr());
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGWINCH,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    close_all_but(read.as_raw_fd());
    crate::sigmask::set(&[]);
    let since = proc::stat(std::process::id() as i32).map_or(0, |s| s.start);
    let mut groups: HashMap<i32, u64> = HashMap::new();
    let mut inodes: HashSet<u64> = HashSet::new();
    let mut buf = [0u8; RECORD * 256];
    let mut have = 0;
    loop {
        match nix::unistd::read(read.as_fd(), &mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let whole = have - have % RECORD;
        for r in buf[..whole].chunks_exact(RECORD) {
            let what = u32::from_ne_bytes(r[..4].try_into().unwrap_or_default());
            let pid = i32::from_ne_bytes(r[4..8].try_into().unwrap_or_default());
            let n = u64::from_ne_bytes(r[8..].try_into().unwrap_or_default());
            match what {
                GROUP => {
                    groups.insert(pid, n);
                }
                GONE => {
                    groups.remove(&pid);
                }
                INODE => {
                    inodes.insert(n);
                }
                _ => {}
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    let died = reaper::boot_ticks();
    let mine = Mine {
        groups,
        inodes,
        since,
        died,
    };
    end_all(&mine, stop, timeout);
    // SAFETY: ends this process; nothing of relaunch's state is ours to flush.
    unsafe { libc::_exit(0) }
}

/// Everything but fds 0 and 2 and `keep` is relaunch's: closed. fd 1 goes
/// to /dev/null (a reader of relaunch's stdout waits for its end).
fn close_all_but(keep: RawFd) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: closes an fd of ours that nothing here uses.
            unsafe { libc::close(fd) };
        }
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: replaces fd 1; `null` is closed after.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// What the keeper knows of relaunch's processes.
struct Mine {
    /// Process groups not seen empty, with the boot ticks of their spawn.
    groups: HashMap<i32, u64>,
    /// Sockets handed to children.
    inodes: HashSet<u64>,
    /// The keeper's start, and relaunch's death: boot ticks.
    since: u64,
    died: u64,
}

impl Mine {
    /// Processes relaunch started, or that hold its sockets, with all
    /// under them and under `known`.
    fn find(&self, known: &[i32]) -> Vec<Leftover> {
        let me = std::process::id() as i32;
        let mut roots: Vec<i32> = known.to_vec();
        for pid in proc::pids() {
            if pid == me || pid == 1 {
                continue;
            }
            let Some(st) = proc::stat(pid).filter(|s| s.alive()) else {
                continue;
            };
            let member = self.groups.get(&st.pgrp).is_some_and(|&t| st.start >= t);
            if member || (st.start >= self.since && st.start <= self.died && self.holds(pid)) {
                roots.push(pid);
            }
        }
        proc::Trees::new()
            .tree(&roots)
            .into_iter()
            .filter(|&p| p != me && p != 1)
            .filter_map(|pid| {
                let st = proc::stat(pid).filter(|s| s.alive())?;
                Some(Leftover {
                    pid,
                    start: st.start,
                    cmd: proc::cmdline(pid),
                })
            })
            .collect()
    }

    fn holds(&self, pid: i32) -> bool {
        !self.inodes.is_empty()
            && proc::fds(pid).is_ok_and(|fds| {
                fds.iter()
                    .any(|(_, l)| matches!(l, Link::Socket(i) if self.inodes.contains(i)))
            })
    }
}

/// The stop signal to each, SIGKILL to those left after `timeout`.
fn end_all(mine: &Mine, stop: Signal, timeout: Duration) {
    let kill_at = Instant::now() + timeout;
    let mut ending: HashMap<i32, Escaped> = HashMap::new();
    let mut killed = false;
    let mut said = false;
    loop {
        let known: Vec<i32> = ending.keys().copied().collect();
        for l in mine.find(&known) {
            if ending.contains_key(&l.pid) {
                continue;
            }
            let Some(e) = Escaped::open(&l) else { continue };
            if !said {
                said = true;
                warn!(
                    "relaunch is gone without stopping what it started (killed?); sending {}, \
                     SIGKILL after {}",
                    stop.as_str(),
                    crate::duration::human(timeout)
                );
            }
            warn!(pid = l.pid, "ending pid {} ({})", l.pid, l.cmd);
            let _ = e.signal(if killed { Signal::SIGKILL } else { stop });
            ending.insert(l.pid, e);
        }
        ending.retain(|&pid, e| e.exists() && proc::stat(pid).is_some_and(|s| s.alive()));
        if ending.is_empty() {
            return;
        }
        let now = Instant::now();
        if !killed && now >= kill_at {
            for (&pid, e) in &ending {
                warn!(pid, "pid {pid} did not stop; sending SIGKILL");
                let _ = e.signal(Signal::SIGKILL);
            }
            killed = true;
        }
        if killed && now >= kill_at + KILL_GRACE {
            let pids: Vec<i32> = ending.keys().copied().collect();
            warn!(
                ?pids,
                "processes survive SIGKILL (stuck in the kernel?); leaving them"
            );
            return;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// `sleep 30` in a process group of its own; with `fd`, holding it at 3.
    fn sleeper(fd: Option<RawFd>) -> Child {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").process_group(0);
        if let Some(fd) = fd {
            // SAFETY: dup2 or fcntl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 onto itself leaves close-on-exec set.
                    let rc = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if rc < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().unwrap()
    }

    fn found(mine: &Mine, pid: i32) -> bool {
        mine.find(&[]).iter().any(|l| l.pid == pid)
    }

    fn mine() -> Mine {
        Mine {
            groups: HashMap::new(),
            inodes: HashSet::new(),
            since: 0,
            died: u64::MAX,
        }
    }

    #[test]
    fn a_group_relaunch_started_is_ended_until_it_is_gone() {
        let ticks = reaper::boot_ticks();
        let mut child = sleeper(None);
        let pid = child.id() as i32;
        let mut m = mine();
        assert!(!found(&m, pid), "a group never told is not ours");
        m.groups.insert(pid, ticks);
        assert!(found(&m, pid));
        // Told later than its members started: a reused pgid, not ours.
        m.groups.insert(pid, u64::MAX);
        assert!(!found(&m, pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A holder of relaunch's socket is ended only if it started while
    /// relaunch lived: not the service manager that stores it, not the next
    /// relaunch given it.
    #[test]
    fn a_holder_of_a_handed_socket_is_ended_only_if_it_started_in_relaunchs_life() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = nix::sys::stat::fstat(&sock).unwrap().st_ino;
        let since = reaper::boot_ticks();
        let mut child = sleeper(Some(sock.as_raw_fd()));
        let pid = child.id() as i32;
        let start = proc::stat(pid).unwrap().start;
        let mut m = mine();
        m.since = since;
        assert!(!found(&m, pid), "no inode told");
        m.inodes.insert(ino);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !found(&m, pid) {
            // The fd is placed between fork and exec.
            assert!(Instant::now() < deadline, "holder {pid} not found");
            std::thread::sleep(POLL);
        }
        assert!(
            !found(&m, std::process::id() as i32),
            "this test's process holds it too, and started before"
        );
        m.since = start + 1;
        assert!(!found(&m, pid), "started before relaunch");
        m.since = 0;
        m.died = start - 1;
        assert!(!found(&m, pid), "started after relaunch died");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
