//! Option values that need more than clap: readiness modes, signals,
//! durations, and the credentials of `--user` / `--group`. Resolved before
//! anything starts, so a bad value never half-starts relaunch.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::duration;
use crate::error::{Error, Result};

/// `--restart`: when to restart a child that exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Restart {
    /// Restart whenever the child exits.
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart: relaunch exits with the child's status.
    Never,
}

pub fn parse_restart(s: &str) -> Result<Restart> {
    match s {
        "always" => Ok(Restart::Always),
        "on-failure" => Ok(Restart::OnFailure),
        "never" => Ok(Restart::Never),
        other => Err(Error::usage(format!("--restart: unknown value {other:?}"))
            .hint("use always, on-failure or never")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReadyMode {
    Auto,
    Notify,
    Delay(Duration),
    /// Ready when a probe of the generation alone passes.
    Probe(Probe),
}

/// A health probe of one generation, through its own sockets (see
/// `ready::probe`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Probe {
    /// `GET PATH` answered 2xx or 3xx.
    Http(String),
    /// A probe connection accepted by one of its processes.
    Tcp,
    /// `sh -c CMD` exits 0.
    Exec(String),
}

/// As `--ready` takes it.
impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http(path) => write!(f, "http:{path}"),
            Probe::Tcp => f.write_str("tcp"),
            Probe::Exec(cmd) => write!(f, "exec:{cmd}"),
        }
    }
}

/// `--health`: the serving generation's check, every `every`; `failures`
/// in a row count as a crash.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub probe: Probe,
    pub every: Duration,
    pub failures: u32,
}

/// `--health`, `--health-every` and `--health-failures`; the last two
/// without the first would be ignored, so they are refused.
pub fn parse_health(
    probe: Option<&str>,
    every: Option<&str>,
    failures: Option<u32>,
) -> Result<Option<Health>> {
    let Some(probe) = probe else {
        if every.is_some() || failures.is_some() {
            return Err(Error::usage(
                "--health-every and --health-failures need --health, which says what to check",
            )
            .hint("for example --health http:/healthz --health-every 10s --health-failures 3"));
        }
        return Ok(None);
    };
    let probe =
        match parse_ready(probe).map_err(|e| Error::usage(e.msg.replace("--ready", "--health")))? {
            ReadyMode::Probe(p) => p,
            _ => {
                return Err(Error::usage(format!("invalid --health probe {probe:?}"))
                    .hint("use http:PATH, tcp or exec:COMMAND"));
            }
        };
    let every = parse_timeout("--health-every", every.unwrap_or("10s"))?;
    let failures = failures.unwrap_or(3);
    if failures == 0 {
        return Err(
            Error::usage("--health-failures 0 would count every check as a crash")
                .hint("give how many failures in a row count, e.g. --health-failures 3"),
        );
    }
    Ok(Some(Health {
        probe,
        every,
        failures,
    }))
}

pub fn parse_ready(s: &str) -> Result<ReadyMode> {
    let hint = "use auto, notify, delay:DURATION (for example delay:2s), http:PATH (for example \
                http:/healthz), tcp, or exec:COMMAND";
    if let Some(path) = s.strip_prefix("http:") {
        // Sent as is in the request line: a space or a line break would
        // make another request.
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err(Error::usage(format!(
                "--ready {s:?}: the path must start with / and hold no spaces or control \
                 characters"
            ))
            .hint("for example --ready http:/healthz"));
        }
        return Ok(ReadyMode::Probe(Probe::Http(path.into())));
    }
    if let Some(cmd) = s.strip_prefix("exec:") {
        if cmd.trim().is_empty() {
            return Err(Error::usage("--ready exec: needs a command")
                .hint("for example --ready 'exec:test -f /run/app/warm' (docs/deploy.md)"));
        }
        return Ok(ReadyMode::Probe(Probe::Exec(cmd.into())));
    }
    match s {
        "auto" => Ok(ReadyMode::Auto),
        "notify" => Ok(ReadyMode::Notify),
        "tcp" => Ok(ReadyMode::Probe(Probe::Tcp)),
        _ => match s.strip_prefix("delay:") {
            Some(d) => duration::parse(d)
                .map(ReadyMode::Delay)
                .map_err(|e| Error::usage(format!("--ready: {e}"))),
            None => Err(Error::usage(format!("invalid --ready mode {s:?}")).hint(hint)),
        },
    }
}

