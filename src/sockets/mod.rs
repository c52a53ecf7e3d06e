//! Binding the listeners relaunch holds for its whole life.
//!
//! Every socket is created close-on-exec and blocking (systemd's default, so
//! every generation of an app sees the same mode; apps that want non-blocking
//! set it themselves, or ask for `,nonblock`: see [`hand_nonblocking`]).
//! TCP and UDP get SO_REUSEADDR (so a port in TIME_WAIT
//! binds). SO_REUSEPORT only for a TCP listener made as a member of a group
//! owned by a uid that nothing else runs as ([`Membership`], see
//! [`group`]): otherwise another process could share the port. Stream
//! sockets listen with `--backlog`, SOMAXCONN by default.
//!
//! Unix socket files live by the rules of [`file`]: a stale file is replaced,
//! a live one is an error, mode and owner are set without following
//! symlinks, and the file is removed on exit only if it is still ours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::plan::inherit::{Inherited, SockKind};
use crate::plan::options::{gid_of, uid_of};
use crate::plan::placeholders::{self, Named};
use crate::plan::spec::{self, Addr, Host, ListenSpec, Proto, UnixOptions};
use crate::plan::{Planned, Source};
use crate::who;

pub mod drain;
pub mod file;
pub mod group;
pub mod steer;
pub mod unix_group;

pub struct Listener {
    pub name: String,
    pub socket: Socket,
    /// The bound address; None for an inherited socket without one we can name.
    pub addr: Option<Addr>,
    /// The Unix socket file we created, removed on drop if still ours.
    _file: Option<file::SocketFile>,
    /// `,nonblock`: handed with O_NONBLOCK set ([`hand_nonblocking`]).
    nonblock: bool,
}

impl Listener {
    pub fn adopt(name: String, socket: Socket, addr: Option<Addr>) -> Self {
        Listener {
            name,
            socket,
            addr,
            _file: None,
            nonblock: false,
        }
    }

    /// The socket file relaunch created for it, if any.
    pub fn file(&self) -> Option<&file::SocketFile> {
        self._file.as_ref()
    }

    /// The same, to tell it of a file renamed over it
    /// ([`unix_group::UnixGroup::steer_to`]).
    // The driver calls it once it steers Unix listeners.
    #[allow(dead_code)]
    pub fn file_mut(&mut self) -> Option<&mut file::SocketFile> {
        self._file.as_mut()
    }

    /// With the socket file an earlier image created.
    pub fn with_file(mut self, file: Option<file::SocketFile>) -> Self {
        self._file = file;
        self
    }

    pub fn nonblocking(mut self, on: bool) -> Self {
        self.nonblock = on;
        self
    }

    pub fn is_nonblocking(&self) -> bool {
        self.nonblock
    }

    /// The address in spec form (`127.0.0.1:8000`, `unix:/run/x.sock`).
    pub fn address(&self) -> String {
        placeholders::shown(self.addr.as_ref())
    }

    /// The listener as the child at fd `fd` sees it.
    pub fn named(&self, fd: i32) -> Named<'_> {
        Named {
            name: &self.name,
            fd,
            addr: self.addr.clone(),
        }
    }
}

/// Sets O_NONBLOCK on the sockets of `,nonblock` listeners (`fds`, in the
/// listeners' order: what the child is handed), before each child. The
/// flag belongs to the socket's open file description, which relaunch and
/// every generation share: a child that clears it (`setblocking(True)`)
/// clears it for all, so it is set again for the next child (a generation
/// still running that cleared it sees it set again too). Listeners without
/// `,nonblock` are left as they are.
pub fn hand_nonblocking(listeners: &[Listener], fds: &[std::os::fd::BorrowedFd<'_>]) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    for (l, fd) in listeners.iter().zip(fds) {
        if !l.nonblock {
            continue;
        }
        let set = fcntl(fd, FcntlArg::F_GETFL).and_then(|flags| {
            let flags = OFlag::from_bits_retain(flags);
            if flags.contains(OFlag::O_NONBLOCK) {
                return Ok(0);
            }
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))
        });
        if let Err(e) = set {
            warn!(
                "{} ({}): cannot set non-blocking mode ({e}); the child gets it blocking, \
                 and an event loop that assumes ,nonblock may hang on it",
                l.name,
                l.address()
            );
        }
    }
}

