//! The runtime: `relaunch [OPTIONS] -- COMMAND` from either boot to the end.
//!
//! - One boot path: [`Boot::Fresh`] (the plan, the sockets) or
//!   [`Boot::Adopted`] (what an earlier image handed over) gives the same
//!   `Resources`, then one `run`.
//! - `Runtime` holds the core ([`Supervisor`]) and the I/O side (`Driver`)
//!   side by side: the core decides, the driver carries out its [`Effect`]s
//!   and is the [`Spawner`] the core is lent for a turn.
//! - The loop is `runtime`'s, over any [`Os`]; the `Driver` is the real one
//!   (fork, sockets, signals, /proc), and the upgrade's exec is here. Nothing
//!   on the loop blocks: forks happen here (PR_SET_PDEATHSIG follows the forking
//!   thread), /proc is read on the blocking pool. Idle, it sleeps without
//!   timers.
//!
//! With `--watch`, relaunch forks the file watcher (`relaunch-watch`, a
//! binary of its own so relaunch's stays small) and the `--build` process
//! here, like children. Both report through pipes read on this loop: the
//! watcher's `changed PATH` lines become events; the build's output is shown
//! live (`build | ...`) and kept as a tail of [`BUILD_TAIL`] lines for the
//! failure message.
//!
//! On demand: while no child runs (`--lazy`, or after an idle stop), the
//! listeners are in the loop's epoll set, and the first one readable (a
//! connection or datagram waits; nothing is accepted or read) becomes
//! [`Event::Connection`]. Once a child runs they leave the set, so its
//! connections wake nothing. With `--idle-stop`, while children run, the
//! listeners are measured every quarter of the idle time ([`idle::Gauge`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::cli::RunArgs;
use crate::control::{self, Incoming, Response};
use crate::error::{Error, Result};
use crate::intercept;
use crate::metrics;
use crate::plan::options::{self, Probe, ReadyMode};
use crate::plan::placeholders::Named;
use crate::plan::{self, Snapshot};
use crate::ready::notify::{Message, NotifySocket, Systemd};
use crate::ready::{fallback, probe, scan};
use crate::sockets::drain::Watch;
use crate::sockets::group::{self, Steered};
use crate::sockets::unix_group::UnixGroup;
use crate::sockets::{self, Listener, steer};
use crate::supervise::lines::PipeLines;
use crate::supervise::runtime::{self, Os, Runtime, Sources, handle_notify, step};
use crate::supervise::sources::Signals;
use crate::supervise::supervisor::{
    Config, Effect, Event, NotProbed, Spawner, Supervisor, Tell, WatchConfig,
};
use crate::supervise::{handover, idle, keeper, reaper, spawn, upgrade};
use socket2::Socket;

/// Lines of a build's output kept for the message when it fails.
const BUILD_TAIL: usize = 20;

/// Where a runtime starts from: a command line, or the state an earlier
/// image of relaunch handed over at an upgrade. Both give the same
/// [`Resources`]; everything after that is one path.
#[allow(clippy::large_enum_variant)] // made once, at start
pub enum Boot {
    Fresh(RunArgs, Snapshot),
    Adopted(State),
}

/// What children are started with, the same for every generation, and
/// carried whole by an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    program: OsString,
    args: Vec<OsString>,
    listen_pid: bool,
    creds: Option<spawn::Credentials>,
    /// Everything but LISTEN_PID, NOTIFY_SOCKET and RELAUNCH_WORKER.
    env: Vec<(OsString, OsString)>,
    /// relaunch's own NOTIFY_SOCKET.
    notify_socket: Option<OsString>,
    quiet: bool,
    /// The listeners relaunch bound are kept in systemd's fd store, and so
    /// are the drain's other sockets as they are made.
    #[serde(default)]
    fd_store: bool,
    /// Written by images that know the drain (whether it is on is the
    /// supervisor's config): one that does not finds false here.
    #[serde(default)]
    drains: bool,
    /// `--log-format json`.
    #[serde(default)]
    json: bool,
    /// `--metrics`: served by the next image on the same socket (its
    /// counters start over, as a restart's would); the address bound, for
    /// an image that did not hand the socket over.
    #[serde(default)]
    metrics: Option<std::net::SocketAddr>,
}

/// What each boot hands the one path. Every field is set by both, so
/// nothing can be set on one and forgotten on the other.
struct Resources {
    launch: Launch,
    listeners: Vec<Listener>,
    /// One per listener where old generations drain; else empty.
    groups: Vec<Steered>,
    intercept: Option<Arc<intercept::handler::Table>>,
    control: Option<control::Server>,
    ports_file: Option<sockets::PortsFile>,
    systemd: Option<Systemd>,
    tally: Option<metrics::Tally>,
    scrapes: Option<mpsc::Receiver<Incoming>>,
    /// A copy of the metrics socket, for the next image.
    metrics_socket: Option<OwnedFd>,
    /// `--watch` and `--build` (an upgrade is refused under --watch).
    watcher: Option<Watcher>,
    build_cmd: Option<String>,
    build_env: Vec<(OsString, OsString)>,
    /// `--idle-stop` (an upgrade is refused there too).
    gauge: Option<Arc<idle::Gauge>>,
    start: Start,
}

/// How the supervisor starts.
enum Start {
    /// Afresh, with this config, told [`Event::Start`].
    Fresh(Box<Config>),
    /// Where an earlier image left it, with what it still owes.
    Adopted(Box<Adopted>),
}

/// What an upgrade hands over besides the resources.
struct Adopted {
    from: String,
    sigmask: Vec<i32>,
    supervisor: crate::supervise::supervisor::Kept,
    notify: Vec<handover::NotifyFd>,
    execs: Vec<spawn::ExecFd>,
    waiters: Vec<(u64, RawFd)>,
    requests: Vec<(control::Request, RawFd)>,
    upgrade: Option<RawFd>,
}

/// The one path from either boot to the end: the driver, the supervisor,
/// the event loop, and the cleanup.
pub async fn run(boot: Boot) -> Result<i32> {
    // Before anything with a cleanup exists and before the first fork.
    let signals = Signals::install()?;
    let (notify_tx, notify_rx) = mpsc::unbounded_channel();
    let (listened_tx, listened_rx) = mpsc::unbounded_channel();
    let Resources {
        launch,
        listeners,
        groups,
        intercept,
        control,
        ports_file,
        systemd,
        tally,
        scrapes,
        metrics_socket,
        watcher,
        build_cmd,
        build_env,
        gauge,
        start,
    } = match boot {
        Boot::Fresh(args, snap) => fresh(args, snap).await?,
        Boot::Adopted(state) => adopted(state, &listened_tx)?,
    };
    // Orphans of our children land on us, so none stays a zombie. Only
    // now: the keeper, forked twice during the boot, must not be one.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let control_fd = control.as_ref().map(|c| {
        let (fd, path, identity) = c.handover();
        handover::FileFd {
            fd,
            file: handover::OwnedPath { path, identity },
        }
    });
    let driver = Driver {
        launch,
        listeners,
        groups,
        probes: HashMap::new(),
        probing: HashMap::new(),
        probe_conns: HashMap::new(),
        probe_cmds: HashMap::new(),
        probed: mpsc::unbounded_channel(),
        intercept,
        listened: listened_tx,
        notify: HashMap::new(),
        notify_tx,
        systemd,
        execs: HashMap::new(),
        control: control_fd,
        ports_file,
        upgrade: None,
        asked: None,
        replies: control::Replies::default(),
        tally,
        metrics_socket,
        spawns: reaper::Spawns::default(),
        escaped: HashMap::new(),
        build_cmd,
        build_env,
        build: None,
        watcher,
    };
    let mut rt = match start {
        Start::Fresh(cfg) => {
            let mut rt = Runtime {
                core: Supervisor::new(*cfg),
                os: driver,
            };
            step(&mut rt, Event::Start);
            rt
        }
        Start::Adopted(a) => resume(driver, *a),
    };
    let sources = Sources::new(
        signals,
        control.map(control::Server::serve),
        scrapes,
        notify_rx,
        listened_rx,
        gauge,
    );
    let result = event_loop(&mut rt, sources).await;
    end(rt).await;
    result
}

/// What relaunch leaves behind, ended or removed, whatever the outcome.
async fn end(mut rt: Runtime<Driver>) {
    if let Some(w) = rt.os.watcher.take() {
        w.end();
    }
    let cfg = rt.core.config();
    // The keeper goes when we do.
    reaper::end_orphans(cfg.stop_signal, cfg.stop_timeout, keeper::pid()).await;
    if let Some(t) = &rt.os.intercept {
        t.remove_files();
    }
}

/// A fresh start: the plan, the sockets, and what the options ask for.
async fn fresh(args: RunArgs, snap: Snapshot) -> Result<Resources> {
    let inherited = snap.inherited?;
    let names: Vec<&str> = inherited.iter().map(|i| i.name.as_str()).collect();
    let plan = planned(&args, &snap.env, &names)?;
    // Before any thread: it is forked, and allocates.
    keeper::start(plan.stop_signal, plan.stop_timeout);
    let (opened, groups, dropped) = open_listeners(&plan, inherited)?;
    let listeners = opened.listeners;
    let child = child_of(&plan, &listeners)?;
    // Removed when the driver is dropped, whatever the outcome.
    let ports_file = match &plan.ports_file {
        Some(path) => Some(sockets::PortsFile::write(path, &listeners)?),
        None => None,
    };
    let notify_socket = plan::var(&snap.env, "NOTIFY_SOCKET").cloned();
    let systemd = Systemd::from_env(notify_socket.as_deref());
    let store = systemd.is_some() && fd_store_allowed(&snap.env);
    if let Some(s) = &systemd
        && store
    {
        let bound: Vec<&Listener> = opened.bound_here.iter().map(|&i| &listeners[i]).collect();
        keep_in_store(
            s,
            &bound,
            plan.unstore.iter().chain(&opened.stale).chain(&dropped),
        );
    }
    let control = match &plan.control {
        Some(path) => Some(control::Server::bind(path)?),
        None => None,
    };
    let (tally, scrapes, metrics, metrics_socket) = serve_metrics(plan.metrics)?;
    // Nothing of it exists without --watch.
    let watcher = match &plan.watch {
        Some(w) => Some(Watcher::start(w, plan.build_env()).await?),
        None => None,
    };
    // Made before the first child: closes are noticed from then on.
    let gauge = match plan.idle_stop {
        Some(_) => Some(idle_gauge(&listeners)?),
        None => None,
    };
    let intercept = intercept_table(&plan, &listeners);
    if let Some(t) = &intercept {
        steered_moves(t, &groups);
    }
    if let Some(t) = &intercept
        && store
    {
        keep_changes_in_store(t, notify_socket.as_deref(), &plan.listeners);
    }
    let cfg = config(&plan, &listeners, &groups);
    let build_cmd = plan.watch.as_ref().and_then(|w| w.build.clone());
    let build_env = plan.build_env().to_vec();
    Ok(Resources {
        launch: Launch {
            program: plan.program,
            args: child.args,
            listen_pid: plan.listen_pid,
            creds: plan.creds,
            env: child.env,
            notify_socket,
            quiet: args.quiet,
            json: crate::logging::json(),
            fd_store: store,
            drains: true,
            metrics,
        },
        listeners,
        groups,
        intercept,
        control,
        ports_file,
        systemd,
        tally,
        scrapes,
        metrics_socket,
        build_cmd,
        build_env,
        watcher,
        gauge,
        start: Start::Fresh(Box::new(cfg)),
    })
}

/// What each child is started with, the listeners being where they are;
/// said as they come: where each listens, and what the plan warns of.
fn child_of(plan: &plan::Plan, listeners: &[Listener]) -> Result<plan::Child> {
    for (i, l) in listeners.iter().enumerate() {
        info!("listening on {} as fd {} ({})", l.address(), 3 + i, l.name);
    }
    let named: Vec<Named> = (3..).zip(listeners).map(|(fd, l)| l.named(fd)).collect();
    let child = plan.child(&named)?;
    for w in &child.warnings {
        warn!("{w}");
    }
    // Nothing runs until the first connection: a command that cannot run
    // is said now, not then.
    if plan.lazy
        && let Err(e) = spawn::check_program(&plan.program, &child.env)
    {
        return Err(Error::new(e.kind(), e.to_string()));
    }
    Ok(child)
}