/// `--stop-signal`: any catchable signal. SIGKILL would skip the graceful
/// stop that --stop-timeout bounds (relaunch sends it itself at the end).
pub fn parse_stop_signal(s: &str) -> Result<Signal> {
    let sig = parse_signal(s)?;
    if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
        return Err(Error::usage(format!(
            "invalid --stop-signal {s:?}: {} cannot be caught, so the child gets no chance to finish its requests",
            sig.as_str()
        ))
        .hint("use TERM, INT or QUIT; relaunch sends SIGKILL itself once --stop-timeout has passed"));
    }
    Ok(sig)
}

pub fn parse_signal(s: &str) -> Result<Signal> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| Error::usage(format!("invalid --stop-signal {s:?}: no such signal")));
    }
    name.parse::<Signal>().map_err(|_| {
        Error::usage(format!("invalid --stop-signal {s:?}"))
            .hint("use a name such as TERM, INT, QUIT or a number")
    })
}

pub fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    duration::parse(s).map_err(|e| Error::usage(format!("{flag}: {e}")))
}

/// A deadline: zero would fail every start at once.
pub fn parse_timeout(flag: &str, s: &str) -> Result<Duration> {
    let d = parse_duration(flag, s)?;
    if d.is_zero() {
        return Err(Error::usage(format!(
            "{flag} {s:?}: a timeout of zero fails every start at once"
        ))
        .hint(format!("give a duration such as {flag} 60s")));
    }
    Ok(d)
}

/// `--idle-stop`: zero would stop every child as soon as it serves.
pub fn parse_idle_stop(s: &str) -> Result<Duration> {
    let d = parse_duration("--idle-stop", s)?;
    if d.is_zero() {
        return Err(Error::usage(format!(
            "--idle-stop {s:?}: zero would stop every child as soon as it serves"
        ))
        .hint("give how long the listeners must be idle, e.g. --idle-stop 10m"));
    }
    Ok(d)
}

/// Who the children run as: resolved here, applied after fork (by spawn).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Who the children run as, and the user for HOME/USER/LOGNAME.
#[derive(Debug)]
pub struct RunAs {
    pub creds: Credentials,
    /// The `--user`, for HOME, USER and LOGNAME.
    pub user: Option<UserInfo>,
}

#[derive(Debug)]
pub struct UserInfo {
    pub name: String,
    pub home: std::path::PathBuf,
}

/// `--user` / `--group`, resolved now so the child only has to apply them.
pub fn credentials(user: Option<&str>, group: Option<&str>) -> Result<Option<RunAs>> {
    use nix::unistd::{Gid, Uid, User, getgrouplist};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    if !Uid::effective().is_root() {
        return Err(Error::usage("--user and --group need relaunch to start as root")
            .hint("start relaunch as root (it binds, then runs the children as USER), or drop these options"));
    }
    let lookup_err = |what: &str, name: &str, e: nix::Error| {
        Error::runtime(format!("cannot look up {what} {name:?}: {e}"))
    };
    let user = match user {
        None => None,
        Some(u) => Some(
            User::from_uid(uid_of("--user", u)?)
                .map_err(|e| lookup_err("user", u, e))?
                .ok_or_else(|| {
                    Error::usage(format!("--user: no such user {u:?}"))
                        .hint("use a name from /etc/passwd or a numeric uid")
                })?,
        ),
    };
    let gid = match group {
        Some(g) => gid_of("--group", g)?,
        None => user.as_ref().map(|u| u.gid).unwrap_or_else(Gid::current),
    };
    let groups = match &user {
        Some(u) => {
            let name = std::ffi::CString::new(u.name.as_str())
                .map_err(|_| Error::usage("--user: bad user name"))?;
            getgrouplist(&name, gid).map_err(|e| lookup_err("the groups of user", &u.name, e))?
        }
        None => vec![gid],
    };
    let creds = Credentials {
        uid: user
            .as_ref()
            .map(|u| u.uid)
            .unwrap_or_else(Uid::current)
            .as_raw(),
        gid: gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
    };
    Ok(Some(RunAs {
        creds,
        user: user.map(|u| UserInfo {
            name: u.name,
            home: u.dir,
        }),
    }))
}

/// A user as `--user` and `owner=` take it: a name from /etc/passwd, or a uid.
pub fn uid_of(what: &str, u: &str) -> Result<nix::unistd::Uid> {
    if let Ok(n) = u.parse() {
        return Ok(nix::unistd::Uid::from_raw(n));
    }
    nix::unistd::User::from_name(u)
        .ok()
        .flatten()
        .map(|u| u.uid)
        .ok_or_else(|| {
            Error::usage(format!("{what}: no such user {u:?}"))
                .hint("use a name from /etc/passwd or a numeric uid")
        })
}

