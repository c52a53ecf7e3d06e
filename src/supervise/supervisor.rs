//! The supervisor's state machine: which children exist, in which generation,
//! and what happens when they exit, become ready, or time out. All of
//! relaunch's state lives here, and [`Supervisor::handle`] is its one entry
//! point: an [`Event`] in, [`Effect`]s out for the driver to carry out. It is
//! tested with a fake spawner and no clock.
//!
//! Invariants:
//! - A child is a process group (its pgid is the leader's pid). It is gone
//!   only when the group is empty, not when the leader exits: members that
//!   outlive their leader are stopped like the leader would have been, and
//!   SIGKILLed after the stop timeout.
//! - The serving generation is the one whose children answer today. A reload
//!   starts the next generation beside it; only when *all* of the new
//!   generation's workers are ready is the old one sent the stop signal.
//! - A new generation that exits before it is ready, or misses its ready
//!   deadline, is stopped; the serving generation never notices.
//! - Drain: a reload's generation that got sockets of its own (the Spawner's
//!   `open`) gets no connection until it is ready; then every new one goes
//!   to it, and the old generation is stopped only once it is idle (nothing
//!   queued, no connection open, no handshake from before the switch) or at
//!   the drain timeout. Without sockets of its own, the old generation is
//!   stopped at once, as before.
//! - One reload at a time: requests during a reload coalesce into one more
//!   reload after it. A reload is over when the new generation serves and the
//!   old one's groups are empty (or when it failed).
//! - A crash in the serving generation restarts that worker, with backoff.
//! - Every child we asked to stop gets SIGKILL after the stop timeout.
//! - `--watch`: a change starts the build (or, without `--build`, the
//!   reload) once files have been quiet for the debounce. At most one build
//!   runs: a change during a build kills its process group and the debounce
//!   starts over. A build that succeeds asks for a reload, which coalesces
//!   with one in progress like any other; one that fails changes nothing
//!   that serves. With `--build`, generation 1 waits for the first build
//!   (and starts what is on disk if it fails). Under `--watch` relaunch
//!   never gives up on its own: a crash loop or a missing program waits for
//!   the next change.
//! - On demand (`--lazy`, `--idle-stop`): while no child runs, the driver
//!   watches the listeners and a waiting connection starts a generation; a
//!   crashed child restarts as usual, it does not wait for a connection again.
//!   Only an idle stop (nothing open or waiting on the listeners for the idle
//!   time, as the driver measures it) goes back to waiting. A reload while
//!   nothing runs has nothing to reload: the next start runs the program as it
//!   is then.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::control::{self, Request, Response};
use crate::duration;

/// Changed paths remembered for the log line of a build or reload.
const CHANGED_KEPT: usize = 32;

/// How long a process group may take to empty after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// A child that fails this soon, never seen waiting on a held socket,
/// probably binds the port itself: relaunch says so, once.
pub const HINT_WITHIN: Duration = Duration::from_secs(5);
/// How long a child must serve on a port relaunch does not hold before it
/// is said: a server may open an admin port before it takes the held one.
const ELSEWHERE_GRACE: Duration = Duration::from_secs(2);
/// The pause between two probes of a generation that is not healthy yet.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe with no answer by then failed (an `exec:` command that hangs is
/// killed): a hung check must never stop the checks.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// A draining generation is not idle before this: a handshake steered to
/// its socket just before the switch completes there (loopback: at once;
/// the watch also waits for every handshake it saw at the first look).
const DRAIN_SETTLE: Duration = Duration::from_millis(200);

/// After the drain timeout, how long the old generation has to answer what
/// it holds once its connections stop reading, before it is stopped.
pub const END_GRACE: Duration = Duration::from_secs(2);
/// The longest `--canary-for`: a deadline must stay a time the clock can
/// hold.
const MAX_CANARY_FOR: Duration = Duration::from_secs(365 * 24 * 3600);
use crate::plan::options::{Health, Probe, Restart};
use crate::sockets::drain::Busy;
use crate::supervise::backoff::{self, Backoff, Next};
use crate::supervise::handover::CHECK_DEADLINE;
use crate::supervise::sources::Wants;
use crate::supervise::spawn;

pub use crate::control::ReplyId;
pub use crate::exit::ExitStatus;

/// Everything that can happen to the supervisor.
#[derive(Debug)]
pub enum Event {
    /// Start generation 1.
    Start,
    /// A child's leader was reaped; `group_alive`: other processes of its
    /// group live on.
    Exited {
        pid: i32,
        status: ExitStatus,
        group_alive: bool,
    },
    /// The group of a child whose leader exited is empty now.
    GroupGone { pgid: i32 },
    /// What sweep number `sweep` found (see [`Supervisor::sweep_wanted`]):
    /// processes (pid, command line) that escaped a child's process group
    /// (setsid) and that no running child owns, leftovers of children that
    /// ended or are being stopped (see `reaper`).
    Escaped {
        sweep: u64,
        found: Vec<(i32, String)>,
    },
    /// An escaped process is gone.
    EscapedGone { pid: i32 },
    /// The child reported through its status pipe that it could not exec.
    ExecFailed { pid: i32, error: spawn::Error },
    /// A moment from [`Supervisor::next_deadline`] has come.
    Timer,
    /// The /proc scan saw this child wait for connections on a held socket
    /// (with `--ready auto`, that makes it ready).
    Ready { pid: i32, how: String },
    /// The /proc scan cannot see whether this child waits, and why.
    Blind { pid: i32, why: String },
    /// A process of this child called listen() on a held socket (bind
    /// interception): ready if the scan cannot see it wait.
    Listened { pid: i32, how: String },
    /// The /proc scan saw this child wait on a TCP listener of its own and
    /// on none of the held sockets: what to say (see `ready::fallback`).
    Elsewhere { pid: i32, notice: String },
    /// A notify message from child `pid` (the sender already checked).
    Notify { pid: i32, notice: Notice },
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
    /// A signal to pass on to the children.
    Forward(Signal),
    /// A control socket request.
    Control { request: Request, reply: ReplyId },
    /// SIGUSR2 (no reply) or `relaunch upgrade`: re-execute relaunch from
    /// `binary` (None: the file at relaunch's own path).
    Upgrade {
        binary: Option<std::path::PathBuf>,
        reply: Option<ReplyId>,
    },
    /// The upgrade did not happen: relaunch goes on as it was.
    UpgradeFailed {
        reason: String,
        reply: Option<ReplyId>,
    },
    /// `--watch`: a file that matters changed.
    Changed { path: String },
    /// What probe `number` (see [`Spawner::probe`]) found: Ok, healthy,
    /// and how; Err, not (yet), and why.
    Probed {
        number: u64,
        result: Result<String, String>,
    },
    /// What keeps the old generation of `generation`'s reload busy (see
    /// [`Wants::drain`]).
    Drained {
        generation: u64,
        busy: Result<Busy, String>,
    },
    /// The `--build` process `pid` was reaped; `tail`: the last lines of
    /// its output.
    Built {
        pid: i32,
        status: ExitStatus,
        tail: Vec<String>,
    },
    /// A connection (or datagram) waits on a listener while no child runs.
    Connection,
    /// Listeners relaunch does not own are on a port a canary's share is
    /// steered on (see [`Wants::guard`]), and where: canary `generation`
    /// is rolled back for that reason.
    Foreign { generation: u64, why: String },
    /// The listeners measured (`--idle-stop`).
    Activity {
        /// A connection is open or waiting now.
        open: bool,
        /// Connections came and went since the last measure.
        churned: bool,
    },
}

/// What a child said through its notify socket.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Notice {
    /// `MAINPID=`, already checked to be one of the child's processes.
    pub main_pid: Option<i32>,
    pub status: Option<String>,
    pub ready: bool,
}

/// What the driver carries out.
#[derive(Debug)]
pub enum Effect {
    /// Signal a child's whole process group.
    Signal { pgid: i32, sig: Signal },
    /// Signal one escaped process.
    SignalEscaped { pid: i32, sig: Signal },
    /// Tell the service manager, if there is one.
    Tell(Tell),
    /// Answer a control client.
    Reply { to: ReplyId, response: Response },
    /// No process of this generation is left: its notify socket can go.
    Release { generation: u64 },
    /// Check the new binary, then hand everything over to it (execve).
    Upgrade {
        binary: Option<std::path::PathBuf>,
        reply: Option<ReplyId>,
    },
    /// The new binary's handshake ran past its deadline: kill it (its
    /// exit then fails the upgrade).
    EndCheck,
    /// `generation` is probed no more: what a probe of it holds (a
    /// connection, a command still running) goes.
    EndProbe { generation: u64 },
    /// A transition worth counting (for `--metrics`).
    Count(Count),
}

pub use crate::counts::{Count, ReloadResult, RestartReason};

/// Messages for systemd (sd_notify).
#[derive(Debug, Clone, PartialEq)]
pub enum Tell {
    /// `READY=1` with a status line.
    Ready(String),
    /// `RELOADING=1` with a status line.
    Reloading(String),
    Status(String),
    Stopping,
}

/// Why a probe could not start.
#[derive(Debug, Clone, PartialEq)]
pub enum NotProbed {
    /// The generation's doing (its accept queue is full): a failed probe.
    Failed(String),
    /// relaunch's own (no socket to reach it alone, a fork that failed):
    /// it says nothing of the app, and a health check counts it against
    /// no one.
    Own(String),
}

/// What the supervisor needs done at once: a fork gives the pid that names
/// the child, and the backoff's jitter.
pub trait Spawner {
    /// Forks the child of `generation`/`worker`; it is in its own process
    /// group. A failed exec is reported later, as [`Event::ExecFailed`].
    fn spawn(&mut self, generation: u64, worker: usize) -> Result<i32, spawn::Error>;
    /// Gives `generation`, about to start beside the serving one, sockets
    /// of its own that get no connection until [`Effect::Steer`], but for
    /// `probes` of relaunch's own on each (for `--ready auto`: something to
    /// accept). false: it shares the serving generation's (no drain).
    /// Its sockets get connections once [`Spawner::steer`]ed to.
    fn open(&mut self, generation: u64, probes: usize) -> bool;
    /// Every new connection goes to `generation`'s own sockets (from
    /// `open`) from now on. Err: they still go where they went.
    fn steer(&mut self, generation: u64) -> Result<(), String>;
    /// A canary: `share` (0 < share < 1) of new connections go to
    /// `generation`'s own sockets, the rest where they went, until the next
    /// [`Spawner::steer`]. Err: nothing changed.
    fn share(&mut self, generation: u64, share: f64) -> Result<(), String>;
    /// Starts probe `number` of `generation` alone (through its own
    /// sockets, which nothing else reaches before it is steered to; with
    /// none, the drain being off, through the held address if `alone`: no
    /// other generation runs); `pgids`: its children's process groups.
    /// What it finds comes back as [`Event::Probed`] with its number. Err:
    /// it could not start, and why.
    fn probe(
        &mut self,
        number: u64,
        generation: u64,
        probe: &Probe,
        pgids: &[i32],
        alone: bool,
    ) -> Result<(), NotProbed>;
    /// A number in [0, 1) for backoff jitter.
    fn jitter(&mut self) -> f64;
    /// Forks `--build` in its own process group; its exit comes back as
    /// [`Event::Built`].
    fn build(&mut self) -> Result<i32, spawn::Error>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub restart: Restart,
    pub workers: usize,
    #[serde(with = "crate::serial::signal")]
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// `--ready delay:DUR`: alive this long counts as ready.
    pub ready_delay: Option<Duration>,
    /// `--ready auto`: the scan seeing a child wait makes it ready.
    pub ready_auto: bool,
    /// `--ready http:PATH`, `tcp`, `exec:CMD`: a generation is ready when
    /// a probe of it alone passes.
    #[serde(default)]
    pub ready_probe: Option<Probe>,
    /// `--health`: checks of the serving generation.
    #[serde(default)]
    pub health: Option<Health>,
    pub ready_timeout: Duration,
    /// The hint's first remedy, about the interception of the child's own
    /// bind() (why it did not apply and what to change), when there is one.
    pub intercept_remedy: Option<String>,
    /// For `relaunch status`.
    pub listeners: Vec<control::ListenerInfo>,
    /// `--watch`: None without it.
    pub watch: Option<WatchConfig>,
    /// `--lazy`: the first generation starts at the first connection.
    pub lazy: bool,
    /// `--idle-stop`: stop the children after this long without a
    /// connection, and wait for the next one.
    pub idle_stop: Option<Duration>,
    /// `--drain-timeout`: how long an old generation may take to finish
    /// what it accepted. None: no drain (`--no-drain`, or not possible).
    #[serde(default)]
    pub drain: Option<Duration>,
    /// Why `relaunch reload --canary` cannot run here; None: it can.
    #[serde(default)]
    pub no_canary: Option<String>,
    /// `--keep-previous`: how long the generation a promotion left, once
    /// idle, is kept (frozen) for `relaunch rollback`; None: it is stopped.
    #[serde(default)]
    pub keep_previous: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WatchConfig {
    /// Files must be quiet this long before the build or reload starts.
    pub debounce: Duration,
    /// `--build` was given.
    pub build: bool,
}

/// The developer loop's state: pending changes and the build.
#[derive(Debug, Default)]
struct Dev {
    /// The build (or reload) starts then, unless more changes come first.
    due: Option<Instant>,
    /// The paths changed since the last build or reload began, the latest
    /// last (at most [`CHANGED_KEPT`]; more are only counted).
    changed: Vec<String>,
    more: usize,
    building: Option<Build>,
    last: Option<BuildResult>,
}

#[derive(Debug)]
struct Build {
    pid: i32,
    started: Instant,
}

#[derive(Debug)]
struct BuildResult {
    ok: bool,
    /// "in 1.2 s" (ok) or "exited with status 3 after 0.4 s".
    text: String,
    at: Instant,
}

/// Where the on-demand cycle is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Demand {
    /// Children run, start or restart as usual.
    Running,
    /// No child runs: the next connection starts a generation.
    Waiting,
    /// `--idle-stop` is stopping the children; then Waiting.
    IdleStopping,
}

