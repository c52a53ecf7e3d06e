//! `--compat STYLE`: the environment other launchers' children expect, so
//! servers written for them run under relaunch unchanged. These variables are
//! set in addition to `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, and name the
//! same fds (3, 4, ...).
//!
//! - `einhorn`: `EINHORN_FD_COUNT=N`, `EINHORN_FD_<i>=fd` (i from 0),
//!   `EINHORN_FD_FAMILY_<i>=AF_INET|AF_INET6|AF_UNIX` (read by einhorn's
//!   Python client, which otherwise assumes AF_INET), and
//!   `EINHORN_MASTER_PID=<relaunch's pid>` (the client libraries only call
//!   themselves workers when it equals their parent pid). There is no
//!   `EINHORN_SOCK_PATH`: workers that insist on sending einhorn's ACK fail
//!   to; readiness goes through relaunch's own `--ready` instead.
//! - `server-starter`: `SERVER_STARTER_PORT=KEY=fd;KEY=fd` in
//!   Server::Starter's format (lib/Server/Starter.pm, `start_server`):
//!   KEY is `PORT` for a listener on 0.0.0.0 (what `start_server --port=PORT`
//!   writes), `HOST:PORT` for other IPv4 addresses, `[HOST]:PORT` for IPv6,
//!   and the bare path for Unix sockets. Server::Starter only passes stream
//!   sockets, and has no abstract Unix names: both are errors.
//!   `SERVER_STARTER_GENERATION` is not set.
//! - `werkzeug`: `WERKZEUG_SERVER_FD=<fd of the first listener>` and
//!   `WERKZEUG_RUN_MAIN=true`. From werkzeug 3.1's serving.py: `run_simple`
//!   (behind Flask's `app.run()` and `flask run`) uses `WERKZEUG_SERVER_FD`
//!   only when `is_running_from_reloader()`, i.e. `WERKZEUG_RUN_MAIN ==
//!   "true"`; otherwise it binds host:port itself. With both set it serves
//!   on our socket and ignores the port the app asks for. Side effects of
//!   `WERKZEUG_RUN_MAIN=true`: the startup banner ("Running on ...") is not
//!   printed (relaunch logs the address), and with `debug=True`/`--reload`
//!   the file watcher runs in the same process and exits with status 3 on a
//!   change, which relaunch restarts on the same socket.
//!   werkzeug wraps the fd with `socket.fromfd(fd, family, SOCK_STREAM)`
//!   where `family` comes from the host string the app passes, not from the
//!   socket: `unix://...` -> AF_UNIX, a host containing `:` -> AF_INET6,
//!   anything else (the default `127.0.0.1`) -> AF_INET. When that is wrong
//!   requests are still served, but Python sizes addresses by the wrong
//!   family: an IPv6 socket read as AF_INET gives garbled client addresses
//!   (`remote_addr`, the access log). So with an unmodified `app.run()`
//!   listen on an IPv4 address (`-l 127.0.0.1:5000`, not `--port 5000`,
//!   which is dual-stack IPv6); see [`warnings`]. werkzeug serves one socket
//!   only: the first listener.
//!
//! `env` is pure apart from reading relaunch's own pid.

use std::net::SocketAddr;

use crate::plan::placeholders::Named;
use crate::plan::spec::{Addr, Host, Proto};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// EINHORN_FD_COUNT and EINHORN_FD_<i>
    Einhorn,
    /// SERVER_STARTER_PORT=host:port=fd;...
    ServerStarter,
    /// WERKZEUG_SERVER_FD and WERKZEUG_RUN_MAIN, for Flask's app.run()
    Werkzeug,
}

impl std::str::FromStr for Style {
    type Err = String;
    fn from_str(s: &str) -> Result<Style, String> {
        match s {
            "einhorn" => Ok(Style::Einhorn),
            "server-starter" => Ok(Style::ServerStarter),
            "werkzeug" => Ok(Style::Werkzeug),
            other => Err(format!(
                "unknown style {other:?}; use einhorn, server-starter or werkzeug"
            )),
        }
    }
}

