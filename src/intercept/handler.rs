//! The OS side of interception: the [`Table`] of held sockets, shared with
//! the driver, and a thread per child ([`start`]) that answers the trapped
//! calls of that child's process tree. A thread, because reading the
//! target's memory, /proc and pidfds may block, and the event loop must not.
//! Every notification gets an answer (CONTINUE, a value, or an errno). An
//! error on our side is logged; it lets a bind run, never a listen or a
//! shutdown, which may be on a held socket (they fail with that error).

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use socket2::{Domain, Socket, Type};
use tracing::{debug, info, warn};

use super::{
    Apart, AppSocket, Asked, Caller, Decision, Held, HeldAddr, decide, parse_sockaddr, probed,
    shown, shown_ip,
};
use crate::plan::spec::{Addr, Host};
use crate::proc;
use crate::sockets::{Listener, file};

/// The sockets relaunch holds, shared by every child's handler thread and
/// the driver (which places them at fd 3.. for each child).
pub struct Table {
    entries: Mutex<Vec<Entry>>,
    backlog: i32,
    /// A generation has served (been ready) since start.
    served: AtomicBool,
    /// `--refuse-probes`: children's connects are trapped too.
    probes: bool,
    /// Stops every handler thread between two notifications (an upgrade).
    gate: Gate,
    /// The threads serving a child's notification fd, by that fd.
    sessions: Mutex<Vec<Carried>>,
    /// Held while a socket file is remade (outside `entries`' lock).
    refiling: Mutex<()>,
    /// Told each held socket that takes another's place (see [`Table::on_change`]).
    changed: OnceLock<Changed>,
    /// Makes a `--port` move's socket (see [`Table::set_maker`]).
    maker: OnceLock<Maker>,
}

/// Told (the listener's name, its new socket) when a held socket takes
/// another's place: a `--port` move, a remade socket file.
pub type Changed = Box<dyn Fn(&str, &Socket) + Send + Sync>;

/// Makes a TCP socket bound and listening at (address, IPV6_V6ONLY, backlog):
/// where a held listener has generations' sockets beside it, the one a
/// `--port` move binds must join their kind (see [`Table::set_maker`]).
pub type Maker = Box<dyn Fn(SocketAddr, bool, i32) -> io::Result<Socket> + Send + Sync>;

/// What an upgrade hands over of one child's handler thread.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// The child whose process tree the filter covers (0: not known yet).
    pub leader: i32,
    /// Its seccomp notification fd.
    pub fd: RawFd,
    /// (pid, held socket, what) already logged.
    pub said: Vec<(i32, usize, u8)>,
    /// The listen() readiness hint was sent already.
    pub listened: bool,
    /// The uid the child was started as (None: not known, so not checked).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The generation the child belongs to: its binds get that
    /// generation's sockets (see [`Table::set_members`]).
    #[serde(default)]
    pub generation: u64,
    #[serde(skip)]
    leader_cell: Option<Arc<OnceLock<i32>>>,
}

impl Carried {
    #[cfg(test)]
    pub fn new(leader: i32, fd: RawFd) -> Carried {
        Carried {
            leader,
            fd,
            said: Vec::new(),
            listened: false,
            uid: None,
            generation: 0,
            leader_cell: None,
        }
    }
}

/// The held sockets but their fds (which are the driver's listeners), for
/// the next image.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SavedTable {
    entries: Vec<SavedEntry>,
    backlog: i32,
    served: bool,
    #[serde(default)]
    probes: bool,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedEntry {
    name: String,
    held: Held,
    moved: Option<String>,
    file: Option<SavedFile>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedFile {
    path: std::path::PathBuf,
    identity: (u64, u64),
    access: file::Access,
    made: Option<(std::path::PathBuf, (u64, u64))>,
    /// (device, inode) of the folder pinned at start: the next image pins
    /// it again by path and remakes files there only if it is the same.
    #[serde(default)]
    folder: Option<(u64, u64)>,
}

impl SavedFile {
    fn adopt(self) -> Option<UnixFile> {
        let made = self
            .made
            .map(|(path, identity)| file::SocketFile::adopt(path, identity));
        let (folder, name) = file::Folder::of(&self.path).ok()?;
        // None: saved by an image that pinned nothing.
        if self.folder.is_some() && folder.identity().ok() != self.folder {
            warn!(
                "the folder of {} is not the one relaunch started with; relaunch no longer \
                 remakes the socket file there if an app deletes it",
                self.path.display()
            );
            return None;
        }
        Some(UnixFile {
            path: self.path,
            folder,
            name,
            identity: self.identity,
            access: self.access,
            made,
            at: None,
            staged: Vec::new(),
        })
    }
}

/// Parks the handler threads for an upgrade: each one stops between two
/// notifications (never holding one received but unanswered), so an exec
/// loses none; what arrives meanwhile waits in the kernel for the next
/// image's threads.
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    /// Readable while paused: wakes a thread polling its notification fd.
    wake: OwnedFd,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    /// Threads started and not ended (those still waiting for the child's
    /// fd count too: they will serve).
    live: usize,
    parked: usize,
}

