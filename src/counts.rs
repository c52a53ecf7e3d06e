//! What relaunch counts for `--metrics`: said by the supervisor, tallied by
//! the runtime.

use std::time::Duration;

/// What `--metrics` counts. The supervisor says it at the transition, once;
/// the driver keeps the tally only when metrics are served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Count {
    /// A serving worker exited on its own and will be restarted.
    Restart(RestartReason),
    /// A reload ended (or was merged into another).
    Reload(ReloadResult),
    /// A generation became ready this long after it was started.
    Ready(Duration),
    /// An old generation's drain ended: idle, or at the drain timeout with
    /// `cut` connections still open.
    Drain { idle: bool, cut: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited with a status.
    Exit,
    /// A signal killed it.
    Signal,
    /// Too many quick failures in a row: relaunch gives up and stops.
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new generation serves and the old one is gone.
    Done,
    /// The new generation missed its ready deadline.
    NotReady,
    /// The new generation exited (or could not start) before it was ready.
    Exited,
    /// Asked for during a reload: merged into the one that follows it.
    Coalesced,
    /// relaunch was stopped during the reload.
    Cancelled,
    /// The new generation ran as a canary and was rolled back.
    RolledBack,
}
