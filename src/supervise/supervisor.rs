//! The supervisor's state machine: which children exist, in which generation,
//! and what happens when they exit, become ready, or time out. Pure: every
//! effect goes through [`Os`], so it is tested with a fake.
//!
//! Invariants:
//! - The serving generation is the one whose children answer today. A reload
//!   starts the next generation beside it; only when *all* of the new
//!   generation's workers are ready is the old one sent the stop signal.
//! - A new generation that exits before it is ready, or misses its ready
//!   deadline, is stopped; the serving generation never notices.
//! - One reload at a time: requests during a reload coalesce into one more
//!   reload after it. A reload is over when the new generation serves and the
//!   old one is gone (or when it failed).
//! - A crash in the serving generation restarts that worker, with backoff.
//! - Every child we asked to stop gets SIGKILL after the stop timeout.

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use crate::cli::Restart;
use crate::duration;
use crate::supervise::backoff::{self, Backoff, Next};
use crate::supervise::spawn;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
    /// The code a shell would report.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Effects, carried out by the driver (or recorded by a test).
pub trait Os {
    fn spawn(&mut self, generation: u64, worker: usize) -> Result<i32, spawn::Error>;
    /// Signals the child's whole process group.
    fn signal(&mut self, pid: i32, sig: Signal);
    fn note(&mut self, note: Note);
    /// A number in [0, 1) for backoff jitter.
    fn jitter(&mut self) -> f64;
}

/// Things the outside world (systemd, control clients, logs) hears about.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A generation is ready and serving.
    Serving {
        generation: u64,
        pids: Vec<i32>,
    },
    ReloadStarted {
        generation: u64,
    },
    /// A reload ended: the pids now serving, or why it failed.
    ReloadDone {
        generation: u64,
        result: Result<Vec<i32>, String>,
    },
    /// No child of this generation is left.
    GenerationGone {
        generation: u64,
    },
    /// A serving worker exited on its own and will be started again.
    Restarting {
        generation: u64,
        worker: usize,
        status: ExitStatus,
    },
    Stopping,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub restart: Restart,
    pub workers: usize,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// `--ready delay:DUR`: alive this long counts as ready.
    pub ready_delay: Option<Duration>,
    pub ready_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Starting { ready_at: Option<Instant> },
    Ready,
    Stopping { kill_at: Instant, killed: bool },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting { .. } => "starting",
            State::Ready => "ready",
            State::Stopping { .. } => "stopping",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Child {
    pub pid: i32,
    pub generation: u64,
    pub worker: usize,
    pub started: Instant,
    pub state: State,
    /// When it became ready: a crash soon after is a crash loop (see backoff).
    pub ready_since: Option<Instant>,
    /// `MAINPID=` from the child, when it names another process.
    pub main_pid: Option<i32>,
    /// The last `STATUS=` it sent.
    pub status_text: Option<String>,
    /// `--ready auto` cannot see whether it waits for connections: the
    /// ready timeout then counts as ready instead of as a failure.
    pub blind: bool,
}

/// One worker position of the serving generation, across its restarts.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    backoff: Backoff,
    restart_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The new generation is starting beside the serving one.
    Starting { deadline: Instant },
    /// The new generation serves; the old one is stopping.
    Draining,
}

#[derive(Debug, Clone, Copy)]
struct Reload {
    generation: u64,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i32,
    /// Printed as an error when relaunch exits.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LastReload {
    pub generation: u64,
    pub ok: bool,
    pub message: String,
    pub at: Instant,
}

pub struct Supervisor<O: Os> {
    pub os: O,
    cfg: Config,
    children: Vec<Child>,
    serving: u64,
    slots: Vec<Slot>,
    /// The serving generation has been ready at least once.
    announced: bool,
    first_deadline: Option<Instant>,
    next_generation: u64,
    reload: Option<Reload>,
    reload_queued: bool,
    stopping: bool,
    /// Exit code once nothing is left, decided by what ended us.
    exit_code: i32,
    exit_error: Option<String>,
    done: bool,
    last_reload: Option<LastReload>,
}

impl<O: Os> Supervisor<O> {
    pub fn new(os: O, cfg: Config) -> Self {
        Supervisor {
            os,
            slots: vec![Slot::default(); cfg.workers],
            cfg,
            children: Vec::new(),
            serving: 0,
            announced: false,
            first_deadline: None,
            next_generation: 1,
            reload: None,
            reload_queued: false,
            stopping: false,
            exit_code: 0,
            exit_error: None,
            done: false,
            last_reload: None,
        }
    }

