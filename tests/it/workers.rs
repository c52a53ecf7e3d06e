//! Workers: `--workers N` children share the socket, reload together, and a
//! dead one is restarted alone.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

fn distinct_pids(addr: SocketAddr, want: usize) -> BTreeSet<String> {
    let load = Load::start(addr, 8);
    let mut seen = BTreeSet::new();
    wait_for(&format!("{want} distinct pids"), T, || {
        seen.extend(get(addr).ok());
        (seen.len() >= want).then_some(())
    });
    let rep = load.finish();
    seen.extend(rep.pids);
    seen
}

#[test]
fn workers_share_the_socket_and_reload_together() {
    let app = App::new("workers", &pid_server("--delay 0.2"));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--workers", "3", "--", &app.script()]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    let first = distinct_pids(addr, 3);
    assert_eq!(first.len(), 3, "{first:?}");
    let load = Load::start(addr, 8);
    r.signal(libc::SIGHUP);
    r.log.wait("reload done", T);
    let second = distinct_pids(addr, 3);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert!(first.is_disjoint(&second), "{first:?} {second:?}");
    let all: BTreeSet<_> = first.union(&second).collect();
    assert_eq!(all.len(), 6);
}

#[test]
fn a_dead_worker_is_restarted_alone() {
    let app = App::new("worker-crash", &pid_server(""));
    let r = Relaunch::start(&["-l", "127.0.0.1:0", "--workers", "2", "--", &app.script()]);
    let addr = r.listen_addr(3);
    r.log.wait("serving: generation 1", T);
    let pids = distinct_pids(addr, 2);
    let victim: i32 = pids.iter().next().unwrap().parse().unwrap();
    unsafe { libc::kill(victim, libc::SIGKILL) };
    r.log.wait("killed by signal 9 (SIGKILL)", T);
    r.log.wait_n("started", 3, T);
    let after = distinct_pids(addr, 2);
    assert_eq!(
        after.intersection(&pids).count(),
        1,
        "the other worker kept running: {pids:?} {after:?}"
    );
}

/// relaunch's threads by name (`comm`), its own pid's included.
fn thread_names(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// Between reloads relaunch runs its loop and one bind-interception thread
/// per live child: the old generation's threads end with it, and no helper
/// thread stays once its /proc read is done.
#[test]
fn reloads_leave_one_thread_per_child_and_the_loop() {
    let dir = TempDir::new("threads");
    let ctl = dir.join("ctl.sock").display().to_string();
    let server = example("pid_server").display().to_string();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--workers",
        "3",
        "--control",
        &ctl,
        "--",
        &server,
    ]);
    let addr = r.listen_addr(3);
    wait_serving(addr);
    for _ in 0..3 {
        let (code, out) = cli(&["reload", "--control", &ctl], T);
        assert_eq!(code, Some(0), "{out}");
    }
    let mut last = Vec::new();
    let settled = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < settled {
        last = thread_names(r.pid());
        let intercept = last.iter().filter(|n| *n == "intercept").count();
        if intercept == 3 && last.len() == 4 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "relaunch runs {} threads 5 s after its reloads, want its loop and 3 `intercept`: {last:?}\n{}",
        last.len(),
        r.log.text()
    );
}
