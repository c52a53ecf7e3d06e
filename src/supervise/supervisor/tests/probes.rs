//! Health-gated promotion (`--ready http:`, `tcp`, `exec:`): a generation
//! is ready when a probe of it alone passes, and never promoted otherwise.

use super::*;
use crate::counts::RestartReason;

const READY_TIMEOUT: Duration = Duration::from_secs(5);

fn gated(workers: usize) -> Sim {
    let mut s = Sim::new(Config {
        drain: Some(Duration::from_secs(10)),
        ready_auto: false,
        ready_probe: Some(Probe::Http("/healthz".into())),
        ready_timeout: READY_TIMEOUT,
        ..cfg(workers)
    });
    s.os.own_sockets = true;
    s
}

/// Generation 1 (pid 101) serving after a passed probe, generation 2
/// (pid 102) started by `relaunch reload`, whose answer is returned.
fn reloading() -> (Sim, Instant, tokio::sync::oneshot::Receiver<Response>) {
    let mut s = gated(1);
    let t0 = Instant::now();
    s.t_start(t0);
    assert_eq!(
        s.os.probes,
        [(1, vec![101])],
        "the first generation is probed"
    );
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0);
    assert_eq!(s.state(), "serving");
    let answer = s.t_reload_client(t0);
    assert_eq!(s.os.opened, [2]);
    assert_eq!(s.os.probes.last(), Some(&(2, vec![102])));
    (s, t0, answer)
}

#[test]
fn a_healthy_answer_promotes_the_new_generation() {
    let (mut s, t0, mut answer) = reloading();
    // Neither the scan nor READY=1 is enough.
    s.t_ready(102, t0 + ms(10));
    let notice = Notice {
        ready: true,
        ..Notice::default()
    };
    s.run(Event::Notify { pid: 102, notice }, t0 + ms(10));
    assert!(
        s.os.steered.is_empty(),
        "not promoted before a probe passes"
    );
    s.t_probed(2, Ok("GET /healthz answered 200 OK"), t0 + ms(50));
    assert_eq!(s.os.steered, [2]);
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.os.probes_ended, [1, 2], "no probe runs once it is ready");
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(100));
    s.run(
        Event::Drained {
            generation: 2,
            busy: Ok(Default::default()),
        },
        t0 + ms(400),
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(450));
    assert!(matches!(
        answer.try_recv(),
        Ok(Response::Reloaded { generation: 2, .. })
    ));
}

#[test]
fn an_unhealthy_generation_is_probed_again_and_never_promoted() {
    let (mut s, t0, mut answer) = reloading();
    let bad = "GET /healthz answered 500 Internal Server Error";
    s.t_probed(2, Err(bad), t0 + ms(100));
    assert_eq!(s.os.probes.len(), 2, "one probe at a time");
    assert_eq!(s.next_deadline(), Some(t0 + ms(100) + PROBE_EVERY));
    s.t_timer(t0 + ms(100) + PROBE_EVERY);
    assert_eq!(s.os.probes.len(), 3, "probed again after the pause");
    // An answer for a probe no longer running changes nothing.
    s.t_probed(1, Ok("late"), t0 + ms(350));
    s.t_probed(2, Err(bad), t0 + ms(400));
    assert_eq!(
        s.status(t0 + ms(400)).probe.as_deref(),
        Some(format!("generation 2, --ready http:/healthz: {bad}").as_str()),
        "status says what the last probe found"
    );
    s.t_timer(t0 + READY_TIMEOUT);
    assert!(s.os.steered.is_empty(), "never promoted");
    assert_eq!(s.status(t0 + READY_TIMEOUT).probe, None);
    assert_eq!(s.kept.serving, 1, "the old generation serves on");
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    let Ok(Response::ReloadFailed { reason, .. }) = answer.try_recv() else {
        panic!("the client hears the failure");
    };
    assert_eq!(
        reason,
        format!("generation 2 was not ready within 5s: {bad}")
    );
    assert!(s.os.probes_ended.contains(&2));
}

