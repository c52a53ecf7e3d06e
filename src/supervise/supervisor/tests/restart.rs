//! Restarts after a crash, backoff, exec failures and exit codes.

use super::*;

#[test]
fn crash_restarts_with_backoff_then_gives_up() {
    let (mut s, t0) = started(1);
    let mut now = t0;
    let mut pid = 101;
    for i in 0..backoff::GIVE_UP_AFTER {
        now += ms(10);
        s.t_exit(pid, ExitStatus::Code(3), now);
        if i + 1 == backoff::GIVE_UP_AFTER {
            break;
        }
        let at = s.next_deadline().expect("a restart is scheduled");
        assert_eq!(at, now + backoff::FIRST * 2u32.pow(i));
        now = at;
        s.t_timer(now);
        pid += 1;
        assert_eq!(s.children()[0].pid, pid);
        assert_eq!(s.kept.slots[0].restarts, i + 1);
    }
    let exit = s.exit().expect("gave up");
    assert_eq!(exit.code, 1);
    assert_eq!(
        s.os.counts.last(),
        Some(&Count::Restart(RestartReason::GiveUp))
    );
    assert!(
        exit.error
            .unwrap()
            .contains("the last one exited with status 3")
    );
}

/// A server that became ready and served is not a crash loop.
/// The bench's crash scenario: SIGKILL the serving child 5 times, each
/// after it served for 2 s. Every restart must come at once, not after
/// 0.1, 0.2, 0.4, 0.8, 1.6 s.
#[test]
fn crash_after_serving_restarts_at_once_every_time() {
    let (mut s, t0) = started(1);
    let mut now = t0;
    let mut pid = 101;
    let mut waits = Vec::new();
    for _ in 0..5 {
        now += ms(300);
        s.t_ready(pid, now);
        now += Duration::from_secs(2);
        s.t_exit(pid, ExitStatus::Signal(9), now);
        let at = s.next_deadline().expect("a restart is scheduled");
        waits.push(at - now);
        now = at;
        s.t_timer(now);
        pid += 1;
        assert_eq!(s.children()[0].pid, pid);
    }
    assert_eq!(waits, [Duration::ZERO; 5]);
    assert!(s.exit().is_none());
}

/// A server that takes 1.5 s to start, SIGKILLed 5 times 2.5 s apart:
/// each replacement served only about 1 s, or 0.5 s, before its crash.
/// It was ready, so each restart comes at once all the same.
#[test]
fn crash_after_serving_briefly_restarts_at_once() {
    for served in [ms(900), ms(500)] {
        let (mut s, t0) = started(1);
        let mut now = t0;
        let mut waits = Vec::new();
        for pid in 101..106 {
            now += ms(1500);
            s.t_ready(pid, now);
            now += served;
            s.t_exit(pid, ExitStatus::Signal(9), now);
            let at = s.next_deadline().expect("a restart is scheduled");
            waits.push(at - now);
            now = at;
            s.t_timer(now);
            assert_eq!(s.children()[0].pid, pid + 1);
        }
        assert_eq!(waits, [Duration::ZERO; 5], "served {served:?}");
        assert!(s.exit().is_none());
    }
}

/// ...but one that keeps dying right after it said ready, several times
/// a second, is a crash loop: a few restarts at once, then backoff, and
/// in the end it gives up.
#[test]
fn crash_soon_after_ready_still_backs_off() {
    let (mut s, t0) = started(1);
    let mut now = t0;
    let mut waits = Vec::new();
    let mut pid = 101;
    while s.exit().is_none() {
        now += ms(300);
        s.t_ready(pid, now);
        now += ms(50);
        s.t_exit(pid, ExitStatus::Code(1), now);
        if let Some(at) = s.next_deadline() {
            waits.push(at - now);
            now = at;
            s.t_timer(now);
        }
        pid += 1;
    }
    let burst = vec![Duration::ZERO; backoff::BURST as usize];
    assert_eq!(waits[..backoff::BURST as usize], burst);
    assert_eq!(
        waits[backoff::BURST as usize..][..3],
        [ms(100), ms(200), ms(400)]
    );
    assert_eq!(s.exit().unwrap().code, 1, "gave up");
}

#[test]
fn exec_failure_exits_with_127_at_once() {
    let (mut s, t0) = started(1);
    exec_fails(
        &mut s,
        101,
        spawn::Error::NotFound("cannot run x".into()),
        t0,
    );
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 127,
            error: Some("cannot run x".into())
        })
    );
}

/// A served server whose restart meets a deploy halfway (the binary
/// briefly missing) is backed off and tried again: relaunch neither exits
/// 127 nor closes the listeners.
#[test]
fn exec_failure_on_a_restart_after_serving_backs_off() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    let t1 = t0 + Duration::from_secs(5);
    s.t_exit(101, ExitStatus::Signal(9), t1);
    s.t_timer(s.next_deadline().unwrap());
    exec_fails(
        &mut s,
        102,
        spawn::Error::NotFound("cannot run x".into()),
        t1,
    );
    assert_eq!(s.exit(), None, "the listeners stay held");
    let retry = s.next_deadline().expect("a restart is scheduled");
    assert!(retry > t1, "with backoff");
    s.t_timer(retry);
    assert_eq!(s.children()[0].pid, 103);
}

#[test]
fn exec_failure_during_reload_keeps_old() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    assert_eq!(s.t_reload(t0), Ok(2));
    let denied = spawn::Error::NotExecutable("cannot run x: permission denied".into());
    exec_fails(&mut s, 102, denied, t0);
    assert!(s.exit().is_none());
    assert_eq!(pids(&s, 1), [101]);
    assert!(matches!(
        s.kept.last_reload.as_ref(),
        Some(LastReload { ok: false, .. })
    ));
    assert!(s.os.released.contains(&2), "its notify socket is released");
}

#[test]
fn fork_failure_at_start_exits_with_1() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(cfg(1)),
        os: Fake {
            fail_spawn: Some(|| spawn::Error::Os("cannot start x: fork failed".into())),
            ..Fake::default()
        },
    };
    s.t_start(t0);
    assert_eq!(s.exit().map(|e| e.code), Some(1));
}

#[test]
fn restart_never_exits_with_child_status() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            restart: Restart::Never,
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_exit(101, ExitStatus::Code(4), t0);
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 4,
            error: None
        })
    );
}

#[test]
fn on_failure_does_not_restart_clean_exit() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            restart: Restart::OnFailure,
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_exit(101, ExitStatus::Signal(11), t0);
    assert!(s.next_deadline().is_some(), "a crash is restarted");
    s.t_timer(s.next_deadline().unwrap());
    s.t_exit(102, ExitStatus::Code(0), t0);
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            error: None
        })
    );
}

#[test]
fn orphans_are_ignored() {
    let (mut s, t0) = started(1);
    s.t_exit(4242, ExitStatus::Code(0), t0);
    assert_eq!(pids(&s, 1), [101]);
    assert!(s.next_deadline() == Some(t0 + Duration::from_secs(60)));
}

#[test]
fn exit_status_wording() {
    assert_eq!(ExitStatus::Code(3).to_string(), "exited with status 3");
    assert_eq!(
        ExitStatus::Signal(9).to_string(),
        "killed by signal 9 (SIGKILL)"
    );
    assert_eq!(ExitStatus::Signal(15).code(), 143);
}