/// How often the listeners are measured while children run with
/// `--idle-stop`: a stop comes at most this much later than the idle time.
pub fn idle_probe_interval(idle_stop: Duration) -> Duration {
    (idle_stop / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum State {
    Starting {
        #[serde(with = "crate::serial::mono::opt")]
        ready_at: Option<Instant>,
    },
    Ready,
    Stopping {
        #[serde(with = "crate::serial::mono")]
        kill_at: Instant,
        killed: bool,
    },
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Child {
    /// The leader's pid, which is also the process group's id.
    pub pid: i32,
    pub generation: u64,
    pub worker: usize,
    #[serde(with = "crate::serial::mono")]
    pub started: Instant,
    pub state: State,
    /// When it became ready: a crash soon after is a crash loop (see backoff).
    #[serde(with = "crate::serial::mono::opt")]
    pub ready_since: Option<Instant>,
    /// `MAINPID=` from the child, when it names another process.
    pub main_pid: Option<i32>,
    /// The last `STATUS=` it sent.
    pub status_text: Option<String>,
    /// `--ready auto` cannot see whether it waits for connections: the
    /// ready timeout then counts as ready instead of as a failure.
    pub blind: bool,
    /// Not seen ready, but taken as serving at the first generation's
    /// ready timeout (nothing else could serve).
    pub taken_as_ready: bool,
    /// The scan saw it wait on a held socket (in any `--ready` mode).
    pub seen: bool,
    /// It called listen() on a held socket: how, for the log. With `blind`,
    /// that counts as ready (the scan, when it sees, waits for accept).
    pub listened: Option<String>,
    /// Since when the scan sees it serve on a port relaunch does not hold,
    /// and what to say about it.
    #[serde(skip)]
    pub elsewhere: Option<(Instant, String)>,
    /// The leader exited like this, and its group lives on.
    pub exited: Option<ExitStatus>,
    /// The exec failed; its exit follows.
    exec_error: Option<spawn::Error>,
}

impl Child {
    /// The leader still runs.
    pub fn alive(&self) -> bool {
        self.exited.is_none()
    }
}

/// One worker position of the serving generation, across its restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slot {
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    backoff: Backoff,
    #[serde(with = "crate::serial::mono::opt")]
    restart_at: Option<Instant>,
}

/// A process that escaped a child's group, being ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Escaped {
    pid: i32,
    #[serde(with = "crate::serial::mono")]
    kill_at: Instant,
    killed: bool,
}

/// How a worker's process ended, as the restart policy weighs it.
struct Ended {
    /// None: it never started.
    pid: Option<i32>,
    status: ExitStatus,
    lived: Duration,
    /// How long it had been ready, if it was.
    ready_for: Option<Duration>,
}

impl Ended {
    /// The program could not be started: as if it exited 127 at once.
    fn never_started() -> Ended {
        Ended {
            pid: None,
            status: ExitStatus::Code(127),
            lived: Duration::ZERO,
            ready_for: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Phase {
    /// The new generation is starting beside the serving one.
    Starting {
        #[serde(with = "crate::serial::mono")]
        deadline: Instant,
    },
    /// The new generation takes every new connection; the old one finishes
    /// what it accepted and is stopped once idle, or at `until`.
    Emptying {
        #[serde(with = "crate::serial::mono")]
        until: Instant,
        /// Not taken as idle before this (see [`DRAIN_SETTLE`]).
        #[serde(with = "crate::serial::mono")]
        settle: Instant,
        /// The drain timeout passed: the old generation's connections stop
        /// reading, and `until` is the end of [`END_GRACE`].
        #[serde(default)]
        ending: bool,
    },
    /// The new generation serves as a canary, with its share of new
    /// connections, beside the serving one; promoted at `until`
    /// (`--canary-for`), else by `relaunch promote`.
    Canary {
        #[serde(with = "crate::serial::mono::opt")]
        until: Option<Instant>,
    },
    /// The new generation serves; the old one is stopping.
    Draining,
}

/// `relaunch reload --canary`: the share of new connections the new
/// generation gets once ready, and for how long before it is promoted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// 0 < share < 1.
    pub share: f64,
    pub promote_after: Option<Duration>,
}

impl Canary {
    /// "10%": as the user wrote it, near enough.
    pub fn percent(&self) -> String {
        format!("{}%", (self.share * 1e6).round() / 1e4)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Reload {
    generation: u64,
    phase: Phase,
    /// It has sockets of its own (see [`Spawner::open`]).
    #[serde(default)]
    own: bool,
    /// It starts as a canary.
    #[serde(default)]
    canary: Option<Canary>,
}

/// `--keep-previous`: the generation a promotion left, idle and frozen
/// (SIGSTOP), kept for `relaunch rollback` until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Previous {
    generation: u64,
    #[serde(with = "crate::serial::mono")]
    until: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i32,
    /// Printed as an error when relaunch exits.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReload {
    pub generation: u64,
    pub ok: bool,
    pub message: String,
    #[serde(with = "crate::serial::mono")]
    pub at: Instant,
}

/// The part of the supervisor that outlives an upgrade's exec: the handover
/// carries exactly this struct, so a field added here is carried, and one
/// that must not be belongs in [`Supervisor`] beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    cfg: Config,
    children: Vec<Child>,
    serving: u64,
    slots: Vec<Slot>,
    /// The serving generation has been ready at least once.
    announced: bool,
    /// Some generation has been ready once: a program that cannot be
    /// executed after that is a quick failure, not a mistake to end on.
    served: bool,
    /// The "binds the port itself" hint was given (once per relaunch).
    hinted: bool,
    #[serde(with = "crate::serial::mono::opt")]
    first_deadline: Option<Instant>,
    /// The generation still to become ready for the first time, and when it
    /// was started (for its time to ready).
    #[serde(default, with = "crate::serial::mono::opt_pair")]
    generation_started: Option<(u64, Instant)>,
    next_generation: u64,
    reload: Option<Reload>,
    reload_queued: bool,
    /// systemd heard RELOADING=1 and waits for the READY=1 that ends it.
    reloading: bool,
    /// Running, stopping, or done (then relaunch exits).
    #[serde(flatten)]
    life: Life,
    /// Exit code once nothing is left, decided by what ended us.
    exit_code: i32,
    exit_error: Option<String>,
    last_reload: Option<LastReload>,
    /// The reload's canary is being rolled back, and why: its generation
    /// drains and stops, and the serving one takes everything again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rolled_back: Option<String>,
    /// `--keep-previous`: the generation kept for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Previous>,
}

/// What relaunch is doing, in order of precedence (see `doing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    Stopping,
    WaitingFirst,
    Waiting,
    IdleStopping,
    /// A canary serves its share beside the serving generation.
    Canary,
    Reloading,
    BackingOff,
    Starting,
    Serving,
}

impl Doing {
    pub fn name(self) -> &'static str {
        match self {
            Doing::Stopping => "stopping",
            Doing::WaitingFirst => "waiting for the first connection",
            Doing::Waiting => "waiting for a connection",
            Doing::IdleStopping => "stopping when idle",
            Doing::Canary => "serving with a canary",
            Doing::Reloading => "reloading",
            Doing::BackingOff => "backing off",
            Doing::Starting => "starting",
            Doing::Serving => "serving",
        }
    }
}

/// Where relaunch is in its life. Running ends in Stopping (asked to stop,
/// or a failure that ends relaunch) or, when the restart policy leaves
/// nothing to run, straight in Done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Its children are being stopped.
    Stopping,
    /// Nothing is left to supervise: relaunch exits.
    Done {
        stopped: bool,
    },
}

/// In the handover's JSON a life is two flags, `stopping` and `done`, as
/// images before this enum wrote it.
impl Serialize for Life {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (stopping, done) = match *self {
            Life::Running => (false, false),
            Life::Stopping => (true, false),
            Life::Done { stopped } => (stopped, true),
        };
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("stopping", &stopping)?;
        m.serialize_entry("done", &done)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Life {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Life, D::Error> {
        #[derive(Deserialize)]
        struct Flags {
            stopping: bool,
            done: bool,
        }
        let f = Flags::deserialize(d)?;
        Ok(match (f.stopping, f.done) {
            (_, true) => Life::Done {
                stopped: f.stopping,
            },
            (true, false) => Life::Stopping,
            (false, false) => Life::Running,
        })
    }
}

impl Life {
    /// Stopping, or done after stopping.
    fn stopping(self) -> bool {
        matches!(self, Life::Stopping | Life::Done { stopped: true })
    }
    fn done(self) -> bool {
        matches!(self, Life::Done { .. })
    }
}

pub struct Supervisor {
    kept: Kept,
    /// Escaped leftovers being stopped: a reload is done, and relaunch
    /// exits, only once they are gone too. (Their pidfds are the driver's
    /// and are not handed over: the next sweep finds them again.)
    escaped: Vec<Escaped>,
    /// Sweeps for escaped processes asked for (a child ended or is being
    /// stopped, an orphan was reaped) and done: until the last one asked is
    /// done, what escaped may be unknown, so no reload is done yet.
    sweeps_asked: u64,
    sweeps_done: u64,
    demand: Demand,
    /// Since when nothing has been open or waiting on the listeners: from the
    /// first idle measure, or since no child runs. None while busy.
    idle_since: Option<Instant>,
    /// `relaunch reload` clients, by the generation whose outcome answers them.
    waiters: Vec<(u64, ReplyId)>,
    /// The generation whose serving on another port was said last.
    elsewhere_said: Option<u64>,
    /// `--watch`; None without it.
    dev: Option<Dev>,
    /// The new binary's handshake, while it runs (an exec that works never
    /// comes back; one that fails ends in [`Event::UpgradeFailed`]).
    upgrade: Option<UpgradeCheck>,
    /// The old generation's drain, as last measured.
    drain: DrainWatch,
    /// `--ready http:`, `tcp`, `exec:`: the generations being probed, each
    /// by its own probe: a reload's while it starts, and the serving one
    /// (its start, a restarted worker's, or its health). Not carried by an
    /// upgrade: the next image probes afresh.
    probing: Vec<Probing>,
    /// The number of the last probe started: an answer is taken only from
    /// the probe that runs, never from one ended before it.
    probes_started: u64,
    /// Effects of the event being handled.
    out: Vec<Effect>,
}

/// What the core knows of a drain in progress (not carried by an upgrade:
/// the next image measures afresh).
#[derive(Debug, Default, Clone, Copy)]
struct DrainWatch {
    last: Option<Busy>,
    /// A measure failed (said once).
    failed: bool,
}

/// The probes of one generation: for its readiness, or its health
/// (`--health`, once it serves).
#[derive(Debug, Clone)]
struct Probing {
    generation: u64,
    health: bool,
    /// Health checks failed in a row.
    failures: u32,
    /// The next probe starts then; None while one runs.
    due: Option<Instant>,
    /// The number of the probe that runs (or ran last).
    number: u64,
    /// When the probe that runs started.
    started: Option<Instant>,
    /// What the last probe found, for the log and a failed reload.
    last: Option<String>,
    /// A health check of it passed (a canary is promoted only then).
    passed: bool,
}

#[derive(Debug, Clone, Copy)]
struct UpgradeCheck {
    /// It must have answered by then.
    deadline: Instant,
    /// It ran past the deadline and was told to end.
    ended: bool,
}

impl Supervisor {
    pub fn new(cfg: Config) -> Self {
        let dev = cfg.watch.map(|_| Dev::default());
        Supervisor::with(
            Kept {
                slots: vec![Slot::default(); cfg.workers],
                cfg,
                children: Vec::new(),
                serving: 0,
                announced: false,
                served: false,
                hinted: false,
                first_deadline: None,
                generation_started: None,
                next_generation: 1,
                reload: None,
                reload_queued: false,
                reloading: false,
                life: Life::Running,
                exit_code: 0,
                exit_error: None,
                last_reload: None,
                rolled_back: None,
                previous: None,
            },
            dev,
            Vec::new(),
        )
    }

    /// An upgrade is refused under --watch, --lazy and --idle-stop (see
    /// `upgrade`), so what is not kept starts as `new` makes it.
    fn with(kept: Kept, dev: Option<Dev>, waiters: Vec<(u64, ReplyId)>) -> Self {
        Supervisor {
            kept,
            escaped: Vec::new(),
            sweeps_asked: 0,
            sweeps_done: 0,
            demand: Demand::Running,
            idle_since: None,
            waiters,
            elsewhere_said: None,
            dev,
            upgrade: None,
            drain: DrainWatch::default(),
            probing: Vec::new(),
            probes_started: 0,
            out: Vec::new(),
        }
    }

    /// The one entry point: what `event` changes, and what must be done now.
    pub fn handle(&mut self, event: Event, now: Instant, os: &mut impl Spawner) -> Vec<Effect> {
        match event {
            Event::Start => self.begin(os, now),
            Event::Exited {
                pid,
                status,
                group_alive,
            } => self.on_exit(os, pid, status, group_alive, now),
            Event::GroupGone { pgid } => self.group_gone(os, pgid, now),
            Event::Escaped { sweep, found } => {
                self.sweeps_done = self.sweeps_done.max(sweep);
                self.on_escaped(found, now);
                self.settle(os, now);
            }
            Event::EscapedGone { pid } => {
                self.escaped.retain(|e| e.pid != pid);
                self.settle(os, now);
            }
            Event::ExecFailed { pid, error } => {
                if let Some(c) = self.child_mut(pid) {
                    c.exec_error = Some(error);
                }
            }
            Event::Drained { generation, busy } => {
                self.on_drained(generation, busy, now);
                // An idle old generation kept for a rollback ends the reload.
                self.settle(os, now);
            }
            Event::Probed { number, result } => self.on_probed(os, number, result, now),
            Event::Timer => {
                self.end_overdue_check(now);
                self.on_timer(os, now);
            }
            Event::Ready { pid, how } => self.seen_waiting(os, pid, &how, now),
            Event::Blind { pid, why } => self.mark_blind(os, pid, &why, now),
            Event::Listened { pid, how } => self.on_listened(os, pid, how, now),
            Event::Elsewhere { pid, notice } => self.on_elsewhere(pid, notice, now),
            Event::Notify { pid, notice } => self.on_notice(os, pid, notice, now),
            Event::Reload => {
                if let Err(e) = self.request_reload(os, None, now) {
                    warn!("reload refused: {e}");
                }
            }
            Event::Stop => self.stop(os, now),
            Event::Forward(sig) => self.forward(sig),
            Event::Control { request, reply } => self.on_control(os, request, reply, now),
            Event::Upgrade { binary, reply } => self.upgrade(binary, reply, now),
            Event::UpgradeFailed { reason, reply } => {
                self.upgrade = None;
                warn!("upgrade refused: {reason}; this relaunch goes on unchanged");
                if let Some(to) = reply {
                    self.out.push(Effect::Reply {
                        to,
                        response: Response::UpgradeFailed { reason },
                    });
                }
                self.tell_serving();
            }
            Event::Changed { path } => self.on_change(path, now),
            Event::Built { pid, status, tail } => self.on_built(os, pid, status, &tail, now),
            Event::Connection => self.on_connection(os, now),
            Event::Foreign { generation, why } => {
                if self.canary().is_some_and(|(g, ..)| g == generation) {
                    self.rollback(os, why, now);
                }
            }
            Event::Activity { open, churned } => self.on_activity(os, open, churned, now),
        }
        self.probe_due(os, now);
        if self.kept.life.done() {
            for (_, to) in std::mem::take(&mut self.waiters) {
                self.out.push(Effect::Reply {
                    to,
                    response: Response::Error {
                        message: "relaunch stopped before the reload could run".into(),
                    },
                });
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Set once relaunch should exit: nothing is left to supervise.
    pub fn exit(&self) -> Option<Exit> {
        self.kept.life.done().then(|| Exit {
            code: self.kept.exit_code,
            error: self.kept.exit_error.clone(),
        })
    }

    /// The serving generation (0 before the first starts).
    pub fn serving(&self) -> u64 {
        self.kept.serving
    }

    pub fn children(&self) -> &[Child] {
        &self.kept.children
    }

    /// Children the /proc scan should look at: (pid, roots to scan). Those
    /// still starting: for `--ready auto`, and in the other modes, for the
    /// hint, in their first [`HINT_WITHIN`] until it was given. Ready or
    /// idle, none, so the scan costs nothing under load and no timer runs.
    pub fn to_scan(&self, now: Instant) -> impl Iterator<Item = (i32, Vec<i32>)> + '_ {
        self.kept
            .children
            .iter()
            .filter(move |c| {
                let young =
                    !self.kept.hinted && now.saturating_duration_since(c.started) < HINT_WITHIN;
                c.alive()
                    && !c.seen
                    && matches!(c.state, State::Starting { .. })
                    && (self.kept.cfg.ready_auto || young)
            })
            .map(|c| (c.pid, std::iter::once(c.pid).chain(c.main_pid).collect()))
    }

    /// Children whose leader runs and that are not being stopped: what
    /// escaped their process groups is theirs to keep (see `reaper`).
    pub fn owners(&self) -> Vec<i32> {
        self.kept
            .children
            .iter()
            .filter(|c| c.alive() && !matches!(c.state, State::Stopping { .. }))
            .map(|c| c.pid)
            .collect()
    }

    /// The number of the sweep for escaped processes to run next, when one
    /// is due.
    pub fn sweep_wanted(&self) -> Option<u64> {
        (self.sweeps_asked > self.sweeps_done).then_some(self.sweeps_asked)
    }

    /// Escaped processes being ended: the driver tells us when each is gone.
    pub fn escaped(&self) -> impl Iterator<Item = i32> + '_ {
        self.escaped.iter().map(|e| e.pid)
    }

    /// Process groups whose leader exited: the driver tells us when each is empty.
    pub fn lingering(&self) -> impl Iterator<Item = i32> + '_ {
        self.kept
            .children
            .iter()
            .filter(|c| !c.alive())
            .map(|c| c.pid)
    }