impl Gate {
    fn new() -> io::Result<Gate> {
        // SAFETY: eventfd with flags only; the fd is owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Gate {
            state: Mutex::new(GateState::default()),
            cv: Condvar::new(),
            // SAFETY: just created above.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a handler thread as live until dropped.
struct Live(Arc<Table>);

impl Live {
    fn new(table: Arc<Table>) -> Live {
        table.gate.lock().live += 1;
        Live(table)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.gate.lock().live -= 1;
        self.0.gate.cv.notify_all();
    }
}

struct Entry {
    name: String,
    socket: Arc<Socket>,
    held: Held,
    inode: u64,
    /// A Unix socket file relaunch bound: recreated if an app deletes it.
    file: Option<UnixFile>,
    /// Where `--port`'s socket moved to, in spec form.
    moved: Option<String>,
    /// Generations' own sockets in its place (see [`Table::set_members`]).
    members: Vec<Member>,
}

/// A generation's own socket for one held listener.
struct Member {
    generation: u64,
    socket: Arc<Socket>,
    inode: u64,
}

impl Entry {
    /// The held socket of this entry whose inode is `inode`: its own, or a
    /// generation's.
    fn socket_of(&self, inode: u64) -> Option<&Arc<Socket>> {
        if self.inode == inode {
            return Some(&self.socket);
        }
        self.members
            .iter()
            .find(|m| m.inode == inode)
            .map(|m| &m.socket)
    }

    /// What children of `generation` get for this entry.
    fn socket_for(&self, generation: u64) -> &Arc<Socket> {
        self.members
            .iter()
            .find(|m| m.generation == generation)
            .map_or(&self.socket, |m| &m.socket)
    }
}

/// A socket file to remake, as the table had it (see `Session::refile`).
struct Refile {
    name: String,
    path: std::path::PathBuf,
    folder: file::Folder,
    file_name: std::ffi::OsString,
    identity: (u64, u64),
    access: file::Access,
    /// The refiling generation's own socket, waiting beside it.
    staged: Option<Staged>,
}

/// The filesystem half of a refile, without the table: None if the file
/// is still relaunch's, else a new listening socket bound there.
fn remake(plan: &Refile, backlog: i32) -> io::Result<Option<(Socket, file::SocketFile)>> {
    match plan.folder.stat(&plan.file_name)? {
        Some(st) if (st.st_dev, st.st_ino) == plan.identity => return Ok(None),
        Some(_) => {
            return Err(io::Error::other(format!(
                "{} is now another file, not relaunch's socket",
                plan.path.display()
            )));
        }
        None => {}
    }
    let label = format!("unix:{}", plan.path.display());
    let role = file::Role {
        label: &label,
        elsewhere: "choose another path",
        in_use: "stop that process or choose another path",
    };
    let (socket, made) = file::bind_in(&plan.folder, &plan.file_name, &plan.access, &role)
        .map_err(|err| io::Error::other(err.msg))?;
    socket.listen(backlog)?;
    Ok(Some((socket, made)))
}

/// The staged socket's file renamed over the deleted held file: false if
/// the held file is still relaunch's (nothing to do).
fn rename_in(plan: &Refile, staged: &Staged) -> io::Result<bool> {
    match plan.folder.stat(&plan.file_name)? {
        Some(st) if (st.st_dev, st.st_ino) == plan.identity => return Ok(false),
        Some(_) => {
            return Err(io::Error::other(format!(
                "{} is now another file, not relaunch's socket",
                plan.path.display()
            )));
        }
        None => {}
    }
    plan.folder.rename_over(
        &staged.name,
        staged.identity,
        &plan.file_name,
        plan.identity,
    )?;
    Ok(true)
}

/// A Unix socket file, as relaunch made it.
struct UnixFile {
    path: std::path::PathBuf,
    /// Its folder, pinned at start: a folder swapped for a symlink since
    /// (by an app that can write the folder above) is not followed.
    folder: file::Folder,
    name: std::ffi::OsString,
    /// (device, inode) of the file that is relaunch's now.
    identity: (u64, u64),
    access: file::Access,
    /// The file of a rebind, removed on exit if still ours (the first one
    /// belongs to the driver's listener).
    made: Option<file::SocketFile>,
    /// The inode of the socket whose file it is, where that is not the
    /// entry's own: a generation's, renamed over it at a reload.
    at: Option<u64>,
    /// Generations' own sockets waiting at a temporary name in the same
    /// folder (see [`Table::stage`]).
    staged: Vec<Staged>,
}

/// A generation's own socket at a temporary name beside the held file
/// (`sockets::unix_group`).
#[derive(Debug, Clone)]
pub struct Staged {
    pub generation: u64,
    pub name: std::ffi::OsString,
    /// Its file's (device, inode).
    pub identity: (u64, u64),
    /// Its socket's inode.
    pub inode: u64,
}

impl UnixFile {
    /// `made`: the file relaunch bound it at, whose folder is pinned already.
    fn of(addr: Option<&Addr>, made: Option<&file::SocketFile>) -> Option<UnixFile> {
        let Some(Addr::Unix(path)) = addr else {
            return None;
        };
        let path = std::path::absolute(path).ok()?;
        let (folder, name) = file::Folder::of(&path).ok()?;
        let folder = made.and_then(|f| f.folder()).cloned().unwrap_or(folder);
        let m = folder.stat(&name).ok()??;
        Some(UnixFile {
            path,
            folder,
            name,
            identity: (m.st_dev, m.st_ino),
            access: file::Access::of(&m),
            made: None,
            at: None,
            staged: Vec::new(),
        })
    }
}

impl Table {
    /// `movable[i]`: listener i was given as a bare port (`--port P`).
    /// `probes`: `--refuse-probes`.
    pub fn new(
        listeners: &[Listener],
        movable: &[bool],
        backlog: i32,
        probes: bool,
    ) -> io::Result<Arc<Table>> {
        let mut entries = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.iter().enumerate() {
            let socket = l.socket.try_clone()?;
            let inode = nix::sys::stat::fstat(socket.as_fd())?.st_ino;
            let netns = netns(socket.as_fd(), None)?;
            let addr = held_addr(&socket, l.addr.as_ref());
            // A bare port the fd store gave back where an app had moved it
            // (127.0.0.1:P) moves again if the app now binds elsewhere.
            let movable =
                movable.get(i).copied().unwrap_or(false) && matches!(addr, HeldAddr::Tcp(..));
            entries.push(Entry {
                name: l.name.clone(),
                socket: Arc::new(socket),
                held: Held {
                    addr,
                    movable,
                    netns,
                },
                inode,
                file: UnixFile::of(l.addr.as_ref(), l.file()),
                moved: None,
                members: Vec::new(),
            });
        }
        Ok(Arc::new(Table {
            entries: Mutex::new(entries),
            backlog,
            served: AtomicBool::new(false),
            probes,
            gate: Gate::new()?,
            sessions: Mutex::new(Vec::new()),
            refiling: Mutex::new(()),
            changed: OnceLock::new(),
            maker: OnceLock::new(),
        }))
    }

    /// What the next image needs to rebuild the table over the listeners
    /// it adopts (the driver hands over `sockets()` as its listeners).
    pub fn save(&self) -> SavedTable {
        let entries = self
            .lock()
            .iter()
            .map(|e| SavedEntry {
                name: e.name.clone(),
                held: e.held.clone(),
                moved: e.moved.clone(),
                file: e.file.as_ref().map(|f| SavedFile {
                    path: f.path.clone(),
                    identity: f.identity,
                    access: f.access,
                    made: f.made.as_ref().map(|m| m.path_identity()),
                    folder: f.folder.identity().ok(),
                }),
            })
            .collect();
        SavedTable {
            entries,
            backlog: self.backlog,
            served: self.served.load(Ordering::Relaxed),
            probes: self.probes,
        }
    }

    /// The table of the previous image, over the listeners handed over.
    pub fn adopt(listeners: &[Listener], saved: SavedTable) -> io::Result<Arc<Table>> {
        if listeners.len() != saved.entries.len() {
            return Err(io::Error::other(format!(
                "{} listeners but {} held sockets",
                listeners.len(),
                saved.entries.len()
            )));
        }
        let mut entries = Vec::with_capacity(listeners.len());
        for (l, e) in listeners.iter().zip(saved.entries) {
            let socket = l.socket.try_clone()?;
            let inode = nix::sys::stat::fstat(socket.as_fd())?.st_ino;
            let netns = netns(socket.as_fd(), None)?;
            entries.push(Entry {
                name: e.name,
                socket: Arc::new(socket),
                held: Held { netns, ..e.held },
                inode,
                file: e.file.and_then(SavedFile::adopt),
                moved: e.moved,
                members: Vec::new(),
            });
        }
        Ok(Arc::new(Table {
            entries: Mutex::new(entries),
            backlog: saved.backlog,
            served: AtomicBool::new(saved.served),
            probes: saved.probes,
            gate: Gate::new()?,
            sessions: Mutex::new(Vec::new()),
            refiling: Mutex::new(()),
            changed: OnceLock::new(),
            maker: OnceLock::new(),
        }))
    }

    /// Asks every handler thread to park between two notifications.
    pub fn pause(&self) {
        self.gate.lock().paused = true;
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our own eventfd.
        unsafe { libc::write(self.gate.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Whether every handler thread is parked (see [`Table::pause`]):
    /// Ok(the threads' fds and state), or Err(how many are not).
    pub fn parked(&self) -> Result<Vec<Carried>, usize> {
        let g = self.gate.lock();
        if g.parked < g.live {
            return Err(g.live - g.parked);
        }
        drop(g);
        Ok(self
            .sessions()
            .iter()
            .map(|c| Carried {
                leader: c
                    .leader_cell
                    .as_ref()
                    .and_then(|l| l.get().copied())
                    .unwrap_or(c.leader),
                ..c.clone()
            })
            .collect())
    }

    /// The handler threads go on (the upgrade did not happen).
    pub fn resume(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: an 8-byte read from our own non-blocking eventfd.
        unsafe { libc::read(self.gate.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        self.gate.lock().paused = false;
        self.gate.cv.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // A panic elsewhere (a bug) must not stop interception.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held sockets in fd order, for the next child.
    pub fn sockets(&self) -> Vec<Arc<Socket>> {
        self.lock().iter().map(|e| Arc::clone(&e.socket)).collect()
    }

    /// The inodes of every held socket, generations' own included.
    pub fn inodes(&self) -> HashSet<u64> {
        self.lock()
            .iter()
            .flat_map(|e| std::iter::once(e.inode).chain(e.members.iter().map(|m| m.inode)))
            .collect()
    }

    /// `--refuse-probes`: children's filters trap connect too.
    pub fn probes(&self) -> bool {
        self.probes
    }

    /// What children's filters trap besides the socket calls: connect
    /// with `--refuse-probes`, the unlinks where a socket file is held.
    pub fn traps(&self) -> super::filter::Traps {
        super::filter::Traps {
            probes: self.probes,
            files: self.lock().iter().any(|e| e.file.is_some()),
        }
    }

    /// The entry whose socket file is `identity` (device, inode).
    fn file_entry(&self, identity: (u64, u64)) -> Option<usize> {
        self.lock()
            .iter()
            .position(|e| e.file.as_ref().is_some_and(|f| f.identity == identity))
    }

    /// A generation serves: from now on, binds must match what is held.
    pub fn pin(&self) {
        self.served.store(true, Ordering::Relaxed);
        for e in self.lock().iter_mut() {
            e.held.movable = false;
        }
    }

    /// Per listener, where interception moved it (`--port`), if it did.
    pub fn moved(&self) -> Vec<Option<String>> {
        self.lock().iter().map(|e| e.moved.clone()).collect()
    }

    /// `f` is told each held socket that takes another's place from now on
    /// (set once; later calls change nothing).
    pub fn on_change(&self, f: Changed) {
        let _ = self.changed.set(f);
    }

    /// Tells [`Table::on_change`]'s function entry `index`'s socket, outside
    /// the lock.
    fn tell_changed(&self, index: usize) {
        let Some(f) = self.changed.get() else {
            return;
        };
        let (name, socket) = {
            let entries = self.lock();
            (
                entries[index].name.clone(),
                Arc::clone(&entries[index].socket),
            )
        };
        f(&name, &socket);
    }

    /// Entry `index`'s socket file is now `identity`, the file of the
    /// socket of inode `inode`: relaunch renamed a generation's socket over
    /// it (`sockets::unix_group`), and that file is the one to keep, remake
    /// if deleted, and remove on exit.
    pub fn renamed(&self, index: usize, identity: (u64, u64), inode: u64) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(index) else {
            return;
        };
        let own = e.inode;
        if let Some(f) = e.file.as_mut() {
            f.identity = identity;
            f.at = (inode != own).then_some(inode);
            f.staged.retain(|s| s.inode != inode);
            if let Some(made) = f.made.as_mut() {
                made.renamed_over(identity);
            }
        }
    }

    /// `staged.generation`'s own socket for entry `index` waits at a
    /// temporary name: if an app of that generation deletes the held file
    /// before binding it, that socket is renamed in rather than a new one
    /// bound (which no generation would accept from).
    pub fn stage(&self, index: usize, staged: Staged) {
        let mut entries = self.lock();
        if let Some(f) = entries.get_mut(index).and_then(|e| e.file.as_mut()) {
            f.staged.retain(|s| s.generation != staged.generation);
            f.staged.push(staged);
        }
    }

    /// Removes the socket files of rebinds that are still ours (on exit).
    pub fn remove_files(&self) {
        // Dropped (removed) outside the lock.
        let made: Vec<_> = self
            .lock()
            .iter_mut()
            .filter_map(|e| e.file.as_mut()?.made.take())
            .collect();
        drop(made);
    }

    /// What remaking entry `index`'s socket file needs, read under the lock.
    fn refile_plan(&self, index: usize, generation: u64) -> Option<Refile> {
        let entries = self.lock();
        let e = entries.get(index)?;
        let f = e.file.as_ref()?;
        Some(Refile {
            name: e.name.clone(),
            path: f.path.clone(),
            folder: f.folder.clone(),
            file_name: f.name.clone(),
            identity: f.identity,
            access: f.access,
            staged: f
                .staged
                .iter()
                .find(|s| s.generation == generation)
                .cloned(),
        })
    }

    /// Puts the remade socket in entry `index` if its file is still the one
    /// `plan` was read from; the old socket, and the previous remade file
    /// (to drop outside the lock).
    fn refile_commit(
        &self,
        index: usize,
        plan: &Refile,
        socket: Socket,
        made: file::SocketFile,
    ) -> io::Result<(Arc<Socket>, Option<file::SocketFile>)> {
        let inode = nix::sys::stat::fstat(socket.as_fd())?.st_ino;
        let mut entries = self.lock();
        let e = &mut entries[index];
        let Some(f) = e.file.as_mut().filter(|f| f.identity == plan.identity) else {
            drop(entries);
            return Err(io::Error::other(format!(
                "{} changed while relaunch bound it again",
                plan.path.display()
            )));
        };
        f.identity = made.identity();
        let replaced = f.made.replace(made);
        // Whoever had the deleted file's socket gets the new one.
        let was = f.at.take().unwrap_or(e.inode);
        let socket = Arc::new(socket);
        for m in e.members.iter_mut().filter(|m| m.inode == was) {
            m.socket = Arc::clone(&socket);
            m.inode = inode;
        }
        e.inode = inode;
        let old = std::mem::replace(&mut e.socket, socket);
        Ok((old, replaced))
    }

    fn sessions(&self) -> MutexGuard<'_, Vec<Carried>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held socket of inode `inode` (an entry's own, or one of its
    /// generations'), and its entry's index: a call on it acts on that very
    /// socket, whichever generation's it is.
    fn held_socket(&self, inode: u64) -> Option<(usize, Arc<Socket>)> {
        self.lock()
            .iter()
            .enumerate()
            .find_map(|(i, e)| Some((i, Arc::clone(e.socket_of(inode)?))))
    }

    /// What each held socket is, as `decide` and `probed` match it.
    fn held(&self) -> Vec<Held> {
        self.lock().iter().map(|e| e.held.clone()).collect()
    }
}

/// Generations' own sockets, in place of the held ones for their children.
impl Table {
    /// Children of `generation` get `members[i]`, where it is Some, in place
    /// of entry i's socket: when they bind its address themselves, and for
    /// every trapped call on it. One per entry, in entry order; replaces what
    /// was set for `generation` before.
    pub fn set_members(&self, generation: u64, members: Vec<Option<Arc<Socket>>>) {
        // Read before the lock, which the handler threads take.
        let members: Vec<Option<Member>> = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let socket = m?;
                match nix::sys::stat::fstat(socket.as_fd()) {
                    Ok(st) => Some(Member {
                        generation,
                        socket,
                        inode: st.st_ino,
                    }),
                    Err(e) => {
                        warn!(
                            generation,
                            "cannot read the inode of this generation's socket for held \
                             socket {i} ({e}): its children get the shared one instead"
                        );
                        None
                    }
                }
            })
            .collect();
        let mut entries = self.lock();
        if members.len() != entries.len() {
            warn!(
                generation,
                "{} sockets given for {} held sockets: the ones past the last held socket are \
                 not given, and held sockets without one are shared",
                members.len(),
                entries.len()
            );
        }
        let mut members = members.into_iter();
        for e in entries.iter_mut() {
            e.members.retain(|m| m.generation != generation);
            if let Some(Some(m)) = members.next() {
                e.members.push(m);
            }
        }
    }

    /// `generation` is gone: its sockets are given no more.
    pub fn forget(&self, generation: u64) {
        for e in self.lock().iter_mut() {
            e.members.retain(|m| m.generation != generation);
            if let Some(f) = e.file.as_mut() {
                f.staged.retain(|s| s.generation != generation);
            }
        }
    }

    /// What children of `generation` get for entry `index`: that
    /// generation's socket if one was set, else the entry's.
    #[cfg(test)]
    pub fn socket_for(&self, index: usize, generation: u64) -> Arc<Socket> {
        Arc::clone(self.lock()[index].socket_for(generation))
    }

    /// A `--port` move's socket is made by `m` instead of relaunch's own
    /// bind (set once; later calls change nothing).
    pub fn set_maker(&self, m: Maker) {
        let _ = self.maker.set(m);
    }

    /// A new TCP listener at `at`, by [`Table::set_maker`]'s function if set.
    fn listen_at(&self, at: SocketAddr, v6only: bool) -> io::Result<Socket> {
        match self.maker.get() {
            Some(make) => make(at, v6only, self.backlog),
            None => listen_at(at, v6only, self.backlog),
        }
    }
}

/// What a held socket matches against.
fn held_addr(socket: &Socket, addr: Option<&Addr>) -> HeldAddr {
    if socket.r#type().ok() != Some(Type::STREAM) {
        return HeldAddr::NotGiven;
    }
    match addr {
        Some(Addr::Inet {
            host: Host::Ip(ip),
            port,
            ..
        }) => {
            let v6only = ip.is_ipv6() && socket.only_v6().unwrap_or(true);
            HeldAddr::Tcp(SocketAddr::new(*ip, *port), v6only)
        }
        // Symlinks resolved, as the app's path will be.
        Some(Addr::Unix(path)) => {
            match std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)) {
                Ok(p) => HeldAddr::Unix(p.as_os_str().as_bytes().to_vec()),
                Err(_) => HeldAddr::NotGiven,
            }
        }
        Some(Addr::UnixAbstract(name)) => HeldAddr::Abstract(name.clone()),
        // Inherited without a known address: read it.
        _ => match socket.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(at) => HeldAddr::Tcp(at, at.is_ipv6() && socket.only_v6().unwrap_or(true)),
            None => HeldAddr::NotGiven,
        },
    }
}

/// Said once per relaunch: the kernel refused the filter.
static REFUSED_SAID: AtomicBool = AtomicBool::new(false);

/// Starts the thread that will serve the next child's notifications and
/// returns the child's end of the pair it arrives on (for
/// [`super::filter::install`]). Started before the fork, so the child's fd
/// always has a reader.
/// A held socket's listen() is told on `listened` as (the child's pid, how),
/// once the driver has put the child's pid in `leader`. The child belongs
/// to `generation`: its binds get that generation's sockets.
pub fn start(
    table: Arc<Table>,
    leader: Arc<OnceLock<i32>>,
    listened: Listened,
    generation: u64,
) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // A test hook: the child's sendmsg then fails, as it could for real.
    if std::env::var_os("RELAUNCH_TEST_LOSE_NOTIFY_FD").is_some_and(|v| v == "1") {
        return Ok(theirs);
    }
    // The kernel tells who sends the notification fd: the child, right
    // after its filter, so as the uid it was started as.
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)?;
    let live = Live::new(Arc::clone(&table));
    thread(move || {
        let _live = live;
        if let Some((notify, uid)) = receive(&ours, &leader) {
            drop(ours);
            Session {
                table,
                leader,
                uid,
                generation,
                listened: Some(listened),
                said: HashSet::new(),
                errors: HashSet::new(),
                private: VecDeque::new(),
            }
            .run(notify);
        }
    })?;
    Ok(theirs)
}

