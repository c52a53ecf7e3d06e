//! One integration-test binary: the real relaunch, real children, real sockets.

mod core;
mod reload;
mod units;
mod util;
