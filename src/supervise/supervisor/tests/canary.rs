//! Canary: a new generation takes a share of new connections beside the
//! serving one, until it is promoted (by hand or after `--canary-for`) or
//! rolled back (by hand, or because it crashed or failed its health).

use super::*;
use crate::sockets::drain::Busy;

const DRAIN: Duration = Duration::from_secs(5);
const SEC: Duration = Duration::from_secs(1);

fn canary(percent: f64, promote_after: Option<Duration>) -> Request {
    Request::Canary {
        percent,
        promote_after_ms: promote_after.map(|d| d.as_millis() as u64),
    }
}

impl Sim {
    pub(super) fn t_ask(
        &mut self,
        request: Request,
        now: Instant,
    ) -> tokio::sync::oneshot::Receiver<Response> {
        let (reply, answer) = self.reply();
        self.run(Event::Control { request, reply }, now);
        answer
    }
    pub(super) fn t_canary_measured(&mut self, generation: u64, open: u32, now: Instant) {
        let busy = Ok(Busy {
            open,
            queued: 0,
            handshakes: 0,
        });
        self.run(Event::Drained { generation, busy }, now);
    }
}

fn answered(answer: &mut tokio::sync::oneshot::Receiver<Response>) -> Option<Response> {
    answer.try_recv().ok()
}