/// The new image after an upgrade: serves a child's notification fd that
/// the previous image's thread parked, with what that thread had said.
pub fn resume(table: Arc<Table>, carried: Carried, listened: Listened) -> io::Result<()> {
    // SAFETY: the previous image handed this fd over for this thread alone.
    let notify = unsafe { OwnedFd::from_raw_fd(carried.fd) };
    let leader = Arc::new(OnceLock::new());
    if carried.leader > 0 {
        let _ = leader.set(carried.leader);
    }
    let live = Live::new(Arc::clone(&table));
    thread(move || {
        let _live = live;
        Session {
            table,
            leader,
            uid: carried.uid,
            generation: carried.generation,
            listened: (!carried.listened).then_some(listened),
            said: carried.said.into_iter().collect(),
            errors: HashSet::new(),
            private: VecDeque::new(),
        }
        .run(notify);
    })
}

/// A handler thread, with every signal blocked from its first instruction
/// (it inherits the mask): relaunch's signals are the main thread's, and
/// one taken here while an upgrade blocks them there would die at the exec.
fn thread(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let _blocked = crate::sigmask::Blocked::new();
    std::thread::Builder::new()
        .name("intercept".into())
        .stack_size(128 * 1024)
        .spawn(f)
        .map(drop)
}

/// The notification fd the child sent and the uid it sent it as, or None
/// (it died first, or the kernel refused the filter: said once).
fn receive(sock: &OwnedFd, leader: &OnceLock<i32>) -> Option<(OwnedFd, Option<u32>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut report = [0u8; 4];
    let mut space = nix::cmsg_space!(RawFd, libc::ucred);
    let mut uid = None;
    let (bytes, fd) = loop {
        let mut iov = [io::IoSliceMut::new(&mut report)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fd = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: SCM_RIGHTS just gave us this fd.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        } else if let ControlMessageOwned::ScmCredentials(c) = c {
                            uid = Some(c.uid());
                        }
                    }
                }
                break (msg.bytes, fd);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!("cannot receive a child's seccomp notification fd: {e}");
                return None;
            }
        }
    };
    if let Some(fd) = fd {
        return Some((fd, uid));
    }
    // EOF: the child died before the filter (a failed --user, say), or
    // could not send (it says so through its exec status and does not run).
    if bytes == 4 {
        let errno = i32::from_ne_bytes(report);
        // The filter is in place but its fd did not arrive (relaunch at its
        // fd limit truncates SCM_RIGHTS): nobody can answer that child.
        if errno == 0 {
            let child = leader.get().map_or("a child".to_string(), |pid| {
                format!("pid {pid} ({})", proc::comm(*pid))
            });
            warn!(
                "the seccomp notification fd of {child} was lost on relaunch's side; {UNANSWERED}"
            );
            return None;
        }
        if !REFUSED_SAID.swap(true, Ordering::Relaxed) {
            warn!("{}", refused_line(errno));
        }
    }
    None
}

fn refused_line(errno: i32) -> String {
    let why = match errno {
        libc::EBUSY => {
            "another seccomp notifier already watches this process tree (relaunch under \
                        relaunch, or a container tool)"
                .to_string()
        }
        libc::EINVAL | libc::ENOSYS => {
            "this kernel has no seccomp user notification (Linux 5.9 or later is needed)".into()
        }
        libc::EACCES | libc::EPERM => "a security policy forbids seccomp filters here".into(),
        e => io::Error::from_raw_os_error(e).to_string(),
    };
    format!(
        "bind interception is off: {why}; a child that binds a held port itself gets \
         'address already in use' (pass the sockets by LISTEN_FDS, --compat or {{fd}} placeholders)"
    )
}

/// What a child's tree suffers once nobody answers its notification fd.
pub const UNANSWERED: &str = "every bind, listen and shutdown(SHUT_RD or SHUT_RDWR) of this \
     child's processes now fails with ENOSYS, on any socket and address, until it is restarted";

/// Where a held socket's listen() is told: (the child's pid, how).
pub type Listened = tokio::sync::mpsc::UnboundedSender<(i32, String)>;

/// One child's process tree.
struct Session {
    table: Arc<Table>,
    /// The child's pid, set by the driver right after the fork.
    leader: Arc<OnceLock<i32>>,
    /// The uid the child was started as: other uids get no held socket.
    uid: Option<u32>,
    /// The child's generation: a bind gets its sockets.
    generation: u64,
    /// Taken at the first listen() of a held socket: said once.
    listened: Option<Listened>,
    /// (pid, what) already logged, so each is said once per child.
    said: HashSet<(i32, usize, u8)>,
    /// (syscall, errno) of the failures to look at a call said already.
    errors: HashSet<(i32, i32)>,
    /// The inodes of the last sockets put in place of a shut-down held one
    /// (the app holds them, relaunch does not): a shutdown that a signal
    /// restarts comes at once, so a few suffice.
    private: VecDeque<u64>,
}

const SAID_GIVEN: u8 = 0;
const SAID_REFUSED: u8 = 1;
const SAID_SHUTDOWN: u8 = 2;
const SAID_APART: u8 = 3;
const SAID_OPTION: u8 = 4;
const SAID_PROBE: u8 = 5;
const SAID_UNLINK: u8 = 6;

/// An answer to one notification.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Continue,
    Value(i64),
    Errno(i32),
}

impl Session {
    /// Serves `notify` until the child's whole tree is gone, listed in the
    /// table's sessions meanwhile (for an upgrade).
    fn run(mut self, notify: OwnedFd) {
        let fd = notify.as_raw_fd();
        self.table.sessions().push(Carried {
            leader: 0,
            fd,
            said: Vec::new(),
            listened: self.listened.is_none(),
            uid: self.uid,
            generation: self.generation,
            leader_cell: Some(Arc::clone(&self.leader)),
        });
        self.serve(&notify);
        self.table.sessions().retain(|c| c.fd != fd);
    }

