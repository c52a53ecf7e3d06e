//! The loop over a fake system: no fork, no sockets, no /proc. Wakes go in
//! (straight to `on_wake`, or through the sources and `turn`), events reach
//! the real core, and the fake records what the loop asked of it.

use std::cell::Cell;

use super::*;
use crate::control::{Replies, Reply, Request, Response};
use crate::plan::options::Restart;
use crate::sockets::drain::Busy;
use crate::supervise::spawn;
use crate::supervise::supervisor::{Config, Count, ExitStatus, NotProbed, Tell};

/// Records what the loop asks; pids count up from 101. The jobs it gives
/// run once `gate` is free, so a test can hold one in flight.
#[derive(Default)]
struct Fake {
    next_pid: i32,
    spawned: Vec<(i32, u64)>,
    /// `open` gives a generation sockets of its own (a drain is possible).
    own_sockets: bool,
    signals: Vec<(i32, Signal)>,
    steered: Vec<u64>,
    tells: Vec<Tell>,
    counts: Vec<Count>,
    replies: Replies,
    /// What the next reap collects.
    exits: Vec<(i32, ExitStatus)>,
    reaps: usize,
    group_checks: usize,
    /// What every sweep finds: escaped processes (pid, command line).
    escaping: Vec<(i32, String)>,
    /// Jobs handed to the loop, and measures made afresh.
    scans: Cell<usize>,
    sweeps: Cell<usize>,
    measures: Cell<usize>,
    watches: Cell<usize>,
    /// What every drain measure finds.
    busy: Busy,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Spawner for Fake {
    fn spawn(&mut self, generation: u64, _worker: usize) -> Result<i32, spawn::Error> {
        self.next_pid += 1;
        let pid = 100 + self.next_pid;
        self.spawned.push((pid, generation));
        Ok(pid)
    }
    fn open(&mut self, _generation: u64, _probes: usize) -> bool {
        self.own_sockets
    }
    fn steer(&mut self, generation: u64) -> Result<(), String> {
        self.steered.push(generation);
        Ok(())
    }
    fn share(&mut self, _generation: u64, _share: f64) -> Result<(), String> {
        Err("no canary in these tests".into())
    }
    fn probe(
        &mut self,
        _number: u64,
        _generation: u64,
        _probe: &crate::plan::options::Probe,
        _pgids: &[i32],
        _alone: bool,
    ) -> Result<(), NotProbed> {
        Err(NotProbed::Failed("no probes here".into()))
    }
    fn jitter(&mut self) -> f64 {
        0.5
    }
    fn build(&mut self) -> Result<i32, spawn::Error> {
        Err(spawn::Error::Os("no --build here".into()))
    }
}

impl Os for Fake {
    type Signals = Script;
    type Swept = (u64, Vec<(i32, String)>);

    fn perform(&mut self, _core: &mut Supervisor, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Signal { pgid, sig } => self.signals.push((pgid, sig)),
                Effect::SignalEscaped { pid, sig } => self.signals.push((pid, sig)),
                Effect::Tell(t) => self.tells.push(t),
                Effect::Count(c) => self.counts.push(c),
                Effect::Reply { to, response } => {
                    if let Some(to) = self.replies.take(to) {
                        to.send(response);
                    }
                }
                _ => {}
            }
        }
    }

    fn hold(&mut self, reply: Reply) -> ReplyId {
        self.replies.hold(reply)
    }

    async fn piped(&mut self) -> Vec<Event> {
        std::future::pending().await
    }

    fn reap(&mut self) -> Vec<Event> {
        self.reaps += 1;
        let exits = std::mem::take(&mut self.exits);
        exits
            .into_iter()
            .map(|(pid, status)| Event::Exited {
                pid,
                status,
                group_alive: false,
            })
            .collect()
    }

    fn group_check(&mut self, _core: &Supervisor) -> Vec<Event> {
        self.group_checks += 1;
        Vec::new()
    }

    /// Finds every child it is asked about waiting in accept().
    fn scan_job(&self, core: &Supervisor) -> impl FnOnce() -> Vec<Event> + Send + 'static {
        self.scans.set(self.scans.get() + 1);
        let pids: Vec<i32> = core.to_scan(Instant::now()).map(|(pid, _)| pid).collect();
        let gate = Arc::clone(&self.gate);
        move || {
            let _open = gate.blocking_lock();
            let how = || "waits in accept()".to_string();
            pids.into_iter()
                .map(|pid| Event::Ready { pid, how: how() })
                .collect()
        }
    }

    fn sweep_job(
        &self,
        _core: &Supervisor,
        sweep: u64,
    ) -> impl FnOnce() -> Self::Swept + Send + 'static {
        self.sweeps.set(self.sweeps.get() + 1);
        let found = self.escaping.clone();
        move || (sweep, found)
    }

    fn swept(&mut self, (sweep, found): Self::Swept) -> Event {
        Event::Escaped { sweep, found }
    }

    fn drain_watch(&self, _generation: u64) -> Watch {
        self.watches.set(self.watches.get() + 1);
        Watch::new(Vec::new(), Vec::new())
    }

    fn drain_job(
        &self,
        generation: u64,
        _pgids: Vec<i32>,
        _end_reads: bool,
        watch: Watch,
    ) -> impl FnOnce() -> (Watch, Event) + Send + 'static {
        self.measures.set(self.measures.get() + 1);
        let busy = Ok(self.busy);
        let gate = Arc::clone(&self.gate);
        move || {
            let _open = gate.blocking_lock();
            (watch, Event::Drained { generation, busy })
        }
    }

    fn guard_job(&self, _generation: u64) -> impl FnOnce() -> Vec<Event> + Send + 'static {
        Vec::new
    }

    fn listeners(&mut self) -> &[Listener] {
        &[]
    }
}

