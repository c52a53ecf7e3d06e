//! One held TCP listener as a SO_REUSEPORT group of listening sockets, one
//! per live generation, and the steering program that sends every new
//! connection to the serving one (docs/steering.md has the measurements).
//!
//! The first member (the home socket) is the listener relaunch bound at
//! start: it stays in slot 0 for relaunch's whole life. A generation started
//! beside the serving one gets a member of its own, which nothing is steered
//! to until it serves. Members are never closed while relaunch runs: one
//! whose generation is gone waits, with an empty queue, for the next
//! reload. So no member ever leaves the group, and the kernel's slots, which
//! move only when one leaves, are simply the order of `members`. A new
//! member's slot is checked with a probe before anything is steered to it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::Socket;
use tracing::{debug, info, warn};

use super::steer::{self, Probe, Route};
use super::unix_group::{UnixGroup, UnixSaved};
use super::{Listener, Membership};
use crate::plan::spec::{Addr, Proto};
use crate::plan::{Planned, Source};

/// Whether the listeners of `plan` drain at reloads, and as whom their
/// groups are made; Err: why not (for [`drain_off`]). `on_demand`: `--lazy` or
/// `--idle-stop`, which watch the first socket for the connection that
/// starts a generation.
pub fn membership(plan: &[Planned], on_demand: bool) -> Result<Membership, String> {
    let off = |why: String| Err(why);
    if on_demand {
        return off("--lazy and --idle-stop watch one socket per listener".into());
    }
    let (mut tcp, mut inherited) = (false, false);
    for p in plan {
        let why = match &p.source {
            // Told apart once open (see `groups`): only a TCP socket that
            // systemd made with SO_REUSEPORT (ReusePort=yes) can have more
            // members, made as its creator, root.
            Source::Inherited(_) => {
                inherited = true;
                continue;
            }
            Source::Bind { spec, .. } | Source::Stored { spec, .. } => match spec.addr {
                Addr::Inet {
                    proto: Proto::Tcp, ..
                } => {
                    tcp = true;
                    continue;
                }
                // Each generation's socket file is renamed in (unix_group).
                Addr::Unix(_) => continue,
                Addr::Inet { .. } => "UDP has no connections to hand over",
                Addr::UnixAbstract(_) => "an abstract name cannot be renamed to another socket",
            },
        };
        return off(format!(
            "{} cannot be steered between generations: {why}",
            p.name
        ));
    }
    if !tcp && !inherited {
        return Ok(Membership { owner: None });
    }
    if !nix::unistd::geteuid().is_root() && inherited {
        return off(
            "a socket from systemd is made by PID 1, as root, and relaunch is not root, so it \
             cannot add sockets to its group"
                .into(),
        );
    }
    if !tcp {
        return Ok(Membership { owner: None });
    }
    if !nix::unistd::geteuid().is_root() {
        // As the app's uid, any process of that uid could join the group or
        // bind the port's specific addresses and take connections.
        return off(
            "relaunch is not root, so it cannot own the port as a uid that no other \
                    process runs as"
                .into(),
        );
    }
    let busy = match steer::busy_uids() {
        Ok(b) => b,
        Err(e) => return off(format!("cannot tell which uids are in use ({e})")),
    };
    match steer::choose_owner(steer::OWNER_RANGE, &busy) {
        // A uid not mapped in a user namespace (a rootless container), or
        // no CAP_SETUID: the sockets could not be made.
        Some(uid) => match steer::socket_as(socket2::Domain::IPV4, Some(uid)) {
            Ok(_) => Ok(Membership { owner: Some(uid) }),
            Err(e) => off(format!("relaunch cannot make sockets as uid {uid} ({e})")),
        },
        None => off(format!(
            "every uid of {}-{} is in use, and the port's owner must be one nothing runs as",
            steer::OWNER_RANGE.start(),
            steer::OWNER_RANGE.end()
        )),
    }
}

/// The line that says the drain is off, why, and what that costs.
pub fn drain_off(why: &str) -> String {
    format!(
        "drain is off: {why}; at a reload the old generation is stopped as soon as the new one \
         is ready, and connections it accepted but had not answered may be cut \
         (docs/steering.md)"
    )
}

