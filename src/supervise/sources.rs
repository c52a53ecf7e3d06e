//! The runtime's event sources, as pieces that each own their timer or
//! task. The runtime arms them every turn from the core's [`Wants`] (an
//! unarmed source is pending for ever, as tableflip turns a source off by
//! setting its channel to nil) and waits for whichever is ready first.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::{Error, Result};
use crate::sockets::Listener;

/// What the core wants of the runtime this turn (see
/// `Supervisor::wants`): each source arms or disarms itself from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wants {
    /// An [`Event::Timer`](super::supervisor::Event::Timer) then.
    pub deadline: Option<Instant>,
    /// A generation is starting: scan /proc for readiness.
    pub scan: bool,
    /// Groups whose leader exited, or escaped processes, to check on.
    pub group_check: bool,
    /// No child runs: watch the listeners for the connection that starts one.
    pub listeners: bool,
    /// `--idle-stop`: measure the listeners this often, and also at
    /// `idle_stop_due`.
    pub idle_probe: Option<Duration>,
    pub idle_stop_due: Option<Instant>,
    /// A sweep for escaped processes, by its number.
    pub sweep: Option<u64>,
    /// An old generation drains: measure it, for the reload of this
    /// generation, whose older ones are these process groups; true: its
    /// connections' reads are ended first (the drain timeout passed).
    pub drain: Option<(u64, Vec<i32>, bool)>,
    /// A canary's share is steered (to this generation): look for
    /// listeners relaunch does not own on its ports, which a share could
    /// reach (see `Event::Foreign`).
    pub guard: Option<u64>,
}

/// A tick every `period` while armed. The next tick is an absolute instant,
/// so what happens on other sources cannot push it back.
#[derive(Debug, Default)]
pub struct Every {
    next: Option<Instant>,
    period: Duration,
}

impl Every {
    /// On with this period, or off (None). A tick already due stays put.
    pub fn arm(&mut self, period: Option<Duration>, now: Instant) {
        match period {
            Some(p) => {
                self.period = p;
                self.next.get_or_insert(now + p);
            }
            None => self.next = None,
        }
    }

    /// When it ticks next, if it is on.
    pub fn due(&self) -> Option<Instant> {
        self.next
    }

    /// After a tick: the next one a period from now (a slow turn skips
    /// ticks rather than piling them up).
    pub fn ticked(&mut self, now: Instant) {
        if self.next.is_some() {
            self.next = Some(now + self.period);
        }
    }
}

/// At most one background job at a time, on the blocking pool.
pub struct Task<T>(Option<JoinHandle<T>>);

impl<T> Default for Task<T> {
    fn default() -> Self {
        Task(None)
    }
}

impl<T: Send + 'static> Task<T> {
    pub fn busy(&self) -> bool {
        self.0.is_some()
    }

    /// Starts `job` unless one runs.
    pub fn start(&mut self, job: impl FnOnce() -> T + Send + 'static) {
        if self.0.is_none() {
            self.0 = Some(tokio::task::spawn_blocking(job));
        }
    }

    /// The job's result, once; pending while none runs.
    pub async fn done(&mut self) -> Option<T> {
        match &mut self.0 {
            Some(t) => {
                let result = t.await;
                self.0 = None;
                result.ok()
            }
            None => std::future::pending().await,
        }
    }
}

pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The next message of a channel that may not exist.
pub async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Where the loop's signals come from: [`Signals`], or a test's script.
pub trait SignalFeed {
    /// The next signal taken.
    fn next(&mut self) -> impl Future<Output = Signal>;
}

impl SignalFeed for Signals {
    fn next(&mut self) -> impl Future<Output = Signal> {
        self.recv()
    }
}

/// Every signal relaunch handles; what each means is the runtime's.
const HANDLED: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The [`HANDLED`] signals as streams, taken in turn so none waits behind
/// another.
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    next: usize,
}

