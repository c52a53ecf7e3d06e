//! The listen-spec grammar (`-l [NAME=]SPEC`). Pure: no sockets here.
//!
//! ```text
//! -l [NAME=]SPEC
//! SPEC  = [tcp:]ADDR | udp:ADDR | unix:PATH | unix:@NAME
//! ADDR  = PORT | :PORT | *:PORT | HOST:PORT | [IPV6]:PORT
//! HOST  = an IPv4 literal or a host name such as `localhost`
//! ```
//!
//! - `PORT`, `:PORT` and `*:PORT` mean every interface (`Host::Any`).
//! - A bare IPv6 address (`::1:80`) is refused: brackets are required.
//! - `unix:@NAME` is always the abstract namespace; write a relative path
//!   that starts with `@` as `unix:./@file`.
//! - A host named `tcp`, `udp` or `unix` needs the `tcp:` prefix
//!   (`tcp:unix:80`), since `unix:80` is a socket path.
//! - Port 0 is allowed in a spec (the kernel picks one); `--port` uses
//!   `parse_port(s, false)`, which refuses it.
//! - NAME: the text before the first `=` is a name only when it has no `:`,
//!   so `unix:/tmp/a=b.sock` is a path, not a name. Names follow systemd's
//!   `fdname_is_valid`: 1..=255 bytes of printable ASCII (0x20..=0x7e), no `:`.
//! - Default names (`default_name`): an unnamed listener is called `http` if
//!   it is TCP, `udp` if UDP, `unix` if a Unix socket; when that name is
//!   already taken, `2`, `3`, ... is appended (`http2`, `http3`).
//! - `Display for Addr` prints the spec form, which `parse` reads back to the
//!   same value: `127.0.0.1:80`, `[::1]:80`, `*:80`, `udp:127.0.0.1:53`,
//!   `unix:/run/x.sock`, `unix:@name`.
//!
//! - A Unix socket file may be followed by options:
//!   `unix:/run/app.sock,mode=0660,owner=www-data,group=www-data`. The file
//!   gets `mode` (octal; default 0666, as systemd's `SocketMode=`), and is
//!   chowned to `owner`/`group` (names or numbers) before it accepts.
//! - Any listener may end in `,nonblock` (systemd's `NonBlocking=`): it is
//!   handed to each child in non-blocking mode (`127.0.0.1:8080,nonblock`).
//!   A Unix path that itself ends in `,nonblock` needs another spelling.
//!
//! Errors are plain strings that say what is wrong with which part, e.g.
//! `invalid listen spec "1.2.3.4.5:80": "1.2.3.4.5" is not an IP address or host name`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Every interface: `[::]` dual-stack, `0.0.0.0` where IPv6 is off.
    Any,
    Ip(IpAddr),
    /// A name such as `localhost`, resolved when binding.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Inet {
        proto: Proto,
        host: Host,
        port: u16,
    },
    Unix(PathBuf),
    /// Linux abstract namespace; the name without the leading `@`.
    UnixAbstract(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// `,mode=`, `,owner=`, `,group=` after a Unix socket path.
    pub unix: UnixOptions,
    /// `,nonblock`: handed to the children with O_NONBLOCK set.
    pub nonblock: bool,
    pub name: Option<String>,
    pub addr: Addr,
}

/// `sun_path` is 108 bytes; a path needs its terminating NUL, an abstract
/// name its leading NUL.
const MAX_UNIX_PATH: usize = 107;
const MAX_NAME: usize = 255;
const FORMS: &str = "use PORT, HOST:PORT, [IPV6]:PORT, udp:HOST:PORT or unix:PATH";

