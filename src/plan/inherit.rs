//! What systemd (or another launcher) handed us: the `LISTEN_*` protocol as
//! relaunch reads it (sd_listen_fds(3)).
//!
//! - `LISTEN_FDS=N`: N sockets at fds 3, 4, ..., 3+N-1. No `LISTEN_FDS`
//!   means nothing was passed. N must be a plain decimal count from 0 to
//!   `MAX_FDS` (4096, far above any real socket unit); anything else is an
//!   error, not a silent "no sockets".
//! - `LISTEN_PID`: the pid the fds are meant for. If it is set and is not
//!   ours, the fds belong to someone else (a parent that forgot to unset the
//!   variables) and we take nothing: `parse` returns `None` and the caller
//!   logs it. If it is missing we still take the fds, as chained launchers
//!   (e.g. a wrapper that cannot know our pid) leave it out. A value that is
//!   not a pid is an error.
//! - `LISTEN_FDNAMES=a:b:...`: one name per fd. Missing means every fd is
//!   called `unknown` (systemd's default); an empty entry (`a::b`) is also
//!   `unknown`. A count that differs from `LISTEN_FDS` is an error, as is a
//!   name systemd itself would refuse (`spec::validate_name`).
//!
//! `parse` is pure. `take` is the OS layer: for each announced fd it checks
//! that the fd is open and is a socket, marks it close-on-exec at once (so no
//! child sees it unless we pass it on), takes ownership as an `OwnedFd`, and
//! reads its type, family and local address. Neither touches the process
//! environment: the caller passes a snapshot, and builds fresh `LISTEN_*`
//! values for each child.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::stat::{SFlag, fstat};
use socket2::{Domain, SockRef, Type};

use crate::error::{Error, Result};
use crate::plan::spec::{self, Addr, Host, Proto};

/// How relaunch names the listeners it keeps in systemd's fd store
/// (`FDSTORE=1`, `FDNAME=relaunch.<listener>`). After a crash, systemd hands
/// them back among `LISTEN_FDS`; the prefix tells them from the sockets of
/// a `.socket` unit: those are the unit's, passed on as they come, while a
/// stored one is reused only by the listener of that name, if its address
/// still fits, instead of binding.
pub const STORE_PREFIX: &str = "relaunch.";

/// The first fd of the protocol (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: i32 = 3;
/// More than this many announced fds is taken as a corrupt environment.
pub const MAX_FDS: u32 = 4096;

/// The `LISTEN_*` variables as found in the environment snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenEnv {
    pub fds: Option<String>,
    pub pid: Option<String>,
    pub names: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    Tcp,
    Udp,
    Unix,
    UnixDgram,
    Other,
}

/// One inherited socket, owned by us from now on.
#[derive(Debug)]
pub struct Inherited {
    pub fd: OwnedFd,
    pub name: String,
    pub kind: SockKind,
    /// The local address; None when it has none we can name (an unnamed
    /// Unix socket, another family).
    pub addr: Option<Addr>,
}

const FIX: &str = "fix the socket unit or the launcher that set it, or unset LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES";

/// Which fds (from 3) were passed to us, and their names. `None`: nothing
/// was passed to this process.
pub fn parse(env: &ListenEnv, my_pid: u32) -> Result<Option<Vec<(i32, String)>>, String> {
    let Some(fds) = &env.fds else {
        return Ok(None);
    };
    if !for_pid(env.pid.as_deref(), my_pid)? {
        return Ok(None);
    }
    let count = fd_count(fds)?;
    let names = fd_names(env.names.as_deref(), count, fds)?;
    Ok(Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (FIRST_FD + i as i32, n))
            .collect(),
    ))
}

/// Whether LISTEN_PID (if set) names `my_pid`.
fn for_pid(pid: Option<&str>, my_pid: u32) -> Result<bool, String> {
    let Some(pid) = pid else {
        return Ok(true);
    };
    match digits_value(pid) {
        Some(p) if p > 0 && p <= u64::from(u32::MAX) => Ok(p == u64::from(my_pid)),
        _ => Err(format!(
            "LISTEN_PID={pid:?} is not a process id; it must be the pid the sockets are for ({FIX})"
        )),
    }
}