/// What [`open`] made of the plan.
pub struct Opened {
    /// In the plan's order.
    pub listeners: Vec<Listener>,
    /// Indexes of the listeners relaunch bound itself this time (the ones
    /// to keep in systemd's fd store).
    pub bound_here: Vec<usize>,
    /// Names (FDNAME) of sockets the fd store gave back that no longer fit
    /// their listener (another address): bound afresh, to be dropped from
    /// the store.
    pub stale: Vec<String>,
}

/// The listeners of the plan, in its order: inherited sockets adopted, the
/// others bound.
/// `group`: TCP listeners relaunch binds are made as members of a group
/// steered between generations (see [`group`]).
pub fn open(
    plan: &[Planned],
    mut inherited: Vec<Option<Inherited>>,
    backlog: i32,
    group: Option<Membership>,
) -> Result<Opened> {
    let mut out = Vec::with_capacity(plan.len());
    let mut bound_here = Vec::new();
    let mut stale = Vec::new();
    for p in plan {
        if !matches!(p.source, Source::Inherited(_)) {
            bound_here.push(out.len());
        }
        let nonblock = match &p.source {
            Source::Bind { spec, .. } | Source::Stored { spec, .. } => spec.nonblock,
            // systemd's own NonBlocking= decides.
            Source::Inherited(_) => false,
        };
        let listener = match &p.source {
            Source::Inherited(i) => inherited_listener(p, inherited.get_mut(*i))?,
            Source::Bind { spec, fallback } => {
                bind(p.name.clone(), spec, backlog, fallback, group)?
            }
            Source::Stored {
                index,
                spec,
                fallback,
            } => {
                let kept = inherited.get_mut(*index).and_then(Option::take);
                match kept {
                    Some(i)
                        if i.addr
                            .as_ref()
                            .is_some_and(|a| stored_fits(p, &spec.addr, a))
                            && listening(&p.name, &i.fd, backlog) =>
                    {
                        bound_here.pop();
                        let socket = Socket::from(i.fd);
                        let file = file::SocketFile::of_bound(&socket, i.addr.as_ref());
                        Listener::adopt(p.name.clone(), socket, i.addr).with_file(file)
                    }
                    other => {
                        let had = other
                            .and_then(|i| i.addr)
                            .map(|a| placeholders::shown(Some(&a)));
                        info!(
                            "{}: the socket kept in systemd's fd store is {}, not {}; binding afresh",
                            p.name,
                            had.as_deref().unwrap_or("gone"),
                            spec.addr
                        );
                        stale.push(format!("{}{}", crate::plan::inherit::STORE_PREFIX, p.name));
                        bind(p.name.clone(), spec, backlog, fallback, group)?
                    }
                }
            }
        };
        out.push(listener.nonblocking(nonblock));
    }
    Ok(Opened {
        listeners: out,
        bound_here,
        stale,
    })
}

/// The socket the service manager passed for `p`.
fn inherited_listener(p: &Planned, slot: Option<&mut Option<Inherited>>) -> Result<Listener> {
    let i = slot.and_then(Option::take).ok_or_else(|| {
        Error::runtime(format!(
            "{}: the plan names an inherited socket that is not there",
            p.name
        ))
        .hint("this is a bug in relaunch; please report it")
    })?;
    let l = Listener::adopt(p.name.clone(), Socket::from(i.fd), i.addr);
    if i.kind == SockKind::Other {
        warn!(
            "inherited socket {} ({}) is of a kind relaunch does not know; passing it on as is",
            l.name,
            l.address()
        );
    }
    Ok(l)
}