#[test]
fn a_failed_reload_with_no_probe_answered_says_so() {
    let (mut s, t0, mut answer) = reloading();
    s.t_timer(t0 + READY_TIMEOUT);
    let Ok(Response::ReloadFailed { reason, .. }) = answer.try_recv() else {
        panic!("failed");
    };
    assert!(
        reason.ends_with("no --ready http:/healthz probe of it has ended yet"),
        "{reason}"
    );
}

#[test]
fn a_reload_without_sockets_of_its_own_cannot_be_probed_and_fails_at_once() {
    let mut s = gated(1);
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_probed(1, Ok("ok"), t0);
    s.os.own_sockets = false;
    let mut answer = s.t_reload_client(t0);
    assert_eq!(s.os.spawned.len(), 1, "nothing started");
    let Ok(Response::ReloadFailed { reason, .. }) = answer.try_recv() else {
        panic!("failed");
    };
    assert!(reason.contains("cannot be probed alone"), "{reason}");
    assert_eq!(s.kept.serving, 1);
}

#[test]
fn a_probe_that_cannot_start_is_said_and_tried_again() {
    let mut s = gated(1);
    s.os.probe_fails = Some(NotProbed::Failed("cannot connect".into()));
    let t0 = Instant::now();
    s.t_start(t0);
    assert!(s.os.probes.is_empty());
    assert_eq!(s.next_deadline(), Some(t0 + PROBE_EVERY));
    s.os.probe_fails = None;
    s.t_timer(t0 + PROBE_EVERY);
    assert_eq!(s.os.probes, [(1, vec![101])]);
}

#[test]
fn the_first_generation_unhealthy_at_the_timeout_serves_with_the_probe_said_and_is_probed_on() {
    let mut s = gated(2);
    let t0 = Instant::now();
    s.t_start(t0);
    assert_eq!(s.os.probes, [(1, vec![101, 102])], "one probe for both");
    s.t_probed(1, Err("GET /healthz answered 503"), t0 + ms(100));
    s.t_timer(t0 + READY_TIMEOUT);
    assert_eq!(s.state(), "serving", "nothing else can serve");
    assert!(s.exit().is_none());
    // Still probed: healthy later, both workers are ready.
    s.t_timer(t0 + READY_TIMEOUT + PROBE_EVERY);
    assert_eq!(s.os.probes.len(), 2);
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0 + READY_TIMEOUT);
    assert!(s.children().iter().all(|c| c.state == State::Ready));
    assert_eq!(s.os.probes_ended, [1]);
}

#[test]
fn a_restarted_worker_is_ready_when_its_generation_answers() {
    let mut s = gated(2);
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_probed(1, Ok("ok"), t0);
    s.t_exit(101, ExitStatus::Code(1), t0 + Duration::from_secs(60));
    let due = s.next_deadline().unwrap();
    s.t_timer(due);
    let restarted = s.os.spawned.last().unwrap().0;
    assert_eq!(s.os.probes.last().unwrap().0, 1, "probed again");
    s.t_probed(1, Ok("ok"), due);
    let c = s.children().iter().find(|c| c.pid == restarted).unwrap();
    assert_eq!(c.state, State::Ready);
}

#[test]
fn a_new_generation_that_exits_ends_its_probe() {
    let (mut s, t0, _answer) = reloading();
    s.t_exit(102, ExitStatus::Code(3), t0 + ms(30));
    assert!(s.os.probes_ended.contains(&2));
    // Its probe's late answer promotes nothing.
    s.t_probed(2, Ok("GET /healthz answered 200 OK"), t0 + ms(40));
    assert!(s.os.steered.is_empty());
    assert_eq!(s.kept.serving, 1);
}

