//! The one module that reads `/proc`: process status and parents, process
//! trees, fd tables, the socket tables of `/proc/net`, and pidfds. `who`, the
//! readiness scan, the notify sender checks and the reaper's orphan sweep all
//! read through here. It is the lowest layer: it imports nothing of relaunch.
//!
//! `/proc` is outside input. A comm may hold spaces, parentheses and newlines;
//! a process may exit between two reads, so a read may fail or be cut short;
//! a pid may be reused. Every parser returns `None` (or skips the line) rather
//! than guessing, and callers treat "gone" as an ordinary answer.
//!
//! `/proc` may also be missing (some containers) or hide other users'
//! processes (`hidepid=`): [`available`] says once whether we can read it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// Whether `/proc` shows processes at all (checked once: our own entry).
pub fn available() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        fs::read_to_string("/proc/self/stat").is_ok_and(|s| parse_stat(&s).is_some())
    })
}

// ------------------------------------------------------------ processes --

/// The fields of `/proc/PID/stat` relaunch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Start time in clock ticks since boot: with the pid, a process's identity.
    pub start: u64,
}

impl Stat {
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `pid (comm) S ppid pgrp …`; comm may hold spaces and parentheses, so split
/// at the last ')'. The start time is field 22.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    // The start time is the 20th field after the ')'.
    let start = it.nth(16)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        start,
    })
}

/// `/proc/PID/stat`; None when the process is gone (or /proc is not there).
pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every pid in /proc.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The processes whose process group is one of `pgids`, zombies included
/// (one nobody reaps keeps its group alive), in pid order: one pass over
/// /proc for all the groups.
pub fn group_members(pgids: &[i32]) -> Vec<i32> {
    if pgids.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<i32> = pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| pgids.contains(&s.pgrp)))
        .collect();
    out.sort_unstable();
    out
}

/// Thread ids of a process.
pub fn tasks(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The command line, space-joined; the comm in its place for kernel threads
/// and zombies; "?" when the process is gone.
pub fn cmdline(pid: i32) -> String {
    let cmd = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| join_cmdline(&b))
        .unwrap_or_default();
    if !cmd.is_empty() {
        return cmd;
    }
    comm(pid)
}

/// `/proc/PID/cmdline` is NUL-separated with a trailing NUL.
pub fn join_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| printable(&String::from_utf8_lossy(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The effective uid of a process.
pub fn uid(pid: i32) -> Option<u32> {
    status_uid(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The effective uid from `/proc/PID/status` (`Uid: real effective saved fs`).
pub fn status_uid(status: &str) -> Option<u32> {
    let ids = status_uids(status);
    ids.get(1).or(ids.first()).copied()
}

/// All four uids of `/proc/PID/status` (`Uid: real effective saved fs`).
pub fn status_uids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The environment a process's program was exec'd with, NUL-separated
/// (`/proc/PID/environ`; it needs ptrace-level access). None when unreadable.
pub fn environ(pid: i32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/environ")).ok()
}

/// `NAME=value` entries, NUL-separated; the first one named `name` wins, as
/// getenv(3) does.
pub fn env_lookup(raw: &[u8], name: &str) -> Option<String> {
    raw.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    })
}

/// The thread group (process) a thread id belongs to.
pub fn tgid(tid: i32) -> Option<i32> {
    status_tgid(&fs::read_to_string(format!("/proc/{tid}/status")).ok()?)
}

/// `Tgid:` from `/proc/TID/status`.
pub fn status_tgid(status: &str) -> Option<i32> {
    let line = status.lines().find(|l| l.starts_with("Tgid:"))?;
    line["Tgid:".len()..].trim().parse().ok()
}

/// The command name (`/proc/PID/comm`), "?" when gone.
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| printable(c.strip_suffix('\n').unwrap_or(&c)))
        .unwrap_or_else(|_| "?".into())
}

/// A name a process chose, as logs and answers show it: control
/// characters escaped, so a newline cannot start a forged log line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Whether the fd is close-on-exec, from `/proc/PID/fdinfo/FD` (`flags:`
/// in octal, O_CLOEXEC among them).
pub fn fdinfo_cloexec(fdinfo: &str) -> Option<bool> {
    Some(fdinfo_flags(fdinfo)? & libc::O_CLOEXEC as u32 != 0)
}

/// The open flags in an fdinfo (`flags:`, octal).
pub fn fdinfo_flags(fdinfo: &str) -> Option<u32> {
    let line = fdinfo.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// `/proc/PID/mem` at `addr` (for kernels without process_vm_readv).
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(buf, addr)
}

/// kernel.yama.ptrace_scope ("0" to "3"), when Yama is there.
pub fn ptrace_scope() -> Option<String> {
    let s = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?;
    Some(s.trim().to_string())
}

// ----------------------------------------------------------------- trees --

/// The roots (as given, without duplicates or pids <= 0) plus all their
/// living descendants, parents before children.
pub fn tree(roots: &[i32]) -> Vec<i32> {
    Trees::new().tree(roots)
}

/// Reads the process table once for several [`Trees::tree`] calls.
pub struct Trees {
    /// (pid, ppid) of every living process, when the kernel has no
    /// `/proc/PID/task/TID/children` files.
    parents: Option<Vec<(i32, i32)>>,
}

impl Trees {
    pub fn new() -> Self {
        Trees {
            parents: (!have_children_files()).then(all_parents),
        }
    }

    pub fn tree(&self, roots: &[i32]) -> Vec<i32> {
        match &self.parents {
            Some(parents) => descendants(roots, parents),
            None => tree_from_children_files(roots),
        }
    }
}

/// Whether /proc/PID/task/TID/children exists (CONFIG_PROC_CHILDREN).
fn have_children_files() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| fs::metadata("/proc/thread-self/children").is_ok())
}

fn tree_from_children_files(roots: &[i32]) -> Vec<i32> {
    let mut out = dedup(roots);
    let mut seen: HashSet<i32> = out.iter().copied().collect();
    let mut queue: VecDeque<i32> = out.iter().copied().collect();
    while let Some(pid) = queue.pop_front() {
        for tid in tasks(pid) {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) else {
                continue;
            };
            for child in text.split_ascii_whitespace().filter_map(|s| s.parse().ok()) {
                let alive = stat(child).is_some_and(|s| s.alive());
                if alive && seen.insert(child) {
                    out.push(child);
                    queue.push_back(child);
                }
            }
        }
    }
    out
}

/// (pid, ppid) of every living process.
fn all_parents() -> Vec<(i32, i32)> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let s = stat(pid)?;
            s.alive().then_some((pid, s.ppid))
        })
        .collect()
}