/// One group per listener, or none at all (drain off, said why). `stored`:
/// each listener's other members the fd store gave back, in slot order.
/// `plan`: where each listener came from.
pub fn groups(
    listeners: &[Listener],
    plan: &[Planned],
    backlog: i32,
    stored: Vec<Vec<Socket>>,
) -> Vec<Steered> {
    let mut out = Vec::with_capacity(listeners.len());
    let mut stored = stored.into_iter();
    for (l, p) in listeners.iter().zip(plan) {
        let others = stored.next().unwrap_or_default();
        let from = match p.source {
            Source::Inherited(_) => "a .socket unit",
            _ => "systemd's fd store",
        };
        let tcp = l.socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && l.socket.local_addr().is_ok_and(|a| a.as_socket().is_some());
        let made = match (&l.addr, l.file()) {
            (Some(Addr::Unix(_)), Some(file)) => l
                .socket
                .try_clone()
                .and_then(|s| UnixGroup::new(Arc::new(s), file, backlog))
                .map(Steered::Unix),
            (Some(Addr::Unix(_)), None) => Err(io::Error::other(format!(
                "its socket came from {from}, and its file is not one this relaunch made"
            ))),
            _ if !tcp => Err(io::Error::other(format!(
                "its socket from {from} is not a TCP or Unix stream listener"
            ))),
            _ if l.socket.reuse_port().unwrap_or(false) => l
                .socket
                .try_clone()
                .and_then(|s| Group::restore(Arc::new(s), others, backlog))
                .map(Steered::Tcp),
            _ => Err(io::Error::other(format!(
                "its socket from {from} was made without SO_REUSEPORT{}",
                match p.source {
                    Source::Inherited(_) =>
                        " (ReusePort=yes in the unit, with relaunch running \
                                             as root, lets old generations drain)",
                    _ => "",
                }
            ))),
        };
        match made {
            Ok(g) => out.push(g),
            Err(e) => {
                let why = format!(
                    "{} ({}) cannot be steered between generations: {e}",
                    l.name,
                    l.address()
                );
                // A unit without ReusePort=yes is a choice, not a fault.
                match p.source {
                    Source::Inherited(_) => info!("{}", drain_off(&why)),
                    _ => warn!("{}", drain_off(&why)),
                }
                return Vec::new();
            }
        }
    }
    out
}

/// What releasing a generation's sockets did.
pub enum Released {
    /// How many connections left waiting on them were reset.
    Reset(usize),
    /// The file at the held name now; `stranded`: it was the released
    /// generation's while others run (see [`UnixGroup::release`]).
    File {
        identity: (u64, u64),
        stranded: bool,
    },
}

/// A held listener's sockets, one per live generation: a TCP port's
/// SO_REUSEPORT group, or a Unix socket file's generations, each renamed in
/// when it serves.
#[derive(Debug)]
pub enum Steered {
    Tcp(Group),
    Unix(UnixGroup),
}

impl Steered {
    /// Every socket's inode: what relaunch holds for this listener.
    pub fn inodes(&self) -> Vec<u64> {
        match self {
            Steered::Tcp(g) => g.inodes().collect(),
            Steered::Unix(g) => g.inodes().collect(),
        }
    }

    /// The generations that have a socket here.
    pub fn generations(&self) -> Vec<u64> {
        match self {
            Steered::Tcp(g) => g.generations().collect(),
            Steered::Unix(g) => g.generations().collect(),
        }
    }

    /// `generation`'s own socket, if it has one.
    pub fn member_of(&self, generation: u64) -> Option<Arc<Socket>> {
        match self {
            Steered::Tcp(g) => g.member_of(generation),
            Steered::Unix(g) => g.member_of(generation),
        }
    }

    /// The socket `generation`'s children get.
    pub fn socket_for(&mut self, generation: u64) -> Arc<Socket> {
        match self {
            Steered::Tcp(g) => g.socket_for(generation),
            Steered::Unix(g) => g.socket_for(generation),
        }
    }

    /// Gives `generation` a socket of its own that nothing reaches yet;
    /// `neighbours`: relaunch's other sockets (see [`Group::open`]).
    pub fn open(&mut self, generation: u64, neighbours: &[u64]) -> io::Result<Arc<Socket>> {
        match self {
            Steered::Tcp(g) => g.open(generation, neighbours),
            Steered::Unix(g) => g.open(generation),
        }
    }