    /// Parks while an upgrade is under way, its state told first. Called
    /// only between two notifications.
    fn park(&self, fd: RawFd) {
        if let Some(c) = self.table.sessions().iter_mut().find(|c| c.fd == fd) {
            c.said = self.said.iter().copied().collect();
            c.listened = self.listened.is_none();
        }
        let gate = &self.table.gate;
        let mut g = gate.lock();
        if !g.paused {
            return;
        }
        g.parked += 1;
        gate.cv.notify_all();
        while g.paused {
            g = gate.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.parked -= 1;
    }

    fn serve(&mut self, notify: &OwnedFd) {
        loop {
            let mut pfd = [
                libc::pollfd {
                    fd: notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.table.gate.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two pollfds on the stack.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                warn!(
                    "seccomp notifications: poll failed: {}",
                    io::Error::last_os_error()
                );
                return;
            }
            // An upgrade first: nothing is received while it waits.
            if pfd[1].revents & libc::POLLIN != 0 {
                self.park(notify.as_raw_fd());
                continue;
            }
            // POLLHUP without POLLIN: every process of this child is gone.
            if pfd[0].revents & libc::POLLIN == 0 {
                return;
            }
            // SAFETY: zeroed as the kernel requires; RECV fills it.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: the ioctl writes one seccomp_notif.
            if unsafe { libc::ioctl(notify.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) }
                < 0
            {
                match io::Error::last_os_error().raw_os_error() {
                    // The caller died, or a signal: nothing to answer.
                    Some(libc::ENOENT | libc::EINTR) => continue,
                    _ => {
                        warn!(
                            "seccomp notifications: receive failed: {}; {}",
                            io::Error::last_os_error(),
                            UNANSWERED
                        );
                        return;
                    }
                }
            }
            let answer = self.answer(notify.as_fd(), &req);
            // SAFETY: zeroed plain struct.
            let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
            resp.id = req.id;
            match answer {
                Answer::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
                Answer::Value(v) => resp.val = v,
                Answer::Errno(e) => resp.error = -e,
            }
            // SAFETY: the ioctl reads one seccomp_notif_resp.
            if unsafe { libc::ioctl(notify.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) } < 0
            {
                let e = io::Error::last_os_error();
                // ENOENT: the caller died (or a signal interrupted its call).
                if e.raw_os_error() != Some(libc::ENOENT) {
                    warn!(pid = req.pid, "seccomp notifications: cannot answer: {e}");
                }
            }
        }
    }

    fn answer(&mut self, notify: BorrowedFd<'_>, req: &libc::seccomp_notif) -> Answer {
        let tid = req.pid as i32;
        let fd = req.data.args[0] as i32;
        let result = match i64::from(req.data.nr) {
            libc::SYS_bind => self.bind(notify, req, tid, fd),
            libc::SYS_listen => self.listen(tid, fd),
            libc::SYS_shutdown => self.shutdown(notify, req, tid, fd),
            libc::SYS_setsockopt => self.setsockopt(tid, fd, req.data.args[2] as i32),
            libc::SYS_connect => self.connect(req, tid, fd),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_unlink => Ok(self.unlink(notify, req, libc::AT_FDCWD, req.data.args[0])),
            libc::SYS_unlinkat if req.data.args[2] as i32 & libc::AT_REMOVEDIR == 0 => {
                Ok(self.unlink(notify, req, fd, req.data.args[1]))
            }
            _ => Ok(Answer::Continue),
        };
        result.unwrap_or_else(|e| self.failed(req, &e))
    }

    /// The answer when a trapped call could not be looked at; warned once
    /// per syscall and errno.
    fn failed(&mut self, req: &libc::seccomp_notif, e: &io::Error) -> Answer {
        let tid = req.pid as i32;
        // No such fd, or not a socket (from take_fd): what the kernel would
        // answer, given now, before the fd can change.
        if let Some(errno @ (libc::EBADF | libc::ENOTSOCK)) = e.raw_os_error() {
            return Answer::Errno(errno);
        }
        let gone = matches!(
            e.raw_os_error(),
            Some(libc::ESRCH | libc::ENOENT | libc::EFAULT)
        ) || e.kind() == io::ErrorKind::NotFound;
        // A bind runs: on a held socket the kernel refuses it (bound
        // already). A listen or shutdown never does: on a held socket it
        // would shrink the backlog, or stop the listener for every
        // generation. It fails instead, with the error relaunch met.
        let (call, answer, then) = match i64::from(req.data.nr) {
            libc::SYS_bind => (
                "bind",
                Answer::Continue,
                "the call runs as it is, so a bind of a held address fails with EADDRINUSE"
                    .to_string(),
            ),
            libc::SYS_connect => (
                "connect",
                Answer::Continue,
                "the call runs as it is, so a probe of a held port finds it in use".to_string(),
            ),
            nr => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let call = match nr {
                    libc::SYS_listen => "listen",
                    libc::SYS_setsockopt => "setsockopt",
                    _ => "shutdown",
                };
                (
                    call,
                    Answer::Errno(errno),
                    format!(
                        "it fails with {} rather than run on what may be relaunch's listener",
                        io::Error::from_raw_os_error(errno)
                    ),
                )
            }
        };
        if gone {
            debug!(pid = tid, "{call}: {e}; {then}");
        } else if self
            .errors
            .insert((req.data.nr, e.raw_os_error().unwrap_or(0)))
        {
            warn!(
                "pid {tid} ({}): cannot look at its {call} ({e}); {then}",
                proc::comm(tid)
            );
        }
        answer
    }

    /// bind() of an address relaunch may hold: `decide` says whether the
    /// app's fd becomes relaunch's socket, the bind is refused, or it runs.
    fn bind(
        &mut self,
        notify: BorrowedFd<'_>,
        req: &libc::seccomp_notif,
        tid: i32,
        fd: i32,
    ) -> io::Result<Answer> {
        let Some(mut asked) = bind_address(notify, req, tid)? else {
            return Ok(Answer::Continue);
        };
        if !self.may_hold(&asked) {
            return Ok(Answer::Continue);
        }
        let tgid = proc::tgid(tid).ok_or_else(gone)?;
        if let Asked::Unix(path) = &asked {
            asked = Asked::Unix(path_seen_by(tid, path)?);
        }
        let inode = socket_inode(tid, fd)?;
        let held = self.table.held_socket(inode);
        let ours = held.as_ref().map(|&(i, _)| i);
        let copy = match held {
            // A held socket: relaunch's own is the same.
            Some((_, socket)) => socket,
            None => Arc::new(take_fd(tid, tgid, fd, inode)?),
        };
        // Bound already: the kernel's EINVAL, not ours to change.
        if ours.is_none() && is_bound(&copy) {
            return Ok(Answer::Continue);
        }
        let app = app_socket(&copy)?;
        let caller = self.caller(&copy, tid, &asked)?;
        let decision = decide(app, &caller, &asked, &self.table.held());
        if let Some(i) = ours {
            // A bind a signal restarted after we answered its first try: done
            // already. Any other bind of a bound socket: the kernel's EINVAL.
            return Ok(if decision == Decision::Give(i) {
                Answer::Value(0)
            } else {
                Answer::Errno(libc::EINVAL)
            });
        }
        let index = match decision {
            Decision::Continue => return Ok(Answer::Continue),
            Decision::Give(index) => index,
            Decision::Move { index, at } => {
                match self.move_held(index, at, app, &caller, &asked, tgid) {
                    Some(index) => index,
                    None => return Ok(Answer::Errno(libc::EADDRINUSE)),
                }
            }
            Decision::Apart { index, why } => {
                self.say_apart(tid, tgid, index, why, &asked);
                return Ok(Answer::Continue);
            }
            Decision::Refuse { index, why } => {
                self.say_refused(tgid, index, &why, &asked);
                return Ok(Answer::Errno(libc::EADDRINUSE));
            }
        };
        let socket = self.claim(index, tgid);
        put_in_place(notify, req.id, tid, fd, &socket, &copy)?;
        if self.said.insert((tgid, index, SAID_GIVEN)) {
            info!(
                "pid {tgid} ({}) bound {} itself: it got relaunch's socket (fd {fd})",
                proc::comm(tgid),
                shown(&asked)
            );
        }
        Ok(Answer::Value(0))
    }

    /// Who binds, as `decide` weighs it: the network namespace of its
    /// socket `copy`, its files' root, its uid.
    fn caller(&self, copy: &Socket, tid: i32, asked: &Asked) -> io::Result<Caller> {
        Ok(Caller {
            netns: netns(copy.as_fd(), Some(tid))?,
            same_files: !matches!(asked, Asked::Unix(_)) || same_files(tid)?,
            same_uid: self.uid.is_none_or(|u| proc::uid(tid) == Some(u)),
        })
    }

    /// `Decision::Move`: relaunch's listener is rebound where the app binds.
    /// The index to give then, or None: the bind fails with EADDRINUSE.
    fn move_held(
        &self,
        index: usize,
        at: SocketAddr,
        app: AppSocket,
        caller: &Caller,
        asked: &Asked,
        tgid: i32,
    ) -> Option<usize> {
        match self.relocate(index, at, app) {
            Ok(true) => Some(index),
            // Another worker's bind moved it first: decide again.
            Ok(false) => match decide(app, caller, asked, &self.table.held()) {
                Decision::Give(index) => Some(index),
                _ => {
                    warn!(
                        "pid {tgid} ({}) binds {} itself, but another process of this \
                         child moved relaunch's listener elsewhere first: its bind \
                         fails with EADDRINUSE",
                        proc::comm(tgid),
                        shown(asked)
                    );
                    None
                }
            },
            Err(e) => {
                warn!(
                    "pid {tgid} ({}) binds {} itself and relaunch could not move its \
                     listener there ({e}): its bind fails with EADDRINUSE",
                    proc::comm(tgid),
                    shown(asked)
                );
                None
            }
        }
    }

    /// Once per process and held socket: why its bind is refused.
    fn say_refused(&mut self, tgid: i32, index: usize, why: &str, asked: &Asked) {
        if self.said.insert((tgid, index, SAID_REFUSED)) {
            warn!(
                "pid {tgid} ({}) binds {} itself: refused with EADDRINUSE: {why}; hold \
                 exactly the address the app binds (-l {})",
                proc::comm(tgid),
                shown(asked),
                shown(asked)
            );
        }
    }

    /// The held socket at `index`, as the app of `tgid` gets it: its
    /// generation's, its file bound again if the app deleted it, and no
    /// longer movable.
    fn claim(&self, index: usize, tgid: i32) -> Arc<Socket> {
        if let Err(e) = self.refile(index, tgid) {
            warn!(
                "{}: cannot bind its socket file again ({e}); the app gets the socket, but \
                 clients cannot reach it by that path",
                self.table.lock()[index].name
            );
        }
        let mut entries = self.table.lock();
        let e = &mut entries[index];
        // The first app has it: from now on binds must match.
        e.held.movable = false;
        Arc::clone(e.socket_for(self.generation))
    }

    /// Once per process and held socket: why its bind runs as it is.
    fn say_apart(&mut self, tid: i32, tgid: i32, index: usize, why: Apart, asked: &Asked) {
        if !self.said.insert((tgid, index, SAID_APART)) {
            return;
        }
        let who = format!("pid {tgid} ({})", proc::comm(tgid));
        let at = shown(asked);
        match why {
            Apart::Net => info!(
                "{who} binds {at} in another network namespace: it gets its own socket there, \
                 not relaunch's"
            ),
            Apart::Files => info!(
                "{who} binds {at} under another root or mount namespace, where that path is not \
                 relaunch's file: its bind runs as it is"
            ),
            Apart::Uid => warn!(
                "{who} runs as uid {}, not the uid relaunch started the child as ({}): it does \
                 not get relaunch's socket for {at}, and its bind runs as it is (where relaunch \
                 holds the address it fails with 'address already in use'); start the child as \
                 that user (--user) rather than switching users under it",
                proc::uid(tid).map_or("?".into(), |u| u.to_string()),
                self.uid.map_or("?".into(), |u| u.to_string()),
            ),
        }
    }

    /// Whether any held socket could be what `asked` names, before the
    /// costlier look at the app's socket.
    fn may_hold(&self, asked: &Asked) -> bool {
        self.table
            .lock()
            .iter()
            .any(|e| match (&e.held.addr, asked) {
                (HeldAddr::Tcp(at, _), Asked::Inet(a)) => at.port() == a.port() && a.port() != 0,
                (HeldAddr::Unix(_), Asked::Unix(_)) => true,
                (HeldAddr::Abstract(n), Asked::Abstract(m)) => n == m,
                _ => false,
            })
    }

    /// `--port`: relaunch's socket is rebound where the first app binds,
    /// in its family. The old one stops listening first (the two would
    /// clash), so connections queued on it that instant are reset.
    /// Ok(false): it is not movable any more (another bind came first).
    fn relocate(&self, index: usize, at: SocketAddr, app: AppSocket) -> io::Result<bool> {
        let mut entries = self.table.lock();
        let e = &mut entries[index];
        if !e.held.movable {
            return Ok(false);
        }
        let HeldAddr::Tcp(old, old_v6only) = e.held.addr else {
            return Err(io::Error::other("not a TCP listener"));
        };
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(e.socket.as_raw_fd(), libc::SHUT_RDWR) };
        let new = match self.table.listen_at(at, app.v6only) {
            Ok(new) => new,
            Err(err) => {
                // Back to serving where it was, by a new socket: the old one
                // lost its port with the shutdown (a listen would pick another).
                match self
                    .table
                    .listen_at(old, old_v6only)
                    .and_then(|s| Ok((nix::sys::stat::fstat(s.as_fd())?.st_ino, s)))
                {
                    Ok((inode, again)) => {
                        e.inode = inode;
                        e.socket = Arc::new(again);
                        drop(entries);
                        self.table.tell_changed(index);
                    }
                    Err(again) => warn!(
                        "{}: relaunch's listener on {} stopped and cannot listen there again: \
                         {again}",
                        e.name,
                        shown(&Asked::Inet(old))
                    ),
                }
                return Err(err);
            }
        };
        // Generations' sockets are at the old address: every child gets
        // the moved one.
        let members = std::mem::take(&mut e.members);
        let mut generations: Vec<u64> = members.iter().map(|m| m.generation).collect();
        generations.sort_unstable();
        let members_said = match generations.as_slice() {
            [] => String::new(),
            [g] => format!(
                "; generation {g}'s own socket at {} is given no more: every child gets this one",
                shown_ip(old.ip())
            ),
            gs => format!(
                "; the own sockets of generations {} at {} are given no more: every child gets \
                 this one",
                gs.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                shown_ip(old.ip())
            ),
        };
        info!(
            "{}: the app binds {}, so relaunch now holds {} in place of {} (same port; \
             connections queued on the old socket this instant were reset){members_said}",
            e.name,
            shown(&Asked::Inet(at)),
            shown(&Asked::Inet(at)),
            shown_ip(old.ip())
        );
        e.inode = nix::sys::stat::fstat(new.as_fd())?.st_ino;
        e.held = Held {
            addr: HeldAddr::Tcp(at, at.is_ipv6() && app.v6only),
            movable: false,
            netns: netns(new.as_fd(), None)?,
        };
        e.socket = Arc::new(new);
        e.moved = Some(shown(&Asked::Inet(at)));
        drop(entries);
        // Closed (where last held) outside the lock.
        drop(members);
        self.table.tell_changed(index);
        Ok(true)
    }

