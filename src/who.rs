//! Who holds a port or a Unix socket path, read from `/proc` only (no lsof/ss).
//!
//! Contract:
//! - [`parse_target`] reads `PORT`, `:PORT`, `*:PORT`, `IP:PORT`, `[IPv6]:PORT`,
//!   `udp:…` / `tcp:…` in front of any of those, `unix:PATH` and `unix:@name`.
//!   `udp_too` means UDP sockets are looked at as well as TCP ones.
//! - [`lookup`] reports the sockets that block a bind of the target: TCP
//!   sockets in LISTEN, UDP sockets that are bound (state 07), Unix sockets
//!   that listen (`__SO_ACCEPTCON`) or are bound datagram sockets. It names the
//!   processes holding them by scanning `/proc/PID/fd`, and counts TIME_WAIT
//!   and ESTABLISHED connections whose local end is the target (for Unix: the
//!   connected sockets on that path). Processes whose fds we may not read are
//!   counted, not guessed at.
//! - Matching an address: no IP matches any local address; an IP matches
//!   itself and the wildcards that block its bind: `0.0.0.0` blocks IPv4
//!   addresses, `::` blocks everything (we cannot see IPV6_V6ONLY, so assume
//!   dual-stack). A wildcard target is blocked by any address of its family,
//!   `::` by every address. IPv4-mapped IPv6 addresses count as IPv4.
//! - Nothing here kills, signals or changes anything.
//!
//! Parsing of each `/proc` format is pure and tested on sample text; the
//! functions that read `/proc` are at the end, before `run`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cli::WhoArgs;
use crate::error::{Error, Result};
use crate::proc::{
    self, InetEntry, Link, SO_ACCEPTCON, SOCK_DGRAM, SS_CONNECTED, TCP_ESTABLISHED, TCP_LISTEN,
    TCP_TIME_WAIT, UDP_BOUND, UnixEntry,
};

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Inet {
        ip: Option<IpAddr>,
        port: u16,
        /// Look at UDP sockets as well as TCP ones.
        udp_too: bool,
    },
    /// A filesystem path, or `@name` for the abstract namespace.
    Unix(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Inet { ip, port, udp_too } => {
                if *udp_too {
                    f.write_str("udp:")?;
                }
                match ip {
                    None => write!(f, "{port}"),
                    Some(ip) => write!(f, "{}", SocketAddr::new(*ip, *port)),
                }
            }
            Target::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// Parses a `who` target; the error is a complete sentence for the user.
pub fn parse_target(s: &str) -> std::result::Result<Target, String> {
    let s = s.trim();
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() || path == "@" {
            return Err(format!(
                "\"{s}\": a unix target needs a path, as in unix:/run/app.sock or unix:@name"
            ));
        }
        return Ok(Target::Unix(path.to_string()));
    }
    let (rest, udp_too) = if let Some(r) = s.strip_prefix("udp:") {
        (r, true)
    } else if let Some(r) = s.strip_prefix("tcp:") {
        (r, false)
    } else {
        (s, false)
    };
    let (host, port) = match rest.rsplit_once(':') {
        None => ("", rest),
        Some((h, p)) => (h, p),
    };
    let port = parse_port(port).map_err(|e| format!("\"{s}\": {e}"))?;
    let ip = parse_host(host).map_err(|e| format!("\"{s}\": {e}"))?;
    Ok(Target::Inet { ip, port, udp_too })
}

fn parse_port(p: &str) -> std::result::Result<u16, String> {
    if p.is_empty() {
        return Err("missing port number".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port number \"{p}\": expected digits"));
    }
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 means \"any free port\"; name the port to look for".into()),
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err("invalid port number: greater than 65535".into()),
    }
}

fn parse_host(h: &str) -> std::result::Result<Option<IpAddr>, String> {
    if h.is_empty() || h == "*" {
        return Ok(None);
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Some(IpAddr::V6(ip)))
            .map_err(|_| format!("\"{inner}\" is not an IPv6 address"));
    }
    if h.contains(':') {
        return Err("put an IPv6 address in brackets, as in [::1]:5000".into());
    }
    h.parse::<Ipv4Addr>()
        .map(|ip| Some(IpAddr::V4(ip)))
        .map_err(|_| {
            format!(
                "\"{h}\" is not an IP address (host names are not resolved; try 127.0.0.1 or [::1])"
            )
        })
}

