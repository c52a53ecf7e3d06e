//! What one scenario at one delay gave: how it ended, its figures and its
//! samples. Made by `scenarios`, read by `report` and `chart`.

use crate::load::Sample;
use crate::stats::Figures;
use crate::targets::Kind;

pub enum Status {
    Ran,
    Skipped(String),
    Failed(String),
}

pub struct Scenario {
    pub kind: Kind,
    pub delay: f64,
    pub status: Status,
    pub figures: Figures,
    /// Seconds since the scenario's start at which each restart was triggered.
    pub restarts_at: Vec<f64>,
    pub secs: f64,
    pub hup_to_exec_ms: Vec<f64>,
    pub samples: Vec<Sample>,
}

impl Scenario {
    pub fn empty(kind: Kind, delay: f64, status: Status) -> Scenario {
        Scenario {
            kind,
            delay,
            status,
            figures: Figures::default(),
            restarts_at: Vec::new(),
            secs: 0.0,
            hup_to_exec_ms: Vec::new(),
            samples: Vec::new(),
        }
    }
}