/// LISTEN_FDS as a count of at most MAX_FDS.
fn fd_count(fds: &str) -> Result<usize, String> {
    match digits_value(fds) {
        Some(n) if n <= u64::from(MAX_FDS) => Ok(n as usize),
        Some(_) => Err(format!(
            "LISTEN_FDS={fds:?} is more than {MAX_FDS} file descriptors; it must be the number of sockets passed ({FIX})"
        )),
        None => {
            let why = if fds.starts_with('-') {
                "is negative"
            } else {
                "is not a number"
            };
            Err(format!(
                "LISTEN_FDS={fds:?} {why}; it must be the number of sockets passed, like \"2\" ({FIX})"
            ))
        }
    }
}

/// LISTEN_FDNAMES, one valid name per fd; "unknown" where it is unset or empty.
fn fd_names(names: Option<&str>, count: usize, fds: &str) -> Result<Vec<String>, String> {
    match names {
        None => Ok(vec!["unknown".to_string(); count]),
        Some(s) if s.is_empty() && count == 0 => Ok(Vec::new()),
        Some(s) => {
            let names: Vec<&str> = s.split(':').collect();
            if names.len() != count {
                return Err(format!(
                    "LISTEN_FDNAMES={s:?} has {} names but LISTEN_FDS={fds:?}; there must be one name per fd ({FIX})",
                    names.len()
                ));
            }
            names
                .iter()
                .enumerate()
                .map(|(i, n)| match *n {
                    "" => Ok("unknown".to_string()),
                    n => spec::validate_name(n).map(|()| n.to_string()).map_err(|e| {
                        format!(
                            "LISTEN_FDNAMES entry {} (fd {}): {e} ({FIX})",
                            i + 1,
                            FIRST_FD as usize + i
                        )
                    }),
                })
                .collect()
        }
    }
}

/// Take every socket announced in `env`; call it once, early. Ownership
/// contract: the fds named by a valid `LISTEN_*` for this pid are ours by
/// protocol; nothing else in the process may hold them.
pub fn take(env: &ListenEnv, my_pid: u32) -> Result<Vec<Inherited>> {
    let listed = parse(env, my_pid).map_err(|msg| {
        Error::usage(msg).hint(
            "LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES are set by systemd socket units \
             (systemd.socket(5)) or systemd-socket-activate; check the unit, or unset them to \
             let relaunch bind its own sockets",
        )
    })?;
    let Some(listed) = listed else {
        if let (Some(fds), Some(pid)) = (&env.fds, &env.pid) {
            tracing::info!(
                listen_fds = fds,
                listen_pid = pid,
                my_pid,
                "ignoring LISTEN_FDS: LISTEN_PID is another process"
            );
        }
        return Ok(Vec::new());
    };
    // Close-on-exec for all first, so an error on a later fd cannot leave an
    // earlier one leaking into children of whoever handles the error.
    for (fd, _) in &listed {
        set_cloexec(*fd);
    }
    listed
        .into_iter()
        .map(|(fd, name)| adopt(fd, name))
        .collect()
}

/// Validate one announced fd and take ownership of it. On error the fd is
/// left untouched (not closed). The caller promises nothing else owns `fd`.
pub fn adopt(fd: i32, name: String) -> Result<Inherited> {
    let hint = "check the socket unit (systemd.socket(5)) or the launcher that set LISTEN_FDS";
    if fd < 0 || !set_cloexec(fd) {
        return Err(Error::usage(format!(
            "LISTEN_FDS announced fd {fd} ({name:?}) but it is not open"
        ))
        .hint(hint));
    }
    // SAFETY: fcntl just succeeded on `fd`, so it is open; the borrow does
    // not outlive this function and nothing closes the fd meanwhile.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed).map_err(|e| {
        Error::runtime(format!("cannot inspect inherited fd {fd} ({name:?}): {e}")).hint(hint)
    })?;
    let file_type = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if file_type != SFlag::S_IFSOCK {
        return Err(Error::usage(format!(
            "LISTEN_FDS announced fd {fd} ({name:?}) but it is not a socket (it is {})",
            file_kind(file_type)
        ))
        .hint(hint));
    }
    // SAFETY: `fd` is open, is a socket, and was handed to this process by
    // the LISTEN_FDS protocol; the caller guarantees no one else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (kind, addr) = describe(&owned);
    let local = crate::plan::placeholders::shown(addr.as_ref());
    let sock = SockRef::from(&owned);
    if matches!(kind, SockKind::Tcp | SockKind::Unix) && !sock.is_listener().unwrap_or(true) {
        tracing::warn!(fd, name, local, "inherited stream socket is not listening");
    }
    tracing::debug!(fd, name, ?kind, local, "inherited socket");
    Ok(Inherited {
        fd: owned,
        name,
        kind,
        addr,
    })
}