/// `--health http:/healthz --health-every 1s --health-failures 3` under
/// `--ready auto`: generation 1 (pids 101, 102) serving.
fn checked() -> (Sim, Instant) {
    let mut s = Sim::new(Config {
        drain: Some(Duration::from_secs(10)),
        health: Some(Health {
            probe: Probe::Http("/healthz".into()),
            every: Duration::from_secs(1),
            failures: 3,
        }),
        ..cfg(2)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    assert!(s.os.probes.is_empty(), "no health check before it serves");
    s.t_ready(101, t0);
    s.t_ready(102, t0);
    assert_eq!(s.state(), "serving");
    (s, t0)
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn failed_health_checks_in_a_row_count_as_a_crash_and_a_pass_resets_them() {
    let (mut s, t0) = checked();
    assert_eq!(
        s.next_deadline(),
        Some(t0 + SEC),
        "the first check, a period on"
    );
    s.t_timer(t0 + SEC);
    assert_eq!(s.os.probes, [(1, vec![101, 102])]);
    s.t_probed(1, Err("GET /healthz answered 500"), t0 + SEC);
    s.t_timer(t0 + 2 * SEC);
    s.t_probed(1, Err("GET /healthz answered 500"), t0 + 2 * SEC);
    s.t_timer(t0 + 3 * SEC);
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0 + 3 * SEC);
    for n in 4..6 {
        s.t_timer(t0 + n * SEC);
        s.t_probed(1, Err("no answer"), t0 + n * SEC);
    }
    assert!(
        s.os.signals.is_empty(),
        "two failures in a row since the pass"
    );
    assert_eq!(
        s.status(t0 + 5 * SEC).probe.as_deref(),
        Some("generation 1, --health http:/healthz: no answer (2 failure(s) in a row)")
    );
    s.t_timer(t0 + 6 * SEC);
    s.t_probed(1, Err("no answer"), t0 + 6 * SEC);
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGKILL), (102, Signal::SIGKILL)],
        "the third in a row: its workers are killed"
    );
    // They exit as crashed, and restart (no checks meanwhile).
    s.t_exit(101, ExitStatus::Signal(9), t0 + 6 * SEC);
    s.t_exit(102, ExitStatus::Signal(9), t0 + 6 * SEC);
    assert!(s.os.probes_ended.contains(&1));
    let due = s.next_deadline().unwrap();
    s.t_timer(due);
    assert_eq!(s.os.spawned.len(), 4, "both restarted");
    assert_eq!(s.os.probes.len(), 6, "no health check while they start");
    assert_eq!(
        s.os.counts
            .iter()
            .filter(|c| **c == Count::Restart(RestartReason::Signal))
            .count(),
        2
    );
}

#[test]
fn health_checks_pause_during_a_reload_and_then_check_the_new_generation() {
    let (mut s, t0) = checked();
    s.t_timer(t0 + SEC);
    assert_eq!(s.os.probes.len(), 1);
    let _answer = s.t_reload_client(t0 + SEC);
    assert_eq!(s.os.probes_ended, [1], "the check of generation 1 ends");
    // A late answer is not counted.
    s.t_probed(1, Err("late"), t0 + SEC);
    s.t_ready(103, t0 + 2 * SEC);
    s.t_ready(104, t0 + 2 * SEC);
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.os.probes.len(), 1, "none during the reload");
    s.run(
        Event::Drained {
            generation: 2,
            busy: Ok(Default::default()),
        },
        t0 + 3 * SEC,
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + 3 * SEC);
    s.t_exit(102, ExitStatus::Signal(15), t0 + 3 * SEC);
    assert_eq!(s.state(), "serving");
    s.t_timer(t0 + 4 * SEC);
    assert_eq!(s.os.probes.last(), Some(&(2, vec![103, 104])));
}

#[test]
fn an_upgrade_during_a_probed_reload_probes_afresh_and_promotes() {
    let (s, t0, _answer) = reloading();
    let (mut n, _) = upgraded(&s);
    assert_eq!(n.config().ready_probe, Some(Probe::Http("/healthz".into())));
    // The resumed loop looks at what is due at once (see `driver::resume`).
    n.t_timer(t0 + ms(5));
    assert_eq!(n.os.probes, [(2, vec![102])], "probed afresh");
    n.t_probed(2, Ok("GET /healthz answered 200 OK"), t0 + ms(10));
    assert_eq!(n.os.steered, [2]);
    assert_eq!(n.kept.serving, 2);
}

#[test]
fn a_health_check_that_cannot_start_counts_as_failed() {
    let (mut s, t0) = checked();
    s.os.probe_fails = Some(NotProbed::Failed("its accept queue is full".into()));
    for n in 1..=3 {
        s.t_timer(t0 + n * SEC);
    }
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGKILL), (102, Signal::SIGKILL)]
    );
}

