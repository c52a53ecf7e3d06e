//! Restart pacing: when a crash is part of a loop, exponential backoff with
//! jitter, and when to give up.
//!
//! The rule: a restart waits only when the child looks like a crash loop.
//! - A child that was ready is restarted at once, however briefly it served
//!   (connections are waiting in the backlog): its start time already paces
//!   the restarts. Only when more than [`BURST`] such crashes come within
//!   [`BURST_WINDOW`] is the next one a quick failure. One that was ready for
//!   at least [`SERVED_FOR`] also starts the count of quick failures over.
//! - A child that exited before it was ever ready is a quick failure. Each
//!   one in a row doubles the wait before the next start, from [`FIRST`] up
//!   to [`MAX`], with ±20% jitter so a fleet does not restart in lockstep.
//! - A child that never became ready (readiness unseen) but lived
//!   [`STABLE_AFTER`] is judged by its lifetime: not a quick failure.
//!
//! After [`GIVE_UP_AFTER`] quick failures in a row (about 50 s of trying:
//! long enough to ride out a database restart, short enough to surface a
//! broken deploy) relaunch gives up.

use std::time::{Duration, Instant};

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(30);
pub const SERVED_FOR: Duration = Duration::from_secs(1);
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
pub const GIVE_UP_AFTER: u32 = 10;
/// Crashes after ready within [`BURST_WINDOW`] that restart at once. A server
/// killed every 2.5 s (OOM under a load spike) stays well inside it; one that
/// dies at its first request, several times a second, does not.
pub const BURST: u32 = 3;
pub const BURST_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    /// Quick failures in a row.
    quick: u32,
    /// The latest crashes after ready, oldest first: at most [`BURST`] + 1.
    #[serde(default)]
    crashes: Vec<At>,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct At(#[serde(with = "crate::serial::mono")] Instant);

#[derive(Debug, PartialEq)]
pub enum Next {
    RestartAfter(Duration),
    GiveUp,
}

impl Backoff {
    /// Records an exit at `now` after `lived`; `ready_for` is how long it had
    /// been ready (None: never). `jitter` in [0, 1) comes from the caller.
    pub fn exited(
        &mut self,
        now: Instant,
        lived: Duration,
        ready_for: Option<Duration>,
        jitter: f64,
    ) -> Next {
        let quick = match ready_for {
            Some(ready) => {
                self.crashes
                    .retain(|t| now.saturating_duration_since(t.0) < BURST_WINDOW);
                if self.crashes.len() > BURST as usize {
                    self.crashes.remove(0);
                }
                self.crashes.push(At(now));
                if self.crashes.len() <= BURST as usize {
                    if ready >= SERVED_FOR {
                        self.quick = 0;
                    }
                    return Next::RestartAfter(Duration::ZERO);
                }
                true
            }
            None => lived < STABLE_AFTER,
        };
        if !quick {
            self.quick = 0;
            return Next::RestartAfter(Duration::ZERO);
        }
        self.quick += 1;
        if self.quick >= GIVE_UP_AFTER {
            return Next::GiveUp;
        }
        let base = FIRST.saturating_mul(1 << (self.quick - 1).min(16)).min(MAX);
        Next::RestartAfter(base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(10);

    /// Exits before ready: the clock does not matter.
    fn unready(b: &mut Backoff, lived: Duration, jitter: f64) -> Next {
        b.exited(Instant::now(), lived, None, jitter)
    }

    #[test]
    fn doubles_then_gives_up() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..9).map(|_| unready(&mut b, QUICK, 0.5)).collect();
        let ms = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600];
        assert_eq!(
            waits,
            ms.map(|ms| Next::RestartAfter(Duration::from_millis(ms)))
        );
        assert_eq!(unready(&mut b, QUICK, 0.5), Next::GiveUp);
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let mut b = Backoff::default();
        assert_eq!(
            unready(&mut b, QUICK, 0.0),
            Next::RestartAfter(Duration::from_millis(80))
        );
        let mut b = Backoff::default();
        assert_eq!(
            unready(&mut b, QUICK, 1.0),
            Next::RestartAfter(Duration::from_millis(120))
        );
        // Jitter never pushes past MAX.
        let mut b = Backoff {
            quick: 8,
            ..Backoff::default()
        };
        assert_eq!(unready(&mut b, QUICK, 1.0), Next::RestartAfter(MAX));
        // Not quick (lived long): resets instead of giving up.
        let mut b = Backoff {
            quick: 12,
            ..Backoff::default()
        };
        assert_eq!(
            unready(&mut b, Duration::from_secs(60), 0.5),
            Next::RestartAfter(Duration::ZERO)
        );
    }

    #[test]
    fn cap_is_thirty_seconds() {
        let b = Backoff {
            quick: 20,
            ..Backoff::default()
        };
        let base = FIRST.saturating_mul(1 << (b.quick - 1).min(16)).min(MAX);
        assert_eq!(base, MAX);
    }

    #[test]
    fn stable_run_resets() {
        let mut b = Backoff::default();
        for _ in 0..3 {
            unready(&mut b, QUICK, 0.5);
        }
        assert_eq!(
            unready(&mut b, STABLE_AFTER, 0.5),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(b.quick, 0);
        assert_eq!(
            unready(&mut b, QUICK, 0.5),
            Next::RestartAfter(FIRST),
            "the next quick failure starts from the first wait again"
        );
    }

    #[test]
    fn served_means_no_wait_and_a_fresh_count() {
        let mut b = Backoff::default();
        let mut now = Instant::now();
        for _ in 0..5 {
            now += Duration::from_secs(3);
            assert_eq!(
                b.exited(now, QUICK, Some(SERVED_FOR), 0.5),
                Next::RestartAfter(Duration::ZERO)
            );
        }
        for _ in 0..3 {
            unready(&mut b, QUICK, 0.5);
        }
        now += Duration::from_secs(3);
        assert_eq!(
            b.exited(
                now,
                Duration::from_secs(3),
                Some(Duration::from_secs(2)),
                0.5
            ),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(b.quick, 0);
    }

    /// Served only 0.5 s, but ready: at once, as long as the crashes are
    /// not a burst; the count of quick failures is neither raised nor reset.
    #[test]
    fn a_crash_after_ready_restarts_at_once_unless_in_a_burst() {
        let mut b = Backoff::default();
        unready(&mut b, QUICK, 0.5);
        let mut now = Instant::now();
        let brief = Some(Duration::from_millis(500));
        for _ in 0..10 {
            now += Duration::from_millis(2000);
            assert_eq!(
                b.exited(now, Duration::from_secs(2), brief, 0.5),
                Next::RestartAfter(Duration::ZERO)
            );
        }
        assert_eq!(b.quick, 1);
        // Four within the window: the fourth is a quick failure.
        now += BURST_WINDOW;
        for _ in 0..BURST {
            now += Duration::from_millis(100);
            b.exited(now, QUICK, brief, 0.5);
        }
        now += Duration::from_millis(100);
        assert_eq!(
            b.exited(now, QUICK, brief, 0.5),
            Next::RestartAfter(FIRST * 2)
        );
        assert!(b.crashes.len() <= BURST as usize + 1);
    }

    /// A long start, then a crash right after READY=1, in a fast loop: it
    /// backs off after the burst and, the waits growing, gives up in the end.
    #[test]
    fn a_fast_crash_loop_after_ready_backs_off_then_gives_up() {
        let mut b = Backoff::default();
        let mut now = Instant::now();
        let soon = Some(Duration::from_millis(50));
        let mut waits = Vec::new();
        loop {
            now += Duration::from_millis(100);
            match b.exited(now, Duration::from_millis(100), soon, 0.5) {
                Next::RestartAfter(d) => {
                    waits.push(d.as_millis());
                    now += d;
                }
                Next::GiveUp => break,
            }
        }
        assert_eq!(waits[..6], [0, 0, 0, 100, 200, 400]);
    }
}
