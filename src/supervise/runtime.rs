//! The runtime's loop, over any [`Os`]: the core says what it wants this
//! turn ([`Wants`]), each event source arms itself from that
//! ([`Sources::arm`]), the first wake becomes [`Event`]s ([`on_wake`]), each
//! is handled and carried out ([`step`]). `driver` gives the real `Os`
//! (fork, sockets, /proc) and runs this loop; the tests give a fake one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::{self, Incoming, ReplyId};
use crate::ready::notify::Message;
use crate::sockets::Listener;
use crate::sockets::drain::Watch;
use crate::supervise::idle;
use crate::supervise::sources::{Every, Listeners, SignalFeed, Task, Wants, recv, sleep_until};
use crate::supervise::supervisor::{Effect, Event, Notice, Spawner, Supervisor};

#[cfg(test)]
mod tests;

/// How often /proc is scanned while a generation is starting.
const SCAN_EVERY: Duration = Duration::from_millis(15);
/// How often a draining generation is measured.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often a canary's ports are checked for listeners relaunch does not
/// own.
const GUARD_EVERY: Duration = Duration::from_millis(250);
/// How often groups whose leader exited are checked, besides on every
/// SIGCHLD (a member whose parent is not us dies without one).
const GROUP_CHECK_EVERY: Duration = Duration::from_millis(100);

/// What the loop needs of the system besides the core: the [`Spawner`] the
/// core is lent for a turn, carrying out its effects, and what the sources
/// ask of it. The jobs run on the blocking pool, off the loop.
pub trait Os: Spawner {
    /// Where the handled signals come from.
    type Signals: SignalFeed;
    /// What a sweep for escaped processes found, until the loop has it.
    type Swept: Send + 'static;

    /// Carries out the core's effects; an upgrade it allowed starts here,
    /// from the core's state.
    fn perform(&mut self, core: &mut Supervisor, effects: Vec<Effect>);
    /// Keeps a control client owed an answer; the core knows it by id.
    fn hold(&mut self, reply: control::Reply) -> ReplyId;
    /// What the system's own pipes (exec status, the watcher, the build)
    /// have to say; pending while they are quiet. Cancel-safe.
    fn piped(&mut self) -> impl Future<Output = Vec<Event>>;
    /// Every exited child, collected (on SIGCHLD).
    fn reap(&mut self) -> Vec<Event>;
    /// The lingering groups now empty, and the escaped processes now gone.
    fn group_check(&mut self, core: &Supervisor) -> Vec<Event>;
    /// Looks for the readiness of the children the core scans.
    fn scan_job(&self, core: &Supervisor) -> impl FnOnce() -> Vec<Event> + Send + 'static;
    /// Looks for processes that escaped a child's group.
    fn sweep_job(
        &self,
        core: &Supervisor,
        sweep: u64,
    ) -> impl FnOnce() -> Self::Swept + Send + 'static;
    /// A sweep's finds, kept to be signalled, as the core's event.
    fn swept(&mut self, found: Self::Swept) -> Event;
    /// A new measure of the generations that drain while `generation`
    /// serves (those before it, or a canary rolled back).
    fn drain_watch(&self, generation: u64) -> Watch;
    /// One look at the old generation (process groups `pgids`) of
    /// `generation`'s reload; `end_reads`: its connections stop reading
    /// (see `Watch::end_reads`).
    fn drain_job(
        &self,
        generation: u64,
        pgids: Vec<i32>,
        end_reads: bool,
        watch: Watch,
    ) -> impl FnOnce() -> (Watch, Event) + Send + 'static;
    /// Looks for listeners relaunch does not own where a canary's share is
    /// steered (see `Event::Foreign`).
    fn guard_job(&self, generation: u64) -> impl FnOnce() -> Vec<Event> + Send + 'static;
    /// The held listeners as they are now, to watch while no child runs.
    fn listeners(&mut self) -> &[Listener];
}

/// The core and the I/O side by side: the core decides, the driver carries
/// it out, and neither owns the other.
pub struct Runtime<O> {
    pub core: Supervisor,
    pub os: O,
}

impl<O: Os> Runtime<O> {
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        self.core.handle(event, now, &mut self.os)
    }
}