/// One process holding a socket through one fd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: i32,
    pub user: String,
    pub cmdline: String,
    pub fd: i32,
}

/// One socket that blocks the target, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// tcp, tcp6, udp, udp6 or unix.
    pub proto: String,
    pub address: String,
    pub inode: u64,
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub listening: Vec<Held>,
    pub time_wait: usize,
    pub established: usize,
    /// Processes whose fds we could not read (we are not root).
    pub unreadable_pids: usize,
}

// ---------------------------------------------------------------- /proc/net

// ---------------------------------------------------------------- matching

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Does a socket bound to `local` stand in the way of binding `target`?
fn blocks(target: Option<IpAddr>, local: IpAddr) -> bool {
    let Some(t) = target else { return true };
    let (t, local) = (unmap(t), unmap(local));
    if t == local {
        return true;
    }
    // `::` is dual-stack unless IPV6_V6ONLY, which /proc does not show.
    let dual = |ip: IpAddr| ip.is_unspecified() && ip.is_ipv6();
    if dual(local) || dual(t) {
        return true;
    }
    (local.is_unspecified() || t.is_unspecified()) && local.is_ipv4() == t.is_ipv4()
}

/// The report for an inet target, holders not yet filled in.
fn select_inet(entries: &[InetEntry], ip: Option<IpAddr>, port: u16, udp_too: bool) -> Report {
    let mut r = Report::default();
    for e in entries {
        if e.local.port() != port || !blocks(ip, e.local.ip()) {
            continue;
        }
        let udp = e.proto.starts_with("udp");
        if udp && !udp_too {
            continue;
        }
        match (udp, e.state) {
            (false, TCP_LISTEN) | (true, UDP_BOUND) => r.listening.push(Held {
                proto: e.proto.to_string(),
                address: unmapped_addr(e.local).to_string(),
                inode: e.inode,
                holders: Vec::new(),
            }),
            (false, TCP_TIME_WAIT) => r.time_wait += 1,
            (false, TCP_ESTABLISHED) => r.established += 1,
            _ => {}
        }
    }
    r
}

fn unmapped_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmap(a.ip()), a.port())
}

/// The report for a Unix target; `names` are the spellings of the path that
/// may appear in /proc/net/unix (as given, and made absolute).
fn select_unix(entries: &[UnixEntry], names: &[String]) -> Report {
    let mut r = Report::default();
    for e in entries {
        let Some(path) = &e.path else { continue };
        if !names.contains(path) {
            continue;
        }
        // A bound datagram socket holds the path as surely as a listener.
        if e.flags & SO_ACCEPTCON != 0 || e.kind == SOCK_DGRAM {
            r.listening.push(Held {
                proto: "unix".into(),
                address: path.clone(),
                inode: e.inode,
                holders: Vec::new(),
            });
        } else if e.state == SS_CONNECTED {
            r.established += 1;
        }
    }
    r
}

// ---------------------------------------------------------------- wording

/// Names the holders for an "already in use" error; None when nothing listens.
pub fn holder_phrase(report: &Report) -> Option<String> {
    let first = report.listening.first()?;
    let mut seen = HashSet::new();
    let procs: Vec<String> = report
        .listening
        .iter()
        .flat_map(|h| &h.holders)
        .filter(|h| seen.insert(h.pid))
        .map(|h| format!("{} ({})", h.pid, short_command(&h.cmdline)))
        .collect();
    Some(match procs.len() {
        0 if report.unreadable_pids == 0 => {
            // Root sees every pid in its namespace; the holder lives elsewhere.
            "a process relaunch cannot see (perhaps in another pid namespace)".to_string()
        }
        0 => format!(
            "a process of another user (run as root, or `relaunch who {}`, to see it)",
            who_arg(first)
        ),
        1 => format!("pid {}", procs[0]),
        _ => format!("pids {}", procs.join(", ")),
    })
}

