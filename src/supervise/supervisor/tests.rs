//! The supervisor with a fake spawner and no clock: events in, effects
//! recorded. One file per concern.

mod canary;
mod dev_loop;
mod drain;
mod groups;
mod keep;
mod on_demand;
mod probes;
mod readiness;
mod reload;
mod restart;
mod stop;
mod upgrade;

use super::*;

/// Records effects; pids count up from 100.
#[derive(Default)]
struct Fake {
    next_pid: i32,
    spawned: Vec<(i32, u64, usize)>,
    signals: Vec<(i32, Signal)>,
    tells: Vec<Tell>,
    released: Vec<u64>,
    counts: Vec<Count>,
    fail_spawn: Option<fn() -> spawn::Error>,
    upgrades: Vec<(Option<std::path::PathBuf>, Option<ReplyId>)>,
    /// The control clients owed an answer, as the runtime holds them.
    replies: crate::control::Replies,
    /// What the next sweep for escaped processes finds; each sweep
    /// asked for is answered at once.
    escaping: Vec<(i32, String)>,
    sweeps: u64,
    /// Pids of the builds started.
    builds: Vec<i32>,
    /// Upgrade handshakes told to end (past their deadline).
    checks_ended: usize,
    /// `open` gives a generation sockets of its own.
    own_sockets: bool,
    /// Generations given sockets of their own, then steered to.
    opened: Vec<u64>,
    steered: Vec<u64>,
    steer_fails: bool,
    /// Canaries given their share.
    shared: Vec<(u64, f64)>,
    /// Probes started: generation and the process groups given; and
    /// their numbers, in the same order.
    probes: Vec<(u64, Vec<i32>)>,
    numbers: Vec<u64>,
    /// Why a probe cannot start, if it cannot.
    probe_fails: Option<NotProbed>,
    /// Whether each probe started (or tried) was of a generation alone.
    alone: Vec<bool>,
    probes_ended: Vec<u64>,
    /// Starts (true) and ends (false) of probes, by generation, in the
    /// order the driver would carry them out.
    probe_log: Vec<(bool, u64)>,
}

/// The core and a fake spawner, side by side as the runtime holds them.
struct Sim {
    core: Supervisor,
    os: Fake,
}

impl std::ops::Deref for Sim {
    type Target = Supervisor;
    fn deref(&self) -> &Supervisor {
        &self.core
    }
}

impl std::ops::DerefMut for Sim {
    fn deref_mut(&mut self) -> &mut Supervisor {
        &mut self.core
    }
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        Sim {
            core: Supervisor::new(cfg),
            os: Fake::default(),
        }
    }
}

