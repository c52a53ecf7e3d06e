//! `relaunch [OPTIONS] -- COMMAND`: gathers the listeners, then drives the
//! supervisor from one event loop: signals, the reaper, notify datagrams,
//! control requests, timers, and (only while a generation is starting) the
//! /proc readiness scan. Idle, it sleeps without timers.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cli::RunArgs;
use crate::control::{self, Incoming, Request, Response};
use crate::error::{Error, Result};
use crate::plan::options::{self, ReadyMode};
use crate::plan::placeholders::Named;
use crate::plan::{self, Snapshot};
use crate::ready::notify::{Message, NotifySocket, Systemd};
use crate::ready::scan as procscan;
use crate::sockets::{self, Listener};
use crate::supervise::supervisor::{Config, Note, Os, Supervisor};
use crate::supervise::{reaper, spawn};

/// How often /proc is scanned while a generation is starting.
const SCAN_EVERY: Duration = Duration::from_millis(15);

pub async fn run(args: RunArgs, snap: Snapshot) -> Result<i32> {
    let inherited = snap.inherited?;
    let names: Vec<&str> = inherited.iter().map(|i| i.name.as_str()).collect();
    let plan = plan::make(&args, &snap.env, &names, &options::credentials)?;
    for n in &plan.notes {
        info!("{n}");
    }
    for w in &plan.warnings {
        warn!("{w}");
    }
    let listeners = sockets::open(&plan.listeners, inherited, plan.backlog)?;
    for (i, l) in listeners.iter().enumerate() {
        info!("listening on {} as fd {} ({})", l.address(), 3 + i, l.name);
    }
    let named: Vec<Named> = (3..).zip(&listeners).map(|(fd, l)| l.named(fd)).collect();
    let child = plan.child(&named)?;
    for w in &child.warnings {
        warn!("{w}");
    }
    // Removed when run() returns, whatever the outcome.
    let _ports_file = match &plan.ports_file {
        Some(path) => Some(sockets::PortsFile::write(path, &listeners)?),
        None => None,
    };
    // Orphans of our children land on us, so none stays a zombie.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };

    let systemd = Systemd::from_env(plan::var(&snap.env, "NOTIFY_SOCKET").map(|v| v.as_os_str()));
    let control = match &plan.control {
        Some(path) => Some(control::Server::bind(path)?),
        None => None,
    };
    let inodes: HashSet<u64> = listeners
        .iter()
        .filter_map(|l| procscan::socket_inode(l.socket.as_fd()).ok())
        .collect();

    let (notify_tx, notify_rx) = mpsc::unbounded_channel();
    let stop_signal = plan.stop_signal;
    let stop_timeout = plan.stop_timeout;
    let ready = plan.ready;
    let driver = Driver {
        program: plan.program,
        args: child.args,
        listen_pid: plan.listen_pid,
        creds: plan.creds,
        env: child.env,
        listeners,
        ready,
        notify: HashMap::new(),
        notify_tx,
        systemd,
        reloading: false,
        waiters: Vec::new(),
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
        ready_timeout: plan.ready_timeout,
    };
    let mut sup = Supervisor::new(driver, cfg);
    let result = event_loop(&mut sup, control, notify_rx, inodes).await;
    reaper::end_orphans(stop_signal, stop_timeout).await;
    result
}

struct Driver {
    program: OsString,
    args: Vec<OsString>,
    listen_pid: bool,
    creds: Option<spawn::Credentials>,
    /// Everything but LISTEN_PID, NOTIFY_SOCKET and RELAUNCH_WORKER.
    env: Vec<(OsString, OsString)>,
    listeners: Vec<Listener>,
    ready: ReadyMode,
    /// One notify socket per generation; the task forwards its datagrams.
    notify: HashMap<u64, (String, tokio::task::JoinHandle<()>)>,
    notify_tx: mpsc::UnboundedSender<(u64, Message)>,
    systemd: Option<Systemd>,
    /// Between RELOADING=1 and the READY=1 that ends it.
    reloading: bool,
    /// `relaunch reload` clients, by the generation that answers them.
    waiters: Vec<(u64, oneshot::Sender<Response>)>,
}

impl Driver {
    fn notify_socket(&mut self, generation: u64) -> std::io::Result<String> {
        if let Some((value, _)) = self.notify.get(&generation) {
            return Ok(value.clone());
        }
        let sock = NotifySocket::bind(&format!("g{generation}"))?;
        let value = sock.env_value().to_string();
        let tx = self.notify_tx.clone();
        let task = tokio::spawn(async move {
            while let Ok(m) = sock.recv().await {
                if tx.send((generation, m)).is_err() {
                    break;
                }
            }
        });
        self.notify.insert(generation, (value.clone(), task));
        Ok(value)
    }

