//! One integration-test binary: the real relaunch, real children, real sockets.

mod core;
mod ports;
mod reload;
mod servers;
mod units;
mod util;
mod who;
