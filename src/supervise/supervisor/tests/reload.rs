//! Reloads: the overlap, their outcomes, coalescing, and their clients.

use super::*;

#[test]
fn reload_overlaps_and_stops_old_only_when_new_is_ready() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    assert_eq!(s.t_reload(t0), Ok(2));
    assert_eq!(pids(&s, 2), [102]);
    assert!(
        s.os.signals.is_empty(),
        "old generation untouched while the new one starts"
    );
    s.t_ready(102, t0 + ms(300));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.state(), "reloading", "not done until the old one is gone");
    s.t_exit(101, ExitStatus::Code(0), t0 + ms(400));
    assert_eq!(
        s.os.tells.last(),
        Some(&Tell::Ready("serving: generation 2, pid 102".into())),
        "READY=1 ends RELOADING=1 only when the old one is gone"
    );
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.state(), "serving");
    assert!(s.exit().is_none());
    assert!(
        s.os.spawned.len() == 2,
        "the stopped old child is not restarted"
    );
}

#[test]
fn new_generation_crashing_keeps_old() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_exit(102, ExitStatus::Code(3), t0 + ms(50));
    let last = s.kept.last_reload.as_ref().unwrap();
    assert_eq!(last.generation, 2);
    assert!(
        last.message
            .contains("exited with status 3 before it was ready"),
        "{}",
        last.message
    );
    assert_eq!(s.kept.serving, 1);
    assert!(s.os.signals.is_empty(), "old generation never signalled");
    assert_eq!(pids(&s, 1), [101]);
    assert!(!s.kept.last_reload.as_ref().unwrap().ok);
}

#[test]
fn ready_timeout_stops_new_and_keeps_old() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    let deadline = s.next_deadline().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(60));
    s.t_timer(deadline);
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    assert_eq!(s.kept.serving, 1);
    // It ignores TERM: KILL after the stop timeout.
    let kill_at = s.next_deadline().unwrap();
    assert_eq!(kill_at, deadline + Duration::from_secs(10));
    s.t_timer(kill_at);
    assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGKILL)));
    s.t_exit(102, ExitStatus::Signal(9), kill_at);
    assert_eq!(pids(&s, 1), [101]);
}

#[test]
fn reloads_during_a_reload_coalesce_into_one() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    assert_eq!(s.t_reload(t0), Ok(2));
    assert_eq!(s.t_reload(t0), Ok(3));
    assert_eq!(s.t_reload(t0), Ok(3));
    assert_eq!(
        s.os.spawned.len(),
        2,
        "no third child until the reload ends"
    );
    s.t_ready(102, t0);
    s.t_exit(101, ExitStatus::Code(0), t0);
    assert_eq!(
        s.os.spawned.last(),
        Some(&(103, 3, 0)),
        "exactly one more reload"
    );
    assert_eq!(s.os.spawned.len(), 3);
}

/// What `--metrics` counts, each once, at its transition.
#[test]
fn transitions_are_counted_once() {
    use Count::*;
    let (mut s, t0) = started(1);
    s.t_ready(101, t0 + ms(250));
    assert_eq!(s.os.counts, [Ready(ms(250))]);
    s.os.counts.clear();
    // A reload, one merged into the next, and that next one.
    s.t_reload(t0 + ms(1000)).unwrap();
    s.t_reload(t0 + ms(1000)).unwrap();
    s.t_ready(102, t0 + ms(1100));
    s.t_exit(101, ExitStatus::Code(0), t0 + ms(1200));
    s.t_ready(103, t0 + ms(1500));
    s.t_exit(102, ExitStatus::Code(0), t0 + ms(1600));
    assert_eq!(
        s.os.counts,
        [
            Reload(ReloadResult::Coalesced),
            Ready(ms(100)),
            Reload(ReloadResult::Done),
            Ready(ms(300)),
            Reload(ReloadResult::Done),
        ]
    );
    s.os.counts.clear();
    // Failed reloads: exited, not ready in time; a crash and a kill.
    s.t_reload(t0 + ms(2000)).unwrap();
    s.t_exit(104, ExitStatus::Code(1), t0 + ms(2100));
    s.t_reload(t0 + ms(3000)).unwrap();
    s.t_timer(t0 + ms(3000) + Duration::from_secs(60));
    s.t_exit(103, ExitStatus::Code(3), t0 + Duration::from_secs(70));
    let at = s.next_deadline().unwrap();
    s.t_timer(at);
    s.t_exit(106, ExitStatus::Signal(9), at + Duration::from_secs(30));
    assert_eq!(
        s.os.counts,
        [
            Reload(ReloadResult::Exited),
            Reload(ReloadResult::NotReady),
            Restart(RestartReason::Exit),
            Restart(RestartReason::Signal),
        ]
    );
    s.os.counts.clear();
    // A reload cut short by a stop.
    s.t_reload(at + Duration::from_secs(31)).unwrap();
    s.t_stop(at + Duration::from_secs(31));
    assert_eq!(s.os.counts, [Reload(ReloadResult::Cancelled)]);
}

#[test]
fn workers_restart_on_their_own_and_reload_waits_for_all() {
    let (mut s, t0) = started(3);
    for p in [101, 102, 103] {
        s.t_ready(p, t0);
    }
    s.t_exit(102, ExitStatus::Signal(9), t0 + ms(20));
    s.t_timer(s.next_deadline().unwrap());
    assert_eq!(
        s.os.spawned.last(),
        Some(&(104, 1, 1)),
        "worker 1 restarted alone"
    );
    s.t_ready(104, t0);
    s.t_reload(t0).unwrap();
    assert_eq!(pids(&s, 2), [105, 106, 107]);
    s.t_ready(105, t0);
    s.t_ready(106, t0);
    assert!(s.os.signals.is_empty(), "two of three ready is not ready");
    s.t_ready(107, t0);
    let stopped: Vec<i32> = s.os.signals.iter().map(|(p, _)| *p).collect();
    assert_eq!(stopped, [101, 103, 104]);
}

#[test]
fn reload_client_is_answered_when_the_reload_is_done() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    let (to, mut answer) = s.reply();
    let request = Request::Reload;
    s.run(Event::Control { request, reply: to }, t0);
    assert!(answer.try_recv().is_err(), "not before it is done");
    s.run(
        Event::Notify {
            pid: 102,
            notice: Notice {
                ready: true,
                ..Notice::default()
            },
        },
        t0,
    );
    s.t_exit(101, ExitStatus::Code(0), t0);
    match answer.try_recv() {
        Ok(Response::Reloaded { generation, pids }) => {
            assert_eq!((generation, pids), (2, vec![102]))
        }
        other => panic!("{other:?}"),
    }
}
