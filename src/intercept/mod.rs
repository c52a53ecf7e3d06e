//! Bind interception: a child that binds a port relaunch holds gets
//! relaunch's listening socket instead of EADDRINUSE.
//!
//! Every child is started under a seccomp filter ([`filter`]) that sends its
//! `bind`, `listen`, `shutdown` and some `setsockopt` calls to relaunch (seccomp user
//! notification); the filter is inherited across fork and exec, so wrappers
//! and workers are covered. [`handler`] answers them, one thread per child:
//!
//! - `bind` of an address relaunch holds: the held socket is put over the
//!   app's fd (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SETFD`) and bind returns 0.
//!   Any other bind runs as it is.
//! - `listen` on a held socket returns 0 without running, so the app's
//!   backlog (5 for Python's socketserver) never shrinks relaunch's; if the
//!   socket stopped listening where the filter cannot see (io_uring, another
//!   ABI), relaunch listens on it again first.
//! - `connect` (only with `--refuse-probes`, for every connect: seccomp
//!   cannot read the address) to an address relaunch holds, before the
//!   child's tree has bound it, fails with ECONNREFUSED: a port check
//!   before bind finds the port free, as it would without relaunch. Every
//!   other connect runs.
//! - `shutdown` on a held socket never runs (it would stop the listener for
//!   every process and reset the queued connections): the app's fd is
//!   replaced by a private socket that was never listening, so its own
//!   accept loop sees the socket end (accept fails with EINVAL), while the
//!   held listener serves on.
//! - `setsockopt(SOL_SOCKET, SO_REUSEPORT)` and the reuseport BPF options
//!   on a held socket return 0 without running: with SO_REUSEPORT on,
//!   another process of the socket's user could bind the port beside it
//!   and take connections. The filter matches these by level and name, so
//!   every other option runs untrapped.
//!
//! Only the child relaunch started gets a held socket: a caller whose
//! socket lives in another network namespace, which resolves paths in
//! another root or mount namespace, or which runs as another uid than the
//! child was started as, is apart from it: its bind runs as it is.
//!
//! A generation that drains beside another has its own socket for each held
//! TCP listener ([`handler::Table::set_members`]): its children's binds get
//! that one, and a call trapped on any generation's socket is answered as
//! on the held socket, on the very socket the caller holds.
//!
//! This module is the pure part: reading a sockaddr from hostile bytes and
//! deciding what a bind gets ([`decide`]), from facts the handler gathers.

pub mod filter;
pub mod handler;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The address a bind asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Inet(SocketAddr),
    /// A Unix socket path (relative to the app's directory if not absolute).
    Unix(Vec<u8>),
    /// A Unix abstract name, without the leading NUL.
    Abstract(Vec<u8>),
    /// Another family, or an address the kernel itself would refuse.
    Other,
}

/// The sockaddr a bind passed, as the kernel would read it; `raw` is at most
/// what the app gave (`addrlen` bytes).
pub fn parse_sockaddr(raw: &[u8]) -> Asked {
    let Some(family) = raw.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]])) else {
        return Asked::Other;
    };
    match i32::from(family) {
        libc::AF_INET if raw.len() >= 16 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Asked::Inet(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        // 24 bytes is the old sockaddr_in6 without scope id, which Linux takes.
        libc::AF_INET6 if raw.len() >= 24 => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let flow = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&raw[8..24]);
            let scope = raw
                .get(24..28)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            Asked::Inet(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        libc::AF_UNIX => {
            let path = &raw[2..raw.len().min(2 + 108)];
            match path.first() {
                // An unnamed bind (autobind) or an empty name.
                None => Asked::Other,
                Some(0) if path.len() > 1 => Asked::Abstract(path[1..].to_vec()),
                Some(0) => Asked::Other,
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    Asked::Unix(path[..end].to_vec())
                }
            }
        }
        _ => Asked::Other,
    }
}

/// The app's socket, as relaunch read it through its own copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSocket {
    pub domain: i32,
    pub stream: bool,
    /// IPV6_V6ONLY (AF_INET6 only).
    pub v6only: bool,
}