/// Whether the socket the fd store kept (at `got`) serves the listener
/// that wants `want`: the same place or, for a bare port (`--port P`), which
/// bind interception moves to the address the app binds, the same port.
fn stored_fits(p: &Planned, want: &Addr, got: &Addr) -> bool {
    let port = |a: &Addr| match a {
        Addr::Inet {
            proto: Proto::Tcp,
            port,
            ..
        } => Some(*port),
        _ => None,
    };
    spec::same_place(want, got)
        || (p.bare_port() && port(want).is_some() && port(want) == port(got))
}

/// Whether a socket the fd store gave back listens where it was bound,
/// listening again if it does not: a socket that is not listening refuses
/// every client. false: it cannot (a TCP socket shut down has lost its
/// port, and a listen would pick another), so it is bound afresh.
fn listening(name: &str, fd: &std::os::fd::OwnedFd, backlog: i32) -> bool {
    let sock = socket2::SockRef::from(fd);
    if sock.is_listener().unwrap_or(false) {
        return true;
    }
    let before = sock.local_addr().ok().and_then(|a| a.as_socket());
    let again = sock.listen(backlog).and_then(|()| {
        let after = sock.local_addr()?.as_socket();
        if before.is_none_or(|b| b.port() == 0) || after != before {
            return Err(std::io::Error::other("it had lost its address"));
        }
        Ok(())
    });
    match again {
        Ok(()) => {
            info!(
                "{name}: the socket kept in systemd's fd store was not listening; listening on it again"
            );
            true
        }
        Err(e) => {
            warn!(
                "{name}: the socket kept in systemd's fd store is not listening and cannot listen again ({e})"
            );
            false
        }
    }
}

/// Binds `addr`; for TCP and UDP, a held port falls back to the first free port of `fallback`.
pub fn bind(
    name: String,
    spec: &ListenSpec,
    backlog: i32,
    fallback: &[u16],
    group: Option<Membership>,
) -> Result<Listener> {
    let addr = &spec.addr;
    match addr {
        Addr::Inet { proto, host, port } => {
            let group = group.filter(|_| *proto == Proto::Tcp);
            bind_inet(name, *proto, host, *port, backlog, fallback, group)
        }
        Addr::Unix(path) => bind_unix_path(name, path, &spec.unix, backlog),
        Addr::UnixAbstract(bytes) => {
            // A leading NUL is how sockaddr_un names the abstract namespace.
            let mut raw = vec![0u8];
            raw.extend_from_slice(bytes);
            let sock_addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))
                .map_err(|e| Error::usage(format!("invalid abstract socket name: {e}")))?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(os_err("socket"))?;
            let shown = addr.to_string();
            sock.bind(&sock_addr).map_err(|e| {
                if e.raw_os_error() == Some(libc::EADDRINUSE) {
                    Error::runtime(format!("{shown} is already in use"))
                        .hint(format!("see who holds it: relaunch who {shown}"))
                } else {
                    Error::runtime(format!("cannot bind {shown}: {e}"))
                }
            })?;
            sock.listen(backlog).map_err(os_err("listen"))?;
            Ok(Listener::adopt(name, sock, Some(addr.clone())))
        }
    }
}

fn bind_inet(
    name: String,
    proto: Proto,
    host: &Host,
    port: u16,
    backlog: i32,
    fallback: &[u16],
    group: Option<Membership>,
) -> Result<Listener> {
    let ty = match proto {
        Proto::Tcp => Type::STREAM,
        Proto::Udp => Type::DGRAM,
    };
    let ip = match host {
        Host::Any => None,
        Host::Ip(ip) => Some(*ip),
        Host::Name(n) => Some(resolve(n, port)?.ip()),
    };
    let shown = |p: u16| SocketAddr::new(ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), p);
    let err = match bind_port(ip, port, ty, backlog, group) {
        Ok(sock) => return finish(name, proto, sock),
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::EADDRINUSE) || fallback.is_empty() {
        return Err(bind_error(proto, shown(port), err));
    }
    let holder = holder_of(proto, ip, port).unwrap_or_else(|| "another process".into());
    for &p in fallback.iter().filter(|&&p| p != port) {
        match bind_port(ip, p, ty, backlog, group) {
            Ok(sock) => {
                warn!("{name}: port {port} is held by {holder}; using fallback port {p}");
                return finish(name, proto, sock);
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
            Err(e) => return Err(bind_error(proto, shown(p), e)),
        }
    }
    let e = bind_error(proto, shown(port), err);
    Err(
        Error::runtime(format!("{} (and every fallback port is in use too)", e.msg))
            .hint(e.hint.unwrap_or_default()),
    )
}

