//! The only fork/exec in relaunch: every process it starts comes through
//! here (the children, `--build`, `relaunch-watch`, the new binary's upgrade
//! handshake), so each gets the same group, death signal and fds. The
//! keeper's fork, without exec, is in [`crate::supervise::keeper`]; an
//! upgrade's exec in place, without fork, in [`crate::supervise::upgrade`].
//! Each child's group and sockets are told to the keeper here.
//!
//! What the child gets: its own process group; the credentials of `--user` /
//! `--group` (supplementary groups included); PR_SET_PDEATHSIG(SIGTERM), set
//! after the credential change that would clear it, so the child does not
//! outlive a killed relaunch; every signal at its default disposition
//! and an empty signal mask; the listeners at fds 3..3+N-1 without
//! close-on-exec; fds 0-2 as relaunch has them; nothing else (everything from
//! 3+N up is marked close-on-exec: by close_range(CLOSE_RANGE_CLOEXEC) on
//! Linux 5.11+, else over the list of open fds taken before the fork);
//! `LISTEN_PID` set to its own pid; the soft fd limit relaunch started with
//! (it raises its own, see [`raise_fd_limit`]); unless `--no-intercept`, the seccomp
//! filter of bind interception, installed last, after the credential change
//! (its notification fd goes to relaunch and is closed before exec).
//!
//! # Safety argument
//!
//! relaunch forks only from its main thread, the event loop's (tokio
//! `current_thread`); PR_SET_PDEATHSIG follows the thread that forked. Other
//! threads may exist (the blocking pool reads /proc) and may hold a lock at
//! the fork, so between fork and exec the child only makes raw
//! system calls through `libc` (`setpgid`, `setgroups`, `setgid`, `setuid`, `prctl`, `getppid`, `fcntl`,
//! `dup2`, `close_range`, `seccomp`, `sendmsg`, `close`, `setrlimit`, `getpid`, `signal`, `sigprocmask`,
//! `execve`, `stat`, `write`, `_exit`) and writes into memory prepared by the parent: every CString,
//! pointer array, the fd work array and the `LISTEN_PID=` slot are allocated
//! before the fork and outlive it in the child's copy of the address space.
//! Nothing allocates, locks or logs. All signals are blocked across the fork so
//! no handler of relaunch's runs in the child before the dispositions are
//! reset; the mask is emptied just before exec.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::c_char;

/// What to run and what to give it.
pub struct Request<'a> {
    pub program: &'a OsStr,
    pub args: &'a [OsString],
    /// The child's whole environment, without `LISTEN_PID`.
    pub env: &'a [(OsString, OsString)],
    /// Placed at fds 3, 4, ... in this order.
    pub fds: &'a [BorrowedFd<'a>],
    /// Add `LISTEN_PID=<the child's pid>`.
    pub listen_pid: bool,
    /// Run as this user and group, resolved by the caller.
    pub creds: Option<&'a Credentials>,
    /// Install the bind-interception filter and send its fd here (see
    /// [`crate::intercept::filter::install`]).
    pub intercept: Option<BorrowedFd<'a>>,
    /// With `intercept`: what else it traps.
    pub traps: crate::intercept::filter::Traps,
    /// fds 0, 1 and 2 instead of relaunch's own (`--build`: /dev/null and
    /// its output pipe twice). Close-on-exec here; their copies are not.
    pub stdio: Option<(BorrowedFd<'a>, BorrowedFd<'a>, BorrowedFd<'a>)>,
}

/// Resolved by `plan`, applied after fork.
pub use crate::plan::options::Credentials;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// Exit 127: no such program.
    NotFound(String),
    /// Exit 126: found but cannot be executed.
    NotExecutable(String),
    /// fork, pipe or the like failed: nothing was started.
    Os(String),
}

impl Error {
    /// What this failure means for relaunch's own exit code.
    pub fn kind(&self) -> crate::error::Kind {
        match self {
            Error::NotFound(_) => crate::error::Kind::NotFound,
            Error::NotExecutable(_) => crate::error::Kind::NotExecutable,
            Error::Os(_) => crate::error::Kind::Runtime,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m) | Error::NotExecutable(m) | Error::Os(m) => f.write_str(m),
        }
    }
}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";
/// Room for any pid's digits and the NUL.
const PID_DIGITS: usize = 20;

