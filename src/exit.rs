//! How a process ended, and the one table between exit codes and what they
//! mean.

use std::fmt;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use serde::{Deserialize, Serialize};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl ExitStatus {
    /// A reaped child's pid and how it ended; None for a stop or continue.
    pub fn of_wait(status: WaitStatus) -> Option<(i32, ExitStatus)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitStatus::Code(code))),
            WaitStatus::Signaled(pid, sig, _) => {
                Some((pid.as_raw(), ExitStatus::Signal(sig as i32)))
            }
            _ => None,
        }
    }
}