    /// Starts generation 1. Failing to exec ends relaunch at once.
    pub fn start(&mut self, now: Instant) {
        self.serving = self.take_generation();
        self.first_deadline = Some(now + self.cfg.ready_timeout);
        for worker in 0..self.cfg.workers {
            if let Err(e) = self.spawn(self.serving, worker, now) {
                self.fail_to_exec(e, now);
                return;
            }
        }
    }

    /// Set once relaunch should exit: nothing is left to supervise.
    pub fn exit(&self) -> Option<Exit> {
        self.done.then(|| Exit {
            code: self.exit_code,
            error: self.exit_error.clone(),
        })
    }

    pub fn children(&self) -> &[Child] {
        &self.children
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn serving(&self) -> u64 {
        self.serving
    }

    pub fn last_reload(&self) -> Option<&LastReload> {
        self.last_reload.as_ref()
    }

    /// "starting", "serving", "reloading", "backing off" or "stopping".
    pub fn state(&self) -> &'static str {
        if self.stopping {
            "stopping"
        } else if self.reload.is_some() {
            "reloading"
        } else if self.slots.iter().any(|s| s.restart_at.is_some()) {
            "backing off"
        } else if !self.announced {
            "starting"
        } else {
            "serving"
        }
    }

    /// The earliest moment `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let children = self.children.iter().filter_map(|c| match c.state {
            State::Starting { ready_at } => ready_at,
            State::Stopping {
                kill_at,
                killed: false,
            } => Some(kill_at),
            _ => None,
        });
        let restarts = self.slots.iter().filter_map(|s| s.restart_at);
        let reload = self.reload.and_then(|r| match r.phase {
            Phase::Starting { deadline } => Some(deadline),
            Phase::Draining => None,
        });
        children
            .chain(restarts)
            .chain(reload)
            .chain(self.first_deadline.filter(|_| !self.announced))
            .min()
    }

    pub fn on_timer(&mut self, now: Instant) {
        for i in 0..self.children.len() {
            let (pid, generation, state) = (
                self.children[i].pid,
                self.children[i].generation,
                self.children[i].state,
            );
            match state {
                State::Starting { ready_at: Some(t) } if t <= now => {
                    self.mark_ready(pid, "alive for the ready delay", now)
                }
                State::Stopping {
                    kill_at,
                    killed: false,
                } if kill_at <= now => {
                    let waited = duration::human(self.cfg.stop_timeout);
                    warn!(
                        pid,
                        generation, "did not stop within {waited}; sending SIGKILL"
                    );
                    self.os.signal(pid, Signal::SIGKILL);
                    self.children[i].state = State::Stopping {
                        kill_at,
                        killed: true,
                    };
                }
                _ => {}
            }
        }
        if let Some(Reload {
            generation,
            phase: Phase::Starting { deadline },
        }) = self.reload
            && deadline <= now
        {
            let waited = duration::human(self.cfg.ready_timeout);
            let unseen: Vec<(i32, bool)> = self
                .children
                .iter()
                .filter(|c| c.generation == generation && matches!(c.state, State::Starting { .. }))
                .map(|c| (c.pid, c.blind))
                .collect();
            if unseen.iter().all(|&(_, blind)| blind) {
                // We could not look, so we cannot say it failed: the timeout
                // is the readiness signal, as documented for `auto`.
                for (pid, _) in unseen {
                    self.mark_ready(
                        pid,
                        &format!("no sign seen within {waited}, taken as ready"),
                        now,
                    );
                }
            } else {
                self.fail_reload(
                    format!("generation {generation} was not ready within {waited}"),
                    now,
                );
            }
        }
        if !self.announced && self.first_deadline.is_some_and(|d| d <= now) {
            self.first_deadline = None;
            warn!(
                generation = self.serving,
                "not ready within {}; treating it as serving anyway (nothing else can serve). \
                 If the app is fine, use --ready delay:DURATION, or send READY=1 and use --ready notify",
                duration::human(self.cfg.ready_timeout)
            );
            self.announce(now);
        }
        for worker in 0..self.slots.len() {
            if self.slots[worker].restart_at.is_some_and(|t| t <= now) && !self.stopping {
                self.slots[worker].restart_at = None;
                self.slots[worker].restarts += 1;
                if let Err(e) = self.spawn(self.serving, worker, now) {
                    let serving = self.children.iter().any(|c| c.generation == self.serving);
                    match e {
                        // A missing program will not come back by itself.
                        spawn::Error::NotFound(_) | spawn::Error::NotExecutable(_) if !serving => {
                            self.fail_to_exec(e, now);
                            return;
                        }
                        // Out of fds or processes, or other workers serve: try again later.
                        _ => {
                            error!(generation = self.serving, worker, "{e}");
                            self.after_exit(
                                None,
                                worker,
                                Duration::ZERO,
                                None,
                                ExitStatus::Code(127),
                                now,
                            );
                        }
                    }
                }
            }
        }
    }

    /// A child was reaped. Pids that are not ours (orphans we reaped as a
    /// subreaper) are ignored.
    pub fn on_exit(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        let Some(i) = self.children.iter().position(|c| c.pid == pid) else {
            return;
        };
        let child = self.children.remove(i);
        let (generation, worker) = (child.generation, child.worker);
        let lived = now.saturating_duration_since(child.started);
        let ready_for = child.ready_since.map(|t| now.saturating_duration_since(t));
        match child.state {
            State::Stopping { .. } => info!(pid, generation, worker, "stopped: {status}"),
            _ if self.pending() == Some(generation) => {
                warn!(
                    pid,
                    generation, worker, "new generation {status} before it was ready"
                );
                self.fail_reload(
                    format!("generation {generation} {status} before it was ready"),
                    now,
                );
            }
            _ if generation == self.serving && !self.stopping => {
                if status.success() {
                    info!(pid, generation, worker, "{status}");
                } else {
                    warn!(pid, generation, worker, "{status}");
                }
                self.slots[worker].last_exit = Some(status);
                self.after_exit(Some(pid), worker, lived, ready_for, status, now);
            }
            _ => info!(pid, generation, worker, "{status}"),
        }
        if !self.children.iter().any(|c| c.generation == generation) {
            self.os.note(Note::GenerationGone { generation });
        }
        self.settle(now);
    }

    /// The child with `pid` (or its tree) is ready to serve.
    pub fn mark_ready(&mut self, pid: i32, how: &str, now: Instant) {
        let Some(c) = self.children.iter_mut().find(|c| c.pid == pid) else {
            return;
        };
        if !matches!(c.state, State::Starting { .. }) {
            return;
        }
        c.state = State::Ready;
        c.ready_since = Some(now);
        let ms = now.saturating_duration_since(c.started).as_millis();
        info!(
            pid,
            generation = c.generation,
            worker = c.worker,
            "ready after {ms} ms ({how})"
        );
        self.settle(now);
    }

    pub fn set_status_text(&mut self, pid: i32, text: &str) {
        if let Some(c) = self.children.iter_mut().find(|c| c.pid == pid) {
            c.status_text = Some(text.to_string());
        }
    }

    /// Readiness of this child cannot be seen from /proc (see `procscan`).
    pub fn mark_blind(&mut self, pid: i32) {
        if let Some(c) = self.children.iter_mut().find(|c| c.pid == pid) {
            c.blind = true;
        }
    }

    pub fn set_main_pid(&mut self, pid: i32, main_pid: i32) {
        if let Some(c) = self.children.iter_mut().find(|c| c.pid == pid) {
            c.main_pid = Some(main_pid).filter(|&m| m != pid);
        }
    }

    /// Asks for a reload; returns the generation whose outcome answers it.
    pub fn request_reload(&mut self, now: Instant) -> Result<u64, String> {
        if self.stopping {
            return Err("relaunch is stopping".into());
        }
        if let Some(r) = self.reload {
            if !self.reload_queued {
                info!(
                    generation = r.generation,
                    "reload requested during a reload; another one follows it"
                );
            }
            self.reload_queued = true;
            return Ok(r.generation + 1);
        }
        let generation = self.take_generation();
        info!(
            generation,
            "reload: starting generation {generation} beside generation {}", self.serving
        );
        self.reload = Some(Reload {
            generation,
            phase: Phase::Starting {
                deadline: now + self.cfg.ready_timeout,
            },
        });
        self.os.note(Note::ReloadStarted { generation });
        for worker in 0..self.cfg.workers {
            if let Err(e) = self.spawn(generation, worker, now) {
                self.fail_reload(format!("generation {generation} could not start: {e}"), now);
                return Ok(generation);
            }
        }
        Ok(generation)
    }

    /// SIGTERM, SIGINT or `relaunch stop`. A second one kills at once.
    pub fn stop(&mut self, now: Instant) {
        if self.stopping {
            warn!("asked to stop again: sending SIGKILL to every child");
            for c in &mut self.children {
                self.os.signal(c.pid, Signal::SIGKILL);
                if let State::Stopping { kill_at, .. } = c.state {
                    c.state = State::Stopping {
                        kill_at,
                        killed: true,
                    };
                }
            }
            return;
        }
        self.stopping = true;
        self.os.note(Note::Stopping);
        if self.reload.is_some() {
            self.fail_reload("relaunch is stopping".into(), now);
        }
        for s in &mut self.slots {
            s.restart_at = None;
        }
        let pids: Vec<i32> = self.children.iter().map(|c| c.pid).collect();
        for pid in pids {
            self.stop_child(pid, now);
        }
        self.settle(now);
    }

    /// Passes a signal on to every child that is not being stopped.
    pub fn forward(&mut self, sig: Signal) {
        for c in &self.children {
            if !matches!(c.state, State::Stopping { .. }) {
                self.os.signal(c.pid, sig);
            }
        }
    }

    fn pending(&self) -> Option<u64> {
        match self.reload {
            Some(Reload {
                generation,
                phase: Phase::Starting { .. },
            }) => Some(generation),
            _ => None,
        }
    }

    fn take_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    fn spawn(&mut self, generation: u64, worker: usize, now: Instant) -> Result<(), spawn::Error> {
        let pid = self.os.spawn(generation, worker)?;
        info!(pid, generation, worker, "started");
        self.children.push(Child {
            pid,
            generation,
            worker,
            started: now,
            state: State::Starting {
                ready_at: self.cfg.ready_delay.map(|d| now + d),
            },
            main_pid: None,
            status_text: None,
            blind: false,
            ready_since: None,
        });
        Ok(())
    }

    fn fail_to_exec(&mut self, e: spawn::Error, now: Instant) {
        let code = match e {
            spawn::Error::NotFound(_) => 127,
            spawn::Error::NotExecutable(_) => 126,
            spawn::Error::Os(_) => 1,
        };
        self.exit_code = code;
        self.exit_error = Some(e.to_string());
        // Workers that did start must not outlive us.
        self.stop(now);
    }

    /// Restart policy and backoff for a serving worker that exited on its own.
    /// `pid` is the child that exited; None when it never started.
    fn after_exit(
        &mut self,
        pid: Option<i32>,
        worker: usize,
        lived: Duration,
        ready_for: Option<Duration>,
        status: ExitStatus,
        now: Instant,
    ) {
        let restart = match self.cfg.restart {
            Restart::Always => true,
            Restart::OnFailure => !status.success(),
            Restart::Never => false,
        };
        if !restart {
            self.exit_code = status.code();
            return;
        }
        let jitter = self.os.jitter();
        match self.slots[worker].backoff.exited(lived, ready_for, jitter) {
            Next::RestartAfter(d) => {
                info!(
                    pid,
                    generation = self.serving,
                    worker,
                    "restarting in {} ms",
                    d.as_millis()
                );
                self.slots[worker].restart_at = Some(now + d);
                self.os.note(Note::Restarting {
                    generation: self.serving,
                    worker,
                    status,
                });
            }
            Next::GiveUp => {
                let msg = format!(
                    "giving up after {} quick failures in a row (each exited before it was ready, or within {} of it); the last one {status}",
                    backoff::GIVE_UP_AFTER,
                    duration::human(backoff::SERVED_FOR)
                );
                self.exit_code = 1;
                self.exit_error = Some(msg);
                self.stop(now);
            }
        }
    }

    /// Moves things along after any change: promotions, finished reloads, exit.
    fn settle(&mut self, now: Instant) {
        if let Some(generation) = self.pending() {
            let ready = self
                .children
                .iter()
                .filter(|c| c.generation == generation && c.state == State::Ready)
                .count();
            if ready == self.cfg.workers {
                self.promote(generation, now);
            }
        }
        if !self.announced
            && self.reload.is_none()
            && self.children.iter().any(|c| c.generation == self.serving)
            && self
                .children
                .iter()
                .filter(|c| c.generation == self.serving)
                .all(|c| c.state == State::Ready)
        {
            self.announce(now);
        }
        if let Some(Reload {
            generation,
            phase: Phase::Draining,
        }) = self.reload
            && !self.children.iter().any(|c| c.generation < generation)
        {
            let pids = self.serving_pids();
            info!(
                generation,
                "reload done: generation {generation} serves (pids {pids:?})"
            );
            self.finish_reload(generation, Ok(pids), now);
        }
        if self.children.is_empty() && !self.done {
            let idle = self.slots.iter().all(|s| s.restart_at.is_none()) && self.reload.is_none();
            if self.stopping {
                self.done = true;
            } else if idle && self.cfg.restart != Restart::Always {
                info!(
                    "no child left to run; exiting with status {}",
                    self.exit_code
                );
                self.done = true;
            }
        }
    }

    fn announce(&mut self, _now: Instant) {
        self.announced = true;
        let pids = self.serving_pids();
        self.os.note(Note::Serving {
            generation: self.serving,
            pids,
        });
    }

    fn serving_pids(&self) -> Vec<i32> {
        self.children
            .iter()
            .filter(|c| c.generation == self.serving)
            .map(|c| c.pid)
            .collect()
    }

    fn promote(&mut self, generation: u64, now: Instant) {
        let old: Vec<i32> = self
            .children
            .iter()
            .filter(|c| c.generation < generation)
            .map(|c| c.pid)
            .collect();
        info!(
            generation,
            "generation {generation} is ready; stopping generation {}", self.serving
        );
        self.serving = generation;
        self.slots = vec![Slot::default(); self.cfg.workers];
        self.reload = Some(Reload {
            generation,
            phase: Phase::Draining,
        });
        self.announce(now);
        for pid in old {
            self.stop_child(pid, now);
        }
    }

    /// Ends the reload in progress with `reason`; a new generation that is
    /// still starting is stopped, one that already serves stays.
    fn fail_reload(&mut self, reason: String, now: Instant) {
        let Some(Reload { generation, phase }) = self.reload else {
            return;
        };
        if let Phase::Starting { .. } = phase {
            warn!(
                generation,
                "reload failed: {reason}; generation {} keeps serving", self.serving
            );
            let pids: Vec<i32> = self
                .children
                .iter()
                .filter(|c| c.generation == generation)
                .map(|c| c.pid)
                .collect();
            for pid in pids {
                self.stop_child(pid, now);
            }
        }
        if !self.children.iter().any(|c| c.generation == generation) {
            // Nothing of it ever ran (spawn failed): nobody else will say so.
            self.os.note(Note::GenerationGone { generation });
        }
        self.finish_reload(generation, Err(reason), now);
    }

    fn finish_reload(&mut self, generation: u64, result: Result<Vec<i32>, String>, now: Instant) {
        self.reload = None;
        self.last_reload = Some(LastReload {
            generation,
            ok: result.is_ok(),
            message: match &result {
                Ok(pids) => format!("generation {generation} serves (pids {pids:?})"),
                Err(e) => e.clone(),
            },
            at: now,
        });
        self.os.note(Note::ReloadDone { generation, result });
        if std::mem::take(&mut self.reload_queued) && !self.stopping {
            let _ = self.request_reload(now);
        }
    }

    fn stop_child(&mut self, pid: i32, now: Instant) {
        let sig = self.cfg.stop_signal;
        let kill_at = now + self.cfg.stop_timeout;
        if let Some(c) = self.children.iter_mut().find(|c| c.pid == pid)
            && !matches!(c.state, State::Stopping { .. })
        {
            c.state = State::Stopping {
                kill_at,
                killed: false,
            };
            info!(
                pid,
                generation = c.generation,
                worker = c.worker,
                "sending {}",
                sig.as_str()
            );
            self.os.signal(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records effects; pids count up from 100.
    #[derive(Default)]
    struct Fake {
        next_pid: i32,
        spawned: Vec<(i32, u64, usize)>,
        signals: Vec<(i32, Signal)>,
        notes: Vec<Note>,
        fail_spawn: Option<fn() -> spawn::Error>,
    }

    impl Os for Fake {
        fn spawn(&mut self, generation: u64, worker: usize) -> Result<i32, spawn::Error> {
            if let Some(f) = self.fail_spawn {
                return Err(f());
            }
            self.next_pid += 1;
            let pid = 100 + self.next_pid;
            self.spawned.push((pid, generation, worker));
            Ok(pid)
        }
        fn signal(&mut self, pid: i32, sig: Signal) {
            self.signals.push((pid, sig));
        }
        fn note(&mut self, note: Note) {
            self.notes.push(note);
        }
        fn jitter(&mut self) -> f64 {
            0.5
        }
    }

    fn cfg(workers: usize) -> Config {
        Config {
            restart: Restart::Always,
            workers,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            ready_delay: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    fn started(workers: usize) -> (Supervisor<Fake>, Instant) {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Fake::default(), cfg(workers));
        s.start(t0);
        (s, t0)
    }

    fn pids(s: &Supervisor<Fake>, generation: u64) -> Vec<i32> {
        s.children()
            .iter()
            .filter(|c| c.generation == generation)
            .map(|c| c.pid)
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_generation_is_announced_when_ready() {
        let (mut s, t0) = started(2);
        assert_eq!(s.state(), "starting");
        s.mark_ready(101, "test", t0);
        assert!(s.os.notes.is_empty());
        s.mark_ready(102, "test", t0);
        assert_eq!(
            s.os.notes,
            [Note::Serving {
                generation: 1,
                pids: vec![101, 102]
            }]
        );
        assert_eq!(s.state(), "serving");
    }

    #[test]
    fn reload_overlaps_and_stops_old_only_when_new_is_ready() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        assert_eq!(s.request_reload(t0), Ok(2));
        assert_eq!(pids(&s, 2), [102]);
        assert!(
            s.os.signals.is_empty(),
            "old generation untouched while the new one starts"
        );
        s.mark_ready(102, "test", t0 + ms(300));
        assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
        assert_eq!(s.serving(), 2);
        assert_eq!(s.state(), "reloading", "not done until the old one is gone");
        s.on_exit(101, ExitStatus::Code(0), t0 + ms(400));
        assert!(s.os.notes.contains(&Note::ReloadDone {
            generation: 2,
            result: Ok(vec![102])
        }));
        assert_eq!(s.state(), "serving");
        assert!(s.exit().is_none());
        assert!(
            s.os.spawned.len() == 2,
            "the stopped old child is not restarted"
        );
    }

    #[test]
    fn new_generation_crashing_keeps_old() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.request_reload(t0).unwrap();
        s.on_exit(102, ExitStatus::Code(3), t0 + ms(50));
        let failed = s.os.notes.iter().any(|n| {
            matches!(n, Note::ReloadDone { generation: 2, result: Err(r) } if r.contains("exited with status 3 before it was ready"))
        });
        assert!(failed, "{:?}", s.os.notes);
        assert_eq!(s.serving(), 1);
        assert!(s.os.signals.is_empty(), "old generation never signalled");
        assert_eq!(pids(&s, 1), [101]);
        assert!(!s.last_reload().unwrap().ok);
    }

    #[test]
    fn ready_timeout_stops_new_and_keeps_old() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.request_reload(t0).unwrap();
        let deadline = s.next_deadline().unwrap();
        assert_eq!(deadline, t0 + Duration::from_secs(60));
        s.on_timer(deadline);
        assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
        assert_eq!(s.serving(), 1);
        // It ignores TERM: KILL after the stop timeout.
        let kill_at = s.next_deadline().unwrap();
        assert_eq!(kill_at, deadline + Duration::from_secs(10));
        s.on_timer(kill_at);
        assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGKILL)));
        s.on_exit(102, ExitStatus::Signal(9), kill_at);
        assert_eq!(pids(&s, 1), [101]);
    }

    #[test]
    fn ready_timeout_counts_as_ready_when_auto_cannot_see() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.request_reload(t0).unwrap();
        s.mark_blind(102);
        let deadline = s.next_deadline().unwrap();
        s.on_timer(deadline);
        assert_eq!(s.serving(), 2, "promoted, not failed");
        assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    }

    #[test]
    fn reloads_during_a_reload_coalesce_into_one() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        assert_eq!(s.request_reload(t0), Ok(2));
        assert_eq!(s.request_reload(t0), Ok(3));
        assert_eq!(s.request_reload(t0), Ok(3));
        assert_eq!(
            s.os.spawned.len(),
            2,
            "no third child until the reload ends"
        );
        s.mark_ready(102, "test", t0);
        s.on_exit(101, ExitStatus::Code(0), t0);
        assert_eq!(
            s.os.spawned.last(),
            Some(&(103, 3, 0)),
            "exactly one more reload"
        );
        assert_eq!(s.os.spawned.len(), 3);
    }

    #[test]
    fn crash_restarts_with_backoff_then_gives_up() {
        let (mut s, t0) = started(1);
        let mut now = t0;
        let mut pid = 101;
        for i in 0..backoff::GIVE_UP_AFTER {
            now += ms(10);
            s.on_exit(pid, ExitStatus::Code(3), now);
            if i + 1 == backoff::GIVE_UP_AFTER {
                break;
            }
            let at = s.next_deadline().expect("a restart is scheduled");
            assert_eq!(at, now + backoff::FIRST * 2u32.pow(i));
            now = at;
            s.on_timer(now);
            pid += 1;
            assert_eq!(s.children()[0].pid, pid);
            assert_eq!(s.slots()[0].restarts, i + 1);
        }
        let exit = s.exit().expect("gave up");
        assert_eq!(exit.code, 1);
        assert!(
            exit.error
                .unwrap()
                .contains("the last one exited with status 3")
        );
    }

    /// Bug 11: a server that became ready and served is not a crash loop.
    /// The bench's crash scenario: SIGKILL the serving child 5 times, each
    /// after it served for 2 s. Every restart must come at once, not after
    /// 0.1, 0.2, 0.4, 0.8, 1.6 s.
    #[test]
    fn crash_after_serving_restarts_at_once_every_time() {
        let (mut s, t0) = started(1);
        let mut now = t0;
        let mut pid = 101;
        let mut waits = Vec::new();
        for _ in 0..5 {
            now += ms(300);
            s.mark_ready(pid, "test", now);
            now += Duration::from_secs(2);
            s.on_exit(pid, ExitStatus::Signal(9), now);
            let at = s.next_deadline().expect("a restart is scheduled");
            waits.push(at - now);
            now = at;
            s.on_timer(now);
            pid += 1;
            assert_eq!(s.children()[0].pid, pid);
        }
        assert_eq!(waits, [Duration::ZERO; 5]);
        assert!(s.exit().is_none());
    }

    /// ...but one that keeps dying right after it said ready is, and backs off.
    #[test]
    fn crash_soon_after_ready_still_backs_off() {
        let (mut s, t0) = started(1);
        let mut now = t0;
        let mut waits = Vec::new();
        for pid in 101..104 {
            now += ms(300);
            s.mark_ready(pid, "test", now);
            now += ms(50);
            s.on_exit(pid, ExitStatus::Code(1), now);
            let at = s.next_deadline().expect("a restart is scheduled");
            waits.push(at - now);
            now = at;
            s.on_timer(now);
        }
        assert_eq!(waits, [ms(100), ms(200), ms(400)]);
    }

    #[test]
    fn exec_failure_exits_with_127_at_once() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake {
                fail_spawn: Some(|| spawn::Error::NotFound("cannot run x".into())),
                ..Fake::default()
            },
            cfg(1),
        );
        s.start(t0);
        assert_eq!(
            s.exit(),
            Some(Exit {
                code: 127,
                error: Some("cannot run x".into())
            })
        );
    }

    #[test]
    fn exec_failure_during_reload_keeps_old() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.os.fail_spawn =
            Some(|| spawn::Error::NotExecutable("cannot run x: permission denied".into()));
        assert_eq!(s.request_reload(t0), Ok(2));
        assert!(s.exit().is_none());
        assert_eq!(pids(&s, 1), [101]);
        assert!(matches!(
            s.last_reload(),
            Some(LastReload { ok: false, .. })
        ));
        let released = Note::GenerationGone { generation: 2 };
        assert!(
            s.os.notes.contains(&released),
            "its notify socket is released"
        );
    }

    #[test]
    fn stop_terms_then_kills_then_exits_zero() {
        let (mut s, t0) = started(2);
        s.stop(t0);
        assert_eq!(
            s.os.signals,
            [(101, Signal::SIGTERM), (102, Signal::SIGTERM)]
        );
        s.on_exit(101, ExitStatus::Signal(15), t0 + ms(5));
        assert!(s.exit().is_none());
        s.on_timer(t0 + Duration::from_secs(10));
        assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGKILL)));
        s.on_exit(102, ExitStatus::Signal(9), t0 + Duration::from_secs(10));
        assert_eq!(
            s.exit(),
            Some(Exit {
                code: 0,
                error: None
            })
        );
        assert_eq!(s.os.spawned.len(), 2, "nothing restarted while stopping");
    }

    #[test]
    fn stop_while_draining_answers_the_reload() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.request_reload(t0).unwrap();
        s.mark_ready(102, "test", t0);
        s.stop(t0);
        let answered = s.os.notes.iter().any(|n| {
            matches!(n, Note::ReloadDone { generation: 2, result: Err(r) } if r == "relaunch is stopping")
        });
        assert!(answered, "{:?}", s.os.notes);
        s.on_exit(101, ExitStatus::Code(0), t0);
        s.on_exit(102, ExitStatus::Code(0), t0);
        assert_eq!(
            s.exit(),
            Some(Exit {
                code: 0,
                error: None
            })
        );
    }

    #[test]
    fn stop_during_reload_fails_it_and_stops_both() {
        let (mut s, t0) = started(1);
        s.mark_ready(101, "test", t0);
        s.request_reload(t0).unwrap();
        s.stop(t0);
        assert!(
            s.os.notes
                .iter()
                .any(|n| matches!(n, Note::ReloadDone { result: Err(_), .. }))
        );
        assert_eq!(
            s.os.signals,
            [(102, Signal::SIGTERM), (101, Signal::SIGTERM)]
        );
        assert_eq!(s.request_reload(t0), Err("relaunch is stopping".into()));
    }

    #[test]
    fn workers_restart_on_their_own_and_reload_waits_for_all() {
        let (mut s, t0) = started(3);
        for p in [101, 102, 103] {
            s.mark_ready(p, "test", t0);
        }
        s.on_exit(102, ExitStatus::Signal(9), t0 + ms(20));
        s.on_timer(s.next_deadline().unwrap());
        assert_eq!(
            s.os.spawned.last(),
            Some(&(104, 1, 1)),
            "worker 1 restarted alone"
        );
        s.mark_ready(104, "test", t0);
        s.request_reload(t0).unwrap();
        assert_eq!(pids(&s, 2), [105, 106, 107]);
        s.mark_ready(105, "test", t0);
        s.mark_ready(106, "test", t0);
        assert!(s.os.signals.is_empty(), "two of three ready is not ready");
        s.mark_ready(107, "test", t0);
        let stopped: Vec<i32> = s.os.signals.iter().map(|(p, _)| *p).collect();
        assert_eq!(stopped, [101, 103, 104]);
    }

    #[test]
    fn restart_never_exits_with_child_status() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            Config {
                restart: Restart::Never,
                ..cfg(1)
            },
        );
        s.start(t0);
        s.on_exit(101, ExitStatus::Code(4), t0);
        assert_eq!(
            s.exit(),
            Some(Exit {
                code: 4,
                error: None
            })
        );
    }

    #[test]
    fn on_failure_does_not_restart_clean_exit() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            Config {
                restart: Restart::OnFailure,
                ..cfg(1)
            },
        );
        s.start(t0);
        s.on_exit(101, ExitStatus::Signal(11), t0);
        assert!(s.next_deadline().is_some(), "a crash is restarted");
        s.on_timer(s.next_deadline().unwrap());
        s.on_exit(102, ExitStatus::Code(0), t0);
        assert_eq!(
            s.exit(),
            Some(Exit {
                code: 0,
                error: None
            })
        );
    }

    #[test]
    fn delay_mode_marks_ready_on_timer() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(
            Fake::default(),
            Config {
                ready_delay: Some(ms(500)),
                ..cfg(1)
            },
        );
        s.start(t0);
        assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
        s.on_timer(t0 + ms(500));
        assert_eq!(s.children()[0].state, State::Ready);
    }

    #[test]
    fn orphans_are_ignored() {
        let (mut s, t0) = started(1);
        s.on_exit(4242, ExitStatus::Code(0), t0);
        assert_eq!(pids(&s, 1), [101]);
        assert!(s.next_deadline() == Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn exit_status_wording() {
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with status 3");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(ExitStatus::Signal(15).code(), 143);
    }
}
