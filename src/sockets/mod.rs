//! Binding the listeners relaunch holds for its whole life.
//!
//! Every socket is created close-on-exec and blocking (systemd's default, so
//! every generation of an app sees the same mode; apps that want non-blocking
//! set it themselves). TCP and UDP get SO_REUSEADDR (so a port in TIME_WAIT
//! binds) and never SO_REUSEPORT (which would let another process share the
//! port). Stream sockets listen with `--backlog`, SOMAXCONN by default.
//!
//! Unix socket files: a stale file (nothing accepts on it) is replaced, a live
//! one is an error, and a file relaunch created is removed when relaunch
//! exits, but only if it is still the same file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::plan::inherit::{Inherited, SockKind};
use crate::plan::options::{gid_of, uid_of};
use crate::plan::placeholders::{self, Named};
use crate::plan::spec::{Addr, Host, ListenSpec, Proto, UnixOptions};
use crate::plan::{Planned, Source};
use crate::who;

pub struct Listener {
    pub name: String,
    pub socket: Socket,
    /// The bound address; None for an inherited socket without one we can name.
    pub addr: Option<Addr>,
    /// The Unix socket file we created: (path, (dev, inode)), removed on drop.
    created: Option<(PathBuf, (u64, u64))>,
}

impl Listener {
    pub fn adopt(name: String, socket: Socket, addr: Option<Addr>) -> Self {
        Listener {
            name,
            socket,
            addr,
            created: None,
        }
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

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, identity)) = &self.created {
            remove_if_ours(path, *identity);
        }
    }
}

/// The listeners of the plan, in its order: inherited sockets adopted, the
/// others bound.
pub fn open(plan: &[Planned], inherited: Vec<Inherited>, backlog: i32) -> Result<Vec<Listener>> {
    let mut inherited: Vec<Option<Inherited>> = inherited.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(plan.len());
    for p in plan {
        out.push(match &p.source {
            Source::Inherited(i) => {
                let i = inherited.get_mut(*i).and_then(Option::take).ok_or_else(|| {
                    Error::runtime(format!("{}: the plan names an inherited socket that is not there", p.name))
                        .hint("this is a bug in relaunch; please report it")
                })?;
                let l = Listener::adopt(p.name.clone(), Socket::from(i.fd), i.addr);
                if i.kind == SockKind::Other {
                    warn!("inherited socket {} ({}) is of a kind relaunch does not know; passing it on as is", l.name, l.address());
                }
                l
            }
            Source::Bind { spec, fallback } => bind(p.name.clone(), spec, backlog, fallback)?,
        });
    }
    Ok(out)
}

