//! Pure: from the command line and the inherited environment to what will run.
//!
//! [`make`] turns the parsed command line, the environment relaunch was given
//! and the names of the sockets it inherited into a [`Plan`]: the listeners in
//! fd order (inherited first, then the ones to bind), the child's base
//! environment, its credentials, and the supervisor's settings. Binding comes
//! after, in `sockets`; [`Plan::child`] then fills in what depends on the
//! bound addresses (placeholders, `LISTEN_FDS`/`LISTEN_FDNAMES`, `--compat`).
//!
//! `make` looks nothing up itself: `--user`/`--group` are resolved by the
//! function it is given, so the whole step is unit-tested without root.
//!
//! Names: every explicit `NAME=` and every inherited name is reserved before
//! an unnamed listener is given a default name (`http`, `http2`, ...), so
//! `--port P -l http=...` gives `http2` and `http`. An explicit name takes the
//! inherited socket of that name only when one really was inherited. The same
//! explicit name twice is a usage error.

pub mod compat;
pub mod fallback;
pub mod inherit;
pub mod options;
pub mod placeholders;
pub mod spec;
pub mod wrapper;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cli::RunArgs;
use crate::error::{Error, Result};
use options::{Credentials, ReadyMode, Restart};
use placeholders::Named;
use spec::{Addr, Host, ListenSpec, Proto};

/// Variables children never get from relaunch's own environment: the
/// `LISTEN_*` and notify ones get fresh values per child, and
/// `RELAUNCH_CONTROL` (the env form of `--control`) would make a child that
/// runs relaunch itself fight over the same control socket.
const NOT_PASSED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "NOTIFY_SOCKET",
    "FDSTORE",
    "RELAUNCH_UPGRADE_STATE",
    "RELAUNCH_WORKER",
    "RELAUNCH_CONTROL",
];

/// What relaunch was given by its parent, read once before anything else.
pub struct Snapshot {
    pub env: Vec<(OsString, OsString)>,
    /// The sockets systemd handed us, claimed before anything else opens an
    /// fd that could land on an announced number.
    pub inherited: Result<Vec<inherit::Inherited>>,
}

impl Snapshot {
    pub fn take() -> Self {
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let var = |key: &str| var(&env, key).map(|v| v.to_string_lossy().into_owned());
        let listen = inherit::ListenEnv {
            fds: var("LISTEN_FDS"),
            pid: var("LISTEN_PID"),
            names: var("LISTEN_FDNAMES"),
        };
        let inherited = inherit::take(&listen, std::process::id());
        Snapshot { env, inherited }
    }
}

pub fn var<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsString> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Everything decided before a socket is bound or a child started.
#[derive(Debug)]
pub struct Plan {
    /// In fd order: the inherited sockets (in their order), then the ones to bind.
    pub listeners: Vec<Planned>,
    pub program: OsString,
    /// The command's arguments, placeholders not yet expanded.
    args: Vec<OsString>,
    compat: Vec<compat::Style>,
    /// The child's environment before the per-listener variables.
    env: Vec<(OsString, OsString)>,
    pub listen_pid: bool,
    /// Give a child that binds a held address the held socket.
    pub intercept: bool,
    /// Refuse a child's connect() to a held address until it binds it.
    pub refuse_probes: bool,
    pub creds: Option<Credentials>,
    pub backlog: i32,
    pub restart: Restart,
    pub workers: usize,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// `--drain-timeout` (default: the stop timeout); None: `--no-drain`.
    pub drain: Option<Duration>,
    /// `--keep-previous`.
    pub keep_previous: Option<Duration>,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    /// `--health`: checks of the serving generation.
    pub health: Option<options::Health>,
    /// `--lazy`: start at the first connection.
    pub lazy: bool,
    /// `--idle-stop`: stop after this long without a connection.
    pub idle_stop: Option<Duration>,
    pub ports_file: Option<PathBuf>,
    pub control: Option<PathBuf>,
    /// Names (FDNAME) of sockets the fd store gave back that no listener
    /// wants any more: dropped from the store.
    pub unstore: Vec<String>,
    /// The drain's other sockets of a listener the fd store gave back.
    pub members: Vec<StoredMember>,
    /// `--metrics`: where to serve GET /metrics.
    pub metrics: Option<SocketAddr>,
    /// `--watch` and its companions; None without --watch.
    pub watch: Option<Watch>,
    /// For the log, at info and warn.
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub source: Source,
}

