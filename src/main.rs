// Temporary while helpers finish their modules; the full main is in /tmp/main.rs.full.
#![allow(dead_code)]
mod backoff;
mod control;
mod duration;
mod error;
mod inherit;
mod notify;
mod procscan;
mod spawn;
mod spec;
mod supervisor;
mod cli;
mod who;
fn main() {}
