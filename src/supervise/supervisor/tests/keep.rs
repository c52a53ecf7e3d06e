//! `--keep-previous`: the generation a promotion left is kept, frozen,
//! for a rollback, then stopped when the window ends.

use super::*;

const DRAIN: Duration = Duration::from_secs(5);
const KEEP: Duration = Duration::from_secs(60);
const SEC: Duration = Duration::from_secs(1);

/// Generation 1 (pid 101) served; a reload promoted generation 2 (pid 102)
/// and generation 1 went idle at t0 + 1 s: it is kept.
fn kept() -> (Sim, Instant) {
    let mut s = Sim::new(Config {
        drain: Some(DRAIN),
        keep_previous: Some(KEEP),
        ..cfg(1)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0 + ms(10));
    assert_eq!(s.os.steered, [2]);
    s.t_canary_measured(2, 0, t0 + SEC);
    (s, t0)
}

#[test]
fn after_a_promotion_the_idle_old_generation_is_kept_frozen_not_stopped() {
    let (s, t0) = kept();
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGSTOP)],
        "frozen, not stopped"
    );
    assert!(s.os.released.is_empty(), "its socket stays its own");
    assert!(s.kept.reload.is_none(), "the reload is done");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.kept.serving, 2);
    assert_eq!(pids(&s, 1), [101]);
    let due = s.next_deadline().expect("the window's end is due");
    assert_eq!(due, t0 + SEC + KEEP);
    let k = s.status(t0 + 2 * SEC).kept.expect("status shows it");
    assert_eq!((k.generation, k.pids), (1, vec![101]));
    assert_eq!(k.ends_in_secs, 59.0);
}

#[test]
fn a_kept_generation_is_thawed_and_stopped_when_its_window_ends() {
    let (mut s, t0) = kept();
    s.t_timer(t0 + KEEP);
    assert_eq!(s.os.signals, [(101, Signal::SIGSTOP)], "not yet");
    s.t_timer(t0 + SEC + KEEP);
    assert_eq!(
        s.os.signals,
        [
            (101, Signal::SIGSTOP),
            (101, Signal::SIGTERM),
            (101, Signal::SIGCONT)
        ],
        "told to stop, then thawed to hear it"
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + SEC + KEEP + SEC);
    assert_eq!(s.os.released, [1]);
    assert!(s.kept.previous.is_none());
    assert!(s.status(t0 + 2 * KEEP).kept.is_none());
    assert_eq!(s.state(), "serving");
}

#[test]
fn rollback_thaws_the_kept_generation_steers_to_it_and_drains_the_newer() {
    let (mut s, t0) = kept();
    let mut back = s.t_ask(Request::Rollback, t0 + 2 * SEC);
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGSTOP), (101, Signal::SIGCONT)],
        "thawed; the newer one finishes its requests"
    );
    assert_eq!(s.os.steered, [2, 1], "every new connection back at once");
    assert_eq!(s.kept.serving, 1);
    assert!(s.kept.previous.is_none());
    assert_eq!(s.wants(t0 + 2 * SEC).drain, Some((1, vec![102], false)));
    s.t_canary_measured(1, 0, t0 + 3 * SEC);
    assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGTERM)));
    assert!(
        back.try_recv().is_err(),
        "answered once the newer one stopped"
    );
    s.t_exit(102, ExitStatus::Signal(15), t0 + 4 * SEC);
    assert!(matches!(back.try_recv(), Ok(Response::RolledBack { .. })));
    assert_eq!(s.os.released, [2]);
    assert_eq!(s.state(), "serving");
    assert_eq!(pids(&s, 1), [101]);
}