    /// `n` connections of relaunch's own to `generation`'s socket, each
    /// given `wait` (see [`Group::probe`]); none to a Unix one, which is
    /// reached by a name relaunch does not connect through.
    pub fn probe(&mut self, generation: u64, n: usize, wait: Duration) -> io::Result<Vec<Socket>> {
        match self {
            Steered::Tcp(g) => g.probe(generation, n, wait),
            Steered::Unix(_) => Ok(Vec::new()),
        }
    }

    /// `generation` is gone: what became of what it had (see
    /// [`Released`]).
    pub fn release(&mut self, generation: u64) -> Released {
        match self {
            Steered::Tcp(g) => Released::Reset(g.release(generation)),
            Steered::Unix(g) => {
                let stranded = g.release(generation);
                Released::File {
                    identity: g.at_name().0,
                    stranded,
                }
            }
        }
    }

    /// The TCP port.
    pub fn port(&self) -> Option<u16> {
        match self {
            Steered::Tcp(g) => Some(g.port()),
            Steered::Unix(_) => None,
        }
    }

    /// Its sockets, in order, and the rest, for the next image.
    pub fn save(&self) -> (Vec<Arc<Socket>>, Saved, Option<UnixSaved>) {
        match self {
            Steered::Tcp(g) => {
                let (members, saved) = g.save();
                (members, saved, None)
            }
            Steered::Unix(g) => {
                let (members, saved) = g.save();
                (members, Saved::default(), Some(saved))
            }
        }
    }
}

/// How long a probe of a new member's slot may take (loopback: microseconds).
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Member {
    socket: Arc<Socket>,
    inode: u64,
    /// The generations whose children it is given to (two share the
    /// routed one where a reload could not have one of its own); none: free.
    generations: Vec<u64>,
}

#[derive(Debug)]
pub struct Group {
    addr: SocketAddr,
    /// Of an IPv6 address: IPv6 only (a member that differs is another
    /// kernel group, which no program steers).
    v6only: bool,
    owner: u32,
    backlog: i32,
    /// In slot order.
    members: Vec<Member>,
    /// The slot new connections go to.
    route: usize,
    /// A canary: its slot and the share of new connections it takes from
    /// the routed one.
    canary: Option<(usize, f64)>,
}

/// Where a group's new connections go, to put back (see [`Group::back_to`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    route: usize,
    canary: Option<(usize, f64)>,
}

/// What an upgrade hands over of a group besides its members' fds (which
/// come in slot order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    pub generations: Vec<Vec<u64>>,
    pub route: usize,
    pub backlog: i32,
    /// A canary's slot and share.
    #[serde(default)]
    pub canary: Option<(usize, f64)>,
}

impl Group {
    /// The group of `home`, a listening member made at start (see
    /// `sockets::Membership`). Every connection goes to it.
    pub fn new(home: Arc<Socket>, backlog: i32) -> io::Result<Group> {
        let group = Group::of(vec![home], vec![Vec::new()], 0, backlog)?;
        group.attach()?;
        Ok(group)
    }

