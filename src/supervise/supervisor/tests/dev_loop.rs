//! The dev loop: changes, builds and the reloads they make.

use super::*;

fn watching(build: bool) -> Sim {
    Sim {
        core: Supervisor::new(Config {
            watch: Some(WatchConfig {
                debounce: ms(200),
                build,
            }),
            ..cfg(1)
        }),
        os: Fake::default(),
    }
}

#[test]
fn without_build_a_change_reloads_once_files_are_quiet() {
    let t0 = Instant::now();
    let mut s = watching(false);
    s.t_start(t0);
    assert_eq!(pids(&s, 1), [101], "no build: generation 1 at once");
    s.t_ready(101, t0);
    s.t_change("app.py", t0);
    s.t_change("app.py", t0 + ms(150));
    assert_eq!(
        s.next_deadline(),
        Some(t0 + ms(350)),
        "each change pushes the debounce back"
    );
    s.t_timer(t0 + ms(349));
    assert_eq!(s.os.spawned.len(), 1);
    s.t_timer(t0 + ms(350));
    assert_eq!(pids(&s, 2), [102], "one reload for both changes");
    assert!(s.os.builds.is_empty());
    assert_eq!(
        s.next_deadline(),
        Some(t0 + ms(350) + Duration::from_secs(60))
    );
}

#[test]
fn changes_during_a_reload_coalesce_into_one_more() {
    let t0 = Instant::now();
    let mut s = watching(false);
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_change("a.py", t0);
    s.t_timer(t0 + ms(200));
    assert_eq!(pids(&s, 2), [102]);
    for i in 1..4 {
        s.t_change("a.py", t0 + ms(200 + i * 300));
        s.t_timer(t0 + ms(400 + i * 300));
    }
    assert_eq!(
        s.os.spawned.len(),
        2,
        "no third generation while one starts"
    );
    s.t_ready(102, t0 + ms(1500));
    s.t_exit(101, ExitStatus::Signal(15), t0 + ms(1500));
    assert_eq!(s.os.spawned.last(), Some(&(103, 3, 0)), "exactly one more");
}

#[test]
fn with_build_the_first_start_waits_for_the_first_build() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    assert_eq!(s.os.builds, [101]);
    assert!(s.os.spawned.is_empty(), "nothing runs before the build");
    assert!(s.status(t0).watch.unwrap().starts_with("building (pid 101"));
    s.t_built(101, ExitStatus::Code(0), t0 + ms(800));
    assert_eq!(pids(&s, 1), [102], "generation 1 starts after the build");
    s.t_ready(102, t0 + ms(900));
    assert_eq!(s.state(), "serving");
}

/// A failed first build does not keep the version on disk from serving.
#[test]
fn a_failed_first_build_starts_what_is_there() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_built(101, ExitStatus::Code(101), t0 + ms(800));
    assert_eq!(pids(&s, 1), [102]);
    let status = s.status(t0 + Duration::from_secs(3)).watch.unwrap();
    assert_eq!(
        status,
        "watching; the last build failed 2 s ago: exited with status 101 after 0.8 s"
    );
}

/// ...and when nothing is there yet (a fresh checkout whose first build
/// failed), relaunch waits for the build that makes it, instead of exiting 127.
#[test]
fn a_program_missing_before_the_first_good_build_is_waited_for() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_built(101, ExitStatus::Code(101), t0);
    exec_fails(
        &mut s,
        102,
        spawn::Error::NotFound("cannot run target/debug/app: no such file".into()),
        t0,
    );
    assert!(s.exit().is_none(), "the listeners stay held");
    assert_eq!(
        s.next_deadline(),
        None,
        "no restart loop: idle until a change"
    );
    s.t_change("src/main.rs", t0 + ms(1000));
    s.t_timer(t0 + ms(1200));
    assert_eq!(s.os.builds, [101, 103]);
    s.t_built(103, ExitStatus::Code(0), t0 + ms(2000));
    let (pid, generation, _) = *s.os.spawned.last().unwrap();
    assert_eq!(generation, 2);
    s.t_ready(pid, t0 + ms(2100));
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.state(), "serving");
    assert!(s.exit().is_none());
}

