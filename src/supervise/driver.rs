//! `relaunch [OPTIONS] -- COMMAND`: gathers the listeners, then drives the
//! supervisor from one event loop. Signals, the reaper, exec status pipes,
//! notify datagrams, control requests, timers, a held socket's listen() seen
//! by bind interception, and (only while a generation is starting) the
//! /proc readiness scan become [`Event`]s for
//! [`Supervisor::handle`]; the driver carries out the [`Effect`]s it returns.
//! Nothing on the loop blocks: forks happen here (PR_SET_PDEATHSIG follows
//! the forking thread), /proc is read on the blocking pool. Idle, it sleeps
//! without timers.
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
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::cli::RunArgs;
use crate::control::{self, Incoming, Response};
use crate::error::{Error, Result};
use crate::intercept;
use crate::metrics;
use crate::plan::options::{self, ReadyMode};
use crate::plan::placeholders::Named;
use crate::plan::{self, Snapshot};
use crate::ready::notify::{Message, NotifySocket, Systemd};
use crate::ready::scan;
use crate::sockets::{self, Listener};
use crate::supervise::supervisor::{
    Config, Effect, Event, Notice, Os, Supervisor, Tell, WatchConfig,
};
use crate::supervise::{handover, idle, keeper, reaper, spawn, upgrade};

/// How often /proc is scanned while a generation is starting.
const SCAN_EVERY: Duration = Duration::from_millis(15);
/// How often groups whose leader exited are checked, besides on every
/// SIGCHLD (a member whose parent is not us dies without one).
const GROUP_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Lines of a build's output kept for the message when it fails.
const BUILD_TAIL: usize = 20;
/// A longer line is cut there (in the tail and the live output).
const BUILD_LINE: usize = 1000;

pub async fn run(args: RunArgs, snap: Snapshot) -> Result<i32> {
    let signals = Signals::install()?;
    let inherited = snap.inherited?;
    let names: Vec<&str> = inherited.iter().map(|i| i.name.as_str()).collect();
    let plan = plan::make(&args, &snap.env, &names, &options::credentials)?;
    for n in &plan.notes {
        info!("{n}");
    }
    for w in &plan.warnings {
        warn!("{w}");
    }
    if let Some(line) = scan::proc_missing(plan.ready == ReadyMode::Auto) {
        warn!("{line}");
    }
    // Before any thread: it is forked, and allocates.
    keeper::start(plan.stop_signal, plan.stop_timeout);
    let opened = sockets::open(&plan.listeners, inherited, plan.backlog)?;
    let listeners = opened.listeners;
    for (i, l) in listeners.iter().enumerate() {
        info!("listening on {} as fd {} ({})", l.address(), 3 + i, l.name);
    }
    let named: Vec<Named> = (3..).zip(&listeners).map(|(fd, l)| l.named(fd)).collect();
    let child = plan.child(&named)?;
    for w in &child.warnings {
        warn!("{w}");
    }
    // Nothing runs until the first connection: a command that cannot run
    // is said now, not then.
    if plan.lazy
        && let Err(e) = spawn::check_program(&plan.program, &child.env)
    {
        let kind = match e {
            spawn::Error::NotFound(_) => crate::error::Kind::NotFound,
            _ => crate::error::Kind::NotExecutable,
        };
        return Err(Error::new(kind, e.to_string()));
    }
    // Removed when the driver is dropped, whatever the outcome.
    let ports_file = match &plan.ports_file {
        Some(path) => Some(sockets::PortsFile::write(path, &listeners)?),
        None => None,
    };
    // Orphans of our children land on us, so none stays a zombie.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };

    let notify_socket = plan::var(&snap.env, "NOTIFY_SOCKET").cloned();
    let systemd = Systemd::from_env(notify_socket.as_deref());
    if let Some(s) = &systemd
        && fd_store_allowed(&snap.env)
    {
        let bound: Vec<&Listener> = opened.bound_here.iter().map(|&i| &listeners[i]).collect();
        keep_in_store(s, &bound, plan.unstore.iter().chain(&opened.stale));
    }
    let control = match &plan.control {
        Some(path) => Some(control::Server::bind(path)?),
        None => None,
    };
    let control_fd = control.as_ref().map(|c| {
        let (fd, path, identity) = c.handover();
        handover::FileFd {
            fd,
            file: handover::OwnedPath { path, identity },
        }
    });
    let (tally, scrapes) = serve_metrics(plan.metrics)?;
    // Nothing of it exists without --watch.
    let watcher = match &plan.watch {
        Some(w) => Some(Watcher::start(w, plan.build_env()).await?),
        None => None,
    };
    // Made before the first child: closes are noticed from then on.
    let gauge = match plan.idle_stop {
        Some(_) => Some(Arc::new(idle::Gauge::new(&listeners).map_err(|e| {
            Error::runtime(format!("--idle-stop: cannot watch the listeners: {e}"))
                .hint("raise the limit on open files (ulimit -n)")
        })?)),
        None => None,
    };
    let inodes: HashSet<u64> = listeners
        .iter()
        .filter_map(|l| scan::socket_inode(l.socket.as_fd()).ok())
        .collect();
    let intercept_remedy = Some(intercept_remedy(plan.intercept, &listeners));
    let intercept = if plan.intercept {
        // --lazy and --idle-stop watch the sockets bound now: a move would
        // reset the connection that woke relaunch, or hide from the gauge.
        let on_demand = plan.lazy || plan.idle_stop.is_some();
        let movable: Vec<bool> = plan
            .listeners
            .iter()
            .map(|p| p.bare_port() && !on_demand)
            .collect();
        match intercept::handler::Table::new(&listeners, &movable, plan.backlog) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!("bind interception is off: cannot prepare the held sockets: {e}");
                None
            }
        }
    } else {
        None
    };

    let (notify_tx, notify_rx) = mpsc::unbounded_channel();
    let (listened_tx, listened_rx) = mpsc::unbounded_channel();
    let stop_signal = plan.stop_signal;
    let stop_timeout = plan.stop_timeout;
    let ready = plan.ready;
    let listener_info = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| control::ListenerInfo {
            name: l.name.clone(),
            address: l.address(),
            fd: 3 + i as i32,
            waiting: None,
            backlog: None,
        })
        .collect();
    let build_env = plan.build_env().to_vec();
    let driver = Driver {
        program: plan.program,
        args: child.args,
        listen_pid: plan.listen_pid,
        creds: plan.creds,
        env: child.env,
        listeners,
        intercept,
        listened: listened_tx,
        notify: HashMap::new(),
        notify_tx,
        systemd,
        notify_socket,
        execs: HashMap::new(),
        control: control_fd,
        ports_file,
        quiet: args.quiet,
        upgrade: None,
        asked: None,
        tally,
        metrics: plan.metrics,
        spawns: reaper::Spawns::default(),
        escaped: HashMap::new(),
        build_cmd: plan.watch.as_ref().and_then(|w| w.build.clone()),
        build_env,
        build: None,
        watcher,
    };
    let cfg = Config {
        restart: plan.restart,
        workers: plan.workers,
        stop_signal,
        stop_timeout,
        ready_delay: match ready {
            ReadyMode::Delay(d) => Some(d),
            _ => None,
        },
        ready_auto: ready == ReadyMode::Auto,
        ready_timeout: plan.ready_timeout,
        intercept_remedy,
        listeners: listener_info,
        watch: plan.watch.as_ref().map(|w| WatchConfig {
            debounce: w.debounce,
            build: w.build.is_some(),
        }),
        lazy: plan.lazy,
        idle_stop: plan.idle_stop,
    };
    let mut sup = Supervisor::new(driver, cfg);
    let fx = sup.handle(Event::Start, Instant::now());
    apply(&mut sup, fx);
    let control_rx = control.map(control::Server::serve);
    let result = event_loop(
        &mut sup,
        signals,
        control_rx,
        scrapes,
        Inbox {
            notify: notify_rx,
            listened: listened_rx,
        },
        Arc::new(inodes),
        gauge,
    )
    .await;
    if let Some(w) = sup.os.watcher.take() {
        w.end();
    }
    reaper::end_orphans(stop_signal, stop_timeout).await;
    if let Some(t) = &sup.os.intercept {
        t.remove_files();
    }
    result
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