    /// Interception moved the listener where an app binds (`--port`): the
    /// group starts over from `home` there, with the generations that had
    /// the routed member. The other members, at the old address, stop
    /// listening: nothing is steered to them any more.
    pub fn moved(&mut self, home: Arc<Socket>) -> io::Result<()> {
        let mut group = Group::new(home, self.backlog)?;
        group.members[0].generations = std::mem::take(&mut self.members[self.route].generations);
        for m in &self.members[1..] {
            // SAFETY: shutdown on a socket we own.
            unsafe { libc::shutdown(m.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        *self = group;
        Ok(())
    }

    /// The group of `home` and the `others` the fd store kept, in slot
    /// order (none of them left the group: each was held by the store), after
    /// a relaunch that ended without handing them over. Connections go to
    /// the member with the most waiting: the one that was served.
    pub fn restore(home: Arc<Socket>, others: Vec<Socket>, backlog: i32) -> io::Result<Group> {
        if others.is_empty() {
            return Group::new(home, backlog);
        }
        let mut sockets = vec![home];
        sockets.extend(others.into_iter().map(Arc::new));
        let n = sockets.len();
        let mut group = Group::of(sockets, vec![Vec::new(); n], 0, backlog)?;
        let queues = crate::proc::listen_queues().unwrap_or_else(|e| {
            warn!(
                "cannot read the accept queues ({e}): new connections go to slot 0, and what \
                 waits on the others is served at the next reloads"
            );
            Default::default()
        });
        let waiting = |m: &Member| queues.get(&m.inode).map_or(0, |q| q.waiting);
        let busiest = (0..n).max_by_key(|&i| (waiting(&group.members[i]), usize::MAX - i));
        group.route = busiest.unwrap_or(0);
        group.attach()?;
        info!(
            addr = %group.addr,
            "the fd store kept {n} sockets of this port's group; new connections go to the \
             one in slot {}",
            group.route
        );
        Ok(group)
    }

    /// A group handed over by an upgrade: its members in slot order (the
    /// kernel's order is unchanged by an exec).
    pub fn adopt(members: Vec<Arc<Socket>>, saved: Saved) -> io::Result<Group> {
        if members.is_empty() || members.len() != saved.generations.len() {
            return Err(io::Error::other(
                "the handed-over group does not match its sockets",
            ));
        }
        let route = saved.route.min(members.len() - 1);
        let mut group = Group::of(members, saved.generations, route, saved.backlog)?;
        group.canary = saved.canary.filter(|&(slot, _)| slot < group.members.len());
        // The program is the kernel's and outlives the exec; attached again
        // all the same, from what is now known.
        group.attach()?;
        Ok(group)
    }

    fn of(
        sockets: Vec<Arc<Socket>>,
        generations: Vec<Vec<u64>>,
        route: usize,
        backlog: i32,
    ) -> io::Result<Group> {
        let home = &sockets[0];
        let addr = home
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an inet socket"))?;
        let owner = steer::owner_of(home.as_ref())?;
        let v6only = addr.is_ipv6() && home.only_v6()?;
        let members = sockets
            .into_iter()
            .zip(generations)
            .map(|(socket, generations)| {
                Ok(Member {
                    inode: steer::inode_of(socket.as_ref())?,
                    socket,
                    generations,
                })
            })
            .collect::<io::Result<Vec<Member>>>()?;
        Ok(Group {
            addr,
            v6only,
            owner,
            backlog,
            members,
            route,
            canary: None,
        })
    }

    pub fn save(&self) -> (Vec<Arc<Socket>>, Saved) {
        let sockets = self.members.iter().map(|m| Arc::clone(&m.socket)).collect();
        let generations = self.members.iter().map(|m| m.generations.clone()).collect();
        (
            sockets,
            Saved {
                generations,
                route: self.route,
                backlog: self.backlog,
                canary: self.canary,
            },
        )
    }

    /// How many members (slots) it has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The uid its members are made as.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The generations that have one of its members.
    pub fn generations(&self) -> impl Iterator<Item = u64> + '_ {
        self.members
            .iter()
            .flat_map(|m| m.generations.iter().copied())
    }

    /// `generation`'s member, if it has one.
    pub fn member_of(&self, generation: u64) -> Option<Arc<Socket>> {
        Some(Arc::clone(&self.members[self.position(generation)?].socket))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every member's inode: what relaunch holds on this port.
    pub fn inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().map(|m| m.inode)
    }

    /// The inodes of the members of generations other than `serving`
    /// (older ones after a reload, a canary after a rollback), which drain.
    pub fn inodes_besides(&self, serving: u64) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| !m.generations.is_empty() && !m.generations.contains(&serving))
            .map(|m| m.inode)
            .collect()
    }

    /// The generation new connections go to, if one has the routed member.
    #[cfg(test)]
    pub fn routed(&self) -> Option<u64> {
        self.members[self.route].generations.iter().max().copied()
    }

    /// The socket `generation`'s children get: its own member, or else the
    /// routed one, which it then shares with whoever has it.
    pub fn socket_for(&mut self, generation: u64) -> Arc<Socket> {
        let i = self.position(generation).unwrap_or_else(|| {
            self.members[self.route].generations.push(generation);
            self.route
        });
        Arc::clone(&self.members[i].socket)
    }

    /// Gives `generation` a member that nothing is steered to: a free one,
    /// or a new one, whose slot a probe confirms first. `neighbours`: the
    /// inodes of relaunch's other listeners, which may share the port on
    /// another address, and are not foreign.
    pub fn open(&mut self, generation: u64, neighbours: &[u64]) -> io::Result<Arc<Socket>> {
        if let Some(i) = self.position(generation).filter(|&i| i != self.route) {
            return Ok(Arc::clone(&self.members[i].socket));
        }
        let free = (0..self.members.len())
            .find(|&i| i != self.route && self.members[i].generations.is_empty());
        let i = match free {
            Some(i) => i,
            None => self.grow(neighbours)?,
        };
        self.members[i].generations.push(generation);
        Ok(Arc::clone(&self.members[i].socket))
    }