    fn status_line(generation: u64, pids: &[i32]) -> String {
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let s = if pids.len() == 1 { "" } else { "s" };
        format!(
            "serving: generation {generation}, pid{s} {}",
            pids.join(", ")
        )
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
        let fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.socket.as_fd()).collect();
        spawn::spawn(&spawn::Request {
            program: &self.program,
            args: &self.args,
            env: &env,
            fds: &fds,
            listen_pid: self.listen_pid,
            creds: self.creds.as_ref(),
        })
    }

    fn signal(&mut self, pid: i32, sig: Signal) {
        if let Err(e) = killpg(Pid::from_raw(pid), sig) {
            debug!(pid, "killpg {}: {e}", sig.as_str());
        }
    }

    fn note(&mut self, note: Note) {
        match note {
            Note::Serving { generation, pids } => {
                let line = Self::status_line(generation, &pids);
                info!(generation, "{line}");
                // During a reload, systemd hears READY=1 when it is over.
                if let (Some(s), false) = (&self.systemd, self.reloading) {
                    s.ready(&line);
                }
            }
            Note::ReloadStarted { generation } => {
                self.reloading = true;
                if let Some(s) = &self.systemd {
                    s.reloading(&format!("reloading: starting generation {generation}"));
                }
            }
            Note::ReloadDone { generation, result } => {
                let (answered, waiting) = std::mem::take(&mut self.waiters)
                    .into_iter()
                    .partition(|(g, _)| *g <= generation);
                self.waiters = waiting;
                for (_, reply) in answered {
                    let _ = reply.send(match &result {
                        Ok(pids) => Response::Reloaded {
                            generation,
                            pids: pids.clone(),
                        },
                        Err(reason) => Response::ReloadFailed {
                            generation,
                            reason: reason.clone(),
                        },
                    });
                }
                self.reloading = false;
                // READY=1 ends RELOADING=1 whatever the outcome: something serves.
                if let Some(s) = &self.systemd {
                    match &result {
                        Ok(pids) => s.ready(&Self::status_line(generation, pids)),
                        Err(reason) => s.ready(&format!(
                            "reload to generation {generation} failed: {reason}"
                        )),
                    }
                }
            }
            Note::Restarting {
                generation,
                worker,
                status,
            } => {
                if let Some(s) = &self.systemd {
                    s.status(&format!(
                        "restarting generation {generation} worker {worker}: it {status}"
                    ));
                }
            }
            Note::GenerationGone { generation } => {
                if let Some((_, task)) = self.notify.remove(&generation) {
                    task.abort();
                }
            }
            Note::Stopping => {
                if let Some(s) = &self.systemd {
                    s.stopping();
                }
            }
        }
    }

    fn jitter(&mut self) -> f64 {
        fastrand::f64()
    }
}

async fn event_loop(
    sup: &mut Supervisor<Driver>,
    control: Option<control::Server>,
    mut notify_rx: mpsc::UnboundedReceiver<(u64, Message)>,
    inodes: HashSet<u64>,
) -> Result<i32> {
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| Error::runtime(format!("cannot install signal handlers: {e}")))
    };
    // Installed before the first fork, so no exit is missed.
    let mut chld = sig(SignalKind::child())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut quit = sig(SignalKind::quit())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut usr2 = sig(SignalKind::user_defined2())?;
    let mut winch = sig(SignalKind::window_change())?;
    let (_keep_control, mut control_rx) = match control {
        Some(server) => {
            let rx = server.serve();
            (true, Some(rx))
        }
        None => (false, None),
    };
    let auto = sup.os.ready == ReadyMode::Auto;
    let mut warned_blind: HashSet<i32> = HashSet::new();

    sup.start(Instant::now());
    loop {
        if let Some(exit) = sup.exit() {
            for (_, reply) in std::mem::take(&mut sup.os.waiters) {
                let _ = reply.send(Response::Error {
                    message: "relaunch stopped before the reload could run".into(),
                });
            }
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
        let deadline = sup.next_deadline().map(tokio::time::Instant::from_std);
        let scanning = auto
            && sup.children().iter().any(|c| {
                matches!(
                    c.state,
                    crate::supervise::supervisor::State::Starting { .. }
                )
            });
        tokio::select! {
            _ = chld.recv() => reap(sup),
            _ = term.recv() => { info!("SIGTERM: stopping"); sup.stop(Instant::now()) }
            _ = int.recv() => { info!("SIGINT: stopping"); sup.stop(Instant::now()) }
            _ = hup.recv() => {
                info!("SIGHUP: reload");
                if let Err(e) = sup.request_reload(Instant::now()) {
                    warn!("reload refused: {e}");
                }
            }
            _ = quit.recv() => sup.forward(Signal::SIGQUIT),
            _ = usr1.recv() => sup.forward(Signal::SIGUSR1),
            _ = usr2.recv() => sup.forward(Signal::SIGUSR2),
            _ = winch.recv() => sup.forward(Signal::SIGWINCH),
            Some(inc) = recv_control(&mut control_rx) => handle_control(sup, inc),
            Some((generation, msg)) = notify_rx.recv() => handle_notify(sup, generation, msg),
            _ = sleep_until(deadline) => sup.on_timer(Instant::now()),
            _ = tokio::time::sleep(SCAN_EVERY), if scanning => scan(sup, &inodes, &mut warned_blind),
        }
    }
}