/// Binds `addr`; for TCP and UDP, a held port falls back to the first free port of `fallback`.
pub fn bind(name: String, spec: &ListenSpec, backlog: i32, fallback: &[u16]) -> Result<Listener> {
    let addr = &spec.addr;
    match addr {
        Addr::Inet { proto, host, port } => bind_inet(name, *proto, host, *port, backlog, fallback),
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
    let err = match bind_port(ip, port, ty, backlog) {
        Ok(sock) => return finish(name, proto, sock),
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::EADDRINUSE) || fallback.is_empty() {
        return Err(bind_error(proto, shown(port), err));
    }
    let holder = holder_of(proto, ip, port).unwrap_or_else(|| "another process".into());
    for &p in fallback.iter().filter(|&&p| p != port) {
        match bind_port(ip, p, ty, backlog) {
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
fn bind_port(ip: Option<IpAddr>, port: u16, ty: Type, backlog: i32) -> std::io::Result<Socket> {
    match ip {
        Some(ip) => try_bind(SocketAddr::new(ip, port), ty, backlog),
        None => match try_bind(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ty,
            backlog,
        ) {
            Err(e) if ipv6_unavailable(&e) => try_bind(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                ty,
                backlog,
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

fn try_bind(addr: SocketAddr, ty: Type, backlog: i32) -> std::io::Result<Socket> {
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
    let shown = format!("unix:{}", path.display());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::runtime(format!(
            "cannot bind {shown}: folder {} does not exist",
            dir.display()
        ))
        .hint(format!(
            "create it first (mkdir -p {}), or use RuntimeDirectory= in the systemd unit",
            dir.display()
        )));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::runtime(format!(
                "cannot bind {shown}: the path exists and is not a socket"
            ))
            .hint("remove it or choose another path"));
        }
        match probe(path) {
            Ok(Probe::Live(_)) => {
                let holder = who::lookup(&who::Target::Unix(path.display().to_string()))
                    .ok()
                    .and_then(|r| who::holder_phrase(&r));
                let by = holder.map(|h| format!(" by {h}")).unwrap_or_default();
                return Err(Error::runtime(format!("{shown} is already in use{by}"))
                    .hint("stop that process or choose another path"));
            }
            // Nobody accepts: a leftover from a process that died.
            Ok(Probe::Stale) => std::fs::remove_file(path).map_err(|e| {
                Error::runtime(format!(
                    "cannot remove stale socket {}: {e}",
                    path.display()
                ))
            })?,
            Ok(Probe::Gone) => {}
            // EACCES and the like say nothing about liveness: never unlink then.
            Err(e) => {
                return Err(Error::runtime(format!(
                    "cannot tell whether {shown} is in use ({e}), so relaunch leaves it alone"
                ))
                .hint("remove the file yourself if it is stale, or choose another path"));
            }
        }
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(os_err("socket"))?;
    let addr = SockAddr::unix(path)
        .map_err(|e| Error::usage(format!("invalid socket path {}: {e}", path.display())))?;
    sock.bind(&addr)
        .map_err(|e| Error::runtime(format!("cannot bind {shown}: {e}")))?;
    let identity = std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or_default();
    // Owned from here, so an error below still removes the file.
    let created = Listener {
        name,
        socket: sock,
        addr: Some(Addr::Unix(path.to_path_buf())),
        created: Some((path.to_path_buf(), identity)),
    };
    // Before listen(), so nobody connects through looser permissions.
    set_access(path, opts)?;
    created.socket.listen(backlog).map_err(os_err("listen"))?;
    Ok(created)
}

fn set_access(path: &Path, opts: &UnixOptions) -> Result<()> {
    use nix::unistd::chown;
    use std::os::unix::fs::PermissionsExt;
    let mode = opts.mode.unwrap_or(DEFAULT_UNIX_MODE);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::runtime(format!("cannot chmod {} to {mode:o}: {e}", path.display())))?;
    let uid = opts
        .owner
        .as_deref()
        .map(|o| uid_of("owner=", o))
        .transpose()?;
    let gid = opts
        .group
        .as_deref()
        .map(|g| gid_of("group=", g))
        .transpose()?;
    if uid.is_some() || gid.is_some() {
        chown(path, uid, gid).map_err(|e| {
            Error::runtime(format!("cannot chown {}: {e}", path.display()))
                .hint("owner= and group= need relaunch to run as root")
        })?;
    }
    Ok(())
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

impl Drop for PortsFile {
    fn drop(&mut self) {
        remove_if_ours(&self.path, self.identity);
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
pub fn probe(path: &Path) -> std::io::Result<Probe> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Non-blocking so a live relaunch with a full backlog can't hang us.
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => {
            let pid = getsockopt(&socket, PeerCredentials)
                .ok()
                .map(|c| c.pid())
                .filter(|&p| p > 0);
            Ok(Probe::Live(pid))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Probe::Live(None)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Probe::Stale),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(e) => Err(e),
    }
}

/// Removes `path` if it still names the file we created.
pub fn remove_if_ours(path: &Path, identity: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == identity => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), "cannot remove socket file: {e}");
            }
        }
        Ok(_) => {
            debug!(path = %path.display(), "socket file was replaced by someone else; leaving it")
        }
        Err(_) => {}
    }
}
