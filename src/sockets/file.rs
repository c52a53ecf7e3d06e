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
//!
//! The socket's folder is pinned ([`Folder`]) when relaunch first binds
//! there, and every later step (stat, probe, bind, pin, rename, unlink) goes
//! through that fd: an app that can write a folder above the socket and
//! swaps it for a symlink moves nothing relaunch does as root elsewhere.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

impl Access {
    /// The access of the file `st` is of. The owner and group only where
    /// they are not relaunch's own (so a non-root relaunch can set them).
    pub fn of(st: &libc::stat) -> Access {
        let other = |id: u32, me: u32| (id != me).then_some(id);
        Access {
            mode: st.st_mode & 0o7777,
            owner: other(st.st_uid, nix::unistd::geteuid().as_raw()),
            group: other(st.st_gid, nix::unistd::getegid().as_raw()),
        }
    }
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

/// A socket file we created; removed on drop if its name in the pinned
/// folder still names it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// None: the folder was gone when an upgrade adopted the file.
    folder: Option<Folder>,
    name: OsString,
    identity: (u64, u64),
}

impl SocketFile {
    /// Its name in its folder.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    // The driver calls it when it steers a Unix listener.
    #[cfg_attr(not(test), allow(dead_code))]
    /// Its name is now `identity`, another file relaunch made, renamed over
    /// it ([`Folder::rename_over`]): that one is removed in its place.
    pub fn renamed_over(&mut self, identity: (u64, u64)) {
        self.identity = identity;
    }

    /// The path and the (device, inode) it must still name to be removed.
    pub fn path_identity(&self) -> (PathBuf, (u64, u64)) {
        (self.path.clone(), self.identity)
    }

    /// A file an earlier image of relaunch created (see `supervise::handover`).
    pub fn adopt(path: PathBuf, identity: (u64, u64)) -> SocketFile {
        let (folder, name) = match Folder::of(&path) {
            Ok((f, n)) => (Some(f), n),
            Err(_) => (None, OsString::new()),
        };
        SocketFile {
            path,
            folder,
            name,
            identity,
        }
    }

    /// The file of the Unix listener `socket` (bound at `addr`) that an
    /// earlier relaunch made and kept in systemd's fd store, if `addr`
    /// still names that very file: unix_diag gives the file the socket is
    /// bound to. It is then relaunch's as if bound here (removed on exit,
    /// renamed over at reloads).
    pub fn of_bound(socket: &Socket, addr: Option<&crate::plan::spec::Addr>) -> Option<SocketFile> {
        let Some(crate::plan::spec::Addr::Unix(path)) = addr else {
            return None;
        };
        let inode = nix::sys::stat::fstat(socket).ok()?.st_ino;
        let bound = crate::proc::unix_streams(1 << crate::proc::TCP_LISTEN)
            .ok()?
            .into_iter()
            .find(|s| s.inode == inode)?
            .file?;
        let path = std::path::absolute(path).ok()?;
        let (folder, name) = Folder::of(&path).ok()?;
        let st = folder.stat(&name).ok()??;
        // unix_diag gives the inode's low 32 bits.
        let id = (st.st_dev, st.st_ino);
        ((id.0, id.1 & u64::from(u32::MAX)) == bound).then(|| SocketFile::adopt(path, id))
    }

    /// The file `name` in the pinned `folder`, whose (device, inode) was
    /// `identity` when relaunch made it.
    pub fn in_folder(folder: &Folder, name: &OsStr, identity: (u64, u64)) -> SocketFile {
        SocketFile {
            path: folder.shown(name),
            folder: Some(folder.clone()),
            name: name.to_owned(),
            identity,
        }
    }

    /// The folder it was bound in, pinned then.
    pub fn folder(&self) -> Option<&Folder> {
        self.folder.as_ref()
    }

    /// (device, inode) of the file relaunch created.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(folder) = &self.folder {
            folder.remove_if_ours(&self.name, self.identity);
        }
    }
}