/// `--ready http:READY` and `--health http:/healthz --health-every 1s
/// --health-failures 3`, with two workers.
fn gated_and_checked(ready: &str) -> Sim {
    let mut s = Sim::new(Config {
        drain: Some(Duration::from_secs(10)),
        ready_auto: false,
        ready_probe: Some(Probe::Http(ready.into())),
        ready_timeout: READY_TIMEOUT,
        health: Some(Health {
            probe: Probe::Http("/healthz".into()),
            every: Duration::from_secs(1),
            failures: 3,
        }),
        ..cfg(2)
    });
    s.os.own_sockets = true;
    s
}

/// `--ready http:` and `--health` together: a serving worker that restarts
/// turns the health check of its generation into a readiness probe. The
/// check's end is carried out before the probe that replaces it starts
/// (the driver ends every probe of a generation), so whenever the core
/// waits for a probe's answer, one runs.
#[test]
fn a_restarted_worker_under_ready_and_health_probes_is_probed_after_the_check_ends() {
    let mut s = gated_and_checked("/healthz");
    // Whether the core waits for an answer that no running probe gives.
    let stuck = |s: &Sim| {
        s.probing.iter().filter(|p| p.due.is_none()).any(|p| {
            s.os.probe_log
                .iter()
                .rev()
                .find(|(_, g)| *g == p.generation)
                != Some(&(true, p.generation))
        })
    };
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0);
    assert_eq!(s.state(), "serving");
    let workers = s.os.spawned.len();
    // A health check runs.
    s.t_timer(t0 + SEC);
    assert_eq!(s.os.probe_log.last(), Some(&(true, 1)));
    // One worker crashes (the other serves on) and restarts: now its
    // readiness is probed.
    s.t_exit(101, ExitStatus::Code(1), t0 + SEC);
    assert!(!stuck(&s), "{:?}", s.os.probe_log);
    let mut now = t0 + SEC;
    while s.os.spawned.len() <= workers || s.probing.iter().any(|p| p.due.is_some()) {
        now = s.next_deadline().expect("something is due");
        s.t_timer(now);
        assert!(
            !stuck(&s),
            "waits for a probe that was ended: {:?}",
            s.os.probe_log
        );
    }
    let pid = s.os.spawned[workers].0;
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), now);
    assert!(
        s.kept
            .children
            .iter()
            .any(|c| c.pid == pid && c.state == State::Ready),
        "the restarted worker is ready"
    );
}

/// A check that never answers (an `exec:` command that hangs) fails at
/// PROBE_LIMIT and is ended; the checks go on.
#[test]
fn a_probe_with_no_answer_fails_at_its_limit_and_the_checks_go_on() {
    let (mut s, t0) = checked();
    s.t_timer(t0 + SEC);
    assert_eq!(s.os.probes.len(), 1);
    let limit = t0 + SEC + PROBE_LIMIT;
    assert_eq!(s.next_deadline(), Some(limit));
    s.t_timer(limit);
    assert_eq!(s.os.probes_ended, [1], "the hung one is ended");
    assert_eq!(
        s.status(limit).probe.as_deref(),
        Some("generation 1, --health http:/healthz: no answer within 10s (1 failure(s) in a row)")
    );
    let next = s.next_deadline().unwrap();
    assert_eq!(next, limit + SEC, "the next check, a period on");
    s.t_timer(next);
    assert_eq!(s.os.probes.len(), 2, "the checks go on");
}