/// The plan's listeners, opened; their groups where old generations drain;
/// and the fd store's names of the drain's sockets that go.
fn open_listeners(
    plan: &plan::Plan,
    inherited: Vec<plan::inherit::Inherited>,
) -> Result<(sockets::Opened, Vec<Steered>, Vec<String>)> {
    let on_demand = plan.lazy || plan.idle_stop.is_some();
    let membership = match plan.drain {
        Some(_) => group::membership(&plan.listeners, on_demand),
        None => Err("--no-drain: the generations share one socket, with no steering".into()),
    };
    if let Err(why) = &membership
        && let Some(what) = probes(plan)
    {
        return Err(probe_needs_steering(&what, why));
    }
    // A Unix generation's socket is reached by a name, which relaunch does
    // not connect through for a probe.
    if let Some(what) = probes(plan)
        && let Some(first) = plan.listeners.first()
        && first.unix_path()
    {
        return Err(probe_needs_steering(
            &what,
            &format!(
                "the first listener, {}, is a Unix socket, and probes go to the first listener \
                 over TCP",
                first.name
            ),
        ));
    }
    if plan.keep_previous.is_some() {
        keep_needs_steering(plan, membership.as_ref().err())?;
    }
    let membership = match membership {
        Ok(m) => Some(m),
        Err(why) => {
            if plan.drain.is_some() {
                info!("{}", group::drain_off(&why));
            }
            None
        }
    };
    let mut inherited: Vec<Option<_>> = inherited.into_iter().map(Some).collect();
    // The drain's other sockets the fd store gave back, for their groups.
    let stored: Vec<(String, u32, Socket)> = plan
        .members
        .iter()
        .filter_map(|(name, slot, i)| {
            let fd = inherited.get_mut(*i)?.take()?.fd;
            Some((name.clone(), *slot, Socket::from(fd)))
        })
        .collect();
    let opened = sockets::open(&plan.listeners, inherited, plan.backlog, membership)?;
    let (kept, dropped) = stored_members(&opened.listeners, &opened.bound_here, stored, membership);
    let groups = match membership {
        Some(_) => group::groups(&opened.listeners, &plan.listeners, plan.backlog, kept),
        None => Vec::new(),
    };
    if let Some(what) = probes(plan)
        && groups.is_empty()
    {
        return Err(Error::runtime(format!(
            "{what} probes one generation alone, through its own sockets, and the listeners \
             cannot have them: the drain is off (said above)"
        ))
        .hint("drop it, or fix what keeps the drain off"));
    }
    Ok((opened, groups, dropped))
}

/// The options that probe a generation alone (`--ready http:`, `tcp`,
/// `exec:`; `--health`), as given.
fn probes(plan: &plan::Plan) -> Option<String> {
    let ready = match &plan.ready {
        ReadyMode::Probe(p) => Some(format!("--ready {p}")),
        _ => None,
    };
    let health = plan
        .health
        .as_ref()
        .map(|h| format!("--health {}", h.probe));
    match (ready, health) {
        (Some(r), Some(h)) => Some(format!("{r} (and {h})")),
        (r, h) => r.or(h),
    }
}

/// A probe where nothing can be steered: it could not reach one
/// generation alone.
fn probe_needs_steering(what: &str, why: &str) -> Error {
    Error::usage(format!(
        "{what} probes one generation alone, before any connection is steered to it, and \
         that needs each generation's own socket in a group relaunch steers; here {why}"
    ))
    .hint("use --ready auto, notify or delay:DURATION, and no --health, here")
}

/// `--keep-previous` steers new connections back to the kept generation's
/// own socket: that needs the drain's groups, and no Unix listener (its
/// generations take turns by a rename, which a later one undoes).
fn keep_needs_steering(plan: &plan::Plan, no_steering: Option<&String>) -> Result<()> {
    let why = match (no_steering, plan.listeners.iter().find(|l| l.unix_path())) {
        (Some(why), _) => why.clone(),
        (None, Some(l)) => format!(
            "{} is a Unix socket, whose generations take turns by a rename of its file: the \
             kept generation's file is gone once the next one is renamed into place",
            l.name
        ),
        (None, None) => return Ok(()),
    };
    Err(Error::usage(format!(
        "--keep-previous steers new connections back to the kept generation's own socket, and \
         that needs each generation's socket in a group relaunch steers; here {why}"
    ))
    .hint("drop --keep-previous here; relaunch rollback then needs a reload instead"))
}

/// The drain's other sockets the fd store gave back, per listener in slot
/// order (1, 2, …), and the store names of those that go: all of a listener
/// bound afresh, or without drain now, or whose slots are not all there
/// (an order relaunch cannot know).
fn stored_members(
    listeners: &[Listener],
    bound_here: &[usize],
    mut stored: Vec<(String, u32, Socket)>,
    membership: Option<sockets::Membership>,
) -> (Vec<Vec<Socket>>, Vec<String>) {
    stored.sort_by_key(|(_, slot, _)| *slot);
    let mut kept: Vec<Vec<Socket>> = listeners.iter().map(|_| Vec::new()).collect();
    let mut dropped = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let mine: Vec<(u32, Socket)> = stored
            .extract_if(.., |(name, _, _)| name == &l.name)
            .map(|(_, slot, s)| (slot, s))
            .collect();
        let whole = mine.iter().zip(1..).all(|((slot, _), n)| *slot == n);
        if membership.is_some() && !bound_here.contains(&i) && whole {
            kept[i] = mine.into_iter().map(|(_, s)| s).collect();
        } else {
            dropped.extend(mine.iter().map(|(slot, _)| member_name(&l.name, *slot)));
        }
    }
    (kept, dropped)
}

/// A listener's drain socket in `slot` of its group, in systemd's fd store.
fn member_name(listener: &str, slot: u32) -> String {
    format!("{}{listener}~{slot}", plan::inherit::STORE_PREFIX)
}

/// Tells interception the sockets `generation`'s children get where they
/// are not the held socket it gives anyway.
fn own_members(t: &intercept::handler::Table, generation: u64, own: Vec<Option<Arc<Socket>>>) {
    let inode = |s: &Arc<Socket>| steer::inode_of(s.as_ref()).ok();
    let members = own
        .into_iter()
        .zip(t.sockets())
        .map(|(s, held)| s.filter(|s| inode(s) != inode(&held)))
        .collect();
    t.set_members(generation, members);
}

/// Tells interception which socket's file Unix listener `i` is now, and
/// which generations' sockets wait beside it at temporary names.
fn tell_files(t: &intercept::handler::Table, i: usize, g: &UnixGroup) {
    let (identity, inode) = g.at_name();
    t.renamed(i, identity, inode);
    for generation in g.generations() {
        if let Some((name, identity, inode)) = g.staged(generation) {
            t.stage(
                i,
                intercept::handler::Staged {
                    generation,
                    name,
                    identity,
                    inode,
                },
            );
        }
    }
}

/// Where old generations drain, a listener interception moves where the
/// app binds is made a group's first member, steered from birth (a group
/// without a program spreads connections over every member).
fn steered_moves(t: &intercept::handler::Table, groups: &[Steered]) {
    let Some(owner) = groups.iter().find_map(|g| match g {
        Steered::Tcp(g) => Some(g.owner()),
        Steered::Unix(_) => None,
    }) else {
        return;
    };
    t.set_maker(Box::new(move |at, v6only, backlog| {
        let sock = steer::member_with(at, Some(owner), backlog, v6only)?;
        steer::attach(&sock, &steer::program(steer::Route::To(0), None))?;
        Ok(sock)
    }));
}

/// Whether to offer our listeners to systemd's fd store: NOTIFY_SOCKET is
/// not another relaunch's, and `$FDSTORE` (systemd 254 and later set it to
/// `FileDescriptorStoreMax=` when there is a store) does not say there is
/// none. Older systemd cannot tell: the fds are offered, and dropped with a
/// journal line when the unit has no store.
fn fd_store_allowed(env: &[(OsString, OsString)]) -> bool {
    let ours = plan::var(env, "NOTIFY_SOCKET")
        .is_some_and(|v| v.as_encoded_bytes().starts_with(b"@relaunch/"));
    let store =
        plan::var(env, "FDSTORE").map(|v| v.to_str().and_then(|v| v.trim().parse::<u32>().ok()));
    !ours && !matches!(store, Some(Some(0)) | Some(None))
}

/// Keeps each listener relaunch bound itself in systemd's fd store, so a
/// relaunch that crashes or is killed gets the very same sockets back (the
/// backlog holds the connections meanwhile); drops what is there for
/// nobody any more.
fn keep_in_store<'a>(s: &Systemd, bound: &[&Listener], unstore: impl Iterator<Item = &'a String>) {
    for name in unstore {
        s.unstore(name);
    }
    let mut kept = Vec::new();
    for l in bound {
        let name = format!("{}{}", plan::inherit::STORE_PREFIX, l.name);
        if name.len() > 255 {
            warn!(
                "{}: the name is too long for systemd's fd store (FDNAME= takes 255 bytes); not kept there",
                l.name
            );
            continue;
        }
        match s.store(&name, l.socket.as_raw_fd()) {
            Ok(()) => kept.push(l.name.as_str()),
            Err(e) => warn!("{}: cannot offer it to systemd's fd store: {e}", l.name),
        }
    }
    if !kept.is_empty() {
        info!(
            "offered {} to systemd's fd store (FDSTORE=1; kept with FileDescriptorStoreMax= in the unit)",
            kept.join(", ")
        );
    }
}

/// After each change bind interception makes to a held socket (a `--port`
/// move, a remade socket file), systemd's fd store keeps the new socket in
/// place of the old one, which relaunch shut down (systemd drops it) or
/// whose file is gone: a relaunch killed later gets back what serves.
/// Only for the listeners kept in the store (not a `.socket` unit's).
fn keep_changes_in_store(
    table: &intercept::handler::Table,
    notify_socket: Option<&std::ffi::OsStr>,
    planned: &[plan::Planned],
) {
    let Some(s) = Systemd::from_env(notify_socket) else {
        return;
    };
    let names: Vec<String> = planned
        .iter()
        .filter(|p| !matches!(p.source, plan::Source::Inherited(_)))
        .map(|p| p.name.clone())
        .collect();
    table.on_change(Box::new(move |name, socket| {
        if !names.iter().any(|n| n == name) {
            return;
        }
        let key = format!("{}{name}", plan::inherit::STORE_PREFIX);
        match s.restore(&key, socket.as_raw_fd()) {
            Ok(()) => {
                info!("{name}: systemd's fd store keeps its new socket in place of the old one")
            }
            Err(e) => warn!(
                "{name}: cannot offer its new socket to systemd's fd store ({e}); if relaunch \
                 is killed, the port is closed until it is back"
            ),
        }
    }));
}

type MetricsServed = (
    Option<metrics::Tally>,
    Option<mpsc::Receiver<Incoming>>,
    Option<std::net::SocketAddr>,
    Option<OwnedFd>,
);

/// `--metrics ADDR`: the counters, the scrapes to answer, the address
/// bound and a copy of its socket (for the next image).
fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<MetricsServed> {
    Ok(match addr {
        Some(addr) => served(metrics::serve(addr)?),
        None => (None, None, None, None),
    })
}

fn served((tally, scrapes, bound, socket): metrics::Served) -> MetricsServed {
    (Some(tally), Some(scrapes), Some(bound), socket)
}

/// After an upgrade: the metrics socket the old image served, or (from an
/// image that did not hand it over) the address it served bound again.
/// Whatever fails, relaunch goes on without metrics: an upgrade never ends
/// in an exit.
fn adopt_metrics(addr: Option<std::net::SocketAddr>, fd: Option<RawFd>) -> MetricsServed {
    let off = (None, None, None, None);
    let Some(addr) = addr else {
        // SAFETY: handed over for us alone; closed once.
        drop(fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        return off;
    };
    let got = match fd {
        // SAFETY: handed over for us alone (claimed open by `take`); adopted once.
        Some(fd) => metrics::adopt(unsafe { OwnedFd::from_raw_fd(fd) })
            .map_err(|e| format!("cannot serve the socket handed over (fd {fd}): {e}")),
        None => metrics::serve(addr).map_err(|e| e.to_string()),
    };
    match got {
        Ok(m) => served(m),
        Err(e) => {
            warn!(
                "metrics are off after the upgrade: {e}; the children and listeners are kept; \
                 restart relaunch (or upgrade again) to serve --metrics {addr} again"
            );
            off
        }
    }
}

/// The driver's own state, for the next image (its fds are in
/// [`handover::Fds`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    #[serde(flatten)]
    launch: Launch,
    ports_file: Option<handover::OwnedPath>,
    /// Bind interception's held sockets (their fds are the listeners').
    #[serde(default)]
    intercept: Option<intercept::handler::SavedTable>,
    /// The `exec:` probe commands still running: the next image, which
    /// probes afresh, ends them (else a hung one would run on, unchecked).
    #[serde(default)]
    probe_cmds: Vec<i32>,
}