/// A forked child, and the pipe that says whether its exec worked.
pub struct Spawned {
    pub pid: i32,
    pub exec: ExecWatch,
}

/// The read end of a child's exec status pipe (non-blocking). EOF means the
/// exec worked (the write end was close-on-exec); otherwise the child writes
/// (stage, errno, candidate) and exits 126 or 127.
pub struct ExecWatch {
    fd: OwnedFd,
    shown: String,
    explicit: bool,
    candidates: Vec<PathBuf>,
}

/// What the status pipe says so far.
#[derive(Debug)]
pub enum ExecStatus {
    /// Nothing yet: the child is between fork and exec.
    Pending,
    Ran,
    Failed(Error),
}

/// Forks the child and returns at once: whether the exec worked is read from
/// [`Spawned::exec`] later, so nothing here waits on the child (or on a slow
/// filesystem: the PATH search happens in the child, like execvp).
pub fn spawn(req: &Request<'_>) -> Result<Spawned, Error> {
    let shown = req.program.to_string_lossy();
    if req.program.is_empty() {
        return Err(Error::NotFound("cannot run an empty program name".into()));
    }
    let cstr = |s: &[u8]| {
        CString::new(s).map_err(|_| {
            Error::Os(format!(
                "cannot run {shown}: an argument contains a NUL byte"
            ))
        })
    };
    let (explicit, candidates) = candidates(req.program, env_path(req.env));
    let mut paths_c = Vec::with_capacity(candidates.len());
    for c in &candidates {
        paths_c.push(cstr(c.as_os_str().as_bytes())?);
    }
    let paths: Vec<*const c_char> = paths_c.iter().map(|c| c.as_ptr()).collect();
    let mut argv_c = vec![cstr(req.program.as_bytes())?];
    for a in req.args {
        argv_c.push(cstr(a.as_bytes())?);
    }
    let mut env_c = Vec::with_capacity(req.env.len() + 1);
    for (k, v) in req.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstr(&kv)?);
    }
    // The slot is filled in the child, after fork, without allocating.
    let mut pid_slot = LISTEN_PID.to_vec();
    pid_slot.resize(LISTEN_PID.len() + PID_DIGITS + 1, 0);

    let mut argv: Vec<*const c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    if req.listen_pid {
        envp.push(pid_slot.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let mut work: Vec<RawFd> = req.fds.iter().map(|f| f.as_raw_fd()).collect();
    let first_free = 3 + work.len() as RawFd;
    let others = Others::find(first_free);

    // Non-blocking: the parent never waits on it; 12 bytes never fill a pipe.
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| Error::Os(format!("cannot start {shown}: pipe: {e}")))?;
    // Out of the way of the fds placed at 3.., so the child need not move it.
    let err_write = above(err_write, first_free).map_err(|e| {
        Error::Os(format!(
            "cannot start {shown}: no free fd above {first_free} for the exec status pipe: {e}"
        ))
    })?;

    let intercept = req
        .intercept
        .map(|fd| {
            let fd = fd.try_clone_to_owned()?;
            above(fd, first_free)
        })
        .transpose()
        .map_err(|e| {
            Error::Os(format!(
                "cannot start {shown}: no free fd for the interception socket: {e}"
            ))
        })?;

    let parent = std::process::id() as libc::pid_t;
    let child = ChildPlan {
        paths: paths.as_ptr(),
        npaths: paths.len(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        pid_digits: if req.listen_pid {
            // SAFETY: in bounds: the slot holds LISTEN_PID + PID_DIGITS + 1 bytes.
            unsafe { pid_slot.as_mut_ptr().add(LISTEN_PID.len()) }
        } else {
            std::ptr::null_mut()
        },
        fds: work.as_mut_ptr(),
        nfds: work.len(),
        others: match &others {
            Others::CloseRange => (std::ptr::null(), 0, 0),
            Others::List(list) => (list.as_ptr(), list.len(), 0),
            Others::Upto(end) => (std::ptr::null(), 0, *end),
        },
        err_fd: err_write.as_raw_fd(),
        intercept: intercept.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        traps: req.traps,
        parent,
        creds: req
            .creds
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        stdio: req
            .stdio
            .map(|(i, o, e)| (i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd())),
        fd_limit: child_fd_limit(),
    };

    let ticks = crate::supervise::reaper::boot_ticks();
    let pid = {
        let _blocked = crate::sigmask::Blocked::new();
        // SAFETY: see the module's safety argument; the child runs only `child.exec()`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child only runs `child.exec()`: raw syscalls, no locks.
            unsafe { child.exec() }
        }
        pid
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(Error::Os(format!("cannot start {shown}: fork failed: {e}")));
    }
    // Both sides set the group, so signals to it work whoever runs first.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::setpgid(pid, pid) };
    crate::supervise::keeper::started(pid, ticks, req.fds);
    drop(err_write);
    drop(intercept);
    Ok(Spawned {
        pid,
        exec: ExecWatch {
            fd: err_read,
            shown: shown.into_owned(),
            explicit,
            candidates,
        },
    })
}