/// Everything the loop waits on besides the system's own pipes, each armed
/// from the core's [`Wants`] at every turn.
pub struct Sources<O: Os> {
    pub signals: O::Signals,
    pub control: Option<mpsc::Receiver<Incoming>>,
    /// A scrape is a status request (`--metrics`).
    scrapes: Option<mpsc::Receiver<Incoming>>,
    /// Notify datagrams, by generation (checked by their sockets' tasks).
    pub notify: mpsc::UnboundedReceiver<(u64, Message)>,
    /// A held socket's listen(), seen by bind interception.
    pub listened: mpsc::UnboundedReceiver<(i32, String)>,
    /// The core's next deadline.
    timer: Option<Instant>,
    /// The /proc readiness scan, while a generation starts: one at a time.
    scan: Every,
    scanning: Task<Vec<Event>>,
    /// Groups whose leader exited and escaped processes: checked on every
    /// SIGCHLD, and on this tick too (a member whose parent is not us dies
    /// without one).
    groups: Every,
    /// Escaped processes are looked for when a child ends or is being
    /// stopped (the owners change) and when anything is reaped (an orphan
    /// that died may have left its own children on us). One at a time.
    sweep: Task<O::Swept>,
    /// The listeners, watched while no child runs (`--lazy`, idle stops).
    listeners: Listeners,
    /// `--idle-stop`'s measures of the listeners.
    idle: Option<Idle>,
    /// An old generation draining: measured this often, one at a time.
    drain: Every,
    draining: Task<(Watch, Event)>,
    /// What the measures remember (handshakes seen at the first), for the
    /// reload of this generation; away while a measure runs.
    drain_watch: Option<(u64, Watch)>,
    /// A canary's ports, checked this often, one look at a time, for the
    /// canary of this generation.
    guard: Every,
    guarded: Option<u64>,
    guarding: Task<Vec<Event>>,
}

impl<O: Os> Sources<O> {
    /// Every source unarmed but the channels (`scrapes`: status requests
    /// from `--metrics`; `idle`: `--idle-stop`'s gauge).
    pub fn new(
        signals: O::Signals,
        control: Option<mpsc::Receiver<Incoming>>,
        scrapes: Option<mpsc::Receiver<Incoming>>,
        notify: mpsc::UnboundedReceiver<(u64, Message)>,
        listened: mpsc::UnboundedReceiver<(i32, String)>,
        idle: Option<Arc<idle::Gauge>>,
    ) -> Sources<O> {
        Sources {
            signals,
            control,
            scrapes,
            notify,
            listened,
            timer: None,
            scan: Every::default(),
            scanning: Task::default(),
            groups: Every::default(),
            drain: Every::default(),
            draining: Task::default(),
            drain_watch: None,
            guard: Every::default(),
            guarded: None,
            guarding: Task::default(),
            sweep: Task::default(),
            listeners: Listeners::default(),
            idle: idle.map(Idle::new),
        }
    }
}

/// `--idle-stop`: measures the listeners every so often while children run,
/// and exactly when the idle time would be over.
struct Idle {
    gauge: Arc<idle::Gauge>,
    every: Every,
    /// The idle time is over then (not while a measure runs: a due time in
    /// the past would fire at every turn).
    over: Option<Instant>,
    measuring: Task<Event>,
}

impl Idle {
    fn new(gauge: Arc<idle::Gauge>) -> Idle {
        Idle {
            gauge,
            every: Every::default(),
            over: None,
            measuring: Task::default(),
        }
    }

    fn arm(&mut self, wants: &Wants, now: Instant) {
        self.gauge.follow(wants.idle_probe.is_some());
        self.every.arm(wants.idle_probe, now);
        self.over = wants.idle_stop_due.filter(|_| !self.measuring.busy());
    }

    fn due(&self) -> Option<Instant> {
        let next = self.every.due()?;
        Some(self.over.map_or(next, |over| next.min(over)))
    }

    fn tick(&mut self, now: Instant) {
        self.every.ticked(now);
        let g = Arc::clone(&self.gauge);
        self.measuring.start(move || {
            let m = g.measure();
            Event::Activity {
                open: m.open,
                churned: m.churned,
            }
        });
    }
}