/// A folder pinned by an `O_PATH | O_DIRECTORY` fd: the names in it are
/// reached through that fd, never through the path again, so a folder
/// swapped for a symlink later (by an app that can write the folder above)
/// changes nothing. The one place relaunch acts on names in a folder.
#[derive(Debug, Clone)]
pub struct Folder {
    fd: Arc<OwnedFd>,
    /// As first opened, for messages.
    path: PathBuf,
}

impl Folder {
    /// Pins the folder of `path` now; the file's name in it.
    pub fn of(path: &Path) -> io::Result<(Folder, OsString)> {
        let name = match path.file_name() {
            Some(n) if path.as_os_str().as_bytes().last() != Some(&b'/') => n.to_owned(),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the path names no file",
                ));
            }
        };
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let folder = Folder {
            fd: Arc::new(open_folder_fd(folder)?),
            path: folder.to_path_buf(),
        };
        Ok((folder, name))
    }

    /// (device, inode) of the folder itself.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let st = nix::sys::stat::fstat(self.fd.as_fd())?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Whether `path` leads to this folder through folders (and symlinks)
    /// that only root or relaunch's user can change, so it leads here until
    /// one of them changes it. Anyone goes when relaunch is not root: an app
    /// that could redirect the path can do what relaunch can.
    fn is_reached_surely(&self, path: &Path) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 {
            return true;
        }
        let sure = |uid: u32| uid == 0 || uid == me;
        let walk = || -> io::Result<bool> {
            let mut todo: Vec<OsString> = Vec::new();
            let push = |todo: &mut Vec<OsString>, p: &Path| {
                // Reversed, so pop() takes the next one.
                let mut parts: Vec<OsString> = p
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::RootDir))
                    .map(|c| c.as_os_str().to_owned())
                    .collect();
                parts.reverse();
                todo.extend(parts);
            };
            if !path.is_absolute() {
                return Ok(false);
            }
            push(&mut todo, path);
            let root = Arc::new(open_folder_fd(Path::new("/"))?);
            let mut at = Arc::clone(&root);
            let mut links = 0;
            while let Some(part) = todo.pop() {
                let dir = nix::sys::stat::fstat(at.as_fd())?;
                let folder = Folder {
                    fd: Arc::clone(&at),
                    path: PathBuf::new(),
                };
                let next = folder.pin(&part)?;
                let st = nix::sys::stat::fstat(next.as_fd())?;
                // Its entry here can change only by the folder's owner (or,
                // in a sticky folder, the entry's owner too).
                let writable = dir.st_mode & 0o022 != 0;
                let sticky = dir.st_mode & libc::S_ISVTX != 0;
                if !sure(dir.st_uid) || (writable && !(sticky && sure(st.st_uid))) {
                    return Ok(false);
                }
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => at = Arc::new(next),
                    libc::S_IFLNK => {
                        links += 1;
                        if links > 40 {
                            return Ok(false);
                        }
                        let c = CString::new(part.as_bytes())?;
                        let target = nix::fcntl::readlinkat(at.as_fd(), c.as_c_str())?;
                        let target = PathBuf::from(target);
                        if target.is_absolute() {
                            at = Arc::clone(&root);
                        }
                        push(&mut todo, &target);
                    }
                    _ => return Ok(false),
                }
            }
            let st = nix::sys::stat::fstat(at.as_fd())?;
            Ok(Some((st.st_dev, st.st_ino)) == self.identity().ok())
        };
        walk().unwrap_or(false)
    }

    /// The path the folder had when pinned, joined with `name`.
    pub fn shown(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// `name` itself (never a symlink's target); None if there is none.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let c = CString::new(name.as_bytes())?;
        // SAFETY: zeroed plain struct filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated name relative to our own fd.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(Some(st));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(None);
        }
        Err(e)
    }

    /// An O_PATH fd of `name` itself, never of a symlink's target.
    fn pin(&self, name: &OsStr) -> io::Result<OwnedFd> {
        let c = CString::new(name.as_bytes())?;
        // SAFETY: a NUL-terminated name relative to our own fd; the fd
        // returned is new and ours.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn unlink(&self, name: &OsStr) -> io::Result<()> {
        self.unlinkat(name, 0)
    }

    fn unlinkat(&self, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
        let c = CString::new(name.as_bytes())?;
        // SAFETY: a NUL-terminated name relative to our own fd.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A new folder `name` here that only relaunch's user can enter, pinned.
    fn make_sub(&self, name: &OsStr) -> io::Result<Folder> {
        let c = CString::new(name.as_bytes())?;
        // SAFETY: a NUL-terminated name relative to our own fd.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; the fd returned is new and ours.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Swapped for another folder between mkdir and open?
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} was replaced by a folder relaunch did not make",
                self.shown(name).display()
            )));
        }
        Ok(Folder {
            fd: Arc::new(fd),
            path: self.shown(name),
        })
    }

    /// Puts `from`, a file relaunch made (`identity`), in the place of `to`,
    /// atomically: `to` names one or the other at every instant, so a
    /// client connecting meanwhile finds a socket. `replaced`: the file
    /// relaunch had at `to`, removed once out of the way. Where the kernel
    /// can exchange two names, a file swapped in at `from` meanwhile (by
    /// someone who can write the folder) is put back and never stays at
    /// `to`; elsewhere it is checked just before the rename.
    pub fn rename_over(
        &self,
        from: &OsStr,
        identity: (u64, u64),
        to: &OsStr,
        replaced: (u64, u64),
    ) -> io::Result<()> {
        let is = |name: &OsStr, id| matches!(self.stat(name), Ok(Some(st)) if (st.st_dev, st.st_ino) == id);
        let swapped = || {
            io::Error::other(format!(
                "{} was replaced by a file relaunch did not make",
                self.shown(from).display()
            ))
        };
        if !is(from, identity) {
            return Err(swapped());
        }
        match self.renameat(from, to, libc::RENAME_EXCHANGE) {
            Ok(()) if is(to, identity) => {
                self.remove_if_ours(from, replaced);
                Ok(())
            }
            Ok(()) => {
                // Put back whatever was swapped in.
                self.renameat(from, to, libc::RENAME_EXCHANGE)?;
                Err(swapped())
            }
            // No exchange on this filesystem, or nothing at `to` to exchange.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::ENOENT)
                ) =>
            {
                self.renameat(from, to, 0)?;
                if is(to, identity) {
                    Ok(())
                } else {
                    Err(swapped())
                }
            }
            Err(e) => Err(e),
        }
    }

    /// renameat2 of two names in this folder.
    fn renameat(&self, from: &OsStr, to: &OsStr, flags: libc::c_uint) -> io::Result<()> {
        self.rename_into(from, self, to, flags)
    }

    /// renameat2 of `from` here to `to` in `folder`.
    fn rename_into(
        &self,
        from: &OsStr,
        folder: &Folder,
        to: &OsStr,
        flags: libc::c_uint,
    ) -> io::Result<()> {
        let (from, to) = (CString::new(from.as_bytes())?, CString::new(to.as_bytes())?);
        // SAFETY: NUL-terminated names relative to our own fds.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.fd.as_raw_fd(),
                from.as_ptr(),
                folder.fd.as_raw_fd(),
                to.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `name` if it still is the file we created: (device, inode).
    pub fn remove_if_ours(&self, name: &OsStr, identity: (u64, u64)) {
        let shown = self.shown(name);
        match self.stat(name) {
            Ok(Some(st)) if (st.st_dev, st.st_ino) == identity => {
                if let Err(e) = self.unlink(name) {
                    warn!(path = %shown.display(), "cannot remove the file relaunch created: {e}");
                }
            }
            Ok(Some(_)) => {
                debug!(path = %shown.display(), "the file was replaced by someone else; leaving it")
            }
            _ => {}
        }
    }

    /// Runs `f` on a thread whose working directory is this folder, its
    /// own (unshare(CLONE_FS)), so that `f` can name files relative to
    /// it: Linux has no bindat or connectat.
    fn within<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.in_thread(false, f)
    }

    /// [`within`](Self::within), with this folder as the thread's root
    /// too (chroot, CAP_SYS_CHROOT): an absolute path resolves inside it.
    fn rooted<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.in_thread(true, f)
    }

    /// Whether this process may take a folder as a thread's root (what
    /// [`bind_staged`] does).
    pub fn can_root(&self) -> io::Result<()> {
        self.rooted(|| Ok(()))
    }

    fn in_thread<T: Send>(
        &self,
        root: bool,
        f: impl FnOnce() -> io::Result<T> + Send,
    ) -> io::Result<T> {
        let dir = self.fd.as_fd();
        std::thread::scope(|s| {
            let spawned = {
                // Signals stay the main thread's.
                let _blocked = crate::sigmask::Blocked::new();
                std::thread::Builder::new()
                    .name("folder".into())
                    .stack_size(64 * 1024)
                    .spawn_scoped(s, move || in_folder(dir, root, f))
            };
            spawned?
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the folder thread panicked")))
        })
    }
}

