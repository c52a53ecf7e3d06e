//! The supervisor's state machine, and the driver that carries out its effects.

pub mod backoff;
pub mod driver;
pub mod handover;
pub mod idle;
pub mod keeper;
pub mod lines;
pub mod reaper;
pub mod runtime;
pub mod sources;
pub mod spawn;
pub mod supervisor;
pub mod upgrade;