impl Planned {
    /// A TCP port on every interface (`--port P`, `-l P`): the app decides
    /// the address, relaunch only the port.
    pub fn bare_port(&self) -> bool {
        matches!(
            &self.source,
            Source::Bind { spec, .. } | Source::Stored { spec, .. }
                if matches!(spec.addr, Addr::Inet { proto: Proto::Tcp, host: Host::Any, .. })
        )
    }

    /// A Unix socket path relaunch binds (or the fd store keeps).
    pub fn unix_path(&self) -> bool {
        matches!(
            &self.source,
            Source::Bind { spec, .. } | Source::Stored { spec, .. }
                if matches!(spec.addr, Addr::Unix(_))
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The inherited socket at this index of the snapshot.
    Inherited(usize),
    Bind {
        spec: ListenSpec,
        /// Ports to try, in order, when the spec's port is held.
        fallback: Vec<u16>,
    },
    /// The socket relaunch kept in systemd's fd store for this listener,
    /// at this index of the snapshot; bound as `spec` says if it no longer
    /// fits it.
    Stored {
        index: usize,
        spec: ListenSpec,
        fallback: Vec<u16>,
    },
}

/// The developer loop: what to watch, what to run before a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub paths: Vec<PathBuf>,
    /// A shell command (`sh -c`).
    pub build: Option<String>,
    /// gitignore-syntax lines, from the current directory.
    pub ignore: Vec<String>,
    pub debounce: Duration,
}

/// What the child is started with once the listeners are bound.
#[derive(Debug, PartialEq, Eq)]
pub struct Child {
    pub args: Vec<OsString>,
    /// Everything but LISTEN_PID, NOTIFY_SOCKET and RELAUNCH_WORKER.
    pub env: Vec<(OsString, OsString)>,
    pub warnings: Vec<String>,
}

/// How `--user` and `--group` are resolved: [`options::credentials`], or a
/// stand-in in tests.
pub type Users<'a> = &'a dyn Fn(Option<&str>, Option<&str>) -> Result<Option<options::RunAs>>;

/// The plan for `args`, given relaunch's environment and the names of the
/// sockets it inherited; `users` resolves `--user` and `--group`.
pub fn make(
    args: &RunArgs,
    env: &[(OsString, OsString)],
    inherited: &[&str],
    users: Users,
) -> Result<Plan> {
    let stop_signal = options::parse_stop_signal(&args.stop_signal)?;
    let stop_timeout = options::parse_duration("--stop-timeout", &args.stop_timeout)?;
    let drain = match (&args.drain_timeout, args.no_drain) {
        (_, true) => None,
        (Some(d), false) => Some(options::parse_duration("--drain-timeout", d)?),
        (None, false) => Some(stop_timeout),
    };
    let keep_previous = args
        .keep_previous
        .as_deref()
        .map(|d| options::parse_duration("--keep-previous", d))
        .transpose()?;
    let ready_timeout = options::parse_timeout("--ready-timeout", &args.ready_timeout)?;
    let ready = options::parse_ready(&args.ready)?;
    let health = options::parse_health(
        args.health.as_deref(),
        args.health_every.as_deref(),
        args.health_failures,
    )?;
    let idle_stop = args
        .idle_stop
        .as_deref()
        .map(options::parse_idle_stop)
        .transpose()?;
    let (program, rest) = command(args)?;
    if args.refuse_probes && args.no_intercept {
        return Err(Error::usage(
            "--refuse-probes works through bind interception, which --no-intercept turns off",
        )
        .hint("drop one of the two"));
    }
    // inherit::take has already said why LISTEN_FDS for another pid is ignored.
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let (listeners, unstore, members) = listeners(args, inherited, &mut notes)?;
    if !args.no_listen_pid
        && let Some(w) = wrapper::warning(program, rest)
    {
        warnings.push(w);
    }
    let run_as = users(args.user.as_deref(), args.group.as_deref())?;
    let child_env = child_env(env, run_as.as_ref());
    let metrics = args.metrics.as_deref().map(metrics_addr).transpose()?;
    warnings.extend(metrics.and_then(crate::metrics::exposure));
    Ok(Plan {
        listeners,
        program: program.clone(),
        args: rest.to_vec(),
        compat: args
            .compat
            .iter()
            .map(|c| {
                c.parse()
                    .map_err(|e| Error::usage(format!("--compat: {e}")))
            })
            .collect::<Result<_>>()?,
        env: child_env,
        listen_pid: !args.no_listen_pid,
        intercept: !args.no_intercept,
        refuse_probes: args.refuse_probes,
        creds: run_as.map(|r| r.creds),
        backlog: args.backlog.unwrap_or(libc::SOMAXCONN),
        restart: options::parse_restart(&args.restart)?,
        workers: args.workers as usize,
        stop_signal,
        stop_timeout,
        drain,
        keep_previous,
        ready,
        ready_timeout,
        health,
        lazy: args.lazy,
        idle_stop,
        ports_file: args.ports_file.clone(),
        control: args.control.clone(),
        unstore,
        members,
        metrics,
        watch: watch(args)?,
        notes,
        warnings,
    })
}

/// The server's program and its arguments, from after `--`.
fn command(args: &RunArgs) -> Result<(&OsString, &[OsString])> {
    let (program, rest) = args.command.split_first().ok_or_else(|| {
        Error::usage("no command given").hint("put the server's command after --")
    })?;
    if program.is_empty() {
        return Err(Error::usage("the command is empty").hint("put the server's command after --"));
    }
    Ok((program, rest))
}

/// The children's base environment: relaunch's own without [`NOT_PASSED`],
/// with HOME, USER and LOGNAME of the `--user`.
fn child_env(
    env: &[(OsString, OsString)],
    run_as: Option<&options::RunAs>,
) -> Vec<(OsString, OsString)> {
    let mut child_env: Vec<(OsString, OsString)> = env
        .iter()
        .filter(|(k, _)| !NOT_PASSED.iter().any(|r| k == r))
        .cloned()
        .collect();
    if let Some(user) = run_as.and_then(|r| r.user.as_ref()) {
        // As systemd's User= does: the child's idea of who it is matches its uid.
        set(&mut child_env, "HOME", user.home.clone().into_os_string());
        set(&mut child_env, "USER", user.name.clone().into());
        set(&mut child_env, "LOGNAME", user.name.clone().into());
    }
    child_env
}

/// `--metrics HOST:PORT`.
fn metrics_addr(text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Error::usage(format!("--metrics {text:?}: not an address and port"))
            .hint("give HOST:PORT, e.g. --metrics 127.0.0.1:9464 (or [::1]:9464)")
    })
}

