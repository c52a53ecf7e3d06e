//! Canary: `relaunch reload --canary 10%` starts the new generation beside
//! the serving one and, once it is ready, steers that share of new
//! connections to it; `relaunch promote` gives it every one and drains the
//! old generation, `relaunch rollback` gives every one back and drains the
//! canary; `--canary-for` promotes after a while, unless the canary crashes
//! (then it is rolled back). Under 8 clients, each connection one request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::drain::start_on_a_free_port;
use crate::util::*;

const T: Duration = Duration::from_secs(30);
const CLIENTS: usize = 8;

fn drain_app(name: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps/drain")
        .join(name)
        .display()
        .to_string()
}

/// Steering needs root (a dedicated uid owns each port's group).
pub fn as_root(what: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI runs as root");
    eprintln!("{what}: NOT RUN: needs root");
    false
}

/// A server under `relaunch --port P --control C OPTIONS -- APP` (`PORT`
/// in `app` is P) on a free port, once relaunch says it serves (a canary
/// is refused before): the folder (kept for the test's length), relaunch,
/// the control socket, the address and the first answer's pid. Bind
/// `_dir` where it is taken apart: `..` would drop the folder at once.
pub struct Served {
    pub _dir: TempDir,
    pub r: Relaunch,
    pub ctl: String,
    pub addr: SocketAddr,
    pub first: String,
}

pub fn serve(tag: &str, options: &[&str], app: &[&str]) -> Served {
    let dir = TempDir::new(tag);
    let ctl = dir.join("ctl.sock").display().to_string();
    let mut opts = vec!["--control", &ctl];
    opts.extend(options);
    let (r, port) = start_on_a_free_port(&opts, app);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = wait_serving(addr);
    r.log.wait("serving: generation 1", T);
    Served {
        _dir: dir,
        r,
        ctl,
        addr,
        first,
    }
}

/// The app that dies on SIGTERM mid-request, served (see [`serve`]).
fn serve_threading(tag: &str) -> Served {
    let app = drain_app("threading_server.py");
    serve(tag, &[], &["python3", &app, "PORT"])
}

/// `relaunch reload --canary SHARE --canary-for FOR` on a thread of its
/// own (it answers once the outcome is known, within `timeout`): its exit
/// code and output.
fn canary_for(
    ctl: &str,
    share: &str,
    promote_after: &str,
    timeout: Duration,
) -> JoinHandle<(Option<i32>, String)> {
    let args = [
        "reload",
        "--canary",
        share,
        "--canary-for",
        promote_after,
        "--control",
        ctl,
    ]
    .map(String::from);
    std::thread::spawn(move || cli(&args.each_ref().map(String::as_str), timeout))
}