    /// Whether no child runs (or the ones that do are being stopped because
    /// they were idle): the driver then watches the listeners for a connection.
    pub fn waiting(&self) -> bool {
        !self.kept.life.stopping() && self.demand != Demand::Running
    }

    /// When the idle time is over if nothing happens meanwhile: the driver
    /// measures then, besides every [`Supervisor::idle_probe_every`].
    pub fn idle_stop_due(&self) -> Option<Instant> {
        let limit = self.kept.cfg.idle_stop?;
        self.idle_since
            .filter(|_| self.demand == Demand::Running && !self.kept.life.stopping())
            .map(|since| since + limit)
    }

    /// How often to measure the listeners' activity: only while children
    /// run with `--idle-stop`.
    pub fn idle_probe_every(&self) -> Option<Duration> {
        let limit = self.kept.cfg.idle_stop?;
        (self.demand == Demand::Running
            && !self.kept.life.stopping()
            && !self.kept.children.is_empty())
        .then(|| idle_probe_interval(limit))
    }

    /// What relaunch is doing, as `status` says it.
    pub fn doing(&self) -> Doing {
        if self.kept.life.stopping() {
            Doing::Stopping
        } else if self.demand == Demand::Waiting && self.kept.serving == 0 {
            Doing::WaitingFirst
        } else if self.demand == Demand::Waiting {
            Doing::Waiting
        } else if self.demand == Demand::IdleStopping {
            Doing::IdleStopping
        } else if self.canary().is_some() {
            Doing::Canary
        } else if self.kept.reload.is_some() {
            Doing::Reloading
        } else if self.kept.slots.iter().any(|s| s.restart_at.is_some()) {
            Doing::BackingOff
        } else if !self.kept.announced {
            Doing::Starting
        } else {
            Doing::Serving
        }
    }

    /// [`Supervisor::doing`]'s name.
    pub fn state(&self) -> &'static str {
        self.doing().name()
    }

    /// Whether a ready generation serves (`status --check`): it was
    /// announced, a child of it is ready (or was taken as serving at the
    /// first --ready-timeout) and runs, and relaunch is not stopping. Under
    /// --lazy, waiting for a connection and starting on one count too: a
    /// connection is what starts the app, so a probe must not turn it away.
    pub fn ready(&self) -> bool {
        if self.kept.life.stopping() {
            return false;
        }
        if self.demand != Demand::Running
            || (self.kept.cfg.lazy && !self.kept.announced && self.kept.reload.is_none())
        {
            return true;
        }
        self.kept.announced
            && self.kept.children.iter().any(|c| {
                c.generation == self.kept.serving
                    && c.alive()
                    && (c.state == State::Ready
                        || (c.taken_as_ready && matches!(c.state, State::Starting { .. })))
            })
    }

    /// What the runtime's sources must watch for this turn.
    pub fn wants(&self, now: Instant) -> Wants {
        Wants {
            deadline: self.next_deadline(),
            scan: self.to_scan(now).next().is_some(),
            group_check: self.lingering().next().is_some() || !self.escaped.is_empty(),
            listeners: self.waiting(),
            idle_probe: self.idle_probe_every(),
            idle_stop_due: self.idle_stop_due(),
            sweep: self.sweep_wanted(),
            drain: self.drain_wanted(),
            guard: self.canary().map(|(generation, ..)| generation),
        }
    }

    /// While an old generation drains: the reload's generation, and the
    /// old one's process groups.
    fn drain_wanted(&self) -> Option<(u64, Vec<i32>, bool)> {
        let (generation, _, _, ending) = self.emptying()?;
        Some((generation, self.leaving().map(|c| c.pid).collect(), ending))
    }

    /// The children a reload leaves behind: the older generations', or a
    /// canary's that is rolled back.
    fn leaving(&self) -> impl Iterator<Item = &Child> {
        let reload = self.kept.reload;
        let back = self.kept.rolled_back.is_some();
        let previous = self.kept.previous.map(|p| p.generation);
        self.kept.children.iter().filter(move |c| match reload {
            Some(r) if back => c.generation == r.generation,
            Some(r) => c.generation < r.generation && Some(c.generation) != previous,
            None => false,
        })
    }

    /// The reload whose old generation (or rolled-back canary) drains: the
    /// generation that serves meanwhile, the drain timeout (or the end of
    /// the grace after it), the settle time, and whether the timeout passed.
    fn emptying(&self) -> Option<(u64, Instant, Instant, bool)> {
        let back = self.kept.rolled_back.is_some();
        match self.kept.reload? {
            Reload {
                generation,
                phase:
                    Phase::Emptying {
                        until,
                        settle,
                        ending,
                    },
                ..
            } => Some((
                if back { self.kept.serving } else { generation },
                until,
                settle,
                ending,
            )),
            _ => None,
        }
    }

    /// The children of generations before `generation`.
    fn older(&self, generation: u64) -> impl Iterator<Item = &Child> {
        self.kept
            .children
            .iter()
            .filter(move |c| c.generation < generation)
    }

    fn older_pids(&self, generation: u64) -> Vec<i32> {
        self.older(generation).map(|c| c.pid).collect()
    }

