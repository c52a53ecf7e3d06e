//! One held Unix stream listener as one listening socket per live
//! generation, the twin of [`super::group::Group`] for socket files: a new
//! generation's socket is bound at a temporary name beside the held file
//! (`.NAME.relaunch-GEN`), where nobody connects, and is renamed over the
//! held name when that generation serves. Clients connecting from then on
//! find the new socket; the old one keeps its queue, which its generation
//! accepts while it drains, and is closed once that generation is gone
//! (its file is gone already: nothing can reach it any more).
//!
//! Every name is reached through the folder pinned when the held file was
//! bound ([`file::Folder`]): a folder swapped for a symlink since is not
//! followed. A rename changes the file the held name is, so the (device,
//! inode) that relaunch checks before it removes or remakes that file:
//! [`UnixGroup::steer_to`] returns the new one.
//!
//! Every generation's socket has the held socket's address (what
//! `getsockname` tells the app, `getpeername` its clients, and what a
//! socket kept in systemd's fd store is matched by): as root it is bound in
//! a staging folder taken as the binding thread's root, where that address
//! leads ([`file::bind_staged`]), then moved to the temporary name. Without
//! CAP_SYS_CHROOT it is bound at the temporary name, its address then, and
//! that is said once.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socket2::Socket;
use tracing::{debug, warn};

use super::file::{self, Access, Folder, SocketFile};
use super::steer;

#[derive(Debug)]
struct Member {
    socket: Arc<Socket>,
    /// Of the socket (what fds and unix_diag show).
    inode: u64,
    /// (device, inode) of its file.
    file: (u64, u64),
    /// The generation whose children it is given to; None: nobody's yet.
    generation: Option<u64>,
    /// Its file while at its temporary name, removed if it is dropped there
    /// (its generation went before it served).
    temp: Option<SocketFile>,
}

#[derive(Debug)]
pub struct UnixGroup {
    folder: Folder,
    /// The held name in `folder`.
    name: OsString,
    /// The held socket's address (as bound at start): every generation's
    /// socket gets it where relaunch can ([`file::bind_staged`]).
    addr: Option<PathBuf>,
    /// Whether [`file::bind_staged`] can; None: not tried yet.
    staging: Option<bool>,
    access: Access,
    backlog: i32,
    members: Vec<Member>,
    /// The member whose file is at the held name.
    current: usize,
}

/// What an upgrade hands over of a group besides its members' fds (which
/// come in the same order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnixSaved {
    pub generations: Vec<Option<u64>>,
    /// Each member's file: (device, inode).
    pub files: Vec<(u64, u64)>,
    /// Each member's temporary name, while it has one.
    pub temps: Vec<Option<OsString>>,
    pub current: usize,
    pub addr: Option<PathBuf>,
    pub access: Access,
    pub backlog: i32,
}

