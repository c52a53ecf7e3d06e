//! When a generation counts as ready, and the hint for an app that binds its own port.

use super::*;

#[test]
fn first_generation_is_announced_when_ready() {
    let (mut s, t0) = started(2);
    assert_eq!(s.state(), "starting");
    s.t_ready(101, t0);
    assert!(s.os.tells.is_empty());
    s.t_ready(102, t0);
    assert_eq!(
        s.os.tells,
        [Tell::Ready("serving: generation 1, pids 101, 102".into())]
    );
    assert_eq!(s.state(), "serving");
}

#[test]
fn a_generation_serving_on_another_port_is_said_after_a_grace_and_at_the_timeout() {
    let elsewhere = |s: &mut Sim, pid: i32, t: Instant| {
        let notice = "pid 7 serves on 0.0.0.0:8001, not on relaunch's".into();
        s.run(Event::Elsewhere { pid, notice }, t);
    };
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    // An admin port opened before the held one is taken: not said yet.
    elsewhere(&mut s, 102, t0);
    elsewhere(&mut s, 102, t0 + ELSEWHERE_GRACE / 2);
    assert_eq!(s.elsewhere_said, None);
    elsewhere(&mut s, 102, t0 + ELSEWHERE_GRACE);
    assert_eq!(s.elsewhere_said, Some(2));
    let deadline = s.next_deadline().unwrap();
    s.t_timer(deadline);
    assert_eq!(s.kept.serving, 1);
    let last = s.kept.last_reload.as_ref().unwrap();
    assert!(!last.ok);
    assert!(
        last.message
            .contains("serves on a port relaunch does not hold"),
        "{}",
        last.message
    );
    // Never said before the timeout (it came within the grace): said then.
    let (mut s, t0) = started(1);
    elsewhere(&mut s, 101, t0);
    let deadline = s.next_deadline().unwrap();
    s.t_timer(deadline);
    assert_eq!(s.elsewhere_said, Some(1));
    // Ready by READY=1 within the grace: said then.
    let (mut s, t0) = started(1);
    elsewhere(&mut s, 101, t0);
    let notice = Notice {
        ready: true,
        ..Notice::default()
    };
    s.run(Event::Notify { pid: 101, notice }, t0 + ms(10));
    assert_eq!(s.elsewhere_said, Some(1));
    // Seen waiting on a held socket: it took it after all, nothing said.
    let (mut s, t0) = started(1);
    elsewhere(&mut s, 101, t0);
    s.t_ready(101, t0 + ms(10));
    assert_eq!(s.elsewhere_said, None);
}

#[test]
fn ready_timeout_counts_as_ready_when_auto_cannot_see() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_blind(102);
    let deadline = s.next_deadline().unwrap();
    s.t_timer(deadline);
    assert_eq!(s.kept.serving, 2, "promoted, not failed");
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn a_listen_on_a_held_socket_is_ready_only_where_the_scan_is_blind() {
    let listened = |s: &mut Sim, pid: i32, t: Instant| {
        let how = "pid 7 called listen() on relaunch's socket".into();
        s.run(Event::Listened { pid, how }, t);
    };
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    // The scan sees: it waits for the accept, a listen() is not enough.
    s.t_reload(t0).unwrap();
    listened(&mut s, 102, t0);
    assert_eq!(s.kept.serving, 1);
    s.t_ready(102, t0);
    assert_eq!(s.kept.serving, 2);
    s.t_exit(101, ExitStatus::Code(0), t0);
    // Blind, then listen(): ready at once, not at --ready-timeout.
    s.t_reload(t0).unwrap();
    s.t_blind(103);
    assert_eq!(s.kept.serving, 2);
    listened(&mut s, 103, t0);
    assert_eq!(s.kept.serving, 3);
    s.t_exit(102, ExitStatus::Code(0), t0);
    // listen() first, blind after: the same.
    s.t_reload(t0).unwrap();
    listened(&mut s, 104, t0);
    s.t_blind(104);
    assert_eq!(s.kept.serving, 4);
}

/// `status --check` passes only while a ready child of the serving
/// generation runs.
#[test]
fn ready_means_a_ready_child_of_the_serving_generation_runs() {
    let (mut s, t0) = started(2);
    assert!(!s.ready(), "starting");
    s.t_ready(101, t0);
    assert!(!s.ready(), "not announced before every worker is ready");
    s.t_ready(102, t0);
    assert!(s.ready());
    s.t_exit(101, ExitStatus::Signal(9), t0 + Duration::from_secs(30));
    assert!(s.ready(), "the other worker serves");
    s.t_exit(102, ExitStatus::Signal(9), t0 + Duration::from_secs(30));
    assert!(!s.ready(), "backing off with nothing running");
    let at = s.next_deadline().unwrap();
    s.t_timer(at);
    assert!(!s.ready(), "restarted, not ready yet");
    s.t_ready(103, at);
    s.t_ready(104, at);
    assert!(s.ready());
    s.t_reload(at).unwrap();
    assert!(s.ready(), "the old generation serves during a reload");
    s.t_stop(at);
    assert!(!s.ready(), "stopping");
    // A first generation taken as serving at --ready-timeout counts.
    let (mut s, t0) = started(1);
    s.t_timer(t0 + Duration::from_secs(60));
    assert!(s.ready());
}

