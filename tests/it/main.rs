//! One integration-test binary: the real relaunch, real children, real sockets.

mod bad_input;
mod child;
mod core;
mod faults;
mod groups;
mod ports;
mod reload;
mod servers;
mod units;
mod util;
mod who;
