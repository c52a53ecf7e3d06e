//! How relaunch learns that a child is ready: sd_notify datagrams, the /proc scan and
//! health probes, and whether it serves on a port relaunch does not hold.

pub mod fallback;
pub mod notify;
pub mod probe;
pub mod scan;