impl Signals {
    /// Installed before anything with a cleanup exists (socket files, the
    /// ports file) and before the first fork, so a stop during start-up is
    /// handled like any other and no child exit is missed.
    pub fn install() -> Result<Signals> {
        let streams = HANDLED
            .iter()
            .map(|&sig| {
                signal(SignalKind::from_raw(sig as i32))
                    .map(|stream| (sig, stream))
                    .map_err(|e| Error::runtime(format!("cannot install signal handlers: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Signals { streams, next: 0 })
    }

    /// The next signal taken.
    pub async fn recv(&mut self) -> Signal {
        std::future::poll_fn(|cx| {
            let n = self.streams.len();
            for i in 0..n {
                let k = (self.next + i) % n;
                if let Poll::Ready(Some(())) = self.streams[k].1.poll_recv(cx) {
                    self.next = (k + 1) % n;
                    return Poll::Ready(self.streams[k].0);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Sends again to ourselves every signal a handler took that no stream
    /// has returned yet (call with signals blocked, before an exec).
    pub fn requeue(&mut self) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let me = nix::unistd::getpid();
        for (sig, stream) in &mut self.streams {
            if let Poll::Ready(Some(())) = stream.poll_recv(&mut cx) {
                let _ = nix::sys::signal::kill(me, *sig);
            }
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

/// The listeners in the loop's epoll set, only while no child runs (once a
/// child runs its connections must wake nothing).
#[derive(Default)]
pub struct Listeners(Option<Vec<AsyncFd<Held>>>);

impl Listeners {
    pub fn watching(&self) -> bool {
        self.0.is_some()
    }

    pub fn stop(&mut self) {
        self.0 = None;
    }

    /// Puts the listeners into the epoll set (a connection already waiting
    /// shows at once). `false` when one cannot be watched: then nothing
    /// could wake us for it, so the caller starts at once instead.
    pub fn start(&mut self, listeners: &[Listener]) -> bool {
        let mut out = Vec::with_capacity(listeners.len());
        let mut ok = true;
        for l in listeners {
            let held = Held(l.socket.as_raw_fd());
            // SAFETY: the listener owns the fd and is neither closed nor
            // replaced while relaunch runs; the watches are dropped before
            // the listeners.
            match unsafe { AsyncFd::register_with_interest(held, Interest::READABLE) } {
                Ok(w) => out.push(w),
                Err(e) => {
                    let e = e.into_parts().1;
                    warn!(
                        "cannot watch {} ({}) for connections: {e}; starting the children now",
                        l.name,
                        l.address()
                    );
                    ok = false;
                }
            }
        }
        self.0 = Some(out);
        ok
    }

    /// Resolves when a watched listener has a connection or datagram
    /// waiting (or an error to show); pending when nothing is watched.
    pub async fn connection(&self) {
        let Some(watches) = self.0.as_deref().filter(|w| !w.is_empty()) else {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_keeps_its_tick_across_turns_and_stops_when_disarmed() {
        let t0 = Instant::now();
        let mut e = Every::default();
        assert_eq!(e.due(), None);
        e.arm(Some(ms(15)), t0);
        assert_eq!(e.due(), Some(t0 + ms(15)));
        // Another turn later: the tick does not move.
        e.arm(Some(ms(15)), t0 + ms(10));
        assert_eq!(e.due(), Some(t0 + ms(15)));
        e.ticked(t0 + ms(16));
        assert_eq!(e.due(), Some(t0 + ms(31)));
        // A slow turn: one tick a period later, not a pile of missed ones.
        e.ticked(t0 + ms(100));
        assert_eq!(e.due(), Some(t0 + ms(115)));
        e.arm(None, t0 + ms(100));
        assert_eq!(e.due(), None);
        e.ticked(t0 + ms(200));
        assert_eq!(e.due(), None, "a tick after disarming arms nothing");
    }

    #[tokio::test]
    async fn a_task_runs_one_job_at_a_time_and_gives_its_result_once() {
        let mut t: Task<u32> = Task::default();
        assert!(!t.busy());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        t.start(move || {
            wait.recv().unwrap();
            1
        });
        assert!(t.busy());
        // A second start while the first runs is not a second job.
        t.start(|| 2);
        go.send(()).unwrap();
        assert_eq!(t.done().await, Some(1));
        assert!(!t.busy());
        let idle = tokio::time::timeout(ms(20), t.done()).await;
        assert!(idle.is_err(), "an idle task is pending, not done");
    }

    #[tokio::test]
    async fn unarmed_sources_are_pending() {
        let mut none: Option<mpsc::Receiver<u8>> = None;
        assert!(tokio::time::timeout(ms(20), recv(&mut none)).await.is_err());
        assert!(
            tokio::time::timeout(ms(20), sleep_until(None))
                .await
                .is_err()
        );
        let listeners = Listeners::default();
        assert!(!listeners.watching());
        assert!(
            tokio::time::timeout(ms(20), listeners.connection())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_watched_listener_wakes_on_a_waiting_connection() {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let held = Listener::adopt("http".into(), std.into(), None);
        let mut l = Listeners::default();
        assert!(l.start(std::slice::from_ref(&held)));
        assert!(l.watching());
        assert!(tokio::time::timeout(ms(20), l.connection()).await.is_err());
        let _client = std::net::TcpStream::connect(addr).unwrap();
        tokio::time::timeout(Duration::from_secs(5), l.connection())
            .await
            .expect("the waiting connection wakes the watch");
        l.stop();
        assert!(!l.watching());
    }
}
