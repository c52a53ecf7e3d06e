//! The supervisor's state machine, and the driver that carries out its effects.

pub mod backoff;
pub mod driver;
pub mod idle;
pub mod reaper;
pub mod spawn;
pub mod supervisor;