async fn recv_control(rx: &mut Option<mpsc::Receiver<Incoming>>) -> Option<Incoming> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn reap(sup: &mut Supervisor<Driver>) {
    reaper::reap(|pid, status| sup.on_exit(pid, status, Instant::now()));
}

fn scan(sup: &mut Supervisor<Driver>, inodes: &HashSet<u64>, warned: &mut HashSet<i32>) {
    let (pids, roots): (Vec<i32>, Vec<Vec<i32>>) = sup
        .children()
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                crate::supervise::supervisor::State::Starting { .. }
            )
        })
        .map(|c| (c.pid, std::iter::once(c.pid).chain(c.main_pid).collect()))
        .unzip();
    for (pid, verdict) in pids.into_iter().zip(procscan::scan_each(&roots, inodes)) {
        match verdict {
            procscan::Verdict::Waiting { pid: p, tid, how } => sup.mark_ready(
                pid,
                &format!("pid {p} thread {tid} waits in {how}"),
                Instant::now(),
            ),
            procscan::Verdict::NotYet { blind: Some(why) } if warned.insert(pid) => {
                sup.mark_blind(pid);
                warn!(
                    pid,
                    "cannot see whether this child waits for connections ({why}); it counts as ready only at \
                     --ready-timeout. Use --ready delay:DURATION, or send READY=1 and use --ready notify"
                )
            }
            procscan::Verdict::NotYet { .. } => {}
        }
    }
}

fn handle_notify(sup: &mut Supervisor<Driver>, generation: u64, msg: Message) {
    let owner = sup
        .children()
        .iter()
        .filter(|c| c.generation == generation)
        .find(|c| {
            let roots: Vec<i32> = std::iter::once(c.pid).chain(c.main_pid).collect();
            procscan::belongs_to(msg.pid, &roots)
        })
        .map(|c| (c.pid, c.main_pid));
    let Some((pid, main_pid)) = owner else {
        warn!(
            sender = msg.pid,
            generation, "ignoring a notify message from a process outside generation {generation}"
        );
        return;
    };
    if let Some(m) = msg.mainpid() {
        let roots: Vec<i32> = std::iter::once(pid).chain(main_pid).collect();
        if procscan::belongs_to(m, &roots) {
            sup.set_main_pid(pid, m);
        } else {
            warn!(
                pid,
                generation, "ignoring MAINPID={m}: not a process of this child"
            );
        }
    }
    if let Some(text) = msg.status() {
        sup.set_status_text(pid, text);
    }
    if msg.reloading() {
        info!(pid, generation, "child reports RELOADING=1");
    }
    if msg.stopping() {
        info!(pid, generation, "child reports STOPPING=1");
    }
    if msg.ready() {
        sup.mark_ready(pid, "READY=1", Instant::now());
    }
}

fn handle_control(sup: &mut Supervisor<Driver>, inc: Incoming) {
    let now = Instant::now();
    match inc.request {
        Request::Status => {
            let _ = inc.reply.send(Response::Status(status(sup, now)));
        }
        Request::Reload => match sup.request_reload(now) {
            // It may already have failed, at spawn, before we could wait for it.
            Ok(generation) => match sup.last_reload().filter(|r| r.generation == generation) {
                Some(done) => {
                    let _ = inc.reply.send(Response::ReloadFailed {
                        generation,
                        reason: done.message.clone(),
                    });
                }
                None => sup.os.waiters.push((generation, inc.reply)),
            },
            Err(reason) => {
                let _ = inc.reply.send(Response::ReloadFailed {
                    generation: sup.serving(),
                    reason,
                });
            }
        },
        Request::Stop => {
            info!("stop requested through the control socket");
            let _ = inc.reply.send(Response::Stopping);
            sup.stop(now);
        }
    }
}

fn status(sup: &Supervisor<Driver>, now: Instant) -> control::Status {
    let children = sup
        .children()
        .iter()
        .map(|c| {
            let slot = (c.generation == sup.serving()).then(|| &sup.slots()[c.worker]);
            control::ChildInfo {
                pid: c.pid,
                generation: c.generation,
                worker: c.worker,
                state: c.state.name().into(),
                uptime_secs: now.saturating_duration_since(c.started).as_secs_f64(),
                restarts: slot.map_or(0, |s| s.restarts),
                last_exit: slot.and_then(|s| s.last_exit).map(|e| e.to_string()),
            }
        })
        .collect();
    let status_text = sup
        .children()
        .iter()
        .filter(|c| c.generation == sup.serving())
        .find_map(|c| c.status_text.clone());
    control::Status {
        pid: std::process::id(),
        generation: sup.serving(),
        state: sup.state().into(),
        status_text,
        listeners: sup
            .os
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| control::ListenerInfo {
                name: l.name.clone(),
                address: l.address(),
                fd: 3 + i as i32,
            })
            .collect(),
        children,
        last_reload: sup.last_reload().map(|r| control::ReloadInfo {
            generation: r.generation,
            ok: r.ok,
            message: r.message.clone(),
            seconds_ago: now.saturating_duration_since(r.at).as_secs_f64(),
        }),
    }
}