/// Events in, effects recorded in the fake (replies are sent).
impl Sim {
    fn run(&mut self, event: Event, now: Instant) {
        let effects = self.core.handle(event, now, &mut self.os);
        self.record(effects);
        if let Some(sweep) = self.sweep_wanted() {
            self.os.sweeps += 1;
            let found = std::mem::take(&mut self.os.escaping);
            self.run(Event::Escaped { sweep, found }, now);
        }
    }
    fn record(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Signal { pgid, sig } => self.os.signals.push((pgid, sig)),
                Effect::SignalEscaped { pid, sig } => self.os.signals.push((pid, sig)),
                Effect::Tell(t) => self.os.tells.push(t),
                Effect::Release { generation } => self.os.released.push(generation),
                Effect::Count(c) => self.os.counts.push(c),
                Effect::Reply { to, response } => {
                    if let Some(to) = self.os.replies.take(to) {
                        let _ = to.send(response);
                    }
                }
                Effect::Upgrade { binary, reply } => self.os.upgrades.push((binary, reply)),
                Effect::EndCheck => self.os.checks_ended += 1,
                Effect::EndProbe { generation } => {
                    self.os.probes_ended.push(generation);
                    self.os.probe_log.push((false, generation));
                }
            }
        }
    }
    fn t_start(&mut self, now: Instant) {
        self.run(Event::Start, now);
    }
    fn t_ready(&mut self, pid: i32, now: Instant) {
        let how = "test".into();
        self.run(Event::Ready { pid, how }, now);
    }
    fn t_blind(&mut self, pid: i32) {
        let why = "test".into();
        self.run(Event::Blind { pid, why }, Instant::now());
    }
    /// The leader exits, alone in its group.
    fn t_exit(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let group_alive = false;
        self.run(
            Event::Exited {
                pid,
                status,
                group_alive,
            },
            now,
        );
    }
    /// The last probe of `generation` started answers.
    fn t_probed(&mut self, generation: u64, result: Result<&str, &str>, now: Instant) {
        let last = self.os.probes.iter().rposition(|(g, _)| *g == generation);
        let number = last.map_or(0, |i| self.os.numbers[i]);
        self.t_probed_by(number, result, now);
    }
    /// The probes that run now, each waiting for its answer: (number,
    /// generation, health).
    fn t_running(&self) -> Vec<(u64, u64, bool)> {
        self.probing
            .iter()
            .filter(|p| p.due.is_none())
            .map(|p| (p.number, p.generation, p.health))
            .collect()
    }
    /// Probe `number` answers.
    fn t_probed_by(&mut self, number: u64, result: Result<&str, &str>, now: Instant) {
        let result = result.map(str::to_string).map_err(str::to_string);
        self.run(Event::Probed { number, result }, now);
    }
    fn t_timer(&mut self, now: Instant) {
        self.run(Event::Timer, now);
    }
    fn t_stop(&mut self, now: Instant) {
        self.run(Event::Stop, now);
    }
    /// Like SIGHUP, but says which generation answers it.
    fn t_reload(&mut self, now: Instant) -> Result<u64, String> {
        let r = self.core.request_reload(&mut self.os, None, now);
        let effects = std::mem::take(&mut self.out);
        self.record(effects);
        r
    }
}

impl Spawner for Fake {
    fn spawn(&mut self, generation: u64, worker: usize) -> Result<i32, spawn::Error> {
        if let Some(f) = self.fail_spawn {
            return Err(f());
        }
        self.next_pid += 1;
        let pid = 100 + self.next_pid;
        self.spawned.push((pid, generation, worker));
        Ok(pid)
    }
    fn open(&mut self, generation: u64, _probes: usize) -> bool {
        if self.own_sockets {
            self.opened.push(generation);
        }
        self.own_sockets
    }
    fn steer(&mut self, generation: u64) -> Result<(), String> {
        self.steered.push(generation);
        match self.steer_fails {
            true => Err("attach refused".into()),
            false => Ok(()),
        }
    }
    fn share(&mut self, generation: u64, share: f64) -> Result<(), String> {
        self.shared.push((generation, share));
        match self.steer_fails {
            true => Err("attach refused".into()),
            false => Ok(()),
        }
    }
    fn probe(
        &mut self,
        number: u64,
        generation: u64,
        _probe: &Probe,
        pgids: &[i32],
        alone: bool,
    ) -> Result<(), NotProbed> {
        self.alone.push(alone);
        if let Some(e) = &self.probe_fails {
            return Err(e.clone());
        }
        self.probes.push((generation, pgids.to_vec()));
        self.numbers.push(number);
        self.probe_log.push((true, generation));
        Ok(())
    }
    fn jitter(&mut self) -> f64 {
        0.5
    }
    fn build(&mut self) -> Result<i32, spawn::Error> {
        self.next_pid += 1;
        let pid = 100 + self.next_pid;
        self.builds.push(pid);
        Ok(pid)
    }
}

fn cfg(workers: usize) -> Config {
    Config {
        restart: Restart::Always,
        workers,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(10),
        ready_delay: None,
        ready_auto: true,
        ready_probe: None,
        health: None,
        ready_timeout: Duration::from_secs(60),
        intercept_remedy: Some("drop --no-intercept".into()),
        listeners: Vec::new(),
        watch: None,
        lazy: false,
        idle_stop: None,
        drain: None,
        no_canary: None,
        keep_previous: None,
    }
}

