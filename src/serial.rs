//! Serde helpers for what travels through an upgrade's exec: instants and
//! signals.

/// Instants as CLOCK_MONOTONIC microseconds, which survive execve.
pub mod mono {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn now_usec() -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
    }

    pub fn to_usec(t: Instant) -> i64 {
        let now = Instant::now();
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4);
        match t.checked_duration_since(now) {
            Some(ahead) => now_usec().saturating_add(us(ahead)),
            None => now_usec().saturating_sub(us(now - t)),
        }
    }

    pub fn from_usec(v: i64) -> Instant {
        let now = Instant::now();
        let d = v.saturating_sub(now_usec());
        if d >= 0 {
            now + Duration::from_micros(d as u64)
        } else {
            now.checked_sub(Duration::from_micros(d.unsigned_abs()))
                .unwrap_or(now)
        }
    }

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        to_usec(*t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        i64::deserialize(d).map(from_usec)
    }

    /// A (generation, instant) pair, as `(u64, µs)`.
    pub mod opt_pair {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<(u64, Instant)>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            t.map(|(g, t)| (g, to_usec(t))).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<(u64, Instant)>, D::Error> {
            Option::<(u64, i64)>::deserialize(d).map(|v| v.map(|(g, t)| (g, from_usec(t))))
        }
    }

    pub mod opt {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
            t.map(to_usec).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
            Option::<i64>::deserialize(d).map(|v| v.map(from_usec))
        }
    }
}

/// Signals as their numbers.
pub mod signal {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        (*sig as i32).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(d)?;
        Signal::try_from(n).map_err(|_| serde::de::Error::custom(format!("no signal {n}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::mono;

    #[test]
    fn instants_survive_the_trip() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_secs(7),
            now.checked_sub(Duration::from_secs(3)).unwrap_or(now),
        ] {
            let back = mono::from_usec(mono::to_usec(t));
            let diff = if back > t { back - t } else { t - back };
            assert!(diff < Duration::from_millis(5), "{diff:?}");
        }
    }
}