/// Generation 1 (pid 101) serving with drain on; `relaunch reload --canary
/// 10%` started generation 2 (pid 102) with sockets of its own.
fn starting(
    cfg: Config,
    promote_after: Option<Duration>,
) -> (Sim, Instant, tokio::sync::oneshot::Receiver<Response>) {
    let mut s = Sim::new(Config {
        drain: Some(DRAIN),
        ..cfg
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    for pid in pids(&s, 1) {
        s.t_ready(pid, t0);
    }
    let answer = s.t_ask(canary(10.0, promote_after), t0);
    assert_eq!(s.os.opened, [2]);
    assert!(!pids(&s, 2).is_empty());
    (s, t0, answer)
}

/// As [`starting`], and generation 2 is ready: it serves as the canary.
fn serving(
    promote_after: Option<Duration>,
) -> (Sim, Instant, tokio::sync::oneshot::Receiver<Response>) {
    let (mut s, t0, answer) = starting(cfg(1), promote_after);
    s.t_ready(102, t0 + ms(10));
    (s, t0, answer)
}

#[test]
fn a_ready_canary_gets_its_share_and_the_reload_is_answered_then() {
    let (mut s, t0, mut answer) = starting(cfg(1), None);
    assert!(s.os.shared.is_empty(), "nothing for it before it is ready");
    assert!(answered(&mut answer).is_none());
    s.t_ready(102, t0 + ms(10));
    assert_eq!(s.os.shared, [(2, 0.1)]);
    assert!(s.os.steered.is_empty(), "the old one keeps the rest");
    assert!(s.os.signals.is_empty(), "both serve");
    assert_eq!(s.kept.serving, 1);
    match answered(&mut answer) {
        Some(Response::CanaryServes {
            generation: 2,
            share,
            pids,
        }) => {
            assert_eq!(share, 0.1);
            assert_eq!(pids, [102]);
        }
        other => panic!("{other:?}"),
    }
    let st = s.status(t0 + ms(20));
    let c = st.canary.expect("status shows the canary");
    assert_eq!((c.generation, c.beside, c.share), (2, 1, 0.1));
    assert_eq!(c.promote_in_secs, None);
    assert!(st.ready);
    assert_eq!(st.state, "serving with a canary");
    assert!(s.wants(t0 + ms(20)).drain.is_none(), "nothing drains");
    assert_eq!(s.next_deadline(), None, "no promotion without --canary-for");
}

#[test]
fn a_reload_while_a_canary_runs_is_refused_until_promote_or_rollback() {
    let (mut s, t0, _answer) = serving(None);
    for request in [Request::Reload, canary(20.0, None)] {
        let mut again = s.t_ask(request, t0 + ms(20));
        match answered(&mut again) {
            Some(Response::ReloadFailed { reason, .. }) => assert!(
                reason.contains("runs as a canary (10%")
                    && reason.contains("relaunch promote")
                    && reason.contains("relaunch rollback"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let e = s.t_reload(t0 + ms(30)).unwrap_err();
    assert!(e.contains("promote it"), "{e}");
    assert_eq!(pids(&s, 3), Vec::<i32>::new(), "nothing started");
}

#[test]
fn a_canary_is_refused_where_new_connections_cannot_be_shared() {
    let refused = |cfg: Config, request: Request| {
        let mut s = Sim::new(cfg);
        s.os.own_sockets = true;
        let t0 = Instant::now();
        s.t_start(t0);
        s.t_ready(101, t0);
        let mut answer = s.t_ask(request, t0);
        assert!(s.os.opened.is_empty(), "no generation started");
        match answered(&mut answer) {
            Some(Response::ReloadFailed { reason, .. }) => reason,
            other => panic!("{other:?}"),
        }
    };
    let why = "app is a Unix socket, whose generations take turns by a rename";
    let unix = Config {
        drain: Some(DRAIN),
        no_canary: Some(why.into()),
        keep_previous: None,
        ..cfg(1)
    };
    assert_eq!(
        refused(unix, canary(10.0, None)),
        format!("--canary cannot run here: {why}")
    );
    let no_drain = cfg(1);
    assert!(refused(no_drain, canary(10.0, None)).contains("the drain is off"));
    let on = Config {
        drain: Some(DRAIN),
        ..cfg(1)
    };
    let forever = Request::Canary {
        percent: 10.0,
        promote_after_ms: Some(u64::MAX),
    };
    assert!(refused(on, forever).contains("--canary-for may be at most"));
    // A share the steering program would round to nothing or everything
    // is refused too.
    for percent in [0.0, 100.0, -3.0, f64::NAN, 250.0, 1e-10, 99.999_999_999] {
        let on = Config {
            drain: Some(DRAIN),
            ..cfg(1)
        };
        let reason = refused(on, canary(percent, None));
        assert!(reason.contains("from 0.01% to 99.99%"), "{reason}");
    }
}

#[test]
fn promote_gives_the_canary_everything_and_drains_the_old_generation() {
    let (mut s, t0, _answer) = serving(None);
    let mut promoted = s.t_ask(Request::Promote, t0 + SEC);
    assert_eq!(s.os.steered, [2], "every new connection to generation 2");
    assert_eq!(s.kept.serving, 2);
    assert!(s.status(t0 + SEC).canary.is_none());
    assert_eq!(s.wants(t0 + SEC).drain, Some((2, vec![101], false)));
    s.t_canary_measured(2, 2, t0 + SEC + ms(300));
    assert!(s.os.signals.is_empty(), "the old one finishes its requests");
    s.t_canary_measured(2, 0, t0 + SEC + ms(400));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert!(
        answered(&mut promoted).is_none(),
        "answered once it is done"
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + 2 * SEC);
    assert!(matches!(
        answered(&mut promoted),
        Some(Response::Reloaded { generation: 2, .. })
    ));
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(s.os.released, [1]);
}

#[test]
fn rollback_gives_everything_back_and_drains_then_stops_the_canary() {
    let (mut s, t0, _answer) = serving(None);
    let mut back = s.t_ask(Request::Rollback, t0 + SEC);
    assert_eq!(s.os.steered, [1], "every new connection to generation 1");
    assert_eq!(s.kept.serving, 1);
    assert!(s.status(t0 + SEC).canary.is_none());
    // The drain measures the canary, by the generation that serves.
    assert_eq!(s.wants(t0 + SEC).drain, Some((1, vec![102], false)));
    let d = s.status(t0 + SEC).draining.expect("the canary drains");
    assert_eq!(d.generation, 2);
    s.t_canary_measured(1, 1, t0 + SEC + ms(300));
    assert!(s.os.signals.is_empty(), "the canary finishes its requests");
    s.t_canary_measured(1, 0, t0 + SEC + ms(400));
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    assert!(answered(&mut back).is_none(), "answered once it is done");
    s.t_exit(102, ExitStatus::Signal(15), t0 + 2 * SEC);
    match answered(&mut back) {
        Some(Response::RolledBack {
            generation: 2,
            serving: 1,
            reason,
        }) => assert!(reason.contains("relaunch rollback"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.state(), "serving");
    assert!(!s.kept.last_reload.as_ref().unwrap().ok);
    assert!(
        s.os.counts
            .contains(&Count::Reload(ReloadResult::RolledBack))
    );
    assert_eq!(s.os.released, [2]);
    assert_eq!(pids(&s, 1), [101]);
    // A reload may follow.
    assert_eq!(s.t_reload(t0 + 3 * SEC), Ok(3));
}

#[test]
fn promote_and_rollback_without_a_canary_say_there_is_none() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    for request in [Request::Promote, Request::Rollback] {
        let mut answer = s.t_ask(request, t0);
        match answered(&mut answer) {
            Some(Response::Error { message }) => {
                assert!(message.contains("no canary runs"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    let (mut s, t0, _answer) = starting(cfg(1), None);
    let mut promote = s.t_ask(Request::Promote, t0);
    match answered(&mut promote) {
        Some(Response::Error { message }) => assert!(message.contains("not ready"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Rolled back before it was ready: simply stopped.
    let mut back = s.t_ask(Request::Rollback, t0);
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    assert!(matches!(
        answered(&mut back),
        Some(Response::RolledBack { generation: 2, .. })
    ));
    assert!(s.os.shared.is_empty() && s.os.steered.is_empty());
}

#[test]
fn a_canary_for_a_while_is_promoted_then_and_the_reload_answered_once_done() {
    let (mut s, t0, mut answer) = serving(Some(60 * SEC));
    assert!(
        answered(&mut answer).is_none(),
        "the outcome is not known yet"
    );
    let ready = t0 + ms(10);
    assert_eq!(s.next_deadline(), Some(ready + 60 * SEC));
    let c = s.status(ready + SEC).canary.unwrap();
    assert_eq!(c.promote_in_secs, Some(59.0));
    s.t_timer(ready + 59 * SEC);
    assert!(s.os.steered.is_empty());
    s.t_timer(ready + 60 * SEC);
    assert_eq!(s.os.steered, [2]);
    s.t_canary_measured(2, 0, ready + 61 * SEC);
    s.t_exit(101, ExitStatus::Signal(15), ready + 61 * SEC);
    assert!(matches!(
        answered(&mut answer),
        Some(Response::Reloaded { generation: 2, .. })
    ));
}

#[test]
fn a_canary_that_crashes_is_rolled_back_not_restarted() {
    let (mut s, t0, mut answer) = {
        let (mut s, t0, answer) = starting(cfg(2), Some(60 * SEC));
        s.t_ready(103, t0);
        s.t_ready(104, t0);
        (s, t0, answer)
    };
    assert_eq!(s.os.shared, [(2, 0.1)]);
    s.t_exit(103, ExitStatus::Signal(9), t0 + SEC);
    assert_eq!(s.os.steered, [1], "everything back to generation 1");
    assert_eq!(pids(&s, 2), [104], "no restart of the canary");
    assert_eq!(s.wants(t0 + SEC).drain, Some((1, vec![104], false)));
    s.t_canary_measured(1, 0, t0 + SEC + ms(300));
    assert_eq!(s.os.signals, [(104, Signal::SIGTERM)]);
    s.t_exit(104, ExitStatus::Signal(15), t0 + 2 * SEC);
    match answered(&mut answer) {
        Some(Response::RolledBack { reason, .. }) => {
            assert!(reason.contains("worker 0 (pid 103)"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pids(&s, 1), [101, 102]);
    assert_eq!(s.kept.serving, 1);
    // The promotion it would have had never comes.
    s.t_timer(t0 + 120 * SEC);
    assert_eq!(s.os.steered, [1]);
}

#[test]
fn a_canary_failing_its_health_checks_is_rolled_back() {
    let health = Config {
        health: Some(Health {
            probe: Probe::Http("/healthz".into()),
            every: SEC,
            failures: 2,
        }),
        ..cfg(1)
    };
    let (mut s, t0, mut answer) = starting(health, Some(60 * SEC));
    s.t_ready(102, t0);
    s.t_timer(t0 + SEC);
    assert!(
        s.os.probes.ends_with(&[(2, vec![102]), (1, vec![101])]),
        "the canary is checked, and the generation beside it: {:?}",
        s.os.probes
    );
    for n in 1..=2 {
        s.t_probed(2, Err("GET /healthz answered 500"), t0 + n * SEC);
        s.t_timer(t0 + (n + 1) * SEC);
    }
    assert_eq!(s.os.steered, [1], "rolled back");
    assert!(
        !s.os.signals.contains(&(102, Signal::SIGKILL)),
        "not killed as a crash: it drains"
    );
    s.t_canary_measured(1, 0, t0 + 4 * SEC);
    s.t_exit(102, ExitStatus::Signal(15), t0 + 4 * SEC);
    match answered(&mut answer) {
        Some(Response::RolledBack { reason, .. }) => {
            assert!(reason.contains("failed 2 health checks"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_upgrade_carries_a_canary_on() {
    let (s, t0, _answer) = serving(Some(60 * SEC));
    let (mut n, _) = upgraded(&s);
    let c = n.status(t0 + SEC).canary.expect("still a canary");
    assert_eq!((c.generation, c.share), (2, 0.1));
    // Carried at a microsecond's precision.
    let due = n.next_deadline().expect("its promotion is still due");
    let want = t0 + ms(10) + 60 * SEC;
    assert!(due.max(want) - due.min(want) < ms(1), "{due:?} {want:?}");
    let mut back = n.t_ask(Request::Rollback, t0 + SEC);
    assert_eq!(n.os.steered, [1]);
    n.t_canary_measured(1, 0, t0 + SEC + ms(300));
    n.t_exit(102, ExitStatus::Signal(15), t0 + 2 * SEC);
    assert!(matches!(
        answered(&mut back),
        Some(Response::RolledBack { .. })
    ));
}

#[test]
fn a_share_that_cannot_be_attached_fails_the_reload_and_stops_the_canary() {
    let (mut s, t0, mut answer) = starting(cfg(1), None);
    s.os.steer_fails = true;
    s.t_ready(102, t0 + ms(10));
    assert_eq!(s.os.shared, [(2, 0.1)], "tried");
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    match answered(&mut answer) {
        Some(Response::ReloadFailed { reason, .. }) => {
            assert!(
                reason.contains("cannot send 10% of new connections"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(s.status(t0 + ms(20)).canary.is_none());
    assert_eq!(s.kept.serving, 1);
}

#[test]
fn a_canary_that_cannot_be_promoted_when_its_time_is_up_is_rolled_back() {
    let (mut s, t0, mut answer) = serving(Some(SEC));
    s.os.steer_fails = true;
    s.t_timer(t0 + ms(10) + SEC);
    // The promotion's steer failed, then the rollback's: it says so and
    // drains the canary all the same (its share ends with its socket).
    assert_eq!(s.os.steered, [2, 1]);
    assert_eq!(s.wants(t0 + 2 * SEC).drain, Some((1, vec![102], false)));
    s.t_canary_measured(1, 0, t0 + 2 * SEC);
    s.t_exit(102, ExitStatus::Signal(15), t0 + 2 * SEC);
    match answered(&mut answer) {
        Some(Response::RolledBack { reason, .. }) => {
            assert!(reason.contains("could not be promoted"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.os.released, [2]);
}

#[test]
fn a_foreign_listener_on_a_canarys_port_rolls_it_back_and_says_why() {
    let (mut s, t0, mut answer) = starting(cfg(1), Some(60 * SEC));
    assert_eq!(
        s.wants(t0).guard,
        None,
        "no share steered yet: nothing to guard"
    );
    s.t_ready(102, t0 + ms(10));
    assert_eq!(s.wants(t0 + ms(10)).guard, Some(2), "its ports are watched");
    let why = "web: other listeners are on port 5000 (127.0.0.2:5000): relaunch never steers a \
               share where they could take it";
    // A find about another canary (one that ended) changes nothing.
    let other = Event::Foreign {
        generation: 7,
        why: why.into(),
    };
    s.run(other, t0 + SEC);
    assert!(s.os.steered.is_empty());
    let found = Event::Foreign {
        generation: 2,
        why: why.into(),
    };
    s.run(found, t0 + SEC);
    assert_eq!(s.os.steered, [1], "everything back to generation 1");
    assert_eq!(
        s.wants(t0 + SEC).guard,
        None,
        "rolling back: no share to guard"
    );
    s.t_canary_measured(1, 0, t0 + SEC + ms(300));
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    s.t_exit(102, ExitStatus::Signal(15), t0 + 2 * SEC);
    match answered(&mut answer) {
        Some(Response::RolledBack { reason, .. }) => {
            assert!(
                reason.contains("was rolled back: web: other listeners"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A late find, after the canary is gone, changes nothing.
    let late = Event::Foreign {
        generation: 2,
        why: why.into(),
    };
    s.run(late, t0 + 3 * SEC);
    assert_eq!(s.os.steered, [1]);
    assert_eq!(s.kept.serving, 1);
}

fn checked_every(every: Duration) -> Config {
    Config {
        health: Some(Health {
            probe: Probe::Http("/healthz".into()),
            every,
            failures: 2,
        }),
        ..cfg(1)
    }
}

#[test]
fn a_canary_no_health_check_of_which_passed_is_rolled_back_not_promoted() {
    let (mut s, t0, mut answer) = starting(checked_every(SEC), Some(5 * SEC));
    // Every check of the canary is one relaunch cannot start.
    s.os.probe_fails = Some(NotProbed::Own("the probe port is taken".into()));
    s.t_ready(102, t0);
    let mut now = t0;
    while s.os.steered.is_empty() && now < t0 + 10 * SEC {
        now = s.next_deadline().expect("a check or the promotion is due");
        s.t_timer(now);
    }
    assert_eq!(s.os.steered, [1], "rolled back, not promoted");
    assert!(now >= t0 + 5 * SEC, "at its promotion time");
    s.t_canary_measured(1, 0, now + SEC);
    s.t_exit(102, ExitStatus::Signal(15), now + 2 * SEC);
    match answered(&mut answer) {
        Some(Response::RolledBack { reason, .. }) => assert!(
            reason.contains("no health check of it passed")
                && reason.contains("the probe port is taken"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_canary_for_no_longer_than_a_health_check_is_refused() {
    let mut s = Sim::new(Config {
        drain: Some(DRAIN),
        ..checked_every(10 * SEC)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    let mut answer = s.t_ask(canary(10.0, Some(10 * SEC)), t0);
    match answered(&mut answer) {
        Some(Response::ReloadFailed { reason, .. }) => assert!(
            reason.contains("--canary-for 10s is not longer than --health-every 10s"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(s.os.opened.is_empty(), "nothing started");
}

#[test]
fn a_canarys_first_health_check_is_at_once() {
    let (mut s, t0, _answer) = starting(checked_every(30 * SEC), Some(31 * SEC));
    s.t_ready(102, t0 + ms(10));
    assert_eq!(
        s.os.probes.first(),
        Some(&(2, vec![102])),
        "checked as soon as it serves, not a period on"
    );
    s.t_probed(2, Ok("GET /healthz answered 200 OK"), t0 + 2 * SEC);
    while s.os.steered.is_empty() {
        let now = s.next_deadline().expect("its promotion is due");
        s.t_timer(now);
        for (number, ..) in s.t_running() {
            s.t_probed_by(number, Ok("GET /healthz answered 200 OK"), now);
        }
    }
    assert_eq!(s.os.steered, [2], "promoted at its time");
}