/// Binds one port: the given address, or every interface ([::] dual-stack,
/// 0.0.0.0 where IPv6 is off).
fn bind_port(
    ip: Option<IpAddr>,
    port: u16,
    ty: Type,
    backlog: i32,
    group: Option<Membership>,
) -> std::io::Result<Socket> {
    match ip {
        Some(ip) => try_bind(SocketAddr::new(ip, port), ty, backlog, group),
        None => match try_bind(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ty,
            backlog,
            group,
        ) {
            Err(e) if ipv6_unavailable(&e) => try_bind(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                ty,
                backlog,
                group,
            ),
            other => other,
        },
    }
}

fn finish(name: String, proto: Proto, sock: Socket) -> Result<Listener> {
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| Error::runtime("cannot read the bound address"))?;
    let addr = Addr::Inet {
        proto,
        host: Host::Ip(local.ip()),
        port: local.port(),
    };
    Ok(Listener::adopt(name, sock, Some(addr)))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::usage(format!("cannot resolve host {host:?}: {e}"))
                .hint("use an IP address such as 127.0.0.1 or [::1]")
        })?
        .collect();
    // Prefer IPv4 for names like localhost: every client tries it.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::usage(format!("host {host:?} has no address")))
}

/// A TCP listener made as a member of a SO_REUSEPORT group: created as
/// `owner` (None: relaunch's own fsuid), which is who may join the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub owner: Option<u32>,
}

/// Binds (and, for a stream, listens on) `addr`; as a group member when
/// `group` says so.
fn try_bind(
    addr: SocketAddr,
    ty: Type,
    backlog: i32,
    group: Option<Membership>,
) -> std::io::Result<Socket> {
    if let Some(m) = group.filter(|_| ty == Type::STREAM) {
        // A first member joins whatever group is there: another relaunch's,
        // if it chose the same owner. A listener on an address this one
        // covers, or that covers it, means "in use".
        let overlaps = |l: &SocketAddr| {
            let (a, b) = (l.ip().to_canonical(), addr.ip().to_canonical());
            a == b || a.is_unspecified() || b.is_unspecified()
        };
        if addr.port() != 0
            && steer::foreign_listeners(addr.port(), &[])?
                .iter()
                .any(overlaps)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        return steer::member(addr, m.owner, backlog);
    }
    let sock = Socket::new(Domain::for_address(addr), ty, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(!addr.ip().is_unspecified())?;
    }
    sock.bind(&addr.into())?;
    if ty == Type::STREAM {
        sock.listen(backlog)?;
    }
    Ok(sock)
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

fn bind_error(proto: Proto, addr: SocketAddr, e: std::io::Error) -> Error {
    let port = addr.port();
    let shown = match proto {
        Proto::Tcp => addr.to_string(),
        Proto::Udp => format!("udp:{addr}"),
    };
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            let ip = (!addr.ip().is_unspecified()).then(|| addr.ip());
            let msg = match holder_of(proto, ip, port) {
                Some(h) => format!("port {port} is already in use by {h}"),
                None => format!("port {port} ({shown}) is already in use"),
            };
            Error::runtime(msg).hint(format!(
                "stop that process, pick another port, or give --fallback; `relaunch who {port}` lists every holder"
            ))
        }
        Some(libc::EACCES) if port < 1024 => Error::runtime(format!(
            "cannot bind {shown}: permission denied (ports below 1024 are privileged)"
        ))
        .hint("let a systemd .socket unit bind it and pass it on, or grant CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep relaunch)"),
        Some(libc::EADDRNOTAVAIL) => Error::runtime(format!(
            "cannot bind {shown}: that address does not belong to this machine"
        ))
        .hint("use an address shown by `ip addr`, or * / [::] for every interface"),
        _ => Error::runtime(format!("cannot bind {shown}: {e}")),
    }
}