/// A socket relaunch holds, as far as matching goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HeldAddr {
    /// A TCP listener: its bound address, and IPV6_V6ONLY.
    Tcp(SocketAddr, bool),
    /// A Unix stream listener at this absolute path.
    Unix(Vec<u8>),
    Abstract(Vec<u8>),
    /// UDP, datagram Unix sockets, inherited sockets of other kinds: never given.
    NotGiven,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub addr: HeldAddr,
    /// `--port P` (any bare port): relaunch may still rebind it where the
    /// app binds, because no app has used it yet.
    pub movable: bool,
    /// Its network namespace (see [`Caller::netns`]); read again from the
    /// socket after an upgrade.
    #[serde(skip)]
    pub netns: u64,
}

/// What relaunch knows of the process that binds, beyond its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The network namespace of its socket: SO_NETNS_COOKIE (or, before
    /// Linux 5.14, the namespace's inode, as for the held sockets).
    pub netns: u64,
    /// It resolves paths as relaunch does: the same root and mount namespace.
    pub same_files: bool,
    /// It runs as the uid relaunch started the child as.
    pub same_uid: bool,
}

/// Why a caller does not get the held socket it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apart {
    /// Another network namespace: the address there is another one.
    Net,
    /// Another root or mount namespace: the path there is another file.
    Files,
    /// Another uid than the child relaunch started.
    Uid,
}

/// What a bind gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not ours: the real bind runs.
    Continue,
    /// The held socket at this index replaces the app's.
    Give(usize),
    /// Rebind held socket `index` at `at` exactly as the app asked (in the
    /// app's family, with its IPV6_V6ONLY), then give it.
    Move { index: usize, at: SocketAddr },
    /// Refused with EADDRINUSE (what the app would get without relaunch):
    /// the address overlaps a held one but is not it.
    Refuse { index: usize, why: String },
    /// Held socket `index` matches, but the caller is not the child
    /// relaunch started: the real bind runs.
    Apart { index: usize, why: Apart },
}

/// What a bind of `asked` on `app`, by `caller`, gets, given the held
/// sockets. A relative Unix path must have been made absolute against the
/// app's directory.
pub fn decide(app: AppSocket, caller: &Caller, asked: &Asked, held: &[Held]) -> Decision {
    let decision = matching(app, asked, held);
    let index = match &decision {
        Decision::Continue | Decision::Apart { .. } => return decision,
        Decision::Give(i) | Decision::Move { index: i, .. } | Decision::Refuse { index: i, .. } => {
            *i
        }
    };
    let why = match asked {
        // Abstract names belong to a network namespace too.
        Asked::Inet(_) | Asked::Abstract(_) if held[index].netns != caller.netns => Apart::Net,
        Asked::Unix(_) if !caller.same_files => Apart::Files,
        _ if !caller.same_uid => Apart::Uid,
        _ => return decision,
    };
    Decision::Apart { index, why }
}

/// What `decide` gives by the address alone.
fn matching(app: AppSocket, asked: &Asked, held: &[Held]) -> Decision {
    if !app.stream {
        return Decision::Continue;
    }
    match asked {
        Asked::Inet(addr) => decide_inet(app, *addr, held),
        Asked::Unix(path) if app.domain == libc::AF_UNIX => held
            .iter()
            .position(|h| matches!(&h.addr, HeldAddr::Unix(p) if p == path))
            .map_or(Decision::Continue, Decision::Give),
        Asked::Abstract(name) if app.domain == libc::AF_UNIX => held
            .iter()
            .position(|h| matches!(&h.addr, HeldAddr::Abstract(n) if n == name))
            .map_or(Decision::Continue, Decision::Give),
        _ => Decision::Continue,
    }
}