impl AsRawFd for ExecWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An exec status pipe as an upgrade hands it to the next image.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct ExecFd {
    pub pid: i32,
    pub fd: RawFd,
    /// How the exec error is told (see [`ExecWatch`]).
    pub shown: String,
    pub explicit: bool,
    pub candidates: Vec<PathBuf>,
}

impl ExecWatch {
    /// What the next image needs to go on watching it (see `handover`).
    pub fn handover(&self, pid: i32) -> ExecFd {
        ExecFd {
            pid,
            fd: self.fd.as_raw_fd(),
            shown: self.shown.clone(),
            explicit: self.explicit,
            candidates: self.candidates.clone(),
        }
    }

    /// The watch an earlier image handed over; `saved.fd` becomes ours.
    pub fn adopt(saved: ExecFd) -> ExecWatch {
        use std::os::fd::FromRawFd;
        ExecWatch {
            // SAFETY: the handover names fds the previous image left open
            // for us alone; each is adopted once.
            fd: unsafe { OwnedFd::from_raw_fd(saved.fd) },
            shown: saved.shown,
            explicit: saved.explicit,
            candidates: saved.candidates,
        }
    }

    /// Reads what the child reported, without blocking. Once the child has
    /// exited, the answer is final (never Pending).
    pub fn check(&self) -> ExecStatus {
        let mut buf = [0u8; 12];
        let mut got = 0;
        while got < buf.len() {
            match nix::unistd::read(&self.fd, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) if got == 0 => return ExecStatus::Pending,
                // One write of 12 bytes is atomic: a part cannot happen.
                Err(_) => break,
            }
        }
        if got < buf.len() {
            return ExecStatus::Ran;
        }
        let word = |i: usize| i32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (stage, errno, at) = (word(0), word(4), word(8));
        let shown = &self.shown;
        let why = io::Error::from_raw_os_error(errno);
        ExecStatus::Failed(match stage {
            STAGE_CREDS => Error::Os(format!(
                "cannot switch {shown} to the --user/--group credentials: {why}"
            )),
            STAGE_INTERCEPT => Error::Os(format!(
                "cannot hand {shown}'s seccomp notification fd to relaunch ({why}): under \
                 that filter with nobody to answer, every bind, listen and \
                 shutdown(SHUT_RD/SHUT_RDWR) of it would fail with ENOSYS, so it did not run"
            )),
            STAGE_LIMIT => Error::Os(format!(
                "cannot give {shown} the fd limit (ulimit -n) relaunch started with: {why}"
            )),
            STAGE_FDS => Error::Os(format!(
                "cannot place the sockets at fd 3.. for {shown}: {why}"
            )),
            _ => {
                let path = usize::try_from(at)
                    .ok()
                    .and_then(|i| self.candidates.get(i));
                exec_error(shown, self.explicit, path.map(|p| p.as_path()), errno)
            }
        })
    }
}

/// Where the child failed, reported with the errno.
const STAGE_EXEC: i32 = 0;
const STAGE_CREDS: i32 = 1;
const STAGE_FDS: i32 = 2;
const STAGE_LIMIT: i32 = 3;
const STAGE_INTERCEPT: i32 = 4;

