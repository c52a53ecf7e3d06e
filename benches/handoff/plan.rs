//! How long and how hard each mode runs. One place, so docs/bench.md can
//! quote it and `--quick` stays under 90 s on 2 cores.

use std::time::Duration;

/// The window in which relaunch must not wake up once.
pub const IDLE_TARGET_SECS: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    /// Server start-up delays; every scenario runs once per delay.
    pub delays: Vec<f64>,
    /// Concurrent client connections (closed loop).
    pub conns: usize,
    /// Load before the first restart, seconds.
    pub warmup: f64,
    /// Load between one restart finishing and the next one starting.
    pub gap: f64,
    /// Load after the last restart.
    pub tail: f64,
    /// relaunch-crash kills this often, kill to kill, instead of waiting
    /// `gap` after each restart: at a 1.5 s start the replacement has served
    /// about 1 s when it is killed.
    pub crash_every: f64,
    pub restarts: usize,
    /// One request's whole budget: connect, send, read the answer.
    pub timeout: Duration,
    /// How long relaunch is watched while idle.
    pub idle: f64,
    /// Throughput: rounds of (under relaunch, self-bound), seconds each.
    pub tput_rounds: usize,
    pub tput_secs: f64,
    pub scale_listeners: usize,
    pub scale_workers: usize,
    pub scale_reloads: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            mode: "full",
            delays: vec![0.3, 1.5],
            conns: 8,
            warmup: 2.0,
            gap: 2.0,
            tail: 2.0,
            crash_every: 2.5,
            restarts: 5,
            timeout: Duration::from_secs(5),
            // At least the acceptance line's 30 s; the run is longer anyway.
            idle: IDLE_TARGET_SECS,
            tput_rounds: 6,
            tput_secs: 5.0,
            scale_listeners: 256,
            scale_workers: 32,
            scale_reloads: 1000,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            mode: "quick",
            delays: vec![0.3],
            warmup: 1.0,
            gap: 1.0,
            tail: 1.0,
            restarts: 2,
            tput_rounds: 4,
            tput_secs: 2.0,
            scale_reloads: 20,
            ..Plan::full()
        }
    }

    pub fn smoke() -> Plan {
        Plan {
            mode: "smoke",
            delays: vec![0.3],
            conns: 4,
            warmup: 0.3,
            gap: 0.3,
            tail: 0.3,
            crash_every: 1.0,
            restarts: 1,
            idle: 1.0,
            tput_rounds: 1,
            tput_secs: 0.5,
            scale_listeners: 8,
            scale_workers: 2,
            scale_reloads: 2,
            ..Plan::full()
        }
    }
}
