//! Whether a draining generation is idle: nothing waits in its members'
//! accept queues, none of its processes holds a TCP connection on a held
//! port, and no handshake that was under way at the switch is still pending
//! (it completes on the member its SYN was steered to). Read from outside,
//! without accepting anything: one sock_diag dump of the held ports
//! (`proc::tcp_sockets_on`) and the fd tables of the generation's
//! processes. Blocking: run it on a helper thread.
//!
//! A Unix stream listener's generation is measured the same way
//! ([`Watch::unix`]): its queue, and the connections its processes hold
//! that it accepted, told from the next generation's by the file they are
//! bound to (unix_diag gives each accepted socket its listener's file).
//!
//! The dump is not a snapshot: listeners are dumped before connections, and
//! IPv4 before IPv6. A handshake that completes between the two parts is in
//! no accept queue the dump saw, but shows as an ESTABLISHED socket with no
//! inode (an fd gets one at accept), so such a socket of a recorded
//! handshake still counts as pending. Ends are compared unmapped: the
//! kernel lists a dual-stack member's IPv4 handshakes and connections alike
//! by v4-mapped addresses, and nothing here depends on that staying so.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;

use crate::proc::{self, InetEntry, Link};

/// Every TCP state but TIME_WAIT (no fd, and thousands of them under load).
const STATES: u32 = ((1 << 12) - 2) & !(1 << proc::TCP_TIME_WAIT);

/// A Unix stream socket listens or is connected (also once its peer is
/// gone, until it is closed).
const UNIX_STATES: u32 = (1 << proc::TCP_LISTEN) | (1 << proc::TCP_ESTABLISHED);

/// What keeps a draining generation busy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Busy {
    /// Connections waiting in its members' accept queues.
    pub queued: u32,
    /// TCP connections on the held ports, and Unix connections its Unix
    /// listeners accepted, that its processes hold (by socket inode in
    /// their fds).
    pub open: u32,
    /// Handshakes (SYN_RECV) on the held ports seen at the first look and
    /// still pending: not finished, or finished and not yet accepted.
    pub handshakes: u32,
}

/// "3 open connection(s), 1 queued" (what is not zero), or "idle".
impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.open > 0 {
            parts.push(format!("{} open connection(s)", self.open));
        }
        if self.queued > 0 {
            parts.push(format!("{} queued", self.queued));
        }
        if self.handshakes > 0 {
            parts.push(format!("{} handshake(s) under way", self.handshakes));
        }
        match parts.is_empty() {
            true => f.write_str("idle"),
            false => f.write_str(&parts.join(", ")),
        }
    }
}

impl Busy {
    pub fn idle(&self) -> bool {
        *self == Busy::default()
    }
}

/// A connection by its two ends, IPv4-mapped addresses unmapped.
type Tuple = (SocketAddr, SocketAddr);

/// Watches one draining generation across looks.
pub struct Watch {
    ports: Vec<u16>,
    members: Vec<u64>,
    /// The handshakes seen at the first look and pending at the last; None
    /// before the first look.
    pending: Option<HashSet<Tuple>>,
    /// Its Unix stream listeners' socket inodes.
    unix: Vec<u64>,
    /// The connections the last look counted open, by socket inode.
    open: HashSet<u64>,
    /// [`Watch::end_reads`] said that some connections are out of its reach.
    said_unreachable: bool,
}

impl Watch {
    /// `ports`: the held TCP ports; `members`: the inodes of the old
    /// generation's listening sockets.
    pub fn new(ports: Vec<u16>, members: Vec<u64>) -> Watch {
        Watch {
            ports,
            members,
            pending: None,
            unix: Vec::new(),
            open: HashSet::new(),
            said_unreachable: false,
        }
    }

    /// Measures the old generation's Unix stream listeners too, by their
    /// socket inodes.
    pub fn unix(mut self, listeners: Vec<u64>) -> Watch {
        self.unix = listeners;
        self
    }

    /// One look. `pids`: every process of the old generation now. The first
    /// look records the handshakes on the ports; later ones count those
    /// still pending (newer ones were steered to the new generation). A pid
    /// that is gone, or a zombie, holds nothing; one whose fds cannot be
    /// read is an error, as the connections it may hold are unknown.
    pub fn look(&mut self, pids: &[i32]) -> io::Result<Busy> {
        self.measure(pids, false)
    }