/// A command line fit for one line of an error: program's base name, spaces
/// collapsed, cut at 80 characters.
fn short_command(cmdline: &str) -> String {
    let mut words = cmdline.split_whitespace();
    let program = words.next().unwrap_or("?");
    let program = program
        .rsplit('/')
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or(program);
    let line = std::iter::once(program)
        .chain(words)
        .collect::<Vec<_>>()
        .join(" ");
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// What to type after `relaunch who` to look at this socket again.
fn who_arg(h: &Held) -> String {
    if h.proto == "unix" {
        return format!("unix:{}", h.address);
    }
    let port = h
        .address
        .rsplit_once(':')
        .map_or(h.address.as_str(), |(_, p)| p);
    if h.proto.starts_with("udp") {
        format!("udp:{port}")
    } else {
        port.to_string()
    }
}

/// The human output of `relaunch who`.
fn render(target: &Target, r: &Report) -> String {
    let mut out = String::new();
    if r.listening.is_empty() {
        out.push_str(&format!("nothing is listening on {target}"));
        match r.time_wait {
            0 => {}
            1 => out.push_str(
                " (1 connection in TIME_WAIT, which does not block a bind with SO_REUSEADDR)",
            ),
            n => out.push_str(&format!(
                " ({n} connections in TIME_WAIT, which do not block a bind with SO_REUSEADDR)"
            )),
        }
        out.push('\n');
        return out;
    }
    let mut rows = vec![["PROTO", "ADDRESS", "PID", "USER", "FD", "COMMAND"].map(String::from)];
    for h in &r.listening {
        if h.holders.is_empty() {
            rows.push(
                [
                    &h.proto,
                    &h.address,
                    "?",
                    "?",
                    "?",
                    "(unknown: not visible to us)",
                ]
                .map(String::from),
            );
        }
        for p in &h.holders {
            rows.push([
                h.proto.clone(),
                h.address.clone(),
                p.pid.to_string(),
                p.user.clone(),
                p.fd.to_string(),
                // One table row per socket, however the command line was written.
                p.cmdline.split_whitespace().collect::<Vec<_>>().join(" "),
            ]);
        }
    }
    out.push_str(&crate::table::table(&rows, ""));
    out.push_str(&format!(
        "TIME_WAIT: {}, established: {}\n",
        r.time_wait, r.established
    ));
    if r.unreadable_pids > 0 {
        out.push_str(&format!(
            "{} processes could not be inspected; run as root to see every holder\n",
            r.unreadable_pids
        ));
    }
    out
}

// ---------------------------------------------------------------- OS side

/// Looks the target up in /proc. Errors only when /proc/net cannot be read.
pub fn lookup(t: &Target) -> io::Result<Report> {
    let mut report = match t {
        Target::Inet { ip, port, udp_too } => {
            let mut protos = vec!["tcp", "tcp6"];
            if *udp_too {
                protos.extend(["udp", "udp6"]);
            }
            select_inet(&proc::inet_table(&protos)?, *ip, *port, *udp_too)
        }
        Target::Unix(path) => {
            let mut names = vec![path.clone()];
            if !path.starts_with('@')
                && let Ok(abs) = std::path::absolute(path)
            {
                names.push(abs.to_string_lossy().into_owned());
            }
            select_unix(&proc::unix_table()?, &names)
        }
    };
    let wanted: HashSet<u64> = report
        .listening
        .iter()
        .map(|h| h.inode)
        .filter(|&i| i != 0)
        .collect();
    if !wanted.is_empty() {
        let (mut by_inode, unreadable) = find_holders(&wanted);
        report.unreadable_pids = unreadable;
        for h in &mut report.listening {
            h.holders = by_inode.remove(&h.inode).unwrap_or_default();
            h.holders.sort_by_key(|x| (x.pid, x.fd));
        }
    }
    Ok(report)
}

/// Maps each wanted socket inode to the processes holding it, and counts
/// the processes whose fd table we were not allowed to read.
fn find_holders(wanted: &HashSet<u64>) -> (HashMap<u64, Vec<Holder>>, usize) {
    let mut found: HashMap<u64, Vec<Holder>> = HashMap::new();
    let mut unreadable = 0;
    let mut users: HashMap<u32, String> = HashMap::new();
    for pid in proc::pids() {
        let fds = match proc::fds(pid) {
            Ok(fds) => fds,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                unreadable += 1;
                continue;
            }
            Err(_) => continue, // exited while we looked
        };
        for (fd, link) in fds {
            let Link::Socket(inode) = link else { continue };
            if !wanted.contains(&inode) {
                continue;
            }
            found.entry(inode).or_default().push(Holder {
                pid,
                user: process_user(pid, &mut users),
                cmdline: proc::cmdline(pid),
                fd,
            });
        }
    }
    tracing::debug!(
        holders = found.len(),
        unreadable,
        "scanned /proc for socket holders"
    );
    (found, unreadable)
}