    /// Many servers (asyncio's among them) delete a stale socket file before
    /// binding, and with it relaunch's. Then relaunch binds a new socket
    /// there, with the old file's mode and owner, and gives that one; the old
    /// socket serves on in the processes that hold it until they stop.
    /// The filesystem work (stat, probe, bind, chmod, chown, a `who` lookup
    /// over /proc) runs outside the table lock, which the event loop takes
    /// too: a slow or hung filesystem there never freezes it.
    fn refile(&self, index: usize, tgid: i32) -> io::Result<()> {
        // One refile at a time, so what was read is still so at the commit.
        let _one = self
            .table
            .refiling
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(plan) = self.table.refile_plan(index, self.generation) else {
            return Ok(());
        };
        if let Some(staged) = &plan.staged {
            match rename_in(&plan, staged) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    self.table.renamed(index, staged.identity, staged.inode);
                    info!(
                        "{}: pid {tgid} ({}) deleted relaunch's socket file {} before binding it: \
                         generation {}'s own socket takes its place now, before that generation \
                         is ready (new connections wait in its queue; the serving generation \
                         answers what it has queued)",
                        plan.name,
                        proc::comm(tgid),
                        plan.path.display(),
                        staged.generation
                    );
                    return Ok(());
                }
                Err(e) => warn!(
                    "{}: cannot put generation {}'s own socket at {} ({e}); binding a new one there",
                    plan.name,
                    staged.generation,
                    plan.path.display()
                ),
            }
        }
        let Some((socket, made)) = remake(&plan, self.table.backlog)? else {
            return Ok(());
        };
        let (old, replaced) = self.table.refile_commit(index, &plan, socket, made)?;
        // Outside the lock too: it removes the previous remade file.
        drop(replaced);
        self.table.tell_changed(index);
        info!(
            "{}: pid {tgid} ({}) deleted relaunch's socket file {} before binding it: relaunch \
             bound a new socket there and gives it that one",
            plan.name,
            proc::comm(tgid),
            plan.path.display()
        );
        // Before any generation served, nobody accepts on the old socket:
        // what waits there is reset rather than left hanging. Later, the
        // generation that serves it drains it until it stops.
        if !self.table.served.load(Ordering::Relaxed) {
            // SAFETY: shutdown on our own socket.
            unsafe { libc::shutdown(old.as_raw_fd(), libc::SHUT_RDWR) };
            // A Unix listener keeps its queue through shutdown: take each
            // waiting connection and close it, so its client hears at once.
            if old.set_nonblocking(true).is_ok() {
                while old.accept().is_ok() {}
            }
        }
        Ok(())
    }

    /// listen() on a held socket: done already, with relaunch's backlog.
    fn listen(&mut self, tid: i32, fd: i32) -> io::Result<Answer> {
        let Some((tgid, index, socket)) = self.held_index(tid, fd)? else {
            return Ok(Answer::Continue);
        };
        self.listen_again(tgid, index, &socket)?;
        // A readiness hint for --ready auto where /proc is out of sight.
        if let Some(&leader) = self.leader.get()
            && let Some(tx) = self.listened.take()
        {
            let how = format!(
                "pid {tgid} ({}) called listen() on relaunch's socket",
                proc::comm(tgid)
            );
            let _ = tx.send((leader, how));
        }
        Ok(Answer::Value(0))
    }

    /// A held socket stops listening where the filter cannot see: io_uring's
    /// IORING_OP_SHUTDOWN, a shutdown through the i386 or x32 entry, a
    /// failed re-listen. An app's listen() on it must not answer 0 over a
    /// socket that refuses every client: relaunch listens on it again.
    /// `socket`: the held socket the app called it on (entry `index`'s own,
    /// or a generation's).
    fn listen_again(&self, tgid: i32, index: usize, socket: &Socket) -> io::Result<()> {
        if socket.is_listener()? {
            return Ok(());
        }
        let name = self.table.lock()[index].name.clone();
        let again = socket.listen(self.table.backlog);
        warn!(
            "{name}: pid {tgid} ({}) called listen() on relaunch's socket, which had stopped \
             listening (shut down where interception cannot see it: io_uring, a 32-bit \
             syscall); {}",
            proc::comm(tgid),
            match &again {
                Ok(()) => "relaunch listens on it again".to_string(),
                Err(e) => format!("relaunch cannot listen on it again ({e}), and its listen fails"),
            }
        );
        again
    }

    /// shutdown() on a held socket never runs: the app's fd becomes a
    /// private socket that never listened, so its accept loop ends (EINVAL)
    /// while relaunch's listener serves on.
    fn shutdown(
        &mut self,
        notify: BorrowedFd<'_>,
        req: &libc::seccomp_notif,
        tid: i32,
        fd: i32,
    ) -> io::Result<Answer> {
        let tgid = proc::tgid(tid).ok_or_else(gone)?;
        let inode = socket_inode(tid, fd)?;
        // The call again on the socket we put there (a signal restarted it
        // after we answered): done already.
        if self.private.contains(&inode) {
            return Ok(Answer::Value(0));
        }
        let Some((index, held)) = self.table.held_socket(inode) else {
            return Ok(Answer::Continue);
        };
        // The app's fd's flags, from the caller's own fd table: no copy of
        // the fd (an fd per call would pile up, and fail at EMFILE).
        let flags = proc::fdinfo(tid, fd)
            .ok()
            .and_then(|i| proc::fdinfo_flags(&i))
            .unwrap_or(libc::O_CLOEXEC as u32);
        let domain = held.domain()?;
        let private = Socket::new(domain, Type::STREAM, None)?;
        private.set_nonblocking(flags & libc::O_NONBLOCK as u32 != 0)?;
        let private_inode = nix::sys::stat::fstat(private.as_fd())?.st_ino;
        id_valid(notify, req.id)?;
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        add_fd(notify, req.id, private.as_fd(), fd, cloexec)?;
        if self.private.len() == PRIVATE_KEPT {
            self.private.pop_front();
        }
        self.private.push_back(private_inode);
        if self.said.insert((tgid, index, SAID_SHUTDOWN)) {
            info!(
                "pid {tgid} ({}) shut down relaunch's socket (its fd {fd}): it got a closed \
                 socket in its place, and the listener serves on",
                proc::comm(tgid)
            );
        }
        Ok(Answer::Value(0))
    }

    /// setsockopt(SOL_SOCKET, `option`) of an option that shares or steers
    /// a port (the filter traps no other): on a held socket, answered 0 and
    /// not applied, said once per child; on any other socket it runs.
    fn setsockopt(&mut self, tid: i32, fd: i32, option: i32) -> io::Result<Answer> {
        let Some((tgid, index, _)) = self.held_index(tid, fd)? else {
            return Ok(Answer::Continue);
        };
        let name = match option {
            libc::SO_REUSEPORT => "SO_REUSEPORT",
            libc::SO_ATTACH_REUSEPORT_CBPF => "SO_ATTACH_REUSEPORT_CBPF",
            libc::SO_ATTACH_REUSEPORT_EBPF => "SO_ATTACH_REUSEPORT_EBPF",
            libc::SO_DETACH_REUSEPORT_BPF => "SO_DETACH_REUSEPORT_BPF",
            _ => return Ok(Answer::Continue),
        };
        // Once per child (its whole tree), whichever process sets it.
        if self.said.insert((0, index, SAID_OPTION)) {
            warn!(
                "pid {tgid} ({}) set {name} on relaunch's socket (its fd {fd}): answered 0, not \
                 applied. It would let other processes of a user share the port and take its \
                 connections; relaunch alone decides who listens there. Nothing to do: the \
                 app serves as it is",
                proc::comm(tgid)
            );
        }
        Ok(Answer::Value(0))
    }

    /// connect() (`--refuse-probes`): to an address relaunch holds, before
    /// this child's tree has bound it, ECONNREFUSED, what a port probe gets
    /// on a free port; every other connect runs. Cheap first: most connects
    /// go elsewhere, and each one waits for this answer.
    fn connect(&mut self, req: &libc::seccomp_notif, tid: i32, fd: i32) -> io::Result<Answer> {
        let len = (req.data.args[2] as usize).min(size_of::<libc::sockaddr_in6>());
        if len < size_of::<libc::sockaddr_in>() {
            return Ok(Answer::Continue);
        }
        let mut raw = [0u8; size_of::<libc::sockaddr_in6>()];
        read_target(tid, req.data.args[1], &mut raw[..len])?;
        let asked = parse_sockaddr(&raw[..len]);
        let Asked::Inet(to) = asked else {
            return Ok(Answer::Continue);
        };
        if !self.may_hold(&asked) {
            return Ok(Answer::Continue);
        }
        let Some(index) = probed(&self.table.held(), to, host_has) else {
            return Ok(Answer::Continue);
        };
        // The tree serves it already: a real client (a health check).
        if self
            .said
            .iter()
            .any(|&(_, i, what)| i == index && what == SAID_GIVEN)
        {
            return Ok(Answer::Continue);
        }
        // TCP only: a UDP connect is never refused.
        let tgid = proc::tgid(tid).ok_or_else(gone)?;
        let copy = take_fd(tid, tgid, fd, socket_inode(tid, fd)?)?;
        let protocol = copy.protocol()?.map_or(0, i32::from);
        if copy.r#type()? != Type::STREAM
            || !matches!(protocol, 0 | libc::IPPROTO_TCP | libc::IPPROTO_MPTCP)
        {
            return Ok(Answer::Continue);
        }
        if self.said.insert((0, index, SAID_PROBE)) {
            info!(
                "pid {tgid} ({}) connect()ed to {} before binding it: refused (ECONNREFUSED), as on \
                 a free port, so a check of its port finds it free (--refuse-probes)",
                proc::comm(tgid),
                shown(&asked)
            );
        }
        Ok(Answer::Errno(libc::ECONNREFUSED))
    }

    /// unlink() of a held socket file: answered 0, not done. The file is
    /// how clients reach the app; servers delete it before they bind the
    /// path (asyncio, gunicorn, most written by hand) and as they stop, and
    /// clients would find nothing until the next bind or the next start.
    /// The app's bind of the path then gets the socket there. Every other
    /// unlink runs; one that cannot be looked at runs too.
    fn unlink(
        &mut self,
        notify: BorrowedFd<'_>,
        req: &libc::seccomp_notif,
        dirfd: i32,
        path: u64,
    ) -> Answer {
        let tid = req.pid as i32;
        let Some(raw) = read_path(tid, path) else {
            return Answer::Continue;
        };
        let Some(identity) = identity_seen_by(tid, dirfd, &raw) else {
            return Answer::Continue;
        };
        let Some(index) = self.table.file_entry(identity) else {
            return Answer::Continue;
        };
        // What was read is only good if the caller is still in that call.
        if id_valid(notify, req.id).is_err() {
            return Answer::Continue;
        }
        let tgid = proc::tgid(tid).unwrap_or(tid);
        if self.said.insert((tgid, index, SAID_UNLINK)) {
            info!(
                "{}: pid {tgid} ({}) deleted relaunch's socket file {}: it stays, as clients \
                 reach the app through it (the app is told it is gone; its bind of the path \
                 gets the socket there)",
                self.table.lock()[index].name,
                proc::comm(tgid),
                String::from_utf8_lossy(&raw)
            );
        }
        Answer::Value(0)
    }

    /// The held socket at `fd` of the caller, if it is one: (its process,
    /// the socket's index, the socket).
    fn held_index(&self, tid: i32, fd: i32) -> io::Result<Option<(i32, usize, Arc<Socket>)>> {
        let tgid = proc::tgid(tid).ok_or_else(gone)?;
        let inode = socket_inode(tid, fd)?;
        Ok(self
            .table
            .held_socket(inode)
            .map(|(index, socket)| (tgid, index, socket)))
    }
}