fn open_folder_fd(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; the fd returned is new and ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn in_folder<T>(
    dir: BorrowedFd<'_>,
    root: bool,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    // SAFETY: plain syscalls on this thread's own fs context and our own fd.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0
            || libc::fchdir(dir.as_raw_fd()) != 0
            || (root && libc::chroot(c".".as_ptr()) != 0)
        {
            return Err(io::Error::last_os_error());
        }
    }
    f()
}

/// Claims `path`, binds a new stream socket there with `access` (not yet
/// listening, so nobody connects before the owner is set). Its folder is
/// pinned now: [`SocketFile::folder`].
pub fn bind(path: &Path, access: &Access, role: &Role) -> Result<(Socket, SocketFile)> {
    let (folder, name) = open_folder(path, role)?;
    place(&folder, &name, Some(path), access, role)
}

/// [`bind`] at `name` in a folder pinned earlier, once an app may have
/// swapped a folder on the path. By the whole path (the socket's address,
/// which getsockname tells the app) where nobody but root or relaunch's
/// user can change where it leads; else by the name alone, from inside the
/// pinned folder, and the socket's address is that name.
pub fn bind_in(
    folder: &Folder,
    name: &OsStr,
    access: &Access,
    role: &Role,
) -> Result<(Socket, SocketFile)> {
    let path = folder.shown(name);
    let at = folder
        .is_reached_surely(&folder.path)
        .then_some(path.as_path());
    place(folder, name, at, access, role)
}