/// The variables to add to the child's environment for `style`.
pub fn env(style: Style, listeners: &[Named]) -> Result<Vec<(String, String)>, String> {
    env_for(style, listeners, std::process::id())
}

/// Things that work but probably not as the user expects; one line each.
pub fn warnings(style: Style, listeners: &[Named]) -> Vec<String> {
    let mut out = Vec::new();
    if style != Style::Werkzeug {
        return out;
    }
    let Some(first) = listeners.first() else {
        return out;
    };
    match kind(first) {
        Kind::Inet { addr, .. } if addr.is_ipv6() => out.push(format!(
            "--compat werkzeug: listener {:?} is IPv6 ({}), but werkzeug reads the fd as IPv4 unless the app passes an IPv6 host: call app.run(host=\"::\") (or `flask run --host ::`), or listen on an IPv4 address such as -l 127.0.0.1:PORT; otherwise client addresses come out garbled",
            first.name, first.address()
        )),
        Kind::Unix { path } => out.push(format!(
            "--compat werkzeug: listener {:?} is a Unix socket, but werkzeug reads the fd as IPv4 unless the app passes host=\"unix://{}\" to app.run(); otherwise the server address it reports is wrong",
            first.name,
            path.display()
        )),
        _ => {}
    }
    if listeners.len() > 1 {
        let rest: Vec<&str> = listeners[1..].iter().map(|l| l.name).collect();
        out.push(format!(
            "--compat werkzeug: werkzeug serves one socket, the first listener {:?}; it ignores {}",
            first.name,
            rest.join(", ")
        ));
    }
    out
}

fn env_for(
    style: Style,
    listeners: &[Named],
    master_pid: u32,
) -> Result<Vec<(String, String)>, String> {
    match style {
        Style::Einhorn => einhorn_env(listeners, master_pid),
        Style::ServerStarter => server_starter_env(listeners),
        Style::Werkzeug => werkzeug_env(listeners),
    }
}

/// EINHORN_FD_COUNT, EINHORN_FD_i and EINHORN_FD_FAMILY_i per listener, EINHORN_MASTER_PID.
fn einhorn_env(listeners: &[Named], master_pid: u32) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    out.push(("EINHORN_FD_COUNT".into(), listeners.len().to_string()));
    for (i, l) in listeners.iter().enumerate() {
        out.push((format!("EINHORN_FD_{i}"), l.fd.to_string()));
        let family = match kind(l) {
            Kind::Inet { addr, .. } if addr.is_ipv6() => "AF_INET6",
            Kind::Inet { .. } => "AF_INET",
            Kind::Unix { .. } | Kind::Abstract => "AF_UNIX",
            Kind::Unknown => return Err(unknown(l)),
        };
        out.push((format!("EINHORN_FD_FAMILY_{i}"), family.into()));
    }
    out.push(("EINHORN_MASTER_PID".into(), master_pid.to_string()));
    Ok(out)
}

/// SERVER_STARTER_PORT: `KEY=FD` per listener, joined by `;`.
fn server_starter_env(listeners: &[Named]) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    for l in listeners {
        let key = match kind(l) {
            Kind::Inet { udp: true, .. } => {
                return Err(format!(
                    "--compat server-starter: listener {:?} ({}) is UDP, but Server::Starter only passes stream sockets: drop --compat server-starter or listen on TCP",
                    l.name,
                    l.address()
                ));
            }
            Kind::Inet { addr, .. } if addr.ip().is_unspecified() && addr.is_ipv4() => {
                addr.port().to_string()
            }
            Kind::Inet { addr, .. } => addr.to_string(),
            Kind::Unix { path } => path.display().to_string(),
            Kind::Abstract => {
                return Err(format!(
                    "--compat server-starter: listener {:?} ({}) is an abstract Unix socket, which Server::Starter cannot name: listen on a Unix socket path instead",
                    l.name,
                    l.address()
                ));
            }
            Kind::Unknown => return Err(unknown(l)),
        };
        items.push(format!("{key}={}", l.fd));
    }
    Ok(vec![("SERVER_STARTER_PORT".into(), items.join(";"))])
}

