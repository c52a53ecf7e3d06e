//! `--idle-stop`: is anything open or waiting on the held listeners, or did
//! anything come and go since the last measure? Measured from outside the
//! data path, without accepting or reading anything:
//!
//! - waiting: `poll()` of each listener (its accept or receive queue);
//! - open: TCP connections whose local address is a listener's, from
//!   sock_diag (`proc::tcp_sockets`); Unix stream connections, accepted or
//!   queued, which carry the listener's path in `/proc/net/unix`;
//! - came and went: the kernel's notices of closed TCP sockets whose local
//!   address is a listener's (`proc::TcpCloses`; the same port on another
//!   address is someone else's traffic), queued without waking anyone, so
//!   a connection shorter than the interval between two measures counts too.
//!
//! Not seen: a Unix connection that opens and closes between two measures,
//! and datagrams a child reads between two measures (a UDP listener is busy
//! while datagrams wait). Without the close notices (kernels before 4.6,
//! netlink refused), short TCP connections are not seen either; that is
//! said once. A listener whose address is unknown counts by its queue only.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::plan::spec::{Addr, Host, Proto};
use crate::proc;
use crate::sockets::Listener;

/// TCP states of a connection that is open (not LISTEN, TIME_WAIT, CLOSE or
/// an outgoing SYN_SENT).
const OPEN_STATES: u32 = (1 << proc::TCP_ESTABLISHED)
    | (1 << proc::TCP_SYN_RECV)
    | (1 << proc::TCP_FIN_WAIT1)
    | (1 << proc::TCP_FIN_WAIT2)
    | (1 << proc::TCP_CLOSE_WAIT)
    | (1 << proc::TCP_LAST_ACK)
    | (1 << proc::TCP_CLOSING);

/// How a listener's open connections are found.
#[derive(Debug, Clone, PartialEq)]
enum Open {
    Tcp(SocketAddr),
    /// The path as /proc/net/unix shows it (`@name` for abstract ones).
    Unix(String),
    /// UDP, or unknown: the queue only.
    None,
}

struct Watched {
    /// Our own duplicate, for poll() off the loop.
    fd: OwnedFd,
    open: Open,
}

/// One look at the listeners.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// A connection is open or waiting now.
    pub open: bool,
    /// Connections came and went since the last look (TCP, from the close
    /// notices; false where they cannot be seen).
    pub churned: bool,
}

pub struct Gauge {
    listeners: Vec<Watched>,
    closes: Option<proc::TcpCloses>,
    /// Whether the close notices are followed (only while measuring).
    following: AtomicBool,
    /// A failed measure is said once, then counts as busy.
    warned: AtomicBool,
}