/// Raw pointers into memory the parent prepared; valid in the child's copy.
struct ChildPlan {
    /// Where to look for the program, in order (PATH, or the one path given).
    paths: *const *const c_char,
    npaths: usize,
    argv: *const *const c_char,
    envp: *const *const c_char,
    pid_digits: *mut u8,
    fds: *mut RawFd,
    nfds: usize,
    /// The fds to mark close-on-exec when close_range cannot: (list, its
    /// length, or else every fd below this bound); all zero: close_range.
    others: (*const RawFd, usize, RawFd),
    err_fd: RawFd,
    /// The child's end of the pair the seccomp notification fd goes over;
    /// -1: no interception. At or above first_free, like err_fd.
    intercept: RawFd,
    traps: crate::intercept::filter::Traps,
    parent: libc::pid_t,
    /// uid, gid, supplementary groups (pointer, length).
    creds: Option<(libc::uid_t, libc::gid_t, *const libc::gid_t, usize)>,
    /// (stdin, stdout, stderr) to put at 0, 1 and 2.
    stdio: Option<(RawFd, RawFd, RawFd)>,
    /// The fd limit relaunch started with, where it raised its own.
    fd_limit: Option<libc::rlimit>,
}

impl ChildPlan {
    /// Runs in the child between fork and exec: raw syscalls only.
    unsafe fn exec(&self) -> ! {
        unsafe {
            libc::setpgid(0, 0);
            if let Some((uid, gid, groups, ngroups)) = self.creds
                && (libc::setgroups(ngroups, groups) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                self.fail(self.err_fd, STAGE_CREDS);
            }
            // After the credential change, which clears it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            // relaunch died before the prctl took effect.
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            // Before the sockets are placed, which may reuse these numbers.
            if let Some((input, output, errors)) = self.stdio
                && (libc::dup2(input, 0) < 0
                    || libc::dup2(output, 1) < 0
                    || libc::dup2(errors, 2) < 0)
            {
                self.fail(self.err_fd, STAGE_FDS);
            }
            let first_free = 3 + self.nfds as RawFd;
            // At or above first_free (see `above`), so no dup2 below clobbers it.
            let err_fd = self.err_fd;
            let fds = std::slice::from_raw_parts_mut(self.fds, self.nfds);
            // Move every source out of the target range first, so no dup2 clobbers one.
            for fd in fds.iter_mut() {
                if *fd < first_free {
                    let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first_free);
                    if moved < 0 {
                        self.fail(err_fd, STAGE_FDS);
                    }
                    *fd = moved;
                }
            }
            for (i, fd) in fds.iter().enumerate() {
                // dup2 onto a different number clears close-on-exec on the copy.
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    self.fail(err_fd, STAGE_FDS);
                }
            }
            // Whatever else is open (leaked to relaunch by its parent) stays behind.
            let (list, len, upto) = self.others;
            if !list.is_null() {
                for &fd in std::slice::from_raw_parts(list, len) {
                    set_cloexec(fd);
                }
            } else if upto > 0 {
                for fd in first_free..upto {
                    set_cloexec(fd);
                }
            } else if libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                self.fail(err_fd, STAGE_FDS);
            }
            // Last of the set-up, after --user dropped privileges: the
            // filter traps only bind, listen and shutdown, which nothing
            // here calls.
            if self.intercept >= 0
                && let Err(errno) = crate::intercept::filter::install(self.intercept, self.traps)
            {
                self.report(err_fd, STAGE_INTERCEPT, errno, -1);
            }
            // After the filter, whose notification fd may need a number
            // above the old limit.
            if let Some(limit) = &self.fd_limit
                && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
            {
                self.fail(err_fd, STAGE_LIMIT);
            }
            if !self.pid_digits.is_null() {
                let digits = std::slice::from_raw_parts_mut(self.pid_digits, PID_DIGITS + 1);
                write_decimal(libc::getpid() as u64, digits);
            }
            for sig in 1..=libc::SIGRTMAX() {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            self.exec_each(err_fd)
        }
    }

    /// execvp's search: ENOENT, ENOTDIR (and ESTALE, ENODEV, ETIMEDOUT, as
    /// glibc does) try the next candidate; EACCES
    /// (or a file whose interpreter is missing) is remembered, and reported
    /// if nothing runs; any other error ends the search.
    unsafe fn exec_each(&self, err_fd: RawFd) -> ! {
        unsafe {
            let mut found = (libc::ENOENT, -1);
            for i in 0..self.npaths {
                let path = *self.paths.add(i);
                libc::execve(path, self.argv, self.envp);
                let errno = *libc::__errno_location();
                let mut st: libc::stat = std::mem::zeroed();
                let exists = libc::stat(path, &mut st) == 0;
                match errno {
                    libc::ENOENT | libc::ENOTDIR if !exists => continue,
                    // What execvp also skips: a stale or vanished mount.
                    libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => continue,
                    libc::ENOENT | libc::EACCES => {
                        if found.1 < 0 {
                            let dir = exists && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                            found = (if dir { libc::EISDIR } else { errno }, i as i32);
                        }
                    }
                    _ => {
                        found = (errno, i as i32);
                        break;
                    }
                }
            }
            self.report(err_fd, STAGE_EXEC, found.0, found.1)
        }
    }

    /// Reports (stage, errno) to the parent and exits like a shell would.
    unsafe fn fail(&self, err_fd: RawFd, stage: i32) -> ! {
        unsafe { self.report(err_fd, stage, *libc::__errno_location(), -1) }
    }

    /// Writes (stage, errno, candidate) to the parent and exits.
    unsafe fn report(&self, err_fd: RawFd, stage: i32, errno: i32, at: i32) -> ! {
        unsafe {
            let mut msg = [0u8; 12];
            msg[..4].copy_from_slice(&stage.to_ne_bytes());
            msg[4..8].copy_from_slice(&errno.to_ne_bytes());
            msg[8..].copy_from_slice(&at.to_ne_bytes());
            libc::write(err_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(if stage == STAGE_EXEC && errno == libc::ENOENT {
                127
            } else {
                126
            })
        }
    }
}