/// WERKZEUG_SERVER_FD (the first listener, which must be TCP) and WERKZEUG_RUN_MAIN.
fn werkzeug_env(listeners: &[Named]) -> Result<Vec<(String, String)>, String> {
    let first = listeners.first().ok_or(
        "--compat werkzeug needs a listener to hand to werkzeug: add one with -l 127.0.0.1:PORT",
    )?;
    if let Kind::Inet { udp: true, .. } = kind(first) {
        return Err(format!(
            "--compat werkzeug: the first listener {:?} ({}) is UDP, but werkzeug serves HTTP over TCP: put a TCP listener first, e.g. -l 127.0.0.1:PORT",
            first.name,
            first.address()
        ));
    }
    if let Kind::Unknown = kind(first) {
        return Err(unknown(first));
    }
    Ok(vec![
        ("WERKZEUG_SERVER_FD".into(), first.fd.to_string()),
        ("WERKZEUG_RUN_MAIN".into(), "true".into()),
    ])
}

enum Kind<'a> {
    Inet { addr: SocketAddr, udp: bool },
    Unix { path: &'a std::path::Path },
    Abstract,
    Unknown,
}

/// What kind of socket a listener is, from its typed address.
fn kind<'a>(l: &'a Named<'_>) -> Kind<'a> {
    match &l.addr {
        Some(Addr::Inet {
            proto,
            host: Host::Ip(ip),
            port,
        }) => Kind::Inet {
            addr: SocketAddr::new(*ip, *port),
            udp: *proto == Proto::Udp,
        },
        Some(Addr::Unix(path)) => Kind::Unix { path },
        Some(Addr::UnixAbstract(_)) => Kind::Abstract,
        // Bound and inherited addresses are always IPs; a host here is a bug.
        Some(Addr::Inet { .. }) | None => Kind::Unknown,
    }
}