fn on_demand(workers: usize, lazy: bool, idle_stop: Option<Duration>) -> Sim {
    Sim {
        core: Supervisor::new(Config {
            lazy,
            idle_stop,
            ..cfg(workers)
        }),
        os: Fake::default(),
    }
}

impl Sim {
    fn t_connection(&mut self, now: Instant) {
        self.run(Event::Connection, now);
    }
    fn t_activity(&mut self, open: bool, now: Instant) {
        let churned = false;
        self.run(Event::Activity { open, churned }, now);
    }
    /// A control client, as the runtime holds it; its answer.
    fn reply(&mut self) -> (ReplyId, tokio::sync::oneshot::Receiver<Response>) {
        self.reply_on(-1)
    }
    /// A control client on connection `conn`.
    fn reply_on(&mut self, conn: i32) -> (ReplyId, tokio::sync::oneshot::Receiver<Response>) {
        let (reply, answer) = crate::control::Reply::new(conn);
        (self.os.replies.hold(reply), answer)
    }
    /// `relaunch reload` through the control socket; its answer.
    fn t_reload_client(&mut self, now: Instant) -> tokio::sync::oneshot::Receiver<Response> {
        let (reply, answer) = self.reply();
        let request = Request::Reload;
        self.run(Event::Control { request, reply }, now);
        answer
    }
    /// Serving, then idle from `now` for the idle time: stopped.
    fn t_idle_out(&mut self, now: Instant) -> Instant {
        let limit = self.kept.cfg.idle_stop.unwrap();
        self.t_activity(false, now);
        self.t_activity(false, now + limit);
        now + limit
    }
}

fn started(workers: usize) -> (Sim, Instant) {
    let t0 = Instant::now();
    let mut s = Sim::new(cfg(workers));
    s.t_start(t0);
    (s, t0)
}

fn pids(s: &Sim, generation: u64) -> Vec<i32> {
    s.children()
        .iter()
        .filter(|c| c.generation == generation)
        .map(|c| c.pid)
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Saves `s`, sends it through JSON as an upgrade does, and restores
/// it in a fresh fake; the waiters' connections come back as replies.
fn upgraded(s: &Sim) -> (Sim, Vec<(u64, i32)>) {
    let (saved, waiting) = s.save();
    let conns = waiting
        .into_iter()
        .filter_map(|(generation, id)| Some((generation, s.os.replies.conn(id)?)))
        .collect();
    let json = serde_json::to_string(&saved).unwrap();
    let back: Kept = serde_json::from_str(&json).unwrap();
    let fake = Fake {
        next_pid: s.os.next_pid,
        ..Fake::default()
    };
    (
        Sim {
            core: Supervisor::restore(back, Vec::new()),
            os: fake,
        },
        conns,
    )
}

impl Sim {
    fn t_change(&mut self, path: &str, now: Instant) {
        let path = path.into();
        self.run(Event::Changed { path }, now);
    }
    fn t_built(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let tail = vec!["error[E0425]: cannot find value `x`".into()];
        self.run(Event::Built { pid, status, tail }, now);
    }
}

/// The child says through its pipe that exec failed, then exits.
fn exec_fails(s: &mut Sim, pid: i32, error: spawn::Error, now: Instant) {
    let code = if matches!(error, spawn::Error::NotFound(_)) {
        127
    } else {
        126
    };
    s.run(Event::ExecFailed { pid, error }, now);
    s.t_exit(pid, ExitStatus::Code(code), now);
}

fn exited_leaving_group(s: &mut Sim, pid: i32, status: ExitStatus, now: Instant) {
    let group_alive = true;
    s.run(
        Event::Exited {
            pid,
            status,
            group_alive,
        },
        now,
    );
}
