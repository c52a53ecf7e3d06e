//! Figures from samples; pure, so the self-check covers them.
//! Latency percentiles are over answered requests: a failed request is
//! counted by its kind, not folded into the latency.

use serde::Serialize;

use crate::load::{Outcome, Sample};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    pub ok: usize,
    pub failed: usize,
    pub refused: usize,
    pub reset: usize,
    pub timeout: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Distinct pids that answered: proves the restarts happened.
    pub pids: usize,
    /// Answered requests per second over the whole scenario.
    pub ok_per_sec: f64,
}

pub fn figures(samples: &[Sample], secs: f64) -> Figures {
    let count = |o: Outcome| samples.iter().filter(|s| s.outcome == o).count();
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .map(|s| s.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut pids: Vec<u32> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let (refused, reset, timeout) = (
        count(Outcome::Refused),
        count(Outcome::Reset),
        count(Outcome::Timeout),
    );
    Figures {
        ok: lat.len(),
        failed: refused + reset + timeout,
        refused,
        reset,
        timeout,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(0.0),
        pids: pids.len(),
        ok_per_sec: if secs > 0.0 {
            lat.len() as f64 / secs
        } else {
            0.0
        },
    }
}

/// Nearest-rank percentile of sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per time bucket: the slowest and the median answered request, and the
/// failures of each kind (for the chart).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub at: f64,
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub failures: Vec<(Outcome, f64)>,
}

pub fn buckets(samples: &[Sample], secs: f64, width: f64) -> Vec<Bucket> {
    if width <= 0.0 {
        return Vec::new();
    }
    let n = (secs / width).ceil().max(1.0) as usize;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut fails: Vec<Vec<(Outcome, f64)>> = vec![Vec::new(); n];
    for s in samples {
        let i = ((s.at / width) as usize).min(n - 1);
        match s.outcome {
            Outcome::Ok => lat[i].push(s.latency_ms),
            o if !fails[i].iter().any(|(k, _)| *k == o) => fails[i].push((o, s.latency_ms)),
            _ => {}
        }
    }
    lat.into_iter()
        .zip(fails)
        .enumerate()
        .map(|(i, (mut l, failures))| {
            l.sort_by(f64::total_cmp);
            Bucket {
                at: i as f64 * width,
                max_ms: l.last().copied(),
                p50_ms: (!l.is_empty()).then(|| percentile(&l, 50.0)),
                failures,
            }
        })
        .collect()
}

pub fn self_check() -> Result<(), String> {
    let s = |at, ms, outcome, pid| Sample {
        at,
        latency_ms: ms,
        outcome,
        pid,
    };
    let samples = [
        s(0.0, 1.0, Outcome::Ok, 10),
        s(0.1, 2.0, Outcome::Ok, 10),
        s(0.2, 3.0, Outcome::Ok, 11),
        s(0.3, 100.0, Outcome::Ok, 11),
        s(0.4, 0.1, Outcome::Refused, 0),
        s(0.5, 5000.0, Outcome::Timeout, 0),
        s(1.5, 0.2, Outcome::Reset, 0),
        s(1.6, 0.2, Outcome::Reset, 0),
    ];
    let f = figures(&samples, 2.0);
    let want = Figures {
        ok: 4,
        failed: 4,
        refused: 1,
        reset: 2,
        timeout: 1,
        p50_ms: 2.0,
        p99_ms: 100.0,
        max_ms: 100.0,
        pids: 2,
        ok_per_sec: 2.0,
    };
    if f != want {
        return Err(format!("figures: got {f:?}, want {want:?}"));
    }
    if figures(&[], 1.0) != Figures::default() {
        return Err("figures of nothing should be all zero".into());
    }
    if median(&[3.0, 1.0, 2.0, 10.0]) != 2.5 || median(&[5.0]) != 5.0 {
        return Err("median".into());
    }
    let b = buckets(&samples, 2.0, 1.0);
    if b.len() != 2 || b[0].max_ms != Some(100.0) || b[0].failures.len() != 2 {
        return Err(format!("buckets: {b:?}"));
    }
    if b[1].max_ms.is_some() || b[1].failures != vec![(Outcome::Reset, 0.2)] {
        return Err(format!("buckets, second: {:?}", b[1]));
    }
    Ok(())
}