/// `--watch` and the options that need it (clap has checked that they come with it).
fn watch(args: &RunArgs) -> Result<Option<Watch>> {
    let debounce = match &args.debounce {
        Some(text) => options::parse_duration("--debounce", text)?,
        None => Duration::from_millis(200),
    };
    if args.watch.is_empty() {
        return Ok(None);
    }
    if let Some(build) = &args.build
        && build.trim().is_empty()
    {
        return Err(Error::usage("--build is empty")
            .hint("give the build command, e.g. --build \"cargo build\", or leave --build out"));
    }
    Ok(Some(Watch {
        paths: args.watch.clone(),
        build: args.build.clone(),
        ignore: args.ignore.clone(),
        debounce,
    }))
}

fn set(env: &mut Vec<(OsString, OsString)>, key: &str, value: OsString) {
    env.retain(|(k, _)| k != key);
    env.push((key.into(), value));
}

/// Inherited sockets first, in their order, then the specs of --port and -l
/// (each on the socket of its name the fd store gave back, if any); and the
/// stored sockets nobody wants.
fn listeners(
    args: &RunArgs,
    inherited: &[&str],
    notes: &mut Vec<String>,
) -> Result<(Vec<Planned>, Vec<String>, Vec<StoredMember>)> {
    let specs = specs(args)?;
    let fallbacks = fallbacks(args)?;
    let stored: Vec<(usize, &str)> = inherited
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.strip_prefix(inherit::STORE_PREFIX).map(|n| (i, n)))
        .collect();
    let is_stored = |i: usize| stored.iter().any(|&(j, _)| j == i);
    let mut out: Vec<Planned> = inherited
        .iter()
        .enumerate()
        .filter(|&(i, _)| !is_stored(i))
        .map(|(i, name)| Planned {
            name: name.to_string(),
            source: Source::Inherited(i),
        })
        .collect();
    // Reserved before any default name is handed out.
    let from_unit: Vec<String> = out.iter().map(|p| p.name.clone()).collect();
    let mut taken = from_unit.clone();
    taken.extend(specs.iter().filter_map(|s| s.name.clone()));
    for s in specs {
        let name = match &s.name {
            Some(name) if from_unit.contains(name) => {
                notes.push(format!(
                    "{name}: using the socket inherited from the service manager instead of binding {}",
                    s.addr
                ));
                continue;
            }
            Some(name) => name.clone(),
            None => {
                let name = spec::default_name(&s.addr, &taken);
                taken.push(name.clone());
                name
            }
        };
        let source = source_for(s, &name, &stored, &fallbacks, notes);
        out.push(Planned { name, source });
    }
    // The drain's other sockets ("NAME~SLOT") go with their listener, if
    // the store gave it back too.
    let home_stored = |name: &str| {
        out.iter()
            .any(|p| p.name == name && matches!(p.source, Source::Stored { .. }))
    };
    let (members, stored): (Stored, Stored) = stored.into_iter().partition(|&(_, n)| {
        !out.iter().any(|p| p.name == n) && member_of(n).is_some_and(|(l, _)| home_stored(l))
    });
    let kept = members
        .into_iter()
        .filter_map(|(i, n)| member_of(n).map(|(l, slot)| (l.to_string(), slot, i)))
        .collect();
    let unstore = unwanted(&stored, &out, notes);
    check_fallback_names(&fallbacks, &out)?;
    if out.is_empty() {
        return Err(Error::usage("nothing to listen on")
            .hint("give --port PORT or -l SPEC, or start relaunch from a systemd .socket unit"));
    }
    Ok((out, unstore, kept))
}

