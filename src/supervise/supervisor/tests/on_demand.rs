//! On demand: --lazy and --idle-stop.

use super::*;

#[test]
fn lazy_waits_without_timers_and_starts_at_the_first_connection() {
    let t0 = Instant::now();
    let mut s = on_demand(2, true, None);
    s.t_start(t0);
    assert!(s.os.spawned.is_empty(), "no child before a connection");
    assert!(s.waiting());
    assert_eq!(s.state(), "waiting for the first connection");
    assert_eq!(s.next_deadline(), None, "no timer while waiting");
    assert_eq!(s.idle_probe_every(), None);
    assert_eq!(
        s.os.tells,
        [Tell::Ready("waiting for the first connection".into())],
        "systemd: the sockets are ready"
    );
    let status = s.status(t0 + ms(1500));
    assert_eq!(status.generation, 0);
    assert_eq!(status.idle_secs, Some(1.5));
    let t1 = t0 + Duration::from_secs(60);
    s.t_connection(t1);
    assert_eq!(s.os.spawned, [(101, 1, 0), (102, 1, 1)]);
    assert!(!s.waiting(), "the listeners leave the loop's epoll set");
    assert_eq!(s.state(), "starting");
    assert_eq!(s.status(t1).idle_secs, None);
    assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(60)));
    s.t_connection(t1);
    assert_eq!(
        s.os.spawned.len(),
        2,
        "a late readiness event starts nothing"
    );
    s.t_ready(101, t1);
    s.t_ready(102, t1);
    assert_eq!(s.state(), "serving");
    assert_eq!(
        s.os.tells.last(),
        Some(&Tell::Ready("serving: generation 1, pids 101, 102".into()))
    );
}

#[test]
fn a_reload_while_waiting_has_nothing_to_reload() {
    let t0 = Instant::now();
    let mut s = on_demand(1, true, None);
    s.t_start(t0);
    let mut answer = s.t_reload_client(t0);
    match answer.try_recv() {
        Ok(Response::Reloaded { generation, pids }) => {
            assert_eq!((generation, pids), (0, vec![]))
        }
        other => panic!("{other:?}"),
    }
    assert!(s.os.spawned.is_empty(), "it starts nothing");
    assert!(s.waiting());
    assert!(matches!(
        &s.os.tells[1..],
        [Tell::Reloading(_), Tell::Ready(r)] if r == "waiting for the first connection"
    ));
    let last = s.kept.last_reload.as_ref().unwrap();
    assert!(last.ok && last.message.contains("nothing to reload"));
    // SIGHUP likewise.
    s.run(Event::Reload, t0);
    assert!(s.os.spawned.is_empty());
    // The next connection starts generation 1.
    s.t_connection(t0);
    assert_eq!(s.os.spawned, [(101, 1, 0)]);
}

#[test]
fn a_stop_while_waiting_exits_zero_at_once() {
    let t0 = Instant::now();
    let mut s = on_demand(1, true, None);
    s.t_start(t0);
    s.t_stop(t0);
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            error: None
        })
    );
    assert!(!s.waiting());
    assert_eq!(s.os.tells.last(), Some(&Tell::Stopping));
}

#[test]
fn a_lazy_child_that_crashes_restarts_without_waiting_for_a_connection() {
    let t0 = Instant::now();
    let mut s = on_demand(1, true, None);
    s.t_start(t0);
    s.t_connection(t0);
    s.t_ready(101, t0);
    let t1 = t0 + Duration::from_secs(5);
    s.t_exit(101, ExitStatus::Signal(9), t1);
    assert!(!s.waiting());
    s.t_timer(s.next_deadline().unwrap());
    assert_eq!(
        s.os.spawned.last(),
        Some(&(102, 1, 0)),
        "restarted as usual"
    );
}