#[test]
fn a_rollback_that_cannot_steer_leaves_the_kept_one_frozen_and_says_why() {
    let (mut s, t0) = kept();
    s.os.steer_fails = true;
    let mut back = s.t_ask(Request::Rollback, t0 + 2 * SEC);
    match back.try_recv() {
        Ok(Response::Error { message }) => assert!(message.contains("attach refused"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.os.signals,
        [
            (101, Signal::SIGSTOP),
            (101, Signal::SIGCONT),
            (101, Signal::SIGSTOP)
        ]
    );
    assert_eq!(s.kept.serving, 2);
    assert!(s.kept.previous.is_some());
}

#[test]
fn a_reload_while_a_generation_is_kept_stops_the_kept_one_first() {
    let (mut s, t0) = kept();
    s.t_reload(t0 + 2 * SEC).unwrap();
    assert_eq!(
        &s.os.signals[1..],
        [(101, Signal::SIGTERM), (101, Signal::SIGCONT)]
    );
    assert!(s.kept.previous.is_none());
    s.t_exit(101, ExitStatus::Signal(15), t0 + 2 * SEC);
    s.t_ready(103, t0 + 3 * SEC);
    s.t_canary_measured(3, 0, t0 + 4 * SEC);
    assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGSTOP)));
    assert_eq!(s.kept.previous.map(|p| p.generation), Some(2));
}

#[test]
fn stopping_relaunch_thaws_the_kept_generation_to_stop_it() {
    let (mut s, t0) = kept();
    s.t_stop(t0 + 2 * SEC);
    let sent = &s.os.signals[1..];
    assert!(sent.contains(&(101, Signal::SIGTERM)), "{sent:?}");
    assert!(sent.contains(&(101, Signal::SIGCONT)), "{sent:?}");
    assert!(sent.contains(&(102, Signal::SIGTERM)), "{sent:?}");
}

#[test]
fn a_kept_generation_that_ends_on_its_own_is_no_longer_kept() {
    let (mut s, t0) = kept();
    s.t_exit(101, ExitStatus::Signal(9), t0 + 2 * SEC);
    assert!(s.kept.previous.is_none());
    assert_eq!(s.kept.serving, 2);
    assert!(
        s.os.spawned.iter().all(|&(pid, ..)| pid <= 102),
        "not restarted"
    );
}

#[test]
fn without_keep_previous_the_old_generation_is_stopped_as_before() {
    let mut s = Sim::new(Config {
        drain: Some(DRAIN),
        ..cfg(1)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0 + ms(10));
    s.t_canary_measured(2, 0, t0 + SEC);
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn an_upgrade_carries_the_kept_generation_and_its_window() {
    let (s, t0) = kept();
    let (mut n, _) = upgraded(&s);
    let due = n.next_deadline().expect("the window's end is still due");
    let want = t0 + SEC + KEEP;
    assert!(due.max(want) - due.min(want) < ms(1), "{due:?} {want:?}");
    let mut back = n.t_ask(Request::Rollback, t0 + 2 * SEC);
    assert_eq!(n.os.signals, [(101, Signal::SIGCONT)]);
    assert_eq!(n.os.steered, [1]);
    n.t_canary_measured(1, 0, t0 + 3 * SEC);
    n.t_exit(102, ExitStatus::Signal(15), t0 + 4 * SEC);
    assert!(matches!(back.try_recv(), Ok(Response::RolledBack { .. })));
}

#[test]
fn a_promoted_canary_leaves_the_old_generation_kept() {
    let mut s = Sim::new(Config {
        drain: Some(DRAIN),
        keep_previous: Some(KEEP),
        ..cfg(1)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    let (reply, _canary) = s.reply();
    let request = Request::Canary {
        percent: 10.0,
        promote_after_ms: None,
    };
    s.run(Event::Control { request, reply }, t0);
    s.t_ready(102, t0 + ms(10));
    let (reply, mut promoted) = s.reply();
    s.run(
        Event::Control {
            request: Request::Promote,
            reply,
        },
        t0 + SEC,
    );
    s.t_canary_measured(2, 0, t0 + 2 * SEC);
    assert_eq!(s.os.signals, [(101, Signal::SIGSTOP)]);
    assert!(matches!(
        promoted.try_recv(),
        Ok(Response::Reloaded { generation: 2, .. })
    ));
    let mut back = s.t_ask(Request::Rollback, t0 + 3 * SEC);
    assert_eq!(s.os.steered, [2, 1]);
    s.t_canary_measured(1, 0, t0 + 4 * SEC);
    s.t_exit(102, ExitStatus::Signal(15), t0 + 5 * SEC);
    assert!(matches!(back.try_recv(), Ok(Response::RolledBack { .. })));
}