/// "pid 1234 (python3 app.py)", from /proc.
fn holder_of(proto: Proto, ip: Option<IpAddr>, port: u16) -> Option<String> {
    let target = who::Target::Inet {
        ip,
        port,
        udp_too: proto == Proto::Udp,
    };
    who::lookup(&target)
        .ok()
        .and_then(|r| who::holder_phrase(&r))
}

/// systemd's `SocketMode=` default.
const DEFAULT_UNIX_MODE: u32 = 0o666;

fn bind_unix_path(name: String, path: &Path, opts: &UnixOptions, backlog: i32) -> Result<Listener> {
    let label = format!("unix:{}", path.display());
    let access = file::Access {
        mode: opts.mode.unwrap_or(DEFAULT_UNIX_MODE),
        owner: opts
            .owner
            .as_deref()
            .map(|o| uid_of("owner=", o).map(|u| u.as_raw()))
            .transpose()?,
        group: opts
            .group
            .as_deref()
            .map(|g| gid_of("group=", g).map(|g| g.as_raw()))
            .transpose()?,
    };
    let role = file::Role {
        label: &label,
        elsewhere: "choose another path",
        in_use: "stop that process or choose another path",
    };
    let (socket, file) = file::bind(path, &access, &role)?;
    // After the owner is set, so nobody connects through looser permissions.
    socket.listen(backlog).map_err(os_err("listen"))?;
    Ok(Listener {
        name,
        socket,
        addr: Some(Addr::Unix(path.to_path_buf())),
        _file: Some(file),
        nonblock: false,
    })
}

fn os_err(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::runtime(format!("{what} failed: {e}"))
}

/// `--ports-file`: name -> bound address, for scripts; written whole or not
/// at all, and removed when dropped (on exit) if it is still the file we wrote.
pub struct PortsFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl PortsFile {
    pub fn write(path: &Path, listeners: &[Listener]) -> Result<PortsFile> {
        use std::io::Write;
        let map: serde_json::Map<String, serde_json::Value> = listeners
            .iter()
            .map(|l| (l.name.clone(), l.address().into()))
            .collect();
        let text = serde_json::to_string_pretty(&map).unwrap_or_default() + "\n";
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            let m = f.metadata()?;
            std::fs::rename(&tmp, path)?;
            Ok((m.dev(), m.ino()))
        });
        match written {
            Ok(identity) => Ok(PortsFile {
                path: path.to_path_buf(),
                identity,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(
                    Error::runtime(format!("cannot write --ports-file {}: {e}", path.display()))
                        .hint("check that its folder exists and is writable"),
                )
            }
        }
    }
}

impl PortsFile {
    /// The path and the (device, inode) it must still name to be removed.
    pub fn identity(&self) -> (PathBuf, (u64, u64)) {
        (self.path.clone(), self.identity)
    }

    /// The file an earlier image of relaunch wrote (see `supervise::handover`).
    pub fn adopt(path: PathBuf, identity: (u64, u64)) -> PortsFile {
        PortsFile { path, identity }
    }
}