/// What an upgrade carries besides the fds: the supervisor's state and the
/// driver's.
#[derive(Serialize, Deserialize, Debug)]
pub struct Carried {
    pub supervisor: crate::supervise::supervisor::Kept,
    pub driver: Saved,
}

/// The upgrade's state as this runtime writes and reads it.
pub type State = handover::State<Carried>;

impl Saved {
    pub fn quiet(&self) -> bool {
        self.launch.quiet
    }
    pub fn json(&self) -> bool {
        self.launch.json
    }
}

/// The plan, and what it has to say before anything starts.
fn planned(args: &RunArgs, env: &[(OsString, OsString)], names: &[&str]) -> Result<plan::Plan> {
    let plan = plan::make(args, env, names, &options::credentials)?;
    for n in &plan.notes {
        info!("{n}");
    }
    for w in &plan.warnings {
        warn!("{w}");
    }
    if let Some(line) = scan::proc_missing(plan.ready == ReadyMode::Auto) {
        warn!("{line}");
    }
    Ok(plan)
}

/// `--idle-stop`'s gauge of the listeners.
fn idle_gauge(listeners: &[Listener]) -> Result<Arc<idle::Gauge>> {
    let gauge = idle::Gauge::new(listeners).map_err(|e| {
        Error::runtime(format!("--idle-stop: cannot watch the listeners: {e}"))
            .hint("raise the limit on open files (ulimit -n)")
    })?;
    Ok(Arc::new(gauge))
}

/// Bind interception's table of the held sockets, unless it is off.
fn intercept_table(
    plan: &plan::Plan,
    listeners: &[Listener],
) -> Option<Arc<intercept::handler::Table>> {
    if !plan.intercept {
        return None;
    }
    // --lazy and --idle-stop watch the sockets bound now: a move would
    // reset the connection that woke relaunch, or hide from the gauge.
    let on_demand = plan.lazy || plan.idle_stop.is_some();
    let movable: Vec<bool> = plan
        .listeners
        .iter()
        .map(|p| p.bare_port() && !on_demand)
        .collect();
    match intercept::handler::Table::new(listeners, &movable, plan.backlog, plan.refuse_probes) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("bind interception is off: cannot prepare the held sockets: {e}");
            None
        }
    }
}

/// The supervisor's configuration, from the plan; `drains`: the listeners
/// have groups to steer.
fn config(plan: &plan::Plan, listeners: &[Listener], groups: &[Steered]) -> Config {
    let drains = !groups.is_empty();
    let listener_info = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| control::ListenerInfo {
            name: l.name.clone(),
            address: l.address(),
            fd: 3 + i as i32,
            waiting: None,
            backlog: None,
            others: Vec::new(),
        })
        .collect();
    Config {
        restart: plan.restart,
        workers: plan.workers,
        stop_signal: plan.stop_signal,
        stop_timeout: plan.stop_timeout,
        ready_delay: match plan.ready {
            ReadyMode::Delay(d) => Some(d),
            _ => None,
        },
        ready_auto: plan.ready == ReadyMode::Auto,
        ready_probe: match &plan.ready {
            ReadyMode::Probe(p) => Some(p.clone()),
            _ => None,
        },
        health: plan.health.clone(),
        ready_timeout: plan.ready_timeout,
        intercept_remedy: Some(intercept_remedy(plan.intercept, listeners)),
        listeners: listener_info,
        watch: plan.watch.as_ref().map(|w| WatchConfig {
            debounce: w.debounce,
            build: w.build.is_some(),
        }),
        lazy: plan.lazy,
        idle_stop: plan.idle_stop,
        drain: plan.drain.filter(|_| drains),
        no_canary: no_canary(plan, listeners, groups),
        keep_previous: plan.keep_previous,
    }
}

/// Why `relaunch reload --canary` cannot run here, if it cannot: a share
/// of new connections needs every listener's group, steered by a program.
fn no_canary(plan: &plan::Plan, listeners: &[Listener], groups: &[Steered]) -> Option<String> {
    if plan.drain.is_none() {
        return Some(
            "--no-drain is given, and a canary needs a socket per generation to share new \
             connections between (the drain's)"
                .into(),
        );
    }
    if groups.is_empty() {
        return Some(
            "the drain is off (said at start why), and a canary needs a socket per generation \
             to share new connections between: see docs/steering.md"
                .into(),
        );
    }
    let unix = groups
        .iter()
        .zip(listeners)
        .find(|(g, _)| matches!(g, Steered::Unix(_)))?;
    Some(format!(
        "{} is a Unix socket, whose generations take turns by a rename of the file: all new \
         connections or none, never a share",
        unix.1.name
    ))
}

/// After an upgrade: the resources the old image handed over.
#[cold]
#[inline(never)]
fn adopted(state: State, listened: &intercept::handler::Listened) -> Result<Resources> {
    let handover::State {
        format: _,
        pid: _,
        from,
        sigmask,
        carried: Carried {
            supervisor,
            driver: saved,
        },
        fds,
    } = state;
    // Their exits are then reaped as any unknown child's.
    for &pid in &saved.probe_cmds {
        signal_group(pid, Signal::SIGKILL);
    }
    // Every fd was checked open, and made close-on-exec again, by `take`.
    let handover::Fds {
        listeners: saved_listeners,
        control: saved_control,
        notify,
        execs,
        waiters,
        requests,
        upgrade,
        intercept: carried,
        keeper: saved_keeper,
        metrics: saved_metrics,
        image,
        groups: saved_groups,
    } = fds;
    // SAFETY: handed over for us alone (claimed open by `take`); closed once.
    drop(image.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
    if let Some(k) = saved_keeper {
        keeper::adopt(k);
    }
    let listeners = adopt_listeners(saved_listeners)?;
    let groups = adopt_groups(saved_groups, saved.launch.drains, &listeners);
    let control = match saved_control {
        Some(c) => Some(
            control::Server::adopt(c.fd, c.file.path.clone(), c.file.identity)
                .map_err(|e| adopt_error(format!("the control socket: {e}")))?,
        ),
        None => None,
    };
    let (tally, scrapes, metrics, metrics_socket) =
        adopt_metrics(saved.launch.metrics, saved_metrics);
    let intercept = adopt_intercept(&listeners, &groups, saved.intercept, carried, listened);
    Ok(Resources {
        systemd: Systemd::from_env(saved.launch.notify_socket.as_deref()),
        launch: Launch {
            metrics,
            ..saved.launch
        },
        listeners,
        groups,
        intercept,
        control,
        ports_file: saved
            .ports_file
            .map(|f| sockets::PortsFile::adopt(f.path, f.identity)),
        tally,
        scrapes,
        metrics_socket,
        watcher: None,
        build_cmd: None,
        build_env: Vec::new(),
        gauge: None,
        start: Start::Adopted(Box::new(Adopted {
            from,
            sigmask,
            supervisor,
            notify,
            execs,
            waiters,
            requests,
            upgrade,
        })),
    })
}

fn adopt_error(what: String) -> Error {
    Error::runtime(format!("cannot adopt {what} after the upgrade"))
        .hint("this is a bug in relaunch; restart it (its children were stopped)")
}

/// The groups an upgrade handed over; none (drain off, said) if one does
/// not fit.
fn adopt_groups(
    saved: Vec<handover::GroupFds>,
    drains: bool,
    listeners: &[Listener],
) -> Vec<Steered> {
    if !drains {
        info!(
            "{}; restart relaunch (not upgrade) for old generations to drain at reloads",
            group::drain_off(
                "the image before this upgrade had none, and its sockets are not made for it"
            )
        );
    }
    let mut groups = Vec::with_capacity(saved.len());
    for (i, g) in saved.into_iter().enumerate() {
        // SAFETY: handed over for us alone (claimed open by `take`); owned once.
        let members = g
            .members
            .iter()
            .map(|&fd| Arc::new(Socket::from(unsafe { OwnedFd::from_raw_fd(fd) })))
            .collect();
        let adopted = match g.unix {
            Some(unix) => match listeners.get(i).and_then(Listener::file) {
                Some(file) => UnixGroup::adopt(members, unix, file).map(Steered::Unix),
                None => Err(std::io::Error::other("its listener has no socket file")),
            },
            None => group::Group::adopt(members, g.saved).map(Steered::Tcp),
        };
        match adopted {
            Ok(group) => groups.push(group),
            Err(e) => {
                let why = format!("after the upgrade, a listener's group cannot be adopted ({e})");
                warn!("{}", group::drain_off(&why));
                return Vec::new();
            }
        }
    }
    groups
}

fn adopt_listeners(saved: Vec<handover::ListenerFd>) -> Result<Vec<Listener>> {
    let mut listeners = Vec::with_capacity(saved.len());
    for l in saved {
        let i = plan::inherit::adopt(l.fd, l.name.clone())
            .map_err(|e| adopt_error(format!("listener {} (fd {}): {e}", l.name, l.fd)))?;
        let file = l
            .file
            .map(|f| sockets::file::SocketFile::adopt(f.path, f.identity));
        listeners.push(
            Listener::adopt(l.name, i.fd.into(), i.addr)
                .with_file(file)
                .nonblocking(l.nonblock),
        );
    }
    Ok(listeners)
}

/// Bind interception's table and each carried child's handler thread,
/// answering binds again before anything else runs.
fn adopt_intercept(
    listeners: &[Listener],
    groups: &[Steered],
    saved: Option<intercept::handler::SavedTable>,
    carried: Vec<intercept::handler::Carried>,
    listened: &intercept::handler::Listened,
) -> Option<Arc<intercept::handler::Table>> {
    let table = saved.and_then(|t| match intercept::handler::Table::adopt(listeners, t) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(
                "bind interception is off after the upgrade: cannot adopt the held sockets \
                 ({e}); for each child started before it, {}",
                intercept::handler::UNANSWERED
            );
            None
        }
    });
    // Before any carried child's call is answered: each generation's own.
    if let Some(t) = &table {
        steered_moves(t, groups);
        let generations: std::collections::BTreeSet<u64> =
            groups.iter().flat_map(Steered::generations).collect();
        for g in generations {
            own_members(t, g, groups.iter().map(|grp| grp.member_of(g)).collect());
        }
        for (i, g) in groups.iter().enumerate() {
            if let Steered::Unix(g) = g {
                tell_files(t, i, g);
            }
        }
    }
    for c in carried {
        match &table {
            Some(t) => {
                let leader = c.leader;
                if let Err(e) = intercept::handler::resume(Arc::clone(t), c, listened.clone()) {
                    warn!(
                        pid = leader,
                        "cannot answer this child's calls after the upgrade ({e}): {}",
                        intercept::handler::UNANSWERED
                    );
                }
            }
            // SAFETY: handed over for us alone; closed once.
            None => drop(unsafe { OwnedFd::from_raw_fd(c.fd) }),
        }
    }
    table
}

/// The supervisor an upgrade handed over, back at work: the fds it watched
/// watched again, its waiting clients answered, what happened during the
/// exec handled.
#[cold]
#[inline(never)]
fn resume(mut driver: Driver, a: Adopted) -> Runtime<Driver> {
    for n in a.notify {
        // SAFETY: handed over for us alone; adopted once.
        let fd = unsafe { OwnedFd::from_raw_fd(n.fd) };
        match NotifySocket::adopt(fd, n.env) {
            Ok(sock) => driver.listen_notify(n.generation, sock),
            Err(e) => warn!(
                generation = n.generation,
                "cannot adopt the notify socket after the upgrade: {e}"
            ),
        }
    }
    for e in a.execs {
        let pid = e.pid;
        driver.watch_exec(pid, spawn::ExecWatch::adopt(e));
    }
    let mut waiters = Vec::new();
    for (generation, fd) in a.waiters {
        match control::Reply::adopt(fd) {
            Ok(r) => waiters.push((generation, driver.replies.hold(r))),
            Err(e) => warn!("cannot adopt a waiting reload client after the upgrade: {e}"),
        }
    }
    let mut rt = Runtime {
        core: Supervisor::restore(a.supervisor, waiters),
        os: driver,
    };
    // The handlers are in: what arrived during the exec is delivered now.
    crate::sigmask::set(&a.sigmask);
    let kept = rt.core.children().iter().filter(|c| c.alive()).count();
    let to = crate::version::image();
    info!(
        "upgraded from {} to {to}, kept {} listeners and {kept} children",
        a.from,
        rt.os.listeners.len()
    );
    if let Some(fd) = a.upgrade {
        match control::Reply::adopt(fd) {
            Ok(r) => {
                let _ = r.send(Response::Upgraded {
                    pid: std::process::id(),
                    from: a.from,
                    to,
                    listeners: rt.os.listeners.len(),
                    children: kept,
                });
            }
            Err(e) => warn!("cannot answer `relaunch upgrade` after the upgrade: {e}"),
        }
    }
    rt.core.tell_serving();
    let fx = rt.core.effects();
    runtime::apply(&mut rt, fx);
    // What the old image had under way without a deadline of its own (a
    // health probe, which is not carried) starts again now.
    step(&mut rt, Event::Timer);
    for (request, fd) in a.requests {
        match control::Reply::adopt(fd) {
            Ok(reply) => {
                let reply = rt.os.replies.hold(reply);
                step(&mut rt, Event::Control { request, reply });
            }
            Err(e) => warn!("cannot adopt a pending control request after the upgrade: {e}"),
        }
    }
    // Children that ended during the exec are zombies by now.
    let events = reap(&mut rt.os);
    let gone = group_check(&rt.core, &mut rt.os);
    for ev in events.into_iter().chain(gone) {
        step(&mut rt, ev);
    }
    rt
}