fn dedup(pids: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    for &p in pids {
        // 0 would adopt init and kthreadd, -1 means "everyone" to kill(2).
        if p > 0 && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Roots plus everything below them in the (pid, ppid) list, breadth first.
fn descendants(roots: &[i32], parents: &[(i32, i32)]) -> Vec<i32> {
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    for &(pid, ppid) in parents {
        kids.entry(ppid).or_default().push(pid);
    }
    let mut out = dedup(roots);
    let mut seen: HashSet<i32> = out.iter().copied().collect();
    let mut i = 0;
    while i < out.len() {
        if let Some(children) = kids.get(&out[i]) {
            for &c in children {
                if seen.insert(c) {
                    out.push(c);
                }
            }
        }
        i += 1;
    }
    out
}

/// Where a process's line of parents leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lineage {
    /// It descends from `home` (or is it): the pids from the process up to,
    /// not including, `home`.
    Under(Vec<i32>),
    /// Its parents end at pid 1 (or 0) without passing `home`.
    Outside,
    /// It (or a parent) could not be read or changed under us: gone, reused,
    /// or /proc is not there.
    Unknown,
}

/// Climbs the parents of `pid` (whose stat is `first`) towards `home`.
/// `stat_of` reads a process. A parent must have started no later than its
/// child; one that did not is a reused pid, and the answer is Unknown.
pub fn lineage(
    pid: i32,
    first: Stat,
    home: i32,
    mut stat_of: impl FnMut(i32) -> Option<Stat>,
) -> Lineage {
    let mut chain = Vec::new();
    let (mut cur, mut st) = (pid, first);
    // Bounded: pid_max is at most 2^22, but real trees are shallow.
    for _ in 0..4096 {
        if cur == home {
            return Lineage::Under(chain);
        }
        if cur <= 1 {
            return Lineage::Outside;
        }
        chain.push(cur);
        if st.ppid == home {
            return Lineage::Under(chain);
        }
        if st.ppid <= 1 {
            return Lineage::Outside;
        }
        let Some(parent) = stat_of(st.ppid) else {
            return Lineage::Unknown;
        };
        if parent.start > st.start {
            return Lineage::Unknown;
        }
        (cur, st) = (st.ppid, parent);
    }
    Lineage::Unknown
}

// ------------------------------------------------------------- fd tables --

/// What an fd of a process points at, as far as relaunch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Socket(u64),
    Epoll,
    Uring,
    Other,
}

pub fn classify_link(target: &str) -> Link {
    if let Some(ino) = target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
    {
        return ino.parse().map_or(Link::Other, Link::Socket);
    }
    match target {
        "anon_inode:[eventpoll]" => Link::Epoll,
        "anon_inode:[io_uring]" => Link::Uring,
        _ => Link::Other,
    }
}

/// Every fd of a process and what it points at. Fds that close while we
/// look are skipped. Err when the fd table cannot be read (gone, or EACCES).
pub fn fds(pid: i32) -> io::Result<Vec<(i32, Link)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        out.push((fd, classify_link(&target.to_string_lossy())));
    }
    Ok(out)
}

/// `/proc/PID/fdinfo/FD`.
pub fn fdinfo(pid: i32, fd: i32) -> io::Result<String> {
    fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
}

/// `/proc/PID/task/TID/syscall`.
pub fn syscall(pid: i32, tid: i32) -> io::Result<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
}

// ------------------------------------------------------------- /proc/net --

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_SYN_RECV: u8 = 0x03;
pub const TCP_FIN_WAIT1: u8 = 0x04;
pub const TCP_FIN_WAIT2: u8 = 0x05;
pub const TCP_TIME_WAIT: u8 = 0x06;
pub const TCP_CLOSE_WAIT: u8 = 0x08;
pub const TCP_LAST_ACK: u8 = 0x09;
pub const TCP_CLOSING: u8 = 0x0B;
pub const UDP_BOUND: u8 = 0x07;
pub const TCP_LISTEN: u8 = 0x0A;

/// One line of /proc/net/{tcp,tcp6,udp,udp6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetEntry {
    pub proto: &'static str,
    pub local: SocketAddr,
    /// The peer's address; the unspecified address with port 0 for a
    /// listener or an unconnected socket.
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
    /// Of a TCP LISTEN socket: the connections waiting to be accepted.
    pub rx_queue: u32,
    /// Of a TCP LISTEN socket: its backlog, from sock_diag only
    /// (/proc/net/tcp shows 0 there).
    pub tx_queue: u32,
}

/// Reads /proc/net tables ("tcp", "tcp6", …); a missing one (IPv6 disabled)
/// reads as empty.
pub fn inet_table(protos: &[&'static str]) -> io::Result<Vec<InetEntry>> {
    let mut out = Vec::new();
    for proto in protos {
        out.extend(parse_inet_table(&read_net(proto)?, proto));
    }
    Ok(out)
}

/// Parses a /proc/net/{tcp,udp}[6] table; lines that do not parse are skipped
/// (the format is the kernel's, a bad line means a format we do not know).
pub fn parse_inet_table(text: &str, proto: &'static str) -> Vec<InetEntry> {
    text.lines()
        .skip(1)
        .filter_map(|l| parse_inet_line(l, proto))
        .collect()
}

fn parse_inet_line(line: &str, proto: &'static str) -> Option<InetEntry> {
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let local = parse_hex_sockaddr(f[1])?;
    let remote = parse_hex_sockaddr(f[2])?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let (tx, rx) = f[4].split_once(':')?;
    let inode = f[9].parse().ok()?;
    Some(InetEntry {
        proto,
        local,
        remote,
        state,
        inode,
        rx_queue: u32::from_str_radix(rx, 16).ok()?,
        tx_queue: u32::from_str_radix(tx, 16).ok()?,
    })
}

/// `0100007F:1388` -> 127.0.0.1:5000. The address is the kernel's in-memory
/// bytes printed as 32-bit words in host byte order; the port is plain hex.
pub fn parse_hex_sockaddr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(hex_word(addr)?.to_ne_bytes())),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = hex_word(addr.get(i * 8..i * 8 + 8)?)?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn hex_word(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok()
}

/// TCP sockets in the given states (a mask of `1 << state`), IPv4 and IPv6,
/// from the kernel's sock_diag netlink interface: only the sockets asked
/// for, so no cost for the thousands of TIME_WAIT lines /proc/net/tcp holds
/// under load. Falls back to /proc/net/tcp{,6} where netlink is refused.
pub fn tcp_sockets(states: u32) -> io::Result<Vec<InetEntry>> {
    tcp_sockets_filtered(states, None)
}