    /// The earliest moment an [`Event::Timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let children = self.kept.children.iter().filter_map(|c| match c.state {
            State::Starting { ready_at } => ready_at,
            State::Stopping {
                kill_at,
                killed: false,
            } => Some(kill_at),
            State::Stopping {
                kill_at,
                killed: true,
            } => Some(kill_at + KILL_GRACE),
            _ => None,
        });
        let escaped = self.escaped.iter().map(|e| match e.killed {
            false => e.kill_at,
            true => e.kill_at + KILL_GRACE,
        });
        let restarts = self.kept.slots.iter().filter_map(|s| s.restart_at);
        let reload = self.kept.reload.and_then(|r| match r.phase {
            Phase::Starting { deadline } => Some(deadline),
            Phase::Emptying { until, .. } => Some(until),
            Phase::Canary { until } => until,
            Phase::Draining => None,
        });
        children
            .chain(escaped)
            .chain(restarts)
            .chain(reload)
            .chain(self.kept.previous.map(|p| p.until))
            .chain(self.kept.first_deadline.filter(|_| !self.kept.announced))
            .chain(self.dev.as_ref().and_then(|d| d.due))
            .chain(self.upgrade.filter(|u| !u.ended).map(|u| u.deadline))
            // The next probe, or the limit of the one that runs.
            .chain(
                self.probing
                    .iter()
                    .filter_map(|p| p.due.or(p.started.map(|t| t + PROBE_LIMIT))),
            )
            .min()
    }

    /// What `relaunch status` shows; the driver adds the members of
    /// lingering groups.
    pub fn status(&self, now: Instant) -> control::Status {
        let children = self
            .kept
            .children
            .iter()
            .map(|c| {
                let slot = (c.generation == self.kept.serving).then(|| &self.kept.slots[c.worker]);
                control::ChildInfo {
                    pid: c.pid,
                    generation: c.generation,
                    worker: c.worker,
                    state: if c.alive() {
                        c.state.name().into()
                    } else {
                        "lingering".into()
                    },
                    uptime_secs: now.saturating_duration_since(c.started).as_secs_f64(),
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: c
                        .exited
                        .or(slot.and_then(|s| s.last_exit))
                        .map(|e| e.to_string()),
                    lingering: Vec::new(),
                    elsewhere: Vec::new(),
                }
            })
            .collect();
        let status_text = self
            .kept
            .children
            .iter()
            .filter(|c| c.generation == self.kept.serving)
            .find_map(|c| c.status_text.clone());
        control::Status {
            pid: std::process::id(),
            version: crate::version::VERSION.into(),
            build_id: crate::version::build_id().map(str::to_string),
            generation: self.kept.serving,
            state: self.state().into(),
            ready: self.ready(),
            status_text,
            listeners: self.kept.cfg.listeners.clone(),
            children,
            last_reload: self.kept.last_reload.as_ref().map(|r| control::ReloadInfo {
                generation: r.generation,
                ok: r.ok,
                message: r.message.clone(),
                seconds_ago: now.saturating_duration_since(r.at).as_secs_f64(),
            }),
            idle_secs: self
                .idle_since
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            escaped: self.escaped().collect(),
            watch: self.watch_status(now),
            draining: self.draining(now),
            probe: self.probe_status(),
            canary: self
                .canary()
                .map(|(generation, c, until)| control::CanaryInfo {
                    generation,
                    share: c.share,
                    beside: self.kept.serving,
                    promote_in_secs: until.map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    open: None,
                    beside_open: None,
                }),
            kept: self.kept.previous.map(|p| control::KeptInfo {
                generation: p.generation,
                pids: self.alive_pids(p.generation),
                ends_in_secs: p.until.saturating_duration_since(now).as_secs_f64(),
            }),
        }
    }

    /// What `status` says of the probes under way.
    fn probe_status(&self) -> Option<String> {
        let said: Vec<String> = self
            .probing
            .iter()
            .filter_map(|p| {
                let (flag, probe) = match (p.health, &self.kept.cfg.health) {
                    (true, Some(h)) => ("--health", &h.probe),
                    _ => ("--ready", self.kept.cfg.ready_probe.as_ref()?),
                };
                let last = p.last.as_deref().unwrap_or("no probe has ended yet");
                let failures = match p.failures {
                    0 => String::new(),
                    n => format!(" ({n} failure(s) in a row)"),
                };
                Some(format!(
                    "generation {}, {flag} {probe}: {last}{failures}",
                    p.generation
                ))
            })
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
    }

    fn draining(&self, now: Instant) -> Option<control::DrainInfo> {
        let (_, until, ..) = self.emptying()?;
        let old = self.leaving().map(|c| c.generation).max()?;
        let b = self.drain.last.unwrap_or_default();
        Some(control::DrainInfo {
            generation: old,
            open: b.open,
            queued: b.queued,
            handshakes: b.handshakes,
            left_secs: until.saturating_duration_since(now).as_secs_f64(),
            measured: self.drain.last.is_some(),
        })
    }

    /// The first build if there is one, else generation 1.
    fn begin(&mut self, os: &mut impl Spawner, now: Instant) {
        if self.kept.cfg.watch.is_some_and(|w| w.build) {
            self.start_build(os, "first build", now);
        } else {
            self.start(os, now);
        }
    }

    /// Starts generation 1, or with `--lazy` waits for a connection first.
    fn start(&mut self, os: &mut impl Spawner, now: Instant) {
        if self.kept.cfg.lazy {
            info!("--lazy: waiting for the first connection; it starts generation 1");
            self.wait_for_connection(now);
        } else {
            self.start_generation(os, now);
        }
    }

    /// No child runs: the driver watches the listeners from now on.
    fn wait_for_connection(&mut self, now: Instant) {
        self.demand = Demand::Waiting;
        self.idle_since.get_or_insert(now);
        // The sockets are ready: connections wait in their backlog.
        self.tell(Tell::Ready(self.state().into()));
    }

    /// Starts the next generation when nothing serves. Failing to start the
    /// very first one ends relaunch at once; after a generation has served,
    /// it is a quick failure with backoff, as for a restart.
    fn start_generation(&mut self, os: &mut impl Spawner, now: Instant) {
        self.demand = Demand::Running;
        self.idle_since = None;
        self.kept.serving = self.take_generation();
        self.kept.generation_started = Some((self.kept.serving, now));
        self.kept.announced = false;
        self.kept.first_deadline = Some(now + self.kept.cfg.ready_timeout);
        self.kept.slots = vec![Slot::default(); self.kept.cfg.workers];
        for worker in 0..self.kept.cfg.workers {
            if let Err(e) = self.spawn(os, self.kept.serving, worker, now) {
                if !self.kept.served {
                    self.fail_to_exec(os, e, now);
                    return;
                }
                error!(generation = self.kept.serving, worker, "{e}");
                self.after_exit(os, worker, Ended::never_started(), now);
            }
        }
        // Nothing may have started and nothing may be due to restart.
        self.settle(os, now);
    }

    /// A connection waits and no child runs (or the running ones are being
    /// stopped for idleness and may not take it): start a generation.
    fn on_connection(&mut self, os: &mut impl Spawner, now: Instant) {
        if !self.waiting() {
            return;
        }
        let line = format!(
            "a connection is waiting: starting generation {}",
            self.kept.next_generation
        );
        info!("{line}");
        self.tell(Tell::Status(line));
        self.start_generation(os, now);
    }

    /// `--idle-stop`: what the listeners showed at `now`.
    fn on_activity(&mut self, os: &mut impl Spawner, open: bool, churned: bool, now: Instant) {
        let Some(limit) = self.kept.cfg.idle_stop else {
            return;
        };
        if self.demand != Demand::Running || self.kept.life.stopping() {
            return;
        }
        // Starting, reloading and backing off are not idle, whatever the sockets show.
        if open || self.doing() != Doing::Serving {
            self.idle_since = None;
            return;
        }
        // What came and went was open after the last measure: idle from now.
        if churned {
            self.idle_since = Some(now);
        }
        let since = *self.idle_since.get_or_insert(now);
        if now.saturating_duration_since(since) < limit {
            return;
        }
        let generation = self.kept.serving;
        info!(
            generation,
            "no connection for {}: stopping generation {generation}; the next connection starts it again",
            duration::human(limit)
        );
        self.tell(Tell::Status(format!(
            "idle: stopping generation {generation}"
        )));
        self.demand = Demand::IdleStopping;
        let pids: Vec<i32> = self.kept.children.iter().map(|c| c.pid).collect();
        for pid in pids {
            self.stop_child(pid, now);
        }
        self.settle(os, now);
    }

    fn child_mut(&mut self, pid: i32) -> Option<&mut Child> {
        self.kept
            .children
            .iter_mut()
            .find(|c| c.pid == pid && c.alive())
    }

    fn signal(&mut self, pgid: i32, sig: Signal) {
        self.out.push(Effect::Signal { pgid, sig });
    }

    fn tell(&mut self, t: Tell) {
        self.out.push(Effect::Tell(t));
    }

    fn count(&mut self, c: Count) {
        self.out.push(Effect::Count(c));
    }

    /// Every worker of `generation` is ready: how long that took, counted
    /// once per generation.
    fn generation_ready(&mut self, generation: u64, now: Instant) {
        if let Some((g, since)) = self.kept.generation_started
            && g == generation
        {
            self.kept.generation_started = None;
            self.count(Count::Ready(now.saturating_duration_since(since)));
        }
    }

    /// The new binary's handshake did not answer in time: it is ended, and
    /// the upgrade fails when it exits.
    fn end_overdue_check(&mut self, now: Instant) {
        if let Some(u) = &mut self.upgrade
            && !u.ended
            && now >= u.deadline
        {
            u.ended = true;
            warn!(
                "the new binary's handshake did not answer within {} s; killing it",
                CHECK_DEADLINE.as_secs()
            );
            self.out.push(Effect::EndCheck);
        }
    }

    /// Whatever was due by `now`, in order: children's ready delays and
    /// kills, leftovers, the dev loop, a reload's and the first
    /// generation's ready timeouts, restarts.
    fn on_timer(&mut self, os: &mut impl Spawner, now: Instant) {
        self.children_due(os, now);
        self.give_up_on_unkillable(os, now);
        self.end_escaped(os, now);
        if let Some(dev) = &mut self.dev
            && dev.due.is_some_and(|t| t <= now)
        {
            dev.due = None;
            self.changes_settled(os, now);
        }
        self.reload_overdue(os, now);
        self.canary_due(os, now);
        self.drain_due(now);
        self.previous_due(now);
        self.first_generation_overdue(now);
        self.restarts_due(os, now);
    }

    /// Children alive for the ready delay are ready; those that did not
    /// stop in time get SIGKILL.
    fn children_due(&mut self, os: &mut impl Spawner, now: Instant) {
        for i in 0..self.kept.children.len() {
            let (pid, generation, state) = (
                self.kept.children[i].pid,
                self.kept.children[i].generation,
                self.kept.children[i].state,
            );
            match state {
                State::Starting { ready_at: Some(t) } if t <= now => {
                    self.mark_ready(os, pid, "alive for the ready delay", now)
                }
                State::Stopping {
                    kill_at,
                    killed: false,
                } if kill_at <= now => {
                    let waited = duration::human(self.kept.cfg.stop_timeout);
                    warn!(
                        pid,
                        generation,
                        "did not stop within {waited}; sending SIGKILL to its process group"
                    );
                    self.signal(pid, Signal::SIGKILL);
                    self.kept.children[i].state = State::Stopping {
                        kill_at,
                        killed: true,
                    };
                }
                _ => {}
            }
        }
    }

    /// The new generation of a reload was not ready by its deadline: the
    /// reload fails, unless nothing could be seen (then the timeout is the
    /// readiness signal, as documented for `auto`).
    fn reload_overdue(&mut self, os: &mut impl Spawner, now: Instant) {
        let Some(Reload {
            generation,
            phase: Phase::Starting { deadline },
            ..
        }) = self.kept.reload
        else {
            return;
        };
        if deadline > now {
            return;
        }
        let waited = duration::human(self.kept.cfg.ready_timeout);
        let unseen: Vec<(i32, bool)> = self
            .kept
            .children
            .iter()
            .filter(|c| c.generation == generation && matches!(c.state, State::Starting { .. }))
            .map(|c| (c.pid, c.blind))
            .collect();
        if unseen.iter().all(|&(_, blind)| blind) {
            for (pid, _) in unseen {
                self.mark_ready(
                    os,
                    pid,
                    &format!("no sign seen within {waited}, taken as ready"),
                    now,
                );
            }
        } else {
            let elsewhere = self
                .serving_elsewhere(generation)
                .is_some_and(|pid| self.say_elsewhere(pid));
            let reason = if elsewhere {
                format!(
                    "generation {generation} was not ready within {waited}: it serves on a \
                     port relaunch does not hold (said above)"
                )
            } else if let Some(said) = self.probe_said(generation) {
                format!("generation {generation} was not ready within {waited}: {said}")
            } else {
                format!("generation {generation} was not ready within {waited}")
            };
            self.fail_reload(os, ReloadResult::NotReady, reason, now);
        }
    }

    /// The first generation was not ready in time: nothing else can serve,
    /// so it is taken as serving, with a warning.
    fn first_generation_overdue(&mut self, now: Instant) {
        if self.kept.announced || self.kept.first_deadline.is_none_or(|d| d > now) {
            return;
        }
        self.kept.first_deadline = None;
        let elsewhere = self
            .serving_elsewhere(self.kept.serving)
            .is_some_and(|pid| self.say_elsewhere(pid));
        if elsewhere {
            warn!(
                generation = self.kept.serving,
                "not ready within {}: it serves on a port relaunch does not hold (said \
                 above); treating it as serving anyway (nothing else can serve)",
                duration::human(self.kept.cfg.ready_timeout)
            );
        } else if let Some(said) = self.probe_said(self.kept.serving) {
            warn!(
                generation = self.kept.serving,
                "not healthy within {} ({said}); treating it as serving anyway (nothing else \
                 can serve), and probing it on until it is",
                duration::human(self.kept.cfg.ready_timeout)
            );
        } else {
            warn!(
                generation = self.kept.serving,
                "not ready within {}; treating it as serving anyway (nothing else can serve). \
                 If the app is fine, use --ready delay:DURATION, or send READY=1 and use --ready notify",
                duration::human(self.kept.cfg.ready_timeout)
            );
        }
        let serving = self.kept.serving;
        for c in &mut self.kept.children {
            if c.generation == serving && matches!(c.state, State::Starting { .. }) {
                c.taken_as_ready = true;
            }
        }
        self.announce(now);
    }

    /// Workers whose backoff is over start again.
    fn restarts_due(&mut self, os: &mut impl Spawner, now: Instant) {
        for worker in 0..self.kept.slots.len() {
            if self.kept.slots[worker].restart_at.is_some_and(|t| t <= now)
                && !self.kept.life.stopping()
            {
                self.kept.slots[worker].restart_at = None;
                self.kept.slots[worker].restarts += 1;
                if let Err(e) = self.spawn(os, self.kept.serving, worker, now) {
                    if !self.others_serve(None) {
                        self.fail_to_exec(os, e, now);
                        return;
                    }
                    // Out of fds or processes while other workers serve: try again later.
                    error!(generation = self.kept.serving, worker, "{e}");
                    self.after_exit(os, worker, Ended::never_started(), now);
                }
            }
        }
    }

    /// Whether a serving child other than `except` still runs.
    fn others_serve(&self, except: Option<i32>) -> bool {
        self.kept
            .children
            .iter()
            .any(|c| c.generation == self.kept.serving && c.alive() && Some(c.pid) != except)
    }

    /// A leader was reaped. Pids that are not ours (orphans we reaped as a
    /// subreaper) are ignored.
    fn on_exit(
        &mut self,
        os: &mut impl Spawner,
        pid: i32,
        status: ExitStatus,
        group_alive: bool,
        now: Instant,
    ) {
        // A child or an orphan ended: what it leaves behind lands on us.
        self.sweeps_asked += 1;
        let Some(i) = self
            .kept
            .children
            .iter()
            .position(|c| c.pid == pid && c.alive())
        else {
            return;
        };
        let (generation, worker, state, started, ready_since) = {
            let c = &mut self.kept.children[i];
            c.exited = Some(status);
            (c.generation, c.worker, c.state, c.started, c.ready_since)
        };
        let exec_error = self.kept.children[i].exec_error.take();
        if !matches!(state, State::Stopping { .. }) && exec_error.is_none() {
            self.hint_self_bind(i, status, now);
        }
        if !group_alive {
            self.kept.children.remove(i);
        }
        let ended = Ended {
            pid: Some(pid),
            status,
            lived: now.saturating_duration_since(started),
            ready_for: ready_since.map(|t| now.saturating_duration_since(t)),
        };
        let serving = generation == self.kept.serving && !self.kept.life.stopping();
        match (state, exec_error) {
            (State::Stopping { .. }, _) => info!(pid, generation, worker, "stopped: {status}"),
            (_, Some(e)) if self.pending() == Some(generation) => {
                warn!(pid, generation, worker, "{e}");
                self.fail_reload(
                    os,
                    ReloadResult::Exited,
                    format!("generation {generation} could not start: {e}"),
                    now,
                );
            }
            (_, Some(e)) if serving => self.serving_could_not_exec(os, worker, ended, e, now),
            _ if self.pending() == Some(generation) => {
                warn!(
                    pid,
                    generation, worker, "new generation {status} before it was ready"
                );
                self.fail_reload(
                    os,
                    ReloadResult::Exited,
                    format!("generation {generation} {status} before it was ready"),
                    now,
                );
            }
            _ if self.canary().is_some_and(|(g, ..)| g == generation) => {
                warn!(pid, generation, worker, "the canary {status}");
                let why = format!("its worker {worker} (pid {pid}) {status}");
                self.rollback(os, why, now);
            }
            _ if serving => {
                if status.success() {
                    info!(pid, generation, worker, "{status}");
                } else {
                    warn!(pid, generation, worker, "{status}");
                }
                self.kept.slots[worker].last_exit = Some(status);
                self.after_exit(os, worker, ended, now);
            }
            _ => info!(pid, generation, worker, "{status}"),
        }
        if group_alive {
            // Its workers would go on serving (old code) until we exit.
            warn!(
                pid,
                generation, worker, "other processes of its group live on; stopping the group"
            );
            self.stop_child(pid, now);
        }
        self.released(generation);
        self.settle(os, now);
    }

    /// A worker of the serving generation could not exec its program. At
    /// start a missing program is a mistake to report at once. Once it has
    /// served, a restart can meet a deploy halfway (rm, then cp): the
    /// listeners stay held and the backoff keeps trying, as for any quick
    /// failure, until it gives up. Under --watch the next build may well
    /// make it: wait.
    fn serving_could_not_exec(
        &mut self,
        os: &mut impl Spawner,
        worker: usize,
        ended: Ended,
        e: spawn::Error,
        now: Instant,
    ) {
        let (pid, generation) = (ended.pid, self.kept.serving);
        if !self.kept.served && self.dev.is_some() {
            error!(pid, generation, worker, "{e}; waiting for a file to change");
            self.kept.slots[worker].last_exit = Some(ended.status);
            // Nothing runs to be taken as serving at the deadline.
            self.kept.first_deadline = None;
        } else if !self.kept.served {
            self.fail_to_exec(os, e, now);
        } else {
            error!(pid, generation, worker, "{e}");
            self.kept.slots[worker].last_exit = Some(ended.status);
            let ended = Ended {
                lived: Duration::ZERO,
                ready_for: None,
                ..ended
            };
            self.after_exit(os, worker, ended, now);
        }
    }

    fn group_gone(&mut self, os: &mut impl Spawner, pgid: i32, now: Instant) {
        let Some(i) = self
            .kept
            .children
            .iter()
            .position(|c| c.pid == pgid && !c.alive())
        else {
            return;
        };
        let c = self.kept.children.remove(i);
        self.sweeps_asked += 1;
        info!(
            pid = pgid,
            generation = c.generation,
            worker = c.worker,
            "its process group is empty"
        );
        self.released(c.generation);
        self.settle(os, now);
    }

    /// A group still not empty KILL_GRACE after SIGKILL will not empty soon
    /// (a process stuck in the kernel, a zombie nobody reaps, a member we may
    /// not signal). Waiting on would block every later reload and relaunch's
    /// own exit, so it is said and let go.
    fn give_up_on_unkillable(&mut self, os: &mut impl Spawner, now: Instant) {
        let stuck: Vec<(i32, u64)> = self
            .kept
            .children
            .iter()
            .filter(|c| {
                matches!(c.state, State::Stopping { kill_at, killed: true } if kill_at + KILL_GRACE <= now)
            })
            .map(|c| (c.pid, c.generation))
            .collect();
        for (pid, generation) in stuck {
            warn!(
                pid,
                generation,
                "process group {pid} is not empty {} after SIGKILL; no longer waiting for it. \
                 Its processes are stuck in the kernel, zombies nobody reaps, or not ours to \
                 signal: see `ps -o pid,stat,user,cmd -g {pid}`",
                duration::human(KILL_GRACE)
            );
            self.kept.children.retain(|c| c.pid != pid);
            self.sweeps_asked += 1;
            self.released(generation);
            self.settle(os, now);
        }
    }

    /// Leftovers that escaped a child's group get what the child got: the
    /// stop signal, SIGKILL after the stop timeout.
    fn on_escaped(&mut self, found: Vec<(i32, String)>, now: Instant) {
        let sig = self.kept.cfg.stop_signal;
        for (pid, cmd) in found {
            if self.escaped.iter().any(|e| e.pid == pid) {
                continue;
            }
            warn!(
                pid,
                "pid {pid} ({cmd}) escaped the process group of a child that is over or being \
                 stopped (setsid, a double fork); sending {}, SIGKILL after {}",
                sig.as_str(),
                duration::human(self.kept.cfg.stop_timeout)
            );
            self.escaped.push(Escaped {
                pid,
                kill_at: now + self.kept.cfg.stop_timeout,
                killed: false,
            });
            self.out.push(Effect::SignalEscaped { pid, sig });
        }
    }

    /// SIGKILL for escaped processes past the stop timeout; the ones that
    /// survive even that are let go, like a group that will not empty.
    fn end_escaped(&mut self, os: &mut impl Spawner, now: Instant) {
        for i in 0..self.escaped.len() {
            let e = self.escaped[i];
            if !e.killed && e.kill_at <= now {
                warn!(pid = e.pid, "pid {} did not stop; sending SIGKILL", e.pid);
                self.out.push(Effect::SignalEscaped {
                    pid: e.pid,
                    sig: Signal::SIGKILL,
                });
                self.escaped[i].killed = true;
            }
        }
        let before = self.escaped.len();
        self.escaped.retain(|e| {
            let stuck = e.killed && e.kill_at + KILL_GRACE <= now;
            if stuck {
                warn!(
                    pid = e.pid,
                    "pid {} is still there {} after SIGKILL; no longer waiting for it",
                    e.pid,
                    duration::human(KILL_GRACE)
                );
            }
            !stuck
        });
        if self.escaped.len() != before {
            self.settle(os, now);
        }
    }

    /// Lets the notify socket of `generation` go once nothing of it is left.
    fn released(&mut self, generation: u64) {
        if !self
            .kept
            .children
            .iter()
            .any(|c| c.generation == generation)
        {
            self.out.push(Effect::Release { generation });
        }
    }

    /// The scan saw the child with `pid` (or its tree) wait on a held socket.
    fn seen_waiting(&mut self, os: &mut impl Spawner, pid: i32, how: &str, now: Instant) {
        if let Some(c) = self.child_mut(pid) {
            c.seen = true;
            if self.kept.cfg.ready_auto {
                self.mark_ready(os, pid, how, now);
            }
        }
    }

    /// A child that failed within [`HINT_WITHIN`], never ready and never seen
    /// waiting on a held socket, most likely tried to bind the port itself and got
    /// EADDRINUSE (relaunch holds it). Say so once, with the remedies: every
    /// restart of a crash loop would only repeat it.
    fn hint_self_bind(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let c = &self.kept.children[i];
        let lived = now.saturating_duration_since(c.started);
        // A listen() on a held socket: it got relaunch's socket, it did not fail to bind.
        let ready = c.seen || c.ready_since.is_some() || c.listened.is_some();
        // A failed bind ends a program with a status, not a signal: a kill
        // (by an operator, the OOM killer) says nothing about binding.
        let failed = matches!(status, ExitStatus::Code(c) if c != 0);
        if self.kept.hinted || ready || !failed || lived >= HINT_WITHIN {
            return;
        }
        let first = match &self.kept.cfg.intercept_remedy {
            Some(r) => format!("{r}; "),
            None => String::new(),
        };
        warn!(
            pid = c.pid,
            generation = c.generation,
            worker = c.worker,
            "hint: it {status} after {} ms without ever waiting on relaunch's sockets; it \
             probably binds the port itself and fails with \"Address already in use\" because \
             relaunch holds it. Remedies: {first}--compat werkzeug for Flask's built-in \
             server; a {{fd}} placeholder for servers that take a socket (uvicorn --fd {{fd}}); \
             or read LISTEN_FDS in the app (README: \"Taking the socket in your server\")",
            lived.as_millis()
        );
        self.kept.hinted = true;
    }

    /// The child with `pid` (or its tree) is ready to serve.
    fn mark_ready(&mut self, os: &mut impl Spawner, pid: i32, how: &str, now: Instant) {
        let Some(c) = self.child_mut(pid) else {
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
        // Ready by its own word (READY=1, the delay) while the scan last saw
        // it serve elsewhere, never on a held socket.
        if !c.seen && c.elsewhere.is_some() {
            self.say_elsewhere(pid);
        }
        self.settle(os, now);
    }

    /// Readiness of this child cannot be seen from /proc (see `ready::scan`).
    fn mark_blind(&mut self, os: &mut impl Spawner, pid: i32, why: &str, now: Instant) {
        if !self.kept.cfg.ready_auto {
            return;
        }
        if let Some(c) = self.child_mut(pid)
            && !c.blind
        {
            c.blind = true;
            if let Some(how) = c.listened.clone() {
                self.mark_ready(os, pid, &how, now);
                return;
            }
            // An empty reason was said once for all (no /proc at all).
            if !why.is_empty() {
                warn!(
                    pid,
                    generation = c.generation,
                    worker = c.worker,
                    "cannot see whether this child waits for connections ({why}); it counts as ready only at \
                     --ready-timeout. Use --ready delay:DURATION, or send READY=1 and use --ready notify"
                );
            }
        }
    }

    /// A child serves on a port relaunch does not hold (an app that probed
    /// its port and fell back): said once per generation, once it has done
    /// so for [`ELSEWHERE_GRACE`], or at the ready timeout.
    fn on_elsewhere(&mut self, pid: i32, notice: String, now: Instant) {
        let Some(c) = self.child_mut(pid) else {
            return;
        };
        let since = c.elsewhere.get_or_insert((now, notice)).0;
        if now.saturating_duration_since(since) >= ELSEWHERE_GRACE {
            self.say_elsewhere(pid);
        }
    }

    /// Says where child `pid` serves instead, once per generation: whether
    /// it serves elsewhere.
    fn say_elsewhere(&mut self, pid: i32) -> bool {
        let Some(c) = self.kept.children.iter().find(|c| c.pid == pid) else {
            return false;
        };
        let Some((_, notice)) = &c.elsewhere else {
            return false;
        };
        if self.elsewhere_said != Some(c.generation) {
            warn!(pid, generation = c.generation, "{notice}");
            self.elsewhere_said = Some(c.generation);
        }
        true
    }

    /// The first starting child of `generation` that serves elsewhere.
    fn serving_elsewhere(&self, generation: u64) -> Option<i32> {
        self.kept
            .children
            .iter()
            .find(|c| {
                c.generation == generation
                    && matches!(c.state, State::Starting { .. })
                    && c.elsewhere.is_some()
            })
            .map(|c| c.pid)
    }

    fn on_listened(&mut self, os: &mut impl Spawner, pid: i32, how: String, now: Instant) {
        let Some(c) = self.child_mut(pid) else {
            return;
        };
        if c.listened.is_some() {
            return;
        }
        c.listened = Some(how.clone());
        if c.blind {
            self.mark_ready(os, pid, &how, now);
        }
    }

    fn on_notice(&mut self, os: &mut impl Spawner, pid: i32, notice: Notice, now: Instant) {
        let Some(c) = self.child_mut(pid) else {
            return;
        };
        if let Some(m) = notice.main_pid {
            c.main_pid = Some(m).filter(|&m| m != pid);
        }
        if let Some(text) = notice.status {
            c.status_text = Some(text);
        }
        // Under a health probe, only the probe says ready.
        if notice.ready && self.kept.cfg.ready_probe.is_none() {
            self.mark_ready(os, pid, "READY=1", now);
        }
    }

    fn on_control(&mut self, os: &mut impl Spawner, request: Request, to: ReplyId, now: Instant) {
        match request {
            Request::Status => {
                let response = Response::Status(Box::new(self.status(now)));
                self.out.push(Effect::Reply { to, response });
            }
            Request::Reload => self.reload_asked(os, None, to, now),
            Request::Canary {
                percent,
                promote_after_ms,
            } => match canary_of(percent, promote_after_ms) {
                Ok(c) => self.reload_asked(os, Some(c), to, now),
                Err(reason) => {
                    let response = Response::ReloadFailed {
                        generation: self.kept.serving,
                        reason,
                    };
                    self.out.push(Effect::Reply { to, response });
                }
            },
            Request::Promote => self.promote_asked(os, to, now),
            Request::Rollback => self.rollback_asked(os, to, now),
            Request::Upgrade { binary } => self.upgrade(binary, Some(to), now),
            Request::Stop => {
                info!("stop requested through the control socket");
                self.out.push(Effect::Reply {
                    to,
                    response: Response::Stopping,
                });
                self.stop(os, now);
            }
        }
    }

    /// `relaunch reload`, with `--canary` or not: answered once its
    /// outcome is known (a canary without `--canary-for`: once it serves).
    fn reload_asked(
        &mut self,
        os: &mut impl Spawner,
        canary: Option<Canary>,
        to: ReplyId,
        now: Instant,
    ) {
        match self.request_reload(os, canary, now) {
            // It may already have failed, at spawn, before we could wait for it.
            Ok(generation) => match self
                .kept
                .last_reload
                .as_ref()
                .filter(|r| r.generation == generation)
            {
                // Nothing ran to reload.
                Some(done) if done.ok => {
                    let response = Response::Reloaded {
                        generation,
                        pids: Vec::new(),
                    };
                    self.out.push(Effect::Reply { to, response });
                }
                Some(done) => {
                    let response = Response::ReloadFailed {
                        generation,
                        reason: done.message.clone(),
                    };
                    self.out.push(Effect::Reply { to, response });
                }
                None => self.waiters.push((generation, to)),
            },
            Err(reason) => {
                let response = Response::ReloadFailed {
                    generation: self.kept.serving,
                    reason,
                };
                self.out.push(Effect::Reply { to, response });
            }
        }
    }

    /// Lets the driver check the new binary and exec it, unless relaunch
    /// is on its way out. Reloads and restarts go on meanwhile: what is
    /// under way when the exec happens is handed over as it is.
    fn upgrade(
        &mut self,
        binary: Option<std::path::PathBuf>,
        reply: Option<ReplyId>,
        now: Instant,
    ) {
        let refused = if self.upgrade.is_some() {
            Some("another upgrade is under way; wait for its outcome")
        } else if self.kept.life.stopping() || self.kept.life.done() {
            Some("relaunch is stopping")
        } else if self.dev.is_some() {
            // The watcher and the build are processes with pipes of their
            // own that the state does not carry: a dev loop restarts instead.
            Some("not under --watch: stop relaunch and start the new one")
        } else if self.kept.cfg.lazy || self.kept.cfg.idle_stop.is_some() {
            // The on-demand cycle lives partly in the loop (the listeners'
            // watch, the idle gauge), which the state does not carry yet.
            Some("not under --lazy or --idle-stop yet: restart relaunch to run the new one")
        } else {
            None
        };
        if let Some(reason) = refused {
            let reason = reason.to_string();
            warn!("upgrade refused: {reason}");
            if let Some(to) = reply {
                self.out.push(Effect::Reply {
                    to,
                    response: Response::UpgradeFailed { reason },
                });
            }
            return;
        }
        self.tell(Tell::Status("upgrading relaunch…".into()));
        self.upgrade = Some(UpgradeCheck {
            deadline: now + CHECK_DEADLINE,
            ended: false,
        });
        self.out.push(Effect::Upgrade { binary, reply });
    }

    /// Whether an upgrade may still exec (nothing ended relaunch meanwhile).
    pub fn may_upgrade(&self) -> bool {
        !self.kept.life.stopping() && !self.kept.life.done()
    }

    /// After an upgrade (done or refused): READY=1 with what serves, unless
    /// a reload is under way, whose own READY=1 is still to come.
    pub fn tell_serving(&mut self) {
        let line = status_line(self.kept.serving, &self.serving_pids());
        if self.kept.reloading {
            self.tell(Tell::Status(line));
        } else {
            self.tell(Tell::Ready(line));
        }
    }

    /// Takes out what was told since the last event (for effects produced
    /// outside `handle`, such as [`Supervisor::tell_serving`]).
    pub fn effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// What the next image needs: the kept state, and the `relaunch reload`
    /// clients waiting, by generation.
    pub fn save(&self) -> (Kept, Vec<(u64, ReplyId)>) {
        (self.kept.clone(), self.waiters.clone())
    }

    /// The supervisor an earlier image saved.
    pub fn restore(kept: Kept, waiters: Vec<(u64, ReplyId)>) -> Self {
        let dev = kept.cfg.watch.map(|_| Dev::default());
        Supervisor::with(kept, dev, waiters)
    }

    pub fn config(&self) -> &Config {
        &self.kept.cfg
    }

    /// Asks for a reload; returns the generation whose outcome answers it.
    fn request_reload(
        &mut self,
        os: &mut impl Spawner,
        canary: Option<Canary>,
        now: Instant,
    ) -> Result<u64, String> {
        if self.kept.life.stopping() {
            return Err("relaunch is stopping".into());
        }
        if let Some(r) = self.kept.reload
            && let Some(c) = r.canary
        {
            return Err(format!(
                "generation {} runs as a canary ({} of new connections): promote it (relaunch \
                 promote) or roll it back (relaunch rollback) first",
                r.generation,
                c.percent()
            ));
        }
        if canary.is_some() {
            if let Some(why) = &self.kept.cfg.no_canary {
                return Err(format!("--canary cannot run here: {why}"));
            }
            if self.kept.cfg.drain.is_none() {
                let why = "the drain is off (said at start why), and a canary needs a socket \
                           per generation";
                return Err(format!("--canary cannot run here: {why}"));
            }
            if self.demand != Demand::Running {
                return Err(
                    "no child runs (waiting for a connection): there is nothing to try a canary \
                     beside"
                        .into(),
                );
            }
            if !self.kept.announced {
                return Err(format!(
                    "generation {} is not ready yet: there is nothing to try a canary beside; \
                     wait until relaunch status says serving",
                    self.kept.serving
                ));
            }
            if let Some(r) = self.kept.reload {
                return Err(format!(
                    "a reload is under way (generation {}): wait for its outcome, then start \
                     the canary",
                    r.generation
                ));
            }
            if let (Some(h), Some(d)) =
                (&self.kept.cfg.health, canary.and_then(|c| c.promote_after))
                && d <= h.every
            {
                return Err(format!(
                    "--canary-for {} is not longer than --health-every {}: it would be \
                     promoted before a health check of it ends; give a longer --canary-for",
                    duration::human(d),
                    duration::human(h.every)
                ));
            }
        }
        if self.demand != Demand::Running {
            let message = "no child runs (waiting for a connection): nothing to reload; \
                           the next connection starts the program as it is then"
                .to_string();
            info!("reload: {message}");
            // systemd's notify-reload waits for RELOADING=1 then READY=1.
            self.tell(Tell::Reloading(format!("reload: {message}")));
            self.tell(Tell::Ready(self.state().into()));
            self.kept.last_reload = Some(LastReload {
                generation: self.kept.serving,
                ok: true,
                message,
                at: now,
            });
            return Ok(self.kept.serving);
        }
        if let Some(r) = self.kept.reload {
            if !self.kept.reload_queued {
                info!(
                    generation = r.generation,
                    "reload requested during a reload; another one follows it"
                );
            }
            self.kept.reload_queued = true;
            self.count(Count::Reload(ReloadResult::Coalesced));
            return Ok(r.generation + 1);
        }
        // Only one generation is kept: the one kept now is the older.
        self.end_previous(now);
        let generation = self.take_generation();
        info!(
            generation,
            "reload: starting generation {generation} beside generation {}", self.kept.serving
        );
        // A server that auto-readiness sees only accepting needs connections.
        let probes = match self.kept.cfg.ready_auto {
            true => self.kept.cfg.workers,
            false => 0,
        };
        let own = self.kept.cfg.drain.is_some() && os.open(generation, probes);
        self.kept.reload = Some(Reload {
            generation,
            phase: Phase::Starting {
                deadline: now + self.kept.cfg.ready_timeout,
            },
            own,
            canary,
        });
        self.kept.reloading = true;
        self.kept.generation_started = Some((generation, now));
        self.tell(Tell::Reloading(format!(
            "reloading: starting generation {generation}"
        )));
        if canary.is_some() && !own {
            let reason = format!(
                "generation {generation} has no sockets of its own (said above), and a canary \
                 needs them to get its share"
            );
            self.fail_reload(os, ReloadResult::NotReady, reason, now);
            return Ok(generation);
        }
        // Probed through the serving generation's socket, the old version
        // would answer for the new one.
        if let Some(probe) = &self.kept.cfg.ready_probe
            && !own
        {
            let reason = format!(
                "generation {generation} cannot be probed alone: it has no sockets of its own \
                 (said above), and --ready {probe} never promotes a generation it could not probe"
            );
            self.fail_reload(os, ReloadResult::NotReady, reason, now);
            return Ok(generation);
        }
        for worker in 0..self.kept.cfg.workers {
            if let Err(e) = self.spawn(os, generation, worker, now) {
                self.fail_reload(
                    os,
                    ReloadResult::Exited,
                    format!("generation {generation} could not start: {e}"),
                    now,
                );
                return Ok(generation);
            }
        }
        Ok(generation)
    }

    /// SIGTERM, SIGINT or `relaunch stop`. A second one kills at once.
    fn stop(&mut self, os: &mut impl Spawner, now: Instant) {
        if self.kept.life.stopping() {
            warn!("asked to stop again: sending SIGKILL to every child");
            let pids: Vec<i32> = self.kept.children.iter().map(|c| c.pid).collect();
            for pid in pids {
                self.signal(pid, Signal::SIGKILL);
            }
            for c in &mut self.kept.children {
                if let State::Stopping { kill_at, .. } = c.state {
                    c.state = State::Stopping {
                        kill_at,
                        killed: true,
                    };
                }
            }
            for e in &mut self.escaped {
                e.killed = true;
                self.out.push(Effect::SignalEscaped {
                    pid: e.pid,
                    sig: Signal::SIGKILL,
                });
            }
            return;
        }
        self.kept.life = match self.kept.life {
            // Nothing was left to run: stopping changes nothing but the word.
            Life::Done { .. } => Life::Done { stopped: true },
            _ => Life::Stopping,
        };
        self.tell(Tell::Stopping);
        if let Some(dev) = &mut self.dev {
            dev.due = None;
            if let Some(b) = dev.building.take() {
                info!(pid = b.pid, "stopping the build");
                self.signal(b.pid, Signal::SIGKILL);
            }
        }
        if self.kept.reload.is_some() {
            self.fail_reload(
                os,
                ReloadResult::Cancelled,
                "relaunch is stopping".into(),
                now,
            );
        }
        for s in &mut self.kept.slots {
            s.restart_at = None;
        }
        self.end_previous(now);
        let pids: Vec<i32> = self.kept.children.iter().map(|c| c.pid).collect();
        for pid in pids {
            self.stop_child(pid, now);
        }
        self.settle(os, now);
    }

    /// Passes a signal on to every child that is not being stopped.
    fn forward(&mut self, sig: Signal) {
        let pids: Vec<i32> = self
            .kept
            .children
            .iter()
            .filter(|c| !matches!(c.state, State::Stopping { .. }))
            .map(|c| c.pid)
            .collect();
        for pid in pids {
            self.signal(pid, sig);
        }
    }

    /// `--watch`: a file changed. A build in progress is out of date: it is
    /// killed at once (its whole group) and the debounce starts over.
    fn on_change(&mut self, path: String, now: Instant) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        if self.kept.life.stopping() {
            return;
        }
        debug!("changed: {path}");
        if let Some(b) = dev.building.take() {
            info!(
                pid = b.pid,
                "{path} changed during the build: cancelling it; a new one follows"
            );
            self.out.push(Effect::Signal {
                pgid: b.pid,
                sig: Signal::SIGKILL,
            });
        }
        // The latest is the one to show: an editor's or sed's temporary
        // file comes first, the file itself last.
        dev.changed.retain(|p| *p != path);
        if dev.changed.len() == CHANGED_KEPT {
            dev.changed.remove(0);
            dev.more += 1;
        }
        dev.changed.push(path);
        dev.due = Some(now + self.kept.cfg.watch.map_or(Duration::ZERO, |w| w.debounce));
    }

    /// Files have been quiet for the debounce: build, or reload.
    fn changes_settled(&mut self, os: &mut impl Spawner, now: Instant) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        let others = dev.changed.len().saturating_sub(1) + std::mem::take(&mut dev.more);
        let what = match (dev.changed.pop(), others) {
            (Some(path), 0) => format!("{path} changed"),
            (Some(path), 1) => format!("{path} and 1 other path changed"),
            (Some(path), n) => format!("{path} and {n} other paths changed"),
            (None, _) => "files changed".into(),
        };
        dev.changed.clear();
        if self.kept.life.stopping() {
            return;
        }
        if self.kept.cfg.watch.is_some_and(|w| w.build) {
            self.start_build(os, &what, now);
            return;
        }
        info!("{what}: reloading");
        if let Err(e) = self.request_reload(os, None, now) {
            warn!("reload refused: {e}");
        }
    }

    fn start_build(&mut self, os: &mut impl Spawner, why: &str, now: Instant) {
        match os.build() {
            Ok(pid) => {
                if self.kept.serving == 0 {
                    info!(pid, "{why}: building; generation 1 starts when it succeeds");
                } else {
                    info!(
                        pid,
                        "{why}: building; generation {} serves meanwhile", self.kept.serving
                    );
                }
                if let Some(dev) = &mut self.dev {
                    dev.building = Some(Build { pid, started: now });
                }
            }
            Err(e) => {
                error!("cannot start the build: {e}; the next change tries again");
                if let Some(dev) = &mut self.dev {
                    dev.last = Some(BuildResult {
                        ok: false,
                        text: format!("could not start: {e}"),
                        at: now,
                    });
                }
            }
        }
    }

    /// The build ended: reload (or start generation 1) if it succeeded;
    /// otherwise say why, and leave what serves alone.
    fn on_built(
        &mut self,
        os: &mut impl Spawner,
        pid: i32,
        status: ExitStatus,
        tail: &[String],
        now: Instant,
    ) {
        let Some(dev) = &mut self.dev else {
            return;
        };
        let Some(b) = dev.building.take_if(|b| b.pid == pid) else {
            debug!(pid, "a cancelled build ended: {status}");
            return;
        };
        let took = now.saturating_duration_since(b.started).as_secs_f64();
        if status.success() {
            dev.last = Some(BuildResult {
                ok: true,
                text: format!("in {took:.1} s"),
                at: now,
            });
            if self.kept.life.stopping() {
                return;
            }
            if self.kept.serving == 0 {
                info!(pid, "build succeeded in {took:.1} s; starting");
                self.start(os, now);
            } else {
                info!(pid, "build succeeded in {took:.1} s; reloading");
                if let Err(e) = self.request_reload(os, None, now) {
                    warn!("reload refused: {e}");
                }
            }
            return;
        }
        dev.last = Some(BuildResult {
            ok: false,
            text: format!("{status} after {took:.1} s"),
            at: now,
        });
        let first = self.kept.serving == 0 && !self.kept.life.stopping();
        let serving = if first {
            "generation 1 starts with the version already there".to_string()
        } else {
            format!("generation {} keeps serving", self.kept.serving)
        };
        let output = if tail.is_empty() {
            " It printed nothing.".to_string()
        } else {
            let lines: String = tail.iter().map(|l| format!("\n  | {l}")).collect();
            format!(" The last {} lines of its output:{lines}", tail.len())
        };
        error!(
            pid,
            "build failed: it {status} after {took:.1} s; {serving}; the next change builds \
             again.{output}"
        );
        // A failed build never keeps what is on disk from serving.
        if first {
            self.start(os, now);
        }
    }

    /// `relaunch status`'s line about `--watch`.
    fn watch_status(&self, now: Instant) -> Option<String> {
        let dev = self.dev.as_ref()?;
        let ago = |t: Instant| {
            format!(
                "{:.0} s ago",
                now.saturating_duration_since(t).as_secs_f64()
            )
        };
        Some(if let Some(b) = &dev.building {
            format!(
                "building (pid {}, for {:.1} s)",
                b.pid,
                now.saturating_duration_since(b.started).as_secs_f64()
            )
        } else if dev.due.is_some() {
            "files changed: waiting for them to settle".into()
        } else if let Some(last) = &dev.last {
            if last.ok {
                format!(
                    "watching; the last build succeeded {} ({})",
                    ago(last.at),
                    last.text
                )
            } else {
                format!(
                    "watching; the last build failed {}: {}",
                    ago(last.at),
                    last.text
                )
            }
        } else {
            "watching".into()
        })
    }

    fn pending(&self) -> Option<u64> {
        match self.kept.reload {
            Some(Reload {
                generation,
                phase: Phase::Starting { .. },
                ..
            }) => Some(generation),
            _ => None,
        }
    }

    fn take_generation(&mut self) -> u64 {
        let g = self.kept.next_generation;
        self.kept.next_generation += 1;
        g
    }

    fn spawn(
        &mut self,
        os: &mut impl Spawner,
        generation: u64,
        worker: usize,
        now: Instant,
    ) -> Result<(), spawn::Error> {
        let pid = os.spawn(generation, worker)?;
        info!(pid, generation, worker, "started");
        self.kept.children.push(Child {
            pid,
            generation,
            worker,
            started: now,
            state: State::Starting {
                ready_at: self.kept.cfg.ready_delay.map(|d| now + d),
            },
            main_pid: None,
            status_text: None,
            blind: false,
            taken_as_ready: false,
            seen: false,
            listened: None,
            ready_since: None,
            elsewhere: None,
            exited: None,
            exec_error: None,
        });
        Ok(())
    }

    fn fail_to_exec(&mut self, os: &mut impl Spawner, e: spawn::Error, now: Instant) {
        self.kept.exit_code = e.kind().code();
        self.kept.exit_error = Some(e.to_string());
        // Workers that did start must not outlive us.
        self.stop(os, now);
    }
    /// Restart policy and backoff for a serving worker that exited on its own.
    /// `pid` is the child that exited; None when it never started.
    fn after_exit(&mut self, os: &mut impl Spawner, worker: usize, ended: Ended, now: Instant) {
        let Ended {
            pid,
            status,
            lived,
            ready_for,
        } = ended;
        let restart = match self.kept.cfg.restart {
            Restart::Always => true,
            Restart::OnFailure => !status.success(),
            Restart::Never => false,
        };
        if !restart {
            self.kept.exit_code = status.code();
            return;
        }
        let jitter = os.jitter();
        match self.kept.slots[worker]
            .backoff
            .exited(now, lived, ready_for, jitter)
        {
            Next::RestartAfter(d) => {
                self.count(Count::Restart(match status {
                    ExitStatus::Code(_) => RestartReason::Exit,
                    ExitStatus::Signal(_) => RestartReason::Signal,
                }));
                info!(
                    pid,
                    generation = self.kept.serving,
                    worker,
                    "restarting in {} ms",
                    d.as_millis()
                );
                self.kept.slots[worker].restart_at = Some(now + d);
                self.tell(Tell::Status(format!(
                    "restarting generation {} worker {worker}: it {status}",
                    self.kept.serving
                )));
            }
            Next::GiveUp => {
                self.count(Count::Restart(RestartReason::GiveUp));
                let msg = format!(
                    "giving up after {} quick failures in a row (each exited before it was ready, or after more than {} crashes within {}); the last one {status}",
                    backoff::GIVE_UP_AFTER,
                    backoff::BURST,
                    duration::human(backoff::BURST_WINDOW)
                );
                if self.dev.is_some() {
                    // The developer is about to fix it: the listeners stay
                    // held, and the next change starts it again.
                    error!(
                        generation = self.kept.serving,
                        worker, "{msg}; waiting for a file to change"
                    );
                    self.kept.slots[worker].backoff = Backoff::default();
                    return;
                }
                self.kept.exit_code = 1;
                self.kept.exit_error = Some(msg);
                self.stop(os, now);
            }
        }
    }

    /// Moves things along after any change: promotions, finished reloads, exit.
    fn settle(&mut self, os: &mut impl Spawner, now: Instant) {
        if let Some(generation) = self.pending() {
            let ready = self
                .kept
                .children
                .iter()
                .filter(|c| c.generation == generation && c.state == State::Ready)
                .count();
            if ready == self.kept.cfg.workers {
                self.promote(os, generation, now);
            }
        }
        // A reload asked while the first generation started does not hold
        // back its announcement (announce tells systemd nothing meanwhile).
        if !self.kept.announced
            && self.others_serve(None)
            && self
                .kept
                .children
                .iter()
                .filter(|c| c.generation == self.kept.serving && c.alive())
                .all(|c| c.state == State::Ready)
        {
            self.generation_ready(self.kept.serving, now);
            self.announce(now);
        }
        if let Some(p) = self.kept.previous
            && self.alive_pids(p.generation).is_empty()
        {
            warn!(
                generation = p.generation,
                "generation {}, kept for a rollback, ended on its own: there is nothing to roll \
                 back to now",
                p.generation
            );
            self.kept.previous = None;
        }
        // The old generation went on its own while it drained.
        if self.emptying().is_some() && self.leaving().next().is_none() {
            self.set_phase(Phase::Draining);
        }
        if let Some(Reload {
            generation,
            phase: Phase::Draining,
            canary,
            ..
        }) = self.kept.reload
            && self.leaving().next().is_none()
            && self.escaped.is_empty()
            && self.sweep_wanted().is_none()
        {
            let pids = self.serving_pids();
            if let Some(why) = self.kept.rolled_back.clone() {
                // Without a canary: the kept generation is back.
                let the_canary = if canary.is_some() {
                    ", the canary,"
                } else {
                    ""
                };
                warn!(
                    generation,
                    "rollback done: generation {} serves (pids {pids:?}); generation \
                     {generation}{the_canary} stopped",
                    self.kept.serving
                );
                self.count(Count::Reload(ReloadResult::RolledBack));
                let reason = format!("generation {generation}{the_canary} was rolled back: {why}");
                self.finish_reload(os, generation, Err(reason), now);
            } else {
                info!(
                    generation,
                    "reload done: generation {generation} serves (pids {pids:?})"
                );
                self.count(Count::Reload(ReloadResult::Done));
                self.finish_reload(os, generation, Ok(pids), now);
            }
        }
        if self.kept.children.is_empty()
            && self.escaped.is_empty()
            && self.sweep_wanted().is_none()
            && !self.kept.life.done()
        {
            let idle = self.kept.slots.iter().all(|s| s.restart_at.is_none())
                && self.kept.reload.is_none();
            if self.kept.life == Life::Stopping {
                self.kept.life = Life::Done { stopped: true };
            } else if self.demand == Demand::IdleStopping {
                info!(
                    generation = self.kept.serving,
                    "stopped while idle; waiting for a connection"
                );
                self.wait_for_connection(now);
            } else if self.demand == Demand::Waiting {
                // Nothing to run until a connection comes.
            } else if idle && self.kept.cfg.restart != Restart::Always && self.dev.is_none() {
                info!(
                    "no child left to run; exiting with status {}",
                    self.kept.exit_code
                );
                self.kept.life = Life::Done { stopped: false };
            }
        }
    }

    fn announce(&mut self, _now: Instant) {
        self.kept.announced = true;
        self.kept.served = true;
        let line = status_line(self.kept.serving, &self.serving_pids());
        info!(generation = self.kept.serving, "{line}");
        // During a reload, systemd hears READY=1 when it is over.
        if !self.kept.reloading {
            self.tell(Tell::Ready(line));
        }
    }

    fn serving_pids(&self) -> Vec<i32> {
        self.alive_pids(self.kept.serving)
    }

    /// The children of `generation` that run.
    fn alive_pids(&self, generation: u64) -> Vec<i32> {
        self.kept
            .children
            .iter()
            .filter(|c| c.generation == generation && c.alive())
            .map(|c| c.pid)
            .collect()
    }

    fn promote(&mut self, os: &mut impl Spawner, generation: u64, now: Instant) {
        if let Some(c) = self.kept.reload.and_then(|r| r.canary) {
            self.serve_canary(os, generation, c, now);
            return;
        }
        let drain = self.kept.reload.filter(|r| r.own).and(self.kept.cfg.drain);
        // Its sockets get nothing until steered to: if that fails, it cannot
        // serve, and the old generation goes on.
        if drain.is_some()
            && let Err(e) = os.steer(generation)
        {
            let reason = format!("cannot send new connections to generation {generation}: {e}");
            self.fail_reload(os, ReloadResult::NotReady, reason, now);
            return;
        }
        self.switch(generation, drain, now);
    }

    /// `generation` takes every new connection (steered already): the old
    /// one drains (`drain`: for at most that long) or stops.
    fn switch(&mut self, generation: u64, drain: Option<Duration>, now: Instant) {
        let old = self.older_pids(generation);
        let before = self.kept.serving;
        match drain {
            Some(timeout) => info!(
                generation,
                "generation {generation} is ready; new connections go to it, and generation \
                 {before} finishes what it accepted (for at most {})",
                duration::human(timeout)
            ),
            None => info!(
                generation,
                "generation {generation} is ready; stopping generation {before}"
            ),
        }
        self.generation_ready(generation, now);
        self.kept.serving = generation;
        self.kept.slots = vec![Slot::default(); self.kept.cfg.workers];
        let phase = match drain {
            Some(timeout) => Phase::Emptying {
                until: now + timeout,
                settle: now + DRAIN_SETTLE,
                ending: false,
            },
            None => Phase::Draining,
        };
        self.set_phase(phase);
        self.announce(now);
        if drain.is_some() {
            self.drain = DrainWatch::default();
        } else {
            for pid in old {
                self.stop_child(pid, now);
            }
        }
    }

    /// The canary is ready: it gets its share of new connections, beside
    /// the serving generation, which keeps the rest.
    fn serve_canary(&mut self, os: &mut impl Spawner, generation: u64, c: Canary, now: Instant) {
        if let Err(e) = os.share(generation, c.share) {
            let reason = format!(
                "cannot send {} of new connections to generation {generation}: {e}",
                c.percent()
            );
            self.fail_reload(os, ReloadResult::NotReady, reason, now);
            return;
        }
        self.generation_ready(generation, now);
        let until = c.promote_after.map(|d| now + d);
        let serving = self.kept.serving;
        let line = match c.promote_after {
            Some(d) => format!(
                "generation {generation} is ready and serves {} of new connections as a canary \
                 beside generation {serving}; promoted in {} unless it crashes or fails a \
                 health check",
                c.percent(),
                duration::human(d)
            ),
            None => format!(
                "generation {generation} is ready and serves {} of new connections as a canary \
                 beside generation {serving}; relaunch promote gives it everything, relaunch \
                 rollback takes its share back",
                c.percent()
            ),
        };
        info!(generation, "{line}");
        self.set_phase(Phase::Canary { until });
        let pids = self.alive_pids(generation);
        // Without --canary-for, `relaunch reload` is answered now.
        if until.is_none() {
            let (answered, waiting) = std::mem::take(&mut self.waiters)
                .into_iter()
                .partition(|(g, _)| *g <= generation);
            self.waiters = waiting;
            for (_, to) in answered {
                let response = Response::CanaryServes {
                    generation,
                    share: c.share,
                    pids: pids.clone(),
                };
                self.out.push(Effect::Reply { to, response });
            }
        }
        if std::mem::take(&mut self.kept.reloading) {
            self.tell(Tell::Ready(line));
        }
    }

    /// The reload's generation while it serves as a canary, and when it is
    /// promoted (`--canary-for`).
    fn canary(&self) -> Option<(u64, Canary, Option<Instant>)> {
        let r = self.kept.reload?;
        match (r.phase, r.canary) {
            (Phase::Canary { until }, Some(c)) if self.kept.rolled_back.is_none() => {
                Some((r.generation, c, until))
            }
            _ => None,
        }
    }

    /// `relaunch promote`: answered once the old generation is drained.
    fn promote_asked(&mut self, os: &mut impl Spawner, to: ReplyId, now: Instant) {
        match self.promote_canary(os, now) {
            Ok(generation) => self.waiters.push((generation, to)),
            Err(message) => {
                let response = Response::Error { message };
                self.out.push(Effect::Reply { to, response });
            }
        }
    }

    /// The canary takes every new connection, and the old generation
    /// drains, as after a reload.
    fn promote_canary(&mut self, os: &mut impl Spawner, now: Instant) -> Result<u64, String> {
        let Some((generation, c, _)) = self.canary() else {
            return Err(self.no_canary_to("promote"));
        };
        os.steer(generation).map_err(|e| {
            format!(
                "cannot send every new connection to generation {generation} ({e}); it keeps \
                 its {} share",
                c.percent()
            )
        })?;
        info!(
            generation,
            "the canary, generation {generation}, is promoted"
        );
        if let Some(r) = &mut self.kept.reload {
            r.canary = None;
        }
        self.switch(generation, self.kept.cfg.drain, now);
        Ok(generation)
    }

    /// Why there is nothing to `what` (promote, roll back).
    fn no_canary_to(&self, what: &str) -> String {
        match self.kept.reload {
            Some(r) if self.kept.rolled_back.is_some() => format!(
                "nothing to {what}: generation {}, the canary, is being rolled back",
                r.generation
            ),
            Some(r) if r.canary.is_some() => format!(
                "nothing to {what} yet: generation {}, the canary, is not ready (it is rolled \
                 back if it is not ready within --ready-timeout)",
                r.generation
            ),
            _ => format!(
                "nothing to {what}: no canary runs (start one with relaunch reload --canary \
                 PERCENT)"
            ),
        }
    }

    /// `relaunch rollback`: answered once the canary is drained and stopped.
    fn rollback_asked(&mut self, os: &mut impl Spawner, to: ReplyId, now: Instant) {
        if self.kept.reload.is_none() && self.kept.previous.is_some() {
            self.rollback_to_previous(os, to, now);
            return;
        }
        let Some((generation, ..)) = self.canary() else {
            // Not ready yet: it is simply stopped, as a failed reload's is.
            if let Some(r) = self.kept.reload
                && r.canary.is_some()
                && matches!(r.phase, Phase::Starting { .. })
                && self.kept.rolled_back.is_none()
            {
                self.waiters.push((r.generation, to));
                let why = "relaunch rollback, before it was ready".to_string();
                let reason = format!(
                    "generation {}, the canary, was rolled back: {why}",
                    r.generation
                );
                self.kept.rolled_back = Some(why);
                self.fail_reload(os, ReloadResult::RolledBack, reason, now);
                return;
            }
            let message = self.no_canary_to("roll back");
            self.out.push(Effect::Reply {
                to,
                response: Response::Error { message },
            });
            return;
        };
        self.waiters.push((generation, to));
        self.rollback(os, "relaunch rollback".into(), now);
    }

    /// The serving generation takes every new connection again; the
    /// canary finishes what it accepted (as an old generation drains) and
    /// stops.
    fn rollback(&mut self, os: &mut impl Spawner, why: String, now: Instant) {
        let Some((generation, ..)) = self.canary() else {
            return;
        };
        let serving = self.kept.serving;
        if let Err(e) = os.steer(serving) {
            // Its share is taken back when its sockets are released.
            error!(
                generation,
                "cannot send every new connection back to generation {serving} ({e}); the \
                 canary's share ends when it has stopped"
            );
        }
        warn!(
            generation,
            "rolling back the canary, generation {generation} ({why}): generation {serving} \
             takes every new connection again, and the canary finishes what it accepted, then \
             stops"
        );
        self.kept.rolled_back = Some(why);
        let timeout = self.kept.cfg.drain.unwrap_or_default();
        self.set_phase(Phase::Emptying {
            until: now + timeout,
            settle: now + DRAIN_SETTLE,
            ending: false,
        });
        self.drain = DrainWatch::default();
    }

    /// `--canary-for` passed without a crash or a failed health check.
    fn canary_due(&mut self, os: &mut impl Spawner, now: Instant) {
        let Some((generation, c, Some(until))) = self.canary() else {
            return;
        };
        if until > now {
            return;
        }
        // With --health, a canary none of whose checks passed (relaunch
        // could not check it) is not taken as healthy.
        let check = self
            .probing
            .iter()
            .find(|p| p.generation == generation && p.health);
        if self.kept.cfg.health.is_some() && !check.is_some_and(|p| p.passed) {
            let last = check.and_then(|p| p.last.clone());
            let why = format!(
                "no health check of it passed in its {} ({}): it is not promoted unchecked; \
                 without --canary-for, relaunch promote decides",
                c.promote_after.map_or_else(String::new, duration::human),
                last.as_deref().unwrap_or("none ended")
            );
            self.rollback(os, why, now);
            return;
        }
        info!(
            generation,
            "the canary served {} of new connections for {} without a crash or a failed \
             health check",
            c.percent(),
            c.promote_after.map_or_else(String::new, duration::human)
        );
        if let Err(e) = self.promote_canary(os, now) {
            self.rollback(os, format!("it could not be promoted: {e}"), now);
        }
    }

    /// `--keep-previous`: the old generation a promotion left, now idle, is
    /// frozen and kept for a rollback instead of stopped. false: it is not
    /// (no --keep-previous, a rollback, or not one whole generation).
    fn keep_previous(&mut self, now: Instant) -> bool {
        let Some(keep) = self.kept.cfg.keep_previous else {
            return false;
        };
        if self.kept.rolled_back.is_some() {
            return false;
        }
        let leaving: Vec<(i32, u64, State)> = self
            .leaving()
            .filter(|c| c.alive())
            .map(|c| (c.pid, c.generation, c.state))
            .collect();
        let Some(&(_, generation, _)) = leaving.iter().find(|l| l.2 == State::Ready) else {
            return false;
        };
        // Its stopping ones (a kept one a reload ended) go on stopping.
        let pids: Vec<i32> = leaving
            .iter()
            .filter(|l| !matches!(l.2, State::Stopping { .. }))
            .map(|l| l.0)
            .collect();
        if leaving
            .iter()
            .any(|l| l.1 != generation && !matches!(l.2, State::Stopping { .. }))
            || self.alive_pids(generation).len() != pids.len()
        {
            return false;
        }
        self.set_phase(Phase::Draining);
        info!(
            generation,
            "generation {generation} is idle: kept, frozen, for relaunch rollback for {} (its \
             memory stays in use meanwhile)",
            duration::human(keep)
        );
        // It has no connection left: frozen, it runs no timer or long
        // poll beside the serving generation.
        for pid in pids {
            self.signal(pid, Signal::SIGSTOP);
        }
        self.kept.previous = Some(Previous {
            generation,
            until: now + keep,
        });
        true
    }

    /// The rollback window ended.
    fn previous_due(&mut self, now: Instant) {
        if let Some(p) = self.kept.previous
            && p.until <= now
        {
            info!(
                generation = p.generation,
                "the rollback window of generation {} ended: stopping it", p.generation
            );
            self.end_previous(now);
        }
    }

    /// The kept generation is stopped: the stop signal waits until it is
    /// thawed.
    fn end_previous(&mut self, now: Instant) {
        let Some(p) = self.kept.previous.take() else {
            return;
        };
        for pid in self.alive_pids(p.generation) {
            self.stop_child(pid, now);
            self.signal(pid, Signal::SIGCONT);
        }
    }

    /// `relaunch rollback` while a generation is kept: thawed, it takes
    /// every new connection at once (its sockets stayed in the group), and
    /// the serving generation drains and stops, as a rolled-back canary.
    fn rollback_to_previous(&mut self, os: &mut impl Spawner, to: ReplyId, now: Instant) {
        let Some(p) = self.kept.previous else {
            return;
        };
        let (back, newer) = (p.generation, self.kept.serving);
        let pids = self.alive_pids(back);
        for &pid in &pids {
            self.signal(pid, Signal::SIGCONT);
        }
        if let Err(e) = os.steer(back) {
            for &pid in &pids {
                self.signal(pid, Signal::SIGSTOP);
            }
            let message = format!(
                "cannot send new connections back to generation {back} ({e}); generation \
                 {newer} keeps serving, and generation {back} stays kept"
            );
            error!(generation = back, "{message}");
            self.out.push(Effect::Reply {
                to,
                response: Response::Error { message },
            });
            return;
        }
        let why = format!("relaunch rollback to the kept generation {back}");
        warn!(
            generation = newer,
            "rolling back generation {newer}: generation {back} (pids {pids:?}) is thawed and \
             takes every new connection again, and generation {newer} finishes what it \
             accepted, then stops"
        );
        self.kept.previous = None;
        self.kept.serving = back;
        self.kept.slots = vec![Slot::default(); self.kept.cfg.workers];
        let timeout = self.kept.cfg.drain.unwrap_or_default();
        self.kept.reload = Some(Reload {
            generation: newer,
            phase: Phase::Emptying {
                until: now + timeout,
                settle: now + DRAIN_SETTLE,
                ending: false,
            },
            own: true,
            canary: None,
        });
        self.kept.rolled_back = Some(why);
        self.drain = DrainWatch::default();
        self.waiters.push((newer, to));
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(r) = &mut self.kept.reload {
            r.phase = phase;
        }
    }

    /// The drain timeout.
    fn drain_due(&mut self, now: Instant) {
        let Some((generation, until, settle, ending)) = self.emptying() else {
            return;
        };
        if until > now {
            return;
        }
        let busy = match self.drain.last {
            Some(b) => format!(": {b}"),
            None => String::new(),
        };
        // Where it cannot be measured, its connections cannot be found.
        if !ending && !self.drain.failed {
            // As nginx ends keep-alive connections at a reload: each server
            // answers the request it has, then reads the end of its client.
            warn!(
                generation,
                "the drain timeout passed and the old generation is still busy{busy}; its \
                 connections stop reading (each answers what it has, then sees its client \
                 gone), and it is stopped once idle, or in {}",
                duration::human(END_GRACE)
            );
            self.set_phase(Phase::Emptying {
                until: now + END_GRACE,
                settle,
                ending: true,
            });
            return;
        }
        warn!(
            generation,
            "the old generation is still busy{busy} after its connections stopped reading; \
             stopping it (what it still serves is cut)"
        );
        self.count(Count::Drain {
            idle: false,
            cut: self.drain.last.map_or(0, |b| b.open),
        });
        self.end_drain(now);
    }

    /// The generations to probe for readiness now (`--ready http:`, `tcp`,
    /// `exec:`): a reload's while it starts, and the serving one while a
    /// child of it starts (the first generation, a restarted worker), each
    /// by its own probe.
    fn to_probe(&self) -> Vec<u64> {
        if self.kept.cfg.ready_probe.is_none()
            || self.kept.life.stopping()
            || self.demand == Demand::IdleStopping
        {
            return Vec::new();
        }
        let starting = |generation: u64| {
            self.kept.children.iter().any(|c| {
                c.generation == generation && c.alive() && matches!(c.state, State::Starting { .. })
            })
        };
        let mut found: Vec<u64> = self.pending().into_iter().collect();
        if !found.contains(&self.kept.serving) {
            found.push(self.kept.serving);
        }
        found.retain(|&g| starting(g));
        found
    }

    /// What to probe now, and whether for its health: the generations that
    /// start ([`Supervisor::to_probe`]); with `--health`, a canary
    /// throughout (its failures decide its fate), and the serving one
    /// while it simply serves, beside a canary too (not while a reload, a
    /// backoff or a restarted worker's start is under way).
    fn probes_wanted(&self) -> Vec<(u64, bool)> {
        let mut want: Vec<(u64, bool)> = self.to_probe().into_iter().map(|g| (g, false)).collect();
        if self.kept.cfg.health.is_none() {
            return want;
        }
        if let Some((generation, ..)) = self.canary() {
            want.push((generation, true));
        }
        let serving = self.kept.serving;
        let simply = match self.doing() {
            Doing::Serving => true,
            Doing::Canary => self.kept.slots.iter().all(|s| s.restart_at.is_none()),
            _ => false,
        };
        if simply && self.others_serve(None) && !want.iter().any(|&(g, _)| g == serving) {
            want.push((serving, true));
        }
        want
    }

    /// Keeps the probes of [`Supervisor::probes_wanted`] going: one at a
    /// time for each generation, [`PROBE_EVERY`] apart for readiness,
    /// `--health-every` for health. Probes no longer wanted (ready,
    /// failed, gone) end.
    fn probe_due(&mut self, os: &mut impl Spawner, now: Instant) {
        let want = self.probes_wanted();
        let mut ended = Vec::new();
        self.probing.retain(|p| {
            let keep = want.contains(&(p.generation, p.health));
            if !keep {
                ended.push(p.generation);
            }
            keep
        });
        for &generation in &ended {
            self.out.push(Effect::EndProbe { generation });
        }
        for (generation, health) in want {
            // The driver ends every probe of a generation: one that
            // replaces an ended one starts next turn, once that end is
            // carried out.
            let wait = ended.contains(&generation);
            self.probe_one(os, generation, health, wait, now);
        }
    }

    /// Starts the next probe of `generation` when it is due (not before
    /// the next turn if `wait`), or fails the one that runs past its limit.
    fn probe_one(
        &mut self,
        os: &mut impl Spawner,
        generation: u64,
        health: bool,
        wait: bool,
        now: Instant,
    ) {
        // A canary's first check is at once: its window may be short.
        let canary = self.canary().is_some_and(|(g, ..)| g == generation);
        let (probe, first) = match (health, &self.kept.cfg.health) {
            (true, Some(h)) if canary => (h.probe.clone(), now),
            (true, Some(h)) => (h.probe.clone(), now + h.every),
            _ => match &self.kept.cfg.ready_probe {
                Some(p) => (p.clone(), now),
                None => return,
            },
        };
        let i = match self.probing.iter().position(|p| p.generation == generation) {
            Some(i) => i,
            None => {
                self.probing.push(Probing {
                    generation,
                    health,
                    failures: 0,
                    due: Some(first),
                    number: 0,
                    started: None,
                    last: None,
                    passed: false,
                });
                self.probing.len() - 1
            }
        };
        let p = &self.probing[i];
        // One that runs past its limit failed; the next starts as after any.
        if p.due.is_none() && p.started.is_some_and(|t| now >= t + PROBE_LIMIT) {
            let number = p.number;
            self.out.push(Effect::EndProbe { generation });
            let why = format!("no answer within {}", duration::human(PROBE_LIMIT));
            self.on_probed(os, number, Err(why), now);
            return;
        }
        if wait || p.due.is_none_or(|t| t > now) {
            return;
        }
        let pgids = self.alive_pids(generation);
        let alone = !self
            .kept
            .children
            .iter()
            .any(|c| c.alive() && c.generation != generation);
        let p = &mut self.probing[i];
        self.probes_started += 1;
        p.number = self.probes_started;
        p.due = None;
        p.started = Some(now);
        // One the app keeps from starting failed. One relaunch cannot
        // start is a readiness probe's "not ready yet", and why; it is no
        // failure of a health check.
        let (number, health) = (p.number, p.health);
        match os.probe(number, generation, &probe, &pgids, alone) {
            Ok(()) => {}
            Err(NotProbed::Own(e)) if health => self.unchecked(i, e, now),
            // For readiness either is not ready yet, and why.
            Err(NotProbed::Failed(e) | NotProbed::Own(e)) => {
                self.on_probed(os, number, Err(format!("cannot probe it: {e}")), now)
            }
        }
    }

    /// The health check of `probing[i]` could not start, for a cause of
    /// relaunch's own: said (once while it lasts), not counted; the next
    /// check is a period on.
    fn unchecked(&mut self, i: usize, why: String, now: Instant) {
        let (Some(h), p) = (&self.kept.cfg.health, &mut self.probing[i]) else {
            return;
        };
        let generation = p.generation;
        p.due = Some(now + h.every);
        let why = format!("relaunch cannot check it: {why}");
        if p.last.as_ref() != Some(&why) {
            warn!(
                generation,
                "{why}; not counted as a failed health check (the app is not at fault)"
            );
        }
        p.last = Some(why);
    }

    /// Probe `number` ended: healthy makes its generation's starting
    /// children ready (a reload's is then promoted); anything else is
    /// probed again. The answer of a probe that does not run (ended
    /// before it answered) is of another time, and counts for nothing.
    fn on_probed(
        &mut self,
        os: &mut impl Spawner,
        number: u64,
        result: Result<String, String>,
        now: Instant,
    ) {
        let Some(i) = self
            .probing
            .iter()
            .position(|p| p.number == number && p.due.is_none())
        else {
            return;
        };
        let p = &mut self.probing[i];
        let generation = p.generation;
        if p.health {
            self.on_health(os, i, result, now);
            return;
        }
        p.due = Some(now + PROBE_EVERY);
        match result {
            Ok(how) => {
                p.last = Some(how.clone());
                let starting: Vec<i32> = self
                    .kept
                    .children
                    .iter()
                    .filter(|c| c.generation == generation && c.alive())
                    .filter(|c| matches!(c.state, State::Starting { .. }))
                    .map(|c| c.pid)
                    .collect();
                for pid in starting {
                    self.mark_ready(os, pid, &how, now);
                }
            }
            Err(why) => {
                if p.last.as_ref() != Some(&why) {
                    info!(generation, "not healthy yet: {why}");
                }
                p.last = Some(why);
            }
        }
    }

    /// The health check of `probing[i]` ended. `--health-failures`
    /// in a row count as a crash: its workers are killed, and restart as
    /// after any crash (the restart policy, the backoff).
    fn on_health(
        &mut self,
        os: &mut impl Spawner,
        i: usize,
        result: Result<String, String>,
        now: Instant,
    ) {
        let (Some(h), p) = (&self.kept.cfg.health, &mut self.probing[i]) else {
            return;
        };
        let generation = p.generation;
        p.due = Some(now + h.every);
        let why = match result {
            Ok(how) => {
                if p.failures > 0 {
                    info!(generation, "healthy again: {how}");
                }
                p.failures = 0;
                p.passed = true;
                p.last = Some(how);
                return;
            }
            Err(why) => why,
        };
        p.failures += 1;
        let (n, limit) = (p.failures, h.failures);
        p.last = Some(why.clone());
        warn!(
            generation,
            "health check failed ({n} of {limit} in a row): {why}"
        );
        if n < limit {
            return;
        }
        p.failures = 0;
        if self.canary().is_some_and(|(g, ..)| g == generation) {
            let why = format!("it failed {n} health checks in a row (the last: {why})");
            self.rollback(os, why, now);
            return;
        }
        error!(
            generation,
            "generation {generation} failed {n} health checks in a row (the last: {why}): \
             killing its workers, which restart as after a crash"
        );
        let pids: Vec<i32> = self
            .kept
            .children
            .iter()
            .filter(|c| c.generation == generation && c.alive())
            .filter(|c| !matches!(c.state, State::Stopping { .. }))
            .map(|c| c.pid)
            .collect();
        for pid in pids {
            self.signal(pid, Signal::SIGKILL);
        }
    }

    /// What the probes of `generation` found last, for a message; None
    /// without `--ready http:`, `tcp` or `exec:`.
    fn probe_said(&self, generation: u64) -> Option<String> {
        let probe = self.kept.cfg.ready_probe.as_ref()?;
        let last = self
            .probing
            .iter()
            .find(|p| p.generation == generation && !p.health)
            .and_then(|p| p.last.clone());
        Some(last.unwrap_or_else(|| format!("no --ready {probe} probe of it has ended yet")))
    }

    fn on_drained(&mut self, generation: u64, busy: Result<Busy, String>, now: Instant) {
        let Some((g, _, settle, ending)) = self.emptying() else {
            return;
        };
        if g != generation {
            return;
        }
        match busy {
            Ok(b) => {
                self.drain.last = Some(b);
                if b.idle() && settle <= now {
                    info!(generation, "the old generation is idle: stopping it");
                    // After the timeout it is idle because its reads ended.
                    self.count(Count::Drain {
                        idle: !ending,
                        cut: 0,
                    });
                    if !self.keep_previous(now) {
                        self.end_drain(now);
                    }
                }
            }
            Err(e) => {
                if !self.drain.failed {
                    warn!(
                        generation,
                        "cannot see whether the old generation is idle ({e}); it is stopped \
                         at the drain timeout"
                    );
                }
                self.drain.failed = true;
            }
        }
    }

    fn end_drain(&mut self, now: Instant) {
        self.set_phase(Phase::Draining);
        let pids: Vec<i32> = self.leaving().map(|c| c.pid).collect();
        for pid in pids {
            self.stop_child(pid, now);
        }
    }

    /// Ends the reload in progress with `reason`; a new generation that is
    /// still starting is stopped, one that already serves stays.
    fn fail_reload(
        &mut self,
        os: &mut impl Spawner,
        why: ReloadResult,
        reason: String,
        now: Instant,
    ) {
        let Some(Reload {
            generation, phase, ..
        }) = self.kept.reload
        else {
            return;
        };
        self.count(Count::Reload(why));
        if let Phase::Starting { .. } = phase {
            warn!(
                generation,
                "reload failed: {reason}; generation {} keeps serving", self.kept.serving
            );
            let pids: Vec<i32> = self
                .kept
                .children
                .iter()
                .filter(|c| c.generation == generation)
                .map(|c| c.pid)
                .collect();
            for pid in pids {
                self.stop_child(pid, now);
            }
        }
        // Nothing of it may ever have run (spawn failed): nobody else would say so.
        self.released(generation);
        self.finish_reload(os, generation, Err(reason), now);
    }

    fn finish_reload(
        &mut self,
        os: &mut impl Spawner,
        generation: u64,
        result: Result<Vec<i32>, String>,
        now: Instant,
    ) {
        self.kept.reload = None;
        let rolled_back = self.kept.rolled_back.take().is_some();
        self.kept.last_reload = Some(LastReload {
            generation,
            ok: result.is_ok(),
            message: match &result {
                Ok(pids) => format!("generation {generation} serves (pids {pids:?})"),
                Err(e) => e.clone(),
            },
            at: now,
        });
        let (answered, waiting) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(g, _)| *g <= generation);
        self.waiters = waiting;
        for (_, to) in answered {
            let response = match &result {
                Ok(pids) => Response::Reloaded {
                    generation,
                    pids: pids.clone(),
                },
                Err(reason) if rolled_back => Response::RolledBack {
                    generation,
                    serving: self.kept.serving,
                    reason: reason.clone(),
                },
                Err(reason) => Response::ReloadFailed {
                    generation,
                    reason: reason.clone(),
                },
            };
            self.out.push(Effect::Reply { to, response });
        }
        // READY=1 ends RELOADING=1 whatever the outcome: something serves.
        if std::mem::take(&mut self.kept.reloading) {
            self.tell(Tell::Ready(match &result {
                Ok(pids) => status_line(generation, pids),
                Err(reason) => format!("reload to generation {generation} failed: {reason}"),
            }));
        }
        if std::mem::take(&mut self.kept.reload_queued) && !self.kept.life.stopping() {
            let _ = self.request_reload(os, None, now);
        }
    }

    fn stop_child(&mut self, pid: i32, now: Instant) {
        let sig = self.kept.cfg.stop_signal;
        let kill_at = now + self.kept.cfg.stop_timeout;
        if let Some(c) = self.kept.children.iter_mut().find(|c| c.pid == pid)
            && !matches!(c.state, State::Stopping { .. })
        {
            c.state = State::Stopping {
                kill_at,
                killed: false,
            };
            // What escaped it is no longer its to keep.
            self.sweeps_asked += 1;
            info!(
                pid,
                generation = c.generation,
                worker = c.worker,
                "sending {}",
                sig.as_str()
            );
            self.signal(pid, sig);
        }
    }
}

/// The canary a `relaunch reload --canary` asks for, checked (the request
/// comes from outside).
fn canary_of(percent: f64, promote_after_ms: Option<u64>) -> Result<Canary, String> {
    let range = control::CANARY_PERCENT;
    if !range.contains(&percent) {
        return Err(format!(
            "a canary's share must be from {}% to {}% (got {percent}%): 100% is a reload, 0% \
             is none",
            range.start(),
            range.end()
        ));
    }
    let promote_after = promote_after_ms.map(Duration::from_millis);
    if promote_after.is_some_and(|d| d > MAX_CANARY_FOR) {
        return Err(format!(
            "--canary-for may be at most {} (leave it out to promote by hand)",
            duration::human(MAX_CANARY_FOR)
        ));
    }
    Ok(Canary {
        share: percent / 100.0,
        promote_after,
    })
}

fn status_line(generation: u64, pids: &[i32]) -> String {
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let s = if pids.len() == 1 { "" } else { "s" };
    format!(
        "serving: generation {generation}, pid{s} {}",
        pids.join(", ")
    )
}

#[cfg(test)]
mod tests;