/// The address a bind names, read from the caller's memory while it is
/// still in that call; None when its length is not a sockaddr's.
fn bind_address(
    notify: BorrowedFd<'_>,
    req: &libc::seccomp_notif,
    tid: i32,
) -> io::Result<Option<Asked>> {
    let len = req.data.args[2] as usize;
    if !(2..=size_of::<libc::sockaddr_storage>()).contains(&len) {
        return Ok(None);
    }
    let mut raw = [0u8; size_of::<libc::sockaddr_storage>()];
    read_target(tid, req.data.args[1], &mut raw[..len])?;
    // What we read is only good if the caller is still in that call.
    id_valid(notify, req.id)?;
    Ok(Some(parse_sockaddr(&raw[..len])))
}

/// A NUL-terminated path at `addr` in thread `tid`, read a page at most at
/// a time (a read across into an unmapped page fails); None if it cannot
/// be read or is longer than PATH_MAX.
fn read_path(tid: i32, addr: u64) -> Option<Vec<u8>> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        let mut chunk = vec![0u8; (PAGE - at % PAGE) as usize];
        read_target(tid, at, &mut chunk).ok()?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(out);
        }
        at += chunk.len() as u64;
        out.extend(chunk);
    }
    None
}

/// (device, inode) of what `path` names for thread `tid`, relative to its
/// `dirfd` (AT_FDCWD: its working folder) and its root, the last
/// component not followed (as unlink does not).
fn identity_seen_by(tid: i32, dirfd: i32, path: &[u8]) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let path = std::path::Path::new(OsStr::from_bytes(path));
    let base = match path.strip_prefix("/") {
        Ok(_) => format!("/proc/{tid}/root"),
        Err(_) if dirfd == libc::AT_FDCWD => format!("/proc/{tid}/cwd"),
        Err(_) => format!("/proc/{tid}/fd/{dirfd}"),
    };
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        return None;
    }
    let m = std::fs::symlink_metadata(std::path::Path::new(&base).join(rel)).ok()?;
    Some((m.dev(), m.ino()))
}

/// A Unix socket path as thread `tid` names it, absolute and canonical.
fn path_seen_by(tid: i32, path: &[u8]) -> io::Result<Vec<u8>> {
    let mut full = std::path::PathBuf::from(OsStr::from_bytes(path));
    if full.is_relative() {
        // The thread's own: it may have unshared its fs context.
        full = std::fs::read_link(format!("/proc/{tid}/cwd"))?.join(full);
    }
    // The file is there if it is ours; else it matches nothing anyway.
    let full = std::fs::canonicalize(&full).unwrap_or(full);
    Ok(full.as_os_str().as_bytes().to_vec())
}

/// Whether the app's socket is bound already (to a port, or a name).
fn is_bound(s: &Socket) -> bool {
    s.local_addr().is_ok_and(|local| match local.as_socket() {
        Some(a) => a.port() != 0,
        None => !local.is_unnamed(),
    })
}

/// The app's socket, as `decide` weighs it.
fn app_socket(s: &Socket) -> io::Result<AppSocket> {
    let domain = s.domain().map(i32::from)?;
    // TCP (or MPTCP, Go's default for listeners since 1.24), not SCTP.
    let protocol = s.protocol()?.map_or(0, i32::from);
    Ok(AppSocket {
        domain,
        stream: s.r#type()? == Type::STREAM
            && (domain == libc::AF_UNIX
                || matches!(protocol, 0 | libc::IPPROTO_TCP | libc::IPPROTO_MPTCP)),
        v6only: s.domain()? == Domain::IPV6 && s.only_v6().unwrap_or(false),
    })
}

/// Puts relaunch's `socket` at the caller's `fd`, in place of the app's
/// socket `app`, with its blocking mode and the fd's close-on-exec.
fn put_in_place(
    notify: BorrowedFd<'_>,
    id: u64,
    tid: i32,
    fd: i32,
    socket: &Socket,
    app: &Socket,
) -> io::Result<()> {
    // O_NONBLOCK lives on the shared file: take the app's mode (asyncio,
    // Node and Go want it on), as it would have had on its own socket.
    let nonblocking = status_flags(app)? & libc::O_NONBLOCK != 0;
    socket.set_nonblocking(nonblocking)?;
    let cloexec = proc::fdinfo(tid, fd)
        .ok()
        .and_then(|i| proc::fdinfo_cloexec(&i))
        .unwrap_or(true);
    add_fd(notify, id, socket.as_fd(), fd, cloexec)
}

/// A new TCP listener at `at` (`v6only` for an IPv6 one), as relaunch binds.
fn listen_at(at: SocketAddr, v6only: bool, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if at.is_ipv6() {
        s.set_only_v6(v6only)?;
    }
    s.bind(&at.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Whether `ip` is one of this host's addresses.
fn host_has(ip: std::net::IpAddr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.filter_map(|a| a.address).any(|a| match ip {
        std::net::IpAddr::V4(v4) => a.as_sockaddr_in().is_some_and(|s| s.ip() == v4),
        std::net::IpAddr::V6(v6) => a.as_sockaddr_in6().is_some_and(|s| s.ip() == v6),
    })
}

/// How many private sockets' inodes a session remembers.
const PRIVATE_KEPT: usize = 16;

/// The inode of the socket at `fd` in thread `tid`'s own fd table (which
/// may not be its process's: clone without CLONE_FILES, unshare), read
/// without taking a copy of the fd. EBADF: no such fd; ENOTSOCK: not a
/// socket; ESRCH: the thread is gone.
fn socket_inode(tid: i32, fd: i32) -> io::Result<u64> {
    let link = match std::fs::read_link(format!("/proc/{tid}/fd/{fd}")) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let alive = std::fs::symlink_metadata(format!("/proc/{tid}/fd")).is_ok();
            return Err(io::Error::from_raw_os_error(if alive {
                libc::EBADF
            } else {
                libc::ESRCH
            }));
        }
        Err(e) => return Err(e),
    };
    link.as_os_str()
        .as_bytes()
        .strip_prefix(b"socket:[")
        .and_then(|rest| rest.strip_suffix(b"]"))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSOCK))
}

/// The caller is gone (killed while we looked).
fn gone() -> io::Error {
    io::Error::from_raw_os_error(libc::ESRCH)
}

/// Copies `len` bytes at `addr` from the target thread.
fn read_target(tid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = [io::IoSliceMut::new(buf)];
    let want = local[0].len();
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: want,
    }];
    let mut local = local;
    match nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(tid), &mut local, &remote) {
        Ok(n) if n == want => Ok(()),
        Ok(_) => Err(io::Error::other("short read of the target's memory")),
        Err(nix::errno::Errno::ENOSYS) => proc::read_mem(tid, addr, &mut local[0]),
        Err(e) => Err(e.into()),
    }
}

fn id_valid(notify: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    // SAFETY: the ioctl reads one u64.
    if unsafe { libc::ioctl(notify.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts `src` at `fd` in the caller, replacing what was there.
fn add_fd(
    notify: BorrowedFd<'_>,
    id: u64,
    src: BorrowedFd<'_>,
    fd: i32,
    cloexec: bool,
) -> io::Result<()> {
    let add = libc::seccomp_notif_addfd {
        id,
        // Not SEND: it would make bind() return the fd number.
        flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
        srcfd: src.as_raw_fd() as u32,
        newfd: fd as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads one seccomp_notif_addfd.
    if unsafe { libc::ioctl(notify.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &add) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The network namespace of a socket: SO_NETNS_COOKIE (Linux 5.14+, no
/// privilege needed), else the inode of the namespace of `pid` (None:
/// relaunch), which the socket was made in unless it was passed over.
fn netns(socket: BorrowedFd<'_>, pid: Option<i32>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        return Ok(cookie);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOPROTOOPT) {
        return Err(e);
    }
    let pid = pid.map_or("self".into(), |p| p.to_string());
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// Whether thread `tid` resolves paths as relaunch does: the same root
/// directory and the same mount namespace.
fn same_files(tid: i32) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    Ok(id(&format!("/proc/{tid}/root"))? == id("/")?
        && id(&format!("/proc/{tid}/ns/mnt"))? == id("/proc/self/ns/mnt")?)
}

/// Our own copy of fd `fd` of thread `tid` of process `tgid`, the socket
/// of that inode (pidfd_getfd, Linux 5.6+). A thread may have an fd table
/// of its own (clone without CLONE_FILES, unshare): a pidfd of the thread
/// (PIDFD_THREAD, 6.9+) reaches it; before 6.9 only the process's table is
/// in reach, and a socket there that is not the thread's is refused.
fn take_fd(tid: i32, tgid: i32, fd: i32, inode: u64) -> io::Result<Socket> {
    take_fd_as(tid, tgid, fd, inode, true)
}

/// [`take_fd`]; `by_thread: false` takes the way of kernels before 6.9.
fn take_fd_as(tid: i32, tgid: i32, fd: i32, inode: u64, by_thread: bool) -> io::Result<Socket> {
    // SAFETY: plain syscalls; each returned fd is owned at once.
    unsafe {
        let mut pidfd = -1;
        if by_thread {
            pidfd = libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) as RawFd;
        }
        if !by_thread
            || pidfd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        {
            pidfd = libc::syscall(libc::SYS_pidfd_open, tgid, 0) as RawFd;
        }
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd);
        let own_table = || {
            io::Error::other(
                "the thread has an fd table of its own, out of relaunch's reach before Linux 6.9",
            )
        };
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as RawFd;
        if got < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBADF) if tid != tgid => own_table(),
                _ => e,
            });
        }
        let got = OwnedFd::from_raw_fd(got);
        if nix::sys::stat::fstat(got.as_fd())?.st_ino != inode {
            return Err(if tid != tgid {
                own_table()
            } else {
                io::Error::other("the fd changed while relaunch looked")
            });
        }
        Ok(Socket::from(got))
    }
}

/// pidfd_open's flag for a pidfd of one thread (O_EXCL; Linux 6.9).
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