/// The hint's first remedy (see `Supervisor`), by why bind interception did
/// not hand the child its socket.
fn intercept_remedy(on: bool, listeners: &[Listener]) -> String {
    if !on {
        return "drop --no-intercept, so that the app's own bind() gets relaunch's socket".into();
    }
    let streams = listeners
        .iter()
        .any(|l| l.socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM));
    if !streams {
        return "bind interception covers TCP and Unix stream listeners only".into();
    }
    "where the kernel or a policy refused interception (said above: Linux 5.9 or later is \
     needed, and no other seccomp notifier over relaunch) fix that; an app that binds through io_uring \
     (IORING_OP_BIND) or binds another address than relaunch holds is not given the socket: \
     bind with bind(2), exactly the address relaunch holds"
        .into()
}

/// Carries out the supervisor's effects and turns the world into events.
/// It keeps only handles (sockets, pipes, tasks), no decisions.
struct Driver {
    launch: Launch,
    listeners: Vec<Listener>,
    /// Where old generations drain: each listener's sockets, one per
    /// generation, in the listeners' order (empty: no drain).
    groups: Vec<Steered>,
    /// relaunch's own connections to a starting generation's sockets, by
    /// generation (see `Group::probe`).
    probes: HashMap<u64, Vec<Socket>>,
    /// Health probes (`--ready http:`, `tcp`, `exec:`): the helper threads
    /// running (generation: number) until each answers or its probe ends,
    /// whose connections alone are kept; the connection kept for a
    /// generation's next probe; the `exec:` commands running (pid:
    /// generation, number); and where the helper threads report. The core
    /// takes only the running probe's answer (by its number).
    probing: HashMap<u64, u64>,
    probe_conns: HashMap<u64, probe::Conn>,
    probe_cmds: HashMap<i32, (u64, u64)>,
    probed: (
        mpsc::UnboundedSender<Probed>,
        mpsc::UnboundedReceiver<Probed>,
    ),
    /// The held sockets as bind interception sees them (None: --no-intercept).
    /// Under `--port` it may rebind one where the app binds: children get
    /// their fds from here.
    intercept: Option<Arc<intercept::handler::Table>>,
    /// Where interception tells a held socket's listen() (a readiness hint).
    listened: intercept::handler::Listened,
    /// One notify socket per generation; the task forwards its datagrams.
    notify: HashMap<u64, (Arc<NotifySocket>, tokio::task::JoinHandle<()>)>,
    notify_tx: mpsc::UnboundedSender<(u64, Message)>,
    /// relaunch's own NOTIFY_SOCKET (`launch.notify_socket`).
    systemd: Option<Systemd>,
    /// Exec status pipes of children that may not have exec'd yet.
    execs: HashMap<i32, AsyncFd<spawn::ExecWatch>>,
    /// The control socket (served by its own task).
    control: Option<handover::FileFd>,
    /// Removed when the driver is dropped (relaunch's end), not at an upgrade.
    ports_file: Option<sockets::PortsFile>,
    /// The new binary's handshake, while it runs.
    upgrade: Option<upgrade::Check>,
    /// An upgrade the supervisor allowed, for the loop to start.
    asked: Option<(Option<PathBuf>, Option<control::ReplyId>)>,
    /// The control clients owed an answer; the core knows them by id.
    replies: control::Replies,
    /// `--metrics`: the counters the supervisor's [`Effect::Count`]s feed.
    tally: Option<metrics::Tally>,
    /// A copy of the metrics socket (served by its own task), handed over.
    metrics_socket: Option<OwnedFd>,
    /// Every child started, for telling whose an escaped process is.
    spawns: reaper::Spawns,
    /// Handles on the escaped processes the supervisor is ending.
    escaped: HashMap<i32, reaper::Escaped>,
    /// `--build`, run by `sh -c`.
    build_cmd: Option<String>,
    /// The children's environment without the sockets' variables.
    build_env: Vec<(OsString, OsString)>,
    /// The latest build, until it is reaped (a cancelled one too).
    build: Option<BuildRun>,
    /// `relaunch-watch`, while it runs.
    watcher: Option<Watcher>,
}

/// `relaunch-watch`: its pid and its report lines.
struct Watcher {
    pid: i32,
    out: PipeLines,
}

impl Watcher {
    /// Starts the helper that sits beside relaunch's binary and waits until
    /// it watches everything, or says what is wrong (a usage error).
    async fn start(w: &plan::Watch, env: &[(OsString, OsString)]) -> Result<Watcher> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::runtime(format!("--watch: cannot find relaunch's own binary: {e}"))
        })?;
        let helper = exe.with_file_name("relaunch-watch");
        if !helper.is_file() {
            return Err(Error::runtime(format!(
                "--watch needs relaunch-watch beside relaunch, and {} is missing",
                helper.display()
            ))
            .hint("`cargo install` installs both; or copy relaunch-watch next to relaunch"));
        }
        let mut args: Vec<OsString> = Vec::new();
        for g in &w.ignore {
            args.push("--ignore".into());
            args.push(g.into());
        }
        args.push("--".into());
        args.extend(w.paths.iter().map(|p| p.clone().into_os_string()));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::runtime(format!("--watch: cannot make a pipe: {e}")))?;
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| Error::runtime(format!("--watch: cannot open /dev/null: {e}")))?;
        let stderr = std::io::stderr();
        let spawned = spawn::spawn(&spawn::Request {
            program: helper.as_os_str(),
            args: &args,
            env,
            fds: &[],
            listen_pid: false,
            creds: None,
            // Not the server: nothing of its binds to give.
            intercept: None,
            traps: Default::default(),
            stdio: Some((null.as_fd(), write.as_fd(), stderr.as_fd())),
        })
        .map_err(|e| Error::runtime(format!("--watch: {e}")))?;
        drop(write);
        let mut watcher = Watcher {
            pid: spawned.pid,
            out: PipeLines::new(read)
                .map_err(|e| Error::runtime(format!("--watch: cannot read the watcher: {e}")))?,
        };
        loop {
            if watcher.out.ended() {
                watcher.end();
                return Err(Error::runtime(
                    "--watch: relaunch-watch ended before it was watching (see above)",
                ));
            }
            watcher.out.readable().await;
            for line in watcher.out.lines() {
                let (kind, what) = line.split_once(' ').unwrap_or((&line, ""));
                let what = unescape(what);
                match kind {
                    "ready" => {
                        info!("{what}");
                        return Ok(watcher);
                    }
                    "error" => {
                        watcher.end();
                        let (msg, hint) = match what.split_once("\n  hint: ") {
                            Some((m, h)) => (m.to_string(), Some(h.to_string())),
                            None => (what, None),
                        };
                        let e = Error::usage(msg);
                        return Err(match hint {
                            Some(h) => e.hint(h),
                            None => e,
                        });
                    }
                    _ => warn!("{what}"),
                }
            }
        }
    }

    /// Its report lines as events (warnings are logged here).
    fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for line in self.out.lines() {
            match line.split_once(' ') {
                Some(("changed", path)) => events.push(Event::Changed {
                    path: unescape(path),
                }),
                Some((_, what)) => warn!("{}", unescape(what)),
                None => warn!("relaunch-watch: {line}"),
            }
        }
        events
    }

    /// Stops it and reaps it (it is our child, not an orphan to sweep).
    fn end(self) {
        let pid = Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// `\n` and `\\` as relaunch-watch writes them.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A running `--build`: its output and the last lines of it.
struct BuildRun {
    pid: i32,
    out: PipeLines,
    exec: spawn::ExecWatch,
    tail: VecDeque<String>,
}

impl BuildRun {
    /// Shows and keeps what it printed since the last look.
    fn take(&mut self) {
        for line in self.out.lines() {
            if tracing::enabled!(tracing::Level::INFO) {
                crate::logging::print(6, &format!("build | {line}\n"));
            }
            if self.tail.len() == BUILD_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(line);
        }
    }

    /// The build was reaped: what is left in the pipe (everything it wrote;
    /// a process it left behind may write on, unseen), then the tail.
    fn finish(mut self) -> Vec<String> {
        self.take();
        self.tail.extend(self.out.rest());
        if let spawn::ExecStatus::Failed(e) = self.exec.check() {
            self.tail.push_back(e.to_string());
        }
        self.tail.into()
    }
}

impl Driver {
    fn notify_socket(&mut self, generation: u64) -> std::io::Result<String> {
        if let Some((sock, _)) = self.notify.get(&generation) {
            return Ok(sock.env_value().to_string());
        }
        let sock = NotifySocket::bind(&format!("g{generation}"))?;
        let value = sock.env_value().to_string();
        self.listen_notify(generation, sock);
        Ok(value)
    }

    /// Forwards what `sock` hears to the loop, as from `generation`.
    fn listen_notify(&mut self, generation: u64, sock: NotifySocket) {
        let sock = Arc::new(sock);
        let tx = self.notify_tx.clone();
        let task_sock = Arc::clone(&sock);
        let task = tokio::spawn(async move {
            let sock = task_sock;
            loop {
                match sock.recv().await {
                    Ok(m) => {
                        if tx.send((generation, m)).is_err() {
                            break;
                        }
                    }
                    // Short of memory or buffers: the next datagram may do.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) => {
                        debug!(generation, "notify socket: {e}");
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        warn!(
                            generation,
                            "the notify socket failed ({e}): READY=1 and STATUS= from this \
                             generation can no longer be heard; with --ready notify its \
                             reload will fail at --ready-timeout"
                        );
                        break;
                    }
                }
            }
        });
        self.notify.insert(generation, (sock, task));
    }

    fn watch_exec(&mut self, pid: i32, watch: spawn::ExecWatch) {
        // SAFETY: the watch owns its fd and never swaps it, so the fd stays
        // open and the same for the AsyncFd's whole life.
        match unsafe { AsyncFd::register_with_interest(watch, Interest::READABLE) } {
            Ok(watch) => {
                self.execs.insert(pid, watch);
            }
            // Rare (epoll_ctl failed): a failed exec then shows as exit 126/127.
            Err(e) => warn!(pid, "cannot watch the exec status pipe: {e}"),
        }
    }

    /// What the next image needs of the driver, and its fds but the
    /// control connections (see [`handover::Fds`]).
    fn save(&self) -> (Saved, handover::Fds) {
        // Interception may have rebound a listener: the table's is current.
        let held = self.intercept.as_ref().map(|t| t.sockets());
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| handover::ListenerFd {
                name: l.name.clone(),
                fd: held
                    .as_ref()
                    .and_then(|h| h.get(i))
                    .map_or(l.socket.as_raw_fd(), |s| s.as_raw_fd()),
                file: l.file().map(|f| {
                    let (path, identity) = f.path_identity();
                    handover::OwnedPath { path, identity }
                }),
                nonblock: l.is_nonblocking(),
            })
            .collect();
        let notify = self
            .notify
            .iter()
            .map(|(&generation, (sock, _))| handover::NotifyFd {
                generation,
                fd: sock.as_raw_fd(),
                env: sock.env_value().to_string(),
            })
            .collect();
        let execs = self
            .execs
            .iter()
            .map(|(&pid, w)| w.get_ref().handover(pid))
            .collect();
        let saved = Saved {
            launch: self.launch.clone(),
            ports_file: self.ports_file.as_ref().map(|p| {
                let (path, identity) = p.identity();
                handover::OwnedPath { path, identity }
            }),
            intercept: self.intercept.as_ref().map(|t| t.save()),
            probe_cmds: self.probe_cmds.keys().copied().collect(),
        };
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let (members, saved, unix) = g.save();
                handover::GroupFds {
                    members: members.iter().map(|m| m.as_raw_fd()).collect(),
                    saved,
                    unix,
                }
            })
            .collect();
        let fds = handover::Fds {
            listeners,
            groups,
            control: self.control.clone(),
            notify,
            execs,
            keeper: keeper::save(),
            metrics: self.metrics_socket.as_ref().map(|s| s.as_raw_fd()),
            ..Default::default()
        };
        (saved, fds)
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::SignalEscaped { pid, sig } => {
                    if let Some(e) = self.escaped.get(&pid)
                        && let Err(err) = e.signal(sig)
                        && err.raw_os_error() != Some(libc::ESRCH)
                    {
                        warn!(pid, "cannot send {} to pid {pid}: {err}", sig.as_str());
                    }
                }
                Effect::Signal { pgid, sig } => signal_group(pgid, sig),
                Effect::Tell(tell) => self.tell(tell),
                Effect::Reply { to, response } => {
                    // Taken once: an answer goes out at most once.
                    let Some(to) = self.replies.take(to) else {
                        continue;
                    };
                    match response {
                        Response::Status(status) => self.reply_status(to, *status),
                        response => {
                            let _ = to.send(response);
                        }
                    }
                }
                Effect::Count(c) => {
                    if let Some(tally) = &self.tally {
                        tally.record(c);
                    }
                }
                Effect::Release { generation } => {
                    if let Some((_, task)) = self.notify.remove(&generation) {
                        task.abort();
                    }
                    self.release_sockets(generation);
                    if let Some(t) = &self.intercept {
                        t.forget(generation);
                    }
                }
                Effect::EndProbe { generation } => self.end_probe(generation),
                Effect::Upgrade { binary, reply } => self.asked = Some((binary, reply)),
                Effect::EndCheck => {
                    if let Some(c) = self.upgrade.as_mut() {
                        c.timed_out = true;
                        let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                    }
                }
            }
        }
    }

    fn tell(&self, tell: Tell) {
        if matches!(tell, Tell::Ready(_)) {
            if let Some(t) = &self.intercept {
                t.pin();
            }
            // Now serving, likely to idle: what start-up or the reload
            // freed goes back to the kernel (glibc would keep it), so the
            // idle footprint stays small.
            // SAFETY: no arguments but a size; glibc locks its arenas.
            unsafe { libc::malloc_trim(0) };
        }
        if let Some(s) = &self.systemd {
            match tell {
                Tell::Ready(line) => s.ready(&line),
                Tell::Reloading(line) => s.reloading(&line),
                Tell::Status(line) => s.status(&line),
                Tell::Stopping => s.stopping(),
            }
        }
    }

    /// A status answered with what the kernel knows of the sockets held now
    /// (interception under --port may have moved one): their addresses,
    /// accept queues (sock_diag) and who is left in lingering groups
    /// (/proc), read off the loop.
    fn reply_status(&mut self, to: control::Reply, mut status: control::Status) {
        if let Some(t) = &self.intercept {
            for (l, moved) in status.listeners.iter_mut().zip(t.moved()) {
                if let Some(address) = moved {
                    l.address = address;
                }
            }
        }
        self.sync_listeners();
        // A listener's every socket: its generations' too, where they drain.
        let inodes: Vec<Vec<u64>> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| match self.groups.get(i) {
                Some(g) => g.inodes(),
                None => scan::socket_inode(l.socket.as_fd()).into_iter().collect(),
            })
            .collect();
        let ports: Vec<Option<u16>> = self
            .listeners
            .iter()
            .map(|l| match l.addr {
                Some(plan::spec::Addr::Inet {
                    proto: plan::spec::Proto::Tcp,
                    ..
                }) => l.socket.local_addr().ok()?.as_socket().map(|a| a.port()),
                _ => None,
            })
            .collect();
        let canary = status.canary.as_ref().map(|c| {
            let ports: Vec<u16> = self.groups.iter().filter_map(Steered::port).collect();
            [c.generation, c.beside].map(|g| {
                let members = self
                    .groups
                    .iter()
                    .filter_map(|grp| grp.member_of(g))
                    .filter_map(|s| steer::inode_of(s.as_ref()).ok())
                    .collect();
                let pgids: Vec<i32> = status
                    .children
                    .iter()
                    .filter(|c| c.generation == g)
                    .map(|c| c.pid)
                    .collect();
                (Watch::new(ports.clone(), members), pgids)
            })
        });
        tokio::task::spawn_blocking(move || {
            fill_status(&mut status, &inodes, &ports);
            if let (Some(c), Some(watches)) = (&mut status.canary, canary) {
                [c.open, c.beside_open] = watches.map(|(mut w, pgids)| {
                    let b = w.look(&crate::proc::group_members(&pgids)).ok()?;
                    Some(b.open + b.queued)
                });
            }
            let _ = to.send(Response::Status(Box::new(status)));
        });
    }
}

