//! Process groups and escaped processes: a generation ends only when all of it has.

use super::*;

#[test]
fn reload_is_done_only_when_the_old_group_is_empty() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0);
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    // The leader goes; a worker of its group ignores SIGTERM.
    exited_leaving_group(&mut s, 101, ExitStatus::Signal(15), t0 + ms(10));
    assert_eq!(s.state(), "reloading", "the old group still has members");
    assert_eq!(s.lingering().collect::<Vec<_>>(), [101]);
    assert_eq!(s.status(t0).children[0].state, "lingering");
    let kill_at = s.next_deadline().unwrap();
    assert_eq!(kill_at, t0 + Duration::from_secs(10));
    s.t_timer(kill_at);
    assert_eq!(
        s.os.signals.last(),
        Some(&(101, Signal::SIGKILL)),
        "SIGKILL goes to the group after its leader is gone"
    );
    assert!(s.os.released.is_empty(), "generation 1 is not gone yet");
    s.run(Event::GroupGone { pgid: 101 }, kill_at);
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.os.released, [1]);
    assert_eq!(s.next_deadline(), None, "idle: no timer");
}

#[test]
fn a_crashed_leader_has_its_group_stopped_and_is_restarted() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    exited_leaving_group(&mut s, 101, ExitStatus::Signal(9), t0 + ms(10));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    s.t_timer(s.next_deadline().unwrap());
    assert_eq!(s.os.spawned.last(), Some(&(102, 1, 0)), "restarted");
    s.t_ready(102, t0 + ms(500));
    s.run(Event::GroupGone { pgid: 101 }, t0 + ms(600));
    assert_eq!(pids(&s, 1), [102]);
    assert!(s.lingering().next().is_none());
}

/// A group that never empties (a zombie nobody reaps, a process stuck in
/// the kernel) is let go after the kill grace: it must not block every
/// later reload and the exit.
#[test]
fn a_group_that_never_empties_is_let_go_after_the_kill_grace() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0);
    exited_leaving_group(&mut s, 101, ExitStatus::Signal(15), t0);
    let kill_at = s.next_deadline().unwrap();
    s.t_timer(kill_at);
    assert_eq!(s.os.signals.last(), Some(&(101, Signal::SIGKILL)));
    assert_eq!(s.state(), "reloading");
    assert_eq!(
        s.next_deadline(),
        Some(kill_at + KILL_GRACE),
        "a deadline to give up"
    );
    s.t_timer(kill_at + KILL_GRACE);
    assert_eq!(s.state(), "serving", "the reload is over");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.os.released, [1]);
    assert_eq!(s.next_deadline(), None);
    // And a stop is not held up by it either.
    s.t_stop(kill_at + KILL_GRACE);
    exited_leaving_group(&mut s, 102, ExitStatus::Signal(15), kill_at + KILL_GRACE);
    let kill_at = s.next_deadline().unwrap();
    s.t_timer(kill_at);
    assert!(s.exit().is_none());
    s.t_timer(kill_at + KILL_GRACE);
    assert_eq!(s.exit().map(|e| e.code), Some(0));
}

#[test]
fn stop_waits_for_lingering_groups() {
    let (mut s, t0) = started(1);
    s.t_stop(t0);
    exited_leaving_group(&mut s, 101, ExitStatus::Signal(15), t0);
    assert!(s.exit().is_none());
    s.run(Event::GroupGone { pgid: 101 }, t0);
    assert_eq!(s.exit().map(|e| e.code), Some(0));
}

/// A process of generation 1 that setsid'd away is found when its
/// child is being stopped: the reload is done only once it is gone too,
/// and it gets TERM, then KILL after the stop timeout, like the group.
#[test]
fn reload_waits_for_what_escaped_the_old_group() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.os.escaping = vec![(555, "sleep 300".into())];
    s.t_ready(102, t0);
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGTERM), (555, Signal::SIGTERM)]
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(10));
    assert_eq!(s.state(), "reloading", "pid 555 still runs");
    assert_eq!(s.escaped().collect::<Vec<_>>(), [555]);
    let kill_at = s.next_deadline().unwrap();
    assert_eq!(kill_at, t0 + Duration::from_secs(10));
    s.t_timer(kill_at);
    assert_eq!(s.os.signals.last(), Some(&(555, Signal::SIGKILL)));
    s.run(Event::EscapedGone { pid: 555 }, kill_at);
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.next_deadline(), None, "idle: no timer");
}

/// Until the sweep asked for when the old child ended has answered,
/// nobody knows what it left behind: the reload is not done yet.
#[test]
fn reload_is_not_done_before_the_sweep_answers() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0);
    let effects = s.core.handle(
        Event::Exited {
            pid: 101,
            status: ExitStatus::Signal(15),
            group_alive: false,
        },
        t0,
        &mut s.os,
    );
    s.record(effects);
    let sweep = s.sweep_wanted().expect("a sweep is due");
    assert_eq!(s.state(), "reloading");
    s.run(
        Event::Escaped {
            sweep,
            found: Vec::new(),
        },
        t0,
    );
    assert_eq!(s.state(), "serving");
}

#[test]
fn escaped_processes_of_a_running_child_are_not_swept_as_leftovers_and_exit_waits() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    assert_eq!(s.owners(), [101]);
    s.t_stop(t0);
    assert!(s.owners().is_empty(), "being stopped: owns nothing");
    s.os.escaping = vec![(555, "daemon".into())];
    s.t_exit(101, ExitStatus::Signal(15), t0);
    assert!(s.exit().is_none(), "pid 555 still runs");
    // A second stop kills it at once.
    s.t_stop(t0);
    assert_eq!(s.os.signals.last(), Some(&(555, Signal::SIGKILL)));
    s.run(Event::EscapedGone { pid: 555 }, t0);
    assert_eq!(s.exit().map(|e| e.code), Some(0));
}
