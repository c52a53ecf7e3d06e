//! The life of a Unix socket file relaunch creates, for the listeners and the
//! control socket alike.
//!
//! - Claim: an existing file at the path is replaced only if it is a socket
//!   nobody accepts on (a non-blocking connect gets ECONNREFUSED). A live
//!   socket, anything that is not a socket, or a probe that fails for another
//!   reason (EACCES) leaves the file alone and is an error.
//! - Bind: the socket inode gets its mode before `bind`, so the file is never
//!   born wider than asked (Linux takes the mode from the inode, minus the
//!   umask). Right after `bind` the file is pinned with
//!   `O_PATH | O_NOFOLLOW` and must be a socket with one link, owned by us;
//!   the exact mode and the owner are then set on that pinned inode
//!   (`fchmodat2`, or `/proc/self/fd/N` before Linux 6.6, for the mode;
//!   `fchownat(fd, "", AT_EMPTY_PATH)` for the owner), never through the
//!   path, so a symlink or another file swapped in meanwhile is never touched. Afterwards the path must still name the
//!   pinned inode (device and inode number).
//! - Remove: on drop, only if the path still names the inode we bound.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::who;

/// Who may connect: the file's mode and, when set, its owner and group.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Access {
    pub mode: u32,
    pub owner: Option<libc::uid_t>,
    pub group: Option<libc::gid_t>,
}

/// How errors name the file and what to do instead.
pub struct Role<'a> {
    /// `control socket /run/x.sock`, `unix:/run/app.sock`.
    pub label: &'a str,
    /// `pick another --control path`.
    pub elsewhere: &'a str,
    /// The hint when someone else is listening there.
    pub in_use: &'a str,
}

/// A socket file we created; removed on drop if the path still names it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// The path and the (device, inode) it must still name to be removed.
    pub fn path_identity(&self) -> (PathBuf, (u64, u64)) {
        (self.path.clone(), self.identity)
    }

    /// A file an earlier image of relaunch created (see `supervise::handover`).
    pub fn adopt(path: PathBuf, identity: (u64, u64)) -> SocketFile {
        SocketFile { path, identity }
    }

    /// (device, inode) of the file relaunch created.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.identity);
    }
}

/// Claims `path`, binds a new stream socket there with `access` (not yet
/// listening, so nobody connects before the owner is set).
pub fn bind(path: &Path, access: &Access, role: &Role) -> Result<(Socket, SocketFile)> {
    check_folder(path, role)?;
    claim(path, role)?;
    let (socket, pinned) = create(path, access.mode, role)?;
    let file = finish(path, pinned, access, role)?;
    Ok((socket, file))
}

/// The socket and its file pinned right after bind: (fd, dev, ino).
type Pinned = (OwnedFd, (u64, u64));

fn create(path: &Path, mode: u32, role: &Role) -> Result<(Socket, Pinned)> {
    let label = role.label;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| Error::runtime(format!("cannot create {label}: socket: {e}")))?;
    nix::sys::stat::fchmod(&sock, nix::sys::stat::Mode::from_bits_truncate(mode))
        .map_err(|e| Error::runtime(format!("cannot create {label}: fchmod: {e}")))?;
    let addr = SockAddr::unix(path).map_err(|e| bind_error(role, &e))?;
    sock.bind(&addr).map_err(|e| bind_error(role, &e))?;
    let replaced = |why: String| {
        Error::runtime(format!(
            "{label} was replaced right after relaunch created it ({why}); relaunch leaves it alone"
        ))
        .hint(format!(
            "something else is changing files in that folder; {}",
            role.elsewhere
        ))
    };
    let pinned = pin(path).map_err(|e| replaced(e.to_string()))?;
    let st = nix::sys::stat::fstat(&pinned).map_err(|e| replaced(e.to_string()))?;
    let is_socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    if !is_socket || st.st_nlink != 1 || st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(replaced("it is not the socket relaunch bound".into()));
    }
    Ok((sock, (pinned, (st.st_dev, st.st_ino))))
}

/// Sets the exact mode and the owner on the pinned inode, then checks that
/// the path still names it. The file is ours from here: removed on error.
fn finish(path: &Path, pinned: Pinned, access: &Access, role: &Role) -> Result<SocketFile> {
    let (fd, identity) = pinned;
    let file = SocketFile {
        path: path.to_path_buf(),
        identity,
    };
    let label = role.label;
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::runtime(format!("cannot inspect {label}: {e}")))?;
    // The umask may have narrowed it; never widened, so this only opens up.
    if st.st_mode & 0o7777 != access.mode {
        chmod_pinned(&fd, access.mode).map_err(|e| {
            Error::runtime(format!(
                "cannot set the mode of {label} to {:o}: {e}",
                access.mode
            ))
            .hint("mount /proc (relaunch sets the mode through /proc/self/fd on kernels before 6.6), or start relaunch with a umask that keeps the mode (umask 000)")
        })?;
    }
    if access.owner.is_some() || access.group.is_some() {
        let uid = access.owner.unwrap_or(u32::MAX);
        let gid = access.group.unwrap_or(u32::MAX);
        // SAFETY: an empty path with AT_EMPTY_PATH acts on the pinned fd itself.
        let rc =
            unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(Error::runtime(format!("cannot chown {label}: {e}"))
                .hint("owner= and group= need relaunch to run as root"));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == identity => Ok(file),
        _ => Err(Error::runtime(format!(
            "{label} was replaced while relaunch set its mode and owner; relaunch leaves it alone"
        ))
        .hint(format!(
            "something else is changing files in that folder; {}",
            role.elsewhere
        ))),
    }
}

