//! What an upgrade carries, and when one is refused.

use super::*;

#[test]
fn an_upgrade_during_a_reload_carries_the_reload_on() {
    let (mut s, t0) = started(2);
    s.t_ready(101, t0);
    s.t_ready(102, t0);
    let (to, _answer) = s.reply_on(42);
    s.run(
        Event::Control {
            request: Request::Reload,
            reply: to,
        },
        t0 + ms(10),
    );
    s.t_ready(103, t0 + ms(20));
    // Upgrade while generation 2 is half ready.
    s.run(
        Event::Upgrade {
            binary: None,
            reply: None,
        },
        t0 + ms(30),
    );
    assert_eq!(s.os.upgrades.len(), 1);
    assert_eq!(
        s.os.tells.last(),
        Some(&Tell::Status("upgrading relaunch…".into()))
    );
    let (mut n, conns) = upgraded(&s);
    assert_eq!(conns, [(2, 42)], "the waiting reload client goes along");
    assert_eq!(n.state(), "reloading");
    assert_eq!(pids(&n, 1), [101, 102]);
    assert_eq!(pids(&n, 2), [103, 104]);
    // The new image finishes it: no child lost, none started twice.
    n.t_ready(104, t0 + ms(40));
    assert_eq!(n.kept.serving, 2);
    assert_eq!(
        n.os.signals,
        [(101, Signal::SIGTERM), (102, Signal::SIGTERM)]
    );
    n.t_exit(101, ExitStatus::Code(0), t0 + ms(50));
    n.t_exit(102, ExitStatus::Code(0), t0 + ms(50));
    assert_eq!(n.state(), "serving");
    assert!(n.kept.last_reload.as_ref().unwrap().ok);
    assert!(n.os.spawned.is_empty(), "{:?}", n.os.spawned);
    // Its deadline kept its place in time.
    let (mut m, _) = upgraded(&s);
    m.t_timer(t0 + ms(10) + Duration::from_secs(61));
    assert_eq!(m.state(), "serving");
    assert!(!m.kept.last_reload.as_ref().unwrap().ok, "reload timed out");
}

#[test]
fn a_restart_backing_off_carries_over() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_exit(101, ExitStatus::Code(3), t0 + ms(100));
    assert_eq!(s.state(), "backing off");
    let (mut n, _) = upgraded(&s);
    assert_eq!(n.state(), "backing off");
    let at = n.next_deadline().unwrap();
    n.t_timer(at);
    assert_eq!(n.os.spawned, [(102, 1, 0)]);
    assert_eq!(n.kept.slots[0].restarts, 1);
}

/// The handover carries a life as the two flags older images wrote.
#[test]
fn a_life_travels_as_the_flags_older_images_read() {
    for (life, json) in [
        (Life::Running, r#"{"stopping":false,"done":false}"#),
        (Life::Stopping, r#"{"stopping":true,"done":false}"#),
        (
            Life::Done { stopped: true },
            r#"{"stopping":true,"done":true}"#,
        ),
        (
            Life::Done { stopped: false },
            r#"{"stopping":false,"done":true}"#,
        ),
    ] {
        assert_eq!(serde_json::to_string(&life).unwrap(), json);
        assert_eq!(serde_json::from_str::<Life>(json).unwrap(), life);
    }
}

#[test]
fn a_second_upgrade_is_refused_while_one_runs() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.run(
        Event::Upgrade {
            binary: None,
            reply: None,
        },
        t0,
    );
    assert_eq!(s.os.upgrades.len(), 1);
    let (to, mut answer) = s.reply();
    s.run(
        Event::Upgrade {
            binary: None,
            reply: Some(to),
        },
        t0,
    );
    assert_eq!(s.os.upgrades.len(), 1, "a second check was started");
    assert!(matches!(
        answer.try_recv(),
        Ok(Response::UpgradeFailed { reason }) if reason.starts_with("another upgrade is under way")
    ));
    // Once the first one failed, the next one may run.
    let reason = "its handshake exited with status 1".into();
    s.run(
        Event::UpgradeFailed {
            reason,
            reply: None,
        },
        t0,
    );
    s.run(
        Event::Upgrade {
            binary: None,
            reply: None,
        },
        t0,
    );
    assert_eq!(s.os.upgrades.len(), 2);
}

#[test]
fn an_upgrade_check_past_its_deadline_is_ended_once() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.run(
        Event::Upgrade {
            binary: None,
            reply: None,
        },
        t0,
    );
    let due = t0 + CHECK_DEADLINE;
    assert_eq!(s.next_deadline(), Some(due));
    s.t_timer(due - ms(1));
    assert_eq!(s.os.checks_ended, 0);
    s.t_timer(due);
    assert_eq!(s.os.checks_ended, 1);
    assert_eq!(s.next_deadline(), None, "nothing left to wait for");
    s.t_timer(due + ms(100));
    assert_eq!(s.os.checks_ended, 1, "ended twice");
}

#[test]
fn no_upgrade_while_stopping() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_stop(t0);
    let (to, mut answer) = s.reply();
    s.run(
        Event::Upgrade {
            binary: None,
            reply: Some(to),
        },
        t0,
    );
    assert!(s.os.upgrades.is_empty());
    assert!(!s.may_upgrade());
    assert!(matches!(
        answer.try_recv(),
        Ok(Response::UpgradeFailed { reason }) if reason == "relaunch is stopping"
    ));
}

#[test]
fn no_upgrade_under_watch() {
    let t0 = Instant::now();
    let mut c = cfg(1);
    c.watch = Some(WatchConfig {
        debounce: ms(100),
        build: false,
    });
    let mut s = Sim::new(c);
    s.t_start(t0);
    let (to, mut answer) = s.reply();
    s.run(
        Event::Upgrade {
            binary: None,
            reply: Some(to),
        },
        t0,
    );
    assert!(s.os.upgrades.is_empty());
    assert!(matches!(
        answer.try_recv(),
        Ok(Response::UpgradeFailed { reason }) if reason.contains("not under --watch")
    ));
}

#[test]
fn no_upgrade_under_lazy_or_idle_stop_yet() {
    let t0 = Instant::now();
    for (lazy, idle_stop) in [(true, None), (false, Some(ms(500)))] {
        let mut c = cfg(1);
        c.lazy = lazy;
        c.idle_stop = idle_stop;
        let mut s = Sim::new(c);
        s.t_start(t0);
        let (to, mut answer) = s.reply();
        s.run(
            Event::Upgrade {
                binary: None,
                reply: Some(to),
            },
            t0,
        );
        assert!(s.os.upgrades.is_empty());
        assert!(matches!(
            answer.try_recv(),
            Ok(Response::UpgradeFailed { reason }) if reason.contains("--lazy or --idle-stop")
        ));
    }
}

#[test]
fn a_refused_upgrade_tells_systemd_what_serves() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    let reason = "no".to_string();
    s.run(
        Event::UpgradeFailed {
            reason,
            reply: None,
        },
        t0,
    );
    assert_eq!(
        s.os.tells.last(),
        Some(&Tell::Ready("serving: generation 1, pid 101".into()))
    );
    s.t_reload(t0).unwrap();
    let reason = "no".to_string();
    s.run(
        Event::UpgradeFailed {
            reason,
            reply: None,
        },
        t0,
    );
    assert!(
        matches!(s.os.tells.last(), Some(Tell::Status(_))),
        "no READY=1 in the middle of a reload: {:?}",
        s.os.tells
    );
}