fn decide_inet(app: AppSocket, asked: SocketAddr, held: &[Held]) -> Decision {
    // Port 0 asks the kernel for a free port: never one of ours.
    if asked.port() == 0 || !matches!(app.domain, libc::AF_INET | libc::AF_INET6) {
        return Decision::Continue;
    }
    // The family the kernel would check the address against.
    let app_v6 = app.domain == libc::AF_INET6;
    if app_v6 != asked.is_ipv6() {
        return Decision::Continue;
    }
    let wants = cover(asked.ip(), app_v6 && app.v6only);
    let mut overlapping = None;
    for (i, h) in held.iter().enumerate() {
        let HeldAddr::Tcp(at, v6only) = h.addr else {
            continue;
        };
        if at.port() != asked.port() {
            continue;
        }
        if fits(app, asked.ip(), at, v6only) {
            return Decision::Give(i);
        }
        if overlaps(&wants, &cover(at.ip(), v6only)) {
            overlapping.get_or_insert(i);
        }
    }
    let Some(index) = overlapping else {
        return Decision::Continue;
    };
    let HeldAddr::Tcp(at, _) = held[index].addr else {
        return Decision::Continue;
    };
    if held[index].movable {
        return Decision::Move { index, at: asked };
    }
    let shown = shown_ip(at.ip());
    let why = if app_v6 && !at.is_ipv6() {
        format!(
            "relaunch holds {shown} (IPv4) there and the app's socket is IPv6 for {}",
            shown_ip(asked.ip())
        )
    } else if !app_v6 && at.is_ipv6() {
        format!(
            "relaunch holds {shown} (IPv6) there, which an IPv4 socket cannot take: \
             its client addresses would come out garbled"
        )
    } else {
        format!(
            "relaunch holds {shown} there, not {}: giving it would {}",
            shown_ip(asked.ip()),
            if at.ip().is_unspecified() {
                "open the app to every interface"
            } else {
                "serve another address than the app asked for"
            }
        )
    };
    Decision::Refuse { index, why }
}

/// Which held TCP socket a connect() to `to` reaches: one bound to that
/// very address or, where it listens on every address, loopback, the
/// unspecified address (Linux connects that to the host itself) or one of
/// the host's own addresses (`local`, asked last: it reads the interfaces).
pub fn probed(held: &[Held], to: SocketAddr, local: impl Fn(IpAddr) -> bool) -> Option<usize> {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let ip = unmap(to.ip());
    let here = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified() || local(ip);
    if to.port() == 0 {
        return None;
    }
    held.iter().position(|h| {
        let HeldAddr::Tcp(at, v6only) = h.addr else {
            return false;
        };
        if at.port() != to.port() {
            return false;
        }
        match at.ip() {
            IpAddr::V4(a) if a.is_unspecified() => ip.is_ipv4() && here(ip),
            IpAddr::V6(a) if a.is_unspecified() => (ip.is_ipv6() || !v6only) && here(ip),
            at => unmap(at) == ip,
        }
    })
}

/// Whether the held socket is what the app asked for: the same family and
/// address (and IPV6_V6ONLY), or an IPv6 socket asking for what an IPv4 one
/// holds (`[::]` dual-stack for `0.0.0.0`, `::ffff:a.b.c.d` for `a.b.c.d`).
/// The second is safe: an IPv6 socket's address buffers are larger, and
/// Python, Node and Go read addresses by the family the kernel returns, so
/// they see `127.0.0.1`. The reverse (an IPv4 socket given an IPv6 one)
/// truncates every client address, and never fits.
fn fits(app: AppSocket, asked: IpAddr, held: SocketAddr, held_v6only: bool) -> bool {
    match (asked, held.ip()) {
        (IpAddr::V4(a), IpAddr::V4(h)) => a == h,
        (IpAddr::V6(a), IpAddr::V6(h)) => {
            a == h && (!a.is_unspecified() || app.v6only == held_v6only)
        }
        (IpAddr::V6(a), IpAddr::V4(h)) => {
            (a.is_unspecified() && !app.v6only && h.is_unspecified())
                || a.to_ipv4_mapped() == Some(h)
        }
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// The addresses a bound socket takes traffic for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cover {
    AllV4,
    V4(Ipv4Addr),
    AllV6,
    V6(Ipv6Addr),
}

fn cover(ip: IpAddr, v6only: bool) -> Vec<Cover> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => vec![Cover::AllV4],
        IpAddr::V4(a) => vec![Cover::V4(a)],
        IpAddr::V6(a) if a.is_unspecified() && v6only => vec![Cover::AllV6],
        IpAddr::V6(a) if a.is_unspecified() => vec![Cover::AllV4, Cover::AllV6],
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => cover(IpAddr::V4(v4), false),
            None => vec![Cover::V6(a)],
        },
    }
}