impl Gauge {
    /// Made before the first child: closes are noticed from then on.
    pub fn new(listeners: &[Listener]) -> io::Result<Gauge> {
        let mut watched = Vec::with_capacity(listeners.len());
        for l in listeners {
            let open = open_kind(l.addr.as_ref());
            if open == Open::None && !is_udp(l.addr.as_ref()) {
                warn!(
                    "--idle-stop: {} ({}) is of a kind whose connections relaunch cannot see; \
                     only connections waiting in its queue count as activity",
                    l.name,
                    l.address()
                );
            }
            watched.push(Watched {
                fd: l.socket.as_fd().try_clone_to_owned()?,
                open,
            });
        }
        let ports: Vec<u16> = watched
            .iter()
            .filter_map(|w| match w.open {
                Open::Tcp(a) => Some(a.port()),
                _ => None,
            })
            .collect();
        let closes = if ports.is_empty() {
            None
        } else {
            match proc::TcpCloses::subscribe(&ports) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(
                        "--idle-stop: cannot subscribe to the kernel's notices of closed \
                         connections ({e}): a connection that opens and closes between two \
                         measures is not seen, so steady short requests may be taken for idleness"
                    );
                    None
                }
            }
        };
        Ok(Gauge {
            listeners: watched,
            following: AtomicBool::new(closes.is_some()),
            closes,
            warned: AtomicBool::new(false),
        })
    }

    /// Follows the close notices only while children run to be measured:
    /// each one costs the kernel work at every TCP close on the machine.
    /// Cheap (two setsockopt calls, on a change only); fine on the loop.
    pub fn follow(&self, on: bool) {
        let Some(closes) = &self.closes else {
            return;
        };
        if self.following.swap(on, Ordering::Relaxed) == on {
            return;
        }
        if let Err(e) = closes.listen(on) {
            // Tried again at the next change, not at every turn of the loop.
            warn!(
                "--idle-stop: cannot {} the kernel's notices of closed connections ({e}); \
                 meanwhile a connection that opens and closes between two measures is not seen",
                if on { "follow" } else { "stop following" }
            );
        }
    }

    /// (whether anything is waiting or open now, whether connections came
    /// and went since the last call). Blocking (reads /proc and netlink):
    /// run it off the event loop. A failure is logged once and counts as
    /// open: never stop what we cannot see.
    pub fn measure(&self) -> Measure {
        match self.read() {
            Ok(m) => {
                tracing::debug!(
                    open = m.open,
                    churned = m.churned,
                    "--idle-stop: listeners measured"
                );
                m
            }
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        "--idle-stop: cannot see the listeners' connections ({e}); \
                         the children are not stopped while this lasts"
                    );
                }
                Measure {
                    open: true,
                    churned: true,
                }
            }
        }
    }

    fn read(&self) -> io::Result<Measure> {
        // Read every time, so each measure covers only the time since the last.
        let churned = match &self.closes {
            Some(c) => c.any(|local| self.tcp().any(|l| serves(l, local)))?,
            None => false,
        };
        let open = self.open()?;
        Ok(Measure { open, churned })
    }

    /// Whether a connection waits or is open on a listener now.
    fn open(&self) -> io::Result<bool> {
        if self.waiting()? {
            return Ok(true);
        }
        if self.tcp().next().is_some() {
            let conns = proc::tcp_sockets(OPEN_STATES)?;
            if conns.iter().any(|c| self.tcp().any(|l| serves(l, c.local))) {
                return Ok(true);
            }
        }
        let unix: Vec<&str> = self
            .listeners
            .iter()
            .filter_map(|w| match &w.open {
                Open::Unix(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        if !unix.is_empty() {
            let table = proc::unix_table()?;
            if table.iter().any(|e| unix_connection_of(e, &unix)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The TCP listeners' addresses.
    fn tcp(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners.iter().filter_map(|w| match w.open {
            Open::Tcp(a) => Some(a),
            _ => None,
        })
    }

    /// Whether a connection or datagram waits in a listener's queue.
    fn waiting(&self) -> io::Result<bool> {
        let mut fds: Vec<libc::pollfd> = self
            .listeners
            .iter()
            .map(|w| libc::pollfd {
                fd: w.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: the array is ours, its length given; timeout 0.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fds.iter().any(|p| p.revents & libc::POLLIN != 0))
    }
}

fn is_udp(addr: Option<&Addr>) -> bool {
    matches!(
        addr,
        Some(Addr::Inet {
            proto: Proto::Udp,
            ..
        })
    )
}

fn open_kind(addr: Option<&Addr>) -> Open {
    match addr {
        Some(Addr::Inet {
            proto: Proto::Tcp,
            host: Host::Ip(ip),
            port,
        }) => Open::Tcp(SocketAddr::new(*ip, *port)),
        Some(Addr::Unix(path)) => Open::Unix(path.display().to_string()),
        // /proc/net/unix shows the leading NUL, and any other, as '@'.
        Some(Addr::UnixAbstract(name)) => Open::Unix(format!(
            "@{}",
            String::from_utf8_lossy(name).replace('\0', "@")
        )),
        _ => Open::None,
    }
}

/// Whether a connection with local address `local` came in through a
/// listener bound to `listener`. A dual-stack `[::]` listener takes IPv4
/// too, shown as `::ffff:a.b.c.d`.
fn serves(listener: SocketAddr, local: SocketAddr) -> bool {
    if listener.port() != local.port() {
        return false;
    }
    let canon = |ip: IpAddr| ip.to_canonical();
    let (l, c) = (canon(listener.ip()), canon(local.ip()));
    match listener.ip() {
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        IpAddr::V4(v4) if v4.is_unspecified() => c.is_ipv4(),
        _ => l == c,
    }
}

/// An accepted or queued stream connection of one of the Unix listeners
/// (they carry the listener's path; the listener itself is ACCEPTCON).
fn unix_connection_of(e: &proc::UnixEntry, paths: &[&str]) -> bool {
    e.kind != proc::SOCK_DGRAM
        && e.flags & proc::SO_ACCEPTCON == 0
        && e.path.as_deref().is_some_and(|p| paths.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn which_connections_a_listener_serves() {
        assert!(serves(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(!serves(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!serves(a("127.0.0.1:80"), a("10.0.0.1:80")));
        // A dual-stack wildcard takes IPv4 (mapped) and IPv6.
        assert!(serves(a("[::]:80"), a("[::ffff:127.0.0.1]:80")));
        assert!(serves(a("[::]:80"), a("[::1]:80")));
        assert!(serves(a("[::]:80"), a("10.1.2.3:80")));
        assert!(serves(a("0.0.0.0:80"), a("10.1.2.3:80")));
        assert!(serves(a("0.0.0.0:80"), a("[::ffff:10.1.2.3]:80")));
        assert!(!serves(a("0.0.0.0:80"), a("[::1]:80")));
        // A specific address in either spelling.
        assert!(serves(a("127.0.0.1:80"), a("[::ffff:127.0.0.1]:80")));
        assert!(!serves(a("[::1]:80"), a("127.0.0.1:80")));
    }

    #[test]
    fn unix_connections_by_path() {
        let table = proc::parse_unix_table(
            "Num       RefCount Protocol Flags    Type St Inode Path\n\
             0000000023b9bb42: 00000002 00000000 00010000 0001 01 49454752 /tmp/a b.sock\n\
             000000001eeb53b0: 00000003 00000000 00000000 0001 02     0 /tmp/a b.sock\n\
             00000000608ee961: 00000003 00000000 00000000 0001 03 49454757 /tmp/a b.sock\n\
             00000000608ee962: 00000003 00000000 00000000 0001 03 49454758 /tmp/other.sock\n\
             00000000608ee963: 00000003 00000000 00000000 0002 01 49454759 /tmp/a b.sock\n\
             00000000608ee964: 00000003 00000000 00000000 0001 03 49454760\n",
        );
        let hits: Vec<u64> = table
            .iter()
            .filter(|e| unix_connection_of(e, &["/tmp/a b.sock"]))
            .map(|e| e.inode)
            .collect();
        // The queued one (inode 0) and the accepted one; not the listener,
        // another path, a datagram socket, or an unnamed one.
        assert_eq!(hits, [0, 49454757]);
    }

    #[test]
    fn abstract_names_as_proc_shows_them() {
        assert_eq!(
            open_kind(Some(&Addr::UnixAbstract(b"app\0x".to_vec()))),
            Open::Unix("@app@x".into())
        );
        assert_eq!(open_kind(None), Open::None);
    }

    /// A connection to another address on the same port (another IP of the
    /// machine, served by someone else) is not activity on ours.
    #[test]
    fn closes_on_another_address_of_the_port_do_not_count() {
        use crate::plan::spec;
        let other = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let s = spec::parse(&format!("127.0.0.1:{port}")).unwrap();
        let l = crate::sockets::bind("t".into(), &s, 16, &[], None).unwrap();
        let g = Gauge::new(std::slice::from_ref(&l)).unwrap();
        // A second subscriber tells when the notice has been sent: the
        // kernel hands each notice to every subscriber in one go.
        let witness = proc::TcpCloses::subscribe(&[port]).unwrap();
        let c = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (a, _) = other.accept().unwrap();
        drop((c, a));
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !witness.any(|_| true).unwrap() {
            assert!(std::time::Instant::now() < end, "no notice at all");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            g.read().unwrap(),
            Measure {
                open: false,
                churned: false
            },
            "a close on 127.0.0.2 counted as activity on 127.0.0.1"
        );
    }

    /// The real thing: a listener with a connection that opens and closes
    /// between two measures, one that waits, one that is open.
    #[test]
    fn measures_a_real_listener() {
        use crate::plan::spec;
        let s = spec::parse("127.0.0.1:0").unwrap();
        let l = crate::sockets::bind("t".into(), &s, 16, &[], None).unwrap();
        let addr = l.socket.local_addr().unwrap().as_socket().unwrap();
        let g = Gauge::new(std::slice::from_ref(&l)).unwrap();
        // Closing takes a few packets even on loopback: wait for it.
        let settles_idle = |g: &Gauge| {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while g.read().unwrap()
                != (Measure {
                    open: false,
                    churned: false,
                })
            {
                assert!(std::time::Instant::now() < end, "never idle");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let quiet = Measure {
            open: false,
            churned: false,
        };
        assert_eq!(g.read().unwrap(), quiet, "nothing yet");
        // Opens and closes between two measures, whichever end closes first.
        for client_first in [true, false] {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let (a, _) = l.socket.accept().unwrap();
            if client_first {
                drop((c, a));
            } else {
                drop((a, c));
            }
            // The notice comes from a kernel work queue, soon.
            let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !g.read().unwrap().churned {
                assert!(
                    std::time::Instant::now() < end,
                    "the short connection was missed"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // Closed (TIME_WAIT is not open), and counted once.
            settles_idle(&g);
        }
        // Waiting in the accept queue.
        let c = std::net::TcpStream::connect(addr).unwrap();
        assert!(g.read().unwrap().open);
        assert!(g.read().unwrap().open, "still waiting");
        // Accepted and open.
        let (a, _) = l.socket.accept().unwrap();
        assert!(g.read().unwrap().open, "open");
        assert!(g.read().unwrap().open, "still open");
        drop((c, a));
        settles_idle(&g);
    }
}