    /// A look after which every connection it counted open stops reading
    /// (`shutdown(SHUT_RD)` on a copy of the process's fd, pidfd_getfd):
    /// the server answers what it has read, and its next read finds the end
    /// of the stream, as if the client had closed; a blocked read or poll
    /// wakes at once. Its writes still go out. Where a copy cannot be taken
    /// (Linux before 5.6, no ptrace access), that connection is left as it
    /// is, and the stop cuts it.
    pub fn end_reads(&mut self, pids: &[i32]) -> io::Result<Busy> {
        self.measure(pids, true)
    }

    fn measure(&mut self, pids: &[i32], end: bool) -> io::Result<Busy> {
        // The dump before the fds: a connection accepted in between was in
        // the dump's accept queue; one closed in between is gone from the fds.
        let tcp = proc::tcp_sockets_on(STATES, &self.ports)?;
        let unix = match self.unix.is_empty() {
            true => Vec::new(),
            false => proc::unix_streams(UNIX_STATES)?,
        };
        let fds = held_sockets(pids)?;
        let held: HashSet<u64> = fds.keys().copied().collect();
        let busy = self.count(&tcp, &held);
        let (queued, open) = self.count_unix(&unix, &held);
        if end {
            let mut unreachable = (0, None);
            for inode in &self.open {
                if let Some(&(pid, fd)) = fds.get(inode)
                    && let Err(e) = end_read(pid, fd, *inode)
                    // Gone meanwhile: nothing to end.
                    && proc::stat(pid).is_some_and(|s| s.alive())
                {
                    unreachable = (unreachable.0 + 1, Some(e));
                }
            }
            if let (n, Some(e)) = unreachable
                && !std::mem::replace(&mut self.said_unreachable, true)
            {
                tracing::warn!(
                    "{n} connection(s) of the old generation cannot be made to stop reading \
                     ({e}): they are cut when it is stopped; relaunch needs to take a copy of \
                     their fds (pidfd_getfd: Linux 5.6 or later, and ptrace access to the app: \
                     root, or the app's uid with kernel.yama.ptrace_scope at 0 or 1)"
                );
            }
        }
        Ok(Busy {
            queued: busy.queued.saturating_add(queued),
            open: busy.open.saturating_add(open),
            ..busy
        })
    }

    /// Pure: (queued, open) of the Unix listeners in the dump `unix`. A
    /// connection still queued has no inode (no fd has it yet): counted in
    /// its listener's queue only. One accepted is bound to its listener's
    /// file, which no rename or unlink changes: told by the file the same
    /// dump gives the listener (unix_diag's 32-bit inode, never compared
    /// with a `stat`).
    fn count_unix(&mut self, unix: &[proc::UnixStream], held: &HashSet<u64>) -> (u32, u32) {
        let queued = unix
            .iter()
            .filter(|s| s.state == proc::TCP_LISTEN && self.unix.contains(&s.inode))
            .filter_map(|s| s.queue)
            .map(|q| q.waiting)
            .fold(0u32, u32::saturating_add);
        let files: Vec<(u64, u64)> = unix
            .iter()
            .filter(|s| s.state == proc::TCP_LISTEN && self.unix.contains(&s.inode))
            .filter_map(|s| s.file)
            .collect();
        let open: Vec<u64> = unix
            .iter()
            .filter(|s| s.state != proc::TCP_LISTEN && s.inode != 0 && held.contains(&s.inode))
            .filter(|s| s.file.is_some_and(|f| files.contains(&f)))
            .map(|s| s.inode)
            .collect();
        let n = open.len() as u32;
        self.open.extend(open);
        (queued, n)
    }