/// A group as `--group` and `group=` take it: a name from /etc/group, or a gid.
pub fn gid_of(what: &str, g: &str) -> Result<nix::unistd::Gid> {
    if let Ok(n) = g.parse() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    nix::unistd::Group::from_name(g)
        .ok()
        .flatten()
        .map(|g| g.gid)
        .ok_or_else(|| {
            Error::usage(format!("{what}: no such group {g:?}"))
                .hint("use a name from /etc/group or a numeric gid")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_modes() {
        assert_eq!(parse_ready("auto").unwrap(), ReadyMode::Auto);
        assert_eq!(parse_ready("notify").unwrap(), ReadyMode::Notify);
        assert_eq!(
            parse_ready("delay:1.5s").unwrap(),
            ReadyMode::Delay(Duration::from_millis(1500))
        );
        let e = parse_ready("sometimes").unwrap_err();
        assert_eq!(e.msg, "invalid --ready mode \"sometimes\"");
        assert!(e.hint.unwrap().contains("delay:DURATION"));
        assert!(
            parse_ready("delay:soon")
                .unwrap_err()
                .msg
                .starts_with("--ready: ")
        );
    }

    #[test]
    fn probe_modes() {
        assert_eq!(
            parse_ready("http:/healthz").unwrap(),
            ReadyMode::Probe(Probe::Http("/healthz".into()))
        );
        assert_eq!(parse_ready("tcp").unwrap(), ReadyMode::Probe(Probe::Tcp));
        assert_eq!(
            parse_ready("exec:test -f /tmp/ok").unwrap(),
            ReadyMode::Probe(Probe::Exec("test -f /tmp/ok".into()))
        );
        for bad in ["http:healthz", "http:/a b", "http:/a\r\nX: y", "http:"] {
            let e = parse_ready(bad).unwrap_err();
            assert!(e.msg.contains("must start with /"), "{bad}: {e}");
        }
        assert!(
            parse_ready("exec: ")
                .unwrap_err()
                .msg
                .contains("needs a command")
        );
        assert_eq!(Probe::Http("/h".into()).to_string(), "http:/h");
        assert_eq!(Probe::Exec("true".into()).to_string(), "exec:true");
    }

    #[test]
    fn health_checks() {
        assert_eq!(parse_health(None, None, None).unwrap(), None);
        let h = parse_health(Some("http:/healthz"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(h.probe, Probe::Http("/healthz".into()));
        assert_eq!((h.every, h.failures), (Duration::from_secs(10), 3));
        let h = parse_health(Some("tcp"), Some("500ms"), Some(5))
            .unwrap()
            .unwrap();
        assert_eq!((h.every, h.failures), (Duration::from_millis(500), 5));
        for (p, e, f, says) in [
            (None, Some("1s"), None, "need --health"),
            (None, None, Some(2), "need --health"),
            (Some("auto"), None, None, "invalid --health probe"),
            (Some("http:x"), None, None, "--health \"http:x\""),
            (Some("tcp"), Some("0s"), None, "--health-every"),
            (Some("tcp"), None, Some(0), "--health-failures 0"),
        ] {
            let err = parse_health(p, e, f).unwrap_err();
            assert!(err.msg.contains(says), "{p:?} {e:?} {f:?}: {err}");
        }
    }

    #[test]
    fn signals() {
        for s in ["TERM", "term", "SIGTERM", "15"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("QUIT").unwrap(), Signal::SIGQUIT);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
        for s in ["KILL", "9", "SIGKILL", "STOP"] {
            let e = parse_stop_signal(s).unwrap_err();
            assert!(e.msg.contains("cannot be caught"), "{s}: {e}");
            assert!(e.hint.is_some());
        }
        assert_eq!(parse_stop_signal("INT").unwrap(), Signal::SIGINT);
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let e = parse_timeout("--ready-timeout", "0s").unwrap_err();
        assert!(e.msg.starts_with("--ready-timeout \"0s\""), "{e}");
        assert_eq!(
            e.hint.as_deref(),
            Some("give a duration such as --ready-timeout 60s")
        );
        assert_eq!(
            parse_timeout("--ready-timeout", "1ms").unwrap(),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn idle_stop_values() {
        assert_eq!(parse_idle_stop("1m30s").unwrap(), Duration::from_secs(90));
        let e = parse_idle_stop("0").unwrap_err();
        assert!(e.msg.contains("zero would stop every child"), "{e}");
        assert!(
            parse_idle_stop("soon")
                .unwrap_err()
                .msg
                .starts_with("--idle-stop: ")
        );
    }
}