/// `--metrics ADDR`: the counters and the scrapes to answer.
fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
) -> Result<(Option<metrics::Tally>, Option<mpsc::Receiver<Incoming>>)> {
    Ok(match addr {
        Some(addr) => {
            let (tally, scrapes) = metrics::serve(addr)?;
            (Some(tally), Some(scrapes))
        }
        None => (None, None),
    })
}

/// The driver's own state, for the next image (its fds are in
/// [`handover::Fds`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    program: OsString,
    args: Vec<OsString>,
    listen_pid: bool,
    creds: Option<spawn::Credentials>,
    env: Vec<(OsString, OsString)>,
    /// relaunch's own NOTIFY_SOCKET.
    notify_socket: Option<OsString>,
    quiet: bool,
    /// `--log-format json`.
    #[serde(default)]
    json: bool,
    /// `--metrics`: served again by the next image (its counters start over,
    /// as a restart's would).
    #[serde(default)]
    metrics: Option<std::net::SocketAddr>,
    ports_file: Option<handover::OwnedPath>,
    /// Bind interception's held sockets (their fds are the listeners').
    #[serde(default)]
    intercept: Option<intercept::handler::SavedTable>,
}

impl Saved {
    pub fn quiet(&self) -> bool {
        self.quiet
    }
    pub fn json(&self) -> bool {
        self.json
    }
}