#[test]
fn idle_stop_stops_the_whole_generation_and_waits_again() {
    let t0 = Instant::now();
    let mut s = on_demand(2, false, Some(Duration::from_secs(1)));
    s.t_start(t0);
    assert_eq!(s.os.spawned.len(), 2, "not lazy: starts at once");
    assert_eq!(s.idle_probe_every(), Some(ms(250)));
    // Not serving yet: idleness does not count.
    s.t_activity(false, t0);
    s.t_activity(false, t0 + Duration::from_secs(2));
    assert!(s.os.signals.is_empty());
    s.t_ready(101, t0);
    s.t_ready(102, t0);
    // Busy resets the count.
    let t1 = t0 + Duration::from_secs(3);
    s.t_activity(false, t1);
    s.t_activity(true, t1 + ms(900));
    s.t_activity(false, t1 + ms(1000));
    s.t_activity(false, t1 + ms(1900));
    assert!(s.os.signals.is_empty(), "idle for 0.9 s only");
    assert_eq!(s.status(t1 + ms(1900)).idle_secs, Some(0.9));
    let t2 = t1 + ms(2000);
    s.t_activity(false, t2);
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGTERM), (102, Signal::SIGTERM)],
        "every worker's group"
    );
    assert_eq!(s.state(), "stopping when idle");
    assert!(s.waiting(), "a connection now starts a new generation");
    assert_eq!(s.idle_probe_every(), None);
    s.t_exit(101, ExitStatus::Signal(15), t2);
    // A worker's group outlives its leader.
    exited_leaving_group(&mut s, 102, ExitStatus::Signal(15), t2);
    assert_eq!(s.state(), "stopping when idle");
    s.run(Event::GroupGone { pgid: 102 }, t2 + ms(10));
    assert_eq!(s.state(), "waiting for a connection");
    assert_eq!(s.exit(), None);
    assert_eq!(s.next_deadline(), None, "no timer while waiting");
    assert_eq!(s.os.spawned.len(), 2, "nothing restarted");
    assert_eq!(
        s.status(t2 + ms(10)).idle_secs,
        Some(1.01),
        "idle since the first idle measure"
    );
    // The next connection: generation 2, fresh restart counts.
    s.t_connection(t2 + Duration::from_secs(30));
    assert_eq!(pids(&s, 2), [103, 104]);
    assert_eq!(s.state(), "starting");
    assert_eq!(s.status(t2).children[0].restarts, 0);
}

#[test]
fn idle_stop_never_ends_relaunch_whatever_restart_says() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            restart: Restart::Never,
            idle_stop: Some(Duration::from_secs(1)),
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_ready(101, t0);
    let t1 = s.t_idle_out(t0 + ms(1));
    s.t_exit(101, ExitStatus::Code(0), t1);
    assert_eq!(s.exit(), None);
    assert_eq!(s.state(), "waiting for a connection");
}

#[test]
fn a_connection_during_an_idle_stop_starts_the_next_generation_at_once() {
    let t0 = Instant::now();
    let mut s = on_demand(1, true, Some(Duration::from_secs(1)));
    s.t_start(t0);
    s.t_connection(t0);
    s.t_ready(101, t0);
    let t1 = s.t_idle_out(t0 + ms(1));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    s.t_connection(t1);
    assert_eq!(pids(&s, 2), [102]);
    assert!(!s.waiting());
    // The old one's exit is a stop, not a crash to restart.
    s.t_exit(101, ExitStatus::Signal(15), t1 + ms(5));
    assert_eq!(s.os.spawned.len(), 2);
    s.t_ready(102, t1 + ms(10));
    assert_eq!(s.state(), "serving");
    assert_eq!(s.status(t1).generation, 2);
}

#[test]
fn reload_and_stop_after_an_idle_stop() {
    let t0 = Instant::now();
    let mut s = on_demand(1, false, Some(Duration::from_secs(1)));
    s.t_start(t0);
    s.t_ready(101, t0);
    let t1 = s.t_idle_out(t0 + ms(1));
    // A reload while the idle children stop: nothing to reload either.
    let mut answer = s.t_reload_client(t1);
    assert!(matches!(
        answer.try_recv(),
        Ok(Response::Reloaded { generation: 1, ref pids }) if pids.is_empty()
    ));
    s.t_exit(101, ExitStatus::Signal(15), t1);
    assert_eq!(s.state(), "waiting for a connection");
    s.t_stop(t1);
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            error: None
        })
    );
}

#[test]
fn activity_during_a_reload_is_not_idleness() {
    let t0 = Instant::now();
    let mut s = on_demand(1, false, Some(Duration::from_secs(1)));
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_activity(false, t0);
    s.t_reload(t0).unwrap();
    s.t_activity(false, t0 + Duration::from_secs(5));
    assert!(s.os.signals.is_empty(), "reloading is not idle");
    s.t_ready(102, t0 + Duration::from_secs(5));
    s.t_exit(101, ExitStatus::Signal(15), t0 + Duration::from_secs(5));
    assert_eq!(s.state(), "serving");
    s.t_activity(false, t0 + Duration::from_secs(6));
    assert!(s.os.signals.len() == 1, "only the old one was stopped");
    s.t_activity(false, t0 + Duration::from_secs(7));
    assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGTERM)));
}