/// The pids of `generation`'s children, from `status --json`.
pub fn pids_of(ctl: &str, generation: u64) -> Vec<String> {
    let (code, out) = cli(&["status", "--json", "--control", ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["generation"] == generation)
        .map(|c| c["pid"].to_string())
        .collect()
}

/// `n` new connections, one request each, from 8 clients: how many each
/// pid answered, and how many failed.
fn spread(addr: SocketAddr, n: usize) -> (HashMap<String, usize>, usize) {
    let left = Arc::new(AtomicUsize::new(n));
    let answers = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (left, answers, failed) = (left.clone(), answers.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut mine = HashMap::<String, usize>::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    match get(addr) {
                        Ok(pid) => *mine.entry(pid).or_default() += 1,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let mut all = answers.lock().unwrap();
                for (pid, k) in mine {
                    *all.entry(pid).or_default() += k;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    (answers, failed.load(Ordering::Relaxed))
}

/// A 10% canary gets 10% ± 3 points of 10,000 new connections. A binomial
/// draw of 10,000 at 10% has a standard deviation of 0.3 points: 3 points
/// is ten of them, so a miss is a wrong share, never bad luck.
#[test]
fn a_canary_gets_its_share_of_new_connections() {
    if !as_root("canary share") {
        return;
    }
    let server = example("pid_server").display().to_string();
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = serve("canary-share", &["--metrics", "127.0.0.1:0"], &[&server]);
    let line = r.log.wait("metrics on http://", T);
    let metrics = line.split("http://").nth(1).unwrap();
    let metrics: SocketAddr = metrics.trim_end_matches("/metrics").parse().unwrap();
    let scrape = || {
        let mut s = std::net::TcpStream::connect(metrics).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text
    };
    let before = scrape();
    assert!(before.contains("\nrelaunch_canary_share 0"), "{before}");
    assert!(
        !before.contains("relaunch_canary_open_connections{"),
        "{before}"
    );
    let (code, out) = cli(&["reload", "--canary", "10%", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("canary: generation 2 serves 10% of new connections"),
        "{out}"
    );
    let during = scrape();
    assert!(
        during.contains("\nrelaunch_canary_share 0.1\n")
            && during.contains("\nrelaunch_canary_generation 2\n"),
        "{during}"
    );
    // Each generation's open count is there once measured.
    wait_for("the canary's open connections in the metrics", T, || {
        let text = scrape();
        (text.contains("\nrelaunch_canary_open_connections{of=\"canary\"} ")
            && text.contains("\nrelaunch_canary_open_connections{of=\"serving\"} "))
        .then_some(())
    });
    let canary = pids_of(&ctl, 2);
    assert_eq!(canary.len(), 1, "{canary:?}");
    let st = status(std::path::Path::new(&ctl));
    assert!(
        st.contains("canary: generation 2 gets 10% of new connections")
            && st.contains("generation 1 the other 90%"),
        "{st}"
    );
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("runs as a canary (10% of new connections): promote it"),
        "{out}"
    );
    let n = 10_000;
    let (answers, failed) = spread(addr, n);
    assert_eq!(failed, 0, "{answers:?}");
    let got = answers.get(&canary[0]).copied().unwrap_or(0);
    assert_eq!(
        got + answers.get(&old).copied().unwrap_or(0),
        n,
        "only the two generations answer: {answers:?}"
    );
    let share = 100.0 * got as f64 / n as f64;
    eprintln!("canary share: {share:.2}% of {n} connections");
    assert!(
        (7.0..=13.0).contains(&share),
        "the canary got {share:.2}% of {n} new connections, not 10% ± 3"
    );
    assert_eq!(r.log.count("panicked"), 0);
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// Under 8 clients and an app that dies on SIGTERM mid-request: a canary,
/// then `relaunch promote` (or `rollback`), fail no request, and the
/// generation left behind is drained and stopped.
fn decided(tag: &str, verb: &str) {
    let Served {
        mut r,
        ctl,
        addr,
        first,
        _dir,
    } = serve_threading(tag);
    assert_eq!(r.log.count("drain is off"), 0, "{}", r.log.text());
    let load = Load::start(addr, CLIENTS);
    // A plain reload first: the canary's drain follows another drain.
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let old = wait_new_pid(addr, &first);
    let (code, out) = cli(&["reload", "--canary", "30", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let canary = pids_of(&ctl, 3).pop().expect("the canary runs");
    wait_for("the canary to answer some", T, || {
        (0..20)
            .any(|_| get(addr).ok().as_ref() == Some(&canary))
            .then_some(())
    });
    let (code, out) = cli(&[verb, "--control", &ctl], T);
    assert_eq!(code, Some(0), "{verb}: {out}");
    let (kept, gone) = match verb {
        "promote" => (canary.clone(), old.clone()),
        _ => (old.clone(), canary.clone()),
    };
    // Answered once the generation left behind has stopped.
    let gone_pid: i32 = gone.parse().unwrap();
    assert!(!pid_alive(gone_pid), "{verb}: pid {gone} still runs: {out}");
    for _ in 0..20 {
        assert_eq!(get(addr).unwrap(), kept, "after {verb}, only {kept} serves");
    }
    let rep = load.finish();
    let sum = rep.summary();
    assert_eq!(rep.failed(), 0, "{verb}: {sum}");
    assert!(rep.ok > 0, "{sum}");
    let st = status(std::path::Path::new(&ctl));
    assert!(!st.contains("canary:"), "{st}");
    let (code, out) = cli(&[verb, "--control", &ctl], T);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no canary runs"), "{out}");
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

#[test]
fn promote_gives_the_canary_everything_and_fails_no_request() {
    if as_root("canary promote") {
        decided("canary-promote", "promote");
    }
}

#[test]
fn rollback_gives_everything_back_and_fails_no_request() {
    if as_root("canary rollback") {
        decided("canary-rollback", "rollback");
    }
}

/// `--canary-for`: a canary that crashes meanwhile is rolled back, not
/// restarted, and `relaunch reload` says so and fails; nothing is refused.
#[test]
fn a_canary_that_crashes_is_rolled_back_and_the_reload_fails() {
    if !as_root("canary crash") {
        return;
    }
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = serve_threading("canary-crash");
    let load = Load::start(addr, CLIENTS);
    let reload = canary_for(&ctl, "30%", "60s", Duration::from_secs(120));
    r.log.wait("as a canary", T);
    let canary = pids_of(&ctl, 2).pop().expect("the canary runs");
    wait_for("the canary to answer some", T, || {
        (0..20)
            .any(|_| get(addr).ok().as_ref() == Some(&canary))
            .then_some(())
    });
    unsafe { libc::kill(canary.parse().unwrap(), libc::SIGKILL) };
    let (code, out) = reload.join().unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("rolled back") && out.contains("signal 9"),
        "{out}"
    );
    for _ in 0..20 {
        assert_eq!(
            get(addr).unwrap(),
            old,
            "after the rollback, only {old} serves"
        );
    }
    let rep = load.finish();
    let sum = rep.summary();
    // What the killed process had accepted is lost with it; nothing is
    // refused, nothing waits for ever.
    assert_eq!(rep.refused + rep.timeout, 0, "{sum}");
    assert!(rep.ok > 0, "{sum}");
    assert_eq!(
        pids_of(&ctl, 2),
        Vec::<String>::new(),
        "no restart of the canary"
    );
    assert_eq!(
        r.log.count("restarting generation 2"),
        0,
        "{}",
        r.log.text()
    );
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// A listener relaunch does not own joins a canary's port (a process of
/// the group's own uid, which nothing should run as): the canary is rolled
/// back at once, `relaunch reload --canary-for` fails and names it, and
/// under 8 clients no request fails or reaches the stranger.
#[test]
fn a_foreign_listener_appearing_rolls_a_canary_back() {
    use std::os::unix::fs::MetadataExt;
    if !as_root("canary beside a foreign listener") {
        return;
    }
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = serve_threading("canary-foreign");
    let port = addr.port();
    let owner = std::fs::metadata(format!("/proc/{old}/fd/3"))
        .unwrap()
        .uid();
    let load = Load::start(addr, CLIENTS);
    let reload = canary_for(&ctl, "30%", "60s", Duration::from_secs(120));
    r.log.wait("as a canary", T);
    let stranger = crate::drain::listener_as(owner, ([0, 0, 0, 0], port).into())
        .expect("the owner's uid can join");
    let (code, out) = reload.join().unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("rolled back") && out.contains(&format!("other listeners are on port {port}")),
        "{out}"
    );
    assert!(out.contains(&format!("relaunch who :{port}")), "{out}");
    for _ in 0..20 {
        assert_eq!(
            get(addr).unwrap(),
            old,
            "after the rollback, only {old} serves"
        );
    }
    let rep = load.finish();
    let sum = rep.summary();
    assert_eq!(rep.failed(), 0, "{sum}");
    assert!(rep.ok > 0, "{sum}");
    let mut taken = 0;
    while stranger.accept().is_ok() {
        taken += 1;
    }
    assert_eq!(taken, 0, "connections reached the stranger");
    assert_eq!(pids_of(&ctl, 2), Vec::<String>::new(), "the canary stopped");
    let log = r.log.text();
    assert!(log.contains("rolling back the canary"), "{log}");
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// Two listeners of relaunch's own on one port (two addresses) are not
/// foreign to each other: a canary is steered on both, and not rolled back.
#[test]
fn two_listeners_on_one_port_are_not_foreign_to_each_other() {
    if !as_root("canary on two addresses of a port") {
        return;
    }
    let dir = TempDir::new("canary-two-addresses");
    let ctl = dir.join("ctl.sock").display().to_string();
    let server = example("pid_server").display().to_string();
    let port = free_port();
    let (a, b) = (format!("a=127.0.0.1:{port}"), format!("b=127.0.0.2:{port}"));
    let mut r = Relaunch::start(&["--control", &ctl, "-l", &a, "-l", &b, "--", &server]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let old = wait_serving(addr);
    r.log.wait("serving: generation 1", T);
    let (code, out) = cli(&["reload", "--canary", "50%", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let canary = pids_of(&ctl, 2).pop().expect("the canary runs");
    let (answers, failed) = spread(addr, 200);
    assert_eq!(failed, 0, "{answers:?}");
    assert!(
        answers.contains_key(&canary) && answers.contains_key(&old),
        "{answers:?}"
    );
    let st = status(std::path::Path::new(&ctl));
    assert!(st.contains("canary: generation 2 gets 50%"), "{st}");
    assert!(!r.log.text().contains("rolling back"), "{}", r.log.text());
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// Where new connections cannot be shared, `--canary` is refused and says
/// why; a share out of range is a usage error.
#[test]
fn a_canary_is_refused_where_it_cannot_have_a_share() {
    let dir = TempDir::new("canary-refused");
    let ctl = dir.join("ctl.sock").display().to_string();
    for bad in ["0", "100%", "ten", "-5%", "nan"] {
        let flag = format!("--canary={bad}");
        let (code, out) = cli(&["reload", &flag, "--control", &ctl], T);
        assert_eq!(code, Some(2), "--canary {bad}: {out}");
        assert!(out.contains("--canary"), "{out}");
    }
    let server = example("pid_server").display().to_string();
    let (mut r, port) = start_on_a_free_port(&["--control", &ctl, "--no-drain"], &[&server]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let old = wait_serving(addr);
    let (code, out) = cli(&["reload", "--canary", "10%", "--control", &ctl], T);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--canary cannot run here: --no-drain is given"),
        "{out}"
    );
    assert_eq!(get(addr).unwrap(), old, "nothing changed");
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
    if !as_root("canary beside a Unix listener") {
        return;
    }
    // A socket file goes to one generation or the other: no share.
    let sock = dir.join("app.sock").display().to_string();
    let spec = format!("web=unix:{sock}");
    let mut r = Relaunch::start(&["--control", &ctl, "-l", &spec, "--", &server]);
    wait_control(&ctl);
    let (code, out) = cli(&["reload", "--canary", "10%", "--control", &ctl], T);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("--canary cannot run here: web is a Unix socket"),
        "{out}"
    );
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// `relaunch upgrade` during a canary: the new image keeps its share and
/// its promotion time, and the waiting `relaunch reload --canary-for` is
/// answered by it once the canary is promoted; no request fails.
#[test]
fn an_upgrade_carries_a_canary_on() {
    if !as_root("canary upgrade") {
        return;
    }
    let Served {
        mut r,
        ctl,
        addr,
        first: old,
        _dir,
    } = serve_threading("canary-upgrade");
    let load = Load::start(addr, CLIENTS);
    let reload = canary_for(&ctl, "50%", "4s", T);
    r.log.wait("as a canary", T);
    let canary = pids_of(&ctl, 2).pop().expect("the canary runs");
    let (code, out) = cli(&["upgrade", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let st = status(std::path::Path::new(&ctl));
    assert!(
        st.contains("canary: generation 2 gets 50% of new connections"),
        "{st}"
    );
    // Both still answer: the share was attached again.
    let (answers, failed) = spread(addr, 200);
    assert_eq!(failed, 0, "{answers:?}");
    assert!(
        answers.contains_key(&canary) && answers.contains_key(&old),
        "{answers:?}"
    );
    let (code, out) = reload.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("generation 2 serving"), "{out}");
    assert!(
        !pid_alive(old.parse().unwrap()),
        "the old generation stopped"
    );
    assert_eq!(get(addr).unwrap(), canary);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{}", rep.summary());
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}

/// A canary whose `--health` check fails is rolled back (drained, not
/// killed), under 8 clients with no failed request, and `relaunch reload
/// --canary-for` fails with the checks' result.
#[test]
fn a_canary_failing_its_health_check_is_rolled_back() {
    if !as_root("canary health") || !require_tool("python3") {
        return;
    }
    let app = App::new("canary-health", "");
    crate::health::version(&app, "good", 0.0);
    let opts = [
        "--health",
        "http:/healthz",
        "--health-every",
        "100ms",
        "--health-failures",
        "3",
    ];
    let (mut r, addr, old) = crate::health::start(&app, &opts);
    r.log.wait("serving: generation 1", T);
    let ctl = app.control().display().to_string();
    crate::health::version(&app, "bad", 0.0);
    let load = Load::start(addr, CLIENTS);
    let (code, out) = cli(
        &[
            "reload",
            "--canary",
            "20%",
            "--canary-for",
            "60s",
            "--control",
            &ctl,
        ],
        T,
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("rolled back") && out.contains("failed 3 health checks in a row"),
        "{out}"
    );
    assert!(out.contains("GET /healthz answered 500"), "{out}");
    for _ in 0..20 {
        assert_eq!(
            get(addr).unwrap(),
            old,
            "after the rollback, only {old} serves"
        );
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{}", rep.summary());
    assert!(
        rep.pids.len() >= 2,
        "the canary served some: {}",
        rep.summary()
    );
    assert_eq!(pids_of(&ctl, 2), Vec::<String>::new(), "the canary stopped");
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}
