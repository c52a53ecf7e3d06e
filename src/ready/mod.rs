//! How relaunch learns that a child is ready: sd_notify datagrams and the /proc scan,
//! and whether it serves on a port relaunch does not hold.

pub mod fallback;
pub mod notify;
pub mod scan;