fn process_user(pid: i32, cache: &mut HashMap<u32, String>) -> String {
    let Some(uid) = proc::uid(pid) else {
        return "?".into();
    };
    cache
        .entry(uid)
        .or_insert_with(
            || match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(u)) => u.name,
                _ => uid.to_string(),
            },
        )
        .clone()
}

// ---------------------------------------------------------------- command

/// `relaunch who`: exit 0 when something holds the target, 1 when it is free.
pub fn run(args: &WhoArgs) -> Result<i32> {
    let target = parse_target(&args.target).map_err(|e| {
        Error::usage(format!("cannot read who target {e}"))
            .hint("give PORT, HOST:PORT, [IPv6]:PORT, udp:PORT, unix:PATH or unix:@name, e.g. `relaunch who 8080`")
    })?;
    let report = lookup(&target).map_err(|e| {
        Error::runtime(format!("cannot look up {target}: {e}"))
            .hint("`relaunch who` reads /proc/net; it needs Linux with /proc mounted")
    })?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::runtime(format!("cannot encode the report as JSON: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", render(&target, &report));
    }
    Ok(if report.listening.is_empty() { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_command_reads_like_a_shell_line() {
        use super::short_command;
        assert_eq!(
            short_command("/usr/bin/python3 web_dashboard.py"),
            "python3 web_dashboard.py"
        );
        assert_eq!(
            short_command("python3 -c import x\ny = 1"),
            "python3 -c import x y = 1"
        );
        assert_eq!(short_command(""), "?");
        let long = format!("/bin/x {}", "a".repeat(200));
        assert_eq!(short_command(&long).chars().count(), 83);
    }

    use super::*;
    use crate::proc::{parse_inet_table, parse_unix_table};
    use std::os::fd::AsRawFd;

    fn inet(ip: Option<&str>, port: u16, udp_too: bool) -> Target {
        Target::Inet {
            ip: ip.map(|s| s.parse().unwrap()),
            port,
            udp_too,
        }
    }

    #[test]
    fn targets_parse() {
        let ok = [
            ("5000", inet(None, 5000, false)),
            (":5000", inet(None, 5000, false)),
            ("*:5000", inet(None, 5000, false)),
            ("127.0.0.1:5000", inet(Some("127.0.0.1"), 5000, false)),
            ("[::1]:5000", inet(Some("::1"), 5000, false)),
            ("[::]:80", inet(Some("::"), 80, false)),
            ("udp:53", inet(None, 53, true)),
            ("udp:0.0.0.0:53", inet(Some("0.0.0.0"), 53, true)),
            ("tcp:65535", inet(None, 65535, false)),
            ("unix:/run/app.sock", Target::Unix("/run/app.sock".into())),
            ("unix:@app", Target::Unix("@app".into())),
            ("unix:rel/x.sock", Target::Unix("rel/x.sock".into())),
        ];
        for (s, want) in ok {
            assert_eq!(parse_target(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_targets_say_why() {
        let bad = [
            ("notaport", "expected digits"),
            ("", "missing port"),
            ("127.0.0.1:", "missing port"),
            ("65536", "greater than 65535"),
            ("99999999999", "greater than 65535"),
            ("0", "port 0"),
            ("-1", "expected digits"),
            ("::1:5000", "brackets"),
            ("[nope]:5000", "not an IPv6 address"),
            ("localhost:5000", "not an IP address"),
            ("unix:", "needs a path"),
            ("unix:@", "needs a path"),
        ];
        for (s, want) in bad {
            let e = parse_target(s).unwrap_err();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn target_display_round_trips() {
        for s in [
            "5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "udp:53",
            "unix:/a b",
            "unix:@x",
        ] {
            assert_eq!(parse_target(s).unwrap().to_string(), s);
        }
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1388 00000000:0000 0A 00001000:00000003 00:00000000 00000000  1000        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1068 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1388 0100007F:D431 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   3: 0100007F:1388 0100007F:D432 01 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:D432 0100007F:1388 01 00000000:00000000 00:00000000 00000000  1000        0 41239 1 0000000000000000 20 4 30 10 -1
   garbage line
";

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp_table_parses() {
        let e = parse_inet_table(TCP, "tcp");
        assert_eq!(e.len(), 5, "the garbage line is skipped");
        assert_eq!(
            e[0],
            InetEntry {
                proto: "tcp",
                local: "127.0.0.1:5000".parse().unwrap(),
                remote: "0.0.0.0:0".parse().unwrap(),
                state: TCP_LISTEN,
                inode: 41234,
                rx_queue: 3,
                tx_queue: 4096,
            }
        );
        assert_eq!(e[1].local, "0.0.0.0:80".parse().unwrap());
        assert_eq!((e[2].state, e[2].inode), (TCP_TIME_WAIT, 0));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp_counts_by_local_port() {
        let e = parse_inet_table(TCP, "tcp");
        let r = select_inet(&e, None, 5000, false);
        assert_eq!(r.listening.len(), 1);
        assert_eq!(r.listening[0].address, "127.0.0.1:5000");
        assert_eq!(r.listening[0].inode, 41234);
        assert_eq!(
            (r.time_wait, r.established),
            (1, 1),
            "row 4 has 5000 as its remote port only"
        );
        let r = select_inet(&e, None, 80, false);
        assert_eq!((r.listening.len(), r.time_wait, r.established), (1, 0, 0));
        assert!(select_inet(&e, None, 81, false).listening.is_empty());
        assert!(
            select_inet(&e, Some("10.0.0.1".parse().unwrap()), 5000, false)
                .listening
                .is_empty()
        );
    }

    // ::1:5000 listening, :: :80 listening, ::ffff:127.0.0.1:8080 listening,
    // fe80::1:443 time-wait.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 51000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51001 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51002 1 0000000000000000 100 0 0 10 0
   3: 000080FE00000000000000000100000000:01BB 00000000000000000000000000000000:0000 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0
   4: 000080FE000000000000000001000000:01BB 000080FE000000000000000002000000:D000 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn tcp6_table_parses() {
        let e = parse_inet_table(TCP6, "tcp6");
        assert_eq!(e.len(), 4, "row 3 has a 34-digit address and is skipped");
        assert_eq!(e[0].local, "[::1]:5000".parse().unwrap());
        assert_eq!(e[1].local, "[::]:80".parse().unwrap());
        assert_eq!(e[2].local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
        assert_eq!(e[3].local, "[fe80::1]:443".parse().unwrap());
        assert_eq!(e[3].state, TCP_TIME_WAIT);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn mapped_addresses_count_as_ipv4() {
        let e = parse_inet_table(TCP6, "tcp6");
        let r = select_inet(&e, Some("127.0.0.1".parse().unwrap()), 8080, false);
        assert_eq!(r.listening.len(), 1);
        assert_eq!(r.listening[0].address, "127.0.0.1:8080");
        assert_eq!(r.listening[0].proto, "tcp6");
        // `::` on port 80 blocks an IPv4 bind too (dual-stack).
        assert_eq!(
            select_inet(&e, Some("192.0.2.1".parse().unwrap()), 80, false)
                .listening
                .len(),
            1
        );
        assert_eq!(select_inet(&e, None, 443, false).time_wait, 1);
    }

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 20001 2 0000000000000000 0
  200: 0100007F:1388 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 20002 2 0000000000000000 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn udp_bound_sockets_hold_only_when_asked() {
        let e = parse_inet_table(UDP, "udp");
        assert_eq!(e[0].local, "127.0.0.53:53".parse().unwrap());
        assert_eq!(e[0].state, UDP_BOUND);
        assert!(select_inet(&e, None, 53, false).listening.is_empty());
        let r = select_inet(&e, None, 53, true);
        assert_eq!(r.listening.len(), 1);
        assert_eq!(
            (r.listening[0].proto.as_str(), r.listening[0].inode),
            ("udp", 20001)
        );
        // A connected UDP socket is not counted as an established TCP connection.
        assert_eq!(select_inet(&e, None, 5000, true).established, 0);
    }

    #[test]
    fn wildcards_block_what_they_should() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            (None, "10.1.2.3", true),
            (Some("127.0.0.1"), "127.0.0.1", true),
            (Some("127.0.0.1"), "127.0.0.2", false),
            (Some("127.0.0.1"), "0.0.0.0", true),
            (Some("127.0.0.1"), "::", true),
            (Some("127.0.0.1"), "::ffff:127.0.0.1", true),
            (Some("::ffff:127.0.0.1"), "127.0.0.1", true),
            (Some("127.0.0.1"), "::1", false),
            (Some("::1"), "0.0.0.0", false),
            (Some("::1"), "::", true),
            (Some("::1"), "::1", true),
            (Some("0.0.0.0"), "127.0.0.1", true),
            (Some("0.0.0.0"), "::1", false),
            (Some("::"), "127.0.0.1", true),
            (Some("::"), "fe80::1", true),
        ];
        for (t, local, want) in cases {
            assert_eq!(blocks(t.map(ip), ip(local)), want, "{t:?} vs {local}");
        }
    }

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 30001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 30002 /run/app.sock
0000000000000000: 00000002 00000000 00010000 0005 01 30003 @app@ns
0000000000000000: 00000003 00000000 00000000 0001 03  30004
0000000000000000: 00000002 00000000 00000000 0002 01 30005 /tmp/with space.sock
0000000000000000: 00000002 00000000 00000000 0001 01 30006 /run/closed.sock
";

    #[test]
    fn unix_table_parses() {
        let e = parse_unix_table(UNIX);
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[0],
            UnixEntry {
                flags: SO_ACCEPTCON,
                kind: 1,
                state: 1,
                inode: 30001,
                path: Some("/run/app.sock".into())
            }
        );
        assert_eq!(e[2].path.as_deref(), Some("@app@ns"));
        assert_eq!(e[3].path, None);
        assert_eq!(e[3].inode, 30004);
        assert_eq!(e[4].path.as_deref(), Some("/tmp/with space.sock"));
    }

    #[test]
    fn unix_selects_listeners_and_bound_datagrams() {
        let e = parse_unix_table(UNIX);
        let r = select_unix(&e, &["/run/app.sock".into()]);
        assert_eq!(r.listening.len(), 1);
        assert_eq!((r.listening[0].inode, r.established), (30001, 1));
        assert_eq!(
            select_unix(&e, &["@app@ns".into()]).listening[0].inode,
            30003
        );
        assert_eq!(
            select_unix(&e, &["/tmp/with space.sock".into()]).listening[0].inode,
            30005
        );
        assert!(
            select_unix(&e, &["/run/closed.sock".into()])
                .listening
                .is_empty()
        );
        assert!(select_unix(&e, &["/nope".into()]).listening.is_empty());
    }

    fn held(proto: &str, address: &str, holders: &[(i32, &str)]) -> Held {
        Held {
            proto: proto.into(),
            address: address.into(),
            inode: 1,
            holders: holders
                .iter()
                .enumerate()
                .map(|(i, (pid, cmd))| Holder {
                    pid: *pid,
                    user: "u".into(),
                    cmdline: cmd.to_string(),
                    fd: 3 + i as i32,
                })
                .collect(),
        }
    }

    #[test]
    fn phrases() {
        let mut r = Report::default();
        assert_eq!(holder_phrase(&r), None);
        r.listening = vec![held(
            "tcp",
            "0.0.0.0:5000",
            &[(1234, "python3 web_dashboard.py")],
        )];
        assert_eq!(
            holder_phrase(&r).unwrap(),
            "pid 1234 (python3 web_dashboard.py)"
        );
        r.listening.push(held(
            "tcp6",
            "[::]:5000",
            &[(1234, "python3 web_dashboard.py"), (99, "y")],
        ));
        assert_eq!(
            holder_phrase(&r).unwrap(),
            "pids 1234 (python3 web_dashboard.py), 99 (y)"
        );
        r.listening = vec![held("tcp", "127.0.0.1:5000", &[])];
        r.unreadable_pids = 3;
        assert_eq!(
            holder_phrase(&r).unwrap(),
            "a process of another user (run as root, or `relaunch who 5000`, to see it)"
        );
        r.listening = vec![held("unix", "/run/a.sock", &[])];
        assert!(
            holder_phrase(&r)
                .unwrap()
                .contains("`relaunch who unix:/run/a.sock`")
        );
        r.unreadable_pids = 0;
        assert!(holder_phrase(&r).unwrap().contains("cannot see"));
    }

    #[test]
    fn render_free_and_held() {
        let t = inet(None, 5000, false);
        let mut r = Report {
            time_wait: 3,
            ..Report::default()
        };
        assert_eq!(
            render(&t, &r),
            "nothing is listening on 5000 (3 connections in TIME_WAIT, which do not block a bind with SO_REUSEADDR)\n"
        );
        r.listening = vec![held(
            "tcp",
            "0.0.0.0:5000",
            &[(1234, "python3 web_dashboard.py")],
        )];
        r.established = 2;
        r.unreadable_pids = 4;
        let out = render(&t, &r);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "PROTO  ADDRESS       PID   USER  FD  COMMAND");
        assert_eq!(
            lines[1],
            "tcp    0.0.0.0:5000  1234  u     3   python3 web_dashboard.py"
        );
        assert_eq!(lines[2], "TIME_WAIT: 3, established: 2");
        assert_eq!(
            lines[3],
            "4 processes could not be inspected; run as root to see every holder"
        );
    }

    fn me() -> i32 {
        std::process::id() as i32
    }

    #[test]
    fn finds_our_own_tcp_listener_and_its_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (_served, _) = l.accept().unwrap();
        for ip in [Some(addr.ip()), None] {
            let r = lookup(&Target::Inet {
                ip,
                port: addr.port(),
                udp_too: false,
            })
            .unwrap();
            assert_eq!(r.listening.len(), 1, "{r:?}");
            let h = &r.listening[0];
            assert_eq!(
                (h.proto.as_str(), h.address.clone()),
                ("tcp", addr.to_string())
            );
            assert_eq!(h.holders.len(), 1, "{r:?}");
            assert_eq!(h.holders[0].pid, me());
            assert_eq!(h.holders[0].fd, l.as_raw_fd());
            assert!(
                h.holders[0].cmdline.contains("relaunch"),
                "{}",
                h.holders[0].cmdline
            );
            assert_eq!(
                r.established, 1,
                "only the accepted socket has {addr} as its local end"
            );
            assert!(
                holder_phrase(&r)
                    .unwrap()
                    .starts_with(&format!("pid {} (", me()))
            );
        }
        let other = Target::Inet {
            ip: Some("127.0.0.2".parse().unwrap()),
            port: addr.port(),
            udp_too: false,
        };
        assert!(lookup(&other).unwrap().listening.is_empty());
    }

    #[test]
    fn udp_socket_held_only_with_udp_too() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        // The port is ours for UDP; TCP on it is free (nobody else is told it).
        let r = lookup(&Target::Inet {
            ip: Some("127.0.0.1".parse().unwrap()),
            port,
            udp_too: false,
        })
        .unwrap();
        assert_eq!(r, Report::default());
        assert_eq!(
            run(&WhoArgs {
                target: format!("127.0.0.1:{port}"),
                json: false
            })
            .unwrap(),
            1
        );
        let r = lookup(&Target::Inet {
            ip: None,
            port,
            udp_too: true,
        })
        .unwrap();
        assert_eq!(r.listening.len(), 1, "{r:?}");
        assert_eq!(r.listening[0].proto, "udp");
        assert_eq!(r.listening[0].holders[0].pid, me());
        assert_eq!(r.listening[0].holders[0].fd, s.as_raw_fd());
        assert_eq!(
            run(&WhoArgs {
                target: format!("udp:{port}"),
                json: true
            })
            .unwrap(),
            0
        );
    }

    fn unique(tag: &str) -> String {
        format!(
            "relaunch-who-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    #[test]
    fn finds_unix_listener_by_path() {
        let dir = std::env::temp_dir().join(unique("dir"));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let r = lookup(&Target::Unix(path.to_string_lossy().into_owned()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.unwrap();
        assert_eq!(r.listening.len(), 1, "{r:?}");
        assert_eq!(r.listening[0].proto, "unix");
        assert_eq!(r.listening[0].holders[0].pid, me());
        assert_eq!(r.listening[0].holders[0].fd, l.as_raw_fd());
        assert!(
            lookup(&Target::Unix(
                dir.join("other.sock").to_string_lossy().into_owned()
            ))
            .unwrap()
            .listening
            .is_empty()
        );
    }

    #[test]
    fn finds_abstract_unix_listener() {
        use std::os::linux::net::SocketAddrExt;
        let name = unique("abs");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let r = lookup(&parse_target(&format!("unix:@{name}")).unwrap()).unwrap();
        assert_eq!(r.listening.len(), 1, "{r:?}");
        assert_eq!(r.listening[0].address, format!("@{name}"));
        assert_eq!(r.listening[0].holders[0].fd, l.as_raw_fd());
    }

    #[test]
    fn bad_target_is_a_usage_error() {
        let e = run(&WhoArgs {
            target: "notaport".into(),
            json: false,
        })
        .unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::Usage);
        assert!(e.msg.contains("notaport") && e.hint.is_some(), "{e}");
    }
}