/// Signals as a test sends them.
struct Script(mpsc::UnboundedReceiver<Signal>);

impl SignalFeed for Script {
    async fn next(&mut self) -> Signal {
        match self.0.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// The ends a test sends on; the sources' channels stay open while held.
struct Feeds {
    signals: mpsc::UnboundedSender<Signal>,
    control: mpsc::Sender<Incoming>,
    _notify: mpsc::UnboundedSender<(u64, Message)>,
    _listened: mpsc::UnboundedSender<(i32, String)>,
}

impl Feeds {
    /// A control request; its answer.
    async fn request(&self, request: Request) -> tokio::sync::oneshot::Receiver<Response> {
        let (reply, answer) = Reply::new(-1);
        self.control
            .send(Incoming { request, reply })
            .await
            .unwrap();
        answer
    }
}

fn sources() -> (Sources<Fake>, Feeds) {
    let (signals, sig_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::channel(4);
    let (notify, notify_rx) = mpsc::unbounded_channel();
    let (listened, listened_rx) = mpsc::unbounded_channel();
    let src = Sources::new(
        Script(sig_rx),
        Some(control_rx),
        None,
        notify_rx,
        listened_rx,
        None,
    );
    let feeds = Feeds {
        signals,
        control,
        _notify: notify,
        _listened: listened,
    };
    (src, feeds)
}

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for anything the loop does here; only a failure waits it.
const DEADLINE: Duration = Duration::from_secs(10);

fn cfg() -> Config {
    Config {
        restart: Restart::Always,
        workers: 1,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(10),
        ready_delay: None,
        ready_auto: true,
        ready_probe: None,
        health: None,
        ready_timeout: Duration::from_secs(60),
        intercept_remedy: None,
        listeners: Vec::new(),
        watch: None,
        lazy: false,
        idle_stop: None,
        drain: None,
        no_canary: None,
        keep_previous: None,
    }
}

/// Told to start: child 101 of generation 1 is starting.
fn started(cfg: Config) -> Runtime<Fake> {
    let mut rt = Runtime {
        core: Supervisor::new(cfg),
        os: Fake::default(),
    };
    step(&mut rt, Event::Start);
    assert_eq!(rt.os.spawned, [(101, 1)]);
    rt
}

fn ready(rt: &mut Runtime<Fake>, pid: i32) {
    let how = "waits in accept()".into();
    step(rt, Event::Ready { pid, how });
}

/// Generation 1 (pid 101) serving with drain on; reloaded, generation 2
/// (pid 102) starting beside it with sockets of its own.
fn reloading() -> Runtime<Fake> {
    let mut rt = started(Config {
        drain: Some(DRAIN_TIMEOUT),
        ..cfg()
    });
    rt.os.own_sockets = true;
    ready(&mut rt, 101);
    step(&mut rt, Event::Reload);
    assert_eq!(rt.os.spawned, [(101, 1), (102, 2)]);
    rt
}

/// The next wake, handled as the loop does.
async fn wake(rt: &mut Runtime<Fake>, src: &mut Sources<Fake>) -> Vec<Event> {
    let wake = tokio::time::timeout(DEADLINE, src.next(&mut rt.os))
        .await
        .expect("a wake before the deadline");
    on_wake(rt, src, wake)
}

/// Turns of the loop until `done`, under [`DEADLINE`].
async fn turns_until(
    rt: &mut Runtime<Fake>,
    src: &mut Sources<Fake>,
    what: &str,
    done: impl Fn(&Runtime<Fake>) -> bool,
) {
    let turns = async {
        while !done(rt) {
            turn(rt, src).await;
        }
    };
    if tokio::time::timeout(DEADLINE, turns).await.is_err() {
        panic!("never {what}");
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_timer_is_set_at_the_cores_next_deadline_and_off_without_one() {
    let mut rt = started(cfg());
    let (mut src, _feeds) = sources();
    let t = Instant::now();
    assert!(src.arm(&mut rt, t).is_none());
    let deadline = rt.core.next_deadline();
    assert!(deadline.is_some(), "a starting child has a ready timeout");
    assert_eq!(src.timer, deadline);
    ready(&mut rt, 101);
    assert_eq!(rt.core.next_deadline(), None);
    src.arm(&mut rt, t);
    assert_eq!(src.timer, None, "nothing to time while serving");
}

#[test]
fn the_scan_ticks_only_while_a_generation_starts() {
    let mut rt = started(cfg());
    let (mut src, _feeds) = sources();
    let t = Instant::now();
    src.arm(&mut rt, t);
    assert_eq!(src.scan.due(), Some(t + SCAN_EVERY));
    // Another turn: the tick does not move.
    src.arm(&mut rt, t + ms(5));
    assert_eq!(src.scan.due(), Some(t + SCAN_EVERY));
    ready(&mut rt, 101);
    src.arm(&mut rt, t + ms(5));
    assert_eq!(src.scan.due(), None, "no scan while serving");
    step(&mut rt, Event::Reload);
    src.arm(&mut rt, t + ms(10));
    assert_eq!(
        src.scan.due(),
        Some(t + ms(10) + SCAN_EVERY),
        "a reload scans"
    );
}

#[tokio::test]
async fn one_scan_runs_at_a_time_and_what_it_sees_makes_the_child_ready() {
    let mut rt = started(cfg());
    let (mut src, _feeds) = sources();
    let gate = Arc::clone(&rt.os.gate);
    let held = gate.lock().await;
    assert!(on_wake(&mut rt, &mut src, Wake::ScanTick).is_empty());
    assert!(on_wake(&mut rt, &mut src, Wake::ScanTick).is_empty());
    assert_eq!(rt.os.scans.get(), 1, "a tick while a scan runs starts none");
    drop(held);
    let events = wake(&mut rt, &mut src).await;
    assert!(
        matches!(events[..], [Event::Ready { pid: 101, .. }]),
        "{events:?}"
    );
    for ev in events {
        step(&mut rt, ev);
    }
    assert_eq!(rt.core.serving(), 1);
    assert!(matches!(rt.os.tells[..], [.., Tell::Ready(_)]));
    // The scan is done: the next tick starts another.
    on_wake(&mut rt, &mut src, Wake::ScanTick);
    assert_eq!(rt.os.scans.get(), 2);
}

#[tokio::test]
async fn a_drain_is_measured_at_once_then_on_its_tick_and_never_twice_at_a_time() {
    let mut rt = reloading();
    let (mut src, _feeds) = sources();
    let t = Instant::now();
    src.arm(&mut rt, t);
    assert_eq!(rt.os.measures.get(), 0, "nothing drains while 2 starts");
    ready(&mut rt, 102);
    assert_eq!(rt.os.steered, [2]);
    let gate = Arc::clone(&rt.os.gate);
    let held = gate.lock().await;
    src.arm(&mut rt, t);
    assert_eq!(rt.os.measures.get(), 1, "the first measure at once");
    assert_eq!(rt.os.watches.get(), 1);
    src.arm(&mut rt, t + 3 * DRAIN_EVERY);
    assert_eq!(rt.os.measures.get(), 1, "not while one runs, tick or not");
    drop(held);
    let events = wake(&mut rt, &mut src).await;
    assert!(
        matches!(events[..], [Event::Drained { generation: 2, .. }]),
        "{events:?}"
    );
    assert!(
        matches!(src.drain_watch, Some((2, _))),
        "what it saw is kept"
    );
    for ev in events {
        step(&mut rt, ev);
    }
    src.arm(&mut rt, t + DRAIN_EVERY - ms(1));
    assert_eq!(rt.os.measures.get(), 1, "the next one waits for its tick");
    src.arm(&mut rt, t + DRAIN_EVERY);
    assert_eq!(rt.os.measures.get(), 2);
    assert_eq!(rt.os.watches.get(), 1, "the measure goes on from the first");
}

#[tokio::test]
async fn a_due_drain_tick_does_not_wake_the_loop_while_its_measure_runs() {
    let mut rt = reloading();
    let (mut src, _feeds) = sources();
    ready(&mut rt, 102);
    let gate = Arc::clone(&rt.os.gate);
    let held = gate.lock().await;
    src.arm(&mut rt, Instant::now());
    assert_eq!(rt.os.measures.get(), 1);
    // Its tick comes due meanwhile; nothing else is armed this soon.
    let woke = tokio::time::timeout(3 * DRAIN_EVERY, src.next(&mut rt.os)).await;
    assert!(woke.is_err(), "woken while the measure runs");
    drop(held);
    let events = wake(&mut rt, &mut src).await;
    assert!(matches!(events[..], [Event::Drained { .. }]), "{events:?}");
}

#[tokio::test]
async fn signals_mean_reload_stop_forward_upgrade_and_a_reap() {
    let mut rt = started(cfg());
    let (mut src, _feeds) = sources();
    ready(&mut rt, 101);
    let mut on = |rt: &mut Runtime<Fake>, sig| on_wake(rt, &mut src, Wake::Signal(sig));
    assert!(matches!(on(&mut rt, Signal::SIGHUP)[..], [Event::Reload]));
    assert!(matches!(on(&mut rt, Signal::SIGTERM)[..], [Event::Stop]));
    assert!(matches!(on(&mut rt, Signal::SIGINT)[..], [Event::Stop]));
    assert!(matches!(
        on(&mut rt, Signal::SIGUSR1)[..],
        [Event::Forward(Signal::SIGUSR1)]
    ));
    assert!(matches!(
        on(&mut rt, Signal::SIGUSR2)[..],
        [Event::Upgrade {
            binary: None,
            reply: None
        }]
    ));
    // SIGCHLD: what is reaped reaches the core at once, then the groups
    // are checked.
    rt.os.exits.push((101, ExitStatus::Code(1)));
    assert!(on(&mut rt, Signal::SIGCHLD).is_empty());
    assert_eq!((rt.os.reaps, rt.os.group_checks), (1, 1));
    let alive = |rt: &Runtime<Fake>| rt.core.children().iter().any(|c| c.alive());
    assert!(!alive(&rt), "the core knows 101 exited");
}

#[tokio::test]
async fn a_control_request_is_answered_through_the_reply_the_system_holds() {
    let mut rt = started(cfg());
    let (mut src, feeds) = sources();
    let mut answer = feeds.request(Request::Status).await;
    let events = wake(&mut rt, &mut src).await;
    assert!(
        matches!(
            events[..],
            [Event::Control {
                request: Request::Status,
                ..
            }]
        ),
        "{events:?}"
    );
    for ev in events {
        step(&mut rt, ev);
    }
    assert!(matches!(answer.try_recv(), Ok(Response::Status(_))));
}

#[tokio::test]
async fn a_sweep_the_core_wants_starts_once_and_its_finds_reach_the_core() {
    let mut rt = started(cfg());
    let (mut src, _feeds) = sources();
    ready(&mut rt, 101);
    let t = Instant::now();
    src.arm(&mut rt, t);
    assert_eq!(rt.os.sweeps.get(), 0, "nothing to sweep while 101 runs");
    // 101 ends: what it may have left is looked for.
    rt.os.exits.push((101, ExitStatus::Code(1)));
    rt.os.escaping = vec![(900, "left behind".into())];
    on_wake(&mut rt, &mut src, Wake::Signal(Signal::SIGCHLD));
    assert!(rt.core.wants(t).sweep.is_some());
    src.arm(&mut rt, t);
    src.arm(&mut rt, t);
    assert_eq!(rt.os.sweeps.get(), 1);
    let swept = async {
        loop {
            let events = wake(&mut rt, &mut src).await;
            let swept = events.iter().any(|e| matches!(e, Event::Escaped { .. }));
            for ev in events {
                step(&mut rt, ev);
            }
            if swept {
                break;
            }
        }
    };
    let late = tokio::time::timeout(DEADLINE, swept).await;
    assert!(late.is_ok(), "the sweep's finds never reached the core");
    assert!(rt.core.wants(t).sweep.is_none(), "the core has its answer");
    assert_eq!(rt.core.escaped().collect::<Vec<_>>(), [900]);
    assert!(
        rt.os.signals.contains(&(900, Signal::SIGTERM)),
        "and ends it"
    );
    src.arm(&mut rt, t);
    assert_eq!(rt.os.sweeps.get(), 1);
}

#[tokio::test]
async fn the_listeners_are_watched_only_while_no_child_runs() {
    let mut rt = Runtime {
        core: Supervisor::new(Config {
            lazy: true,
            ..cfg()
        }),
        os: Fake::default(),
    };
    step(&mut rt, Event::Start);
    assert!(rt.os.spawned.is_empty(), "lazy: nothing runs yet");
    let (mut src, _feeds) = sources();
    assert!(src.arm(&mut rt, Instant::now()).is_none());
    assert!(src.listeners.watching());
    for ev in on_wake(&mut rt, &mut src, Wake::Connection) {
        step(&mut rt, ev);
    }
    assert_eq!(rt.os.spawned, [(101, 1)], "the connection starts a child");
    src.arm(&mut rt, Instant::now());
    assert!(!src.listeners.watching(), "its connections wake nothing");
}

/// The whole loop: start, the scan sees the child ready, `relaunch reload`
/// starts generation 2 beside it, new connections are steered to it once
/// it is ready, generation 1 drains and only then is stopped; its exit
/// answers the reload.
#[tokio::test]
async fn a_reload_steers_to_the_new_generation_drains_the_old_then_stops_it() {
    let mut rt = started(Config {
        drain: Some(DRAIN_TIMEOUT),
        ..cfg()
    });
    rt.os.own_sockets = true;
    let (mut src, feeds) = sources();
    turns_until(&mut rt, &mut src, "ready", |rt| rt.core.serving() == 1).await;
    assert!(rt.os.signals.is_empty());
    let mut answer = feeds.request(Request::Reload).await;
    turns_until(&mut rt, &mut src, "steered", |rt| !rt.os.steered.is_empty()).await;
    assert_eq!(rt.os.spawned, [(101, 1), (102, 2)]);
    assert_eq!(rt.os.steered, [2]);
    assert!(rt.os.signals.is_empty(), "generation 1 drains first");
    assert_eq!(rt.core.serving(), 2);
    turns_until(&mut rt, &mut src, "stopped 101", |rt| {
        !rt.os.signals.is_empty()
    })
    .await;
    assert_eq!(rt.os.signals, [(101, Signal::SIGTERM)]);
    // The next drain (a rolled-back canary's is keyed by the generation
    // that serves, 2 again) is measured afresh.
    src.arm(&mut rt, Instant::now());
    assert!(
        src.drain_watch.is_none(),
        "a finished drain's measure is not kept"
    );
    let drained = Count::Drain { idle: true, cut: 0 };
    assert!(rt.os.counts.contains(&drained), "stopped once idle");
    assert!(
        rt.os.measures.get() >= 2,
        "idle twice, the settle time apart"
    );
    assert!(answer.try_recv().is_err(), "answered once 1 is gone");
    rt.os.exits.push((101, ExitStatus::Signal(15)));
    let sweeps = rt.os.sweeps.get();
    feeds.signals.send(Signal::SIGCHLD).unwrap();
    // Reaped, then swept for what it may have left: the reload is done.
    turns_until(&mut rt, &mut src, "answered", |_| !answer.is_empty()).await;
    assert_eq!(rt.os.reaps, 1);
    assert!(rt.os.sweeps.get() > sweeps);
    match answer.try_recv() {
        Ok(Response::Reloaded { generation, pids }) => {
            assert_eq!((generation, pids), (2, vec![102]));
        }
        other => panic!("the reload's answer: {other:?}"),
    }
    assert_eq!(rt.core.state(), "serving");
    feeds.signals.send(Signal::SIGTERM).unwrap();
    turns_until(&mut rt, &mut src, "stopping", |rt| rt.os.signals.len() == 2).await;
    assert_eq!(rt.os.signals[1], (102, Signal::SIGTERM));
}