/// [`tcp_sockets`] whose local port is one of `ports`, filtered in the
/// kernel: a look at a few ports costs nothing for the other sockets of a
/// busy machine.
pub fn tcp_sockets_on(states: u32, ports: &[u16]) -> io::Result<Vec<InetEntry>> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    tcp_sockets_filtered(states, Some(ports))
}

fn tcp_sockets_filtered(states: u32, ports: Option<&[u16]>) -> io::Result<Vec<InetEntry>> {
    let wanted = |e: &InetEntry| ports.is_none_or(|p| p.contains(&e.local.port()));
    // A filter's lengths are 16-bit: thousands of ports are filtered here.
    let bytecode = ports
        .filter(|p| p.len() <= 1000)
        .map(port_bytecode)
        .unwrap_or_default();
    let found = match sock_diag(states, &bytecode) {
        Err(e) if !bytecode.is_empty() && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!("sock_diag refuses a port filter ({e}); filtering here");
            sock_diag(states, &[])
        }
        found => found,
    };
    match found {
        Ok(v) => Ok(v.into_iter().filter(wanted).collect()),
        Err(e) => {
            tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead");
            Ok(inet_table(&["tcp", "tcp6"])?
                .into_iter()
                .filter(|e| e.state < 32 && states & (1 << e.state) != 0)
                .filter(wanted)
                .collect())
        }
    }
}

/// inet_diag bytecode that keeps a socket whose local port is one of
/// `ports`: per port, "port >= p" and "port <= p", each jumping to the next
/// port's test when false, joined by jumps to the end when true. The kernel
/// checks that every jump lands on an op of the chain the "yes" offsets
/// make (a JMP's "yes" links the next test into it), or just past the end,
/// which rejects.
fn port_bytecode(ports: &[u16]) -> Vec<u8> {
    const JMP: u8 = 1;
    const S_GE: u8 = 2;
    const S_LE: u8 = 3;
    let total = 20 * ports.len() - 4;
    let mut b = Vec::with_capacity(total);
    let op = |b: &mut Vec<u8>, code: u8, yes: u8, no: usize| {
        b.extend([code, yes]);
        b.extend((no as u16).to_ne_bytes());
    };
    for (i, &port) in ports.iter().enumerate() {
        let at = b.len();
        let last = i + 1 == ports.len();
        // Where a mismatch goes: the next port's test, or past the end.
        let fail = if last { total + 4 } else { at + 20 };
        op(&mut b, S_GE, 8, fail - at);
        op(&mut b, 0, 0, usize::from(port));
        op(&mut b, S_LE, 8, fail - (at + 8));
        op(&mut b, 0, 0, usize::from(port));
        if !last {
            let here = b.len();
            op(&mut b, JMP, 4, total - here);
        }
    }
    b
}

/// The accept queue of a listening stream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Connections the kernel completed that nobody accepted yet.
    pub waiting: u32,
    /// How many may wait before the kernel drops (TCP) or refuses (Unix)
    /// more; None where only /proc/net/tcp could be read.
    pub backlog: Option<u32>,
}

/// The accept queues of every listening TCP and Unix stream socket, by
/// inode, from sock_diag. Where netlink is refused, TCP comes from
/// /proc/net/tcp*, which has the waiting connections of a LISTEN line (its
/// rx_queue) but not the backlog; Unix listeners then are missing.
pub fn listen_queues() -> io::Result<HashMap<u64, Queue>> {
    let mut out = HashMap::new();
    let tcp = |e: InetEntry, backlog: Option<u32>| {
        let q = Queue {
            waiting: e.rx_queue,
            backlog,
        };
        (e.inode, q)
    };
    match sock_diag(1 << TCP_LISTEN, &[]) {
        Ok(found) => out.extend(found.into_iter().map(|e| {
            let backlog = Some(e.tx_queue);
            tcp(e, backlog)
        })),
        Err(e) => {
            tracing::debug!("sock_diag: {e}; reading /proc/net/tcp instead, without backlogs");
            let found = inet_table(&["tcp", "tcp6"])?;
            let listening = found.into_iter().filter(|e| e.state == TCP_LISTEN);
            out.extend(listening.map(|e| tcp(e, None)));
        }
    }
    let unix = diag_socket().and_then(|fd| {
        let mut found = Vec::new();
        netlink_dump(
            &fd,
            &unix_request(1 << TCP_LISTEN, UDIAG_SHOW_RQLEN),
            |datagram| {
                parse_netlink(datagram, &mut |body| {
                    found.extend(unix_entry(body).and_then(|(_, s)| Some((s.inode, s.queue?))))
                })
            },
        )?;
        Ok(found)
    });
    match unix {
        Ok(found) => out.extend(found),
        Err(e) => tracing::debug!("unix_diag: {e}; Unix listeners' queues are not shown"),
    }
    Ok(out)
}

fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bytecode`: an inet_diag filter, or empty for every socket.
fn sock_diag(states: u32, bytecode: &[u8]) -> io::Result<Vec<InetEntry>> {
    let fd = diag_socket()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        netlink_dump(&fd, &inet_request(family, states, bytecode), |datagram| {
            parse_diag(datagram, &mut out)
        })?;
    }
    Ok(out)
}

/// Sends one dump request and hands every datagram of the answer to
/// `parse` until it says the dump is done.
fn netlink_dump(fd: &OwnedFd, req: &[u8], mut parse: impl FnMut(&[u8]) -> Diag) -> io::Result<()> {
    // SAFETY: sends our buffer to the kernel (nl_pid 0), length as given.
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: reads into our buffer, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        match parse(&buf[..n as usize]) {
            Diag::More => {}
            Diag::Done => return Ok(()),
            Diag::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// nlmsghdr for a dump request with a body of `body_len` bytes.
fn diag_header(body_len: u32) -> Vec<u8> {
    let len = 16 + body_len;
    let mut b = Vec::with_capacity(len as usize);
    b.extend(len.to_ne_bytes());
    b.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend(((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    b.extend(1u32.to_ne_bytes()); // seq
    b.extend(0u32.to_ne_bytes()); // pid
    b
}

/// INET_DIAG_REQ_BYTECODE: the request attribute holding a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

/// inet_diag_req_v2 for every TCP socket of `family` in `states`, and the
/// `bytecode` filter when there is one.
fn inet_request(family: u8, states: u32, bytecode: &[u8]) -> Vec<u8> {
    let attr = if bytecode.is_empty() {
        0
    } else {
        4 + bytecode.len()
    };
    let mut b = diag_header((56 + attr) as u32);
    b.extend([family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend(states.to_ne_bytes());
    b.resize(16 + 56, 0); // inet_diag_sockid: all zero, no filter
    if attr > 0 {
        b.extend((attr as u16).to_ne_bytes());
        b.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        b.extend(bytecode);
    }
    b
}

/// What unix_diag is asked to add to each socket (linux/unix_diag.h): the
/// file it is bound to (for an accepted socket, its listener's), its peer's
/// inode, the queue lengths (rqueue, wqueue; of a listener: waiting
/// connections and backlog).
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;

/// unix_diag_req for every Unix socket in `states`, with the `show` parts.
fn unix_request(states: u32, show: u32) -> Vec<u8> {
    let mut b = diag_header(24);
    b.extend([libc::AF_UNIX as u8, 0, 0, 0]);
    b.extend(states.to_ne_bytes());
    b.extend(0u32.to_ne_bytes()); // inode: any
    b.extend(show.to_ne_bytes());
    b.extend([0xffu8; 8]); // cookie: none
    b
}

/// One Unix stream socket as unix_diag tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixStream {
    /// Its socket inode (what `/proc/PID/fd` shows); 0 for a connection
    /// still in a listener's queue (no fd has it yet).
    pub inode: u64,
    /// `TCP_LISTEN` or `TCP_ESTABLISHED` (of a connected pair's ends).
    pub state: u8,
    /// (st_dev, st_ino) of the file it is bound to: for a listener, its
    /// own; for a connection it accepted, the listener's (the kernel copies
    /// the listener's path into the accepted socket). It stays when the
    /// file is renamed over or removed. None: not bound to a file.
    pub file: Option<(u64, u64)>,
    /// The other end's inode; 0: none.
    pub peer: u64,
    /// Of a listener: its accept queue.
    pub queue: Option<Queue>,
}

/// Every Unix stream socket in `states` (a mask of `1 << state`), from
/// unix_diag. No /proc fallback: /proc/net/unix shows neither queues nor
/// files.
pub fn unix_streams(states: u32) -> io::Result<Vec<UnixStream>> {
    let fd = diag_socket()?;
    let mut found = Vec::new();
    let show = UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
    netlink_dump(&fd, &unix_request(states, show), |datagram| {
        parse_netlink(datagram, &mut |body| {
            found.extend(
                unix_entry(body)
                    .filter(|(kind, _)| *kind == libc::SOCK_STREAM as u8)
                    .map(|(_, s)| s),
            )
        })
    })?;
    Ok(found)
}

/// Pure: a unix_diag_msg and its attributes: (socket type, what it says).
/// None when cut short. Hostile-safe: lengths are checked before every
/// read. The kernel gives the file's device in its own encoding (major <<
/// 20 | minor), which is not stat's.
fn unix_entry(body: &[u8]) -> Option<(u8, UnixStream)> {
    let head = body.get(..16)?;
    let mut s = UnixStream {
        inode: u64::from(u32_at(head, 4)),
        state: head[2],
        file: None,
        peer: 0,
        queue: None,
    };
    let mut attrs = &body[16..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        if len < 4 || len > attrs.len() {
            return None;
        }
        match u16_at(attrs, 2) {
            UNIX_DIAG_VFS if len >= 12 => {
                let (ino, dev) = (u32_at(attrs, 4), u32_at(attrs, 8));
                let dev = libc::makedev(dev >> 20, dev & 0xf_ffff);
                s.file = Some((dev, u64::from(ino)));
            }
            UNIX_DIAG_PEER if len >= 8 => s.peer = u64::from(u32_at(attrs, 4)),
            UNIX_DIAG_RQLEN if len >= 12 => {
                s.queue = Some(Queue {
                    waiting: u32_at(attrs, 4),
                    backlog: Some(u32_at(attrs, 8)),
                })
            }
            _ => {}
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some((head[1], s))
}

#[derive(Debug, PartialEq, Eq)]
enum Diag {
    More,
    Done,
    Error(i32),
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Pure: the netlink messages in one datagram; inet_diag_msg entries go to
/// `out`.
fn parse_diag(buf: &[u8], out: &mut Vec<InetEntry>) -> Diag {
    parse_netlink(buf, &mut |body| out.extend(inet_entry(body)))
}

/// Pure: the netlink messages in one datagram; the body of each diag answer
/// goes to `each`. Hostile-safe: lengths are checked before every read.
fn parse_netlink(mut buf: &[u8], each: &mut impl FnMut(&[u8])) -> Diag {
    while buf.len() >= 16 {
        let len = u32_at(buf, 0) as usize;
        if len < 16 || len > buf.len() {
            return Diag::Error(libc::EBADMSG);
        }
        let (msg, body) = (&buf[..len], &buf[16..len]);
        match u16_at(msg, 4) {
            NLMSG_DONE => return Diag::Done,
            NLMSG_ERROR => {
                let errno = if body.len() >= 4 {
                    -(u32_at(body, 0) as i32)
                } else {
                    libc::EBADMSG
                };
                return if errno == 0 {
                    Diag::Done
                } else {
                    Diag::Error(errno)
                };
            }
            SOCK_DIAG_BY_FAMILY => each(body),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Diag::More
}

/// An inet_diag_msg; None when it is cut short. Its inet_diag_sockid holds
/// the ports (source, destination) at bytes 4..8, then the source and
/// destination addresses, 16 bytes each, at 8..24 and 24..40.
fn inet_entry(body: &[u8]) -> Option<InetEntry> {
    if body.len() < 72 {
        return None;
    }
    let v4 = body[0] == libc::AF_INET as u8;
    let addr = |at: usize, port_at: usize| {
        let port = u16::from_be_bytes([body[port_at], body[port_at + 1]]);
        let ip = if v4 {
            IpAddr::V4(Ipv4Addr::new(
                body[at],
                body[at + 1],
                body[at + 2],
                body[at + 3],
            ))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        SocketAddr::new(ip, port)
    };
    Some(InetEntry {
        proto: if v4 { "tcp" } else { "tcp6" },
        local: addr(8, 4),
        remote: addr(24, 6),
        state: body[1],
        inode: u64::from(u32_at(body, 68)),
        rx_queue: u32_at(body, 56),
        tx_queue: u32_at(body, 60),
    })
}

/// sock_diag's multicast groups of closed TCP sockets (linux/sock_diag.h).
const SKNLGRP_INET_TCP_DESTROY: libc::c_int = 1;
const SKNLGRP_INET6_TCP_DESTROY: libc::c_int = 3;

/// The kernel's notices of closed TCP sockets (sock_diag's destroy groups,
/// Linux 4.6+), only those whose local port is one of ours: a BPF filter
/// on the socket drops the others before they are queued. Nobody waits on
/// it, so a notice wakes nothing; notices pile up in the socket's buffer
/// until [`TcpCloses::any`] reads them.
pub struct TcpCloses {
    fd: OwnedFd,
}

impl TcpCloses {
    pub fn subscribe(ports: &[u16]) -> io::Result<TcpCloses> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The filter first: nothing of other ports may be queued before it.
        let prog = port_filter(ports);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points into `prog`, alive across the call; the kernel copies it.
        let set = |level, name, value: *const libc::c_void, len: usize| unsafe {
            libc::setsockopt(fd.as_raw_fd(), level, name, value, len as libc::socklen_t)
        };
        if set(
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        // Bound, so it has a port id: an unbound one (id 0) looks like the
        // kernel itself to the multicast and is skipped.
        // SAFETY: a zeroed sockaddr_nl of the right size; nl_pid 0 lets the kernel choose.
        let bound = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        let closes = TcpCloses { fd };
        closes.listen(true)?;
        Ok(closes)
    }

    /// Joins or leaves the groups. While someone listens, the kernel builds
    /// a notice at every TCP close in the network namespace (the filter
    /// then drops the others'), so leave while there is nothing to measure.
    pub fn listen(&self, on: bool) -> io::Result<()> {
        let op = if on {
            libc::NETLINK_ADD_MEMBERSHIP
        } else {
            libc::NETLINK_DROP_MEMBERSHIP
        };
        for group in [SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY] {
            // SAFETY: an int option, its size given.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    op,
                    (&group as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Whether a socket whose local address is `ours` closed since the last
    /// call (the kernel filters by port only: another address may share it).
    /// Notices lost to a full buffer (ENOBUFS) count as such a close.
    /// Never blocks.
    pub fn any(&self, ours: impl Fn(SocketAddr) -> bool) -> io::Result<bool> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut any = false;
        loop {
            // SAFETY: reads into our buffer, at most its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(any),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => any = true,
                    _ => return Err(e),
                }
                continue;
            }
            let mut closed = Vec::new();
            parse_diag(&buf[..n as usize], &mut closed);
            any |= closed.iter().any(|e| ours(e.local));
        }
    }
}

/// Classic BPF over a notice (nlmsghdr, then inet_diag_msg whose source
/// port sits at byte 20, big-endian): keep it when the port is one of ours.
fn port_filter(ports: &[u16]) -> Vec<libc::sock_filter> {
    const LD_H_ABS: u16 = 0x28;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = ports.len().min(250);
    let mut prog = vec![op(LD_H_ABS, 0, 0, 20)];
    for (i, &p) in ports[..n].iter().enumerate() {
        // On a match, jump over the remaining tests to "keep".
        prog.push(op(JEQ_K, (n - i) as u8, 0, u32::from(p)));
    }
    prog.push(op(RET_K, 0, 0, 0));
    prog.push(op(RET_K, 0, 0, u32::MAX));
    if ports.len() > n {
        // Too many ports for one-byte jumps: keep everything, `any` checks.
        return vec![op(RET_K, 0, 0, u32::MAX)];
    }
    prog
}

pub const SO_ACCEPTCON: u32 = 0x0001_0000;
pub const SOCK_DGRAM: u16 = 2;
pub const SS_CONNECTED: u8 = 3;

/// One line of /proc/net/unix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixEntry {
    pub flags: u32,
    pub kind: u16,
    pub state: u8,
    pub inode: u64,
    /// None for unnamed sockets; abstract names start with `@`.
    pub path: Option<String>,
}

pub fn unix_table() -> io::Result<Vec<UnixEntry>> {
    Ok(parse_unix_table(&read_net("unix")?))
}

pub fn parse_unix_table(text: &str) -> Vec<UnixEntry> {
    text.lines().skip(1).filter_map(parse_unix_line).collect()
}

fn parse_unix_line(line: &str) -> Option<UnixEntry> {
    // Num: RefCount Protocol Flags Type St Inode [Path]; the path may hold
    // spaces, so take it as everything after the seventh field.
    let mut rest = line.trim_start();
    let mut f = [""; 7];
    for slot in &mut f {
        let end = rest.find(' ').unwrap_or(rest.len());
        *slot = &rest[..end];
        rest = rest[end..].trim_start_matches(' ');
    }
    let path = (!rest.is_empty()).then(|| rest.to_string());
    Some(UnixEntry {
        flags: u32::from_str_radix(f[3], 16).ok()?,
        kind: u16::from_str_radix(f[4], 16).ok()?,
        state: u8::from_str_radix(f[5], 16).ok()?,
        inode: f[6].parse().ok()?,
        path,
    })
}

/// Reads /proc/net/NAME; a missing one (IPv6 disabled) reads as empty.
fn read_net(name: &str) -> io::Result<String> {
    let path = format!("/proc/net/{name}");
    match fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && available() => Ok(String::new()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}"))),
    }
}

// ---------------------------------------------------------------- pidfds --

/// A handle on one process that a reused pid cannot fool.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// pidfd_open(2), Linux 5.3+.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments; on success it returns
        // a new fd that nothing else owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// One the kernel handed us (SCM_PIDFD).
    pub fn from_owned(fd: OwnedFd) -> Self {
        Pidfd(fd)
    }

    /// pidfd_getfd(2), Linux 5.6+: our own copy of the process's fd `fd`
    /// (the same open file). Needs ptrace access to the process.
    pub fn getfd(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; on success it returns a new fd that
        // nothing else owns.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.0.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
    }

    /// pidfd_send_signal(2): signals this process, never a reused pid.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: the fd is valid for our lifetime; no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether the process still exists (running, or a zombie not yet
    /// reaped): then its pid has not been reused, and what /proc showed under
    /// that pid a moment ago was this process.
    pub fn exists(&self) -> bool {
        // SAFETY: signal 0 only checks; the fd is valid for our lifetime.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name a process gives itself cannot forge a log line: a newline
    /// (then `<1>`, journald's priority prefix) is shown escaped.
    #[test]
    fn names_a_process_chose_show_no_control_characters() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: prctl with a NUL-terminated name of this thread.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"x\n<1>forged".as_ptr()) };
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        let name = comm(tid);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(!name.contains('\n'), "{name:?}");
        assert!(name.starts_with("x\\n<1>"), "{name:?}");
        let cmd = join_cmdline(b"python3\0app.py\n<3>ERROR forged\0");
        assert_eq!(cmd, "python3 app.py\\n<3>ERROR forged");
    }

    #[test]
    fn environ_entries() {
        let raw = b"A=1\0LISTEN_PID=42\0LISTEN_PIDX=7\0LISTEN_PID=9\0B\0";
        assert_eq!(env_lookup(raw, "LISTEN_PID").as_deref(), Some("42"));
        assert_eq!(env_lookup(raw, "A").as_deref(), Some("1"));
        assert_eq!(env_lookup(raw, "B"), None);
        assert_eq!(env_lookup(b"", "A"), None);
        assert_eq!(env_lookup(b"A=\xff\0", "A"), None);
    }

    #[test]
    fn stat_lines() {
        let line = |comm: &str, state: &str, ppid: &str| {
            format!(
                "42 ({comm}) {state} {ppid} 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100"
            )
        };
        let s = parse_stat(&line("sh", "S", "7")).unwrap();
        assert_eq!((s.state, s.ppid, s.pgrp, s.start), ('S', 7, 42, 98765));
        // Hostile comms: spaces, parentheses, a fake stat line inside.
        let s = parse_stat(&line("a) (b c) Z 1 1 1", "Z", "1")).unwrap();
        assert_eq!((s.state, s.ppid, s.start), ('Z', 1, 98765));
        assert!(!s.alive());
        assert_eq!(parse_stat("42 (sh"), None);
        assert_eq!(parse_stat(""), None);
        // Cut short before the start time.
        assert_eq!(parse_stat("42 (sh) S 7 42 42 0 -1"), None);
        assert_eq!(parse_stat(&line("x", "S", "seven")), None);
    }

    #[test]
    fn tgid_and_cloexec_lines() {
        assert_eq!(
            status_tgid("Name:\tx\nTgid:\t1234\nPid:\t1240\n"),
            Some(1234)
        );
        assert_eq!(status_tgid("Tgid: x"), None);
        assert_eq!(status_tgid(""), None);
        assert_eq!(fdinfo_cloexec("pos:\t0\nflags:\t02000002\n"), Some(true));
        assert_eq!(fdinfo_cloexec("flags:\t04002\n"), Some(false));
        assert_eq!(fdinfo_cloexec("flags:\t9\n"), None);
        let me = std::process::id() as i32;
        assert_eq!(tgid(me), Some(me));
    }

    #[test]
    fn reads_ourselves() {
        assert!(available());
        let me = stat(std::process::id() as i32).unwrap();
        assert!(me.alive());
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(stat(0), None);
        assert_eq!(stat(-1), None);
    }

    #[test]
    fn links() {
        assert_eq!(classify_link("socket:[7398]"), Link::Socket(7398));
        assert_eq!(classify_link("anon_inode:[eventpoll]"), Link::Epoll);
        assert_eq!(classify_link("anon_inode:[io_uring]"), Link::Uring);
        assert_eq!(classify_link("pipe:[6740]"), Link::Other);
        assert_eq!(classify_link("socket:[x]"), Link::Other);
        assert_eq!(classify_link("/tmp/socket:[1]"), Link::Other);
    }

    #[test]
    fn small_proc_formats() {
        assert_eq!(
            join_cmdline(b"python3\0web_dashboard.py\0"),
            "python3 web_dashboard.py"
        );
        assert_eq!(join_cmdline(b""), "");
        assert_eq!(
            status_uid("Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t0\n"),
            Some(1001)
        );
        assert_eq!(status_uid("Name:\tx\n"), None);
    }

    #[test]
    fn descendants_walk() {
        let parents = [
            (10, 1),
            (11, 10),
            (12, 11),
            (13, 10),
            (20, 1),
            (21, 20),
            (30, 30),
        ];
        assert_eq!(descendants(&[10], &parents), vec![10, 11, 13, 12]);
        assert_eq!(
            descendants(&[10, 10, 20], &parents),
            vec![10, 20, 11, 13, 21, 12]
        );
        assert_eq!(descendants(&[99], &parents), vec![99]);
        assert_eq!(descendants(&[30], &parents), vec![30]); // self-parent: no loop
        assert_eq!(descendants(&[0, -1], &[(1, 0), (2, 0)]), Vec::<i32>::new());
    }

    #[test]
    fn lineages() {
        let st = |ppid, start| Stat {
            state: 'S',
            ppid,
            pgrp: 0,
            start,
        };
        // 12 -> 11 -> 10 (home) ; 5 -> 6 -> 5 a cycle; 40 -> 1.
        let table: HashMap<i32, Stat> = [
            (12, st(11, 30)),
            (11, st(10, 20)),
            (10, st(1, 10)),
            (40, st(1, 5)),
            (5, st(6, 50)),
            (6, st(5, 50)),
            (70, st(71, 10)),
            (71, st(1, 90)), // started after its "child": a reused pid
        ]
        .into();
        let of = |p: i32| table.get(&p).copied();
        let walk = |pid: i32| lineage(pid, table[&pid], 10, of);
        assert_eq!(walk(12), Lineage::Under(vec![12, 11]));
        assert_eq!(walk(11), Lineage::Under(vec![11]));
        assert_eq!(walk(10), Lineage::Under(vec![]));
        assert_eq!(walk(40), Lineage::Outside);
        assert_eq!(walk(5), Lineage::Unknown); // the cycle ends, unproven
        assert_eq!(walk(70), Lineage::Unknown);
        // A parent that vanished mid-walk.
        assert_eq!(
            lineage(99, st(98, 5), 10, |_| None::<Stat>),
            Lineage::Unknown
        );
        // relaunch as PID 1 in a container: everything is under it.
        assert_eq!(lineage(40, st(1, 5), 1, of), Lineage::Under(vec![40]));
    }

    #[test]
    fn sock_diag_sees_what_proc_net_tcp_sees() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        use std::os::fd::AsFd;
        let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let mask = (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN);
        let got = sock_diag(mask, &[]).expect("sock_diag works here");
        let find = |i: u64| got.iter().find(|e| e.inode == i).cloned();
        let listener = find(ino(l.as_fd())).expect("the listener");
        assert_eq!(
            (listener.local, listener.state),
            (l.local_addr().unwrap(), TCP_LISTEN)
        );
        let accepted = find(ino(a.as_fd())).expect("the accepted connection");
        assert_eq!(
            (accepted.local, accepted.remote, accepted.state),
            (
                l.local_addr().unwrap(),
                c.local_addr().unwrap(),
                TCP_ESTABLISHED
            )
        );
        assert_eq!(
            find(ino(c.as_fd())).map(|e| e.local),
            Some(c.local_addr().unwrap())
        );
        // Only the states asked for.
        assert!(got.iter().all(|e| mask & (1 << e.state) != 0));
        // The same through /proc.
        let via_proc = inet_table(&["tcp", "tcp6"]).unwrap();
        assert!(via_proc.iter().any(|e| e.inode == ino(a.as_fd())
            && (e.local, e.remote) == (accepted.local, accepted.remote)));
    }

    #[test]
    fn sock_diag_filters_by_local_port() {
        let ls: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let port = |i: usize| ls[i].local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(ls[1].local_addr().unwrap()).unwrap();
        let (_a, _) = ls[1].accept().unwrap();
        let mask = (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN);
        let ports = |got: Vec<InetEntry>| {
            let mut p: Vec<u16> = got.iter().map(|e| e.local.port()).collect();
            p.sort_unstable();
            p
        };
        // The kernel takes the filter (a refusal would fall back unseen).
        let middle = [port(0), port(1), port(2)].map(|p| p.wrapping_add(1000));
        for (asked, want) in [
            (vec![port(1)], vec![port(1), port(1)]),
            (vec![port(0), port(1)], vec![port(0), port(1), port(1)]),
            (vec![middle[0], port(2), middle[2]], vec![port(2)]),
            (vec![port(0), port(2)], vec![port(0), port(2)]),
        ] {
            let got = sock_diag(mask, &port_bytecode(&asked)).expect("a port filter");
            let theirs: Vec<u16> = ports(got)
                .into_iter()
                .filter(|p| [port(0), port(1), port(2)].contains(p))
                .collect();
            let mut want = want;
            want.sort_unstable();
            assert_eq!(theirs, want, "{asked:?}");
        }
        let got = tcp_sockets_on(mask, &[port(1)]).unwrap();
        assert_eq!(ports(got), vec![port(1), port(1)], "not the client's end");
        assert!(tcp_sockets_on(mask, &[]).unwrap().is_empty());
        drop(c);
    }

    #[test]
    fn accept_queues_of_tcp_and_unix_listeners() {
        use socket2::{Domain, Socket, Type};
        use std::os::fd::AsFd;
        let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        tcp.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        tcp.listen(7).unwrap();
        let addr = tcp.local_addr().unwrap().as_socket().unwrap();
        let dir = std::env::temp_dir().join(format!("relaunch-queue-{}", std::process::id()));
        let _ = fs::create_dir(&dir);
        let path = dir.join("q.sock");
        let _ = fs::remove_file(&path);
        let unix = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        unix.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
        unix.listen(5).unwrap();
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let _unix_clients: Vec<_> = (0..2)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let q = listen_queues().unwrap();
        assert_eq!(
            q.get(&ino(tcp.as_fd())),
            Some(&Queue {
                waiting: 3,
                backlog: Some(7)
            })
        );
        assert_eq!(
            q.get(&ino(unix.as_fd())),
            Some(&Queue {
                waiting: 2,
                backlog: Some(5)
            })
        );
        // /proc/net/tcp has the waiting ones (rx_queue), not the backlog.
        let line = inet_table(&["tcp"])
            .unwrap()
            .into_iter()
            .find(|e| e.inode == ino(tcp.as_fd()))
            .unwrap();
        assert_eq!(line.rx_queue, 3);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Both ends of a connection, from /proc/net/tcp{,6} (the kernel's
    /// address words in host order) and from an inet_diag_msg.
    #[test]
    #[cfg(target_endian = "little")]
    fn connection_ends_parse() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue
   0: 0100007F:1388 0200007F:D431 03 00000000:00000000 02:00000123 00000002     0        0 0 0 0000000000000000
   1: 0100007F:1388 0100007F:D432 01 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1388 zz:D432 01 00000000:00000000 00:00000000 00000000  1000        0 41241 1 0000000000000000 20 4 30 10 -1
";
        let e = parse_inet_table(tcp, "tcp");
        assert_eq!(e.len(), 2, "a remote address that does not parse: skipped");
        assert_eq!(
            (e[0].local, e[0].remote, e[0].state),
            (
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.2:54321".parse().unwrap(),
                TCP_SYN_RECV
            )
        );
        assert_eq!(e[1].remote, "127.0.0.1:54322".parse().unwrap());
        let tcp6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1388 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 7 1 0000000000000000
";
        let e = parse_inet_table(tcp6, "tcp6");
        assert_eq!(
            (e[0].local, e[0].remote),
            (
                "[::1]:5000".parse().unwrap(),
                "[::ffff:127.0.0.1]:54321".parse().unwrap()
            )
        );

        // inet_diag_msg: family state timer retrans, sport dport (big
        // endian), src, dst (16 bytes each), if, cookie, expires, rqueue,
        // wqueue, uid, inode.
        let msg = |family: i32, src: &[u8], dst: &[u8]| {
            let mut m = vec![family as u8, TCP_SYN_RECV, 0, 0];
            m.extend(5000u16.to_be_bytes());
            m.extend(54321u16.to_be_bytes());
            m.extend(src);
            m.resize(24, 0);
            m.extend(dst);
            m.resize(56, 0);
            m.extend(3u32.to_ne_bytes());
            m.extend(9u32.to_ne_bytes());
            m.extend(0u32.to_ne_bytes());
            m.extend(41234u32.to_ne_bytes());
            m
        };
        let v4 = inet_entry(&msg(libc::AF_INET, &[127, 0, 0, 1], &[10, 1, 2, 3])).unwrap();
        assert_eq!(
            v4,
            InetEntry {
                proto: "tcp",
                local: "127.0.0.1:5000".parse().unwrap(),
                remote: "10.1.2.3:54321".parse().unwrap(),
                state: TCP_SYN_RECV,
                inode: 41234,
                rx_queue: 3,
                tx_queue: 9,
            }
        );
        let one: Ipv6Addr = "::1".parse().unwrap();
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        let v6 = inet_entry(&msg(libc::AF_INET6, &one.octets(), &mapped.octets())).unwrap();
        assert_eq!(
            (v6.proto, v6.local, v6.remote),
            (
                "tcp6",
                "[::1]:5000".parse().unwrap(),
                "[::ffff:10.1.2.3]:54321".parse().unwrap()
            )
        );
        assert_eq!(inet_entry(&msg(libc::AF_INET, &[1], &[2])[..71]), None);
    }

    /// What unix_diag tells of each end of a Unix stream connection, and
    /// of one still queued, measured.
    #[test]
    fn unix_diag_tells_each_socket_its_listeners_file_and_its_peer() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::net::{UnixListener, UnixStream};
        let ino = |fd: &dyn AsFd| nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino;
        let dir = std::env::temp_dir().join(format!("relaunch-udiag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let l = UnixListener::bind(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let file = Some((m.dev(), m.ino()));
        let client = UnixStream::connect(&path).unwrap();
        let waiting = UnixStream::connect(&path).unwrap();
        let (server, _) = l.accept().unwrap();
        // Removed: what was bound keeps its file.
        std::fs::remove_file(&path).unwrap();
        let all = unix_streams(!0).unwrap();
        let find = |inode: u64| *all.iter().find(|s| s.inode == inode).unwrap();
        let lst = find(ino(&l));
        let queued = lst.queue.map(|q| q.waiting);
        assert_eq!((lst.state, queued, lst.file), (TCP_LISTEN, Some(1), file));
        let srv = find(ino(&server));
        assert_eq!(
            (srv.state, srv.file, srv.peer),
            (TCP_ESTABLISHED, file, ino(&client))
        );
        let cli = find(ino(&client));
        assert_eq!(
            (cli.file, cli.peer),
            (None, ino(&server)),
            "a client is bound to no file"
        );
        // A queued connection's server end has no inode until accepted:
        // its client's peer reads 0, and the dump does not list it. Only
        // the listener's count (above) shows it.
        assert_eq!(find(ino(&waiting)).peer, 0);
        assert!(!all.iter().any(|s| s.peer == ino(&waiting)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sock_diag_replies_parse_defensively() {
        let mut out = Vec::new();
        assert_eq!(parse_diag(&[], &mut out), Diag::More);
        // A length beyond the buffer.
        let mut bad = 100u32.to_ne_bytes().to_vec();
        bad.extend([0u8; 12]);
        assert_eq!(parse_diag(&bad, &mut out), Diag::Error(libc::EBADMSG));
        let mut done = 16u32.to_ne_bytes().to_vec();
        done.extend(NLMSG_DONE.to_ne_bytes());
        done.extend([0u8; 10]);
        assert_eq!(parse_diag(&done, &mut out), Diag::Done);
        // A diag message cut short is skipped, not read past its end.
        let mut short = 20u32.to_ne_bytes().to_vec();
        short.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        short.extend([0u8; 14]);
        assert_eq!(parse_diag(&short, &mut out), Diag::More);
        assert!(out.is_empty());
        // unix_diag answers: cut short, an attribute past the end, no RQLEN.
        let queue = |b: &[u8]| unix_entry(b).map(|(_, s)| (s.inode, s.queue));
        assert_eq!(queue(&[0u8; 8]), None);
        let mut msg = vec![0u8; 16];
        msg[4..8].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(queue(&msg), Some((77, None)));
        let mut long = msg.clone();
        long.extend(200u16.to_ne_bytes());
        long.extend(UNIX_DIAG_RQLEN.to_ne_bytes());
        assert_eq!(queue(&long), None);
        let mut good = msg.clone();
        good.extend(8u16.to_ne_bytes()); // another attribute first
        good.extend(1u16.to_ne_bytes());
        good.extend([0u8; 4]);
        good.extend(12u16.to_ne_bytes());
        good.extend(UNIX_DIAG_RQLEN.to_ne_bytes());
        good.extend(3u32.to_ne_bytes());
        good.extend(128u32.to_ne_bytes());
        let q = Queue {
            waiting: 3,
            backlog: Some(128),
        };
        assert_eq!(queue(&good), Some((77, Some(q))));
    }

    #[test]
    fn tcp_closes_on_our_ports_only() {
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = ours.local_addr().unwrap().port();
        let closes = TcpCloses::subscribe(&[port]).expect("sock_diag destroy groups");
        assert!(!closes.any(|a| a.port() == port).unwrap());
        let open_close = |l: &std::net::TcpListener| {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            drop((c, a));
        };
        open_close(&other);
        // Notices are sent from a kernel work queue: give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !closes.any(|a| a.port() == port).unwrap(),
            "another port's close is filtered out"
        );
        open_close(&ours);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !closes.any(|a| a.port() == port).unwrap() {
            assert!(std::time::Instant::now() < end, "no notice of our close");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Both ends closed; the client's end has another local port.
        assert!(!closes.any(|a| a.port() == port).unwrap(), "read once");
        closes.listen(false).unwrap();
        open_close(&ours);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!closes.any(|a| a.port() == port).unwrap(), "not listening");
        closes.listen(true).unwrap();
        open_close(&ours);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !closes.any(|a| a.port() == port).unwrap() {
            assert!(std::time::Instant::now() < end, "listening again");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn port_filters() {
        let p = port_filter(&[80, 443]);
        assert_eq!(p.len(), 5);
        // ld, jeq 80 (jump 2 on match), jeq 443 (jump 1), drop, keep.
        assert_eq!((p[1].jt, p[1].k), (2, 80));
        assert_eq!((p[2].jt, p[2].k), (1, 443));
        assert_eq!((p[3].k, p[4].k), (0, u32::MAX));
        assert_eq!(
            port_filter(&vec![1; 300]).len(),
            1,
            "keep all, checked later"
        );
    }

    #[test]
    fn members_of_several_groups_in_one_pass() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        let lead = |cmd: &str, group: i32| {
            let mut c = Command::new(cmd);
            c.arg("30").process_group(group);
            c.spawn().unwrap()
        };
        let mut a = lead("sleep", 0);
        let ga = a.id() as i32;
        let mut a2 = lead("sleep", ga);
        // A zombie still holds its group.
        let mut dead = lead("true", ga);
        let mut b = lead("sleep", 0);
        let gb = b.id() as i32;
        let mut other = lead("sleep", 0);
        let dead_pid = dead.id() as i32;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stat(dead_pid).is_some_and(|s| s.alive()) {
            assert!(std::time::Instant::now() < end, "{dead_pid} does not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut want = vec![ga, a2.id() as i32, dead_pid, gb];
        want.sort_unstable();
        assert_eq!(group_members(&[ga, gb]), want);
        assert_eq!(group_members(&[gb]), vec![gb]);
        assert_eq!(group_members(&[]), Vec::<i32>::new());
        for c in [&mut a, &mut a2, &mut b, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        dead.wait().unwrap();
        assert_eq!(group_members(&[ga, gb]), Vec::<i32>::new());
    }

    #[test]
    fn pidfds_tell_a_live_process_from_a_reaped_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id() as i32).unwrap();
        assert!(fd.exists());
        child.kill().unwrap();
        // A zombie still exists: its pid cannot be reused yet.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(fd.exists());
        child.wait().unwrap();
        assert!(!fd.exists());
    }
}