/// `fd`, or a close-on-exec copy of it numbered `first_free` or more.
fn above(fd: OwnedFd, first_free: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= first_free {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(first_free))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
}

/// Marks `fd` close-on-exec if it is open; async-signal-safe.
unsafe fn set_cloexec(fd: RawFd) {
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// How the child keeps every fd from `first_free` up out of the program:
/// close_range(CLOSE_RANGE_CLOEXEC) where the kernel has it (5.11+), else
/// the list of fds open now, prepared here because the child may not allocate.
enum Others {
    CloseRange,
    List(Vec<RawFd>),
    /// No /proc either: every fd number below the fd limit.
    Upto(RawFd),
}

impl Others {
    fn find(first_free: RawFd) -> Others {
        if close_range_works() {
            return Others::CloseRange;
        }
        Others::list(first_free)
    }

    fn list(first_free: RawFd) -> Others {
        match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => Others::List(
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .filter(|&fd: &RawFd| fd >= first_free)
                    .collect(),
            ),
            Err(_) => {
                let limit =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                        .map_or(1024, |(soft, _)| soft);
                Others::Upto(limit.min(RawFd::MAX as u64) as RawFd)
            }
        }
    }
}

/// Whether close_range knows CLOSE_RANGE_CLOEXEC (Linux 5.11+); asked once.
/// `RELAUNCH_TEST_NO_CLOSE_RANGE=1` says no, so tests can take the fallback.
fn close_range_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        if std::env::var_os("RELAUNCH_TEST_NO_CLOSE_RANGE").is_some_and(|v| v == "1") {
            return false;
        }
        // An empty range: nothing changes where the call works; EINVAL (5.9,
        // 5.10) or ENOSYS (older) where it does not.
        // SAFETY: close_range over fds nobody has touches nothing.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::MAX,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) == 0
        }
    })
}

/// Writes `n` in decimal followed by NUL; `buf` must hold 21 bytes.
fn write_decimal(mut n: u64, buf: &mut [u8]) {
    let mut tmp = [0u8; PID_DIGITS];
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
    buf[len] = 0;
}

fn exec_error(shown: &str, explicit: bool, path: Option<&Path>, errno: i32) -> Error {
    let why = io::Error::from_raw_os_error(errno);
    match (errno, path) {
        (libc::ENOENT, None) if explicit => {
            Error::NotFound(format!("cannot run {shown}: no such file"))
        }
        (libc::ENOENT, None) => {
            Error::NotFound(format!("cannot run {shown}: command not found in PATH"))
        }
        (libc::ENOENT, Some(p)) => Error::NotFound(format!(
            "cannot run {shown}: {} (the program or its interpreter is missing)",
            p.display()
        )),
        (libc::EISDIR, _) => Error::NotExecutable(format!("cannot run {shown}: it is a directory")),
        (libc::EACCES, _) if explicit => Error::NotExecutable(format!(
            "cannot run {shown}: permission denied (not executable; try chmod +x {shown})"
        )),
        (libc::EACCES, Some(p)) => Error::NotExecutable(format!(
            "cannot run {shown}: {} is not executable",
            p.display()
        )),
        (libc::ENOEXEC, _) => Error::NotExecutable(format!(
            "cannot run {shown}: not an executable format (a script needs a #! line)"
        )),
        _ => Error::NotExecutable(format!("cannot run {shown}: {why}")),
    }
}