fn unknown(l: &Named) -> String {
    format!(
        "cannot tell what kind of socket listener {:?} is from its address {:?}: this is a bug in relaunch, please report it",
        l.name,
        l.address()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(name: &'a str, fd: i32, address: &str) -> Named<'a> {
        Named {
            name,
            fd,
            addr: Some(crate::plan::spec::parse(address).unwrap().addr),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn einhorn() {
        let l = [
            named("a", 3, "127.0.0.1:8000"),
            named("b", 4, "[::1]:9000"),
            named("c", 5, "unix:/run/x.sock"),
        ];
        assert_eq!(
            env_for(Style::Einhorn, &l, 42),
            Ok(pairs(&[
                ("EINHORN_FD_COUNT", "3"),
                ("EINHORN_FD_0", "3"),
                ("EINHORN_FD_FAMILY_0", "AF_INET"),
                ("EINHORN_FD_1", "4"),
                ("EINHORN_FD_FAMILY_1", "AF_INET6"),
                ("EINHORN_FD_2", "5"),
                ("EINHORN_FD_FAMILY_2", "AF_UNIX"),
                ("EINHORN_MASTER_PID", "42"),
            ]))
        );
        assert_eq!(
            env_for(Style::Einhorn, &[], 7),
            Ok(pairs(&[
                ("EINHORN_FD_COUNT", "0"),
                ("EINHORN_MASTER_PID", "7")
            ]))
        );
        let mine = std::process::id().to_string();
        assert!(
            env(Style::Einhorn, &l)
                .unwrap()
                .contains(&("EINHORN_MASTER_PID".into(), mine))
        );
    }

    #[test]
    fn server_starter() {
        let l = [
            named("any", 3, "0.0.0.0:80"),
            named("lo", 4, "127.0.0.1:8000"),
            named("v6", 5, "[::1]:9000"),
            named("all6", 6, "[::]:443"),
            named("sock", 7, "unix:/run/app.sock"),
        ];
        assert_eq!(
            env_for(Style::ServerStarter, &l, 1),
            Ok(pairs(&[(
                "SERVER_STARTER_PORT",
                "80=3;127.0.0.1:8000=4;[::1]:9000=5;[::]:443=6;/run/app.sock=7"
            )]))
        );
        assert_eq!(
            env_for(Style::ServerStarter, &[named("u", 3, "udp:127.0.0.1:53")], 1),
            Err("--compat server-starter: listener \"u\" (udp:127.0.0.1:53) is UDP, but Server::Starter only passes stream sockets: drop --compat server-starter or listen on TCP".into())
        );
        assert_eq!(
            env_for(Style::ServerStarter, &[named("x", 3, "unix:@app")], 1),
            Err("--compat server-starter: listener \"x\" (unix:@app) is an abstract Unix socket, which Server::Starter cannot name: listen on a Unix socket path instead".into())
        );
        assert_eq!(
            env_for(Style::ServerStarter, &[], 1),
            Ok(pairs(&[("SERVER_STARTER_PORT", "")]))
        );
    }

    #[test]
    fn werkzeug() {
        let want = Ok(pairs(&[
            ("WERKZEUG_SERVER_FD", "3"),
            ("WERKZEUG_RUN_MAIN", "true"),
        ]));
        for addr in ["127.0.0.1:5000", "[::]:5000", "unix:/run/a.sock", "unix:@a"] {
            assert_eq!(
                env_for(Style::Werkzeug, &[named("http", 3, addr)], 1),
                want,
                "{addr}"
            );
        }
        assert_eq!(
            env_for(
                Style::Werkzeug,
                &[named("a", 3, "127.0.0.1:1"), named("b", 4, "127.0.0.1:2")],
                1
            ),
            want
        );
        assert_eq!(
            env_for(Style::Werkzeug, &[], 1),
            Err("--compat werkzeug needs a listener to hand to werkzeug: add one with -l 127.0.0.1:PORT".into())
        );
        assert_eq!(
            env_for(Style::Werkzeug, &[named("dns", 3, "udp:127.0.0.1:53")], 1),
            Err("--compat werkzeug: the first listener \"dns\" (udp:127.0.0.1:53) is UDP, but werkzeug serves HTTP over TCP: put a TCP listener first, e.g. -l 127.0.0.1:PORT".into())
        );
    }

    #[test]
    fn werkzeug_warnings() {
        assert_eq!(
            warnings(Style::Werkzeug, &[named("http", 3, "127.0.0.1:5000")]),
            Vec::<String>::new()
        );
        assert_eq!(warnings(Style::Werkzeug, &[]), Vec::<String>::new());
        assert_eq!(
            warnings(Style::Einhorn, &[named("http", 3, "[::]:5000")]),
            Vec::<String>::new()
        );
        assert_eq!(
            warnings(Style::Werkzeug, &[named("http", 3, "[::]:5000")]),
            [
                "--compat werkzeug: listener \"http\" is IPv6 ([::]:5000), but werkzeug reads the fd as IPv4 unless the app passes an IPv6 host: call app.run(host=\"::\") (or `flask run --host ::`), or listen on an IPv4 address such as -l 127.0.0.1:PORT; otherwise client addresses come out garbled"
            ]
        );
        assert_eq!(
            warnings(Style::Werkzeug, &[named("s", 3, "unix:/run/a.sock")]),
            [
                "--compat werkzeug: listener \"s\" is a Unix socket, but werkzeug reads the fd as IPv4 unless the app passes host=\"unix:///run/a.sock\" to app.run(); otherwise the server address it reports is wrong"
            ]
        );
        assert_eq!(
            warnings(
                Style::Werkzeug,
                &[
                    named("a", 3, "127.0.0.1:1"),
                    named("b", 4, "127.0.0.1:2"),
                    named("c", 5, "127.0.0.1:3")
                ]
            ),
            [
                "--compat werkzeug: werkzeug serves one socket, the first listener \"a\"; it ignores b, c"
            ]
        );
    }

    #[test]
    fn style_names() {
        let parsed: Vec<Style> = ["einhorn", "server-starter", "werkzeug"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            [Style::Einhorn, Style::ServerStarter, Style::Werkzeug]
        );
        assert!("Einhorn".parse::<Style>().is_err());
    }
}
