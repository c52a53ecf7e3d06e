//! One integration-test binary: the real relaunch, real children, real sockets.

mod bad_input;
mod child;
mod drain;
mod groups;
mod health;
mod held_options;
mod intercept;
mod intercept_isolation;
mod intercept_peers;
mod lazy;
mod ops;
mod package;
mod ports;
mod probes;
mod ready;
mod reload;
mod rig;
mod servers;
mod supervision;
mod systemd;
mod unix_sockets;
mod upgrade;
mod util;
mod watch;
mod who;
mod workers;