/// [`bind_in`] at `name` of a socket whose address is `addr`, another
/// file's (the held socket's: what `getsockname` tells the app and
/// `getpeername` its clients, and what a socket kept in systemd's fd store
/// is matched by). Bound in a staging folder made in `folder`, which the
/// binding thread takes as its root, so `addr` resolves inside it; then
/// moved to `name`. The staging folders are removed either way. Needs
/// CAP_SYS_CHROOT.
pub fn bind_staged(
    folder: &Folder,
    name: &OsStr,
    addr: &Path,
    access: &Access,
    role: &Role,
) -> Result<(Socket, SocketFile)> {
    let label = role.label;
    let failed = |e: io::Error| {
        Error::runtime(format!("cannot create {label}: {e}")).hint(format!(
            "check the folder's permissions, or {}",
            role.elsewhere
        ))
    };
    let mut parts = Vec::new();
    for c in addr.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(p) => parts.push(p),
            _ => {
                return Err(failed(io::Error::other(format!(
                    "{} is not a plain path",
                    addr.display()
                ))));
            }
        }
    }
    let Some(file_name) = parts.pop() else {
        return Err(failed(io::Error::other("the address names no file")));
    };
    claim(folder, name, role)?;
    let mut staging = name.to_owned();
    staging.push(format!(".{}.d", std::process::id()));
    // Each folder made, and its name in the one before.
    let mut made = vec![folder.make_sub(&staging).map_err(failed)?];
    let mut names = vec![staging.as_os_str()];
    let staged = (|| {
        for p in &parts {
            let next = made[made.len() - 1].make_sub(p).map_err(failed)?;
            made.push(next);
            names.push(p);
        }
        let (root, leaf) = (&made[0], &made[made.len() - 1]);
        let (socket, pinned) = create_with(leaf, file_name, access.mode, role, |sock| {
            SockAddr::unix(addr).and_then(|a| root.rooted(|| sock.bind(&a)))
        })?;
        // Removed from the staging folder if anything fails from here.
        let staged = finish(leaf, file_name, pinned, access, role)?;
        leaf.rename_into(file_name, folder, name, libc::RENAME_NOREPLACE)
            .map_err(failed)?;
        Ok((socket, SocketFile::in_folder(folder, name, staged.identity)))
    })();
    for i in (0..made.len()).rev() {
        let parent = if i == 0 { folder } else { &made[i - 1] };
        if let Err(e) = parent.unlinkat(names[i], libc::AT_REMOVEDIR) {
            warn!(
                path = %parent.shown(names[i]).display(),
                "cannot remove the folder relaunch made to bind a socket in: {e}"
            );
        }
    }
    staged
}