/// Parse one `-l [NAME=]SPEC` argument.
pub fn parse(s: &str) -> Result<ListenSpec, String> {
    let bad = |why: String| format!("invalid listen spec {s:?}: {why}");
    if s.is_empty() {
        return Err(bad(format!("empty ({FORMS}, e.g. 8080)")));
    }
    let (name, spec) = match s.split_once('=') {
        Some((name, spec)) if !name.contains(':') => (Some(name), spec),
        _ => (None, s),
    };
    if let Some(name) = name {
        if name.is_empty() {
            return Err(bad(
                "empty name before \"=\" (write NAME=SPEC, e.g. web=8080, or drop the \"=\")"
                    .into(),
            ));
        }
        if let Err(why) = name_problem(name) {
            return Err(bad(format!("invalid name before \"=\": {why}")));
        }
        if spec.is_empty() {
            return Err(bad(format!("missing address after \"{name}=\" ({FORMS})")));
        }
    }
    let (spec, unix, nonblock) = split_options(spec).map_err(bad)?;
    let addr = parse_addr(spec).map_err(|why| {
        // `a:b=80` reads as an address; say so, since the user meant a name.
        match s.split_once('=') {
            Some((before, _))
                if name.is_none() && !["unix:", "tcp:", "udp:"].iter().any(|p| before.starts_with(p)) =>
            {
                bad(format!(
                "{why} (a listener name cannot contain \":\", so {before:?} was read as part of the address)"
            ))
            }
            _ => bad(why),
        }
    })?;
    if unix != UnixOptions::default() && !matches!(addr, Addr::Unix(_)) {
        return Err(bad(
            "mode=, owner= and group= apply only to unix:PATH socket files".into(),
        ));
    }
    Ok(ListenSpec {
        name: name.map(str::to_string),
        addr,
        unix,
        nonblock,
    })
}

/// Who may connect to a Unix socket file relaunch creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixOptions {
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Takes trailing `,nonblock`, `,mode=…`, `,owner=…`, `,group=…` off a
/// spec; anything else after a comma stays part of the path.
fn split_options(spec: &str) -> Result<(&str, UnixOptions, bool), String> {
    let mut opts = UnixOptions::default();
    let mut nonblock = false;
    let mut rest = spec;
    while let Some((head, tail)) = rest.rsplit_once(',') {
        if tail == "nonblock" {
            nonblock = true;
            rest = head;
            continue;
        }
        let Some((key, value)) = tail.split_once('=') else {
            break;
        };
        let slot = match key {
            "mode" => {
                let mode = u32::from_str_radix(value, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        format!("mode={value:?} is not an octal file mode such as 0660")
                    })?;
                opts.mode.get_or_insert(mode);
                rest = head;
                continue;
            }
            "owner" => &mut opts.owner,
            "group" => &mut opts.group,
            _ => break,
        };
        if value.is_empty() {
            return Err(format!("{key}= needs a user or group name, or a number"));
        }
        slot.get_or_insert(value.to_string());
        rest = head;
    }
    Ok((rest, opts, nonblock))
}

/// Parse a port number; `allow_zero` lets the kernel pick one.
pub fn parse_port(s: &str, allow_zero: bool) -> Result<u16, String> {
    port_problem(s, allow_zero).map_err(|why| format!("invalid port {s:?}: {why}"))
}

/// A name systemd would accept in `LISTEN_FDNAMES` (its `fdname_is_valid`).
pub fn validate_name(name: &str) -> Result<(), String> {
    name_problem(name).map_err(|why| format!("invalid listener name {name:?}: {why}"))
}

/// Two listeners may not share a name or an address.
pub fn check_unique(specs: &[ListenSpec]) -> Result<(), String> {
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[i + 1..] {
            if let (Some(na), Some(nb)) = (&a.name, &b.name)
                && na == nb
            {
                return Err(format!(
                    "listener name {na:?} is used twice: by {} and by {} (give each -l its own NAME=)",
                    a.addr, b.addr
                ));
            }
            // Port 0 asks for a fresh ephemeral port each time: never a duplicate.
            let ephemeral = matches!(a.addr, Addr::Inet { port: 0, .. });
            if a.addr == b.addr && !ephemeral {
                return Err(format!(
                    "listen address {} is given twice: {} and {} (remove one -l)",
                    a.addr,
                    describe(a),
                    describe(b)
                ));
            }
        }
    }
    Ok(())
}