/// Signals a child's whole process group.
fn signal_group(pgid: i32, sig: Signal) {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => {}
        // Already gone: its exit or GroupGone follows.
        Err(nix::errno::Errno::ESRCH) => debug!(pgid, "killpg {}: no such group", sig.as_str()),
        Err(e) => warn!(
            pgid,
            "cannot send {} to process group {pgid}: {e}; a member may belong to another user \
             (a setuid program)",
            sig.as_str()
        ),
    }
}

impl Driver {
    /// A socket interception rebound (`--port`'s move, a deleted Unix socket
    /// file) replaces ours, so the old one closes and `--lazy` watches the
    /// new one. A moved listener's group starts over from it.
    fn sync_listeners(&mut self) {
        let Some(t) = &self.intercept else {
            return;
        };
        let inode = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino);
        let mut lost = false;
        for (i, (l, h)) in self.listeners.iter_mut().zip(t.sockets()).enumerate() {
            if inode(l.socket.as_fd()) == inode(h.as_fd()) {
                continue;
            }
            let Ok(copy) = h.try_clone() else {
                continue;
            };
            l.socket = copy;
            let moved = match self.groups.get_mut(i) {
                None => continue,
                // Its file deleted and bound again: the new socket is at
                // the held name.
                Some(Steered::Unix(g)) => l.socket.try_clone().and_then(|s| g.refiled(Arc::new(s))),
                Some(Steered::Tcp(g)) => {
                    // The old group's other members go: not kept any more.
                    if self.launch.fd_store
                        && let Some(sd) = &self.systemd
                    {
                        (1..g.len()).for_each(|k| sd.unstore(&member_name(&l.name, k as u32)));
                    }
                    l.socket.try_clone().and_then(|s| g.moved(Arc::new(s)))
                }
            };
            match moved {
                Ok(()) => {}
                Err(e) => {
                    let why = format!(
                        "{} moved to {} and cannot be steered there ({e})",
                        l.name,
                        l.address()
                    );
                    warn!("{}", group::drain_off(&why));
                    lost = true;
                }
            }
        }
        if lost {
            self.groups.clear();
        }
    }

    /// Every socket relaunch holds for its listeners, by inode: what the
    /// readiness scan looks for in a child's fds.
    fn held_inodes(&self) -> HashSet<u64> {
        let mut inodes: HashSet<u64> = match &self.intercept {
            Some(t) => t.inodes(),
            None => self
                .listeners
                .iter()
                .filter_map(|l| scan::socket_inode(l.socket.as_fd()).ok())
                .collect(),
        };
        inodes.extend(self.groups.iter().flat_map(Steered::inodes));
        inodes
    }

    /// The measure of the generations that drain while `generation`
    /// serves: those before it, or a canary rolled back.
    fn drain_watch(&self, generation: u64) -> Watch {
        let ports = self.groups.iter().filter_map(Steered::port).collect();
        let (mut members, mut unix) = (Vec::new(), Vec::new());
        for g in &self.groups {
            match g {
                Steered::Tcp(g) => members.extend(g.inodes_besides(generation)),
                Steered::Unix(g) => unix.extend(g.inodes_before(generation)),
            }
        }
        Watch::new(ports, members).unix(unix)
    }

    /// Each listener's new connections go to `generation`: the ports
    /// first, which can be steered back if one fails, then the socket
    /// files, each renamed in (which cannot be undone).
    fn steer_groups(&mut self, generation: u64) -> Result<(), String> {
        let done = self.steer_ports(generation, None)?;
        let mut renamed = 0;
        for i in 0..self.groups.len() {
            if !matches!(self.groups[i], Steered::Unix(_)) {
                continue;
            }
            if let Err(e) = self.steer_file(i, generation) {
                self.steer_back(done);
                if renamed > 0 {
                    error!(
                        generation,
                        "{renamed} Unix listener(s) were switched to generation {generation} \
                         before this one failed, and a rename cannot be undone: they wait for \
                         the next generation; reload again (relaunch reload)"
                    );
                }
                return Err(e);
            }
            renamed += 1;
        }
        // Real connections come now: the probes end (a FIN).
        self.probes.remove(&generation);
        Ok(())
    }

    /// A canary: `share` of each port's new connections go to
    /// `generation`, the rest where they went; all ports or none. Socket
    /// files cannot share (a rename moves every connection): the core
    /// refuses a canary where there is one.
    fn share_groups(&mut self, generation: u64, share: f64) -> Result<(), String> {
        if let Some(l) = self
            .groups
            .iter()
            .zip(&self.listeners)
            .find_map(|(g, l)| matches!(g, Steered::Unix(_)).then_some(l))
        {
            return Err(format!(
                "{} is a Unix socket, which has no share: a rename is all or nothing",
                l.name
            ));
        }
        self.steer_ports(generation, Some(share))?;
        self.probes.remove(&generation);
        Ok(())
    }

    /// Each port's new connections go to `generation`, or `share` of them
    /// (a canary); all ports or none. Where a listener relaunch does not
    /// own is on a port, a steer says so, and a share is refused: the
    /// program would count it among the slots. Where each went before.
    fn steer_ports(
        &mut self,
        generation: u64,
        share: Option<f64>,
    ) -> Result<Vec<group::Routing>, String> {
        let mut done = Vec::with_capacity(self.groups.len());
        let ours = self.steered_inodes();
        for (g, l) in self.groups.iter_mut().zip(&self.listeners) {
            let Steered::Tcp(g) = g else {
                continue;
            };
            let found = steer::foreign_listeners(g.port(), &ours).unwrap_or_else(|e| {
                warn!(
                    generation,
                    "{}: cannot list the listeners on port {} ({e}): one relaunch does not own \
                     would go unseen",
                    l.name,
                    g.port()
                );
                Vec::new()
            });
            if !found.is_empty() {
                let (name, port, shown) = (&l.name, g.port(), steer::shown(&found));
                if share.is_some() {
                    let e = no_share_beside(name, port, &found);
                    self.steer_back(done);
                    return Err(e);
                }
                warn!(
                    generation,
                    "{name}: other listeners are on port {port} ({shown}): relaunch never steers \
                     to them, and connections to their addresses may reach them instead of \
                     relaunch's children; see who they are with: relaunch who :{port}"
                );
            }
            let steered = match share {
                None => g.steer_to(generation),
                Some(share) => g.share_to(generation, share),
            };
            match steered {
                Ok(was) => done.push(was),
                Err(e) => {
                    let e = format!("{}: {e}", l.name);
                    self.steer_back(done);
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// While the share of canary `generation` is steered: why it must end,
    /// if listeners relaunch does not own are on one of its ports.
    /// Blocking: netlink.
    fn guard_job(&self, generation: u64) -> impl FnOnce() -> Vec<Event> + Send + 'static {
        let ours = self.steered_inodes();
        let ports: Vec<(String, u16)> = self
            .groups
            .iter()
            .zip(&self.listeners)
            .filter_map(|(g, l)| match g {
                Steered::Tcp(g) => Some((l.name.clone(), g.port())),
                Steered::Unix(_) => None,
            })
            .collect();
        move || {
            let found = ports.iter().find_map(|(name, port)| {
                match steer::foreign_listeners(*port, &ours) {
                    Ok(found) if !found.is_empty() => Some(no_share_beside(name, *port, &found)),
                    Ok(_) => None,
                    Err(e) => {
                        // Said once: the look is tried again every tick.
                        static SAID: std::sync::atomic::AtomicBool =
                            std::sync::atomic::AtomicBool::new(false);
                        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            warn!(
                                "cannot list the listeners on port {port} to guard the canary's \
                                 share: {e}; a listener relaunch does not own would go unseen"
                            );
                        }
                        None
                    }
                }
            });
            found
                .map(|why| Event::Foreign { generation, why })
                .into_iter()
                .collect()
        }
    }

    /// The sockets of every TCP group: relaunch's own listeners on a port
    /// (`-l 127.0.0.1:P -l [::1]:P` are two) are never foreign to each other.
    fn steered_inodes(&self) -> Vec<u64> {
        self.groups
            .iter()
            .filter_map(|g| match g {
                Steered::Tcp(g) => Some(g.inodes()),
                Steered::Unix(_) => None,
            })
            .flatten()
            .collect()
    }

    /// All or nothing: the TCP groups steered already (`done`: where each
    /// sent connections, in order) go back.
    fn steer_back(&mut self, done: Vec<group::Routing>) {
        let tcp = self.groups.iter_mut().filter_map(|g| match g {
            Steered::Tcp(g) => Some(g),
            Steered::Unix(_) => None,
        });
        for (g, was) in tcp.zip(done) {
            if let Err(e) = g.back_to(was) {
                error!("cannot steer new connections back to where they went ({was:?}: {e})");
            }
        }
    }

    /// Renames `generation`'s socket for Unix listener `i` over the held
    /// name, and tells whoever keeps that file: the listener (removes it on
    /// exit), interception (remakes it if deleted) and systemd's fd store
    /// (gives it back if relaunch is killed).
    fn steer_file(&mut self, i: usize, generation: u64) -> Result<(), String> {
        let l = &mut self.listeners[i];
        let Steered::Unix(g) = &mut self.groups[i] else {
            return Ok(());
        };
        let identity = g
            .steer_to(generation)
            .map_err(|e| format!("{}: {e}", l.name))?;
        if let Some(f) = l.file_mut() {
            f.renamed_over(identity);
        }
        if let Some(t) = &self.intercept {
            tell_files(t, i, g);
        }
        if self.launch.fd_store
            && let Some(sd) = &self.systemd
            && let Some(s) = g.member_of(generation)
        {
            let key = format!("{}{}", plan::inherit::STORE_PREFIX, l.name);
            if let Err(e) = sd.restore(&key, s.as_raw_fd()) {
                warn!(
                    "{}: cannot offer generation {generation}'s socket to systemd's fd store \
                     ({e}); if relaunch is killed, the one it gets back no longer has the \
                     socket file",
                    l.name
                );
            }
        }
        Ok(())
    }

    /// `generation` is gone: its sockets in the groups are free, and
    /// relaunch's connections to them end.
    fn release_sockets(&mut self, generation: u64) {
        // Ours first: they would be among what is reset.
        self.probes.remove(&generation);
        for (g, l) in self.groups.iter_mut().zip(&mut self.listeners) {
            match g.release(generation) {
                group::Released::Reset(0) => {}
                group::Released::Reset(reset) => warn!(
                    generation,
                    "{}: {reset} connection(s) waited on generation {generation}'s socket, which \
                     no child accepts from any more: reset",
                    l.name
                ),
                group::Released::File { identity, stranded } => {
                    // The file relaunch removes on exit is the one there.
                    if let Some(f) = l.file_mut() {
                        f.renamed_over(identity);
                    }
                    if stranded {
                        error!(
                            generation,
                            "{}: generation {generation}'s socket took the socket file when its \
                             app deleted it, and that generation is gone: new connections wait \
                             there, and the serving generation cannot be reached; reload to \
                             start a generation that serves them (relaunch reload)",
                            l.name
                        );
                    }
                }
            }
        }
    }

    /// A connection of relaunch's own to `generation` alone, on the first
    /// listener's group: a probe answers for the generation.
    fn probe_connection(
        &mut self,
        generation: u64,
        alone: bool,
    ) -> std::result::Result<Socket, NotProbed> {
        // A listener interception moved has a new group.
        self.sync_listeners();
        probe_connect(&mut self.groups, &self.listeners, generation, alone)
    }

    /// `--ready exec:CMD`: `sh -c CMD` as the app's user, forked here (the
    /// main thread), its exit reaped like any child's (see `reap`). It gets
    /// a connection to the generation alone at fd 3: the held address
    /// would reach the serving one.
    fn probe_cmd(
        &mut self,
        number: u64,
        generation: u64,
        cmd: &str,
        pgids: &[i32],
        alone: bool,
    ) -> std::result::Result<(), NotProbed> {
        // The last command's, if it left it as it was: a command that does
        // not use it would otherwise add one to the queue at every check.
        let kept = self.probe_conns.remove(&generation);
        let conn = match kept.filter(|c| c.fresh() && c.untouched()) {
            Some(c) => c,
            None => probe::Conn::new(self.probe_connection(generation, alone)?),
        };
        // Its children, each the leader of its group (`pgrep -g` finds the
        // rest): no /proc scan on the loop's thread.
        let pids: Vec<String> = pgids.iter().map(|p| p.to_string()).collect();
        let mut env = self.build_env.clone();
        env.push(("RELAUNCH_GENERATION".into(), generation.to_string().into()));
        env.push(("RELAUNCH_PIDS".into(), pids.join(" ").into()));
        env.push(("RELAUNCH_PROBE_FD".into(), "3".into()));
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| NotProbed::Own(format!("cannot open /dev/null for it: {e}")))?;
        let (out, err) = (std::io::stderr(), std::io::stderr());
        let fds = [conn.as_fd()];
        let args = [OsString::from("-c"), OsString::from(cmd)];
        let spawned = spawn::spawn(&spawn::Request {
            program: "/bin/sh".as_ref(),
            args: &args,
            env: &env,
            fds: &fds,
            listen_pid: false,
            creds: self.launch.creds.as_ref(),
            intercept: None,
            traps: Default::default(),
            stdio: Some((null.as_fd(), out.as_fd(), err.as_fd())),
        })
        .map_err(|e| NotProbed::Own(format!("cannot run exec:{cmd}: {e}")))?;
        self.probe_conns.insert(generation, conn);
        self.probe_cmds.insert(spawned.pid, (generation, number));
        Ok(())
    }

    /// What a probe helper reported; its connection (one still waiting) is
    /// kept for the next probe unless the probes of its generation ended
    /// meanwhile.
    fn on_probed(&mut self, (generation, number, keep, result): Probed) -> Vec<Event> {
        let running = self.probing.get(&generation) == Some(&number);
        if running {
            self.probing.remove(&generation);
        }
        if running && let Some(conn) = keep {
            self.probe_conns.insert(generation, conn);
        }
        vec![Event::Probed { number, result }]
    }

    /// `generation` is probed no more: its kept connection closes, its
    /// `exec:` command is killed (its exit then answers for a probe that
    /// no longer runs).
    fn end_probe(&mut self, generation: u64) {
        self.probing.remove(&generation);
        self.probe_conns.remove(&generation);
        for (&pid, &(g, _)) in &self.probe_cmds {
            if g == generation {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }

    /// The sockets `generation`'s children get, in the listeners' order.
    /// None: the listeners themselves.
    fn sockets_for(&mut self, generation: u64) -> Option<Vec<Arc<Socket>>> {
        if !self.groups.is_empty() {
            let own: Vec<Arc<Socket>> = self
                .groups
                .iter_mut()
                .map(|g| g.socket_for(generation))
                .collect();
            if let Some(t) = &self.intercept {
                own_members(t, generation, own.iter().cloned().map(Some).collect());
            }
            return Some(own);
        }
        self.intercept.as_ref().map(|t| t.sockets())
    }
}

impl Spawner for Driver {
    fn spawn(&mut self, generation: u64, worker: usize) -> std::result::Result<i32, spawn::Error> {
        let mut env = self.launch.env.clone();
        // Served in every mode: READY=1 also counts in auto, STATUS= always shows.
        match self.notify_socket(generation) {
            Ok(v) => env.push(("NOTIFY_SOCKET".into(), v.into())),
            Err(e) => warn!(generation, "cannot create a notify socket: {e}"),
        }
        env.push(("RELAUNCH_WORKER".into(), worker.to_string().into()));
        self.sync_listeners();
        let ticks = reaper::boot_ticks();
        let held = self.sockets_for(generation);
        let fds: Vec<BorrowedFd<'_>> = match &held {
            Some(held) => held.iter().map(|s| s.as_fd()).collect(),
            None => self.listeners.iter().map(|l| l.socket.as_fd()).collect(),
        };
        sockets::hand_nonblocking(&self.listeners, &fds);
        // The thread that will answer this child's binds, started before the fork.
        let leader = Arc::new(std::sync::OnceLock::new());
        let watch = match &self.intercept {
            Some(t) => match intercept::handler::start(
                Arc::clone(t),
                Arc::clone(&leader),
                self.listened.clone(),
                generation,
            ) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(
                        generation,
                        "cannot start bind interception for this child ({e}): if it binds a \
                         held port itself it gets 'address already in use'"
                    );
                    None
                }
            },
            None => None,
        };
        let spawned = spawn::spawn(&spawn::Request {
            program: &self.launch.program,
            args: &self.launch.args,
            env: &env,
            fds: &fds,
            listen_pid: self.launch.listen_pid,
            creds: self.launch.creds.as_ref(),
            intercept: watch.as_ref().map(|fd| fd.as_fd()),
            traps: self
                .intercept
                .as_ref()
                .map(|t| t.traps())
                .unwrap_or_default(),
            stdio: None,
        })?;
        drop(watch);
        let _ = leader.set(spawned.pid);
        self.spawns.record(spawned.pid, ticks);
        self.watch_exec(spawned.pid, spawned.exec);
        Ok(spawned.pid)
    }

    fn open(&mut self, generation: u64, probes: usize) -> bool {
        // A listener interception moved has a new group.
        self.sync_listeners();
        if self.groups.is_empty() {
            return false;
        }
        let mut own = Vec::with_capacity(self.groups.len());
        let mut ours = self.steered_inodes();
        for (g, l) in self.groups.iter_mut().zip(&self.listeners) {
            let slots = match g {
                Steered::Tcp(g) => g.len(),
                // Kept in the fd store once it has the socket file.
                Steered::Unix(_) => usize::MAX,
            };
            match g.open(generation, &ours) {
                Ok(s) => {
                    ours.extend(steer::inode_of(&s).ok());
                    // A new member: kept in the fd store with its slot.
                    if matches!(g, Steered::Tcp(tcp) if tcp.len() > slots)
                        && self.launch.fd_store
                        && let Some(sd) = &self.systemd
                        && let Err(e) = sd.store(&member_name(&l.name, slots as u32), s.as_raw_fd())
                    {
                        warn!(
                            "{}: cannot offer its new socket to systemd's fd store ({e}); if \
                             relaunch is killed, connections waiting on it are lost",
                            l.name
                        );
                    }
                    own.push(Some(s));
                    match g.probe(generation, probes, group::PROBE_WAIT) {
                        Ok(p) => self.probes.entry(generation).or_default().extend(p),
                        Err(e) => warn!(
                            generation,
                            "{}: cannot connect to generation {generation}'s socket ({e}); a \
                             server that is seen ready only by accepting may not be",
                            l.name
                        ),
                    }
                }
                Err(e) => {
                    warn!(
                        generation,
                        "{}: cannot give generation {generation} a socket of its own ({e}); \
                         this reload stops the old generation as soon as the new one is \
                         ready, without a drain",
                        l.name
                    );
                    self.release_sockets(generation);
                    return false;
                }
            }
        }
        if let Some(t) = &self.intercept {
            t.set_members(generation, own);
            for (i, g) in self.groups.iter().enumerate() {
                if let Steered::Unix(g) = g {
                    tell_files(t, i, g);
                }
            }
        }
        true
    }

    fn steer(&mut self, generation: u64) -> std::result::Result<(), String> {
        self.steer_groups(generation)
    }

    fn share(&mut self, generation: u64, share: f64) -> std::result::Result<(), String> {
        self.share_groups(generation, share)
    }

    fn probe(
        &mut self,
        number: u64,
        generation: u64,
        probe: &Probe,
        pgids: &[i32],
        alone: bool,
    ) -> std::result::Result<(), NotProbed> {
        if let Probe::Exec(cmd) = probe {
            return self.probe_cmd(number, generation, cmd, pgids, alone);
        }
        let kept = self.probe_conns.remove(&generation);
        let conn = match kept.filter(probe::Conn::fresh) {
            Some(c) => c,
            None => probe::Conn::new(self.probe_connection(generation, alone)?),
        };
        let (probe, pgids) = (probe.clone(), pgids.to_vec());
        let tx = self.probed.0.clone();
        self.probing.insert(generation, number);
        tokio::task::spawn_blocking(move || {
            let pids = crate::proc::group_members(&pgids);
            let (keep, result) = probe::look(conn, &probe, &pids);
            let _ = tx.send((generation, number, keep, result));
        });
        Ok(())
    }

    fn jitter(&mut self) -> f64 {
        fastrand::f64()
    }

    fn build(&mut self) -> std::result::Result<i32, spawn::Error> {
        let Some(cmd) = &self.build_cmd else {
            return Err(spawn::Error::Os("no --build command".into()));
        };
        let os = |what: &str, e: std::io::Error| spawn::Error::Os(format!("{what}: {e}"));
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| os("cannot make the build's output pipe", e.into()))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| os("cannot open /dev/null", e))?;
        let args = [OsString::from("-c"), OsString::from(cmd)];
        let spawned = spawn::spawn(&spawn::Request {
            program: "/bin/sh".as_ref(),
            args: &args,
            env: &self.build_env,
            fds: &[],
            listen_pid: false,
            creds: self.launch.creds.as_ref(),
            intercept: None,
            traps: Default::default(),
            stdio: Some((null.as_fd(), write.as_fd(), write.as_fd())),
        })?;
        drop(write);
        let out = PipeLines::new(read).map_err(|e| os("cannot read the build's output", e))?;
        // A cancelled build still running is killed already; its pipe goes.
        self.build = Some(BuildRun {
            pid: spawned.pid,
            out,
            exec: spawned.exec,
            tail: VecDeque::with_capacity(BUILD_TAIL),
        });
        Ok(spawned.pid)
    }
}