/// What woke the loop.
pub enum Wake<O: Os> {
    Signal(Signal),
    Control(Incoming),
    Listened {
        pid: i32,
        how: String,
    },
    Notify {
        generation: u64,
        msg: Message,
    },
    /// What the system's own pipes said (see [`Os::piped`]).
    Piped(Vec<Event>),
    Timer,
    ScanTick,
    Scanned(Vec<Event>),
    Swept(O::Swept),
    GroupTick,
    Connection,
    IdleTick,
    Measured(Event),
    /// A measure of the draining generation is due (`Sources::arm` starts it).
    DrainTick,
    Drained(Watch, Event),
    GuardTick,
    Guarded(Vec<Event>),
}

impl<O: Os> Sources<O> {
    /// Arms each source from what the core wants now. An event to handle
    /// at once when the listeners cannot be watched (nothing could wake us
    /// for them, so a generation starts instead).
    pub fn arm(&mut self, rt: &mut Runtime<O>, now: Instant) -> Option<Event> {
        let wants = rt.core.wants(now);
        self.timer = wants.deadline;
        self.scan.arm(wants.scan.then_some(SCAN_EVERY), now);
        self.groups
            .arm(wants.group_check.then_some(GROUP_CHECK_EVERY), now);
        if let Some(idle) = &mut self.idle {
            idle.arm(&wants, now);
        }
        if let Some(sweep) = wants.sweep
            && !self.sweep.busy()
        {
            self.sweep.start(rt.os.sweep_job(&rt.core, sweep));
        }
        self.drain
            .arm(wants.drain.is_some().then_some(DRAIN_EVERY), now);
        // A drain that ended keeps nothing: the next one, even under the
        // same key (a rolled-back canary's is the serving generation's),
        // measures other sockets from its start.
        if wants.drain.is_none() && !self.draining.busy() {
            self.drain_watch = None;
        }
        // The first measure of a drain at once, the others on the tick.
        let first = |w: &Option<(u64, Watch)>, g: u64| w.as_ref().is_none_or(|(wg, _)| *wg != g);
        if let Some((generation, pgids, end_reads)) = wants.drain
            && !self.draining.busy()
            && (self.drain.due().is_some_and(|t| t <= now) || first(&self.drain_watch, generation))
        {
            self.drain.ticked(now);
            let watch = match self.drain_watch.take() {
                Some((g, w)) if g == generation => w,
                _ => rt.os.drain_watch(generation),
            };
            self.draining
                .start(rt.os.drain_job(generation, pgids, end_reads, watch));
        }
        self.guard.arm(wants.guard.map(|_| GUARD_EVERY), now);
        self.guarded = wants.guard;
        if !wants.listeners {
            self.listeners.stop();
        } else if !self.listeners.watching() && !self.listeners.start(rt.os.listeners()) {
            return Some(Event::Connection);
        }
        None
    }

