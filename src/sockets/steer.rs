//! Steering new TCP connections between generations' listening sockets: one
//! socket per generation, all in one SO_REUSEPORT group that only relaunch
//! can join, and a classic BPF program on the group that picks the member.
//! What was measured, and the rules that follow, are in docs/steering.md.
//!
//! - Ownership: a member's uid is the fsuid of the thread that called
//!   socket(). A socket of another uid gets EADDRINUSE joining the group or
//!   binding a more specific address of its port with SO_REUSEPORT. As root,
//!   [`member`] creates sockets as a dedicated uid ([`choose_owner`]).
//!   [`foreign_listeners`] finds any other listener on the port.
//! - Programs: [`program`] returns a slot index, [`steer`] attaches it; the
//!   kernel's slot order is mirrored by [`Slots`] (or re-learned by
//!   [`learn`]). A program load that faults returns 0, which is a real slot,
//!   so the programs only load header bytes every SYN has.
//! - Probes: a connect from a port relaunch holds bound, with source address
//!   equal to the destination (only a local peer can send that), goes to the
//!   probe's slot: [`verify`] checks a slot, and a candidate can be probed
//!   alone while the address steers elsewhere.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

// ------------------------------------------------------------ ownership --

/// Runs `f` with this thread's fsuid set to `uid`, then restores it.
///
/// setfsuid(2) is per thread (glibc issues the raw syscall and, unlike
/// setuid, does not broadcast it), so only this thread's file and socket
/// creation acts as `uid`, and only until we restore. `f` must not yield: in
/// tokio, call it from synchronous code, never across an `.await`.
fn as_fsuid<T>(uid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    // SAFETY: setfsuid reads no memory and changes only this thread's
    // filesystem uid. It returns the previous fsuid whether or not it
    // succeeded; -1 is never a valid uid, so setfsuid(-1) only reads it.
    let prev = unsafe { libc::setfsuid(uid) } as u32;
    // SAFETY: as above.
    let now = unsafe { libc::setfsuid(u32::MAX) } as u32;
    if now != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "setfsuid({uid}) was refused (fsuid stays {now}): it needs CAP_SETUID, and the uid must be mapped in relaunch's user namespace"
            ),
        ));
    }
    let out = f();
    // SAFETY: as above. Going back to our own previous fsuid is always allowed.
    unsafe { libc::setfsuid(prev) };
    // SAFETY: as above.
    let back = unsafe { libc::setfsuid(u32::MAX) } as u32;
    if back != prev {
        // This thread would go on opening files as `uid`: not survivable.
        eprintln!(
            "relaunch: fatal: could not restore this thread's fsuid to {prev} (it is {back})"
        );
        std::process::abort();
    }
    Ok(out)
}

/// A TCP socket owned by `owner` (its sk_uid, which the kernel compares when
/// a socket binds into a SO_REUSEPORT group); by our own fsuid when None.
pub fn socket_as(domain: Domain, owner: Option<u32>) -> io::Result<Socket> {
    let make = || Socket::new(domain, Type::STREAM, None);
    match owner {
        None => make(),
        Some(uid) => as_fsuid(uid, make)?,
    }
}

/// A listening member of the group on `addr`: created as `owner`,
/// SO_REUSEADDR and SO_REUSEPORT, bound and listening. Its slot is the next
/// one ([`Slots::listened`]). Not the first: that one checks the port is free
/// (see `sockets::try_bind`).
pub fn member(addr: SocketAddr, owner: Option<u32>, backlog: i32) -> io::Result<Socket> {
    member_with(addr, owner, backlog, !addr.ip().is_unspecified())
}

/// [`member`], IPv6-only as `v6only` says (an IPv6 address only).
pub fn member_with(
    addr: SocketAddr,
    owner: Option<u32>,
    backlog: i32,
    v6only: bool,
) -> io::Result<Socket> {
    let sock = socket_as(Domain::for_address(addr), owner)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(v6only)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock)
}