/// The real system under the loop: fork, sockets, signals and /proc.
impl Os for Driver {
    type Signals = Signals;
    type Swept = Sweep;

    fn perform(&mut self, core: &mut Supervisor, effects: Vec<Effect>) {
        self.carry_out(effects);
        while let Some((binary, reply)) = self.asked.take() {
            start_upgrade(core, self, binary, reply);
        }
    }

    fn hold(&mut self, reply: control::Reply) -> control::ReplyId {
        self.replies.hold(reply)
    }

    async fn piped(&mut self) -> Vec<Event> {
        tokio::select! {
            () = readable(self.watcher.as_ref().map(|w| &w.out)) => {
                self.watcher.as_mut().map_or_else(Vec::new, Watcher::events)
            }
            () = readable(self.build.as_ref().map(|b| &b.out)) => {
                if let Some(b) = &mut self.build {
                    b.take();
                }
                Vec::new()
            }
            Some(probed) = self.probed.1.recv() => self.on_probed(probed),
            (pid, status) = exec_reported(&self.execs) => {
                self.execs.remove(&pid);
                match status {
                    spawn::ExecStatus::Failed(error) => vec![Event::ExecFailed { pid, error }],
                    _ => Vec::new(),
                }
            }
        }
    }

    fn reap(&mut self) -> Vec<Event> {
        reap(self)
    }