/// After an idle stop a generation has served: a missing program at
/// the next start backs off instead of ending relaunch (the listeners
/// stay held); at the very first lazy start it ends relaunch as today.
#[test]
fn exec_failure_when_woken() {
    let t0 = Instant::now();
    let mut s = on_demand(1, false, Some(Duration::from_secs(1)));
    s.t_start(t0);
    s.t_ready(101, t0);
    let t1 = s.t_idle_out(t0 + ms(1));
    s.t_exit(101, ExitStatus::Signal(15), t1);
    s.t_connection(t1);
    exec_fails(
        &mut s,
        102,
        spawn::Error::NotFound("cannot run x".into()),
        t1,
    );
    assert_eq!(s.exit(), None);
    assert!(s.next_deadline().is_some(), "a restart with backoff");

    let mut s = on_demand(1, true, None);
    s.t_start(t0);
    s.t_connection(t0);
    exec_fails(
        &mut s,
        101,
        spawn::Error::NotFound("cannot run x".into()),
        t0,
    );
    assert_eq!(s.exit().map(|e| e.code), Some(127));
}

/// A wake whose fork fails under --restart never ends relaunch, rather
/// than leaving it running with nothing to run and no timer.
#[test]
fn a_failed_wake_with_restart_never_ends_relaunch() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            restart: Restart::Never,
            idle_stop: Some(Duration::from_secs(1)),
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_ready(101, t0);
    let t1 = s.t_idle_out(t0 + ms(1));
    s.t_exit(101, ExitStatus::Signal(15), t1);
    s.os.fail_spawn = Some(|| spawn::Error::Os("cannot start x: fork failed".into()));
    s.t_connection(t1);
    assert_eq!(s.exit().map(|e| e.code), Some(127));
}

/// Connections that came and went since the last measure were open
/// after it: idle counts from now, and the driver measures again
/// exactly when the idle time would be over.
#[test]
fn connections_that_came_and_went_restart_the_idle_time() {
    let t0 = Instant::now();
    let mut s = on_demand(1, false, Some(Duration::from_secs(1)));
    s.t_start(t0);
    s.t_ready(101, t0);
    assert_eq!(s.idle_stop_due(), None, "not measured yet");
    s.t_activity(false, t0);
    assert_eq!(s.idle_stop_due(), Some(t0 + Duration::from_secs(1)));
    let churned = true;
    let t1 = t0 + ms(900);
    s.run(
        Event::Activity {
            open: false,
            churned,
        },
        t1,
    );
    assert_eq!(s.idle_stop_due(), Some(t1 + Duration::from_secs(1)));
    s.t_activity(false, t0 + Duration::from_secs(1));
    assert!(s.os.signals.is_empty(), "idle for 0.1 s only");
    s.t_activity(false, t1 + Duration::from_secs(1));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert_eq!(s.idle_stop_due(), None, "stopping: nothing to measure");
}

#[test]
fn probe_interval_follows_the_idle_time() {
    assert_eq!(idle_probe_interval(Duration::from_secs(1)), ms(250));
    assert_eq!(idle_probe_interval(ms(20)), ms(10));
    assert_eq!(
        idle_probe_interval(Duration::from_secs(3600)),
        Duration::from_secs(5)
    );
}

/// What the runtime's sources are armed with, turn by turn, over a lazy
/// start, serving, an idle stop and a stop: nothing runs when nothing is
/// asked for.
#[test]
fn the_runtime_is_asked_for_exactly_what_each_phase_needs() {
    use crate::supervise::sources::Wants;
    let limit = Duration::from_secs(4);
    let t0 = Instant::now();
    let mut s = on_demand(1, true, Some(limit));
    s.t_start(t0);
    assert_eq!(
        s.wants(t0),
        Wants {
            listeners: true,
            ..Wants::default()
        },
        "waiting: the listeners' watch alone, no timer, no scan"
    );
    s.t_connection(t0);
    let starting = s.wants(t0);
    assert!(starting.scan, "a starting generation is scanned");
    assert!(!starting.listeners, "its connections wake nothing");
    assert_eq!(starting.deadline, Some(t0 + Duration::from_secs(60)));
    s.t_ready(101, t0);
    let serving = s.wants(t0 + ms(1));
    assert!(!serving.scan && !serving.listeners && !serving.group_check);
    assert_eq!(serving.idle_probe, Some(idle_probe_interval(limit)));
    assert_eq!(serving.idle_stop_due, None, "not idle until measured so");
    s.t_activity(false, t0 + ms(1));
    assert_eq!(s.wants(t0 + ms(1)).idle_stop_due, Some(t0 + ms(1) + limit));
    let t1 = s.t_idle_out(t0 + ms(1));
    let stopping = s.wants(t1);
    assert_eq!(
        stopping.idle_probe, None,
        "nothing to measure while stopping"
    );
    assert!(stopping.deadline.is_some(), "the stop timeout");
    s.t_exit(101, ExitStatus::Signal(15), t1);
    assert_eq!(
        s.wants(t1),
        Wants {
            listeners: true,
            ..Wants::default()
        },
        "stopped while idle: waiting again"
    );
    s.t_stop(t1);
    assert_eq!(s.wants(t1), Wants::default(), "stopped: nothing at all");
}