/// A drain socket of a listener the fd store gave back, stored as
/// `relaunch.NAME~SLOT`: (NAME, SLOT, its index in the snapshot).
pub type StoredMember = (String, u32, usize);

/// The fd store's sockets by (index in the snapshot, name less the prefix).
type Stored<'a> = Vec<(usize, &'a str)>;

/// "NAME~SLOT", the fd store's name (less the prefix) of a listener's
/// drain socket in that slot of its group: (NAME, SLOT).
pub fn member_of(stored: &str) -> Option<(&str, u32)> {
    let (name, slot) = stored.rsplit_once('~')?;
    let slot: u32 = slot.parse().ok()?;
    (slot > 0 && !name.is_empty()).then_some((name, slot))
}

/// The listeners of --port and -l, in that order, each named and addressed once.
fn specs(args: &RunArgs) -> Result<Vec<ListenSpec>> {
    let mut specs: Vec<ListenSpec> = Vec::new();
    if let Some(p) = &args.port {
        let port = spec::parse_port(p, false).map_err(|e| Error::usage(format!("--port: {e}")))?;
        specs.push(ListenSpec {
            unix: Default::default(),
            nonblock: false,
            name: None,
            addr: Addr::Inet {
                proto: Proto::Tcp,
                host: Host::Any,
                port,
            },
        });
    }
    for l in &args.listen {
        specs.push(
            spec::parse(l)
                .map_err(|e| Error::usage(e).hint("see `relaunch --help` for the SPEC forms"))?,
        );
    }
    spec::check_unique(&specs).map_err(|e| {
        Error::usage(e).hint("every listener needs its own name and address; drop the extra -l")
    })?;
    Ok(specs)
}

