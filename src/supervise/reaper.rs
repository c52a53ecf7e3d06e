//! The one reaper: `waitpid(-1)` for every exit, ours or an orphan's (we are
//! a subreaper, and may be PID 1), the ending of what escaped a child's
//! process group, and the sweep of orphans on the way out.
//!
//! # Escaped processes
//!
//! A child is its process group, and relaunch signals groups. A process that
//! leaves the group (`setsid`, a daemon's double fork) escapes that: once
//! its parent dies it lands on relaunch (the subreaper) and would go on
//! accepting on the held sockets beside the next generation. Such an
//! orphan belongs to the child whose tree it came from; when that child
//! ends or is being stopped, the orphan and everything under it get the stop
//! signal, and SIGKILL after the stop timeout.
//!
//! Which child it came from is read, not remembered: its `LISTEN_PID`
//! (inherited from the child relaunch started) names the child, when it is
//! set and names one of ours that started no later than the orphan. Else
//! (`--no-listen-pid`, a cleared environment) any child still running that
//! started no later than the orphan may be its parent's tree, and it is kept:
//! an escaped process is only ended when no running child can own it.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::warn;

use crate::exit::ExitStatus;
use crate::proc::{self, Pidfd};

/// Collects every exited child without blocking.
pub fn reap(mut exited: impl FnMut(i32, ExitStatus)) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some((pid, status)) = ExitStatus::of_wait(status) {
                    exited(pid, status);
                }
            }
        }
    }
}