/// The name of an unnamed listener: `http`, `udp` or `unix`, then `http2`,
/// `http3`, ... when taken.
pub fn default_name(addr: &Addr, taken: &[String]) -> String {
    let base = match addr {
        Addr::Inet {
            proto: Proto::Tcp, ..
        } => "http",
        Addr::Inet {
            proto: Proto::Udp, ..
        } => "udp",
        Addr::Unix(_) | Addr::UnixAbstract(_) => "unix",
    };
    let is_taken = |n: &str| taken.iter().any(|t| t == n);
    if !is_taken(base) {
        return base.to_string();
    }
    (2u64..)
        .map(|i| format!("{base}{i}"))
        .find(|n| !is_taken(n))
        .unwrap_or_else(|| base.to_string())
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet { proto, host, port } => {
                match (proto, host) {
                    (Proto::Udp, _) => f.write_str("udp:")?,
                    // Without it, `unix:80` would read back as a path.
                    (Proto::Tcp, Host::Name(n)) if ["tcp", "udp", "unix"].contains(&n.as_str()) => {
                        f.write_str("tcp:")?
                    }
                    _ => {}
                }
                match host {
                    Host::Any => write!(f, "*:{port}"),
                    Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{port}"),
                    Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{port}"),
                    Host::Name(name) => write!(f, "{name}:{port}"),
                }
            }
            // `unix:@x` would mean the abstract name; `./@x` is the same file.
            Addr::Unix(path) if path.as_os_str().as_encoded_bytes().starts_with(b"@") => {
                write!(f, "unix:./{}", path.display())
            }
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
            Addr::UnixAbstract(name) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
        }
    }
}

fn describe(spec: &ListenSpec) -> String {
    match &spec.name {
        Some(n) => format!("as {n:?}"),
        None => "unnamed".to_string(),
    }
}

fn parse_addr(spec: &str) -> Result<Addr, String> {
    if let Some(rest) = spec.strip_prefix("unix:") {
        return parse_unix(rest);
    }
    let (proto, rest, prefix) = if let Some(rest) = spec.strip_prefix("tcp:") {
        (Proto::Tcp, rest, "tcp:")
    } else if let Some(rest) = spec.strip_prefix("udp:") {
        (Proto::Udp, rest, "udp:")
    } else {
        (Proto::Tcp, spec, "")
    };
    if rest.is_empty() {
        return Err(format!("missing port after {prefix:?}"));
    }
    let (host, port) = split_host_port(rest)?;
    Ok(Addr::Inet { proto, host, port })
}

fn split_host_port(s: &str) -> Result<(Host, u16), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let Some((ip_text, after)) = inner.split_once(']') else {
            return Err(format!("missing \"]\" in {s:?}"));
        };
        let bracketed = format!("[{ip_text}]");
        let Ok(ip) = ip_text.parse::<Ipv6Addr>() else {
            return Err(format!("{bracketed:?} is not an IPv6 address"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(if after.is_empty() {
                format!("missing \":PORT\" after {bracketed:?}")
            } else {
                format!("unexpected {after:?} after {bracketed:?} (expected \":PORT\")")
            });
        };
        return Ok((
            Host::Ip(IpAddr::V6(ip)),
            spec_port(port, &format!("{bracketed}:"))?,
        ));
    }
    let Some((host_text, port)) = s.rsplit_once(':') else {
        // No colon: the whole thing must be a port.
        if !s.starts_with('-') && !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?} is not a port number ({FORMS})"));
        }
        return Ok((Host::Any, spec_port(s, "")?));
    };
    if host_text.contains(':') {
        if host_text.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "an IPv6 address needs brackets: use \"[{host_text}]:{port}\""
            ));
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "an IPv6 address needs brackets and a port: use \"[{s}]:PORT\""
            ));
        }
        return Err(format!("{host_text:?} is not an IP address or host name"));
    }
    let host = match host_text {
        "" | "*" => Host::Any,
        h => match h.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) if is_host_name(h) => Host::Name(h.to_string()),
            Err(_) => return Err(format!("{h:?} is not an IP address or host name")),
        },
    };
    Ok((host, spec_port(port, &format!("{host_text}:"))?))
}

fn spec_port(port: &str, before: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("missing port after {before:?}"));
    }
    port_problem(port, true).map_err(|why| format!("port {port:?} is {why}"))
}