    /// `n` connections of relaunch's own to `generation`'s member, which
    /// nothing else reaches before it serves: a server that only ever
    /// shows readiness by accepting (one that polls a non-blocking accept)
    /// has something to accept. Each stays open, sending nothing, until
    /// dropped. Each connect may take `wait`: a queue that is full drops
    /// the handshake, and the caller's thread waits that long.
    pub fn probe(&mut self, generation: u64, n: usize, wait: Duration) -> io::Result<Vec<Socket>> {
        let slot = self.slot_of(generation)?;
        (0..n)
            .map(|_| {
                self.with_probe(slot, |sock, dest| {
                    sock.connect_timeout(&dest.into(), wait)?;
                    Ok(sock)
                })
            })
            .collect()
    }

    /// New connections go to `generation`'s member from now on (a canary
    /// beside it ends). Where they went before (for [`back_to`](Self::back_to)).
    pub fn steer_to(&mut self, generation: u64) -> io::Result<Routing> {
        let i = self.slot_of(generation)?;
        let was = self.routing();
        self.back_to(Routing {
            route: i,
            canary: None,
        })?;
        Ok(was)
    }

    /// `share` (0 < share < 1) of new connections go to `generation`'s
    /// member, drawn at random for each, and the rest where they went.
    pub fn share_to(&mut self, generation: u64, share: f64) -> io::Result<Routing> {
        let i = self.slot_of(generation)?;
        if i == self.route {
            return Err(io::Error::other(format!(
                "generation {generation} has the routed socket: there is nothing to share with"
            )));
        }
        let was = self.routing();
        self.back_to(Routing {
            route: self.route,
            canary: Some((i, share)),
        })?;
        Ok(was)
    }

    /// New connections go where `was` sent them again.
    pub fn back_to(&mut self, was: Routing) -> io::Result<()> {
        let now = self.routing();
        let last = self.members.len() - 1;
        self.route = was.route.min(last);
        self.canary = was.canary.filter(|&(slot, _)| slot <= last);
        self.attach().inspect_err(|_| {
            self.route = now.route;
            self.canary = now.canary;
        })
    }

    fn routing(&self) -> Routing {
        Routing {
            route: self.route,
            canary: self.canary,
        }
    }

    /// `generation` is gone: its members are free (the routed one too,
    /// for whichever generation starts next). What still waits on a free
    /// member that nothing is steered to would wait for the next reload,
    /// or for ever: it is reset, and counted.
    pub fn release(&mut self, generation: u64) -> usize {
        for m in &mut self.members {
            m.generations.retain(|&g| g != generation);
        }
        // A canary that is gone gets no more of the share.
        if let Some((slot, _)) = self.canary
            && self.members[slot].generations.is_empty()
        {
            self.canary = None;
            if let Err(e) = self.attach() {
                warn!(addr = %self.addr, "cannot take a gone canary's share back ({e})");
            }
        }
        let mut reset = 0;
        for (i, m) in self.members.iter_mut().enumerate() {
            if m.generations.is_empty() && i != self.route {
                reset += reset_queue(&m.socket);
            }
        }
        reset
    }

    fn slot_of(&self, generation: u64) -> io::Result<usize> {
        self.position(generation).ok_or_else(|| {
            // Only a move (see `Group::moved`) leaves a started generation
            // without one.
            io::Error::other(format!(
                "generation {generation} has no socket in the group (the listener moved where \
                 the app binds after it started, and its socket stayed at the old address); \
                 reload again: the next generation gets one where the listener is now"
            ))
        })
    }