    /// Pure: the dump `tcp` against the socket inodes `held` in the fds.
    fn count(&mut self, tcp: &[InetEntry], held: &HashSet<u64>) -> Busy {
        // Where the members listen: a connection to another address of the
        // port (another listener's, on a specific address) is not theirs.
        let at: Vec<SocketAddr> = tcp
            .iter()
            .filter(|e| e.state == proc::TCP_LISTEN && self.members.contains(&e.inode))
            .map(|e| e.local)
            .collect();
        let reaches = |l: &SocketAddr, to: &SocketAddr| {
            l.port() == to.port()
                && (l.ip().is_unspecified() || l.ip().to_canonical() == to.ip().to_canonical())
        };
        let ours = |e: &&InetEntry| match at.is_empty() {
            true => self.ports.contains(&e.local.port()),
            false => at.iter().any(|l| reaches(l, &e.local)),
        };
        let mut listeners = HashSet::new();
        let queued = tcp
            .iter()
            .filter(|e| e.state == proc::TCP_LISTEN && self.members.contains(&e.inode))
            .filter(|e| listeners.insert(e.inode))
            .map(|e| e.rx_queue)
            .fold(0u32, u32::saturating_add);
        let connections: HashSet<u64> = tcp
            .iter()
            .filter(ours)
            .filter(|e| !matches!(e.state, proc::TCP_LISTEN | proc::TCP_SYN_RECV))
            .filter(|e| e.inode != 0 && held.contains(&e.inode))
            .map(|e| e.inode)
            .collect();
        let handshaking = tcp.iter().filter(ours).filter(|e| {
            let waiting = matches!(e.state, proc::TCP_ESTABLISHED | proc::TCP_CLOSE_WAIT);
            e.state == proc::TCP_SYN_RECV || (waiting && e.inode == 0)
        });
        let still: HashSet<Tuple> = handshaking.map(tuple).collect();
        let pending = match self.pending.take() {
            // Only handshakes: a completed connection seen first is in a
            // queue (counted there) or in an fd.
            None => tcp
                .iter()
                .filter(ours)
                .filter(|e| e.state == proc::TCP_SYN_RECV)
                .map(tuple)
                .collect(),
            Some(mut seen) => {
                seen.retain(|t| still.contains(t));
                seen
            }
        };
        let busy = Busy {
            queued,
            open: connections.len() as u32,
            handshakes: pending.len() as u32,
        };
        self.pending = Some(pending);
        self.open = connections;
        busy
    }
}

fn tuple(e: &InetEntry) -> Tuple {
    let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    (plain(e.local), plain(e.remote))
}