/// Under --lazy, `status --check` passes while waiting for a connection
/// and while starting on one.
#[test]
fn lazy_is_ready_while_it_waits_for_a_connection() {
    let t0 = Instant::now();
    let mut s = on_demand(1, true, None);
    s.t_start(t0);
    assert!(s.ready(), "waiting for the first connection");
    s.t_connection(t0);
    assert!(s.ready(), "starting on a connection");
    s.t_stop(t0);
    assert!(!s.ready(), "stopping");
}

#[test]
fn delay_mode_marks_ready_on_timer() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            ready_delay: Some(ms(500)),
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    assert_eq!(s.next_deadline(), Some(t0 + ms(500)));
    s.t_timer(t0 + ms(500));
    assert_eq!(s.children()[0].state, State::Ready);
}

/// A child that binds the port itself dies of EADDRINUSE at once, never
/// having waited on a held socket: relaunch hints at it once, not on
/// every restart of the crash loop.
#[test]
fn a_quick_failure_never_seen_waiting_is_hinted_once() {
    let (mut s, t0) = started(1);
    assert!(s.to_scan(t0).any(|(p, _)| p == 101));
    s.t_exit(101, ExitStatus::Code(1), t0 + ms(300));
    assert!(s.kept.hinted);
    // The restart, once ready (READY=1), is no longer scanned for the
    // hint's sake, even in its first seconds.
    let t1 = s.next_deadline().unwrap();
    s.t_timer(t1);
    let notice = Notice {
        ready: true,
        ..Notice::default()
    };
    s.run(Event::Notify { pid: 102, notice }, t1);
    assert_eq!(s.to_scan(t1).count(), 0);
}

#[test]
fn no_hint_for_a_child_seen_waiting_a_slow_failure_or_a_clean_exit() {
    // Seen waiting, then crashed at once: it used the sockets.
    let (mut s, t0) = started(1);
    s.t_ready(101, t0 + ms(100));
    s.t_exit(101, ExitStatus::Code(1), t0 + ms(200));
    assert!(!s.kept.hinted);
    // Lived past the window.
    let (mut s, t0) = started(1);
    s.t_exit(101, ExitStatus::Code(1), t0 + HINT_WITHIN);
    assert!(!s.kept.hinted);
    // Said READY=1 (it took its sockets), then crashed.
    let (mut s, t0) = started(1);
    let notice = Notice {
        ready: true,
        ..Notice::default()
    };
    s.run(Event::Notify { pid: 101, notice }, t0);
    assert_eq!(s.to_scan(t0).count(), 0, "ready: no more scanning");
    s.t_exit(101, ExitStatus::Code(1), t0 + ms(200));
    assert!(!s.kept.hinted);
    // Called listen() on a held socket (interception gave it ours).
    let (mut s, t0) = started(1);
    let how = "listen".into();
    s.run(Event::Listened { pid: 101, how }, t0);
    s.t_exit(101, ExitStatus::Code(1), t0 + ms(200));
    assert!(!s.kept.hinted);
    // Exited 0: a finished job, not a failed bind.
    let (mut s, t0) = started(1);
    s.t_exit(101, ExitStatus::Code(0), t0 + ms(10));
    assert!(!s.kept.hinted);
    // Killed by a signal: someone else's doing.
    let (mut s, t0) = started(1);
    s.t_exit(101, ExitStatus::Signal(9), t0 + ms(10));
    assert!(!s.kept.hinted);
    // Stopped by us.
    let (mut s, t0) = started(1);
    s.t_stop(t0);
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(10));
    assert!(!s.kept.hinted);
}

/// The new generation of a reload counts too; with `--ready notify` the
/// scan still looks (the hint's only evidence) but does not make it ready.
#[test]
fn the_hint_covers_reloads_and_every_ready_mode() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            ready_auto: false,
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_ready(101, t0);
    assert_eq!(s.children()[0].state, State::Starting { ready_at: None });
    assert!(s.children()[0].seen);
    s.run(
        Event::Notify {
            pid: 101,
            notice: Notice {
                ready: true,
                ..Notice::default()
            },
        },
        t0,
    );
    assert_eq!(s.t_reload(t0 + Duration::from_secs(60)), Ok(2));
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(s.to_scan(t1).map(|(p, _)| p).collect::<Vec<_>>(), [102]);
    assert_eq!(
        s.to_scan(t1 + HINT_WITHIN).count(),
        0,
        "idle after the window: no scan, no timer"
    );
    s.t_exit(102, ExitStatus::Code(1), t1 + ms(400));
    assert!(s.kept.hinted);
    assert_eq!(s.kept.serving, 1);
}