    fn group_check(&mut self, core: &Supervisor) -> Vec<Event> {
        group_check(core, self)
    }

    fn scan_job(&self, core: &Supervisor) -> impl FnOnce() -> Vec<Event> + Send + 'static {
        scan_job(core, self)
    }

    fn sweep_job(&self, core: &Supervisor, sweep: u64) -> impl FnOnce() -> Sweep + Send + 'static {
        sweep_job(core, self, sweep)
    }

    fn swept(&mut self, (sweep, found): Sweep) -> Event {
        let mut named = Vec::new();
        for (l, handle) in found {
            self.escaped.insert(l.pid, handle);
            named.push((l.pid, l.cmd));
        }
        Event::Escaped {
            sweep,
            found: named,
        }
    }

    fn drain_watch(&self, generation: u64) -> Watch {
        Driver::drain_watch(self, generation)
    }

    fn drain_job(
        &self,
        generation: u64,
        pgids: Vec<i32>,
        end_reads: bool,
        mut watch: Watch,
    ) -> impl FnOnce() -> (Watch, Event) + Send + 'static {
        move || {
            let pids = crate::proc::group_members(&pgids);
            let busy = match end_reads {
                true => watch.end_reads(&pids),
                false => watch.look(&pids),
            };
            let busy = busy.map_err(|e| e.to_string());
            (watch, Event::Drained { generation, busy })
        }
    }

    fn guard_job(&self, generation: u64) -> impl FnOnce() -> Vec<Event> + Send + 'static {
        Driver::guard_job(self, generation)
    }

    fn listeners(&mut self) -> &[Listener] {
        self.sync_listeners();
        &self.listeners
    }
}

/// The loop until the core exits; an upgrade's handshake over, the exec.
async fn event_loop(rt: &mut Runtime<Driver>, mut src: Sources<Driver>) -> Result<i32> {
    loop {
        if let Some(exit) = rt.core.exit() {
            return match exit.error {
                Some(msg) => Err(Error::new(crate::error::Kind::of_code(exit.code), msg)),
                None => Ok(exit.code),
            };
        }
        // The new binary's handshake is over: exec it, or say why not.
        if rt.os.upgrade.as_ref().is_some_and(|c| c.exit.is_some()) {
            upgrade_now(rt, &mut src).await;
            continue;
        }
        runtime::turn(rt, &mut src).await;
    }
}

/// Runs the new binary's handshake with the state as it is now. Cold and
/// apart, so its code stays off the pages the loop touches (idle RSS).
#[cold]
#[inline(never)]
fn start_upgrade(
    core: &mut Supervisor,
    os: &mut Driver,
    binary: Option<PathBuf>,
    reply: Option<control::ReplyId>,
) {
    let started = upgrade::binary_path(binary)
        .map_err(|why| (why, None))
        .and_then(|binary| {
            let state = save(core, os, None, Vec::new(), Vec::new(), Vec::new());
            let json = serde_json::to_vec(&state)
                .map_err(|e| (format!("cannot encode the state: {e}"), None))?;
            info!(binary = %binary.display(), "asking the new binary whether it can take over");
            upgrade::start(binary, None, &json)
        });
    match started {
        Ok(mut check) => {
            check.reply = reply;
            os.upgrade = Some(check);
        }
        Err((reason, _)) => {
            let fx = core.handle(Event::UpgradeFailed { reason, reply }, Instant::now(), os);
            os.carry_out(fx);
        }
    }
}

/// Everything the next image needs: the supervisor, the driver, and every
/// fd they hold (with the answers still owed on control connections).
fn save(
    core: &Supervisor,
    os: &Driver,
    upgrade_conn: Option<RawFd>,
    requests: Vec<(control::Request, RawFd)>,
    sigmask: Vec<i32>,
    carried: Vec<intercept::handler::Carried>,
) -> State {
    let (supervisor, waiters) = core.save();
    let (driver, mut fds) = os.save();
    fds.intercept = carried;
    fds.waiters = waiters
        .into_iter()
        .filter_map(|(generation, id)| Some((generation, os.replies.conn(id)?)))
        .collect();
    fds.requests = requests;
    fds.upgrade = upgrade_conn;
    handover::State {
        format: handover::FORMAT,
        pid: std::process::id(),
        from: crate::version::image(),
        sigmask,
        carried: Carried { supervisor, driver },
        fds,
    }
}

/// The handshake is over: refuse, or hand everything over and exec. Only
/// returns if relaunch goes on as it was.
#[cold]
#[inline(never)]
async fn upgrade_now(rt: &mut Runtime<Driver>, src: &mut Sources<Driver>) {
    let Some(mut check) = rt.os.upgrade.take() else {
        return;
    };
    let reply = check.reply.take();
    let image = match check.verdict() {
        Ok(image) => image,
        Err(reason) => return step(rt, Event::UpgradeFailed { reason, reply }),
    };
    info!(binary = %check.binary.display(), "the new binary ({image}) can take over; handing over");
    quiesce(rt, src).await;
    if !rt.core.may_upgrade() {
        let reason = "relaunch is stopping".to_string();
        return step(rt, Event::UpgradeFailed { reason, reply });
    }
    // Bind interception: every handler thread parks between two
    // notifications, so none dies with one received and unanswered (its
    // caller would hang); the next image's threads take over the fds.
    let carried = match &rt.os.intercept {
        Some(t) => match park(t).await {
            Ok(carried) => carried,
            Err(reason) => return step(rt, Event::UpgradeFailed { reason, reply }),
        },
        None => Vec::new(),
    };
    // Blocked before the last await: what a handler took until now reaches
    // its stream at that turn and is sent again below; what comes later
    // stays pending, across the exec.
    let sigmask = crate::sigmask::block_all();
    settle(rt, src).await;
    // Requests read but not handled go with the state, answered over there.
    let mut pending = Vec::new();
    if let Some(rx) = src.control.as_mut() {
        while let Ok(inc) = rx.try_recv() {
            pending.push(inc);
        }
    }
    let requests = pending
        .iter()
        .map(|inc| (inc.request.clone(), inc.reply.conn()))
        .collect();
    // Signals the handlers took but the loop has not seen yet: sent again,
    // they wait (blocked) for whichever image runs next.
    src.signals.requeue();
    let mut state = save(
        &rt.core,
        &rt.os,
        reply.and_then(|id| rt.os.replies.conn(id)),
        requests,
        sigmask.clone(),
        carried,
    );
    let why = upgrade::exec(&check, &mut state);
    // Still here: the old image goes on.
    crate::sigmask::set(&sigmask);
    if let Some(t) = &rt.os.intercept {
        t.resume();
    }
    step(rt, Event::UpgradeFailed { reason: why, reply });
    for inc in pending {
        let reply = rt.os.replies.hold(inc.reply);
        step(
            rt,
            Event::Control {
                request: inc.request,
                reply,
            },
        );
    }
}

/// Before the exec: notify datagrams being checked reach the supervisor,
/// and answers already decided reach their clients. Bounded: a stuck check
/// loses at most what it holds.
async fn quiesce(rt: &mut Runtime<Driver>, src: &mut Sources<Driver>) {
    settle(rt, src).await;
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

/// The old image's last turn, with signals blocked: the datagrams the
/// notify sockets' tasks read (a READY=1 among them) and the listen() hints
/// of the parked interception threads reach the supervisor now, or they
/// would die with this image. No await follows until the exec, so no task
/// reads another datagram; those still in a socket go over with it.
/// Bounded like [`quiesce`].
async fn settle(rt: &mut Runtime<Driver>, src: &mut Sources<Driver>) {
    // At least one turn of the runtime's driver, which moves what the
    // signal handlers took so far into the signal streams.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if rt.os.notify.values().all(|(s, _)| !s.busy()) {
            break;
        }
    }
    while let Ok((generation, msg)) = src.notify.try_recv() {
        if let Some(ev) = handle_notify(&rt.core, generation, msg) {
            step(rt, ev);
        }
    }
    while let Ok((pid, how)) = src.listened.try_recv() {
        step(rt, Event::Listened { pid, how });
    }
}

/// How long bind interception's threads may take to park for an upgrade
/// (each finishes the call in hand: a few /proc reads).
const PARK_DEADLINE: Duration = Duration::from_secs(1);