/// Whether any process of the group `pgid` is left (zombies count until
/// they are reaped). A group outlives its leader; its id is not reused while
/// a member lives.
pub fn group_alive(pgid: i32) -> bool {
    !matches!(
        killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The processes of group `pgid`, zombies included, for `relaunch status`.
/// Reads /proc: call it off the event loop.
pub fn group_members(pgid: i32) -> Vec<i32> {
    proc::group_members(&[pgid])
}

/// Processes that outlived their parents landed on us (a subreaper). None may
/// keep a socket once we are gone: stop signal, then SIGKILL after the timeout.
pub async fn end_orphans(sig: Signal, timeout: Duration, spare: Option<i32>) {
    let me = std::process::id() as i32;
    let kill_at = Instant::now() + timeout;
    let mut told = HashSet::new();
    let mut killed = false;
    loop {
        reap(|_, _| {});
        if !proc::available() {
            // Said at start too; here, whether anything was left behind.
            if matches!(
                waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ) {
                warn!(
                    "processes the server left behind are still running; without /proc relaunch \
                     cannot find them to stop them"
                );
            }
            return;
        }
        let left: Vec<i32> = proc::tree(&[me])
            .into_iter()
            .filter(|&p| p != me && Some(p) != spare)
            .collect();
        if left.is_empty() {
            return;
        }
        for &pid in &left {
            if told.insert(pid) {
                warn!(
                    pid,
                    "an orphan outlived its parent; sending {}",
                    sig.as_str()
                );
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
        if killed && Instant::now() >= kill_at + Duration::from_secs(5) {
            warn!(pids = ?left, "processes survive SIGKILL (stuck in the kernel?); leaving them");
            return;
        }
        if !killed && Instant::now() >= kill_at {
            for &pid in &left {
                warn!(pid, "orphan did not stop; sending SIGKILL");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many past spawns [`Spawns`] remembers; older ones have ended, and an
/// orphan that only they could own is ended by the start-time rule anyway.
const SPAWNS_KEPT: usize = 1024;

/// Every child relaunch started (leader pid, boot time in clock ticks taken
/// just before the fork: no later than the child's own start time).
#[derive(Debug, Default, Clone)]
pub struct Spawns(VecDeque<(i32, u64)>);

impl Spawns {
    pub fn record(&mut self, pid: i32, ticks: u64) {
        if self.0.len() == SPAWNS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back((pid, ticks));
    }
}

/// The unit of `/proc/PID/stat`'s times: USER_HZ, 100 on every Linux
/// architecture (what sysconf(_SC_CLK_TCK) returns; not called, so the idle
/// footprint does not pay for a page of libc).
const USER_HZ: u64 = 100;

/// The boot-time clock in the unit of `/proc/PID/stat`'s start time.
pub fn boot_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ns / (1_000_000_000 / USER_HZ)
}

/// What relaunch puts in every child's environment.
const OURS: [&str; 3] = ["LISTEN_PID", "RELAUNCH_WORKER", "NOTIFY_SOCKET"];

/// A process that landed on relaunch from outside every child's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub pid: i32,
    /// Start time, clock ticks since boot.
    pub start: u64,
    /// Its `LISTEN_PID`, when set and a number.
    pub listen_pid: Option<i32>,
    /// Its environment was readable and holds none of the variables
    /// relaunch gives its children: it did not come from one (a process
    /// `docker exec` started, when relaunch is PID 1), or it hides it.
    pub foreign: bool,
}

/// Whether no running child can own `o`: `owners` are the children whose
/// leader runs and that are not being stopped.
pub fn is_leftover(o: &Orphan, spawns: &Spawns, owners: &[i32]) -> bool {
    if o.foreign {
        return false;
    }
    let started_before = |&&(_, ticks): &&(i32, u64)| ticks <= o.start;
    // The latest spawn with a pid: an owner's pid names that one.
    let latest = |pid: i32| spawns.0.iter().rev().find(|&&(p, _)| p == pid);
    if let Some(named) = o.listen_pid
        && let Some(spawn) = spawns
            .0
            .iter()
            .rev()
            .filter(started_before)
            .find(|&&(p, _)| p == named)
    {
        return !(owners.contains(&named) && latest(named) == Some(spawn));
    }
    !spawns
        .0
        .iter()
        .filter(started_before)
        .any(|&(p, ticks)| owners.contains(&p) && latest(p) == Some(&(p, ticks)))
}

/// A process to end, as seen when it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub start: u64,
    pub cmd: String,
}

/// The processes under relaunch that escaped a child's group and that no
/// running child owns, with everything under them. `children`: the leaders
/// of every child relaunch still tracks (their groups are signalled as
/// groups) and relaunch's own helpers; `ending`: those already being ended;
/// `since`: [`boot_ticks`] when those lists were taken (a process started
/// since then, such as a restarted child, is left to the next sweep). Reads
/// /proc: call it off the event loop.
pub fn find_leftovers(
    spawns: &Spawns,
    owners: &[i32],
    children: &[i32],
    ending: &[i32],
    since: u64,
) -> Vec<Leftover> {
    if !proc::available() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let trees = proc::Trees::new();
    let mut out = Vec::new();
    for pid in trees.tree(&[me]) {
        let Some(st) = proc::stat(pid).filter(|s| s.alive() && s.ppid == me) else {
            continue;
        };
        if st.start >= since || children.contains(&pid) || children.contains(&st.pgrp) {
            continue;
        }
        let env = proc::environ(pid);
        let var = |name: &str| env.as_deref().and_then(|e| proc::env_lookup(e, name));
        let orphan = Orphan {
            pid,
            start: st.start,
            listen_pid: var("LISTEN_PID").and_then(|v| v.parse().ok()),
            foreign: env.is_some() && OURS.iter().all(|name| var(name).is_none()),
        };
        if !is_leftover(&orphan, spawns, owners) {
            continue;
        }
        for p in trees.tree(&[pid]) {
            let Some(s) = proc::stat(p).filter(|s| s.alive()) else {
                continue;
            };
            if children.contains(&s.pgrp) || ending.contains(&p) {
                continue;
            }
            out.push(Leftover {
                pid: p,
                start: s.start,
                cmd: proc::cmdline(p),
            });
        }
    }
    out
}

/// A handle on an escaped process that a reused pid cannot fool (a pidfd;
/// before Linux 5.3, the pid).
pub struct Escaped {
    pid: i32,
    pidfd: Option<Pidfd>,
}

impl Escaped {
    /// None when the process is gone, or its pid now names another one.
    /// Reads /proc: off the event loop.
    pub fn open(l: &Leftover) -> Option<Escaped> {
        let pidfd = Pidfd::open(l.pid).ok();
        // Opened first, checked after: the pidfd then names what /proc shows.
        proc::stat(l.pid)
            .filter(|s| s.start == l.start && s.alive())
            .map(|_| Escaped { pid: l.pid, pidfd })
    }

    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        match &self.pidfd {
            Some(fd) => fd.signal(sig as i32),
            None => kill(Pid::from_raw(self.pid), sig).map_err(std::io::Error::from),
        }
    }

    /// Running, or a zombie not yet reaped.
    pub fn exists(&self) -> bool {
        match &self.pidfd {
            Some(fd) => fd.exists(),
            None => !matches!(
                kill(Pid::from_raw(self.pid), None),
                Err(nix::errno::Errno::ESRCH)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawns(list: &[(i32, u64)]) -> Spawns {
        let mut s = Spawns::default();
        for &(p, t) in list {
            s.record(p, t);
        }
        s
    }

    fn orphan(start: u64, listen_pid: Option<i32>) -> Orphan {
        Orphan {
            pid: 999,
            start,
            listen_pid,
            foreign: false,
        }
    }

    /// A sweep works from what the loop knew when it began: a child started
    /// after that (a crash restart while /proc is read) is not in its list
    /// of children and must not be taken for a leftover.
    #[test]
    fn a_process_newer_than_the_sweep_is_not_judged_by_it() {
        let since = boot_ticks();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("RELAUNCH_WORKER", "0")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = |since| {
            find_leftovers(&Spawns::default(), &[], &[], &[], since)
                .iter()
                .any(|l| l.pid == pid)
        };
        assert!(!found(since), "started after the sweep began");
        // Once the clock has moved past its start, a sweep sees it (it has
        // none of relaunch's spawns to belong to).
        let start = proc::stat(pid).unwrap().start;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // spawn() returns once exec has replaced the memory, which can be
        // before the new environment is laid out: an empty one reads as a
        // foreign process's, which a sweep leaves alone.
        let ours = || {
            proc::environ(pid).is_some_and(|e| proc::env_lookup(&e, "RELAUNCH_WORKER").is_some())
        };
        while !ours() || boot_ticks() <= start {
            assert!(
                std::time::Instant::now() < deadline,
                "the tick clock stands still"
            );
            std::thread::yield_now();
        }
        assert!(found(boot_ticks()), "an older one is judged");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_orphan_of_an_ended_child_is_a_leftover() {
        // Child 101 (tick 10) ended; 102 (tick 50) runs: the orphan started
        // at tick 20, before 102 existed, so only 101 can own it.
        let s = spawns(&[(101, 10), (102, 50)]);
        assert!(is_leftover(&orphan(20, None), &s, &[102]));
        assert!(is_leftover(&orphan(20, Some(101)), &s, &[102]));
    }

    #[test]
    fn an_orphan_a_running_child_may_own_is_kept() {
        let s = spawns(&[(101, 10), (102, 50)]);
        assert!(!is_leftover(&orphan(60, None), &s, &[102]));
        assert!(!is_leftover(&orphan(60, Some(102)), &s, &[102]));
        // Being stopped (a reload's old generation): not an owner.
        assert!(is_leftover(&orphan(20, None), &s, &[]));
    }

    /// Workers started together: the start time cannot tell them apart,
    /// LISTEN_PID can.
    #[test]
    fn listen_pid_tells_workers_apart() {
        let s = spawns(&[(101, 10), (102, 10), (103, 40)]);
        // Worker 101 crashed and was restarted as 103; 102 runs.
        assert!(is_leftover(&orphan(20, Some(101)), &s, &[102, 103]));
        assert!(!is_leftover(&orphan(20, Some(102)), &s, &[102, 103]));
        // Without it, 102 may own it: kept.
        assert!(!is_leftover(&orphan(20, None), &s, &[102, 103]));
        // A LISTEN_PID that names none of ours (set by someone else): the
        // start time decides.
        assert!(!is_leftover(&orphan(20, Some(7)), &s, &[102]));
        assert!(is_leftover(&orphan(20, Some(7)), &s, &[103]));
    }

    /// A reused pid: the running child with pid 101 is the later spawn, so
    /// an orphan of the earlier one is not its.
    #[test]
    fn a_reused_leader_pid_does_not_adopt_its_predecessors_orphans() {
        let s = spawns(&[(101, 10), (101, 90)]);
        assert!(is_leftover(&orphan(20, Some(101)), &s, &[101]));
        assert!(is_leftover(&orphan(20, None), &s, &[101]));
        assert!(!is_leftover(&orphan(95, Some(101)), &s, &[101]));
    }

    /// relaunch as PID 1: a process `docker exec` started, orphaned, lands
    /// on it too. Nothing of relaunch's in its environment: not ours to end.
    #[test]
    fn a_foreign_orphan_is_never_a_leftover() {
        let s = spawns(&[(101, 10), (102, 50)]);
        let o = Orphan {
            foreign: true,
            ..orphan(20, None)
        };
        assert!(!is_leftover(&o, &s, &[102]));
    }

    #[test]
    fn spawns_are_bounded() {
        let mut s = Spawns::default();
        for p in 0..(SPAWNS_KEPT as i32 + 10) {
            s.record(p, p as u64);
        }
        assert_eq!(s.0.len(), SPAWNS_KEPT);
        assert_eq!(s.0.front(), Some(&(10, 10)));
    }

    #[test]
    fn user_hz_is_what_sysconf_says() {
        // SAFETY: no arguments but the name.
        assert_eq!(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }, USER_HZ as i64);
    }

    #[test]
    fn boot_ticks_match_our_own_start_time() {
        let ours = proc::stat(std::process::id() as i32).unwrap().start;
        let now = boot_ticks();
        assert!(ours <= now, "{ours} > {now}");
    }
}