fn fstat(fd: &impl AsFd) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid value of a plain C struct, and fstat
    // writes at most one of them, to memory we own, for an fd we borrow.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The uid that owns a socket: what a new member must be created as to join
/// its group (after an upgrade or a restart from the fd store).
pub fn owner_of(sock: &impl AsFd) -> io::Result<u32> {
    Ok(fstat(sock)?.st_uid)
}

/// The socket's inode: its identity in sock_diag and in [`Slots`].
pub fn inode_of(sock: &impl AsFd) -> io::Result<u64> {
    Ok(fstat(sock)?.st_ino)
}

/// Where a dedicated owner is looked for by default: systemd's unused range
/// (UIDS-GIDS.md: above homed and nspawn's bind-user, below DynamicUser),
/// and below 65536 so a container's usual 64K map has it.
pub const OWNER_RANGE: std::ops::RangeInclusive<u32> = 60578..=61183;

/// The first uid of `range` that `busy` does not hold.
pub fn choose_owner(range: std::ops::RangeInclusive<u32>, busy: &HashSet<u32>) -> Option<u32> {
    range.into_iter().find(|u| !busy.contains(u))
}

/// Uids that may not own a new group: any uid a process runs as (real,
/// effective, saved or fs), or that has a passwd entry. (Another relaunch's
/// owner runs no process: [`foreign_listeners`] on the port, empty before
/// the first member binds, is what keeps a second relaunch out.)
pub fn busy_uids() -> io::Result<HashSet<u32>> {
    let mut busy = HashSet::new();
    for pid in crate::proc::pids() {
        // A process may exit between the listing and the read: skip it.
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            busy.extend(crate::proc::status_uids(&status));
        }
    }
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        busy.extend(
            passwd
                .lines()
                .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok()),
        );
    }
    Ok(busy)
}

/// TCP listeners on `port`, any address and family, other than `ours` (by
/// inode), from sock_diag. Before the first member binds: any at all means
/// another group or listener (a second relaunch would join the first's group
/// if its owner uid were the same). Before a steering change: never steer
/// while one is there, and say so.
pub fn foreign_listeners(port: u16, ours: &[u64]) -> io::Result<Vec<SocketAddr>> {
    Ok(
        crate::proc::tcp_sockets_on(1 << crate::proc::TCP_LISTEN, &[port])?
            .into_iter()
            .filter(|e| e.local.port() == port && !ours.contains(&e.inode))
            .map(|e| e.local)
            .collect(),
    )
}

/// "a, b": addresses for a message.
pub fn shown(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------- programs --

/// Where new connections go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route {
    /// Every one to this slot.
    To(u32),
    /// `share` (0..=1) of them to `canary`, the rest to `serving`.
    Share {
        serving: u32,
        canary: u32,
        share: f64,
    },
}

/// Connects from `port`, with source address equal to the destination
/// address, go to `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub port: u16,
    pub slot: u32,
}

// Classic BPF opcodes, as libc has them (the seccomp filter uses the same).
const LD: u16 = libc::BPF_LD as u16;
const LDX: u16 = libc::BPF_LDX as u16;
const ST: u16 = libc::BPF_ST as u16;
const ALU: u16 = libc::BPF_ALU as u16;
const JMP: u16 = libc::BPF_JMP as u16;
const RET: u16 = libc::BPF_RET as u16;
const MISC: u16 = libc::BPF_MISC as u16;
const W: u16 = libc::BPF_W as u16;
const H: u16 = libc::BPF_H as u16;
const B: u16 = libc::BPF_B as u16;
const ABS: u16 = libc::BPF_ABS as u16;
const IND: u16 = libc::BPF_IND as u16;
const MEM: u16 = libc::BPF_MEM as u16;
const AND: u16 = libc::BPF_AND as u16;
const LSH: u16 = libc::BPF_LSH as u16;
const RSH: u16 = libc::BPF_RSH as u16;
const JEQ: u16 = libc::BPF_JEQ as u16;
const JGE: u16 = libc::BPF_JGE as u16;
const K: u16 = libc::BPF_K as u16;
const X: u16 = libc::BPF_X as u16;
const TAX: u16 = libc::BPF_TAX as u16;
/// Loads relative to the IP header. At reuseport selection the packet's
/// data starts after the TCP header (the empty payload of a SYN), so plain
/// offsets fault; the network header stays reachable.
const NET: u32 = libc::SKF_NET_OFF as u32;
const RANDOM: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;