/// Whether `program` can be found as exec would look for it (the PATH of
/// `env`), and is a file with an execute bit. For `--lazy`, which starts
/// nothing until the first connection: a typo shows at start, not then.
/// The same messages as a failed exec.
pub fn check_program(program: &OsStr, env: &[(OsString, OsString)]) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let shown = program.to_string_lossy();
    let (explicit, candidates) = candidates(program, env_path(env));
    let mut denied = None;
    for c in &candidates {
        match std::fs::metadata(c) {
            Ok(m) if m.is_dir() && explicit => {
                return Err(exec_error(&shown, explicit, None, libc::EISDIR));
            }
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
            Ok(m) if m.is_file() => denied = denied.or(Some(c)),
            _ => {}
        }
    }
    let (errno, path) = match denied {
        Some(p) => (libc::EACCES, Some(p.as_path()).filter(|_| !explicit)),
        None => (libc::ENOENT, None),
    };
    Err(exec_error(&shown, explicit, path, errno))
}

fn env_path(env: &[(OsString, OsString)]) -> Option<&OsStr> {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str())
}

/// Where execvp would look for `program`, built without touching the
/// filesystem: whether it was given as a path, and the paths to try.
fn candidates(program: &OsStr, path_var: Option<&OsStr>) -> (bool, Vec<PathBuf>) {
    if program.as_bytes().contains(&b'/') {
        return (true, vec![PathBuf::from(program)]);
    }
    let dirs = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let found = std::env::split_paths(dirs)
        .map(|dir| dir.join(program))
        .collect();
    (false, found)
}

/// The soft fd limit (RLIMIT_NOFILE) relaunch started with, which every
/// child gets back; u64::MAX until [`raise_fd_limit`].
static STARTED_FD_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Hands [`STARTED_FD_LIMIT`] to the next image of an upgrade, which
/// inherits the raised limit.
pub const FD_LIMIT_ENV: &str = "RELAUNCH_FD_LIMIT";

/// At start: relaunch's soft fd limit goes up to the hard one, so that
/// answering a child (an fd or two per trapped call, for a moment) does
/// not meet EMFILE; children get the limit it started with, as programs
/// using select() need 1024. `upgraded`: an earlier image of relaunch
/// handed over, and its `RELAUNCH_FD_LIMIT` says what that limit was.
pub fn raise_fd_limit(upgraded: bool) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let started = std::env::var(FD_LIMIT_ENV)
        .ok()
        .filter(|_| upgraded)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n <= hard)
        .unwrap_or(soft);
    STARTED_FD_LIMIT.store(started, std::sync::atomic::Ordering::Relaxed);
    // Raising the soft limit up to the hard one is always allowed; should it
    // fail anyway, relaunch runs with the limit it got.
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// What the child's RLIMIT_NOFILE is set back to, if relaunch changed it.
fn child_fd_limit() -> Option<libc::rlimit> {
    let started = started_fd_limit()?;
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    (started != soft).then_some(libc::rlimit {
        rlim_cur: started.min(hard),
        rlim_max: hard,
    })
}

/// The soft fd limit relaunch started with (for an upgrade's next image).
pub fn started_fd_limit() -> Option<u64> {
    Some(STARTED_FD_LIMIT.load(std::sync::atomic::Ordering::Relaxed)).filter(|&n| n != u64::MAX)
}