/// A check that ran past its limit was ended and counted; its answer,
/// coming late, is not taken for the check that runs next.
#[test]
fn a_late_answer_of_an_ended_check_is_not_taken_for_the_next() {
    let (mut s, t0) = checked();
    s.t_timer(t0 + SEC);
    let limit = t0 + SEC + PROBE_LIMIT;
    s.t_timer(limit);
    assert_eq!(s.os.probes_ended, [1], "the hung check is ended");
    s.t_timer(limit + SEC);
    assert_eq!(s.os.probes.len(), 2, "the next check runs");
    let ended = s.os.numbers[0];
    s.t_probed_by(
        ended,
        Err("GET /healthz: the connection was closed"),
        limit + SEC,
    );
    assert_eq!(
        s.status(limit + SEC).probe.as_deref(),
        Some("generation 1, --health http:/healthz: no answer within 10s (1 failure(s) in a row)"),
        "the ended check's answer is not counted"
    );
    // The running check's own answer is.
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), limit + SEC);
    assert_eq!(
        s.status(limit + SEC).probe.as_deref(),
        Some("generation 1, --health http:/healthz: GET /healthz answered 200 OK")
    );
}

/// Under `--ready http:` and `--health`, a worker restarts while a health
/// check of its generation runs: that check's answer, about the
/// generation before the restart, does not make the restarted worker
/// ready; only the readiness probe that follows does.
#[test]
fn a_health_answer_from_before_a_restart_does_not_make_the_restarted_worker_ready() {
    let mut s = gated_and_checked("/ready");
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_probed(1, Ok("GET /ready answered 200 OK"), t0);
    assert_eq!(s.state(), "serving");
    s.t_timer(t0 + SEC);
    assert_eq!(s.os.probes.len(), 2, "a health check runs");
    s.t_exit(101, ExitStatus::Code(1), t0 + SEC);
    let mut now = t0 + SEC;
    while s.os.probes.len() < 3 {
        now = s.next_deadline().expect("something is due");
        s.t_timer(now);
    }
    let pid = s.os.spawned.last().unwrap().0;
    assert_eq!(s.os.probes.last().unwrap().0, 1, "its readiness is probed");
    // The ended health check answers now.
    let check = s.os.numbers[1];
    s.t_probed_by(check, Ok("GET /healthz answered 200 OK"), now);
    let state = |s: &Sim| s.children().iter().find(|c| c.pid == pid).unwrap().state;
    assert!(
        matches!(state(&s), State::Starting { .. }),
        "not ready on the ended check's answer: {:?}",
        state(&s)
    );
    s.t_probed(1, Ok("GET /ready answered 200 OK"), now);
    assert_eq!(state(&s), State::Ready);
}

/// A health check that relaunch itself cannot start (here: no socket to
/// probe through, its drain being off) says nothing of the app: it is not
/// counted, and a healthy app is never killed for it.
#[test]
fn a_health_check_relaunch_cannot_start_is_not_counted_against_the_app() {
    let (mut s, t0) = checked();
    let own = "the drain is off (said above): generation 1 has no socket of its own, and the \
               held address reaches another generation too";
    s.os.probe_fails = Some(NotProbed::Own(own.into()));
    for n in 1..=5 {
        s.t_timer(t0 + n * SEC);
    }
    assert!(s.os.signals.is_empty(), "{:?}", s.os.signals);
    assert_eq!(
        s.status(t0 + 5 * SEC).probe,
        Some(format!(
            "generation 1, --health http:/healthz: relaunch cannot check it: {own}"
        )),
        "no failure counted"
    );
    assert_eq!(
        s.next_deadline(),
        Some(t0 + 6 * SEC),
        "tried again a period on"
    );
    // Once it can be probed, its checks count again.
    s.os.probe_fails = None;
    s.t_timer(t0 + 6 * SEC);
    s.t_probed(1, Err("GET /healthz answered 500"), t0 + 6 * SEC);
    assert_eq!(
        s.status(t0 + 6 * SEC).probe.as_deref(),
        Some(
            "generation 1, --health http:/healthz: GET /healthz answered 500 (1 failure(s) in a row)"
        )
    );
}

/// Where a generation has no socket of its own (the drain off at run
/// time), the held address reaches it alone only if no other generation
/// runs: the serving one's checks may go there, a reload's probe may not.
#[test]
fn a_probe_is_told_whether_its_generation_runs_alone() {
    let (s, _, _answer) = reloading();
    assert_eq!(s.os.probes.len(), 2);
    assert_eq!(
        s.os.alone,
        [true, false],
        "the first alone, the reload's beside it"
    );
}