    /// The first source with something to say.
    pub async fn next(&mut self, os: &mut O) -> Wake<O> {
        let idle_due = self.idle.as_ref().and_then(Idle::due);
        let measured = async {
            match &mut self.idle {
                Some(i) => i.measuring.done().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            sig = self.signals.next() => Wake::Signal(sig),
            Some(inc) = recv(&mut self.control) => Wake::Control(inc),
            Some(inc) = recv(&mut self.scrapes) => Wake::Control(inc),
            Some((pid, how)) = self.listened.recv() => Wake::Listened { pid, how },
            Some((generation, msg)) = self.notify.recv() => Wake::Notify { generation, msg },
            events = os.piped() => Wake::Piped(events),
            () = sleep_until(self.timer) => Wake::Timer,
            () = sleep_until(self.scan.due()) => Wake::ScanTick,
            Some(events) = self.scanning.done() => Wake::Scanned(events),
            Some(found) = self.sweep.done() => Wake::Swept(found),
            () = sleep_until(self.groups.due()) => Wake::GroupTick,
            () = self.listeners.connection() => Wake::Connection,
            () = sleep_until(idle_due) => Wake::IdleTick,
            Some(event) = measured => Wake::Measured(event),
            // Not while a measure runs: a due tick would fire at every turn.
            () = sleep_until(self.drain.due().filter(|_| !self.draining.busy())) => Wake::DrainTick,
            Some((watch, event)) = self.draining.done() => Wake::Drained(watch, event),
            () = sleep_until(self.guard.due()) => Wake::GuardTick,
            Some(events) = self.guarding.done() => Wake::Guarded(events),
        }
    }
}

/// One turn of the loop: each source armed, the first wake, the events
/// it means, each handled and carried out.
pub async fn turn<O: Os>(rt: &mut Runtime<O>, src: &mut Sources<O>) {
    if let Some(ev) = src.arm(rt, Instant::now()) {
        step(rt, ev);
        return;
    }
    let wake = src.next(&mut rt.os).await;
    for ev in on_wake(rt, src, wake) {
        step(rt, ev);
    }
}

/// What a wake means for the core; some are the runtime's own business.
pub fn on_wake<O: Os>(rt: &mut Runtime<O>, src: &mut Sources<O>, wake: Wake<O>) -> Vec<Event> {
    let now = Instant::now();
    match wake {
        Wake::Signal(sig) => on_signal(rt, sig),
        Wake::Control(inc) => vec![Event::Control {
            request: inc.request,
            reply: rt.os.hold(inc.reply),
        }],
        Wake::Listened { pid, how } => vec![Event::Listened { pid, how }],
        Wake::Notify { generation, msg } => handle_notify(&rt.core, generation, msg)
            .into_iter()
            .collect(),
        Wake::Piped(events) => events,
        Wake::Timer => vec![Event::Timer],
        Wake::ScanTick => {
            src.scan.ticked(now);
            // One scan at a time; a slow one skips ticks rather than piling up.
            if !src.scanning.busy() {
                src.scanning.start(rt.os.scan_job(&rt.core));
            }
            Vec::new()
        }
        Wake::Scanned(events) | Wake::Guarded(events) => events,
        Wake::Swept(found) => vec![rt.os.swept(found)],
        Wake::GuardTick => {
            src.guard.ticked(now);
            if let Some(generation) = src.guarded
                && !src.guarding.busy()
            {
                src.guarding.start(rt.os.guard_job(generation));
            }
            Vec::new()
        }
        Wake::GroupTick => {
            src.groups.ticked(now);
            rt.os.group_check(&rt.core)
        }
        Wake::Connection => vec![Event::Connection],
        Wake::IdleTick => {
            if let Some(idle) = &mut src.idle {
                idle.tick(now);
            }
            Vec::new()
        }
        Wake::Measured(event) => vec![event],
        Wake::DrainTick => Vec::new(),
        Wake::Drained(watch, event) => {
            if let Event::Drained { generation, .. } = &event {
                src.drain_watch = Some((*generation, watch));
            }
            vec![event]
        }
    }
}

/// What each handled signal means.
fn on_signal<O: Os>(rt: &mut Runtime<O>, sig: Signal) -> Vec<Event> {
    match sig {
        Signal::SIGCHLD => {
            for ev in rt.os.reap() {
                step(rt, ev);
            }
            // Leaders reaped just now may have been the last of their groups.
            rt.os.group_check(&rt.core)
        }
        Signal::SIGTERM | Signal::SIGINT => {
            info!("{}: stopping", sig.as_str());
            vec![Event::Stop]
        }
        Signal::SIGHUP => {
            info!("SIGHUP: reload");
            vec![Event::Reload]
        }
        Signal::SIGUSR2 => {
            info!("SIGUSR2: upgrading relaunch in place");
            vec![Event::Upgrade {
                binary: None,
                reply: None,
            }]
        }
        other => vec![Event::Forward(other)],
    }
}

/// Carries out `fx` (an upgrade the supervisor allowed starts there).
pub fn apply<O: Os>(rt: &mut Runtime<O>, fx: Vec<Effect>) {
    rt.os.perform(&mut rt.core, fx);
    crate::logging::set_generation(rt.core.serving());
}

/// One event through the supervisor, its effects carried out.
pub fn step<O: Os>(rt: &mut Runtime<O>, event: Event) {
    let fx = rt.handle(event, Instant::now());
    apply(rt, fx);
}

/// Turns a notify datagram into an event. Its sender (and MAINPID=) were
/// checked when it arrived; nothing is read here.
pub fn handle_notify(core: &Supervisor, generation: u64, msg: Message) -> Option<Event> {
    // The child comes first among the roots (see `Message::sent_by_any_of`).
    let roots = |pid: i32, main_pid: Option<i32>| -> Vec<i32> {
        std::iter::once(pid).chain(main_pid).collect()
    };
    let owner = core
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