/// Shuts the read side of fd `fd` of `pid`, if it is still the socket
/// `inode`.
fn end_read(pid: i32, fd: i32, inode: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let copy = proc::Pidfd::open(pid)?.getfd(fd)?;
    if nix::sys::stat::fstat(&copy)?.st_ino != inode {
        return Ok(());
    }
    // SAFETY: shutdown on our own copy; the socket is the process's too.
    if unsafe { libc::shutdown(copy.as_raw_fd(), libc::SHUT_RD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The sockets in the fds of `pids`, by inode, each with one (pid, fd)
/// holding it; a process gone (or a zombie, which holds no fds) is skipped.
pub fn held_sockets(pids: &[i32]) -> io::Result<HashMap<u64, (i32, i32)>> {
    let mut out = HashMap::new();
    for &pid in pids {
        match proc::fds(pid) {
            Ok(fds) => out.extend(fds.into_iter().filter_map(|(fd, link)| match link {
                Link::Socket(inode) => Some((inode, (pid, fd))),
                _ => None,
            })),
            Err(_) if !proc::stat(pid).is_some_and(|s| s.alive()) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read the fds of pid {pid} to see its connections: {e}"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::io::Write;
    use std::net::TcpStream;
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_secs(5);

    fn me() -> Vec<i32> {
        vec![std::process::id() as i32]
    }

    fn inode(fd: &impl AsFd) -> u64 {
        nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino
    }

    /// A listener on a free port of `ip` and its watch.
    fn listener(ip: &str, defer_accept: bool) -> (Socket, SocketAddr, Watch) {
        let at = SocketAddr::new(ip.parse().unwrap(), 0);
        let l = Socket::new(Domain::for_address(at), Type::STREAM, None).unwrap();
        if at.is_ipv6() {
            l.set_only_v6(false).unwrap();
        }
        l.bind(&at.into()).unwrap();
        if defer_accept {
            // Holds a handshake in SYN_RECV until the client sends data.
            let secs: libc::c_int = 10;
            // SAFETY: an int option, from a local, on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    l.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&secs as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        }
        l.listen(1024).unwrap();
        let mut addr = l.local_addr().unwrap().as_socket().unwrap();
        if addr.ip().is_unspecified() {
            // Dual-stack: IPv4 clients.
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let watch = Watch::new(vec![addr.port()], vec![inode(&l)]);
        (l, addr, watch)
    }

    /// Looks until `done` holds, under a deadline.
    fn look_until(w: &mut Watch, pids: &[i32], done: impl Fn(&Busy) -> bool) -> Busy {
        let end = Instant::now() + WAIT;
        loop {
            let b = w.look(pids).unwrap();
            if done(&b) {
                return b;
            }
            assert!(Instant::now() < end, "still {b:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SYN_RECV sockets on `port`, as the kernel lists them.
    fn syn_recv(port: u16) -> usize {
        proc::tcp_sockets(1 << proc::TCP_SYN_RECV)
            .unwrap()
            .iter()
            .filter(|e| e.local.port() == port)
            .count()
    }

    /// At the drain timeout: each connection the generation holds reads
    /// the end of its stream once it has read what came (a server in a
    /// blocked read wakes with it), while its answers still go out; the
    /// listener and what waits in its queue are left alone.
    #[test]
    fn ended_reads_let_a_server_answer_what_it_has_then_see_its_client_gone() {
        use std::io::Read;
        let (l, addr, mut w) = listener("127.0.0.1", false);
        let mut clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect_timeout(&addr, WAIT).unwrap())
            .collect();
        let mut served: Vec<Socket> = (0..2).map(|_| l.accept().unwrap().0).collect();
        clients[0].write_all(b"GET /").unwrap();
        // A server blocked reading the idle one wakes when its read ends.
        let mut idle = served.pop().unwrap();
        let blocked = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let n = idle.read(&mut buf);
            (n.map_err(|e| e.to_string()), idle)
        });
        let b = look_until(&mut w, &me(), |b| b.open == 2 && b.queued == 1);
        assert_eq!((b.open, b.queued), (2, 1));
        let b = w.end_reads(&me()).unwrap();
        assert_eq!((b.open, b.queued), (2, 1));
        let (n, _idle) = blocked.join().unwrap();
        assert_eq!(n, Ok(0), "the blocked read sees the end");
        // What had come is read first, then the end; the answer goes out.
        let mut buf = [0u8; 16];
        let got = served[0].read(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"GET /");
        assert_eq!(served[0].read(&mut buf).unwrap(), 0);
        served[0].write_all(b"200").unwrap();
        let mut answer = [0u8; 3];
        clients[0].read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"200");
        // The queued one is untouched: accepted later, it reads as usual.
        let (mut third, _) = l.accept().unwrap();
        clients[2].write_all(b"x").unwrap();
        assert_eq!(third.read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn queued_and_accepted_connections_count_for_the_processes_holding_them() {
        let (l, addr, mut w) = listener("127.0.0.1", false);
        let _clients: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect_timeout(&addr, WAIT).unwrap())
            .collect();
        let b = look_until(&mut w, &me(), |b| b.queued == 3);
        assert_eq!(
            b,
            Busy {
                queued: 3,
                open: 0,
                handshakes: 0
            }
        );
        assert!(!b.idle());
        let accepted: Vec<Socket> = (0..2).map(|_| l.accept().unwrap().0).collect();
        let b = w.look(&me()).unwrap();
        assert_eq!(
            b,
            Busy {
                queued: 1,
                open: 2,
                handshakes: 0
            }
        );
        // Another process holds none of them; one gone, or no pid at all,
        // holds nothing either.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let others = [other.id() as i32, gone.id() as i32, 0, -1];
        let b = w.look(&others).unwrap();
        assert_eq!(
            b,
            Busy {
                queued: 1,
                open: 0,
                handshakes: 0
            }
        );
        let mut both = others.to_vec();
        both.extend(me());
        assert_eq!(w.look(&both).unwrap().open, 2, "each socket once");
        drop(accepted);
        let last = l.accept().unwrap().0;
        let b = w.look(&me()).unwrap();
        assert_eq!(
            b,
            Busy {
                queued: 0,
                open: 1,
                handshakes: 0
            }
        );
        drop(last);
        assert!(w.look(&me()).unwrap().idle());
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_zombie_holds_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let end = Instant::now() + WAIT;
        while proc::stat(pid).is_some_and(|s| s.alive()) {
            assert!(Instant::now() < end, "{pid} does not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut w = Watch::new(vec![1], vec![]);
        assert_eq!(w.look(&[pid]).unwrap(), Busy::default());
        child.wait().unwrap();
    }

    #[test]
    fn handshakes_under_way_at_the_first_look_count_until_accepted() {
        handshakes_until_accepted("127.0.0.1");
    }

    /// IPv4 handshakes to a dual-stack member (listed by v4-mapped ends).
    #[test]
    fn handshakes_to_a_dual_stack_member_count_until_accepted() {
        handshakes_until_accepted("::");
    }

    fn handshakes_until_accepted(ip: &str) {
        let (l, addr, mut w) = listener(ip, true);
        let mut early = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let end = Instant::now() + WAIT;
        while syn_recv(addr.port()) < 1 {
            assert!(Instant::now() < end, "no SYN_RECV");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            w.look(&me()).unwrap(),
            Busy {
                queued: 0,
                open: 0,
                handshakes: 1
            }
        );
        // One begun after the first look went to the new generation.
        let mut late = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let end = Instant::now() + WAIT;
        while syn_recv(addr.port()) < 2 {
            assert!(Instant::now() < end, "no second SYN_RECV");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(w.look(&me()).unwrap().handshakes, 1);
        // Complete: still pending while it waits to be accepted.
        early.write_all(b"x").unwrap();
        let b = look_until(&mut w, &me(), |b| b.queued == 1);
        assert_eq!(
            b,
            Busy {
                queued: 1,
                open: 0,
                handshakes: 1
            }
        );
        let (a, _) = l.accept().unwrap();
        assert_eq!(syn_recv(addr.port()), 1, "the late one is still there");
        assert_eq!(
            w.look(&me()).unwrap(),
            Busy {
                queued: 0,
                open: 1,
                handshakes: 0
            }
        );
        drop(a);
        assert!(w.look(&me()).unwrap().idle(), "the late one is not counted");
        // Neither when it completes later.
        late.write_all(b"x").unwrap();
        let b = look_until(&mut w, &me(), |b| b.queued == 1);
        assert_eq!(b.handshakes, 0);
    }

    /// A handshake that completes between the dump of the listeners and
    /// that of the connections is in no queue the dump saw.
    #[test]
    fn a_handshake_completed_mid_dump_still_counts() {
        let e = |state, inode, rx_queue, local: &str, remote: &str| InetEntry {
            proto: "tcp",
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode,
            rx_queue,
            tx_queue: 0,
        };
        let listen = |q| e(proc::TCP_LISTEN, 7, q, "0.0.0.0:80", "0.0.0.0:0");
        let mut w = Watch::new(vec![80], vec![7]);
        let first = [
            listen(0),
            e(proc::TCP_SYN_RECV, 0, 0, "127.0.0.1:80", "127.0.0.1:5000"),
            e(proc::TCP_SYN_RECV, 0, 0, "127.0.0.1:81", "127.0.0.1:5001"),
        ];
        let none = HashSet::new();
        assert_eq!(w.count(&first, &none).handshakes, 1, "port 81 is not held");
        // Completed, no fd yet; the same ends in v4-mapped form.
        let mid = [
            listen(0),
            e(
                proc::TCP_ESTABLISHED,
                0,
                0,
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.1]:5000",
            ),
        ];
        assert_eq!(
            w.count(&mid, &none),
            Busy {
                queued: 0,
                open: 0,
                handshakes: 1
            }
        );
        let accepted = [
            listen(0),
            e(
                proc::TCP_ESTABLISHED,
                9,
                0,
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.1]:5000",
            ),
        ];
        let held: HashSet<u64> = [9].into();
        assert_eq!(
            w.count(&accepted, &held),
            Busy {
                queued: 0,
                open: 1,
                handshakes: 0
            }
        );
        // Done once gone: the same ends again later are a new connection.
        assert_eq!(w.count(&mid, &none).handshakes, 0);
        let closing = [e(
            proc::TCP_FIN_WAIT1,
            0,
            0,
            "127.0.0.1:80",
            "127.0.0.1:5002",
        )];
        assert!(w.count(&closing, &none).idle(), "closed by its process");
    }

    /// A Unix listener replaced at its name by a rename: the old one's
    /// queue and the connections it accepted count, the new one's do not,
    /// though both have the same name and the same process holds them.
    #[test]
    fn a_renamed_over_unix_listener_counts_its_queue_and_its_connections() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("relaunch-drain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let old = UnixListener::bind(&path).unwrap();
        let mut w = Watch::new(vec![], vec![]).unix(vec![inode(&old)]);
        let queued: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let temp = dir.join(".app.sock.relaunch-2");
        let new = UnixListener::bind(&temp).unwrap();
        std::fs::rename(&temp, &path).unwrap();
        let _late: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let b = w.look(&me()).unwrap();
        assert_eq!(
            b,
            Busy {
                queued: 3,
                open: 0,
                handshakes: 0
            },
            "the clients' own sockets (this process holds them too) are not counted"
        );
        let first = old.accept().unwrap().0;
        let second = old.accept().unwrap().0;
        let theirs: Vec<_> = (0..2).map(|_| new.accept().unwrap().0).collect();
        assert_eq!(
            w.look(&me()).unwrap(),
            Busy {
                queued: 1,
                open: 2,
                handshakes: 0
            }
        );
        // Closed by its client, held by the server: still open.
        drop(queued);
        assert_eq!(w.look(&me()).unwrap().open, 2);
        let other = std::process::Command::new("true").spawn().unwrap().id() as i32;
        assert_eq!(w.look(&[other]).unwrap().open, 0, "held by another process");
        drop(first);
        let third = old.accept().unwrap().0;
        assert_eq!(
            w.look(&me()).unwrap(),
            Busy {
                queued: 0,
                open: 2,
                handshakes: 0
            }
        );
        drop((second, third));
        assert!(
            w.look(&me()).unwrap().idle(),
            "generation 2's connections are not counted"
        );
        drop(theirs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Not asserted: how long one look takes with a thousand Unix
    /// connections held (unix_diag dumps every Unix socket of the host).
    #[test]
    fn a_look_at_a_thousand_idle_unix_connections() {
        use std::os::unix::net::{UnixListener, UnixStream};
        const N: usize = 1000;
        let dir = std::env::temp_dir().join(format!("relaunch-drain-k-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.sock");
        let l = UnixListener::bind(&path).unwrap();
        let mut w = Watch::new(vec![], vec![]).unix(vec![inode(&l)]);
        let mut conns = Vec::with_capacity(N);
        for _ in 0..N {
            let c = UnixStream::connect(&path).unwrap();
            conns.push((c, l.accept().unwrap().0));
        }
        let start = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            assert_eq!(w.look(&me()).unwrap().open, N as u32);
        }
        let each = start.elapsed() / rounds;
        eprintln!("one look, {N} idle Unix connections held: {each:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Not asserted: how long one look takes with many idle connections.
    #[test]
    fn a_look_at_a_thousand_idle_connections() {
        const N: usize = 1000;
        // Both ends on 127.0.0.2: tests running beside this one look for
        // sockets on 127.0.0.1 ports, which a thousand clients would take.
        let (l, addr, mut w) = listener("127.0.0.2", false);
        let mut conns = Vec::with_capacity(2 * N);
        for _ in 0..N {
            let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            c.bind(&SocketAddr::new(addr.ip(), 0).into()).unwrap();
            c.connect_timeout(&addr.into(), WAIT).unwrap();
            conns.push(c);
            conns.push(l.accept().unwrap().0);
        }
        w.look(&me()).unwrap();
        let start = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            assert_eq!(w.look(&me()).unwrap().open, N as u32);
        }
        let each = start.elapsed() / rounds;
        eprintln!("one look, {N} idle connections held: {each:?}");
    }
}