/// `relaunch reload` before the first generation's probe passed: both
/// generations are probed, each by its own probe. The first is ready once
/// its probe passes, not left starting (and "not healthy") until the
/// reload of a bad version fails.
#[test]
fn a_reload_before_the_first_generation_is_ready_probes_both() {
    let mut s = gated(1);
    let t0 = Instant::now();
    s.t_start(t0);
    assert_eq!(s.os.probes, [(1, vec![101])]);
    let _answer = s.t_reload_client(t0 + ms(5));
    assert_eq!(s.os.opened, [2]);
    assert_eq!(
        s.os.probes,
        [(1, vec![101]), (2, vec![102])],
        "the reload's generation is probed beside the first"
    );
    assert!(
        s.os.probes_ended.is_empty(),
        "the first one's probe goes on"
    );
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0 + ms(10));
    assert_eq!(
        s.kept.children[0].state,
        State::Ready,
        "generation 1 is ready"
    );
    let bad = "GET /healthz answered 500 Internal Server Error";
    s.t_probed(2, Err(bad), t0 + ms(10));
    // Generation 2 is probed on; generation 1's probe ended with its start.
    s.t_timer(t0 + ms(10) + PROBE_EVERY);
    assert_eq!(s.os.probes.last(), Some(&(2, vec![102])));
    assert_eq!(s.os.probes_ended, [1]);
    assert_eq!(s.kept.serving, 1);
}

/// A canary asked while the first generation starts is refused, saying
/// why: the share would be steered (and systemd told READY=1) beside a
/// generation that does not serve yet.
#[test]
fn a_canary_before_the_first_generation_is_ready_is_refused() {
    let mut s = gated(1);
    let t0 = Instant::now();
    s.t_start(t0);
    let (reply, mut answer) = s.reply();
    let request = Request::Canary {
        percent: 10.0,
        promote_after_ms: None,
    };
    s.run(Event::Control { request, reply }, t0 + ms(5));
    match answer.try_recv() {
        Ok(Response::ReloadFailed { reason, .. }) => {
            assert!(reason.contains("generation 1 is not ready yet"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.os.opened.is_empty(), "nothing started");
    s.t_probed(1, Ok("GET /healthz answered 200 OK"), t0 + ms(10));
    assert!(s.ready());
}

/// `--health` during a canary: the canary's failed checks in a row are
/// counted across a restart of a serving worker beside it (whose start is
/// probed meanwhile), and the serving generation is checked too.
#[test]
fn a_canarys_failed_checks_count_on_across_a_serving_workers_restart() {
    let mut s = gated_and_checked("/ready");
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_probed(1, Ok("GET /ready answered 200 OK"), t0);
    assert_eq!(s.state(), "serving");
    let (reply, _answer) = s.reply();
    let request = Request::Canary {
        percent: 10.0,
        promote_after_ms: Some(600_000),
    };
    s.run(Event::Control { request, reply }, t0);
    s.t_probed(2, Ok("GET /ready answered 200 OK"), t0);
    assert_eq!(s.os.shared, [(2, 0.1)]);
    let (mut now, mut failed, mut checked_serving, mut restarted) = (t0, 0, 0, false);
    while s.os.steered.is_empty() && now < t0 + 60 * SEC {
        now = s.next_deadline().expect("a check is due");
        s.t_timer(now);
        for (number, generation, health) in s.t_running() {
            match (generation, health) {
                (2, _) => {
                    failed += 1;
                    s.t_probed_by(number, Err("GET /healthz answered 500"), now);
                }
                (_, true) => {
                    checked_serving += 1;
                    s.t_probed_by(number, Ok("GET /healthz answered 200 OK"), now);
                }
                _ => s.t_probed_by(number, Ok("GET /ready answered 200 OK"), now),
            }
        }
        if failed == 2 && !restarted {
            restarted = true;
            s.t_exit(101, ExitStatus::Code(1), now);
        }
    }
    assert!(restarted);
    assert_eq!(s.os.steered, [1], "rolled back");
    assert_eq!(failed, 3, "the third failure in a row rolls it back");
    assert!(checked_serving > 0, "the serving generation is checked too");
}