    fn position(&self, generation: u64) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.generations.contains(&generation))
    }

    fn attach(&self) -> io::Result<()> {
        let prog = steer::program(self.route(), None);
        steer::attach(self.members[0].socket.as_ref(), &prog)
    }

    /// The program's route: to the routed member, or shared with a canary.
    fn route(&self) -> Route {
        match self.canary {
            None => Route::To(self.route as u32),
            Some((canary, share)) => Route::Share {
                serving: self.route as u32,
                canary: canary as u32,
                share,
            },
        }
    }

    /// Runs `f` with a probe socket (see `steer::probe_socket`) whose
    /// connects go to `slot` while the route stays; the probe's rule is
    /// taken off after, whatever `f` did (its port is free again).
    fn with_probe<T>(
        &self,
        slot: usize,
        f: impl FnOnce(Socket, SocketAddr) -> io::Result<T>,
    ) -> io::Result<T> {
        let dest = reachable(self.addr, self.v6only);
        let (probe, port) = steer::probe_socket(dest)?;
        let prog = steer::program(
            self.route(),
            Some(Probe {
                port,
                slot: slot as u32,
            }),
        );
        steer::attach(self.members[0].socket.as_ref(), &prog)?;
        let out = f(probe, dest);
        self.attach()?;
        out
    }

    /// A new member in the next slot, confirmed by a probe; the route is
    /// unchanged throughout.
    fn grow(&mut self, neighbours: &[u64]) -> io::Result<usize> {
        let ours: Vec<u64> = self.inodes().chain(neighbours.iter().copied()).collect();
        let found = steer::foreign_listeners(self.port(), &ours)?;
        if !found.is_empty() {
            // Its slot would be where ours is counted: a probe, if not
            // more, would reach it.
            return Err(io::Error::other(format!(
                "a listener relaunch does not own is on port {} ({})",
                self.port(),
                steer::shown(&found)
            )));
        }
        let socket = steer::member_with(self.addr, Some(self.owner), self.backlog, self.v6only)?;
        let slot = self.members.len();
        let placed = self.with_probe(slot, |probe, dest| {
            steer::verify(&socket, probe, dest, PROBE_WAIT)
        })?;
        if !placed {
            // Someone else's member is in the group (a process of the
            // owner's uid, or one left from an earlier relaunch): slots
            // are not what relaunch counts, and steering would be a guess.
            return Err(io::Error::other(format!(
                "a probe of the new socket's place in the group missed it: the group on {} \
                 has members relaunch does not know of",
                self.addr
            )));
        }
        self.members.push(Member {
            inode: steer::inode_of(&socket)?,
            socket: Arc::new(socket),
            generations: Vec::new(),
        });
        debug!(slot, addr = %self.addr, "a new member joined the group");
        Ok(slot)
    }
}

/// Resets the connections waiting on `socket`, which no child accepts
/// from: accepted here, with SO_LINGER 0. Non-blocking meanwhile (no child
/// holds it), blocking again after, as every socket is handed out.
fn reset_queue(socket: &Socket) -> usize {
    if socket.set_nonblocking(true).is_err() {
        return 0;
    }
    let mut n = 0;
    while let Ok((conn, _)) = socket.accept() {
        let _ = conn.set_linger(Some(Duration::ZERO));
        n += 1;
    }
    let _ = socket.set_nonblocking(false);
    n
}

/// A connection of relaunch's own to `listener` itself, by no steering
/// rule: where there is no group (the drain is off), what reaches the one
/// generation that runs. `wait`: as for [`Group::probe`].
pub fn connect_held(listener: &Socket, wait: Duration) -> io::Result<Socket> {
    let addr = listener
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the first listener is not a TCP one"))?;
    let dest = reachable(addr, addr.is_ipv6() && listener.only_v6()?);
    let socket = Socket::new(
        socket2::Domain::for_address(dest),
        socket2::Type::STREAM,
        None,
    )?;
    socket.connect_timeout(&dest.into(), wait)?;
    Ok(socket)
}

