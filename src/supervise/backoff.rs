//! Restart pacing: when a crash is part of a loop, exponential backoff with
//! jitter, and when to give up.
//!
//! The rule: a restart waits only when the child looks like a crash loop.
//! - A child that was ready for at least [`SERVED_FOR`] served: its exit is
//!   not a loop. It is restarted at once (connections are waiting in the
//!   backlog) and the count of quick failures starts over.
//! - A child that exited within [`SERVED_FOR`] of becoming ready, or before
//!   it was ever ready, is a quick failure. Each one in a row doubles the
//!   wait before the next start, from [`FIRST`] up to [`MAX`], with ±20%
//!   jitter so a fleet does not restart in lockstep.
//! - A child that never became ready (readiness unseen) but lived
//!   [`STABLE_AFTER`] is judged by its lifetime: not a quick failure.
//!
//! After [`GIVE_UP_AFTER`] quick failures in a row (about 50 s of trying:
//! long enough to ride out a database restart, short enough to surface a
//! broken deploy) relaunch gives up. A server that crashes after serving
//! restarts at most once per [`SERVED_FOR`] plus its start time, so it
//! never needs a wait of its own.

use std::time::Duration;

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(30);
pub const SERVED_FOR: Duration = Duration::from_secs(1);
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
pub const GIVE_UP_AFTER: u32 = 10;

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Backoff {
    /// Quick failures in a row.
    quick: u32,
}

#[derive(Debug, PartialEq)]
pub enum Next {
    RestartAfter(Duration),
    GiveUp,
}

impl Backoff {
    /// Records an exit after `lived`; `ready_for` is how long it had been
    /// ready (None: never). `jitter` in [0, 1) comes from the caller.
    pub fn exited(&mut self, lived: Duration, ready_for: Option<Duration>, jitter: f64) -> Next {
        let quick = match ready_for {
            Some(ready) => ready < SERVED_FOR,
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

    #[test]
    fn doubles_then_gives_up() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..9).map(|_| b.exited(QUICK, None, 0.5)).collect();
        let ms = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600];
        assert_eq!(
            waits,
            ms.map(|ms| Next::RestartAfter(Duration::from_millis(ms)))
        );
        assert_eq!(b.exited(QUICK, None, 0.5), Next::GiveUp);
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let mut b = Backoff::default();
        assert_eq!(
            b.exited(QUICK, None, 0.0),
            Next::RestartAfter(Duration::from_millis(80))
        );
        let mut b = Backoff::default();
        assert_eq!(
            b.exited(QUICK, None, 1.0),
            Next::RestartAfter(Duration::from_millis(120))
        );
        // Jitter never pushes past MAX.
        let mut b = Backoff { quick: 8 };
        assert_eq!(b.exited(QUICK, None, 1.0), Next::RestartAfter(MAX));
        // Not quick (lived long): resets instead of giving up.
        let mut b = Backoff { quick: 12 };
        assert_eq!(
            b.exited(Duration::from_secs(60), None, 0.5),
            Next::RestartAfter(Duration::ZERO)
        );
    }

    #[test]
    fn cap_is_thirty_seconds() {
        let b = Backoff { quick: 20 };
        let base = FIRST.saturating_mul(1 << (b.quick - 1).min(16)).min(MAX);
        assert_eq!(base, MAX);
    }

    #[test]
    fn stable_run_resets() {
        let mut b = Backoff::default();
        for _ in 0..3 {
            b.exited(QUICK, None, 0.5);
        }
        assert_eq!(
            b.exited(STABLE_AFTER, None, 0.5),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(b.quick, 0);
        assert_eq!(
            b.exited(QUICK, None, 0.5),
            Next::RestartAfter(FIRST),
            "the next quick failure starts from the first wait again"
        );
    }

    #[test]
    fn served_means_no_wait_and_a_fresh_count() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            assert_eq!(
                b.exited(QUICK, Some(SERVED_FOR), 0.5),
                Next::RestartAfter(Duration::ZERO)
            );
        }
        for _ in 0..3 {
            b.exited(QUICK, None, 0.5);
        }
        assert_eq!(
            b.exited(Duration::from_secs(3), Some(Duration::from_secs(2)), 0.5),
            Next::RestartAfter(Duration::ZERO)
        );
        assert_eq!(b.quick, 0);
    }

    #[test]
    fn dying_soon_after_ready_is_quick_however_long_the_start() {
        let mut b = Backoff::default();
        let soon = Some(Duration::from_millis(50));
        // A 20 s start, then a crash right after READY=1: a loop all the same.
        let waits: Vec<_> = (0..3)
            .map(|_| b.exited(Duration::from_secs(20), soon, 0.5))
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400].map(|ms| Next::RestartAfter(Duration::from_millis(ms)))
        );
        for _ in 3..GIVE_UP_AFTER - 1 {
            b.exited(Duration::from_secs(20), soon, 0.5);
        }
        assert_eq!(b.exited(Duration::from_secs(20), soon, 0.5), Next::GiveUp);
    }
}
