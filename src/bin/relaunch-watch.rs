//! `relaunch-watch`: the file watcher that `relaunch --watch` runs beside
//! itself (see `src/watch.rs`). Not meant to be run by hand.

#[path = "../watch.rs"]
mod watch;

fn main() {
    std::process::exit(watch::main(std::env::args().skip(1).collect()));
}
