//! Restart pacing: exponential backoff with jitter, and when to give up.
//!
//! A start that lives less than [`STABLE_AFTER`] is a quick failure. Each one
//! doubles the wait before the next start, from [`FIRST`] up to [`MAX`], with
//! ±20% jitter so a fleet does not restart in lockstep. A child that stays up
//! for [`STABLE_AFTER`] resets the count. After [`GIVE_UP_AFTER`] quick
//! failures in a row (about 50 s of trying: long enough to ride out a
//! database restart, short enough to surface a broken deploy) relaunch gives
//! up.

use std::time::Duration;

pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(30);
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
pub const GIVE_UP_AFTER: u32 = 10;

#[derive(Debug, Default, Clone)]
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
    /// Records an exit after `lived`; `jitter` in [0, 1) comes from the caller.
    pub fn exited(&mut self, lived: Duration, jitter: f64) -> Next {
        if lived >= STABLE_AFTER {
            self.quick = 0;
        }
        self.quick += 1;
        if self.quick >= GIVE_UP_AFTER && lived < STABLE_AFTER {
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
        let waits: Vec<_> = (0..9).map(|_| b.exited(QUICK, 0.5)).collect();
        let ms = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600];
        assert_eq!(
            waits,
            ms.map(|ms| Next::RestartAfter(Duration::from_millis(ms)))
        );
        assert_eq!(b.exited(QUICK, 0.5), Next::GiveUp);
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let mut b = Backoff::default();
        assert_eq!(
            b.exited(QUICK, 0.0),
            Next::RestartAfter(Duration::from_millis(80))
        );
        let mut b = Backoff::default();
        assert_eq!(
            b.exited(QUICK, 1.0),
            Next::RestartAfter(Duration::from_millis(120))
        );
        // Jitter never pushes past MAX.
        let mut b = Backoff { quick: 8 };
        assert_eq!(b.exited(QUICK, 1.0), Next::RestartAfter(MAX));
        // Not quick (lived long): resets instead of giving up.
        let mut b = Backoff { quick: 12 };
        assert_eq!(
            b.exited(Duration::from_secs(60), 0.5),
            Next::RestartAfter(FIRST)
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
            b.exited(QUICK, 0.5);
        }
        assert_eq!(
            b.exited(STABLE_AFTER, 0.5),
            Next::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(b.quick, 1);
    }
}
