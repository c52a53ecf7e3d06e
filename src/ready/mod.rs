//! How relaunch learns that a child is ready: sd_notify datagrams and the /proc scan.

pub mod notify;
pub mod scan;