/// The new image after an upgrade: adopts what the old one handed over
/// and goes on where it was.
#[cold]
#[inline(never)]
pub async fn adopt(state: handover::State) -> Result<i32> {
    let signals = Signals::install()?;
    let handover::State {
        format: _,
        pid: _,
        from,
        sigmask,
        supervisor: saved_sup,
        driver: saved,
        fds,
    } = state;
    // Close-on-exec again at once: no child may see them but through spawn.
    for fd in fds.all() {
        if !handover::set_cloexec(fd, true) {
            warn!("the upgrade state names fd {fd}, which is not open");
        }
    }
    let handover::Fds {
        listeners: saved_listeners,
        control: saved_control,
        notify: saved_notify,
        execs: saved_execs,
        waiters: saved_waiters,
        requests: saved_requests,
        upgrade: upgrade_conn,
        intercept: carried,
        keeper: saved_keeper,
    } = fds;
    if let Some(k) = saved_keeper {
        keeper::adopt(k);
    }
    let bad = |what: String| {
        Error::runtime(format!("cannot adopt {what} after the upgrade"))
            .hint("this is a bug in relaunch; restart it (its children were stopped)")
    };
    let mut listeners = Vec::with_capacity(saved_listeners.len());
    for l in saved_listeners {
        let i = plan::inherit::adopt(l.fd, l.name.clone())
            .map_err(|e| bad(format!("listener {} (fd {}): {e}", l.name, l.fd)))?;
        let file = l
            .file
            .map(|f| sockets::file::SocketFile::adopt(f.path, f.identity));
        listeners.push(Listener::adopt(l.name, i.fd.into(), i.addr).with_file(file));
    }
    let control = match saved_control {
        Some(c) => Some(
            control::Server::adopt(c.fd, c.file.path.clone(), c.file.identity)
                .map_err(|e| bad(format!("the control socket: {e}")))?,
        ),
        None => None,
    };
    let control_fd = control.as_ref().map(|c| {
        let (fd, path, identity) = c.handover();
        handover::FileFd {
            fd,
            file: handover::OwnedPath { path, identity },
        }
    });
    let (tally, scrapes) = serve_metrics(saved.metrics)?;
    let (notify_tx, notify_rx) = mpsc::unbounded_channel();
    let (listened_tx, listened_rx) = mpsc::unbounded_channel();
    let intercept = match saved.intercept {
        Some(t) => match intercept::handler::Table::adopt(&listeners, t) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(
                    "bind interception is off after the upgrade: cannot adopt the held \
                     sockets ({e}); a child that binds a held port itself fails with ENOSYS \
                     until it is restarted"
                );
                None
            }
        },
        None => None,
    };
    // Each child's binds are answered again, before anything else runs.
    if let Some(t) = &intercept {
        for c in carried {
            let leader = c.leader;
            if let Err(e) = intercept::handler::resume(Arc::clone(t), c, listened_tx.clone()) {
                warn!(
                    pid = leader,
                    "cannot answer this child's binds after the upgrade ({e}): its binds \
                     fail with ENOSYS until it is restarted"
                );
            }
        }
    } else {
        for c in carried {
            // SAFETY: handed over for us alone; closed once.
            drop(unsafe { OwnedFd::from_raw_fd(c.fd) });
        }
    }
    let mut driver = Driver {
        systemd: Systemd::from_env(saved.notify_socket.as_deref()),
        program: saved.program,
        args: saved.args,
        listen_pid: saved.listen_pid,
        creds: saved.creds,
        env: saved.env,
        listeners,
        notify: HashMap::new(),
        notify_tx,
        notify_socket: saved.notify_socket,
        execs: HashMap::new(),
        control: control_fd,
        ports_file: saved
            .ports_file
            .map(|f| sockets::PortsFile::adopt(f.path, f.identity)),
        quiet: saved.quiet,
        upgrade: None,
        asked: None,
        tally,
        metrics: saved.metrics,
        spawns: reaper::Spawns::default(),
        escaped: HashMap::new(),
        intercept,
        listened: listened_tx,
        // Never under --watch (an upgrade is refused there).
        build_cmd: None,
        build_env: Vec::new(),
        build: None,
        watcher: None,
    };
    for n in saved_notify {
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
    for e in saved_execs {
        let pid = e.pid;
        driver.watch_exec(pid, spawn::ExecWatch::adopt(e));
    }
    let mut waiters = Vec::new();
    for (generation, fd) in saved_waiters {
        match control::Reply::adopt(fd) {
            Ok(r) => waiters.push((generation, r)),
            Err(e) => warn!("cannot adopt a waiting reload client after the upgrade: {e}"),
        }
    }
    let inodes: HashSet<u64> = driver
        .listeners
        .iter()
        .filter_map(|l| scan::socket_inode(l.socket.as_fd()).ok())
        .collect();
    let mut sup = Supervisor::restore(driver, saved_sup, waiters);
    let (stop_signal, stop_timeout) = (sup.config().stop_signal, sup.config().stop_timeout);
    // Orphans of our children land on us, so none stays a zombie.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // The handlers are in: what arrived during the exec is delivered now.
    crate::sigmask::set(&sigmask);
    let kept = sup.children().iter().filter(|c| c.alive()).count();
    let to = handover::image();
    info!(
        "upgraded from {from} to {to}, kept {} listeners and {kept} children",
        sup.os.listeners.len()
    );
    if let Some(fd) = upgrade_conn {
        match control::Reply::adopt(fd) {
            Ok(r) => {
                let _ = r.send(Response::Upgraded {
                    pid: std::process::id(),
                    from,
                    to,
                    listeners: sup.os.listeners.len(),
                    children: kept,
                });
            }
            Err(e) => warn!("cannot answer `relaunch upgrade` after the upgrade: {e}"),
        }
    }
    sup.tell_serving();
    let fx = sup.effects();
    apply(&mut sup, fx);
    for (request, fd) in saved_requests {
        match control::Reply::adopt(fd) {
            Ok(reply) => {
                let fx = sup.handle(Event::Control { request, reply }, Instant::now());
                apply(&mut sup, fx);
            }
            Err(e) => warn!("cannot adopt a pending control request after the upgrade: {e}"),
        }
    }
    // Children that ended during the exec are zombies by now.
    let events = reap(&mut sup.os);
    let gone = group_check(&mut sup);
    for ev in events.into_iter().chain(gone) {
        let fx = sup.handle(ev, Instant::now());
        apply(&mut sup, fx);
    }
    let control_rx = control.map(control::Server::serve);
    // Never under --lazy/--idle-stop (an upgrade is refused there).
    let result = event_loop(
        &mut sup,
        signals,
        control_rx,
        scrapes,
        Inbox {
            notify: notify_rx,
            listened: listened_rx,
        },
        Arc::new(inodes),
        None,
    )
    .await;
    reaper::end_orphans(stop_signal, stop_timeout).await;
    result
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
    program: OsString,
    args: Vec<OsString>,
    listen_pid: bool,
    creds: Option<spawn::Credentials>,
    /// Everything but LISTEN_PID, NOTIFY_SOCKET and RELAUNCH_WORKER.
    env: Vec<(OsString, OsString)>,
    listeners: Vec<Listener>,
    /// The held sockets as bind interception sees them (None: --no-intercept).
    /// Under `--port` it may rebind one where the app binds: children get
    /// their fds from here.
    intercept: Option<Arc<intercept::handler::Table>>,
    /// Where interception tells a held socket's listen() (a readiness hint).
    listened: intercept::handler::Listened,
    /// One notify socket per generation; the task forwards its datagrams.
    notify: HashMap<u64, (Arc<NotifySocket>, tokio::task::JoinHandle<()>)>,
    notify_tx: mpsc::UnboundedSender<(u64, Message)>,
    systemd: Option<Systemd>,
    /// relaunch's own NOTIFY_SOCKET, which `systemd` talks to.
    notify_socket: Option<OsString>,
    /// Exec status pipes of children that may not have exec'd yet.
    execs: HashMap<i32, AsyncFd<spawn::ExecWatch>>,
    /// The control socket (served by its own task).
    control: Option<handover::FileFd>,
    /// Removed when the driver is dropped (relaunch's end), not at an upgrade.
    ports_file: Option<sockets::PortsFile>,
    quiet: bool,
    /// The new binary's handshake, while it runs.
    upgrade: Option<upgrade::Check>,
    /// An upgrade the supervisor allowed, for the loop to start.
    asked: Option<(Option<PathBuf>, Option<control::Reply>)>,
    /// `--metrics`: the counters the supervisor's [`Effect::Count`]s feed.
    tally: Option<metrics::Tally>,
    metrics: Option<std::net::SocketAddr>,
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

/// The lines a child writes to a pipe, read without blocking.
struct PipeLines {
    /// Read end, non-blocking; None after EOF.
    fd: Option<AsyncFd<OwnedFd>>,
    /// A line not finished yet.
    partial: Vec<u8>,
}

impl PipeLines {
    fn new(read: OwnedFd) -> std::io::Result<PipeLines> {
        // Only our end: a child writing to a non-blocking pipe would see EAGAIN.
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the OwnedFd is moved in and never swapped, so the fd stays
        // open and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(PipeLines {
            fd: Some(fd),
            partial: Vec::new(),
        })
    }

    /// Waits until there is something to read (pending forever after EOF).
    async fn readable(&self) {
        match &self.fd {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable().await {
                    guard.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The complete lines there are now; after EOF, the unfinished one too.
    fn lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; 8192];
        while let Some(fd) = &self.fd {
            match nix::unistd::read(fd.get_ref(), &mut buf) {
                Ok(0) => self.fd = None,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => self.fd = None,
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(text(&line[..line.len() - 1]));
        }
        if self.partial.len() > BUILD_LINE || (self.fd.is_none() && !self.partial.is_empty()) {
            lines.push(text(&std::mem::take(&mut self.partial)));
        }
        lines
    }
}

/// A line for the log: at most BUILD_LINE bytes, lossy UTF-8, no CR.
fn text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(BUILD_LINE)]);
    text.trim_end_matches('\r').to_string()
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
            if watcher.out.fd.is_none() {
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
        if !self.out.partial.is_empty() {
            let line = text(&std::mem::take(&mut self.out.partial));
            self.tail.push_back(line);
        }
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
            program: self.program.clone(),
            args: self.args.clone(),
            listen_pid: self.listen_pid,
            creds: self.creds.clone(),
            env: self.env.clone(),
            notify_socket: self.notify_socket.clone(),
            quiet: self.quiet,
            json: crate::logging::json(),
            metrics: self.metrics,
            ports_file: self.ports_file.as_ref().map(|p| {
                let (path, identity) = p.identity();
                handover::OwnedPath { path, identity }
            }),
            intercept: self.intercept.as_ref().map(|t| t.save()),
        };
        let fds = handover::Fds {
            listeners,
            control: self.control.clone(),
            notify,
            execs,
            keeper: keeper::save(),
            ..Default::default()
        };
        (saved, fds)
    }

    fn perform(&mut self, effects: Vec<Effect>) {
        for mut effect in effects {
            // Interception under --port may have moved a listener.
            if let (
                Effect::Reply {
                    response: Response::Status(status),
                    ..
                },
                Some(t),
            ) = (&mut effect, &self.intercept)
            {
                for (l, moved) in status.listeners.iter_mut().zip(t.moved()) {
                    if let Some(address) = moved {
                        l.address = address;
                    }
                }
            }
            match effect {
                Effect::SignalEscaped { pid, sig } => {
                    if let Some(e) = self.escaped.get(&pid)
                        && let Err(err) = e.signal(sig)
                        && err.raw_os_error() != Some(libc::ESRCH)
                    {
                        warn!(pid, "cannot send {} to pid {pid}: {err}", sig.as_str());
                    }
                }
                Effect::Signal { pgid, sig } => {
                    match killpg(Pid::from_raw(pgid), sig) {
                        Ok(()) => {}
                        // Already gone: its exit or GroupGone follows.
                        Err(nix::errno::Errno::ESRCH) => {
                            debug!(pgid, "killpg {}: no such group", sig.as_str())
                        }
                        Err(e) => warn!(
                            pgid,
                            "cannot send {} to process group {pgid}: {e}; a member may belong \
                             to another user (a setuid program)",
                            sig.as_str()
                        ),
                    }
                }
                Effect::Tell(tell) => {
                    if matches!(tell, Tell::Ready(_))
                        && let Some(t) = &self.intercept
                    {
                        t.pin();
                    }
                    if matches!(tell, Tell::Ready(_)) {
                        // Now serving, likely to idle: what start-up or the
                        // reload freed goes back to the kernel (glibc would
                        // keep it), so the idle footprint stays small.
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
                Effect::Reply {
                    to,
                    response: Response::Status(mut status),
                } => {
                    // Accept queues (sock_diag) and who is left in lingering
                    // groups (/proc) are read off the loop, for the sockets
                    // held now (interception may have rebound one).
                    self.sync_listeners();
                    let inodes: Vec<Option<u64>> = self
                        .listeners
                        .iter()
                        .map(|l| scan::socket_inode(l.socket.as_fd()).ok())
                        .collect();
                    tokio::task::spawn_blocking(move || {
                        fill_status(&mut status, &inodes);
                        let _ = to.send(Response::Status(status));
                    });
                }
                Effect::Reply { to, response } => {
                    let _ = to.send(response);
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
                }
                Effect::Upgrade { binary, reply } => {
                    if self.upgrade.is_some() || self.asked.is_some() {
                        if let Some(to) = reply {
                            let _ = to.send(Response::UpgradeFailed {
                                reason: "another upgrade is under way; wait for its outcome".into(),
                            });
                        }
                    } else {
                        self.asked = Some((binary, reply));
                    }
                }
            }
        }
    }
}

impl Driver {
    /// A socket interception rebound (`--port`'s move, a deleted Unix socket
    /// file) replaces ours, so the old one closes and `--lazy` watches the
    /// new one.
    fn sync_listeners(&mut self) {
        let Some(t) = &self.intercept else {
            return;
        };
        let inode = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).ok().map(|s| s.st_ino);
        for (l, h) in self.listeners.iter_mut().zip(t.sockets()) {
            if inode(l.socket.as_fd()) != inode(h.as_fd())
                && let Ok(copy) = h.try_clone()
            {
                l.socket = copy;
            }
        }
    }
}