/// Linux 6.6+; one number on every architecture (libc lacks it on some).
const SYS_FCHMODAT2: libc::c_long = 452;

/// chmod of the pinned inode itself: fchmodat2(fd, "", AT_EMPTY_PATH) on
/// Linux 6.6+, else through the /proc/self/fd link to that very inode.
fn chmod_pinned(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH acts on `fd` only.
    let rc = unsafe {
        libc::syscall(
            SYS_FCHMODAT2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(e);
    }
    chmod_through_proc(fd, mode)
}

fn chmod_through_proc(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    let link = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    // SAFETY: a NUL-terminated path; chmod follows the magic link to the pinned inode.
    if unsafe { libc::chmod(link.as_ptr().cast(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An O_PATH fd of the file at `path` itself, never of a symlink's target.
fn pin(path: &Path) -> io::Result<OwnedFd> {
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: a NUL-terminated path; the fd returned is new and ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr().cast(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check_folder(path: &Path, role: &Role) -> Result<()> {
    let label = role.label;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let f = folder.display();
    match std::fs::metadata(folder) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(
            Error::runtime(format!("cannot create {label}: {f} is not a folder")).hint(format!(
                "use a path inside an existing folder, or {}",
                role.elsewhere
            )),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::runtime(format!(
            "cannot create {label}: the folder {f} does not exist"
        ))
        .hint(format!(
            "create it first (mkdir -p {f}, or RuntimeDirectory= in a systemd unit), or {}",
            role.elsewhere
        ))),
        Err(e) => Err(Error::runtime(format!(
            "cannot create {label}: cannot inspect the folder {f}: {e}"
        ))
        .hint(format!(
            "check the folder's permissions, or {}",
            role.elsewhere
        ))),
    }
}

/// Removes a stale socket file at `path`; fails on a live one or a non-socket.
fn claim(path: &Path, role: &Role) -> Result<()> {
    let label = role.label;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(
                Error::runtime(format!("cannot inspect {label}: {e}")).hint(format!(
                    "check the folder's permissions, or {}",
                    role.elsewhere
                )),
            );
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::runtime(format!(
            "cannot create {label}: the path exists and is not a socket"
        ))
        .hint(format!(
            "relaunch only replaces stale sockets: move that file away, or {}",
            role.elsewhere
        )));
    }
    match probe(path) {
        Ok(Probe::Live(pid)) => {
            let holder = who::lookup(&who::Target::Unix(path.display().to_string()))
                .ok()
                .and_then(|r| who::holder_phrase(&r))
                .or(pid.map(|p| format!("pid {p}")))
                .unwrap_or_else(|| "another process".into());
            Err(Error::runtime(format!("{label} is already in use by {holder}")).hint(role.in_use))
        }
        Ok(Probe::Gone) => Ok(()),
        // Nobody accepts: a leftover from a process that died.
        Ok(Probe::Stale) => match std::fs::remove_file(path) {
            Ok(()) => {
                info!(path = %path.display(), "removed a stale socket file");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(
                Error::runtime(format!("cannot remove the stale {label}: {e}"))
                    .hint(format!("remove it by hand, or {}", role.elsewhere)),
            ),
        },
        // EACCES and the like say nothing about liveness: never unlink then.
        Err(e) => Err(Error::runtime(format!(
            "cannot tell whether {label} is in use ({e}), so relaunch leaves it alone"
        ))
        .hint(format!(
            "remove the file yourself if it is stale, or {}",
            role.elsewhere
        ))),
    }
}

fn bind_error(role: &Role, e: &io::Error) -> Error {
    let label = role.label;
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            Error::runtime(format!("{label} was just created by another process")).hint(format!(
                "another program is starting with the same path; {}",
                role.elsewhere
            ))
        }
        io::ErrorKind::PermissionDenied => {
            Error::runtime(format!("permission denied creating {label}")).hint(format!(
                "use a folder relaunch's user can write to, or {}",
                role.elsewhere
            ))
        }
        io::ErrorKind::InvalidInput => Error::runtime(format!(
            "{label}: the path is too long for a Unix socket (at most 107 bytes)"
        ))
        .hint(format!("use a shorter path: {}", role.elsewhere)),
        _ => Error::runtime(format!("cannot create {label}: {e}")).hint(format!(
            "check the folder's permissions, or {}",
            role.elsewhere
        )),
    }
}

/// What a probe connection to an existing socket file found.
pub enum Probe {
    /// Someone accepts on it; the pid if SO_PEERCRED told.
    Live(Option<i32>),
    /// Nobody accepts on it.
    Stale,
    /// The file disappeared meanwhile.
    Gone,
}

/// Connects without blocking to tell a live socket file from a stale one.
pub fn probe(path: &Path) -> io::Result<Probe> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Non-blocking so a live relaunch with a full backlog can't hang us.
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => {
            let pid = getsockopt(&socket, PeerCredentials)
                .ok()
                .map(|c| c.pid())
                .filter(|&p| p > 0);
            Ok(Probe::Live(pid))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Probe::Live(None)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Probe::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(e) => Err(e),
    }
}

/// Removes `path` if it still names the file we created: (device, inode).
pub fn remove_if_ours(path: &Path, identity: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == identity => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), "cannot remove the file relaunch created: {e}");
            }
        }
        Ok(_) => {
            debug!(path = %path.display(), "the file was replaced by someone else; leaving it")
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("relaunch-file-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ROLE: Role = Role {
        label: "test socket",
        elsewhere: "choose another path",
        in_use: "stop it",
    };

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A symlink (to a file root owns) swapped in for the socket between
    /// bind and chmod/chown is left alone.
    #[test]
    fn a_symlink_swapped_in_is_not_chmodded_or_chowned() {
        let dir = Dir::new("swap");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        let path = dir.0.join("app.sock");
        let owner = (nix::unistd::geteuid().is_root()).then_some(65534);
        let access = Access {
            mode: 0o666,
            owner,
            group: None,
        };
        let (_sock, pinned) = create(&path, access.mode, &ROLE).unwrap();
        // The app user, who can write the folder, swaps the file.
        let moved = dir.0.join("moved.sock");
        std::fs::rename(&path, &moved).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = finish(&path, pinned, &access, &ROLE).unwrap_err();
        assert!(e.msg.contains("was replaced"), "{e}");
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o600, "the victim was chmodded");
        assert_eq!(after.uid(), before.uid(), "the victim was chowned");
        assert!(
            std::fs::symlink_metadata(&path).unwrap().is_symlink(),
            "not ours: left alone"
        );
        // The socket relaunch bound got the access it asked for.
        assert_eq!(mode(&moved), 0o666);
        if let Some(uid) = owner {
            assert_eq!(std::fs::symlink_metadata(&moved).unwrap().uid(), uid);
        }
    }

    #[test]
    fn a_symlink_at_the_path_is_not_a_stale_socket() {
        let dir = Dir::new("link");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let path = dir.0.join("app.sock");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let access = Access {
            mode: 0o600,
            owner: None,
            group: None,
        };
        let e = bind(&path, &access, &ROLE).unwrap_err();
        assert!(e.msg.ends_with("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn mode_is_exact_and_the_file_goes_when_dropped() {
        let dir = Dir::new("mode");
        let path = dir.0.join("app.sock");
        for m in [0o600, 0o660, 0o666] {
            let access = Access {
                mode: m,
                owner: None,
                group: None,
            };
            let (_sock, file) = bind(&path, &access, &ROLE).unwrap();
            assert_eq!(mode(&path), m);
            drop(file);
            assert!(std::fs::symlink_metadata(&path).is_err());
        }
    }

    #[test]
    fn the_file_is_never_born_wider_than_asked() {
        // Before the exact chmod: the mode it was born with. Without the
        // fchmod before bind it would be 0777 minus the umask.
        let dir = Dir::new("born");
        let path = dir.0.join("ctl.sock");
        let (_sock, _pinned) = create(&path, 0o600, &ROLE).unwrap();
        assert_eq!(mode(&path) & 0o077, 0, "born with mode {:o}", mode(&path));
    }

    #[test]
    fn both_ways_of_chmod_act_on_the_pinned_inode() {
        let dir = Dir::new("chmod");
        let path = dir.0.join("app.sock");
        let (_sock, (fd, _)) = create(&path, 0o600, &ROLE).unwrap();
        chmod_pinned(&fd, 0o640).unwrap();
        assert_eq!(mode(&path), 0o640);
        chmod_through_proc(&fd, 0o604).unwrap();
        assert_eq!(mode(&path), 0o604);
    }

    #[test]
    fn stale_is_replaced_live_is_refused() {
        let dir = Dir::new("stale");
        let path = dir.0.join("app.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let access = Access {
            mode: 0o600,
            owner: None,
            group: None,
        };
        let (_sock, file) = bind(&path, &access, &ROLE).unwrap();
        drop(file);
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = bind(&path, &access, &ROLE).unwrap_err();
        assert!(
            e.msg.starts_with("test socket is already in use by pid"),
            "{e}"
        );
        assert_eq!(e.hint.as_deref(), Some("stop it"));
    }
}
