//! A generation is its process groups, not its leaders: processes of an old
//! group that outlive their leader are stopped too.

use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// A leader (`sleep`) with a child in its group that ignores SIGTERM.
const PREFORK: &str = r#"sh -c "trap '' TERM; exec sleep 300" & exec sleep 300"#;

/// The one child relaunch has started, once its group has `n` members.
fn leader_with_members(r: &Relaunch, n: usize) -> i32 {
    wait_for("the child and its group", T, || {
        let kids = children_of(r.pid());
        let leader = *kids.first()?;
        (kids.len() == 1 && group_members(leader).len() >= n).then_some(leader)
    })
}

#[test]
fn reload_ends_the_old_group_not_only_its_leader() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:200ms",
        "--stop-timeout",
        "1s",
        "--",
        "sh",
        "-c",
        PREFORK,
    ]);
    r.log.wait("serving: generation 1", T);
    let old = leader_with_members(&r, 2);
    let sighup = Instant::now();
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let left = group_members(old);
    assert!(
        left.is_empty(),
        "reload declared done while group {old} still has {left:?}"
    );
    assert!(
        sighup.elapsed() >= Duration::from_secs(1),
        "the TERM-ignoring member can only be gone after --stop-timeout (SIGKILL)"
    );
    r.log.wait("SIGKILL", T);
}

#[test]
fn a_crashed_leader_does_not_leave_its_workers_serving() {
    let dir = TempDir::new("linger");
    let control = dir.join("ctl.sock");
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:200ms",
        "--stop-timeout",
        "3s",
        "--control",
        control.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        PREFORK,
    ]);
    r.log.wait("serving: generation 1", T);
    let old = leader_with_members(&r, 2);
    let worker = group_members(old).into_iter().find(|&p| p != old).unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    // The leader is gone; its worker lingers until the group is stopped.
    let shown = wait_for("status showing the lingering worker", T, || {
        let s = status(&control);
        (s.contains("lingering") && s.contains(&worker.to_string())).then_some(s)
    });
    assert!(shown.contains(&old.to_string()), "{shown}");
    let killed = Instant::now();
    wait_for(
        &format!("group {old} to be empty"),
        Duration::from_secs(10),
        || group_members(old).is_empty().then_some(()),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "the lingering worker was not SIGKILLed after --stop-timeout"
    );
    // The restarted worker serves in a group of its own.
    let new = leader_with_members(&r, 2);
    assert_ne!(new, old);
}