/// Makes sure fds 0-2 are open, so no listener or pipe of ours lands there.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries; open() takes the lowest free fd, which is
        // `fd` itself, and it is meant to stay open for our whole life.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_checked_as_exec_would_look_for_them() {
        let env = [("PATH".into(), "/nonexistent:/bin:/usr/bin".into())];
        assert!(check_program(OsStr::new("sh"), &env).is_ok());
        assert!(check_program(OsStr::new("/bin/sh"), &env).is_ok());
        let missing = check_program(OsStr::new("no-such-program-x"), &env).unwrap_err();
        assert!(
            matches!(&missing, Error::NotFound(m) if m.contains("command not found in PATH")),
            "{missing:?}"
        );
        let dir = check_program(OsStr::new("/"), &env).unwrap_err();
        assert!(
            matches!(&dir, Error::NotExecutable(m) if m.contains("directory")),
            "{dir:?}"
        );
        // A file without an execute bit.
        let plain = std::env::temp_dir().join(format!("relaunch-noexec-{}", std::process::id()));
        std::fs::write(&plain, "").unwrap();
        let denied = check_program(plain.as_os_str(), &env).unwrap_err();
        let _ = std::fs::remove_file(&plain);
        assert!(
            matches!(&denied, Error::NotExecutable(m) if m.contains("permission denied")),
            "{denied:?}"
        );
    }

    #[test]
    fn decimal() {
        for (n, s) in [
            (0u64, "0"),
            (7, "7"),
            (1234, "1234"),
            (4194304, "4194304"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut buf = [0xffu8; PID_DIGITS + 1];
            write_decimal(n, &mut buf);
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), s);
        }
    }

    #[test]
    fn the_status_pipe_goes_above_the_placed_fds_or_fails() {
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let raw = w.as_raw_fd();
        let moved = above(w, raw + 50).unwrap();
        assert!(moved.as_raw_fd() >= raw + 50);
        let flags = nix::fcntl::fcntl(&moved, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        // No fd number that high may exist: an error, never a silent -1.
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        assert!(above(w, soft.min(i32::MAX as u64) as RawFd).is_err());
    }

    #[test]
    fn the_fallback_lists_every_fd_from_first_free() {
        let (_r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::empty()).unwrap();
        let raw = w.as_raw_fd();
        let Others::List(list) = Others::list(raw) else {
            panic!("/proc/self/fd is readable here");
        };
        assert!(list.contains(&raw), "{list:?}");
        assert!(list.iter().all(|&fd| fd >= raw), "{list:?}");
    }

    #[test]
    fn candidates_follow_path_without_looking() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        assert_eq!(
            candidates(OsStr::new("sh"), Some(path)),
            (
                false,
                vec![
                    PathBuf::from("/nonexistent/sh"),
                    PathBuf::from("/bin/sh"),
                    PathBuf::from("/usr/bin/sh")
                ]
            )
        );
        assert_eq!(
            candidates(OsStr::new("./x"), Some(path)),
            (true, vec![PathBuf::from("./x")])
        );
        assert_eq!(candidates(OsStr::new("x"), None).1.len(), 3);
    }

    /// Spawns `program`, waits for it to exit, and returns what its pipe said.
    fn outcome(program: &str) -> (ExecStatus, i32) {
        let env = [("PATH".into(), "/nonexistent:/bin:/usr/bin".into())];
        let args = [OsString::from("-c"), OsString::from("exit 0")];
        let s = spawn(&Request {
            program: OsStr::new(program),
            args: &args,
            env: &env,
            fds: &[],
            listen_pid: true,
            creds: None,
            intercept: None,
            traps: Default::default(),
            stdio: None,
        })
        .unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(s.pid, &mut status, 0) };
        (s.exec.check(), libc::WEXITSTATUS(status))
    }

    #[test]
    fn exec_outcome_comes_through_the_pipe() {
        let (ran, code) = outcome("sh");
        assert!(matches!(ran, ExecStatus::Ran), "{ran:?}");
        assert_eq!(code, 0);
        let (missing, code) = outcome("no-such-prog-xyz");
        assert!(
            matches!(&missing, ExecStatus::Failed(Error::NotFound(m)) if m.contains("command not found in PATH")),
            "{missing:?}"
        );
        assert_eq!(code, 127);
        let (dir, code) = outcome("/");
        assert!(
            matches!(&dir, ExecStatus::Failed(Error::NotExecutable(m)) if m.contains("directory")),
            "{dir:?}"
        );
        assert_eq!(code, 126);
        let (plain, code) = outcome("/etc/passwd");
        assert!(
            matches!(&plain, ExecStatus::Failed(Error::NotExecutable(m)) if m.contains("chmod +x")),
            "{plain:?}"
        );
        assert_eq!(code, 126);
        let (gone, code) = outcome("./no/such");
        assert!(
            matches!(&gone, ExecStatus::Failed(Error::NotFound(m)) if m.contains("no such file")),
            "{gone:?}"
        );
        assert_eq!(code, 127);
    }
}