/// An instruction whose jumps name labels, resolved by [`assemble`].
enum Op {
    Ins(u16, u32),
    /// Conditional jump (code, k, label if true, label if false); `None` is
    /// the next instruction.
    Jmp(u16, u32, Option<usize>, Option<usize>),
    Label(usize),
}

fn assemble(ops: &[Op]) -> Vec<libc::sock_filter> {
    let mut at = std::collections::HashMap::new();
    let mut n = 0;
    for op in ops {
        match op {
            Op::Label(l) => {
                at.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for op in ops {
        let pc = out.len();
        let rel = |l: Option<usize>| match l {
            None => 0,
            // Forward only, at most 255 ahead: our programs are a few dozen
            // instructions; a violation is a bug in this file.
            Some(l) => u8::try_from(at[&l] - pc - 1).expect("cBPF jump out of range"),
        };
        match op {
            Op::Label(_) => continue,
            Op::Ins(code, k) => out.push(libc::sock_filter {
                code: *code,
                jt: 0,
                jf: 0,
                k: *k,
            }),
            Op::Jmp(code, k, t, f) => out.push(libc::sock_filter {
                code: *code,
                jt: rel(*t),
                jf: rel(*f),
                k: *k,
            }),
        }
    }
    out
}

/// The steering program: the probe rule first, then the route.
pub fn program(route: Route, probe: Option<Probe>) -> Vec<libc::sock_filter> {
    use Op::*;
    const V4: usize = 1;
    const V6: usize = 2;
    const NOT4: usize = 3;
    const PROBE: usize = 4;
    const ROUTE: usize = 5;
    const SERVE: usize = 6;
    let mut ops = Vec::new();
    if let Some(p) = probe {
        let port = u32::from(p.port);
        ops.extend([
            Ins(LD | B | ABS, NET),
            Ins(ALU | RSH | K, 4),
            Jmp(JMP | JEQ | K, 4, Some(V4), Some(NOT4)),
            Label(NOT4),
            Jmp(JMP | JEQ | K, 6, Some(V6), Some(ROUTE)),
            // IPv4: X = header length, then the source port, then saddr == daddr.
            Label(V4),
            Ins(LD | B | ABS, NET),
            Ins(ALU | AND | K, 0x0f),
            Ins(ALU | LSH | K, 2),
            Ins(MISC | TAX, 0),
            Ins(LD | H | IND, NET),
            Jmp(JMP | JEQ | K, port, None, Some(ROUTE)),
            Ins(LD | W | ABS, NET + 12),
            Ins(ST, 0),
            Ins(LD | W | ABS, NET + 16),
            Ins(LDX | W | MEM, 0),
            Jmp(JMP | JEQ | X, 0, Some(PROBE), Some(ROUTE)),
            // IPv6 (no extension headers before TCP: the kernel's own SYNs
            // have none): the source port, then saddr == daddr word by word.
            Label(V6),
            Ins(LD | H | ABS, NET + 40),
            Jmp(JMP | JEQ | K, port, None, Some(ROUTE)),
        ]);
        for w in 0..4 {
            ops.extend([
                Ins(LD | W | ABS, NET + 8 + 4 * w),
                Ins(ST, 0),
                Ins(LD | W | ABS, NET + 24 + 4 * w),
                Ins(LDX | W | MEM, 0),
                Jmp(JMP | JEQ | X, 0, None, Some(ROUTE)),
            ]);
        }
        ops.extend([Label(PROBE), Ins(RET | K, p.slot), Label(ROUTE)]);
    }
    match route {
        Route::To(slot) => ops.push(Ins(RET | K, slot)),
        Route::Share {
            serving,
            canary,
            share,
        } => {
            // A random u32 below share * 2^32 picks the canary.
            let scaled = (share.clamp(0.0, 1.0) * 4_294_967_296.0).round();
            if scaled <= 0.0 {
                ops.push(Ins(RET | K, serving));
            } else if scaled >= 4_294_967_296.0 {
                ops.push(Ins(RET | K, canary));
            } else {
                ops.extend([
                    Ins(LD | W | ABS, RANDOM),
                    Jmp(JMP | JGE | K, scaled as u32, Some(SERVE), None),
                    Ins(RET | K, canary),
                    Label(SERVE),
                    Ins(RET | K, serving),
                ]);
            }
        }
    }
    assemble(&ops)
}

/// Attaches `prog` to the group of `member`, replacing the group's program.
/// `member` must be listening: on an unbound or non-listening socket the
/// program goes to a group of its own, which listen() then leaves.
pub fn attach(member: &impl AsFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::other("cBPF program too long"))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; the kernel copies
    // the instructions and checks them (bpf_check_classic) before use.
    let rc = unsafe {
        libc::setsockopt(
            member.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the program for `route` and `probe` through `via`, after
/// checking every slot they name is one of `slots`: an index past the last
/// member would hash over all of them, generations not ready included.
#[cfg(test)]
pub fn steer(via: &Socket, slots: &Slots, route: Route, probe: Option<Probe>) -> io::Result<()> {
    let named = match route {
        Route::To(slot) => vec![slot],
        Route::Share {
            serving, canary, ..
        } => vec![serving, canary],
    };
    let named = named.into_iter().chain(probe.map(|p| p.slot));
    if let Some(bad) = named.into_iter().find(|&s| s as usize >= slots.len()) {
        return Err(io::Error::other(format!(
            "steering to slot {bad}, but the group has {} members: refused, it would spread connections over all of them",
            slots.len()
        )));
    }
    attach(via, &program(route, probe))
}

// ---------------------------------------------------------------- slots --

/// The kernel's order of a group's listening members (by socket inode). A
/// TCP member takes the next slot at listen(); one that stops listening
/// (close of its last fd, shutdown) has the LAST member moved into its slot.
#[cfg(test)]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Slots {
    ids: Vec<u64>,
}

#[cfg(test)]
impl Slots {
    pub fn new() -> Self {
        Self::default()
    }

    /// `id` started listening: its slot.
    pub fn listened(&mut self, id: u64) -> u32 {
        debug_assert!(!self.ids.contains(&id), "member {id} listened twice");
        self.ids.push(id);
        (self.ids.len() - 1) as u32
    }

    /// `id` stopped listening. Returns the member that moved into its slot,
    /// if one did: its steering must be re-attached with the new index.
    pub fn left(&mut self, id: u64) -> Option<(u64, u32)> {
        let slot = self.ids.iter().position(|&m| m == id)?;
        self.ids.swap_remove(slot);
        self.ids.get(slot).map(|&moved| (moved, slot as u32))
    }

    /// The member that `id` leaving would move (the last one, unless `id`
    /// is last). A program that routes to it is wrong from that close until
    /// the re-attach: listen a spacer first (a member no route points to),
    /// so that the spacer is what moves.
    pub fn would_move(&self, id: u64) -> Option<u64> {
        let slot = self.ids.iter().position(|&m| m == id)?;
        let last = *self.ids.last()?;
        (slot + 1 < self.ids.len()).then_some(last)
    }

    pub fn slot(&self, id: u64) -> Option<u32> {
        self.ids.iter().position(|&m| m == id).map(|s| s as u32)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

// --------------------------------------------------------------- probes --

/// A socket for one probe connect to `dest`, bound to dest's address on a
/// port the kernel picks. While it is bound no other socket can connect from
/// that address and port (connect's autobind skips ports bound explicitly),
/// so the port is relaunch's alone: put it in the program's [`Probe`].
pub fn probe_socket(dest: SocketAddr) -> io::Result<(Socket, u16)> {
    let sock = Socket::new(Domain::for_address(dest), Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(dest.ip(), 0).into())?;
    let port = sock
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("probe socket has no inet address"))?;
    Ok((sock, port))
}

/// Connects `probe` (from [`probe_socket`], its port steered to `expected`'s
/// slot) to `dest`, and says whether `expected` got it within `wait`. Only
/// for a socket no process accepts from (a generation's socket before it
/// starts, or after it stopped): we accept the probe ourselves. The probe
/// ends with a reset, leaving no TIME_WAIT on the reserved tuple.
pub fn verify(
    expected: &Socket,
    probe: Socket,
    dest: SocketAddr,
    wait: Duration,
) -> io::Result<bool> {
    let from = probe.local_addr()?.as_socket();
    probe.connect_timeout(&dest.into(), wait)?;
    probe.set_linger(Some(Duration::ZERO))?;
    let mut pfd = libc::pollfd {
        fd: expected.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd we own, for the call's duration.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Ok(false);
    }
    let (conn, peer) = expected.accept()?;
    conn.set_linger(Some(Duration::ZERO))?;
    // A dual-stack socket names an IPv4 peer as ::ffff:a.b.c.d.
    let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
    Ok(peer.as_socket().map(canonical) == from.map(canonical))
}

/// Learns the slot order of a group whose members are `members` (in any
/// order), e.g. after a restart from the fd store: for each slot in turn,
/// every connection is steered to it, a probe connects, and the member
/// whose accept queue grew (sock_diag) holds that slot. Connects meanwhile
/// go to the slot being learned. Each probe is left reset in the queue it
/// reached, where an accept returns it as a connection the peer aborted.
/// The caller attaches the real program after.
#[cfg(test)]
pub fn learn(members: &[&Socket], dest: SocketAddr, wait: Duration) -> io::Result<Slots> {
    let ids = members
        .iter()
        .map(inode_of)
        .collect::<io::Result<Vec<u64>>>()?;
    let Some(via) = members.first() else {
        return Ok(Slots::new());
    };
    let waiting = || -> io::Result<Vec<u32>> {
        let queues = crate::proc::listen_queues()?;
        Ok(ids
            .iter()
            .map(|id| queues.get(id).map_or(0, |q| q.waiting))
            .collect())
    };
    let mut slots = Slots::new();
    for slot in 0..members.len() as u32 {
        let (probe, port) = probe_socket(dest)?;
        attach(via, &program(Route::To(slot), Some(Probe { port, slot })))?;
        let before = waiting()?;
        probe.connect_timeout(&dest.into(), wait)?;
        probe.set_linger(Some(Duration::ZERO))?;
        let deadline = std::time::Instant::now() + wait;
        let found = loop {
            let now = waiting()?;
            // Only the member at `slot` can grow: everything goes there.
            let grew: Vec<usize> = (0..ids.len()).filter(|&i| now[i] > before[i]).collect();
            match grew[..] {
                [i] => break ids[i],
                [] if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => {
                    return Err(io::Error::other(format!(
                        "could not tell which member holds slot {slot}: {} queues grew",
                        grew.len()
                    )));
                }
            }
        };
        if slots.slot(found).is_some() {
            return Err(io::Error::other(format!(
                "slot {slot} reached a member already placed: the group has fewer members than given"
            )));
        }
        slots.listened(found);
    }
    Ok(slots)
}

#[cfg(test)]
#[path = "steer_tests.rs"]
mod tests;