fn overlaps(a: &[Cover], b: &[Cover]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (Cover::AllV4, Cover::AllV4 | Cover::V4(_))
            | (Cover::V4(_), Cover::AllV4)
            | (Cover::AllV6, Cover::AllV6 | Cover::V6(_))
            | (Cover::V6(_), Cover::AllV6) => true,
            (Cover::V4(p), Cover::V4(q)) => p == q,
            (Cover::V6(p), Cover::V6(q)) => p == q,
            _ => false,
        })
    })
}

/// `0.0.0.0`, `[::]`.
pub fn shown_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// `0.0.0.0:5000`, `[::]:5000`, `unix:/run/x.sock`, `unix:@name`.
pub fn shown(asked: &Asked) -> String {
    match asked {
        Asked::Inet(a) => format!("{}:{}", shown_ip(a.ip()), a.port()),
        Asked::Unix(p) => format!("unix:{}", String::from_utf8_lossy(p)),
        Asked::Abstract(n) => format!("unix:@{}", String::from_utf8_lossy(n)),
        Asked::Other => "an address of another kind".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ip);
        b.extend_from_slice(&[0; 8]);
        b
    }

    fn v6(ip: Ipv6Addr, port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&ip.octets());
        b.extend_from_slice(&[0; 4]);
        b
    }

    fn unix(path: &[u8]) -> Vec<u8> {
        let mut b = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(path);
        b
    }

    #[test]
    fn sockaddrs_read_as_the_kernel_reads_them() {
        assert_eq!(
            parse_sockaddr(&v4([127, 0, 0, 1], 5000)),
            Asked::Inet("127.0.0.1:5000".parse().unwrap())
        );
        // Too short for its family: the kernel says EINVAL, not us.
        assert_eq!(parse_sockaddr(&v4([0; 4], 80)[..15]), Asked::Other);
        assert_eq!(
            parse_sockaddr(&v6(Ipv6Addr::UNSPECIFIED, 8000)),
            Asked::Inet("[::]:8000".parse().unwrap())
        );
        assert_eq!(
            parse_sockaddr(&v6(Ipv6Addr::LOCALHOST, 1)[..24]),
            Asked::Inet("[::1]:1".parse().unwrap())
        );
        assert_eq!(
            parse_sockaddr(&unix(b"/run/a.sock\0\0\0")),
            Asked::Unix(b"/run/a.sock".to_vec())
        );
        assert_eq!(
            parse_sockaddr(&unix(b"\0name")),
            Asked::Abstract(b"name".to_vec())
        );
        assert_eq!(parse_sockaddr(&unix(b"")), Asked::Other);
        assert_eq!(parse_sockaddr(&unix(b"\0")), Asked::Other);
        assert_eq!(parse_sockaddr(&[2]), Asked::Other);
        assert_eq!(parse_sockaddr(&[]), Asked::Other);
    }

    const INET: AppSocket = AppSocket {
        domain: libc::AF_INET,
        stream: true,
        v6only: false,
    };
    const INET6: AppSocket = AppSocket {
        domain: libc::AF_INET6,
        stream: true,
        v6only: false,
    };

    /// relaunch's own child, in relaunch's namespaces.
    const HOME: Caller = Caller {
        netns: 7,
        same_files: true,
        same_uid: true,
    };

    fn tcp(addr: &str, movable: bool) -> Held {
        let at: SocketAddr = addr.parse().unwrap();
        let v6only = at.is_ipv6() && !at.ip().is_unspecified();
        Held {
            addr: HeldAddr::Tcp(at, v6only),
            movable,
            netns: HOME.netns,
        }
    }

    fn inet(s: &str) -> Asked {
        Asked::Inet(s.parse().unwrap())
    }

    #[test]
    fn the_same_address_in_the_same_family_is_given() {
        let held = [
            tcp("127.0.0.1:7001", false),
            tcp("127.0.0.1:7002", false),
            tcp("[::]:7003", false),
        ];
        assert_eq!(
            decide(INET, &HOME, &inet("127.0.0.1:7002"), &held),
            Decision::Give(1)
        );
        assert_eq!(
            decide(INET6, &HOME, &inet("[::]:7003"), &held),
            Decision::Give(2)
        );
        // Another port, port 0, a datagram socket: the real bind.
        assert_eq!(
            decide(INET, &HOME, &inet("127.0.0.1:7004"), &held),
            Decision::Continue
        );
        assert_eq!(
            decide(INET, &HOME, &inet("0.0.0.0:0"), &held),
            Decision::Continue
        );
        let udp = AppSocket {
            stream: false,
            ..INET
        };
        assert_eq!(
            decide(udp, &HOME, &inet("127.0.0.1:7001"), &held),
            Decision::Continue
        );
        // Another address on the same port that does not overlap: the kernel decides.
        assert_eq!(
            decide(INET, &HOME, &inet("127.0.0.2:7001"), &held),
            Decision::Continue
        );
        assert_eq!(
            decide(INET6, &HOME, &inet("[::1]:7001"), &held),
            Decision::Continue
        );
    }

    #[test]
    fn an_ipv6_wildcard_takes_an_ipv4_wildcard_but_never_the_reverse() {
        let held = [tcp("0.0.0.0:8000", false)];
        // Node and Go bind [::] for "every interface".
        assert_eq!(
            decide(INET6, &HOME, &inet("[::]:8000"), &held),
            Decision::Give(0)
        );
        assert_eq!(
            decide(INET6, &HOME, &inet("[::ffff:0.0.0.0]:8000"), &held),
            Decision::Give(0)
        );
        let v6only = AppSocket {
            v6only: true,
            ..INET6
        };
        assert_eq!(
            decide(v6only, &HOME, &inet("[::]:8000"), &held),
            Decision::Continue
        );
        let held = [tcp("[::]:8000", false)];
        assert!(matches!(
            decide(INET, &HOME, &inet("0.0.0.0:8000"), &held),
            Decision::Refuse { index: 0, why } if why.contains("garbled")
        ));
    }

    #[test]
    fn a_narrower_bind_under_a_wildcard_is_refused_not_widened() {
        let held = [tcp("0.0.0.0:5000", false)];
        assert!(matches!(
            decide(INET, &HOME, &inet("127.0.0.1:5000"), &held),
            Decision::Refuse { index: 0, why } if why.contains("every interface")
        ));
        let held = [tcp("127.0.0.1:5000", false)];
        assert!(matches!(
            decide(INET, &HOME, &inet("0.0.0.0:5000"), &held),
            Decision::Refuse { index: 0, .. }
        ));
        assert!(matches!(
            decide(INET6, &HOME, &inet("[::]:5000"), &held),
            Decision::Refuse { index: 0, .. }
        ));
        assert_eq!(
            decide(INET6, &HOME, &inet("[::ffff:127.0.0.1]:5000"), &held),
            Decision::Give(0)
        );
    }

    #[test]
    fn a_bare_port_moves_to_where_the_app_binds() {
        let held = [tcp("[::]:5000", true)];
        assert_eq!(
            decide(INET6, &HOME, &inet("[::]:5000"), &held),
            Decision::Give(0)
        );
        assert_eq!(
            decide(INET, &HOME, &inet("0.0.0.0:5000"), &held),
            Decision::Move {
                index: 0,
                at: "0.0.0.0:5000".parse().unwrap()
            }
        );
        assert_eq!(
            decide(INET, &HOME, &inet("127.0.0.1:5000"), &held),
            Decision::Move {
                index: 0,
                at: "127.0.0.1:5000".parse().unwrap()
            }
        );
    }

    #[test]
    fn unix_paths_and_names_match_exactly() {
        let held = [
            Held {
                addr: HeldAddr::Unix(b"/run/a.sock".to_vec()),
                movable: false,
                netns: HOME.netns,
            },
            Held {
                addr: HeldAddr::Abstract(b"x".to_vec()),
                movable: false,
                netns: HOME.netns,
            },
        ];
        let app = AppSocket {
            domain: libc::AF_UNIX,
            stream: true,
            v6only: false,
        };
        assert_eq!(
            decide(app, &HOME, &Asked::Unix(b"/run/a.sock".to_vec()), &held),
            Decision::Give(0)
        );
        assert_eq!(
            decide(app, &HOME, &Asked::Abstract(b"x".to_vec()), &held),
            Decision::Give(1)
        );
        assert_eq!(
            decide(app, &HOME, &Asked::Unix(b"/run/b.sock".to_vec()), &held),
            Decision::Continue
        );
        let dgram = AppSocket {
            stream: false,
            ..app
        };
        assert_eq!(
            decide(dgram, &HOME, &Asked::Unix(b"/run/a.sock".to_vec()), &held),
            Decision::Continue
        );
    }

    #[test]
    fn a_caller_apart_from_the_child_gets_nothing_held() {
        let unix = |p: &[u8]| Held {
            addr: HeldAddr::Unix(p.to_vec()),
            movable: false,
            netns: HOME.netns,
        };
        let held = [
            tcp("0.0.0.0:5000", true),
            tcp("127.0.0.1:6000", false),
            unix(b"/run/a.sock"),
            Held {
                addr: HeldAddr::Abstract(b"x".to_vec()),
                movable: false,
                netns: HOME.netns,
            },
        ];
        let local = AppSocket {
            domain: libc::AF_UNIX,
            stream: true,
            v6only: false,
        };
        let sandboxed = Caller { netns: 8, ..HOME };
        // Not given, not moved, not refused: the kernel decides there.
        for (asked, index) in [
            ("0.0.0.0:5000", 0),
            ("127.0.0.1:5000", 0),
            ("0.0.0.0:6000", 1),
        ] {
            assert_eq!(
                decide(INET, &sandboxed, &inet(asked), &held),
                Decision::Apart {
                    index,
                    why: Apart::Net
                },
                "{asked}"
            );
        }
        assert_eq!(
            decide(local, &sandboxed, &Asked::Abstract(b"x".to_vec()), &held),
            Decision::Apart {
                index: 3,
                why: Apart::Net
            }
        );
        // A path is a file, whatever the network namespace.
        assert_eq!(
            decide(
                local,
                &sandboxed,
                &Asked::Unix(b"/run/a.sock".to_vec()),
                &held
            ),
            Decision::Give(2)
        );
        let chrooted = Caller {
            same_files: false,
            ..HOME
        };
        assert_eq!(
            decide(
                local,
                &chrooted,
                &Asked::Unix(b"/run/a.sock".to_vec()),
                &held
            ),
            Decision::Apart {
                index: 2,
                why: Apart::Files
            }
        );
        assert_eq!(
            decide(INET, &chrooted, &inet("0.0.0.0:5000"), &held),
            Decision::Give(0)
        );
        let other_uid = Caller {
            same_uid: false,
            ..HOME
        };
        for asked in [inet("0.0.0.0:5000"), Asked::Unix(b"/run/a.sock".to_vec())] {
            let app = if matches!(asked, Asked::Unix(_)) {
                local
            } else {
                INET
            };
            assert!(
                matches!(
                    decide(app, &other_uid, &asked, &held),
                    Decision::Apart {
                        why: Apart::Uid,
                        ..
                    }
                ),
                "{asked:?}"
            );
        }
        // Nothing held there: the real bind, as for anyone.
        assert_eq!(
            decide(INET, &other_uid, &inet("0.0.0.0:7000"), &held),
            Decision::Continue
        );
    }

    #[test]
    fn a_probe_of_a_held_port_is_known_by_every_address_that_reaches_it() {
        let held = [tcp("0.0.0.0:5000", false), tcp("127.0.0.1:6000", false)];
        let host = |ip: IpAddr| ip == IpAddr::from([192, 0, 2, 2]);
        let at = |s: &str| probed(&held, s.parse().unwrap(), host);
        assert_eq!(at("127.0.0.1:5000"), Some(0));
        assert_eq!(at("127.0.0.2:5000"), Some(0));
        assert_eq!(at("0.0.0.0:5000"), Some(0));
        assert_eq!(at("192.0.2.2:5000"), Some(0));
        assert_eq!(at("[::ffff:127.0.0.1]:5000"), Some(0));
        // Not the host's, another port, IPv6 to an IPv4 wildcard.
        assert_eq!(at("192.0.2.3:5000"), None);
        assert_eq!(at("127.0.0.1:5001"), None);
        assert_eq!(at("[::1]:5000"), None);
        // A specific address: only itself.
        assert_eq!(at("127.0.0.1:6000"), Some(1));
        assert_eq!(at("[::ffff:127.0.0.1]:6000"), Some(1));
        assert_eq!(at("192.0.2.2:6000"), None);
        assert_eq!(at("127.0.0.1:0"), None);
        // A dual-stack [::] takes both families; a v6-only one IPv6 only.
        let held = [Held {
            addr: HeldAddr::Tcp("[::]:7000".parse().unwrap(), false),
            movable: true,
            netns: HOME.netns,
        }];
        let none = |_: IpAddr| false;
        assert_eq!(probed(&held, "[::1]:7000".parse().unwrap(), none), Some(0));
        assert_eq!(
            probed(&held, "127.0.0.1:7000".parse().unwrap(), none),
            Some(0)
        );
        let held = [Held {
            addr: HeldAddr::Tcp("[::]:7000".parse().unwrap(), true),
            movable: false,
            netns: HOME.netns,
        }];
        assert_eq!(probed(&held, "127.0.0.1:7000".parse().unwrap(), none), None);
        assert_eq!(probed(&held, "[::1]:7000".parse().unwrap(), none), Some(0));
    }

    proptest! {
        #[test]
        fn hostile_sockaddrs_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let asked = parse_sockaddr(&raw);
            let held = [tcp("[::]:1", true), tcp("127.0.0.1:2", false)];
            let _ = decide(INET, &HOME, &asked, &held);
            let _ = decide(INET6, &HOME, &asked, &held);
            let _ = shown(&asked);
        }

        #[test]
        fn a_decision_never_breaks_the_rules(
            app_v6 in any::<bool>(),
            v6only in any::<bool>(),
            asked_at in 0usize..6,
            port in 0u16..3,
            held_at in proptest::collection::vec((0usize..6, 1u16..3, any::<bool>()), 0..4),
        ) {
            let ips: [IpAddr; 6] = [
                Ipv4Addr::UNSPECIFIED.into(),
                Ipv4Addr::LOCALHOST.into(),
                Ipv6Addr::UNSPECIFIED.into(),
                Ipv6Addr::LOCALHOST.into(),
                Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
                Ipv4Addr::new(10, 0, 0, 1).into(),
            ];
            let app = AppSocket {
                domain: if app_v6 { libc::AF_INET6 } else { libc::AF_INET },
                stream: true,
                v6only: app_v6 && v6only,
            };
            let asked = SocketAddr::new(ips[asked_at], port);
            let held: Vec<Held> = held_at
                .iter()
                .map(|&(i, p, movable)| {
                    let at = SocketAddr::new(ips[i], p);
                    let v6only = at.is_ipv6() && !at.ip().is_unspecified();
                    Held { addr: HeldAddr::Tcp(at, v6only), movable, netns: HOME.netns }
                })
                .collect();
            let d = decide(app, &HOME, &Asked::Inet(asked), &held);
            if port == 0 || app_v6 != asked.is_ipv6() {
                prop_assert_eq!(&d, &Decision::Continue);
            }
            match d {
                Decision::Give(i) => {
                    let HeldAddr::Tcp(at, _) = held[i].addr else { unreachable!() };
                    prop_assert_eq!(at.port(), port);
                    // An IPv4 socket never gets an IPv6 one.
                    prop_assert!(app_v6 || at.is_ipv4());
                    // Never wider than asked: a wildcard only for a wildcard.
                    prop_assert!(!at.ip().is_unspecified() || asked.ip().is_unspecified()
                        || asked.ip() == IpAddr::from(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()));
                }
                Decision::Move { index, at } => {
                    prop_assert!(held[index].movable);
                    prop_assert_eq!(at, asked);
                }
                Decision::Refuse { index, .. } => prop_assert!(!held[index].movable),
                // relaunch's own child is never apart.
                Decision::Apart { .. } => prop_assert!(false, "{:?}", d),
                Decision::Continue => {}
            }
        }

        #[test]
        fn every_ipv4_sockaddr_reads_back(ip in any::<[u8; 4]>(), port in any::<u16>()) {
            prop_assert_eq!(
                parse_sockaddr(&v4(ip, port)),
                Asked::Inet(SocketAddr::new(IpAddr::from(ip), port))
            );
        }
    }
}