/// Where a probe connects to reach `addr`: itself, or loopback where it
/// listens on every address.
fn reachable(addr: SocketAddr, v6only: bool) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() && v6only => IpAddr::V6(Ipv6Addr::LOCALHOST),
        // A dual-stack [::] takes IPv4 too; ::1 may be off where IPv6 is
        // only half there, 127.0.0.1 is not.
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> Arc<Socket> {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = steer::member(addr, None, 128).unwrap();
        Arc::new(first)
    }

    /// Connects to the group and says which of `sockets` got it.
    fn lands(group: &Group, sockets: &[&Arc<Socket>]) -> usize {
        let c = std::net::TcpStream::connect(group.addr).unwrap();
        for _ in 0..1000 {
            for (i, s) in sockets.iter().enumerate() {
                s.set_nonblocking(true).unwrap();
                if s.accept().is_ok() {
                    drop(c);
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no member accepted the connection");
    }

    #[test]
    fn a_generation_beside_the_serving_one_gets_nothing_until_steered_to() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        assert_ne!(
            steer::inode_of(one.as_ref()).unwrap(),
            steer::inode_of(two.as_ref()).unwrap()
        );
        for _ in 0..20 {
            assert_eq!(lands(&g, &[&one, &two]), 0);
        }
        g.steer_to(2).unwrap();
        assert_eq!(g.routed(), Some(2));
        for _ in 0..20 {
            assert_eq!(lands(&g, &[&one, &two]), 1);
        }
        // Its restarts get the same socket.
        assert!(Arc::ptr_eq(&g.socket_for(2), &two));
    }

    #[test]
    fn a_canary_takes_its_share_until_either_generation_is_steered_to() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        g.share_to(2, 0.5).unwrap();
        // Both get some: 200 draws at one half miss one side with 2^-199.
        let canary = (0..200).filter(|_| lands(&g, &[&one, &two]) == 1).count();
        assert!(
            (40..=160).contains(&canary),
            "{canary} of 200 to the canary"
        );
        // Probes still reach the canary alone, and leave the share as it was.
        assert_eq!(g.probe(2, 1, PROBE_WAIT).unwrap().len(), 1);
        two.set_nonblocking(true).unwrap();
        two.accept()
            .expect("the probe waits on the canary's socket");
        assert!((0..40).any(|_| lands(&g, &[&one, &two]) == 1));
        // Rolled back: everything to the old one; the handover keeps neither.
        let was = g.steer_to(1).unwrap();
        for _ in 0..40 {
            assert_eq!(lands(&g, &[&one, &two]), 0);
        }
        assert_eq!(g.save().1.canary, None);
        g.back_to(was).unwrap();
        assert_eq!(g.save().1.canary, Some((1, 0.5)), "put back as it was");
        g.steer_to(2).unwrap();
        for _ in 0..40 {
            assert_eq!(lands(&g, &[&one, &two]), 1, "promoted: all to the canary");
        }
    }

    #[test]
    fn a_handed_over_canary_keeps_its_share() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        g.share_to(2, 0.5).unwrap();
        g.steer_to(1).unwrap();
        let (members, mut saved) = g.save();
        saved.canary = Some((1, 0.5));
        // The next image attaches the program from what it was handed.
        let back = Group::adopt(members, saved).unwrap();
        assert!((0..60).any(|_| lands(&back, &[&one, &two]) == 1));
        assert!((0..60).any(|_| lands(&back, &[&one, &two]) == 0));
    }

    #[test]
    fn probes_reach_the_new_generation_alone_and_the_route_stays() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        let probes = g.probe(2, 3, PROBE_WAIT).unwrap();
        assert_eq!(probes.len(), 3);
        two.set_nonblocking(true).unwrap();
        for _ in 0..3 {
            two.accept()
                .expect("each probe waits on generation 2's socket");
        }
        assert!(two.accept().is_err(), "nothing else reached it");
        for _ in 0..20 {
            assert_eq!(lands(&g, &[&one, &two]), 0, "the route is unchanged");
        }
    }

    #[test]
    fn a_probe_of_a_full_queue_gives_up_within_its_wait() {
        let mut g = Group::new(home(), 1).unwrap();
        g.socket_for(1);
        g.open(2, &[]).unwrap();
        // A backlog of 1 holds 2; the third handshake is dropped.
        let _full = g.probe(2, 2, PROBE_WAIT).unwrap();
        let t = std::time::Instant::now();
        assert!(g.probe(2, 1, Duration::from_millis(100)).is_err());
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }

    /// A v6-only [::] home (an app that asked for IPV6_V6ONLY): its new
    /// members are v6-only too, or they would form another kernel group.
    #[test]
    fn a_v6_only_group_grows_v6_only_members() {
        let Ok(first) = steer::member_with("[::]:0".parse().unwrap(), None, 128, true) else {
            return; // no IPv6 here
        };
        let mut g = Group::new(Arc::new(first), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).expect("the probe over ::1 finds it");
        assert!(two.only_v6().unwrap());
        g.steer_to(2).unwrap();
        let c = std::net::TcpStream::connect(("::1", g.addr.port())).unwrap();
        two.set_nonblocking(true).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while two.accept().is_err() {
            assert!(std::time::Instant::now() < end, "steered to generation 2");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop((c, one));
    }

    #[test]
    fn a_released_member_serves_the_next_reload_and_the_group_does_not_grow() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        g.steer_to(2).unwrap();
        g.release(1);
        let three = g.open(3, &[]).unwrap();
        assert!(Arc::ptr_eq(&three, &one), "the free member is reused");
        assert_eq!(g.inodes().count(), 2);
        g.steer_to(3).unwrap();
        assert_eq!(lands(&g, &[&one, &two]), 0);
        // A failed reload leaves the routed generation as it was.
        g.release(2);
        let four = g.open(4, &[]).unwrap();
        assert!(Arc::ptr_eq(&four, &two));
        g.release(4);
        assert_eq!(g.routed(), Some(3));
    }

    #[test]
    fn a_generation_sharing_the_routed_member_leaves_it_to_the_one_serving() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        // A reload that got no socket of its own shares it, then fails.
        assert!(Arc::ptr_eq(&g.socket_for(2), &one));
        assert_eq!(g.release(2), 0);
        assert_eq!(g.inodes_besides(3).len(), 1, "generation 1 still has it");
        let three = g.open(3, &[]).unwrap();
        assert!(!Arc::ptr_eq(&three, &one));
    }

    #[test]
    fn what_waits_on_a_released_member_is_reset_not_left_waiting() {
        let mut g = Group::new(home(), 128).unwrap();
        g.socket_for(1);
        // The routed member keeps what waits on it, for whoever comes next.
        let waiting: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(g.addr).unwrap())
            .collect();
        assert_eq!(g.release(1), 0);
        drop(waiting);
        // A member nothing is steered to: what waits there is reset.
        let mut g = Group::new(home(), 128).unwrap();
        g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        let _probes = g.probe(2, 2, PROBE_WAIT).unwrap();
        assert_eq!(
            g.release(2),
            2,
            "a failed reload's waiting connections are reset"
        );
        two.set_nonblocking(true).unwrap();
        assert!(two.accept().is_err(), "nothing left waiting");
    }

    #[test]
    fn a_generation_started_when_nothing_serves_takes_the_routed_member() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        g.release(1);
        // --idle-stop, then a connection: it waits in the routed member.
        let two = g.socket_for(2);
        assert!(Arc::ptr_eq(&one, &two));
        assert_eq!(g.routed(), Some(2));
    }

    #[test]
    fn a_listener_relaunch_does_not_own_stops_a_new_member_and_gets_nothing() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        // Same uid as the group's owner: it can join, and takes slot 1.
        let stranger = Arc::new(steer::member(g.addr, None, 128).unwrap());
        let err = g.open(2, &[]).unwrap_err().to_string();
        assert!(err.contains("a listener relaunch does not own"), "{err}");
        for _ in 0..20 {
            assert_eq!(lands(&g, &[&one, &stranger]), 0);
        }
        assert_eq!(g.inodes().count(), 1);
    }

    #[test]
    fn a_group_from_the_fd_store_steers_to_the_member_with_connections_waiting() {
        let first = home();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let two = steer::member(addr, None, 128).unwrap();
        let three = steer::member(addr, None, 128).unwrap();
        // Everything to slot 2, as the relaunch that was killed steered.
        steer::attach(first.as_ref(), &steer::program(Route::To(2), None)).unwrap();
        let waiting: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let g = Group::restore(first, vec![two, three], 128).unwrap();
        assert_eq!(g.route, 2);
        assert_eq!(g.len(), 3);
        drop(waiting);
        // Nothing waiting anywhere: the home socket.
        let first = home();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let two = steer::member(addr, None, 128).unwrap();
        let g = Group::restore(first, vec![two], 128).unwrap();
        assert_eq!(g.route, 0);
    }

    #[test]
    fn a_handed_over_group_steers_as_before() {
        let mut g = Group::new(home(), 128).unwrap();
        let one = g.socket_for(1);
        let two = g.open(2, &[]).unwrap();
        g.steer_to(2).unwrap();
        let (sockets, saved) = g.save();
        let json = serde_json::to_string(&saved).unwrap();
        let mut back = Group::adopt(sockets, serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.routed(), Some(2));
        assert!(Arc::ptr_eq(&back.socket_for(1), &one));
        assert_eq!(lands(&back, &[&one, &two]), 1);
    }
}
