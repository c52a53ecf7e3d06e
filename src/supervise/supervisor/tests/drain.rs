//! Drain: at a reload the old generation finishes what it accepted before
//! it is stopped, where the new one has sockets of its own.

use super::*;
use crate::sockets::drain::Busy;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Generation 1 serving (pid 101) with drain on, generation 2 (pid 102)
/// started beside it with sockets of its own.
fn reloading() -> (Sim, Instant) {
    let mut s = Sim::new(Config {
        drain: Some(TIMEOUT),
        ..cfg(1)
    });
    s.os.own_sockets = true;
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    assert_eq!(s.t_reload(t0), Ok(2));
    assert_eq!(s.os.opened, [2]);
    (s, t0)
}

fn busy(open: u32, queued: u32) -> Busy {
    Busy {
        queued,
        open,
        handshakes: 0,
    }
}

impl Sim {
    fn t_drained(&mut self, generation: u64, b: Busy, now: Instant) {
        self.run(
            Event::Drained {
                generation,
                busy: Ok(b),
            },
            now,
        );
    }
}

#[test]
fn the_old_generation_is_steered_away_from_and_stopped_only_once_idle() {
    let (mut s, t0) = reloading();
    assert!(s.wants(t0).drain.is_none(), "nothing drains while 2 starts");
    s.t_ready(102, t0 + ms(100));
    assert_eq!(s.os.steered, [2], "new connections go to generation 2");
    assert!(
        s.os.signals.is_empty(),
        "generation 1 finishes its requests"
    );
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.wants(t0 + ms(100)).drain, Some((2, vec![101], false)));
    // Busy, then idle before the settle time: not yet.
    s.t_drained(2, busy(3, 1), t0 + ms(150));
    s.t_drained(2, busy(0, 0), t0 + ms(200));
    assert!(s.os.signals.is_empty(), "a handshake may still land on it");
    let st = s.status(t0 + ms(200));
    let d = st.draining.expect("status shows the draining generation");
    assert_eq!((d.generation, d.open, d.queued), (1, 0, 0));
    s.t_drained(2, busy(0, 0), t0 + ms(400));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert!(s.os.counts.contains(&Count::Drain { idle: true, cut: 0 }));
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(450));
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert!(s.wants(t0 + ms(450)).drain.is_none());
}

/// At the drain timeout the old generation's connections stop reading:
/// each server answers what it has, then sees its client gone. What it
/// still holds after END_GRACE is cut by the stop.
#[test]
fn the_drain_timeout_ends_reads_then_stops_a_generation_that_stays_busy_and_counts_what_it_cuts() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    s.t_drained(2, busy(4, 0), t0 + ms(500));
    assert_eq!(s.next_deadline(), Some(t0 + TIMEOUT));
    s.t_timer(t0 + TIMEOUT);
    assert!(s.os.signals.is_empty(), "its connections end first");
    assert_eq!(s.wants(t0 + TIMEOUT).drain, Some((2, vec![101], true)));
    let end = t0 + TIMEOUT + END_GRACE;
    assert_eq!(s.next_deadline(), Some(end));
    s.t_drained(2, busy(4, 0), t0 + TIMEOUT + ms(50));
    s.t_timer(end);
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert!(s.os.counts.contains(&Count::Drain {
        idle: false,
        cut: 4
    }));
    assert!(s.status(end).draining.is_none());
}

#[test]
fn a_generation_whose_connections_ended_at_the_drain_timeout_is_stopped_once_idle() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    s.t_drained(2, busy(2, 0), t0 + ms(500));
    s.t_timer(t0 + TIMEOUT);
    assert!(s.os.signals.is_empty());
    s.t_drained(2, busy(0, 0), t0 + TIMEOUT + ms(100));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
    assert!(s.os.counts.contains(&Count::Drain {
        idle: false,
        cut: 0
    }));
}

#[test]
fn without_sockets_of_its_own_the_old_generation_is_stopped_at_once() {
    let mut s = Sim::new(Config {
        drain: Some(TIMEOUT),
        ..cfg(1)
    });
    let t0 = Instant::now();
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    s.t_ready(102, t0);
    assert!(s.os.steered.is_empty());
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn no_drain_never_asks_for_sockets() {
    let (mut s, t0) = started(1);
    s.os.own_sockets = true;
    s.t_ready(101, t0);
    s.t_reload(t0).unwrap();
    assert!(s.os.opened.is_empty());
    s.t_ready(102, t0);
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn an_old_generation_that_exits_while_draining_ends_the_reload() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    s.t_exit(101, ExitStatus::Code(1), t0 + ms(50));
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.as_ref().unwrap().ok);
    assert_eq!(pids(&s, 1), Vec::<i32>::new());
    assert_eq!(s.os.spawned.len(), 2, "the old generation is not restarted");
}

#[test]
fn a_failed_measure_is_said_and_the_timeout_still_stops_it() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    s.run(
        Event::Drained {
            generation: 2,
            busy: Err("no /proc".into()),
        },
        t0 + ms(300),
    );
    assert!(s.os.signals.is_empty());
    s.t_timer(t0 + TIMEOUT);
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn a_drain_in_progress_is_carried_by_an_upgrade() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    let (mut s, _) = upgraded(&s);
    assert_eq!(s.wants(t0 + ms(10)).drain, Some((2, vec![101], false)));
    s.t_drained(2, busy(0, 0), t0 + ms(400));
    assert_eq!(s.os.signals, [(101, Signal::SIGTERM)]);
}

#[test]
fn a_generation_that_cannot_be_steered_to_fails_its_reload_and_the_old_one_serves_on() {
    let (mut s, t0) = reloading();
    s.os.steer_fails = true;
    s.t_ready(102, t0 + ms(100));
    assert_eq!(s.os.steered, [2]);
    assert_eq!(s.kept.serving, 1, "the old generation serves on");
    assert_eq!(s.os.signals, [(102, Signal::SIGTERM)]);
    let last = s.kept.last_reload.as_ref().unwrap();
    assert!(!last.ok);
    assert!(
        last.message.contains("cannot send new connections"),
        "{}",
        last.message
    );
}

#[test]
fn a_stop_while_draining_stops_both_generations() {
    let (mut s, t0) = reloading();
    s.t_ready(102, t0);
    s.t_stop(t0 + ms(10));
    let mut signalled: Vec<i32> = s.os.signals.iter().map(|(p, _)| *p).collect();
    signalled.sort();
    assert_eq!(signalled, [101, 102]);
}