impl Os for Driver {
    fn spawn(&mut self, generation: u64, worker: usize) -> std::result::Result<i32, spawn::Error> {
        let mut env = self.env.clone();
        // Served in every mode: READY=1 also counts in auto, STATUS= always shows.
        match self.notify_socket(generation) {
            Ok(v) => env.push(("NOTIFY_SOCKET".into(), v.into())),
            Err(e) => warn!(generation, "cannot create a notify socket: {e}"),
        }
        env.push(("RELAUNCH_WORKER".into(), worker.to_string().into()));
        self.sync_listeners();
        let ticks = reaper::boot_ticks();
        let held = self.intercept.as_ref().map(|t| t.sockets());
        let fds: Vec<BorrowedFd<'_>> = match &held {
            Some(held) => held.iter().map(|s| s.as_fd()).collect(),
            None => self.listeners.iter().map(|l| l.socket.as_fd()).collect(),
        };
        // The thread that will answer this child's binds, started before the fork.
        let leader = Arc::new(std::sync::OnceLock::new());
        let watch = match &self.intercept {
            Some(t) => match intercept::handler::start(
                Arc::clone(t),
                Arc::clone(&leader),
                self.listened.clone(),
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
            program: &self.program,
            args: &self.args,
            env: &env,
            fds: &fds,
            listen_pid: self.listen_pid,
            creds: self.creds.as_ref(),
            intercept: watch.as_ref().map(|fd| fd.as_fd()),
            stdio: None,
        })?;
        drop(watch);
        let _ = leader.set(spawned.pid);
        self.spawns.record(spawned.pid, ticks);
        self.watch_exec(spawned.pid, spawned.exec);
        Ok(spawned.pid)
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
            creds: self.creds.as_ref(),
            intercept: None,
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

/// The signals relaunch handles, as streams.
struct Signals {
    chld: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    winch: tokio::signal::unix::Signal,
}

impl Signals {
    /// Sends again to ourselves every signal a handler took that no stream
    /// has returned yet (call with signals blocked, before an exec).
    fn requeue(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let me = nix::unistd::getpid();
        for (stream, sig) in [
            (&mut self.chld, Signal::SIGCHLD),
            (&mut self.term, Signal::SIGTERM),
            (&mut self.int, Signal::SIGINT),
            (&mut self.hup, Signal::SIGHUP),
            (&mut self.quit, Signal::SIGQUIT),
            (&mut self.usr1, Signal::SIGUSR1),
            (&mut self.usr2, Signal::SIGUSR2),
            (&mut self.winch, Signal::SIGWINCH),
        ] {
            if let Poll::Ready(Some(())) = stream.poll_recv(&mut cx) {
                let _ = nix::sys::signal::kill(me, sig);
            }
        }
    }