/// `at`: bind by that whole path (at start, where the path is the user's
/// word and the socket's address must be it); None: through the folder.
fn place(
    folder: &Folder,
    name: &OsStr,
    at: Option<&Path>,
    access: &Access,
    role: &Role,
) -> Result<(Socket, SocketFile)> {
    claim(folder, name, role)?;
    let (socket, pinned) = create(folder, name, at, access.mode, role)?;
    let file = finish(folder, name, pinned, access, role)?;
    Ok((socket, file))
}

/// The socket and its file pinned right after bind: (fd, dev, ino).
type Pinned = (OwnedFd, (u64, u64));

fn create(
    folder: &Folder,
    name: &OsStr,
    at: Option<&Path>,
    mode: u32,
    role: &Role,
) -> Result<(Socket, Pinned)> {
    create_with(folder, name, mode, role, |sock| match at {
        // Then checked below: the file must be in the folder pinned.
        Some(path) => SockAddr::unix(path).and_then(|a| sock.bind(&a)),
        None => SockAddr::unix(name).and_then(|a| folder.within(|| sock.bind(&a))),
    })
}

/// `bind` must make the socket's file at `name` in `folder`.
fn create_with(
    folder: &Folder,
    name: &OsStr,
    mode: u32,
    role: &Role,
    bind: impl FnOnce(&Socket) -> io::Result<()>,
) -> Result<(Socket, Pinned)> {
    let label = role.label;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| Error::runtime(format!("cannot create {label}: socket: {e}")))?;
    nix::sys::stat::fchmod(&sock, nix::sys::stat::Mode::from_bits_truncate(mode))
        .map_err(|e| Error::runtime(format!("cannot create {label}: fchmod: {e}")))?;
    bind(&sock).map_err(|e| bind_error(role, &e))?;
    let replaced = |why: String| {
        Error::runtime(format!(
            "{label} was replaced right after relaunch created it ({why}); relaunch leaves it alone"
        ))
        .hint(format!(
            "something else is changing files in that folder; {}",
            role.elsewhere
        ))
    };
    let pinned = folder.pin(name).map_err(|e| replaced(e.to_string()))?;
    let st = nix::sys::stat::fstat(&pinned).map_err(|e| replaced(e.to_string()))?;
    let is_socket = st.st_mode & libc::S_IFMT == libc::S_IFSOCK;
    if !is_socket || st.st_nlink != 1 || st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(replaced("it is not the socket relaunch bound".into()));
    }
    Ok((sock, (pinned, (st.st_dev, st.st_ino))))
}