/// Parks every interception thread (see [`intercept::handler::Table::pause`]):
/// their fds and state, or why the upgrade is refused (they go on then).
async fn park(
    t: &intercept::handler::Table,
) -> std::result::Result<Vec<intercept::handler::Carried>, String> {
    t.pause();
    let deadline = Instant::now() + PARK_DEADLINE;
    loop {
        match t.parked() {
            Ok(carried) => return Ok(carried),
            Err(busy) if Instant::now() >= deadline => {
                t.resume();
                return Err(format!(
                    "{busy} bind interception thread(s) did not stop within {} s (each was \
                     answering a child's bind, or waiting for a new child's filter); try again",
                    PARK_DEADLINE.as_secs()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Looks for processes that escaped a child's group and that no running
/// child owns (see `reaper`), on the blocking pool.
fn sweep_job(
    core: &Supervisor,
    os: &Driver,
    sweep: u64,
) -> impl FnOnce() -> Sweep + Send + 'static {
    let owners = core.owners();
    // relaunch's own helpers (`relaunch-watch`, a `--build`, the keeper)
    // may be its children too, and are no child's: never leftovers.
    let children: Vec<i32> = core
        .children()
        .iter()
        .map(|c| c.pid)
        .chain(os.watcher.as_ref().map(|w| w.pid))
        .chain(os.build.as_ref().map(|b| b.pid))
        .chain(keeper::pid())
        .collect();
    let ending: Vec<i32> = core.escaped().collect();
    let spawns = os.spawns.clone();
    let since = reaper::boot_ticks();
    move || {
        let found = reaper::find_leftovers(&spawns, &owners, &children, &ending, since)
            .into_iter()
            .filter_map(|l| reaper::Escaped::open(&l).map(|h| (l, h)))
            .collect();
        (sweep, found)
    }
}

/// A connection of relaunch's own to `generation` alone, on the first
/// listener: through its group; with none (the drain is off), through the
/// held address if `alone` (no other generation runs to take it).
fn probe_connect(
    groups: &mut [Steered],
    listeners: &[Listener],
    generation: u64,
    alone: bool,
) -> std::result::Result<Socket, NotProbed> {
    let connected = match (groups.first_mut(), listeners.first()) {
        (Some(g), _) => g
            .probe(generation, 1, probe::CONNECT_WAIT)
            .map(|mut c| c.pop()),
        (None, Some(l)) if alone => group::connect_held(&l.socket, probe::CONNECT_WAIT).map(Some),
        _ => {
            return Err(NotProbed::Own(format!(
                "the drain is off (said above): generation {generation} has no socket of its \
                 own, and the held address reaches another generation too"
            )));
        }
    };
    match connected {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(NotProbed::Own("no probe connection was made".into())),
        Err(e) => Err(match e.kind() {
            // The handshake dropped: its queue is full.
            std::io::ErrorKind::TimedOut => NotProbed::Failed(format!(
                "a probe connection was not taken into its accept queue within {} ms (the \
                 queue is full)",
                probe::CONNECT_WAIT.as_millis()
            )),
            // Its socket does not listen.
            std::io::ErrorKind::ConnectionRefused => {
                NotProbed::Failed(format!("cannot connect to its socket: {e}"))
            }
            // The steering rule, the reserved port: relaunch's.
            _ => NotProbed::Own(format!("cannot connect to its socket alone: {e}")),
        }),
    }
}

/// What a probe helper reports: its generation and number, the connection
/// to keep for the next probe, and what it found.
type Probed = (
    u64,
    u64,
    Option<probe::Conn>,
    std::result::Result<String, String>,
);

/// A sweep's number and the escaped processes it found, with handles.
type Sweep = (u64, Vec<(reaper::Leftover, reaper::Escaped)>);

/// Something to read on `pipe`; pending without one.
async fn readable(pipe: Option<&PipeLines>) {
    match pipe {
        Some(p) => p.readable().await,
        None => std::future::pending().await,
    }
}

/// Collects every exited child: a failed exec first (its pipe is complete
/// once the child is gone), then the exit and whether its group lives on.
fn reap(driver: &mut Driver) -> Vec<Event> {
    let mut exits = Vec::new();
    reaper::reap(|pid, status| exits.push((pid, status)));
    let mut events = Vec::new();
    for (pid, status) in exits {
        if keeper::exited(pid, status) {
            continue;
        }
        // Every group relaunch started is the keeper's until it is empty:
        // children, and the build, the watcher and an upgrade's handshake.
        let group_alive = reaper::group_alive(pid);
        if !group_alive {
            keeper::gone(pid);
        }
        if let Some(check) = driver.upgrade.as_mut().filter(|c| c.pid == pid) {
            check.exit = Some(status);
            continue;
        }
        if let Some((_, number)) = driver.probe_cmds.remove(&pid) {
            let said = format!("its exec: command {status}");
            let result = if status.success() {
                Ok(said)
            } else {
                Err(said)
            };
            events.push(Event::Probed { number, result });
            continue;
        }
        if let Some(b) = driver.build.take_if(|b| b.pid == pid) {
            let tail = b.finish();
            events.push(Event::Built { pid, status, tail });
            continue;
        }
        if let Some(w) = driver.watcher.take_if(|w| w.pid == pid) {
            // What it said last (its stderr is ours) explains it.
            let mut w = w;
            for ev in w.events() {
                events.push(ev);
            }
            error!(
                "the file watcher (relaunch-watch, pid {pid}) {status}: changes are no longer \
                 seen; restart relaunch to watch again"
            );
            continue;
        }
        if let Some(watch) = driver.execs.remove(&pid)
            && let spawn::ExecStatus::Failed(error) = watch.get_ref().check()
        {
            events.push(Event::ExecFailed { pid, error });
        }
        events.push(Event::Exited {
            pid,
            status,
            group_alive,
        });
    }
    events
}

/// The lingering groups that are empty now, and the escaped processes
/// that are gone (handles the supervisor no longer tracks are dropped).
fn group_check(core: &Supervisor, os: &mut Driver) -> Vec<Event> {
    let mut events: Vec<Event> = core
        .lingering()
        .filter(|&pgid| !reaper::group_alive(pgid))
        .inspect(|&pgid| keeper::gone(pgid))
        .map(|pgid| Event::GroupGone { pgid })
        .collect();
    let tracked: Vec<i32> = core.escaped().collect();
    os.escaped.retain(|pid, _| tracked.contains(pid));
    for pid in tracked {
        if os.escaped.get(&pid).is_none_or(|e| !e.exists()) {
            os.escaped.remove(&pid);
            events.push(Event::EscapedGone { pid });
        }
    }
    events
}

/// Why a share cannot be steered on `port`: listeners relaunch does not
/// own are there (`found`), and could take it.
fn no_share_beside(name: &str, port: u16, found: &[std::net::SocketAddr]) -> String {
    format!(
        "{name}: other listeners are on port {port} ({}): relaunch never steers a share where \
         they could take it; see who they are with: relaunch who :{port}",
        steer::shown(found)
    )
}

/// The first exec status pipe with news: (pid, what it says).
async fn exec_reported(
    execs: &HashMap<i32, AsyncFd<spawn::ExecWatch>>,
) -> (i32, spawn::ExecStatus) {
    std::future::poll_fn(|cx| {
        for (&pid, fd) in execs {
            loop {
                match fd.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => match fd.get_ref().check() {
                        spawn::ExecStatus::Pending => guard.clear_ready(),
                        status => return Poll::Ready((pid, status)),
                    },
                    Poll::Ready(Err(_)) => return Poll::Ready((pid, spawn::ExecStatus::Ran)),
                    Poll::Pending => break,
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Adds what the kernel knows to a status: each listener's accept queue,
/// and the members of lingering groups. Blocking: /proc and netlink.
fn fill_status(status: &mut control::Status, inodes: &[Vec<u64>], ports: &[Option<u16>]) {
    for ((l, inodes), port) in status.listeners.iter_mut().zip(inodes).zip(ports) {
        if let Some(port) = port
            && let Ok(found) = steer::foreign_listeners(*port, inodes)
        {
            l.others = found.iter().map(|a| a.to_string()).collect();
        }
    }
    match crate::proc::listen_queues() {
        Ok(queues) => {
            for (l, inodes) in status.listeners.iter_mut().zip(inodes) {
                let found: Vec<_> = inodes.iter().filter_map(|i| queues.get(i)).collect();
                if let Some(first) = found.first() {
                    l.waiting = Some(found.iter().map(|q| q.waiting).sum());
                    l.backlog = first.backlog;
                }
            }
        }
        Err(e) => debug!("cannot read the accept queues: {e}"),
    }
    let held: HashSet<u64> = inodes.iter().flatten().copied().collect();
    for c in &mut status.children {
        if c.state == "lingering" {
            c.lingering = reaper::group_members(c.pid);
        }
        c.elsewhere = fallback::listening(&crate::proc::tree(&[c.pid]), &held)
            .into_iter()
            .map(|(_, at, _)| crate::intercept::shown(&crate::intercept::Asked::Inet(at)))
            .collect();
    }
}

/// Scans /proc for the starting children on the blocking pool: a hung
/// mount or a stuck child must not stall the loop.
fn scan_job(core: &Supervisor, os: &Driver) -> impl FnOnce() -> Vec<Event> + Send + 'static {
    let (pids, roots): (Vec<i32>, Vec<Vec<i32>>) = core.to_scan(Instant::now()).unzip();
    // Interception under --port may have rebound a socket, and a reload's
    // generation may have a socket of its own.
    let inodes = os.held_inodes();
    let held: Vec<std::net::SocketAddr> = os
        .listeners
        .iter()
        .filter_map(|l| l.socket.local_addr().ok()?.as_socket())
        .collect();
    let how = match &os.intercept {
        None => fallback::Interception::Off,
        Some(t) if t.probes() => fallback::Interception::Probes,
        Some(_) => fallback::Interception::Binds,
    };
    move || {
        let verdicts = scan::scan_each(&roots, &inodes);
        pids.into_iter()
            .zip(verdicts)
            .zip(&roots)
            .filter_map(|((pid, verdict), roots)| match verdict {
                scan::Verdict::Waiting { pid: p, tid, how } => Some(Event::Ready {
                    pid,
                    how: format!("pid {p} thread {tid} waits in {how}"),
                }),
                scan::Verdict::Accepted { pid: p } => Some(Event::Ready {
                    pid,
                    how: format!("pid {p} holds a connection it accepted"),
                }),
                scan::Verdict::NotYet { blind: Some(why) } => Some(Event::Blind { pid, why }),
                scan::Verdict::NotYet { blind: None } => {
                    fallback::check(roots, &inodes, &held, how)
                        .map(|notice| Event::Elsewhere { pid, notice })
                }
                // Said once at start: blind, without a line per child.
                scan::Verdict::NoProc => Some(Event::Blind {
                    pid,
                    why: String::new(),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the release before this runtime wrote at an upgrade (two
    /// workers, --control, --metrics): a new image must read it.
    #[test]
    fn a_state_written_by_the_previous_release_is_read() {
        let bytes = include_bytes!("testdata/state-format-2.json");
        let state = handover::parse::<Carried>(bytes, None).unwrap();
        assert_eq!(state.format, 2);
        let Carried { supervisor, driver } = state.carried;
        let (core, waiters) = Supervisor::restore(supervisor, Vec::new()).save();
        assert!(waiters.is_empty());
        let json = serde_json::to_value(&core).unwrap();
        assert_eq!(json["serving"], 1);
        assert_eq!(json["children"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["cfg"]["workers"], 2);
        assert!(driver.launch.metrics.is_some());
        assert_eq!(driver.launch.program, "python3");
        assert_eq!(state.fds.listeners.len(), 1);
        assert!(state.fds.control.is_some());
        // Written again, it has the same fields (no mirror to drift).
        let old: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        // Fields added since that release (read with their defaults).
        const ADDED: &[&str] = &["fd_store", "drains", "probe_cmds"];
        let without_added = |v: &serde_json::Value| {
            let mut k = keys(v);
            k.retain(|k| !ADDED.contains(&k.as_str()));
            k
        };
        assert_eq!(keys(&json), keys(&old["supervisor"]));
        assert_eq!(
            without_added(&serde_json::to_value(&driver).unwrap()),
            keys(&old["driver"])
        );
    }

    /// An upgrade never ends in an exit for want of metrics: a port taken
    /// meanwhile (from an image that did not hand the socket over), or a
    /// handed fd that is no listener, leaves relaunch serving without them.
    #[tokio::test]
    async fn metrics_that_cannot_be_served_after_an_upgrade_are_off_not_fatal() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (tally, scrapes, bound, socket) = adopt_metrics(Some(addr), None);
        assert!(tally.is_none() && scrapes.is_none() && bound.is_none() && socket.is_none());
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let (tally, ..) = adopt_metrics(Some(addr), Some(fd));
        assert!(tally.is_none());
        // The socket handed over is served as it is.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(listener);
        let (tally, _scrapes, bound, socket) = adopt_metrics(Some(addr), Some(fd));
        assert!(tally.is_some() && socket.is_some());
        assert_eq!(bound, Some(at));
    }

    /// Where the drain is off at run time (no group), the serving
    /// generation, the only one running, is checked at the held address,
    /// which reaches it alone.
    #[test]
    fn with_the_drain_off_a_generation_running_alone_is_probed_at_the_held_address() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let listeners = [Listener::adopt("web".into(), Socket::from(held), None)];
        let conn = probe_connect(&mut [], &listeners, 1, true).expect("a connection");
        assert_eq!(conn.peer_addr().unwrap().as_socket(), Some(addr));
        let (accepted, _) = listeners[0].socket.accept().unwrap();
        assert_eq!(
            accepted.peer_addr().unwrap().as_socket(),
            conn.local_addr().unwrap().as_socket()
        );
        // Beside another generation (a reload's), it cannot be probed
        // alone, and that is relaunch's, not the app's.
        match probe_connect(&mut [], &listeners, 2, false) {
            Err(NotProbed::Own(why)) => assert!(why.contains("another generation"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unescape_reads_what_relaunch_watch_writes() {
        assert_eq!(super::unescape(r"a\nb\\n c\"), "a\nb\\n c\\");
    }
}