    /// Installed before anything with a cleanup exists (socket files, the
    /// ports file) and before the first fork, so a stop during start-up is
    /// handled like any other and no child exit is missed.
    fn install() -> Result<Signals> {
        let sig = |k: SignalKind| {
            signal(k).map_err(|e| Error::runtime(format!("cannot install signal handlers: {e}")))
        };
        Ok(Signals {
            chld: sig(SignalKind::child())?,
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            hup: sig(SignalKind::hangup())?,
            quit: sig(SignalKind::quit())?,
            usr1: sig(SignalKind::user_defined1())?,
            usr2: sig(SignalKind::user_defined2())?,
            winch: sig(SignalKind::window_change())?,
        })
    }
}

/// What other tasks and threads send the loop: notify datagrams (by
/// generation) and held sockets' listen() seen by interception.
struct Inbox {
    notify: mpsc::UnboundedReceiver<(u64, Message)>,
    listened: mpsc::UnboundedReceiver<(i32, String)>,
}

async fn event_loop(
    sup: &mut Supervisor<Driver>,
    mut signals: Signals,
    mut control_rx: Option<mpsc::Receiver<Incoming>>,
    mut scrapes: Option<mpsc::Receiver<Incoming>>,
    inbox: Inbox,
    mut inodes: Arc<HashSet<u64>>,
    gauge: Option<Arc<idle::Gauge>>,
) -> Result<i32> {
    let Inbox {
        notify: mut notify_rx,
        listened: mut listened_rx,
    } = inbox;
    // Absolute instants, so traffic on other branches cannot push them back.
    let mut next_scan: Option<Instant> = None;
    let mut next_group_check: Option<Instant> = None;
    let mut scan_task: Option<JoinHandle<Vec<Event>>> = None;
    // The listeners, in the loop's epoll set only while no child runs.
    let mut watches: Option<Vec<AsyncFd<Held>>> = None;
    let mut next_probe: Option<Instant> = None;
    let mut probe_task: Option<JoinHandle<Event>> = None;
    // Escaped processes are looked for when a child ends or is being stopped
    // (the owners change) and when anything is reaped (an orphan that died
    // may have left its own children on us). One sweep at a time.
    let mut sweep_task: Option<JoinHandle<Sweep>> = None;
    loop {
        if let Some(exit) = sup.exit() {
            if let Some(msg) = exit.error {
                return Err(Error::new(
                    match exit.code {
                        127 => crate::error::Kind::NotFound,
                        126 => crate::error::Kind::NotExecutable,
                        _ => crate::error::Kind::Runtime,
                    },
                    msg,
                ));
            }
            return Ok(exit.code);
        }
        // The new binary's handshake is over: exec it, or say why not.
        if sup.os.upgrade.as_ref().is_some_and(|c| c.exit.is_some()) {
            upgrade_now(sup, &mut signals, &mut control_rx, &mut notify_rx).await;
            continue;
        }
        let now = Instant::now();
        // Timers run only while something starts or stops: idle, none.
        let scanning = sup.to_scan(now).next().is_some();
        next_scan = next_scan
            .filter(|_| scanning)
            .or_else(|| scanning.then(|| now + SCAN_EVERY));
        let lingering = sup.lingering().next().is_some() || sup.escaped().next().is_some();
        next_group_check = next_group_check
            .filter(|_| lingering)
            .or_else(|| lingering.then(|| now + GROUP_CHECK_EVERY));
        let deadline = sup.next_deadline();
        let check_deadline = sup
            .os
            .upgrade
            .as_ref()
            .filter(|c| !c.timed_out)
            .map(|c| c.deadline);
        if !sup.waiting() {
            watches = None;
        } else if watches.is_none() {
            sup.os.sync_listeners();
            let (w, failed) = watch(&sup.os.listeners);
            watches = Some(w);
            if failed {
                step(sup, Event::Connection);
                continue;
            }
        }
        let probe_every = sup.idle_probe_every().filter(|_| gauge.is_some());
        if let Some(g) = &gauge {
            g.follow(probe_every.is_some());
        }
        next_probe = next_probe
            .filter(|_| probe_every.is_some())
            .or_else(|| probe_every.map(|every| now + every));
        // Also exactly when the idle time would be over (not while a
        // measure runs: a due time in the past would fire at every turn).
        let probe_due = match sup.idle_stop_due().filter(|_| probe_task.is_none()) {
            Some(due) => next_probe.map(|n| n.min(due)),
            None => next_probe,
        };
        let events: Vec<Event> = tokio::select! {
            _ = signals.chld.recv() => {
                let mut events = reap(&mut sup.os);
                for ev in events.drain(..) {
                    step(sup, ev);
                }
                // Leaders reaped just now may have been the last of their groups.
                group_check(sup)
            }
            _ = signals.term.recv() => { info!("SIGTERM: stopping"); vec![Event::Stop] }
            _ = signals.int.recv() => { info!("SIGINT: stopping"); vec![Event::Stop] }
            _ = signals.hup.recv() => { info!("SIGHUP: reload"); vec![Event::Reload] }
            _ = signals.quit.recv() => vec![Event::Forward(Signal::SIGQUIT)],
            _ = signals.usr1.recv() => vec![Event::Forward(Signal::SIGUSR1)],
            _ = signals.usr2.recv() => {
                info!("SIGUSR2: upgrading relaunch in place");
                vec![Event::Upgrade { binary: None, reply: None }]
            }
            _ = signals.winch.recv() => vec![Event::Forward(Signal::SIGWINCH)],
            Some(inc) = recv(&mut control_rx) => {
                vec![Event::Control { request: inc.request, reply: inc.reply }]
            }
            // A scrape is a status request (--metrics).
            Some(inc) = recv(&mut scrapes) => {
                vec![Event::Control { request: inc.request, reply: inc.reply }]
            }
            Some((pid, how)) = listened_rx.recv() => vec![Event::Listened { pid, how }],
            () = readable(sup.os.watcher.as_ref().map(|w| &w.out)) => {
                sup.os.watcher.as_mut().map_or_else(Vec::new, Watcher::events)
            }
            () = readable(sup.os.build.as_ref().map(|b| &b.out)) => {
                if let Some(b) = &mut sup.os.build {
                    b.take();
                }
                Vec::new()
            }
            Some((generation, msg)) = notify_rx.recv() => handle_notify(sup, generation, msg).into_iter().collect(),
            (pid, status) = exec_reported(&sup.os.execs) => {
                sup.os.execs.remove(&pid);
                match status {
                    spawn::ExecStatus::Failed(error) => vec![Event::ExecFailed { pid, error }],
                    _ => Vec::new(),
                }
            }
            _ = sleep_until(deadline) => vec![Event::Timer],
            _ = sleep_until(next_scan) => {
                let at = next_scan.map_or(now, |t| t + SCAN_EVERY);
                next_scan = Some(at.max(Instant::now()));
                // One scan at a time; a slow one skips ticks rather than piling up.
                if scan_task.is_none() {
                    // Interception under --port may have rebound a socket.
                    if let Some(t) = &sup.os.intercept {
                        inodes = Arc::new(t.inodes());
                    }
                    scan_task = Some(start_scan(sup, &inodes));
                }
                Vec::new()
            }
            Some(events) = join(&mut scan_task) => events,
            Some((sweep, found)) = join(&mut sweep_task) => {
                let mut named = Vec::new();
                for (l, handle) in found {
                    sup.os.escaped.insert(l.pid, handle);
                    named.push((l.pid, l.cmd));
                }
                vec![Event::Escaped { sweep, found: named }]
            }
            _ = sleep_until(next_group_check) => {
                next_group_check = None;
                group_check(sup)
            }
            _ = sleep_until(check_deadline) => {
                if let Some(c) = sup.os.upgrade.as_mut() {
                    warn!(pid = c.pid, "the new binary's handshake did not answer within {} s; killing it", handover::CHECK_DEADLINE.as_secs());
                    c.timed_out = true;
                    let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                }
                Vec::new()
            }
            _ = connection_waiting(watches.as_deref()) => vec![Event::Connection],
            _ = sleep_until(probe_due) => {
                next_probe = probe_every.map(|every| Instant::now() + every);
                if probe_task.is_none()
                    && let Some(g) = &gauge
                {
                    let g = Arc::clone(g);
                    probe_task = Some(tokio::task::spawn_blocking(move || {
                        let m = g.measure();
                        Event::Activity {
                            open: m.open,
                            churned: m.churned,
                        }
                    }));
                }
                Vec::new()
            }
            Some(event) = join(&mut probe_task) => vec![event],
        };
        for ev in events {
            step(sup, ev);
        }
        if sweep_task.is_none()
            && let Some(sweep) = sup.sweep_wanted()
        {
            sweep_task = Some(start_sweep(sup, sweep));
        }
    }
}

/// Carries out `fx`, then starts an upgrade the supervisor allowed.
fn apply(sup: &mut Supervisor<Driver>, fx: Vec<Effect>) {
    sup.os.perform(fx);
    while let Some((binary, reply)) = sup.os.asked.take() {
        start_upgrade(sup, binary, reply);
    }
    crate::logging::set_generation(sup.serving());
}

/// One event through the supervisor, its effects carried out.
fn step(sup: &mut Supervisor<Driver>, event: Event) {
    let fx = sup.handle(event, Instant::now());
    apply(sup, fx);
}

/// Runs the new binary's handshake with the state as it is now. Cold and
/// apart, so its code stays off the pages the loop touches (idle RSS).
#[cold]
#[inline(never)]
fn start_upgrade(
    sup: &mut Supervisor<Driver>,
    binary: Option<PathBuf>,
    reply: Option<control::Reply>,
) {
    let started = upgrade::binary_path(binary)
        .map_err(|why| (why, None))
        .and_then(|binary| {
            let state = save(sup, None, Vec::new(), Vec::new(), Vec::new());
            let json = serde_json::to_vec(&state)
                .map_err(|e| (format!("cannot encode the state: {e}"), None))?;
            info!(binary = %binary.display(), "asking the new binary whether it can take over");
            upgrade::start(binary, None, &json)
        });
    match started {
        Ok(mut check) => {
            check.reply = reply;
            sup.os.upgrade = Some(check);
        }
        Err((reason, _)) => {
            let fx = sup.handle(Event::UpgradeFailed { reason, reply }, Instant::now());
            sup.os.perform(fx);
        }
    }
}

/// Everything the next image needs: the supervisor, the driver, and every
/// fd they hold (with the answers still owed on control connections).
fn save(
    sup: &Supervisor<Driver>,
    upgrade_conn: Option<RawFd>,
    requests: Vec<(control::Request, RawFd)>,
    sigmask: Vec<i32>,
    carried: Vec<intercept::handler::Carried>,
) -> handover::State {
    let (supervisor, waiters) = sup.save();
    let (driver, mut fds) = sup.os.save();
    fds.intercept = carried;
    fds.waiters = waiters;
    fds.requests = requests;
    fds.upgrade = upgrade_conn;
    handover::State {
        format: handover::FORMAT,
        pid: std::process::id(),
        from: handover::image(),
        sigmask,
        supervisor,
        driver,
        fds,
    }
}

/// The handshake is over: refuse, or hand everything over and exec. Only
/// returns if relaunch goes on as it was.
#[cold]
#[inline(never)]
async fn upgrade_now(
    sup: &mut Supervisor<Driver>,
    signals: &mut Signals,
    control_rx: &mut Option<mpsc::Receiver<Incoming>>,
    notify_rx: &mut mpsc::UnboundedReceiver<(u64, Message)>,
) {
    let Some(mut check) = sup.os.upgrade.take() else {
        return;
    };
    let reply = check.reply.take();
    let image = match check.verdict() {
        Ok(image) => image,
        Err(reason) => {
            let fx = sup.handle(Event::UpgradeFailed { reason, reply }, Instant::now());
            apply(sup, fx);
            return;
        }
    };
    info!(binary = %check.binary.display(), "the new binary ({image}) can take over; handing over");
    // Quiesce: notify datagrams being checked reach the supervisor, and
    // answers already decided reach their clients. Bounded: a stuck check
    // loses at most what it holds.
    for _ in 0..200 {
        if sup.os.notify.values().all(|(s, _)| !s.busy()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::task::yield_now().await;
    while let Ok((generation, msg)) = notify_rx.try_recv() {
        if let Some(ev) = handle_notify(sup, generation, msg) {
            let fx = sup.handle(ev, Instant::now());
            apply(sup, fx);
        }
    }
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    if !sup.may_upgrade() {
        let reason = "relaunch is stopping".to_string();
        let fx = sup.handle(Event::UpgradeFailed { reason, reply }, Instant::now());
        apply(sup, fx);
        return;
    }
    // Bind interception: every handler thread parks between two
    // notifications, so none dies with one received and unanswered (its
    // caller would hang); the next image's threads take over the fds.
    let carried = match &sup.os.intercept {
        Some(t) => match park(t).await {
            Ok(carried) => carried,
            Err(reason) => {
                let fx = sup.handle(Event::UpgradeFailed { reason, reply }, Instant::now());
                apply(sup, fx);
                return;
            }
        },
        None => Vec::new(),
    };
    // Requests read but not handled go with the state, answered over there.
    let mut pending = Vec::new();
    if let Some(rx) = control_rx.as_mut() {
        while let Ok(inc) = rx.try_recv() {
            pending.push(inc);
        }
    }
    let requests = pending
        .iter()
        .map(|inc| (inc.request.clone(), inc.reply.conn()))
        .collect();
    let sigmask = crate::sigmask::block_all();
    // Signals the handlers took but the loop has not seen yet: sent again,
    // they wait (blocked) for whichever image runs next.
    signals.requeue();
    let state = save(
        sup,
        reply.as_ref().map(|r| r.conn()),
        requests,
        sigmask.clone(),
        carried,
    );
    let why = upgrade::exec(&check.binary, &state);
    // Still here: the old image goes on.
    crate::sigmask::set(&sigmask);
    if let Some(t) = &sup.os.intercept {
        t.resume();
    }
    let fx = sup.handle(Event::UpgradeFailed { reason: why, reply }, Instant::now());
    apply(sup, fx);
    for inc in pending {
        let fx = sup.handle(
            Event::Control {
                request: inc.request,
                reply: inc.reply,
            },
            Instant::now(),
        );
        apply(sup, fx);
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

/// A held listener's fd, watched while no child runs. The listener itself
/// stays in the driver for relaunch's whole life, so the fd outlives this.
struct Held(RawFd);

impl AsRawFd for Held {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Puts the listeners into the loop's epoll set (a connection already
/// waiting shows at once). `true` when one cannot be watched: then nothing
/// could wake us for it, so the caller starts at once instead.
fn watch(listeners: &[Listener]) -> (Vec<AsyncFd<Held>>, bool) {
    let mut out = Vec::with_capacity(listeners.len());
    let mut failed = false;
    for l in listeners {
        let held = Held(l.socket.as_raw_fd());
        // SAFETY: the listener owns the fd and is neither closed nor replaced
        // while relaunch runs; the watches are dropped before the listeners.
        match unsafe { AsyncFd::register_with_interest(held, Interest::READABLE) } {
            Ok(w) => out.push(w),
            Err(e) => {
                let e = e.into_parts().1;
                warn!(
                    "cannot watch {} ({}) for connections: {e}; starting the children now",
                    l.name,
                    l.address()
                );
                failed = true;
            }
        }
    }
    (out, failed)
}

/// Resolves when a watched listener has a connection or datagram waiting
/// (or an error to show); pending when nothing is watched.
async fn connection_waiting(watches: Option<&[AsyncFd<Held>]>) {
    let Some(watches) = watches.filter(|w| !w.is_empty()) else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        for w in watches {
            if w.poll_read_ready(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

/// Looks for processes that escaped a child's group and that no running
/// child owns (see `reaper`), on the blocking pool.
fn start_sweep(sup: &Supervisor<Driver>, sweep: u64) -> JoinHandle<Sweep> {
    let owners = sup.owners();
    // relaunch's own helpers (`relaunch-watch`, a `--build`) are its
    // children too, and no child's: never leftovers.
    let children: Vec<i32> = sup
        .children()
        .iter()
        .map(|c| c.pid)
        .chain(sup.os.watcher.as_ref().map(|w| w.pid))
        .chain(sup.os.build.as_ref().map(|b| b.pid))
        .collect();
    let ending: Vec<i32> = sup.escaped().collect();
    let spawns = sup.os.spawns.clone();
    let since = reaper::boot_ticks();
    tokio::task::spawn_blocking(move || {
        let found = reaper::find_leftovers(&spawns, &owners, &children, &ending, since)
            .into_iter()
            .filter_map(|l| reaper::Escaped::open(&l).map(|h| (l, h)))
            .collect();
        (sweep, found)
    })
}

/// A sweep's number and the escaped processes it found, with handles.
type Sweep = (u64, Vec<(reaper::Leftover, reaper::Escaped)>);

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The result of a task, once; pending while there is none.
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Option<T> {
    match task {
        Some(t) => {
            let result = t.await;
            *task = None;
            result.ok()
        }
        None => std::future::pending().await,
    }
}

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
        if let Some(check) = driver.upgrade.as_mut().filter(|c| c.pid == pid) {
            check.exit = Some(status);
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
        let group_alive = reaper::group_alive(pid);
        if !group_alive {
            keeper::gone(pid);
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
fn group_check(sup: &mut Supervisor<Driver>) -> Vec<Event> {
    let mut events: Vec<Event> = sup
        .lingering()
        .filter(|&pgid| !reaper::group_alive(pgid))
        .inspect(|&pgid| keeper::gone(pgid))
        .map(|pgid| Event::GroupGone { pgid })
        .collect();
    let tracked: Vec<i32> = sup.escaped().collect();
    sup.os.escaped.retain(|pid, _| tracked.contains(pid));
    for pid in tracked {
        if sup.os.escaped.get(&pid).is_none_or(|e| !e.exists()) {
            sup.os.escaped.remove(&pid);
            events.push(Event::EscapedGone { pid });
        }
    }
    events
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
fn fill_status(status: &mut control::Status, inodes: &[Option<u64>]) {
    match crate::proc::listen_queues() {
        Ok(queues) => {
            for (l, inode) in status.listeners.iter_mut().zip(inodes) {
                if let Some(q) = inode.and_then(|i| queues.get(&i)) {
                    l.waiting = Some(q.waiting);
                    l.backlog = q.backlog;
                }
            }
        }
        Err(e) => debug!("cannot read the accept queues: {e}"),
    }
    for c in &mut status.children {
        if c.state == "lingering" {
            c.lingering = reaper::group_members(c.pid);
        }
    }
}

/// Scans /proc for the starting children on the blocking pool: a hung
/// mount or a stuck child must not stall the loop.
fn start_scan(sup: &Supervisor<Driver>, inodes: &Arc<HashSet<u64>>) -> JoinHandle<Vec<Event>> {
    let (pids, roots): (Vec<i32>, Vec<Vec<i32>>) = sup.to_scan(Instant::now()).unzip();
    let inodes = Arc::clone(inodes);
    tokio::task::spawn_blocking(move || {
        let verdicts = scan::scan_each(&roots, &inodes);
        pids.into_iter()
            .zip(verdicts)
            .filter_map(|(pid, verdict)| match verdict {
                scan::Verdict::Waiting { pid: p, tid, how } => Some(Event::Ready {
                    pid,
                    how: format!("pid {p} thread {tid} waits in {how}"),
                }),
                scan::Verdict::Accepted { pid: p } => Some(Event::Ready {
                    pid,
                    how: format!("pid {p} holds a connection it accepted"),
                }),
                scan::Verdict::NotYet { blind: Some(why) } => Some(Event::Blind { pid, why }),
                scan::Verdict::NotYet { blind: None } => None,
                // Said once at start: blind, without a line per child.
                scan::Verdict::NoProc => Some(Event::Blind {
                    pid,
                    why: String::new(),
                }),
            })
            .collect()
    })
}

/// Turns a notify datagram into an event. Its sender (and MAINPID=) were
/// checked when it arrived; nothing is read here.
fn handle_notify(sup: &Supervisor<Driver>, generation: u64, msg: Message) -> Option<Event> {
    // The child comes first among the roots (see `Message::sent_by_any_of`).
    let roots = |pid: i32, main_pid: Option<i32>| -> Vec<i32> {
        std::iter::once(pid).chain(main_pid).collect()
    };
    let owner = sup
        .children()
        .iter()
        .filter(|c| c.generation == generation)
        .map(|c| (c.pid, c.main_pid))
        .find(|&(pid, main_pid)| msg.sent_by_any_of(&roots(pid, main_pid)));
    let Some((pid, main_pid)) = owner else {
        if crate::ready::notify::worth_a_warning(msg.pid) {
            warn!(
                sender = msg.pid,
                generation,
                "ignoring a notify message from pid {}, a process outside generation {generation} \
                 (or gone before it could be checked: send with BARRIER=1, as systemd-notify does)",
                msg.pid
            );
        }
        return None;
    };
    let mut notice = Notice::default();
    if let Some(m) = msg.mainpid() {
        match msg.main_pid_under(&roots(pid, main_pid)) {
            Some(m) => notice.main_pid = Some(m),
            None => warn!(
                pid,
                generation, "ignoring MAINPID={m}: not a process of this child when it arrived"
            ),
        }
    }
    notice.status = msg.status().map(str::to_string);
    if msg.reloading() {
        info!(pid, generation, "child reports RELOADING=1");
    }
    if msg.stopping() {
        info!(pid, generation, "child reports STOPPING=1");
    }
    notice.ready = msg.ready();
    Some(Event::Notify { pid, notice })
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape_reads_what_relaunch_watch_writes() {
        assert_eq!(super::unescape(r"a\nb\\n c\"), "a\nb\\n c\\");
    }
}