impl UnixGroup {
    /// The group of `home`, the listener bound at `file`, which must still
    /// be the file at that name. New members get that file's mode and owner.
    pub fn new(home: Arc<Socket>, file: &SocketFile, backlog: i32) -> io::Result<UnixGroup> {
        let folder = folder_of(file)?;
        let st = folder
            .stat(file.name())?
            .filter(|st| (st.st_dev, st.st_ino) == file.identity())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{} is no longer the socket file relaunch made",
                    folder.shown(file.name()).display()
                ))
            })?;
        let addr = home
            .local_addr()?
            .as_pathname()
            .map(|p| p.to_path_buf())
            .filter(|p| !p.as_os_str().is_empty());
        let member = Member {
            inode: steer::inode_of(home.as_ref())?,
            socket: home,
            file: file.identity(),
            generation: None,
            temp: None,
        };
        Ok(UnixGroup {
            folder,
            name: file.name().to_owned(),
            addr,
            staging: None,
            access: Access::of(&st),
            backlog,
            members: vec![member],
            current: 0,
        })
    }

    /// A group handed over by an upgrade, at the held file `file`.
    pub fn adopt(
        sockets: Vec<Arc<Socket>>,
        saved: UnixSaved,
        file: &SocketFile,
    ) -> io::Result<UnixGroup> {
        let n = sockets.len();
        if n == 0
            || saved.generations.len() != n
            || saved.files.len() != n
            || saved.temps.len() != n
            || saved.current >= n
        {
            return Err(io::Error::other(
                "the handed-over Unix socket group does not match its sockets (a bug in \
                 relaunch: restart it rather than upgrade, and report it)",
            ));
        }
        let folder = folder_of(file)?;
        let members = sockets
            .into_iter()
            .zip(saved.generations)
            .zip(saved.files.into_iter().zip(saved.temps))
            .map(|((socket, generation), (id, temp))| {
                Ok(Member {
                    inode: steer::inode_of(socket.as_ref())?,
                    socket,
                    file: id,
                    generation,
                    temp: temp.map(|t| SocketFile::in_folder(&folder, &t, id)),
                })
            })
            .collect::<io::Result<Vec<Member>>>()?;
        Ok(UnixGroup {
            folder,
            name: file.name().to_owned(),
            addr: saved.addr,
            staging: None,
            access: saved.access,
            backlog: saved.backlog,
            members,
            current: saved.current,
        })
    }

    pub fn save(&self) -> (Vec<Arc<Socket>>, UnixSaved) {
        let sockets = self.members.iter().map(|m| Arc::clone(&m.socket)).collect();
        let saved = UnixSaved {
            generations: self.members.iter().map(|m| m.generation).collect(),
            files: self.members.iter().map(|m| m.file).collect(),
            temps: self
                .members
                .iter()
                .map(|m| m.temp.as_ref().map(|t| t.name().to_owned()))
                .collect(),
            current: self.current,
            addr: self.addr.clone(),
            access: self.access,
            backlog: self.backlog,
        };
        (sockets, saved)
    }

    /// Every member's socket inode: what relaunch holds for this listener.
    pub fn inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().map(|m| m.inode)
    }

    /// The socket inodes of the members of generations before `generation`.
    pub fn inodes_before(&self, generation: u64) -> Vec<u64> {
        self.before(generation).map(|m| m.inode).collect()
    }

    /// The file at the held name and its socket's inode.
    pub fn at_name(&self) -> ((u64, u64), u64) {
        let m = &self.members[self.current];
        (m.file, m.inode)
    }

    /// The generations that have a socket here.
    pub fn generations(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().filter_map(|m| m.generation)
    }

    /// `generation`'s own socket, if it has one.
    pub fn member_of(&self, generation: u64) -> Option<Arc<Socket>> {
        Some(Arc::clone(&self.members[self.position(generation)?].socket))
    }

    fn before(&self, generation: u64) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(move |m| m.generation.is_some_and(|g| g < generation))
    }

    /// The generation whose socket is at the held name, if one has it.
    #[cfg(test)]
    pub fn current(&self) -> Option<u64> {
        self.members[self.current].generation
    }

    /// The socket `generation`'s children get: its own, or else the one at
    /// the held name, which is then its.
    pub fn socket_for(&mut self, generation: u64) -> Arc<Socket> {
        self.sync();
        let i = self.position(generation).unwrap_or_else(|| {
            if let Some(was) = self.members[self.current].generation {
                debug!(generation, was, "the socket at the held name changes hands");
            }
            self.members[self.current].generation = Some(generation);
            self.current
        });
        Arc::clone(&self.members[i].socket)
    }

    /// Gives `generation` a listening socket of its own, bound at a
    /// temporary name in the held file's folder, with its mode and owner:
    /// nothing connects to it until [`steer_to`](Self::steer_to).
    pub fn open(&mut self, generation: u64) -> io::Result<Arc<Socket>> {
        self.sync();
        if let Some(i) = self.position(generation) {
            return Ok(Arc::clone(&self.members[i].socket));
        }
        let temp = temp_name(&self.name, generation);
        let label = format!("unix:{}", self.folder.shown(&temp).display());
        let role = file::Role {
            label: &label,
            elsewhere: "choose another path",
            in_use: "another relaunch is reloading on the same path: stop it",
        };
        let made = match self.addr.clone().filter(|_| self.stages()) {
            Some(addr) => file::bind_staged(&self.folder, &temp, &addr, &self.access, &role),
            None => file::bind_in(&self.folder, &temp, &self.access, &role),
        };
        let (socket, made) = made.map_err(|e| match e.hint {
            Some(h) => io::Error::other(format!("{}; {h}", e.msg)),
            None => io::Error::other(e.msg),
        })?;
        // Its file is removed with `made` if this fails.
        socket.listen(self.backlog)?;
        let member = Member {
            inode: steer::inode_of(&socket)?,
            socket: Arc::new(socket),
            file: made.identity(),
            generation: Some(generation),
            temp: Some(made),
        };
        let socket = Arc::clone(&member.socket);
        self.members.push(member);
        Ok(socket)
    }

    /// New connections go to `generation`'s socket from now on: its file is
    /// renamed over the held name. The held name's new (device, inode),
    /// which whoever checks that file before removing or remaking it must
    /// be told of.
    pub fn steer_to(&mut self, generation: u64) -> io::Result<(u64, u64)> {
        self.sync();
        let i = self.position(generation).ok_or_else(|| {
            io::Error::other(format!(
                "generation {generation} has no socket of its own for {}",
                self.folder.shown(&self.name).display()
            ))
        })?;
        if i == self.current {
            return Ok(self.members[i].file);
        }
        let m = &self.members[i];
        let temp = m.temp.as_ref().ok_or_else(|| {
            io::Error::other(
                "this generation's socket served before and its file is gone, so it cannot take \
                 the name again; reload once more for a generation with a socket of its own",
            )
        })?;
        let replaced = self.members[self.current].file;
        self.folder
            .rename_over(temp.name(), m.file, &self.name, replaced)?;
        // Its temporary name is gone: nothing to remove there.
        self.members[i].temp = None;
        self.current = i;
        Ok(self.members[i].file)
    }

    /// `generation` is gone: its sockets close, but for the one at the held
    /// name, which waits for the next generation. The drain has seen its
    /// queue empty; one never steered to had nothing queued, and its file
    /// is removed.
    /// true if the held name was that generation's while others still run
    /// (interception put it there when its app deleted the file): new
    /// connections wait there for the next generation.
    pub fn release(&mut self, generation: u64) -> bool {
        self.sync();
        let stranded = self.members[self.current].generation == Some(generation)
            && self
                .members
                .iter()
                .any(|m| m.generation.is_some_and(|g| g != generation));
        let at_name = self.members[self.current].inode;
        self.members
            .retain(|m| m.generation != Some(generation) || m.inode == at_name);
        self.current = self
            .members
            .iter()
            .position(|m| m.inode == at_name)
            .unwrap_or(0);
        let m = &mut self.members[self.current];
        if m.generation == Some(generation) {
            m.generation = None;
        }
        stranded
    }

    /// Whether new sockets can be bound with the held address
    /// ([`file::bind_staged`]); said once when not.
    fn stages(&mut self) -> bool {
        if let (None, Some(addr)) = (self.staging, &self.addr) {
            let can = self.folder.can_root();
            if let Err(e) = &can {
                warn!(
                    "{}: the sockets of the next generations are bound at temporary names \
                     beside it, and have them as their addresses ({e}: binding them with \
                     the address {} needs CAP_SYS_CHROOT); an app's getsockname and its \
                     clients' getpeername show that name",
                    self.folder.shown(&self.name).display(),
                    addr.display()
                );
            }
            self.staging = Some(can.is_ok());
        }
        self.staging == Some(true)
    }

    /// Where a generation has two (its socket file was deleted and bound
    /// again), the one at the held name.
    fn position(&self, generation: u64) -> Option<usize> {
        if self.members[self.current].generation == Some(generation) {
            return Some(self.current);
        }
        self.members
            .iter()
            .position(|m| m.generation == Some(generation))
    }

    /// Interception renamed a generation's socket in where its app deleted
    /// the held file (see [`UnixGroup::staged`]): the member whose file is
    /// at the held name now is the current one.
    fn sync(&mut self) {
        let Ok(Some(st)) = self.folder.stat(&self.name) else {
            return;
        };
        let at = (st.st_dev, st.st_ino);
        if self.members[self.current].file == at {
            return;
        }
        if let Some(i) = self.members.iter().position(|m| m.file == at) {
            debug!(generation = ?self.members[i].generation, "a generation's socket was renamed in by interception");
            self.members[i].temp = None;
            self.current = i;
        }
    }

    /// Where `generation`'s socket waits at its temporary name: what
    /// interception renames over the held name when an app of that
    /// generation deletes the held file before binding it, instead of
    /// binding yet another socket there. (temporary name, its file, the
    /// socket's inode.)
    pub fn staged(&self, generation: u64) -> Option<(OsString, (u64, u64), u64)> {
        let m = self
            .members
            .iter()
            .find(|m| m.generation == Some(generation))?;
        let temp = m.temp.as_ref()?;
        Some((temp.name().to_owned(), m.file, m.inode))
    }

    /// Interception bound a new socket at the held name, whose file an app
    /// deleted (a generation with no socket of its own waiting): it is the
    /// current member from now on, the generation's that had the name. The
    /// one it replaces serves on in the processes that hold it, and closes
    /// with its generation.
    pub fn refiled(&mut self, home: Arc<Socket>) -> io::Result<()> {
        let st = self.folder.stat(&self.name)?.ok_or_else(|| {
            io::Error::other(format!(
                "{} is gone",
                self.folder.shown(&self.name).display()
            ))
        })?;
        let was = self.current;
        let generation = self.members[was].generation;
        self.members.push(Member {
            inode: steer::inode_of(home.as_ref())?,
            socket: home,
            file: (st.st_dev, st.st_ino),
            generation,
            temp: None,
        });
        self.current = self.members.len() - 1;
        if generation.is_none() {
            // Nobody's: nothing holds it to serve.
            self.members.remove(was);
            self.current -= 1;
        }
        Ok(())
    }
}