/// Sets the exact mode and the owner on the pinned inode, then checks that
/// the path still names it. The file is ours from here: removed on error.
fn finish(
    folder: &Folder,
    name: &OsStr,
    pinned: Pinned,
    access: &Access,
    role: &Role,
) -> Result<SocketFile> {
    let (fd, identity) = pinned;
    let file = SocketFile {
        path: folder.shown(name),
        folder: Some(folder.clone()),
        name: name.to_owned(),
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
    match folder.stat(name) {
        Ok(Some(st)) if (st.st_dev, st.st_ino) == identity => Ok(file),
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

/// Pins the folder of `path` ([`Folder::of`]), with the errors a user reads.
fn open_folder(path: &Path, role: &Role) -> Result<(Folder, OsString)> {
    let label = role.label;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let f = folder.display();
    Folder::of(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTDIR) => {
            Error::runtime(format!("cannot create {label}: {f} is not a folder")).hint(format!(
                "use a path inside an existing folder, or {}",
                role.elsewhere
            ))
        }
        Some(libc::ENOENT) => Error::runtime(format!(
            "cannot create {label}: the folder {f} does not exist"
        ))
        .hint(format!(
            "create it first (mkdir -p {f}, or RuntimeDirectory= in a systemd unit), or {}",
            role.elsewhere
        )),
        _ if e.kind() == io::ErrorKind::InvalidInput => Error::runtime(format!(
            "cannot create {label}: the path names a folder, not a file"
        ))
        .hint(format!(
            "name the socket file itself, or {}",
            role.elsewhere
        )),
        _ => Error::runtime(format!(
            "cannot create {label}: cannot inspect the folder {f}: {e}"
        ))
        .hint(format!(
            "check the folder's permissions, or {}",
            role.elsewhere
        )),
    })
}

/// Removes a stale socket file at `name`; fails on a live one or a non-socket.
fn claim(folder: &Folder, name: &OsStr, role: &Role) -> Result<()> {
    let label = role.label;
    let path = folder.shown(name);
    let meta = match folder.stat(name) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(
                Error::runtime(format!("cannot inspect {label}: {e}")).hint(format!(
                    "check the folder's permissions, or {}",
                    role.elsewhere
                )),
            );
        }
    };
    if meta.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::runtime(format!(
            "cannot create {label}: the path exists and is not a socket"
        ))
        .hint(format!(
            "relaunch only replaces stale sockets: move that file away, or {}",
            role.elsewhere
        )));
    }
    match probe(folder, name) {
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
        Ok(Probe::Stale) => match folder.unlink(name) {
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
fn probe(folder: &Folder, name: &OsStr) -> io::Result<Probe> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Non-blocking so a live relaunch with a full backlog can't hang us.
    socket.set_nonblocking(true)?;
    let addr = SockAddr::unix(name)?;
    match folder.within(|| socket.connect(&addr)) {
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
    if let Ok((folder, name)) = Folder::of(path) {
        folder.remove_if_ours(&name, identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A socket the fd store gave back is the file's own only while its
    /// path names the very file it was bound to.
    #[test]
    fn a_stored_unix_listener_is_known_by_the_file_it_is_bound_to() {
        use std::os::unix::net::UnixListener;
        let dir = Dir::new("of-bound");
        let path = dir.0.join("app.sock");
        let addr = crate::plan::spec::Addr::Unix(path.clone());
        let first = Socket::from(std::os::fd::OwnedFd::from(
            UnixListener::bind(&path).unwrap(),
        ));
        let m = std::fs::metadata(&path).unwrap();
        let made = SocketFile::of_bound(&first, Some(&addr)).expect("its own file");
        assert_eq!(
            made.identity(),
            (m.dev(), m.ino()),
            "stat's identity, kept whole"
        );
        std::mem::forget(made);
        std::fs::remove_file(&path).unwrap();
        let _second = UnixListener::bind(&path).unwrap();
        assert!(SocketFile::of_bound(&first, Some(&addr)).is_none());
        assert!(path.exists(), "nothing removed");
    }

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
        let (folder, name) = Folder::of(&path).unwrap();
        let (_sock, pinned) = create(&folder, &name, Some(&path), access.mode, &ROLE).unwrap();
        // The app user, who can write the folder, swaps the file.
        let moved = dir.0.join("moved.sock");
        std::fs::rename(&path, &moved).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = finish(&folder, &name, pinned, &access, &ROLE).unwrap_err();
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

    /// The folder is pinned: swapped for a symlink to another folder after,
    /// the next bind, probe and removal still happen in the folder pinned.
    #[test]
    fn a_folder_swapped_for_a_symlink_is_not_followed() {
        if !nix::unistd::geteuid().is_root() {
            // Not root, relaunch follows: an app that could swap the folder
            // could do all relaunch can.
            eprintln!("a folder swapped for a symlink: NOT RUN: only root guards");
            return;
        }
        let dir = Dir::new("folder");
        let sub = dir.0.join("sub");
        let elsewhere = dir.0.join("elsewhere");
        std::fs::create_dir(&sub).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let path = sub.join("app.sock");
        let access = Access {
            mode: 0o600,
            owner: None,
            group: None,
        };
        let (_first, file) = bind(&path, &access, &ROLE).unwrap();
        let folder = file.folder().unwrap().clone();
        let moved = dir.0.join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
        // The app deleted the file; relaunch binds it again.
        std::fs::remove_file(moved.join("app.sock")).unwrap();
        drop(file);
        let (second, again) = bind_in(&folder, OsStr::new("app.sock"), &access, &ROLE).unwrap();
        second.listen(1).unwrap();
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
        // Bound by its name alone: the path leads elsewhere now.
        let addr = second.local_addr().unwrap();
        assert_eq!(addr.as_pathname(), Some(Path::new("app.sock")));
        assert_eq!(mode(&moved.join("app.sock")), 0o600);
        // A live socket there is probed through the pinned folder too.
        let e = bind_in(&folder, OsStr::new("app.sock"), &access, &ROLE).unwrap_err();
        assert!(e.msg.contains("already in use"), "{e}");
        drop(again);
        assert!(
            !moved.join("app.sock").exists(),
            "removed where it was made"
        );
    }

    /// A socket remade where the path still leads (through folders only
    /// root can change, a symlink among them) has the whole path as its
    /// address, as the first one had: what getsockname tells the app.
    #[test]
    fn a_remade_socket_keeps_its_whole_path_as_its_address() {
        let dir = Dir::new("addr");
        let real = dir.0.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink("real", dir.0.join("link")).unwrap();
        let path = dir.0.join("link/app.sock");
        let access = Access {
            mode: 0o600,
            owner: None,
            group: None,
        };
        let (first, file) = bind(&path, &access, &ROLE).unwrap();
        assert_eq!(
            first.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        let folder = file.folder().unwrap().clone();
        std::fs::remove_file(&path).unwrap();
        let (again, _file) = bind_in(&folder, OsStr::new("app.sock"), &access, &ROLE).unwrap();
        assert_eq!(
            again.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        assert!(real.join("app.sock").exists());
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
        let (folder, name) = Folder::of(&path).unwrap();
        let (_sock, _pinned) = create(&folder, &name, Some(&path), 0o600, &ROLE).unwrap();
        assert_eq!(mode(&path) & 0o077, 0, "born with mode {:o}", mode(&path));
    }

    #[test]
    fn both_ways_of_chmod_act_on_the_pinned_inode() {
        let dir = Dir::new("chmod");
        let path = dir.0.join("app.sock");
        let (folder, name) = Folder::of(&path).unwrap();
        let (_sock, (fd, _)) = create(&folder, &name, Some(&path), 0o600, &ROLE).unwrap();
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
