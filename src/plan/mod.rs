//! Pure: from the command line and the inherited environment to what will run.

pub mod compat;
pub mod fallback;
pub mod inherit;
pub mod options;
pub mod placeholders;
pub mod spec;
pub mod wrapper;