fn status_flags(s: &Socket) -> io::Result<i32> {
    // SAFETY: F_GETFL on our own fd.
    let flags = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder `relaunch-TAG-PID` with a socket file, app.sock, in
    /// it that a table holds: (folder, path, table).
    fn held_socket_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Arc<Table>) {
        let dir = std::env::temp_dir().join(format!("relaunch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let listener = Listener::adopt(
            "unix".into(),
            Socket::from(OwnedFd::from(first)),
            Some(Addr::Unix(path.clone())),
        );
        let table = Table::new(&[listener], &[false], 16, false).unwrap();
        (dir, path, table)
    }

    /// A handler thread parks between notifications when asked, hands over
    /// its fd and what it said, and goes on after `resume`.
    #[test]
    fn handler_threads_park_for_an_upgrade_and_go_on_after() {
        let table = Table::new(&[], &[], 128, false).unwrap();
        assert!(table.parked().unwrap().is_empty());
        // A pipe stands for the notification fd: never readable, so the
        // thread waits in poll as it does between notifications.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let fd = rd.as_raw_fd();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let carried = Carried {
            said: vec![(42, 0, SAID_GIVEN)],
            listened: true,
            generation: 3,
            ..Carried::new(7, fd)
        };
        // Resume takes the fd over as the next image does.
        std::mem::forget(rd);
        resume(Arc::clone(&table), carried, tx).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        wait("the thread registers", &|| table.sessions().len() == 1);
        table.pause();
        wait("the thread parks", &|| table.parked().is_ok());
        let got = table.parked().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].leader, got[0].fd), (7, fd));
        assert_eq!(got[0].said, vec![(42, 0, SAID_GIVEN)]);
        assert!(got[0].listened);
        assert_eq!(got[0].generation, 3);
        table.resume();
        wait("the thread goes on", &|| table.gate.lock().parked == 0);
        // Still serving: one live thread.
        assert_eq!(table.gate.lock().live, 1);
        // The tree is gone (POLLHUP): the thread ends and leaves the list.
        drop(wr);
        wait("the thread ends", &|| table.gate.lock().live == 0);
        assert!(table.sessions().is_empty());
        assert!(table.parked().unwrap().is_empty());
        // A thread still waiting for its new child's fd is not parked: the
        // upgrade waits for it (and is refused if it takes too long).
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let theirs = start(Arc::clone(&table), Arc::new(OnceLock::new()), tx, 0).unwrap();
        table.pause();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(table.parked().unwrap_err(), 1);
        table.resume();
        // The child died before its filter: the thread ends.
        drop(theirs);
        wait("the waiting thread ends", &|| table.gate.lock().live == 0);
    }

    /// The filesystem half of a refile needs no table lock: it finishes
    /// while another thread (the event loop) holds it; the commit then
    /// takes the socket only over the file the plan was read from.
    #[test]
    fn a_refile_does_its_filesystem_work_outside_the_table_lock() {
        let (dir, path, table) = held_socket_file("refile");
        let before = table.inodes();
        // The app deletes relaunch's file before binding the path.
        std::fs::remove_file(&path).unwrap();
        let plan = table.refile_plan(0, 0).unwrap();
        let held = table.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(remake(&plan, 16).map(Option::unwrap));
        });
        let (socket, made) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the filesystem work waited for the table lock")
            .unwrap();
        drop(held);
        assert!(std::fs::symlink_metadata(&path).is_ok(), "remade");
        // Another refile committed meanwhile: this one's file is removed.
        let stale = Refile {
            identity: (0, 0),
            ..table.refile_plan(0, 0).unwrap()
        };
        assert!(table.refile_commit(0, &stale, socket, made).is_err());
        assert!(std::fs::symlink_metadata(&path).is_err(), "left behind");
        assert_eq!(table.inodes(), before);
        // The whole refile: the table holds the new socket and its file.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let session = Session {
            table: Arc::clone(&table),
            leader: Arc::new(OnceLock::new()),
            uid: None,
            generation: 0,
            listened: Some(tx),
            said: HashSet::new(),
            errors: HashSet::new(),
            private: VecDeque::new(),
        };
        session.refile(0, std::process::id() as i32).unwrap();
        assert_ne!(table.inodes(), before);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        table.remove_files();
        assert!(std::fs::symlink_metadata(&path).is_err(), "removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A generation's socket file renamed over the held one, once told, is
    /// relaunch's: not remade when the app binds the path, and removed on
    /// exit where the table removes files.
    #[test]
    fn a_socket_file_renamed_over_the_held_one_is_relaunchs_once_told() {
        use std::os::unix::fs::MetadataExt;
        let (dir, path, table) = held_socket_file("renamed");
        let rename_in = |tag: &str| {
            let temp = dir.join(format!(".app.sock.{tag}"));
            let l = std::os::unix::net::UnixListener::bind(&temp).unwrap();
            std::fs::rename(&temp, &path).unwrap();
            let m = std::fs::metadata(&path).unwrap();
            (l, (m.dev(), m.ino()))
        };
        let ino = |l: &std::os::unix::net::UnixListener| nix::sys::stat::fstat(l).unwrap().st_ino;
        let (second, id) = rename_in("2");
        let e = remake(&table.refile_plan(0, 0).unwrap(), 16).unwrap_err();
        assert!(e.to_string().contains("not relaunch's socket"), "{e}");
        table.renamed(0, id, ino(&second));
        assert!(
            remake(&table.refile_plan(0, 0).unwrap(), 16)
                .unwrap()
                .is_none()
        );
        // After a remade file (the table removes that one on exit).
        std::fs::remove_file(&path).unwrap();
        let (socket, made) = remake(&table.refile_plan(0, 0).unwrap(), 16)
            .unwrap()
            .unwrap();
        let plan = table.refile_plan(0, 0).unwrap();
        drop(table.refile_commit(0, &plan, socket, made).unwrap());
        let (third, id) = rename_in("3");
        table.renamed(0, id, ino(&third));
        table.remove_files();
        assert!(std::fs::symlink_metadata(&path).is_err(), "removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An app that deletes the held file before binding it, in a
    /// generation with a socket of its own waiting beside it: that socket
    /// is renamed in (no third socket that nobody accepts from). Where the
    /// generation's socket is the one at the name already, a new one is
    /// bound and given to that generation's children from then on.
    #[test]
    fn a_deleted_held_file_takes_the_generations_own_socket() {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::net::UnixListener;
        let (dir, path, table) = held_socket_file("staged");
        let temp = dir.join(".app.sock.relaunch-2");
        let own = Socket::from(OwnedFd::from(UnixListener::bind(&temp).unwrap()));
        let own_ino = nix::sys::stat::fstat(&own).unwrap().st_ino;
        let m = std::fs::metadata(&temp).unwrap();
        let own = Arc::new(own);
        table.set_members(2, vec![Some(Arc::clone(&own))]);
        table.stage(
            0,
            Staged {
                generation: 2,
                name: ".app.sock.relaunch-2".into(),
                identity: (m.dev(), m.ino()),
                inode: own_ino,
            },
        );
        // Generation 1 has nothing staged; generation 2 has.
        assert!(table.refile_plan(0, 1).unwrap().staged.is_none());
        let plan = table.refile_plan(0, 2).unwrap();
        assert!(
            !rename_in(&plan, plan.staged.as_ref().unwrap()).unwrap(),
            "still ours"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(rename_in(&plan, plan.staged.as_ref().unwrap()).unwrap());
        assert!(!temp.exists());
        let at = std::fs::metadata(&path).unwrap();
        assert_eq!((at.dev(), at.ino()), (m.dev(), m.ino()));
        table.renamed(0, (m.dev(), m.ino()), own_ino);
        assert!(table.refile_plan(0, 2).unwrap().staged.is_none(), "used");
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(
            Arc::as_ptr(&table.socket_for(0, 2)),
            Arc::as_ptr(&own),
            "generation 2 keeps its socket, now at the name"
        );
        // Deleted again: generation 2's is at the name, so a new socket.
        std::fs::remove_file(&path).unwrap();
        let plan = table.refile_plan(0, 2).unwrap();
        let (socket, made) = remake(&plan, 16).unwrap().unwrap();
        let new_ino = nix::sys::stat::fstat(&socket).unwrap().st_ino;
        drop(table.refile_commit(0, &plan, socket, made).unwrap());
        let now = table.socket_for(0, 2);
        assert_eq!(nix::sys::stat::fstat(now.as_ref()).unwrap().st_ino, new_ino);
        table.remove_files();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Each held socket that takes another's place is told, with its
    /// name, once the table holds it: a `--port` move and a remade socket
    /// file (what keeps systemd's fd store in step).
    #[test]
    fn a_socket_that_takes_anothers_place_is_told() {
        type Told = Arc<Mutex<Vec<(String, u64)>>>;
        let watch = |table: &Table| -> Told {
            let told: Told = Arc::default();
            let t = Arc::clone(&told);
            table.on_change(Box::new(move |name, socket| {
                let inode = nix::sys::stat::fstat(socket.as_fd()).unwrap().st_ino;
                t.lock().unwrap().push((name.to_string(), inode));
            }));
            told
        };
        let session = |table: &Arc<Table>| Session {
            table: Arc::clone(table),
            ..session()
        };
        // --port: [::]:P moves to 127.0.0.1:P.
        let (table, port) = movable_wildcard();
        let told = watch(&table);
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let app = AppSocket {
            domain: libc::AF_INET,
            stream: true,
            v6only: false,
        };
        assert!(session(&table).relocate(0, at, app).unwrap());
        let now = *table.inodes().iter().next().unwrap();
        assert_eq!(*told.lock().unwrap(), [("http".to_string(), now)]);
        // Not movable any more: nothing changes, nothing is told.
        assert!(!session(&table).relocate(0, at, app).unwrap());
        assert_eq!(told.lock().unwrap().len(), 1);

        // A socket file the app deleted, remade.
        let (dir, path, table) = held_socket_file("told");
        let told = watch(&table);
        // Still relaunch's file: nothing to remake, nothing told.
        session(&table)
            .refile(0, std::process::id() as i32)
            .unwrap();
        assert!(told.lock().unwrap().is_empty());
        std::fs::remove_file(&path).unwrap();
        session(&table)
            .refile(0, std::process::id() as i32)
            .unwrap();
        let now = *table.inodes().iter().next().unwrap();
        assert_eq!(*told.lock().unwrap(), [("unix".to_string(), now)]);
        table.remove_files();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A table holding one movable `[::]:P` listener, as `--port P` makes
    /// it, and P.
    fn movable_wildcard() -> (Arc<Table>, u16) {
        let first = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        first.set_only_v6(false).unwrap();
        first
            .bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        first.listen(16).unwrap();
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let listener = Listener::adopt(
            "http".into(),
            first,
            Some(Addr::Inet {
                proto: crate::plan::spec::Proto::Tcp,
                host: Host::Ip(std::net::Ipv6Addr::UNSPECIFIED.into()),
                port,
            }),
        );
        (Table::new(&[listener], &[true], 16, false).unwrap(), port)
    }

    /// A move whose bind fails (an address not on this host) leaves the
    /// port served where it was, not on a port the kernel picked: a TCP
    /// socket shut down has lost its port.
    #[test]
    fn a_move_that_fails_leaves_the_port_served_where_it_was() {
        let (table, port) = movable_wildcard();
        let session = Session {
            table: Arc::clone(&table),
            ..session()
        };
        // TEST-NET-1: never this host's.
        let at = SocketAddr::from(([192, 0, 2, 1], port));
        let app = AppSocket {
            domain: libc::AF_INET,
            stream: true,
            v6only: false,
        };
        assert!(session.relocate(0, at, app).is_err());
        let held = &table.sockets()[0];
        assert!(held.is_listener().unwrap());
        let local = held.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(local.port(), port, "{local}");
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    /// A listening TCP socket on a free loopback port.
    fn loopback() -> Socket {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(16).unwrap();
        s
    }

    /// A table holding `n` loopback TCP listeners.
    fn loopback_table(n: usize) -> Arc<Table> {
        let listeners: Vec<Listener> = (0..n)
            .map(|i| {
                let s = loopback();
                let port = s.local_addr().unwrap().as_socket().unwrap().port();
                Listener::adopt(
                    format!("l{i}"),
                    s,
                    Some(Addr::Inet {
                        proto: crate::plan::spec::Proto::Tcp,
                        host: Host::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
                        port,
                    }),
                )
            })
            .collect();
        Table::new(&listeners, &vec![false; n], 16, false).unwrap()
    }

    fn inode(s: &Socket) -> u64 {
        nix::sys::stat::fstat(s.as_fd()).unwrap().st_ino
    }

    /// Children of a generation with its own sockets get them; the others,
    /// and that generation where it has none, get the held socket. A new
    /// list replaces the old one; a generation forgotten gets nothing of its own.
    #[test]
    fn a_generation_gets_its_own_socket_where_it_has_one() {
        let table = loopback_table(2);
        let held = table.sockets();
        let (a, b, c) = (
            Arc::new(loopback()),
            Arc::new(loopback()),
            Arc::new(loopback()),
        );
        let is = |x: &Arc<Socket>, y: &Arc<Socket>| Arc::ptr_eq(x, y);
        table.set_members(2, vec![Some(Arc::clone(&a)), None]);
        assert!(is(&table.socket_for(0, 2), &a));
        assert!(is(&table.socket_for(1, 2), &held[1]));
        assert!(is(&table.socket_for(0, 1), &held[0]));
        // A bind of generation 2's child gets its socket; generation 1's the held one.
        let claimed = |generation| {
            Session {
                table: Arc::clone(&table),
                generation,
                ..session()
            }
            .claim(0, std::process::id() as i32)
        };
        assert!(is(&claimed(2), &a));
        assert!(is(&claimed(1), &held[0]));
        // Known by its inode as the held socket it stands for.
        let (index, found) = table.held_socket(inode(&a)).unwrap();
        assert_eq!(index, 0);
        assert!(is(&found, &a));
        let all: HashSet<u64> = [&held[0], &held[1], &a].iter().map(|s| inode(s)).collect();
        assert_eq!(table.inodes(), all);

        table.set_members(2, vec![None, Some(Arc::clone(&b))]);
        table.set_members(3, vec![Some(Arc::clone(&c)), None]);
        assert!(is(&table.socket_for(0, 2), &held[0]));
        assert!(is(&table.socket_for(1, 2), &b));
        assert!(is(&table.socket_for(0, 3), &c));
        assert!(table.held_socket(inode(&a)).is_none());
        assert_eq!(table.held_socket(inode(&b)).unwrap().0, 1);

        table.forget(2);
        assert!(is(&table.socket_for(1, 2), &held[1]));
        assert!(table.held_socket(inode(&b)).is_none());
        assert!(
            is(&table.socket_for(0, 3), &c),
            "another generation's stays"
        );
        // A short list: the entries past it are shared.
        table.set_members(4, vec![Some(Arc::clone(&a))]);
        assert!(is(&table.socket_for(0, 4), &a));
        assert!(is(&table.socket_for(1, 4), &held[1]));
    }

    /// A trapped call on a generation's socket: a listen() after it
    /// stopped listening listens on that very socket again and answers 0;
    /// SO_REUSEPORT on it is answered 0, not applied.
    #[test]
    fn a_call_on_a_generations_socket_is_answered_as_on_the_held_one() {
        let table = loopback_table(1);
        let held = Arc::clone(&table.sockets()[0]);
        let member = Arc::new(loopback());
        table.set_members(2, vec![Some(Arc::clone(&member))]);
        let mut s = Session {
            table: Arc::clone(&table),
            generation: 2,
            ..session()
        };
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        // Stopped where the filter cannot see (io_uring, say).
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(member.as_raw_fd(), libc::SHUT_RDWR) };
        assert!(!member.is_listener().unwrap());
        let got = s.answer(rd.as_fd(), &call(libc::SYS_listen, member.as_raw_fd(), 5));
        assert_eq!(got, Answer::Value(0));
        assert!(member.is_listener().unwrap(), "listening again");
        assert!(held.is_listener().unwrap());

        let mut req = call(libc::SYS_setsockopt, member.as_raw_fd(), libc::SOL_SOCKET);
        req.data.args[2] = libc::SO_REUSEPORT as u64;
        assert_eq!(s.answer(rd.as_fd(), &req), Answer::Value(0));
        assert!(!member.reuse_port().unwrap(), "not applied");
        // Any other socket: the call runs.
        let other = loopback();
        let mut req = call(libc::SYS_setsockopt, other.as_raw_fd(), libc::SOL_SOCKET);
        req.data.args[2] = libc::SO_REUSEPORT as u64;
        assert_eq!(s.answer(rd.as_fd(), &req), Answer::Continue);
    }

    /// A session handed over by an image that knew no generations serves
    /// generation 0; one that did keeps its own.
    #[test]
    fn a_carried_session_keeps_its_generation() {
        let old: Carried =
            serde_json::from_str(r#"{"leader":7,"fd":9,"said":[],"listened":true,"uid":null}"#)
                .unwrap();
        assert_eq!(old.generation, 0);
        let now = Carried {
            generation: 5,
            ..Carried::new(7, 9)
        };
        let back: Carried = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(back.generation, 5);
    }

    /// With a maker set, a `--port` move's socket is its, where it moves and
    /// where it falls back to; a move drops every generation's own socket
    /// for that listener (it is at the old address): all get the moved one.
    #[test]
    fn a_move_makes_its_socket_by_the_maker_and_ends_generations_own() {
        type Made = Arc<Mutex<Vec<(SocketAddr, bool, i32)>>>;
        let with_maker = |table: &Table| -> Made {
            let made: Made = Arc::default();
            let m = Arc::clone(&made);
            table.set_maker(Box::new(move |at, v6only, backlog| {
                m.lock().unwrap().push((at, v6only, backlog));
                listen_at(at, v6only, backlog)
            }));
            made
        };
        let app = AppSocket {
            domain: libc::AF_INET,
            stream: true,
            v6only: false,
        };
        let (table, port) = movable_wildcard();
        let made = with_maker(&table);
        let member = Arc::new(Socket::new(Domain::IPV6, Type::STREAM, None).unwrap());
        table.set_members(5, vec![Some(Arc::clone(&member))]);
        let moving = Session {
            table: Arc::clone(&table),
            generation: 5,
            ..session()
        };
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(moving.relocate(0, at, app).unwrap());
        assert_eq!(*made.lock().unwrap(), [(at, false, 16)]);
        let moved = Arc::clone(&table.sockets()[0]);
        assert!(Arc::ptr_eq(&table.socket_for(0, 5), &moved));
        assert!(table.held_socket(inode(&member)).is_none());
        assert_eq!(table.inodes(), HashSet::from([inode(&moved)]));

        // A move that fails: back where it was, by the maker too; the
        // generation's own socket (still at that address) stays.
        let (table, port) = movable_wildcard();
        let made = with_maker(&table);
        table.set_members(5, vec![Some(Arc::clone(&member))]);
        let moving = Session {
            table: Arc::clone(&table),
            ..session()
        };
        let at = SocketAddr::from(([192, 0, 2, 1], port));
        assert!(moving.relocate(0, at, app).is_err());
        let back = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        assert_eq!(*made.lock().unwrap(), [(at, false, 16), (back, false, 16)]);
        assert!(Arc::ptr_eq(&table.socket_for(0, 5), &member));
    }

    fn session() -> Session {
        Session {
            table: Table::new(&[], &[], 128, false).unwrap(),
            leader: Arc::new(OnceLock::new()),
            uid: None,
            generation: 0,
            listened: None,
            said: HashSet::new(),
            errors: HashSet::new(),
            private: VecDeque::new(),
        }
    }

    /// A trapped call of this thread on `fd`.
    fn call(nr: i64, fd: i32, how: i32) -> libc::seccomp_notif {
        // SAFETY: zeroed plain struct.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        req.pid = nix::unistd::gettid().as_raw() as u32;
        req.data.nr = nr as i32;
        req.data.args[0] = fd as u64;
        req.data.args[1] = how as u64;
        req
    }

    /// The kernel would fail these calls the same way: no warning, which
    /// would be wrong ("the listener stops") and use up the one for a real
    /// failure, and no chance for the fd to become a held socket meanwhile.
    #[test]
    fn a_closed_fd_or_a_non_socket_gets_the_kernels_error_silently() {
        let mut s = session();
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        let closed = 1 << 20;
        for nr in [libc::SYS_listen, libc::SYS_shutdown] {
            let got = s.answer(rd.as_fd(), &call(nr, closed, libc::SHUT_RDWR));
            assert_eq!(got, Answer::Errno(libc::EBADF), "{nr}");
            let got = s.answer(rd.as_fd(), &call(nr, rd.as_raw_fd(), libc::SHUT_RDWR));
            assert_eq!(got, Answer::Errno(libc::ENOTSOCK), "{nr}");
        }
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }

    /// A real failure is said once per syscall and errno: one of another
    /// kind is said too.
    #[test]
    fn each_kind_of_failure_is_said_once() {
        let mut s = session();
        let req = call(libc::SYS_shutdown, 3, libc::SHUT_RD);
        for errno in [libc::EACCES, libc::EACCES, libc::EMFILE] {
            s.failed(&req, &io::Error::from_raw_os_error(errno));
        }
        let mut said: Vec<_> = s.errors.iter().copied().collect();
        said.sort();
        let nr = libc::SYS_shutdown as i32;
        assert_eq!(said, [(nr, libc::EACCES), (nr, libc::EMFILE)]);
    }

    /// relaunch failing to look at a listen or shutdown (EMFILE, say) never
    /// lets it run: it may be on a held socket. A bind runs (on a held
    /// socket the kernel refuses it).
    #[test]
    fn a_call_relaunch_cannot_look_at_never_runs_on_a_held_socket() {
        let mut s = session();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        for nr in [libc::SYS_listen, libc::SYS_shutdown] {
            let got = s.failed(&call(nr, 3, libc::SHUT_RDWR), &emfile);
            assert_eq!(got, Answer::Errno(libc::EMFILE), "{nr}");
        }
        let other = io::Error::other("short read");
        let got = s.failed(&call(libc::SYS_shutdown, 3, libc::SHUT_RD), &other);
        assert_eq!(got, Answer::Errno(libc::EIO));
        let got = s.failed(&call(libc::SYS_bind, 3, 0), &emfile);
        assert_eq!(got, Answer::Continue);
    }

    /// A thread with an fd table of its own: its fd names another socket
    /// than its process's. By the inode from its own table, relaunch takes
    /// the thread's socket (6.9+), or knows it cannot (before), and never
    /// takes the process's one for it.
    #[test]
    fn a_thread_with_its_own_fd_table_is_never_answered_for_another_socket() {
        use std::sync::mpsc;
        let process = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let n = process.as_raw_fd();
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: unshare and close in this thread's own table only.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_FILES), 0);
                libc::close(n);
            }
            let own = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            assert_eq!(own.as_raw_fd(), n);
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            done_rx.recv().unwrap();
            drop(own);
        });
        let tid = rx.recv().unwrap();
        let tgid = std::process::id() as i32;
        let inode = socket_inode(tid, n).unwrap();
        assert_ne!(
            inode,
            nix::sys::stat::fstat(process.as_fd()).unwrap().st_ino
        );
        let old = take_fd_as(tid, tgid, n, inode, false).unwrap_err();
        assert!(old.to_string().contains("fd table of its own"), "{old}");
        // SAFETY: a pidfd owned at once.
        let thread_pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) };
        if thread_pidfd >= 0 {
            // SAFETY: just opened.
            drop(unsafe { OwnedFd::from_raw_fd(thread_pidfd as RawFd) });
            let got = take_fd(tid, tgid, n, inode).unwrap();
            assert_eq!(got.domain().unwrap(), Domain::IPV6);
        }
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn refusals_say_why_and_what_then() {
        let l = refused_line(libc::EBUSY);
        assert!(l.contains("another seccomp notifier"), "{l}");
        assert!(l.contains("LISTEN_FDS"), "{l}");
        assert!(refused_line(libc::ENOSYS).contains("5.9"));
        assert!(refused_line(libc::EACCES).contains("policy"));
    }

    /// Without an answer, the filter makes every trapped call fail, not
    /// only a bind of a held port: the line says so.
    #[test]
    fn unanswered_calls_name_every_trapped_call() {
        for call in [
            "every bind",
            "listen",
            "shutdown(SHUT_RD",
            "ENOSYS",
            "restarted",
        ] {
            assert!(UNANSWERED.contains(call), "{call}: {UNANSWERED}");
        }
    }
}