/// Set FD_CLOEXEC; false if the fd is not open.
fn set_cloexec(fd: i32) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: F_GETFD/F_SETFD only read and set a flag; on a closed fd they
    // fail with EBADF and touch nothing.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) >= 0
    }
}

/// The socket's kind and its local address.
fn describe(fd: &OwnedFd) -> (SockKind, Option<Addr>) {
    let sock = SockRef::from(fd);
    let domain = sock.domain().ok();
    let ty = sock.r#type().ok();
    let kind = match (domain, ty) {
        (Some(Domain::IPV4 | Domain::IPV6), Some(Type::STREAM)) => SockKind::Tcp,
        (Some(Domain::IPV4 | Domain::IPV6), Some(Type::DGRAM)) => SockKind::Udp,
        (Some(Domain::UNIX), Some(Type::STREAM)) => SockKind::Unix,
        (Some(Domain::UNIX), Some(Type::DGRAM)) => SockKind::UnixDgram,
        _ => SockKind::Other,
    };
    let Ok(addr) = sock.local_addr() else {
        return (kind, None);
    };
    let addr = if let Some(sa) = addr.as_socket() {
        let proto = if kind == SockKind::Udp {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        Some(Addr::Inet {
            proto,
            host: Host::Ip(sa.ip()),
            port: sa.port(),
        })
    } else if let Some(path) = addr.as_pathname() {
        Some(Addr::Unix(path.to_path_buf()))
    } else {
        addr.as_abstract_namespace()
            .map(|name| Addr::UnixAbstract(name.to_vec()))
    };
    (kind, addr)
}

/// Some(n) for a plain decimal (digits only, no sign), saturating at
/// `u64::MAX`; None otherwise.
fn digits_value(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

fn file_kind(t: SFlag) -> &'static str {
    match t {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a known file type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(i: &Inherited) -> String {
        crate::plan::placeholders::shown(i.addr.as_ref())
    }
    use std::io::Write;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr as UnixAddr;

    fn env(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> ListenEnv {
        ListenEnv {
            fds: fds.map(str::to_string),
            pid: pid.map(str::to_string),
            names: names.map(str::to_string),
        }
    }
    fn fds(list: &[(i32, &str)]) -> Option<Vec<(i32, String)>> {
        Some(list.iter().map(|(f, n)| (*f, n.to_string())).collect())
    }

    #[test]
    fn parse_accepts() {
        let table = [
            (env(None, None, None), None),
            (env(None, Some("42"), Some("a")), None),
            (env(Some("2"), Some("99"), None), None), // not ours
            (env(Some("garbage"), Some("99"), None), None), // not ours: not our business
            (
                env(Some("2"), Some("42"), None),
                fds(&[(3, "unknown"), (4, "unknown")]),
            ),
            (env(Some("1"), None, None), fds(&[(3, "unknown")])), // chained launcher
            (env(Some("0"), Some("42"), None), fds(&[])),
            (env(Some("0"), Some("42"), Some("")), fds(&[])),
            (
                env(Some("2"), Some("42"), Some("web:dns")),
                fds(&[(3, "web"), (4, "dns")]),
            ),
            (
                env(Some("3"), Some("42"), Some("a::b")),
                fds(&[(3, "a"), (4, "unknown"), (5, "b")]),
            ),
            (env(Some("1"), Some("42"), Some("")), fds(&[(3, "unknown")])),
            (
                env(Some("1"), Some("42"), Some("with space")),
                fds(&[(3, "with space")]),
            ),
            (
                env(Some("4096"), Some("42"), None),
                Some((3..4099).map(|f| (f, "unknown".to_string())).collect()),
            ),
        ];
        for (e, want) in table {
            assert_eq!(parse(&e, 42), Ok(want), "{e:?}");
        }
    }

    #[test]
    fn parse_refuses() {
        let fix = FIX;
        let table = [
            (
                env(Some("abc"), Some("42"), None),
                format!(
                    "LISTEN_FDS=\"abc\" is not a number; it must be the number of sockets passed, like \"2\" ({fix})"
                ),
            ),
            (
                env(Some(""), None, None),
                format!(
                    "LISTEN_FDS=\"\" is not a number; it must be the number of sockets passed, like \"2\" ({fix})"
                ),
            ),
            (
                env(Some(" 2"), None, None),
                format!(
                    "LISTEN_FDS=\" 2\" is not a number; it must be the number of sockets passed, like \"2\" ({fix})"
                ),
            ),
            (
                env(Some("-1"), Some("42"), None),
                format!(
                    "LISTEN_FDS=\"-1\" is negative; it must be the number of sockets passed, like \"2\" ({fix})"
                ),
            ),
            (
                env(Some("4097"), None, None),
                format!(
                    "LISTEN_FDS=\"4097\" is more than 4096 file descriptors; it must be the number of sockets passed ({fix})"
                ),
            ),
            (
                env(Some("99999999999999999999999"), None, None),
                format!(
                    "LISTEN_FDS=\"99999999999999999999999\" is more than 4096 file descriptors; it must be the number of sockets passed ({fix})"
                ),
            ),
            (
                env(Some("1"), Some("99999999999"), None),
                format!(
                    "LISTEN_PID=\"99999999999\" is not a process id; it must be the pid the sockets are for ({fix})"
                ),
            ),
            (
                env(Some("1"), Some("x"), None),
                format!(
                    "LISTEN_PID=\"x\" is not a process id; it must be the pid the sockets are for ({fix})"
                ),
            ),
            (
                env(Some("1"), Some("0"), None),
                format!(
                    "LISTEN_PID=\"0\" is not a process id; it must be the pid the sockets are for ({fix})"
                ),
            ),
            (
                env(Some("1"), Some("-42"), None),
                format!(
                    "LISTEN_PID=\"-42\" is not a process id; it must be the pid the sockets are for ({fix})"
                ),
            ),
            (
                env(Some("1"), Some(""), None),
                format!(
                    "LISTEN_PID=\"\" is not a process id; it must be the pid the sockets are for ({fix})"
                ),
            ),
            (
                env(Some("2"), Some("42"), Some("a")),
                format!(
                    "LISTEN_FDNAMES=\"a\" has 1 names but LISTEN_FDS=\"2\"; there must be one name per fd ({fix})"
                ),
            ),
            (
                env(Some("1"), Some("42"), Some("a:b")),
                format!(
                    "LISTEN_FDNAMES=\"a:b\" has 2 names but LISTEN_FDS=\"1\"; there must be one name per fd ({fix})"
                ),
            ),
            (
                env(Some("0"), Some("42"), Some("a")),
                format!(
                    "LISTEN_FDNAMES=\"a\" has 1 names but LISTEN_FDS=\"0\"; there must be one name per fd ({fix})"
                ),
            ),
            (
                env(Some("2"), Some("42"), Some("ok:b\u{1}d")),
                format!(
                    "LISTEN_FDNAMES entry 2 (fd 4): invalid listener name \"b\\u{{1}}d\": contains the control character 0x01 (use printable ASCII) ({fix})"
                ),
            ),
        ];
        for (e, want) in table {
            assert_eq!(parse(&e, 42), Err(want), "{e:?}");
        }
    }

    #[test]
    fn take_without_listen_fds_takes_nothing() {
        let got = take(&ListenEnv::default(), std::process::id()).unwrap();
        assert!(got.is_empty());
        let not_ours = env(Some("1"), Some("1"), None);
        assert!(take(&not_ours, 2).unwrap().is_empty());
    }

    #[test]
    fn take_reports_bad_env_as_usage_error() {
        let err = take(&env(Some("x"), None, None), 1).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.msg.starts_with("LISTEN_FDS=\"x\" is not a number"),
            "{}",
            err.msg
        );
        assert!(
            err.hint
                .as_deref()
                .unwrap_or("")
                .contains("systemd.socket(5)")
        );
    }

    fn is_cloexec(fd: i32) -> bool {
        // SAFETY: reads a flag of an fd the test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    }
    fn clear_cloexec(fd: i32) {
        // SAFETY: clears a flag of an fd the test owns.
        assert!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0);
        assert!(!is_cloexec(fd));
    }

    #[test]
    fn adopts_tcp_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fd = l.into_raw_fd();
        clear_cloexec(fd); // as systemd hands it over
        let got = adopt(fd, "web".into()).unwrap();
        assert_eq!(got.fd.as_raw_fd(), fd);
        assert!(is_cloexec(fd));
        assert_eq!(got.name, "web");
        assert_eq!(got.kind, SockKind::Tcp);
        assert_eq!(shown(&got), format!("127.0.0.1:{port}"));
    }

    #[test]
    fn adopts_udp_v6_and_unix_sockets() {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = u.local_addr().unwrap().port();
        let got = adopt(u.into_raw_fd(), "dns".into()).unwrap();
        assert_eq!(
            (got.kind, shown(&got)),
            (SockKind::Udp, format!("udp:0.0.0.0:{port}"))
        );

        if let Ok(l) = std::net::TcpListener::bind("[::1]:0") {
            let port = l.local_addr().unwrap().port();
            let got = adopt(l.into_raw_fd(), "v6".into()).unwrap();
            assert_eq!(
                (got.kind, shown(&got)),
                (SockKind::Tcp, format!("[::1]:{port}"))
            );
        }

        let dir = std::env::temp_dir().join(format!("relaunch-inherit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let got = adopt(l.into_raw_fd(), "api".into()).unwrap();
        assert_eq!(
            (got.kind, shown(&got)),
            (SockKind::Unix, format!("unix:{}", path.display()))
        );
        let _ = std::fs::remove_dir_all(&dir);

        let name = format!("relaunch-inherit-test-{}", std::process::id());
        let addr = <UnixAddr as SocketAddrExt>::from_abstract_name(name.as_bytes()).unwrap();
        let d = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let got = adopt(d.into_raw_fd(), "dg".into()).unwrap();
        assert_eq!(
            (got.kind, shown(&got)),
            (SockKind::UnixDgram, format!("unix:@{name}"))
        );
    }

    #[test]
    fn refuses_regular_file_and_leaves_it_open() {
        let mut file = std::fs::File::from(tempfile_fd().expect("a temporary file"));
        let fd = file.as_raw_fd();
        let err = adopt(fd, "web".into()).unwrap_err();
        assert_eq!(
            err.msg,
            format!(
                "LISTEN_FDS announced fd {fd} (\"web\") but it is not a socket (it is a regular file)"
            )
        );
        assert_eq!(err.exit_code(), 2);
        assert!(err.hint.is_some());
        // Still ours and still open: adopt did not take it.
        file.write_all(b"still open").unwrap();
    }

    #[test]
    fn refuses_pipe_and_closed_fd() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let fd = r.as_raw_fd();
        let err = adopt(fd, "p".into()).unwrap_err();
        assert_eq!(
            err.msg,
            format!("LISTEN_FDS announced fd {fd} (\"p\") but it is not a socket (it is a pipe)")
        );
        // No fd numbered i32::MAX can be open (RLIMIT_NOFILE is far lower).
        let err = adopt(i32::MAX, "gone".into()).unwrap_err();
        assert_eq!(
            err.msg,
            format!(
                "LISTEN_FDS announced fd {} (\"gone\") but it is not open",
                i32::MAX
            )
        );
        let err = adopt(-1, "neg".into()).unwrap_err();
        assert_eq!(
            err.msg,
            "LISTEN_FDS announced fd -1 (\"neg\") but it is not open"
        );
    }

    /// An unlinked temporary file, so nothing is left behind.
    fn tempfile_fd() -> std::io::Result<OwnedFd> {
        let path = std::env::temp_dir().join(format!(
            "relaunch-inherit-file-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(f.into())
    }

    proptest::proptest! {
        /// Whatever the environment says, parsing answers; and what it
        /// accepts is a well-formed list: fds 3.., valid names, one per fd.
        #[test]
        fn listen_env_never_panics(
            fds in proptest::option::of(".{0,12}"),
            pid in proptest::option::of(".{0,12}"),
            names in proptest::option::of(".{0,40}"),
            count in 0u32..6,
            named in proptest::bool::ANY,
        ) {
            let _ = parse(&ListenEnv { fds, pid, names }, 4242);
            let good = ListenEnv {
                fds: Some(count.to_string()),
                pid: Some("4242".into()),
                names: named.then(|| (0..count).map(|i| format!("n{i}")).collect::<Vec<_>>().join(":")),
            };
            let got = parse(&good, 4242).unwrap().unwrap();
            proptest::prop_assert_eq!(got.len(), count as usize);
            for (i, (fd, name)) in got.iter().enumerate() {
                proptest::prop_assert_eq!(*fd, 3 + i as i32);
                proptest::prop_assert!(crate::plan::spec::validate_name(name).is_ok());
            }
        }
    }
}
