//! Stopping: TERM, then KILL, and what a stop does to a reload.

use super::*;

#[test]
fn stop_terms_then_kills_then_exits_zero() {
    let (mut s, t0) = started(2);
    s.t_stop(t0);
    assert_eq!(
        s.os.signals,
        [(101, Signal::SIGTERM), (102, Signal::SIGTERM)]
    );
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(5));
    assert!(s.exit().is_none());
    s.t_timer(t0 + Duration::from_secs(10));
    assert_eq!(s.os.signals.last(), Some(&(102, Signal::SIGKILL)));
    s.t_exit(102, ExitStatus::Signal(9), t0 + Duration::from_secs(10));
    assert_eq!(
        s.exit(),
        Some(Exit {
            code: 0,
            error: None
        })
    );
    assert_eq!(s.os.spawned.len(), 2, "nothing restarted while stopping");
}

#[test]
fn stop_while_draining_answers_the_reload() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0);
    s.t_stop(t0);
    let last = s.kept.last_reload.as_ref().unwrap();
    assert_eq!((last.generation, last.ok), (2, false));
    assert_eq!(last.message, "relaunch is stopping");
    s.t_exit(101, ExitStatus::Code(0), t0);
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
fn stop_during_reload_fails_it_and_stops_both() {
    let (mut s, t0) = started(1);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_stop(t0);
    assert!(!s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(
        s.os.signals,
        [(102, Signal::SIGTERM), (101, Signal::SIGTERM)]
    );
    assert_eq!(s.t_reload(t0), Err("relaunch is stopping".into()));
}