fn parse_unix(rest: &str) -> Result<Addr, String> {
    if rest.is_empty() {
        return Err("missing socket path after \"unix:\"".into());
    }
    if rest.contains('\0') {
        return Err("a Unix socket path cannot contain a NUL byte".into());
    }
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err("missing abstract socket name after \"unix:@\"".into());
        }
        if name.len() > MAX_UNIX_PATH - 1 {
            return Err(format!(
                "abstract socket name is {} bytes; the limit is {} (use a shorter name)",
                name.len(),
                MAX_UNIX_PATH - 1
            ));
        }
        return Ok(Addr::UnixAbstract(name.as_bytes().to_vec()));
    }
    if rest.len() > MAX_UNIX_PATH {
        return Err(format!(
            "socket path is {} bytes; Unix socket paths are limited to {MAX_UNIX_PATH} (use a shorter path)",
            rest.len()
        ));
    }
    Ok(Addr::Unix(PathBuf::from(rest)))
}

/// RFC 1123 labels (plus `_`, common in container service names); the last
/// label may not be all digits, so `1.2.3.4.5` is not taken for a name.
fn is_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    h.split('.').all(label_ok)
        && !h
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Why `s` is not a port; the phrase reads after "invalid port: " and after
/// "port X is" (0 is only refused by `parse_port`).
fn port_problem(s: &str, allow_zero: bool) -> Result<u16, String> {
    let range = if allow_zero {
        "0 to 65535"
    } else {
        "1 to 65535"
    };
    if s.is_empty() {
        return Err(format!("empty (use a number from {range})"));
    }
    if let Some(digits) = s.strip_prefix('-')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("negative (use a number from {range})"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a number (use a number from {range})"));
    }
    let significant = s.trim_start_matches('0');
    if significant.len() > 5 {
        return Err("greater than 65535".into());
    }
    let n: u32 = significant.parse().unwrap_or(0);
    if n > 65535 {
        return Err("greater than 65535".into());
    }
    if n == 0 && !allow_zero {
        return Err("port 0 is not allowed here (use a number from 1 to 65535)".into());
    }
    Ok(n as u16)
}

/// Why `name` is not a valid fd name, as a phrase that reads after a colon.
fn name_problem(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{} bytes long; the limit is {MAX_NAME}",
            name.len()
        ));
    }
    if name.contains(':') {
        return Err("contains \":\", which separates names in LISTEN_FDNAMES".into());
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(if c.is_ascii() {
            format!(
                "contains the control character 0x{:02x} (use printable ASCII)",
                c as u32
            )
        } else {
            format!("contains the non-ASCII character {c:?} (use printable ASCII)")
        });
    }
    Ok(())
}