#[test]
fn a_build_that_fails_changes_nothing_that_serves() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_built(101, ExitStatus::Code(0), t0);
    s.t_ready(102, t0);
    s.t_change("src/main.rs", t0);
    s.t_timer(t0 + ms(200));
    assert_eq!(s.os.builds, [101, 103]);
    s.t_built(103, ExitStatus::Code(3), t0 + ms(900));
    assert_eq!(s.os.spawned.len(), 1, "no reload");
    assert!(s.os.signals.is_empty(), "the old generation is untouched");
    assert_eq!(s.state(), "serving");
    assert!(s.kept.last_reload.is_none());
    // Fixed: the next build reloads.
    s.t_change("src/main.rs", t0 + ms(2000));
    s.t_timer(t0 + ms(2200));
    s.t_built(104, ExitStatus::Code(0), t0 + ms(3000));
    assert_eq!(pids(&s, 2), [105]);
    assert!(s.status(t0 + ms(3000)).watch.unwrap().contains("succeeded"));
}

#[test]
fn a_change_during_a_build_kills_it_and_builds_again() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_built(101, ExitStatus::Code(0), t0);
    s.t_ready(102, t0);
    s.t_change("src/a.rs", t0);
    s.t_timer(t0 + ms(200));
    assert_eq!(s.os.builds, [101, 103]);
    s.t_change("src/b.rs", t0 + ms(500));
    assert_eq!(
        s.os.signals,
        [(103, Signal::SIGKILL)],
        "the whole group of the stale build, at once"
    );
    assert_eq!(s.os.builds.len(), 2, "the new one waits for the debounce");
    s.t_timer(t0 + ms(700));
    assert_eq!(s.os.builds, [101, 103, 104]);
    // The killed one's end is no verdict.
    s.t_built(103, ExitStatus::Signal(9), t0 + ms(710));
    assert!(
        s.status(t0 + ms(710))
            .watch
            .unwrap()
            .starts_with("building (pid 104")
    );
    s.t_built(104, ExitStatus::Code(0), t0 + ms(1500));
    assert_eq!(
        pids(&s, 2),
        [105],
        "one reload, after the build that counts"
    );
}

#[test]
fn a_build_success_during_a_reload_coalesces() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_built(101, ExitStatus::Code(0), t0);
    s.t_ready(102, t0);
    s.t_reload(t0).unwrap();
    s.t_change("src/a.rs", t0);
    s.t_timer(t0 + ms(200));
    s.t_built(104, ExitStatus::Code(0), t0 + ms(300));
    assert_eq!(s.os.spawned.len(), 2, "the reload in progress goes first");
    s.t_ready(103, t0 + ms(400));
    s.t_exit(102, ExitStatus::Signal(15), t0 + ms(400));
    assert_eq!(s.os.spawned.last(), Some(&(105, 3, 0)), "then the build's");
}

#[test]
fn stop_kills_the_build_and_ignores_changes() {
    let t0 = Instant::now();
    let mut s = watching(true);
    s.t_start(t0);
    s.t_stop(t0);
    assert_eq!(s.os.signals, [(101, Signal::SIGKILL)]);
    assert_eq!(s.exit().map(|e| e.code), Some(0), "nothing else ran");
    s.t_change("x", t0);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn watching_a_crash_loop_waits_for_a_fix_instead_of_exiting() {
    let t0 = Instant::now();
    let mut s = watching(false);
    s.t_start(t0);
    let mut now = t0;
    let mut pid = 101;
    for _ in 0..backoff::GIVE_UP_AFTER {
        s.t_exit(pid, ExitStatus::Code(1), now);
        match s.next_deadline() {
            Some(at) => {
                now = at;
                s.t_timer(now);
                pid += 1;
            }
            None => break,
        }
    }
    assert!(s.exit().is_none(), "the listeners stay held");
    assert_eq!(s.next_deadline(), None, "idle until a change");
    s.t_change("app.py", now);
    s.t_timer(now + ms(200));
    let last = *s.os.spawned.last().unwrap();
    assert_eq!(last.1, 2, "the fix is started as generation 2");
    s.t_ready(last.0, now + ms(500));
    assert_eq!(s.kept.serving, 2);
    assert_eq!(s.state(), "serving");
}

#[test]
fn watching_a_server_that_exits_under_restart_never_waits_for_a_change() {
    let t0 = Instant::now();
    let mut s = Sim {
        core: Supervisor::new(Config {
            restart: Restart::Never,
            watch: Some(WatchConfig {
                debounce: ms(200),
                build: false,
            }),
            ..cfg(1)
        }),
        os: Fake::default(),
    };
    s.t_start(t0);
    s.t_ready(101, t0);
    s.t_exit(101, ExitStatus::Code(0), t0 + ms(10));
    assert!(s.exit().is_none(), "relaunch waits");
    s.t_change("app.py", t0 + ms(20));
    s.t_timer(t0 + ms(220));
    assert_eq!(s.os.spawned.last(), Some(&(102, 2, 0)));
}