/// --fallback [NAME=]LIST by listener name; "" is every listener's.
fn fallbacks(args: &RunArgs) -> Result<HashMap<String, Vec<u16>>> {
    let mut fallbacks = HashMap::new();
    for f in &args.fallback {
        let (name, list) = f.split_once('=').unwrap_or(("", f.as_str()));
        let ports =
            fallback::parse(list).map_err(|e| Error::usage(format!("--fallback {f:?}: {e}")))?;
        fallbacks.insert(name.to_string(), ports);
    }
    Ok(fallbacks)
}

/// Where the listener `name` comes from: the socket of that name the fd
/// store gave back, or a bind of `s` with its fallback ports.
fn source_for(
    s: ListenSpec,
    name: &str,
    stored: &[(usize, &str)],
    fallbacks: &HashMap<String, Vec<u16>>,
    notes: &mut Vec<String>,
) -> Source {
    let fallback = match &s.addr {
        Addr::Inet { .. } => fallbacks
            .get(name)
            .or(fallbacks.get(""))
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    match stored.iter().find(|&&(_, n)| n == name) {
        Some(&(index, _)) => {
            notes.push(format!(
                "{name}: reusing the socket relaunch kept in systemd's fd store instead of binding {}",
                s.addr
            ));
            Source::Stored {
                index,
                spec: s,
                fallback,
            }
        }
        None => Source::Bind { spec: s, fallback },
    }
}

/// The fd store's sockets that no listener in `out` wants, by their stored name.
fn unwanted(stored: &[(usize, &str)], out: &[Planned], notes: &mut Vec<String>) -> Vec<String> {
    let unstore: Vec<String> = stored
        .iter()
        .filter(|&&(_, n)| !out.iter().any(|p| p.name == n))
        .map(|&(_, n)| format!("{}{n}", inherit::STORE_PREFIX))
        .collect();
    for n in &unstore {
        notes.push(format!(
            "{n}: systemd's fd store gave back a socket no listener wants now; closing it and dropping it from the store"
        ));
    }
    unstore
}

/// Every `--fallback NAME=` names a listener.
fn check_fallback_names(fallbacks: &HashMap<String, Vec<u16>>, out: &[Planned]) -> Result<()> {
    if let Some(unknown) = fallbacks
        .keys()
        .find(|k| !k.is_empty() && !out.iter().any(|l| &l.name == *k))
    {
        let names: Vec<&str> = out.iter().map(|l| l.name.as_str()).collect();
        return Err(Error::usage(format!(
            "--fallback {unknown}=...: no listener is named {unknown:?}"
        ))
        .hint(format!("the listeners are: {}", names.join(", "))));
    }
    Ok(())
}

impl Plan {
    /// The environment of `--build`: the children's, without the sockets'
    /// variables (a build is not a server).
    pub fn build_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// The child's arguments and environment, given the listeners as bound
    /// (in the plan's order, at fds 3, 4, ...).
    pub fn child(&self, bound: &[Named]) -> Result<Child> {
        let args = placeholders::expand(&self.args, bound)
            .map_err(|e| Error::usage(format!("in the command's arguments: {e}")))?;
        let mut env = self.env.clone();
        env.push(("LISTEN_FDS".into(), bound.len().to_string().into()));
        let names: Vec<&str> = bound.iter().map(|l| l.name).collect();
        env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        let mut warnings = Vec::new();
        for style in &self.compat {
            let vars =
                compat::env(*style, bound).map_err(|e| Error::usage(format!("--compat: {e}")))?;
            env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
            warnings.extend(compat::warnings(*style, bound));
        }
        Ok(Child {
            args,
            env,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> RunArgs {
        let argv = std::iter::once("relaunch").chain(line.iter().copied());
        crate::cli::Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())
            .unwrap()
            .run
    }

    fn env() -> Vec<(OsString, OsString)> {
        [
            ("PATH", "/bin"),
            ("HOME", "/root"),
            ("USER", "root"),
            ("LISTEN_FDS", "1"),
            ("RELAUNCH_CONTROL", "/run/x.sock"),
        ]
        .map(|(k, v)| (k.into(), v.into()))
        .to_vec()
    }

    /// Every user is www (uid 33) here; nothing is looked up.
    fn www(user: Option<&str>, group: Option<&str>) -> Result<Option<options::RunAs>> {
        Ok((user.is_some() || group.is_some()).then(|| options::RunAs {
            creds: Credentials {
                uid: 33,
                gid: 33,
                groups: vec![33],
            },
            user: user.map(|_| options::UserInfo {
                name: "www".into(),
                home: "/var/www".into(),
            }),
        }))
    }

    fn plan(line: &[&str], inherited: &[&str]) -> Result<Plan> {
        make(&args(line), &env(), inherited, &www)
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.listeners.iter().map(|l| l.name.as_str()).collect()
    }

    fn bound(name: &str, fd: i32, addr: &str) -> Named<'static> {
        Named {
            name: Box::leak(name.to_string().into_boxed_str()),
            fd,
            addr: Some(spec::parse(addr).unwrap().addr),
        }
    }

    #[test]
    fn the_drains_other_sockets_in_the_fd_store_go_with_their_listener() {
        let p = plan(
            &["-l", "127.0.0.1:0", "-l", "a~1=127.0.0.1:0", "--", "x"],
            &[
                "relaunch.http~2",
                "relaunch.http",
                "relaunch.http~1",
                "relaunch.gone~1",
                "relaunch.a~1",
                "relaunch.http~x",
            ],
        )
        .unwrap();
        assert_eq!(names(&p), ["http", "a~1"]);
        assert!(matches!(
            p.listeners[1].source,
            Source::Stored { index: 4, .. }
        ));
        assert_eq!(
            p.members,
            [("http".to_string(), 2, 0), ("http".to_string(), 1, 2)]
        );
        assert_eq!(p.unstore, ["relaunch.gone~1", "relaunch.http~x"]);
        // Without their listener's own socket they go too.
        let p = plan(&["-l", "127.0.0.1:0", "--", "x"], &["relaunch.http~1"]).unwrap();
        assert!(p.members.is_empty());
        assert_eq!(p.unstore, ["relaunch.http~1"]);
    }

    #[test]
    fn sockets_from_the_fd_store_go_to_their_listener_in_its_place() {
        // From a socket unit ("web"), and from relaunch's own store.
        let p = plan(
            &["-l", "127.0.0.1:0", "-l", "admin=127.0.0.1:0", "--", "x"],
            &["web", "relaunch.admin", "relaunch.http", "relaunch.gone"],
        )
        .unwrap();
        assert_eq!(names(&p), ["web", "http", "admin"]);
        assert_eq!(p.listeners[0].source, Source::Inherited(0));
        // The default name is the one it had when it was stored.
        assert!(matches!(
            p.listeners[1].source,
            Source::Stored { index: 2, .. }
        ));
        assert!(matches!(
            p.listeners[2].source,
            Source::Stored { index: 1, .. }
        ));
        assert_eq!(p.unstore, ["relaunch.gone"]);
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("http: reusing the socket relaunch kept")),
            "{:?}",
            p.notes
        );
        // Nothing asked for: stored sockets alone do not make listeners.
        let e = plan(&["--", "x"], &["relaunch.http"]).unwrap_err();
        assert!(e.to_string().contains("nothing to listen on"), "{e}");
    }

    #[test]
    fn metrics_address() {
        let p = plan(&["-p", "80", "--metrics", "127.0.0.1:9464", "--", "x"], &[]).unwrap();
        assert_eq!(p.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let p = plan(&["-p", "80", "--metrics", "0.0.0.0:9464", "--", "x"], &[]).unwrap();
        assert!(
            p.warnings.iter().any(|w| w.contains("every interface")),
            "{:?}",
            p.warnings
        );
        assert_eq!(plan(&["-p", "80", "--", "x"], &[]).unwrap().metrics, None);
        for bad in ["9464", "localhost:9464", "127.0.0.1", ""] {
            let e = plan(&["-p", "80", "--metrics", bad, "--", "x"], &[]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.msg.starts_with("--metrics"), "{e}");
        }
    }

    #[test]
    fn explicit_names_are_reserved_before_defaults() {
        let p = plan(
            &["--port", "8000", "-l", "http=127.0.0.1:9000", "--", "x"],
            &[],
        )
        .unwrap();
        assert_eq!(names(&p), ["http2", "http"]);
        assert!(
            p.listeners
                .iter()
                .all(|l| matches!(l.source, Source::Bind { .. }))
        );
        let p = plan(
            &[
                "-l",
                "127.0.0.1:0",
                "-l",
                "http2=127.0.0.1:0",
                "-l",
                "127.0.0.1:0",
                "-l",
                "http=[::1]:0",
                "--",
                "x",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(names(&p), ["http3", "http2", "http4", "http"]);
    }

    #[test]
    fn only_inherited_names_are_taken_from_the_service_manager() {
        let p = plan(
            &["-l", "web=127.0.0.1:9000", "--port", "8000", "--", "x"],
            &["web"],
        )
        .unwrap();
        assert_eq!(names(&p), ["web", "http"]);
        assert_eq!(p.listeners[0].source, Source::Inherited(0));
        assert!(matches!(p.listeners[1].source, Source::Bind { .. }));
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("web: using the socket inherited"))
        );
        // An inherited `http` pushes the unnamed --port listener to `http2`.
        let p = plan(&["--port", "8000", "--", "x"], &["http"]).unwrap();
        assert_eq!(names(&p), ["http", "http2"]);
    }

    #[test]
    fn a_name_given_twice_is_a_usage_error() {
        let e = plan(
            &["-l", "a=127.0.0.1:1", "-l", "a=127.0.0.1:2", "--", "x"],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.msg.contains("\"a\" is used twice"), "{e}");
        assert!(e.hint.is_some());
    }

    #[test]
    fn fallbacks_go_to_their_listener() {
        let p = plan(
            &[
                "-l",
                "a=127.0.0.1:1",
                "-l",
                "b=127.0.0.1:2",
                "--fallback",
                "a=5,6",
                "--fallback",
                "7",
                "--",
                "x",
            ],
            &[],
        )
        .unwrap();
        let fb: Vec<Vec<u16>> = p
            .listeners
            .iter()
            .map(|l| match &l.source {
                Source::Bind { fallback, .. } => fallback.clone(),
                Source::Inherited(_) | Source::Stored { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(fb, [vec![5, 6], vec![7]]);
        let e = plan(
            &["-l", "a=127.0.0.1:1", "--fallback", "b=5", "--", "x"],
            &[],
        )
        .unwrap_err();
        assert!(e.msg.contains("no listener is named \"b\""), "{e}");
        assert_eq!(e.hint.as_deref(), Some("the listeners are: a"));
    }

    #[test]
    fn nothing_to_listen_on() {
        let e = plan(&["--", "x"], &[]).unwrap_err();
        assert_eq!(e.msg, "nothing to listen on");
        // Inherited sockets are enough.
        assert_eq!(names(&plan(&["--", "x"], &["web"]).unwrap()), ["web"]);
    }

    #[test]
    fn settings_are_checked_up_front() {
        let p = plan(
            &[
                "--port",
                "1",
                "--stop-timeout",
                "2s",
                "--workers",
                "3",
                "--",
                "x",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(p.stop_timeout, Duration::from_secs(2));
        assert_eq!(p.workers, 3);
        assert_eq!(p.stop_signal, Signal::SIGTERM);
        assert_eq!(p.backlog, libc::SOMAXCONN);
        for bad in [
            &["--ready-timeout", "0s"][..],
            &["--stop-signal", "KILL"],
            &["--stop-signal", "9"],
            &["--ready", "soon"],
        ] {
            let mut line = vec!["--port", "1"];
            line.extend_from_slice(bad);
            line.extend(["--", "x"]);
            let e = plan(&line, &[]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
            assert!(e.hint.is_some(), "{bad:?}: {e}");
        }
    }

    #[test]
    fn watch_options_need_watch_and_are_checked() {
        let p = plan(&["--port", "1", "--", "x"], &[]).unwrap();
        assert_eq!(p.watch, None, "nothing of the dev loop without --watch");
        let p = plan(
            &[
                "--port",
                "1",
                "--watch",
                "src",
                "--watch",
                "tpl",
                "--build",
                "make",
                "--ignore",
                "*.log",
                "--debounce",
                "50ms",
                "--",
                "x",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            p.watch,
            Some(Watch {
                paths: vec!["src".into(), "tpl".into()],
                build: Some("make".into()),
                ignore: vec!["*.log".into()],
                debounce: Duration::from_millis(50),
            })
        );
        let default = plan(&["--port", "1", "--watch", "src", "--", "x"], &[]).unwrap();
        assert_eq!(default.watch.unwrap().debounce, Duration::from_millis(200));
        // Without --watch they would do nothing: clap says so.
        for alone in [&["--build", "make"][..], &["--ignore", "*.log"]] {
            let mut line = vec!["relaunch", "--port", "1"];
            line.extend_from_slice(alone);
            line.extend(["--", "x"]);
            let e = crate::cli::Cli::try_parse_from(line).unwrap_err();
            assert!(e.to_string().contains("--watch"), "{e}");
        }
        for bad in [&["--debounce", "soon"][..], &["--build", " "]] {
            let mut line = vec!["--port", "1", "--watch", "src"];
            line.extend_from_slice(bad);
            line.extend(["--", "x"]);
            let e = plan(&line, &[]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        // The build gets no socket variables.
        let p = plan(&["--port", "1", "--", "x"], &[]).unwrap();
        assert!(var(p.build_env(), "LISTEN_FDS").is_none());
        assert!(var(p.build_env(), "PATH").is_some());
    }

    #[test]
    fn the_child_gets_fresh_listen_vars_and_no_relaunch_control() {
        let p = plan(
            &[
                "-l",
                "web=127.0.0.1:0",
                "--compat",
                "einhorn",
                "--",
                "srv",
                "--port={port:web}",
            ],
            &[],
        )
        .unwrap();
        let c = p.child(&[bound("web", 3, "127.0.0.1:4321")]).unwrap();
        assert_eq!(c.args, [OsString::from("--port=4321")]);
        let get = |k: &str| var(&c.env, k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(get("LISTEN_FDNAMES").as_deref(), Some("web"));
        assert_eq!(get("EINHORN_FD_0").as_deref(), Some("3"));
        assert_eq!(get("PATH").as_deref(), Some("/bin"));
        assert_eq!(get("RELAUNCH_CONTROL"), None);
        assert_eq!(c.env.iter().filter(|(k, _)| k == "LISTEN_FDS").count(), 1);
    }

    #[test]
    fn under_user_home_user_and_logname_are_the_users() {
        let p = plan(&["--port", "1", "--user", "www", "--", "x"], &[]).unwrap();
        assert_eq!(p.creds.as_ref().map(|c| c.uid), Some(33));
        let c = p.child(&[]).unwrap();
        let get = |k: &str| var(&c.env, k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("HOME").as_deref(), Some("/var/www"));
        assert_eq!(get("USER").as_deref(), Some("www"));
        assert_eq!(get("LOGNAME").as_deref(), Some("www"));
        assert_eq!(c.env.iter().filter(|(k, _)| k == "HOME").count(), 1);
        // --group alone changes no name.
        let p = plan(&["--port", "1", "--group", "www", "--", "x"], &[]).unwrap();
        let c = p.child(&[]).unwrap();
        assert_eq!(var(&c.env, "HOME").unwrap(), "/root");
        assert_eq!(var(&c.env, "LOGNAME"), None);
    }

    #[test]
    fn bad_placeholders_are_usage_errors() {
        let p = plan(&["-l", "web=127.0.0.1:0", "--", "srv", "{fd:nope}"], &[]).unwrap();
        let e = p.child(&[bound("web", 3, "127.0.0.1:1")]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.msg.contains("nope"), "{e}");
    }
}