/// Whether a socket bound at `got` is what `want` asks for: the same path
/// or name, or the same protocol and port (any port for port 0) on the
/// same address (any unspecified one for `Any`; a host name is taken at
/// its word, as resolving it would be a guess).
pub fn same_place(want: &Addr, got: &Addr) -> bool {
    match (want, got) {
        (
            Addr::Inet {
                proto: p1,
                host,
                port: want_port,
            },
            Addr::Inet {
                proto: p2,
                host: got_host,
                port: got_port,
            },
        ) => {
            let host_ok = match (host, got_host) {
                (Host::Any, Host::Ip(ip)) => ip.is_unspecified(),
                (Host::Ip(a), Host::Ip(b)) => a == b,
                (Host::Name(_), _) => true,
                (a, b) => a == b,
            };
            p1 == p2 && host_ok && (*want_port == 0 || want_port == got_port)
        }
        (Addr::Unix(a), Addr::Unix(b)) => a == b,
        (Addr::UnixAbstract(a), Addr::UnixAbstract(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_options() {
        use super::*;
        let s = parse("admin=unix:/run/a,b.sock,mode=0660,owner=www-data,group=33").unwrap();
        assert_eq!(s.addr, Addr::Unix(PathBuf::from("/run/a,b.sock")));
        assert_eq!(
            s.unix,
            UnixOptions {
                mode: Some(0o660),
                owner: Some("www-data".into()),
                group: Some("33".into()),
            }
        );
        assert_eq!(parse("unix:/x,mode=660").unwrap().unix.mode, Some(0o660));
        assert_eq!(
            parse("unix:/x,mode=999").unwrap_err(),
            "invalid listen spec \"unix:/x,mode=999\": mode=\"999\" is not an octal file mode such as 0660"
        );
        assert_eq!(
            parse("unix:/x,owner=").unwrap_err(),
            "invalid listen spec \"unix:/x,owner=\": owner= needs a user or group name, or a number"
        );
        assert!(parse("127.0.0.1:80,mode=0600").is_err());
        assert!(!s.nonblock);
        assert!(
            parse("unix:@abs,mode=0600")
                .unwrap_err()
                .contains("apply only to unix:PATH")
        );
    }

    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn tcp(host: Host, port: u16) -> Addr {
        Addr::Inet {
            proto: Proto::Tcp,
            host,
            port,
        }
    }
    fn udp(host: Host, port: u16) -> Addr {
        Addr::Inet {
            proto: Proto::Udp,
            host,
            port,
        }
    }
    fn v4(a: u8, b: u8, c: u8, d: u8) -> Host {
        Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }
    fn v6(s: &str) -> Host {
        Host::Ip(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()))
    }
    fn named(n: &str) -> Host {
        Host::Name(n.to_string())
    }

    #[test]
    fn good_specs() {
        let table: Vec<(&str, Option<&str>, Addr)> = vec![
            ("80", None, tcp(Host::Any, 80)),
            ("0", None, tcp(Host::Any, 0)),
            ("65535", None, tcp(Host::Any, 65535)),
            ("0080", None, tcp(Host::Any, 80)),
            (":80", None, tcp(Host::Any, 80)),
            ("*:80", None, tcp(Host::Any, 80)),
            ("127.0.0.1:8080", None, tcp(v4(127, 0, 0, 1), 8080)),
            ("0.0.0.0:80", None, tcp(v4(0, 0, 0, 0), 80)),
            ("localhost:80", None, tcp(named("localhost"), 80)),
            (
                "my_svc.example.com:443",
                None,
                tcp(named("my_svc.example.com"), 443),
            ),
            ("[::1]:80", None, tcp(v6("::1"), 80)),
            ("[::]:0", None, tcp(v6("::"), 0)),
            ("[::ffff:1.2.3.4]:80", None, tcp(v6("::ffff:1.2.3.4"), 80)),
            ("tcp:80", None, tcp(Host::Any, 80)),
            ("tcp:*:80", None, tcp(Host::Any, 80)),
            ("tcp:127.0.0.1:80", None, tcp(v4(127, 0, 0, 1), 80)),
            ("tcp:[::1]:80", None, tcp(v6("::1"), 80)),
            ("tcp:unix:80", None, tcp(named("unix"), 80)),
            ("udp:53", None, udp(Host::Any, 53)),
            ("udp::53", None, udp(Host::Any, 53)),
            ("udp:127.0.0.1:53", None, udp(v4(127, 0, 0, 1), 53)),
            ("udp:[::1]:53", None, udp(v6("::1"), 53)),
            ("udp:localhost:53", None, udp(named("localhost"), 53)),
            ("unix:/run/x.sock", None, Addr::Unix("/run/x.sock".into())),
            ("unix:rel.sock", None, Addr::Unix("rel.sock".into())),
            (
                "unix:/tmp/a=b.sock",
                None,
                Addr::Unix("/tmp/a=b.sock".into()),
            ),
            ("unix:@name", None, Addr::UnixAbstract(b"name".to_vec())),
            ("unix:@a=b", None, Addr::UnixAbstract(b"a=b".to_vec())),
            ("web=8080", Some("web"), tcp(Host::Any, 8080)),
            ("web=[::1]:80", Some("web"), tcp(v6("::1"), 80)),
            ("dns=udp:53", Some("dns"), udp(Host::Any, 53)),
            (
                "api=unix:/run/api.sock",
                Some("api"),
                Addr::Unix("/run/api.sock".into()),
            ),
            ("a b=80", Some("a b"), tcp(Host::Any, 80)),
        ];
        for (input, name, addr) in table {
            let got = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.name.as_deref(), name, "{input}");
            assert_eq!(got.addr, addr, "{input}");
        }
    }

    #[test]
    fn bad_specs() {
        let long_name = "n".repeat(256);
        let long_spec = format!("{long_name}=80");
        let long_path = format!("unix:/{}", "p".repeat(107));
        let table: Vec<(&str, String)> = vec![
            ("", "invalid listen spec \"\": empty (use PORT, HOST:PORT, [IPV6]:PORT, udp:HOST:PORT or unix:PATH, e.g. 8080)".into()),
            ("unix:", "invalid listen spec \"unix:\": missing socket path after \"unix:\"".into()),
            ("unix:@", "invalid listen spec \"unix:@\": missing abstract socket name after \"unix:@\"".into()),
            (&long_path, format!("invalid listen spec \"{long_path}\": socket path is 108 bytes; Unix socket paths are limited to 107 (use a shorter path)")),
            ("http=", "invalid listen spec \"http=\": missing address after \"http=\" (use PORT, HOST:PORT, [IPV6]:PORT, udp:HOST:PORT or unix:PATH)".into()),
            ("=80", "invalid listen spec \"=80\": empty name before \"=\" (write NAME=SPEC, e.g. web=8080, or drop the \"=\")".into()),
            ("1.2.3.4.5:80", "invalid listen spec \"1.2.3.4.5:80\": \"1.2.3.4.5\" is not an IP address or host name".into()),
            ("-bad-:80", "invalid listen spec \"-bad-:80\": \"-bad-\" is not an IP address or host name".into()),
            ("[::1", "invalid listen spec \"[::1\": missing \"]\" in \"[::1\"".into()),
            ("[::1]", "invalid listen spec \"[::1]\": missing \":PORT\" after \"[::1]\"".into()),
            ("[::1]:", "invalid listen spec \"[::1]:\": missing port after \"[::1]:\"".into()),
            ("[::1]x", "invalid listen spec \"[::1]x\": unexpected \"x\" after \"[::1]\" (expected \":PORT\")".into()),
            ("[1.2.3.4]:80", "invalid listen spec \"[1.2.3.4]:80\": \"[1.2.3.4]\" is not an IPv6 address".into()),
            ("localhost:", "invalid listen spec \"localhost:\": missing port after \"localhost:\"".into()),
            ("abc", "invalid listen spec \"abc\": \"abc\" is not a port number (use PORT, HOST:PORT, [IPV6]:PORT, udp:HOST:PORT or unix:PATH)".into()),
            ("-1", "invalid listen spec \"-1\": port \"-1\" is negative (use a number from 0 to 65535)".into()),
            ("65536", "invalid listen spec \"65536\": port \"65536\" is greater than 65535".into()),
            ("99999999999999999999", "invalid listen spec \"99999999999999999999\": port \"99999999999999999999\" is greater than 65535".into()),
            ("host:http", "invalid listen spec \"host:http\": port \"http\" is not a number (use a number from 0 to 65535)".into()),
            ("::1:80", "invalid listen spec \"::1:80\": an IPv6 address needs brackets: use \"[::1]:80\"".into()),
            ("fe80::1", "invalid listen spec \"fe80::1\": an IPv6 address needs brackets and a port: use \"[fe80::1]:PORT\"".into()),
            ("tcp:", "invalid listen spec \"tcp:\": missing port after \"tcp:\"".into()),
            ("udp:", "invalid listen spec \"udp:\": missing port after \"udp:\"".into()),
            // Only the first "=" ends a name.
            ("x=y=unix:/z", "invalid listen spec \"x=y=unix:/z\": \"y=unix\" is not an IP address or host name".into()),
            ("name:with:colon=80", "invalid listen spec \"name:with:colon=80\": \"name:with\" is not an IP address or host name (a listener name cannot contain \":\", so \"name:with:colon\" was read as part of the address)".into()),
            (&long_spec, format!("invalid listen spec \"{long_spec}\": invalid name before \"=\": 256 bytes long; the limit is 255")),
            ("a\u{7}b=80", "invalid listen spec \"a\\u{7}b=80\": invalid name before \"=\": contains the control character 0x07 (use printable ASCII)".into()),
            ("caf\u{e9}=80", "invalid listen spec \"caf\u{e9}=80\": invalid name before \"=\": contains the non-ASCII character '\u{e9}' (use printable ASCII)".into()),
        ];
        for (input, want) in &table {
            match parse(input) {
                Ok(got) => panic!("{input:?} parsed as {got:?}, want error {want:?}"),
                Err(e) => assert_eq!(&e, want, "for {input:?}"),
            }
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080", false), Ok(8080));
        assert_eq!(parse_port("0", true), Ok(0));
        let bad = [
            (
                "0",
                "invalid port \"0\": port 0 is not allowed here (use a number from 1 to 65535)",
            ),
            ("65536", "invalid port \"65536\": greater than 65535"),
            (
                "",
                "invalid port \"\": empty (use a number from 1 to 65535)",
            ),
            (
                "+80",
                "invalid port \"+80\": not a number (use a number from 1 to 65535)",
            ),
            (
                " 80",
                "invalid port \" 80\": not a number (use a number from 1 to 65535)",
            ),
            (
                "-5",
                "invalid port \"-5\": negative (use a number from 1 to 65535)",
            ),
        ];
        for (input, want) in bad {
            assert_eq!(parse_port(input, false), Err(want.to_string()), "{input:?}");
        }
    }

    #[test]
    fn names() {
        for ok in ["http", "a b", "x", &"n".repeat(255), "!~"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok:?}");
        }
        let bad = [
            ("", "invalid listener name \"\": empty"),
            (
                "a:b",
                "invalid listener name \"a:b\": contains \":\", which separates names in LISTEN_FDNAMES",
            ),
            (
                "a\tb",
                "invalid listener name \"a\\tb\": contains the control character 0x09 (use printable ASCII)",
            ),
            (
                "a\u{7f}",
                "invalid listener name \"a\\u{7f}\": contains the control character 0x7f (use printable ASCII)",
            ),
        ];
        for (input, want) in bad {
            assert_eq!(validate_name(input), Err(want.to_string()), "{input:?}");
        }
        assert_eq!(
            validate_name(&"n".repeat(256)),
            Err(format!(
                "invalid listener name \"{}\": 256 bytes long; the limit is 255",
                "n".repeat(256)
            ))
        );
    }

    #[test]
    fn unique() {
        let spec = |s: &str| parse(s).unwrap();
        assert_eq!(
            check_unique(&[spec("80"), spec("a=81"), spec("b=udp:80")]),
            Ok(())
        );
        assert_eq!(check_unique(&[]), Ok(()));
        assert_eq!(
            check_unique(&[spec("a=127.0.0.1:0"), spec("b=127.0.0.1:0")]),
            Ok(())
        );
        assert_eq!(
            check_unique(&[spec("web=80"), spec("x=1"), spec("web=unix:/w")]),
            Err("listener name \"web\" is used twice: by *:80 and by unix:/w (give each -l its own NAME=)".into())
        );
        assert_eq!(
            check_unique(&[spec("a=:80"), spec("*:80")]),
            Err("listen address *:80 is given twice: as \"a\" and unnamed (remove one -l)".into())
        );
        assert_eq!(
            check_unique(&[spec("unix:/r/x"), spec("b=unix:/r//x")]),
            Err(
                "listen address unix:/r/x is given twice: unnamed and as \"b\" (remove one -l)"
                    .into()
            )
        );
    }

    #[test]
    fn default_names() {
        let taken = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = tcp(Host::Any, 80);
        assert_eq!(default_name(&t, &[]), "http");
        assert_eq!(default_name(&t, &taken(&["http"])), "http2");
        assert_eq!(
            default_name(&t, &taken(&["http2", "http", "http3"])),
            "http4"
        );
        assert_eq!(default_name(&udp(Host::Any, 53), &taken(&["http"])), "udp");
        assert_eq!(default_name(&Addr::Unix("/x".into()), &[]), "unix");
        assert_eq!(
            default_name(&Addr::UnixAbstract(b"x".to_vec()), &taken(&["unix"])),
            "unix2"
        );
    }

    #[test]
    fn display() {
        let table = [
            (tcp(v4(127, 0, 0, 1), 80), "127.0.0.1:80"),
            (tcp(v6("::1"), 80), "[::1]:80"),
            (tcp(Host::Any, 80), "*:80"),
            (tcp(named("localhost"), 80), "localhost:80"),
            (tcp(named("unix"), 80), "tcp:unix:80"),
            (udp(v4(127, 0, 0, 1), 53), "udp:127.0.0.1:53"),
            (udp(Host::Any, 53), "udp:*:53"),
            (Addr::Unix("/run/x.sock".into()), "unix:/run/x.sock"),
            (Addr::UnixAbstract(b"name".to_vec()), "unix:@name"),
        ];
        assert_eq!(Addr::Unix("@x".into()).to_string(), "unix:./@x");
        for (addr, want) in table {
            assert_eq!(addr.to_string(), want);
            assert_eq!(parse(want).map(|s| s.addr), Ok(addr), "{want}");
        }
    }

    fn host_strategy() -> impl Strategy<Value = Host> {
        prop_oneof![
            Just(Host::Any),
            any::<Ipv4Addr>().prop_map(|ip| Host::Ip(IpAddr::V4(ip))),
            any::<Ipv6Addr>().prop_map(|ip| Host::Ip(IpAddr::V6(ip))),
            "[a-z]([a-z0-9_-]{0,8}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,8}[a-z0-9])?){0,2}"
                .prop_map(Host::Name),
        ]
    }

    fn addr_strategy() -> impl Strategy<Value = Addr> {
        prop_oneof![
            (host_strategy(), any::<u16>()).prop_map(|(h, p)| tcp(h, p)),
            (host_strategy(), any::<u16>()).prop_map(|(h, p)| udp(h, p)),
            "[a-zA-Z0-9_.=:/-][a-zA-Z0-9_.=@:/-]{0,59}".prop_map(|p| Addr::Unix(p.into())),
            "[a-zA-Z0-9_.=@:/-]{1,60}".prop_map(|n| Addr::UnixAbstract(n.into_bytes())),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_spec_like_text(s in "[a-z0-9:\\[\\]@=*./-]{0,30}") {
            let _ = parse(&s);
        }

        #[test]
        fn display_round_trips(addr in addr_strategy()) {
            let text = addr.to_string();
            prop_assert_eq!(parse(&text).map(|s| s.addr), Ok(addr), "{}", text);
        }

        #[test]
        fn named_display_round_trips(
            name in "[ -9;<>-~]{1,20}",
            addr in addr_strategy(),
        ) {
            let text = format!("{name}={addr}");
            let want = ListenSpec {
                name: Some(name),
                addr,
                unix: UnixOptions::default(),
                nonblock: false,
            };
            prop_assert_eq!(parse(&text), Ok(want), "{}", text);
        }
    }

    #[test]
    fn nonblock_on_any_listener() {
        let s = parse("web=127.0.0.1:80,nonblock").unwrap();
        assert_eq!((s.name.as_deref(), s.nonblock), (Some("web"), true));
        assert_eq!(s.addr, tcp(Host::Ip(Ipv4Addr::LOCALHOST.into()), 80));
        assert!(parse("udp:[::1]:53,nonblock").unwrap().nonblock);
        assert!(parse("unix:@abs,nonblock").unwrap().nonblock);
        let s = parse("unix:/run/a.sock,nonblock,mode=0600").unwrap();
        assert_eq!(s.addr, Addr::Unix(PathBuf::from("/run/a.sock")));
        assert_eq!((s.nonblock, s.unix.mode), (true, Some(0o600)));
        let s = parse("unix:/run/a.sock,mode=0600,nonblock").unwrap();
        assert_eq!((s.nonblock, s.unix.mode), (true, Some(0o600)));
        assert!(!parse("8080").unwrap().nonblock);
        // Only the exact word: anything else stays what it was.
        assert!(parse("8080,nonblocking").is_err());
        assert_eq!(
            parse("unix:/run/a,nonblocking").unwrap().addr,
            Addr::Unix(PathBuf::from("/run/a,nonblocking"))
        );
    }

    #[test]
    fn same_place_matches_what_a_spec_asks() {
        let a = |s: &str| parse(s).unwrap().addr;
        let got = |s: &str| parse(s).unwrap().addr;
        assert!(same_place(&a(":8000"), &got("[::]:8000")));
        assert!(same_place(&a(":8000"), &got("0.0.0.0:8000")));
        assert!(!same_place(&a(":8000"), &got("127.0.0.1:8000")));
        assert!(!same_place(&a(":8000"), &got("[::]:8001")));
        assert!(same_place(&a("127.0.0.1:0"), &got("127.0.0.1:41234")));
        assert!(!same_place(&a("udp:127.0.0.1:53"), &got("127.0.0.1:53")));
        assert!(same_place(&a("localhost:80"), &got("127.0.0.1:80")));
        assert!(same_place(&a("unix:/run/a.sock"), &got("unix:/run/a.sock")));
        assert!(!same_place(
            &a("unix:/run/a.sock"),
            &got("unix:/run/b.sock")
        ));
        assert!(!same_place(&a("unix:@x"), &got("unix:/x")));
    }
}