impl Drop for PortsFile {
    fn drop(&mut self) {
        file::remove_if_ours(&self.path, self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn open_adopts_inherited_first_then_binds_with_typed_addresses() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let inherited =
            vec![crate::plan::inherit::adopt(held.into_raw_fd(), "web".into()).unwrap()];
        let spec = crate::plan::spec::parse("udp:127.0.0.1:0").unwrap();
        let plan = [
            Planned {
                name: "web".into(),
                source: Source::Inherited(0),
            },
            Planned {
                name: "dns".into(),
                source: Source::Bind {
                    spec,
                    fallback: Vec::new(),
                },
            },
        ];
        let l = open(&plan, inherited.into_iter().map(Some).collect(), 16, None)
            .unwrap()
            .listeners;
        assert_eq!(l[0].name, "web");
        assert_eq!(l[0].address(), format!("127.0.0.1:{port}"));
        assert_eq!(l[0].named(3).port(), Some(port));
        let Some(Addr::Inet {
            proto: Proto::Udp,
            port: bound,
            ..
        }) = l[1].addr
        else {
            panic!("not UDP: {:?}", l[1].addr);
        };
        assert_ne!(bound, 0, "the bound port, not the asked one");
        assert_eq!(l[1].address(), format!("udp:127.0.0.1:{bound}"));
    }

    /// `--port P`'s socket as the fd store gives it back after bind
    /// interception moved it to the app's address (127.0.0.1:P): reused, not
    /// bound afresh (the port would close until then).
    #[test]
    fn a_stored_bare_port_is_reused_wherever_it_moved() {
        let kept = tcp("127.0.0.1:0", true);
        let port = kept.local_addr().unwrap().as_socket().unwrap().port();
        let inode = nix::sys::stat::fstat(&kept).unwrap().st_ino;
        let opened = open(&stored(port), vec![Some(back(kept))], 16, None).unwrap();
        assert!(opened.stale.is_empty(), "{:?}", opened.stale);
        assert!(opened.bound_here.is_empty());
        let l = &opened.listeners[0];
        assert_eq!(nix::sys::stat::fstat(&l.socket).unwrap().st_ino, inode);
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    /// A stored socket that does not listen is listened on; one that cannot
    /// listen where it was bound (a TCP socket shut down lost its port) is
    /// dropped from the store and the port bound afresh.
    #[test]
    fn a_stored_socket_listens_where_it_was_bound_or_is_bound_afresh() {
        let kept = tcp("127.0.0.1:0", false);
        let port = kept.local_addr().unwrap().as_socket().unwrap().port();
        let opened = open(&stored(port), vec![Some(back(kept))], 16, None).unwrap();
        assert!(opened.stale.is_empty(), "{:?}", opened.stale);
        assert!(opened.listeners[0].socket.is_listener().unwrap());
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(opened);

        // The port is free between the shutdown and the bind: another test
        // binding port 0 meanwhile may take it, then try another. The kept
        // socket is on the wildcard so that the kernel picks a port free on
        // every address: one picked for 127.0.0.1 may have a client's
        // TIME_WAIT on another, which the fresh wildcard bind collides with.
        let (port, opened) = (0..5)
            .find_map(|_| {
                let kept = tcp("0.0.0.0:0", true);
                let port = kept.local_addr().unwrap().as_socket().unwrap().port();
                // SAFETY: shutdown on our own socket.
                unsafe { libc::shutdown(kept.as_raw_fd(), libc::SHUT_RDWR) };
                Some((
                    port,
                    open(&stored(port), vec![Some(back(kept))], 16, None).ok()?,
                ))
            })
            .expect("five ports in a row taken between shutdown and bind");
        assert_eq!(opened.stale, ["relaunch.http"]);
        assert_eq!(opened.bound_here, [0]);
        let l = &opened.listeners[0];
        assert_eq!(
            l.socket.local_addr().unwrap().as_socket().unwrap().port(),
            port
        );
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    fn tcp(at: &str, listen: bool) -> Socket {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&at.parse::<SocketAddr>().unwrap().into()).unwrap();
        if listen {
            s.listen(16).unwrap();
        }
        s
    }

    fn back(s: Socket) -> Inherited {
        crate::plan::inherit::adopt(s.into_raw_fd(), "relaunch.http".into()).unwrap()
    }

    /// `--port P` with the fd store's socket at index 0.
    fn stored(port: u16) -> [Planned; 1] {
        let plan = [Planned {
            name: "http".into(),
            source: Source::Stored {
                index: 0,
                spec: crate::plan::spec::parse(&port.to_string()).unwrap(),
                fallback: Vec::new(),
            },
        }];
        assert!(plan[0].bare_port());
        plan
    }
}