fn folder_of(file: &SocketFile) -> io::Result<Folder> {
    file.folder().cloned().ok_or_else(|| {
        io::Error::other(format!(
            "the folder of {} is gone",
            file.path_identity().0.display()
        ))
    })
}

/// `.NAME.relaunch-GEN`: hidden, and never another listener's name.
fn temp_name(name: &OsStr, generation: u64) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(format!(".relaunch-{generation}"));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::drain::Watch;
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("relaunch-ug-{}-{tag}", std::process::id()));
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

    const ROLE: file::Role = file::Role {
        label: "test socket",
        elsewhere: "choose another path",
        in_use: "stop it",
    };

    /// The held listener at `path`, as relaunch binds it, and its group.
    fn held(path: &Path, mode: u32) -> (UnixGroup, SocketFile) {
        let access = Access {
            mode,
            owner: None,
            group: None,
        };
        let (sock, file) = file::bind(path, &access, &ROLE).unwrap();
        sock.listen(128).unwrap();
        let g = UnixGroup::new(Arc::new(sock), &file, 128).unwrap();
        (g, file)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn id(p: &Path) -> (u64, u64) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    /// Accepts one connection from `s` under a deadline; None if none comes.
    fn accept(s: &Socket, within: Duration) -> Option<Socket> {
        s.set_nonblocking(true).unwrap();
        let end = Instant::now() + within;
        loop {
            if let Ok((c, _)) = s.accept() {
                c.set_nonblocking(false).unwrap();
                return Some(c);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One request and its answer over an accepted connection.
    fn serve(server: &mut Socket, client: &mut UnixStream, tag: u8) {
        client.write_all(&[tag]).unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        server.write_all(&[b[0] + 1]).unwrap();
        client.read_exact(&mut b).unwrap();
        assert_eq!(b[0], tag + 1);
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn new_connections_reach_the_renamed_in_socket_and_the_old_one_serves_its_queue() {
        let dir = Dir::new("steer");
        let path = dir.0.join("app.sock");
        let (mut g, mut file) = held(&path, 0o660);
        let one = g.socket_for(1);
        // 8 clients wait in generation 1's queue.
        let mut early: Vec<UnixStream> = (0..8)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let two = g.open(2).unwrap();
        let temp = dir.0.join(".app.sock.relaunch-2");
        assert_eq!(names(&dir.0), [".app.sock.relaunch-2", "app.sock"]);
        assert_eq!(
            std::fs::metadata(&temp).unwrap().permissions().mode() & 0o7777,
            0o660
        );
        // Its address is the held path, as root (what the app and its
        // clients see); else its temporary name.
        let shown = match nix::unistd::geteuid().is_root() {
            true => path.clone(),
            false => temp.clone(),
        };
        let addr = two.local_addr().unwrap();
        assert_eq!(addr.as_pathname(), Some(shown.as_path()));
        // Nothing reaches it before the switch.
        early.push(UnixStream::connect(&path).unwrap());
        assert!(accept(&two, Duration::from_millis(50)).is_none());

        let now = g.steer_to(2).unwrap();
        assert_eq!(g.current(), Some(2));
        assert_eq!(id(&path), now, "the held name is generation 2's file");
        assert_eq!(names(&dir.0), ["app.sock"], "no temporary name is left");
        file.renamed_over(now);
        let mut late: Vec<UnixStream> = (0..8)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // The drain measures generation 1's socket alone.
        let me = [std::process::id() as i32];
        let mut drain = Watch::new(vec![], vec![]).unix(g.inodes_before(2));
        assert_eq!((drain.look(&me).unwrap().queued), 9);
        let peer = late[0].peer_addr().unwrap();
        assert_eq!(peer.as_pathname(), Some(shown.as_path()));
        for (i, c) in late.iter_mut().enumerate() {
            let mut s = accept(&two, WAIT).expect("a new connection reaches generation 2");
            serve(&mut s, c, i as u8);
        }
        // Generation 1 serves every connection it had queued, and no other.
        for (i, c) in early.iter_mut().enumerate() {
            let mut s = accept(&one, WAIT).expect("the old queue is kept");
            serve(&mut s, c, 100 + i as u8);
        }
        assert!(accept(&one, Duration::from_millis(50)).is_none());
        assert!(drain.look(&me).unwrap().idle());
        // Its restarts get the same socket; once gone, its socket closes.
        assert!(Arc::ptr_eq(&g.socket_for(2), &two));
        assert_eq!(g.inodes().count(), 2);
        assert_eq!(g.inodes_before(2), [steer::inode_of(one.as_ref()).unwrap()]);
        g.release(1);
        assert_eq!(Arc::strong_count(&one), 1, "the group let go of it");
        assert_eq!(g.inodes().count(), 1);
        // The file relaunch removes on exit is the renamed-in one.
        drop(g);
        drop(file);
        assert!(names(&dir.0).is_empty(), "{:?}", names(&dir.0));
    }

    #[test]
    fn a_reload_that_fails_before_the_switch_leaves_no_file_and_the_current_socket() {
        let dir = Dir::new("fail");
        let path = dir.0.join("app.sock");
        let (mut g, _file) = held(&path, 0o600);
        let one = g.socket_for(1);
        let held_id = id(&path);
        let two = g.open(2).unwrap();
        g.release(2);
        assert_eq!(names(&dir.0), ["app.sock"], "its temporary file is removed");
        assert_eq!(Arc::strong_count(&two), 1);
        assert_eq!(id(&path), held_id);
        assert_eq!(g.current(), Some(1));
        // The next reload gets a new socket; the serving one keeps its name.
        let three = g.open(3).unwrap();
        assert!(!Arc::ptr_eq(&three, &one));
        g.steer_to(3).unwrap();
        g.release(1);
        // Everything gone: the socket at the name waits for the next one.
        g.release(3);
        assert_eq!(g.current(), None);
        assert!(Arc::ptr_eq(&g.socket_for(4), &three));
    }

    /// As root, a generation's socket has the held path as its address
    /// even where its temporary name would be too long for one; otherwise
    /// the open fails and leaves no file.
    #[test]
    fn a_temporary_name_too_long_for_an_address() {
        let dir = Dir::new("long");
        // The held name fits in sockaddr_un's 108 bytes; the temporary
        // name, longer, does not.
        let room = 107 - dir.0.as_os_str().len() - 1;
        let path = dir.0.join("a".repeat(room - 2));
        let (mut g, _file) = held(&path, 0o600);
        g.socket_for(1);
        if nix::unistd::geteuid().is_root() {
            let two = g.open(2).unwrap();
            let addr = two.local_addr().unwrap();
            assert_eq!(addr.as_pathname(), Some(path.as_path()));
            assert_eq!(names(&dir.0).len(), 2, "{:?}", names(&dir.0));
            return;
        }
        let e = g.open(2).unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
        assert_eq!(names(&dir.0).len(), 1, "{:?}", names(&dir.0));
        assert_eq!(g.inodes().count(), 1);
    }

    /// Where relaunch cannot take a folder as a thread's root.
    #[test]
    fn without_a_staging_root_a_socket_has_its_temporary_name_and_still_serves() {
        let dir = Dir::new("plain");
        let path = dir.0.join("app.sock");
        let (mut g, _file) = held(&path, 0o640);
        g.socket_for(1);
        g.staging = Some(false);
        let two = g.open(2).unwrap();
        let temp = dir.0.join(".app.sock.relaunch-2");
        assert_eq!(
            two.local_addr().unwrap().as_pathname(),
            Some(temp.as_path())
        );
        assert_eq!(
            std::fs::metadata(&temp).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let now = g.steer_to(2).unwrap();
        assert_eq!(id(&path), now);
        let _c = UnixStream::connect(&path).unwrap();
        assert!(accept(&two, WAIT).is_some());
        assert_eq!(names(&dir.0), ["app.sock"]);
    }

    /// An app that deletes the held file before it binds the path: its
    /// generation's socket is put there (what a refile can do instead of
    /// binding yet another socket).
    #[test]
    fn a_deleted_held_file_is_replaced_by_the_generations_socket() {
        let dir = Dir::new("deleted");
        let path = dir.0.join("app.sock");
        let (mut g, _file) = held(&path, 0o600);
        g.socket_for(1);
        let two = g.open(2).unwrap();
        std::fs::remove_file(&path).unwrap();
        let now = g.steer_to(2).unwrap();
        assert_eq!(id(&path), now);
        assert_eq!(names(&dir.0), ["app.sock"]);
        let _c = UnixStream::connect(&path).unwrap();
        assert!(accept(&two, WAIT).is_some());
    }

    #[test]
    fn an_open_that_fails_leaves_no_file_and_touches_none() {
        let dir = Dir::new("taken");
        let path = dir.0.join("app.sock");
        let (mut g, _file) = held(&path, 0o600);
        g.socket_for(1);
        // Someone listens at the temporary name already.
        let temp = dir.0.join(".app.sock.relaunch-2");
        let theirs = std::os::unix::net::UnixListener::bind(&temp).unwrap();
        let before = names(&dir.0);
        let e = g.open(2).unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
        assert_eq!(names(&dir.0), before, "no staging folder is left");
        let _c = UnixStream::connect(&temp).unwrap();
        assert!(theirs.accept().is_ok(), "theirs still listens");
        assert_eq!(g.inodes().count(), 1);
    }

    #[test]
    fn a_temporary_file_swapped_by_someone_else_is_never_renamed_over_the_held_name() {
        let dir = Dir::new("swapped");
        let path = dir.0.join("app.sock");
        let (mut g, _file) = held(&path, 0o600);
        let one = g.socket_for(1);
        g.open(2).unwrap();
        let temp = dir.0.join(".app.sock.relaunch-2");
        std::fs::remove_file(&temp).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&temp).unwrap();
        let theirs_id = id(&temp);
        let held_id = id(&path);
        let e = g.steer_to(2).unwrap_err().to_string();
        assert!(
            e.contains("replaced by a file relaunch did not make"),
            "{e}"
        );
        assert_eq!(id(&path), held_id);
        assert_eq!(id(&temp), theirs_id, "theirs is left alone");
        assert_eq!(g.current(), Some(1));
        let _c = UnixStream::connect(&path).unwrap();
        assert!(accept(&one, WAIT).is_some());
    }

    /// The folder is pinned: swapped for a symlink after the held file was
    /// bound, the next generation's file is bound and renamed in the folder
    /// pinned, and nothing happens where the symlink leads.
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
        let decoy = elsewhere.join("app.sock");
        std::fs::write(&decoy, "keep").unwrap();
        let (mut g, _file) = held(&sub.join("app.sock"), 0o600);
        g.socket_for(1);
        let moved = dir.0.join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
        let two = g.open(2).unwrap();
        let now = g.steer_to(2).unwrap();
        assert_eq!(names(&elsewhere), ["app.sock"]);
        assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "keep");
        assert_eq!(names(&moved), ["app.sock"]);
        assert_eq!(id(&moved.join("app.sock")), now);
        let _c = UnixStream::connect(moved.join("app.sock")).unwrap();
        assert!(accept(&two, WAIT).is_some());
    }

    #[test]
    fn a_handed_over_group_steers_as_before() {
        let dir = Dir::new("handover");
        let path = dir.0.join("app.sock");
        let (mut g, file) = held(&path, 0o600);
        let one = g.socket_for(1);
        let two = g.open(2).unwrap();
        let (sockets, saved) = g.save();
        let json = serde_json::to_string(&saved).unwrap();
        // The next image adopts the held file by its path.
        let (p, identity) = file.path_identity();
        let adopted = SocketFile::adopt(p, identity);
        let mut back =
            UnixGroup::adopt(sockets, serde_json::from_str(&json).unwrap(), &adopted).unwrap();
        // An exec runs no destructors.
        std::mem::forget(g);
        assert_eq!(names(&dir.0), [".app.sock.relaunch-2", "app.sock"]);
        assert!(Arc::ptr_eq(&back.socket_for(1), &one));
        assert_eq!(back.backlog, 128);
        back.steer_to(2).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        assert!(accept(&two, WAIT).is_some());
        assert_eq!(names(&dir.0), ["app.sock"]);
    }
}
