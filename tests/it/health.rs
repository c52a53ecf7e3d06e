//! Health-gated promotion: under `--ready http:PATH`, `tcp` or `exec:CMD`
//! a new generation is probed alone, through its own socket, before any
//! connection is steered to it. One that fails its probe until
//! `--ready-timeout` is never promoted: `relaunch reload` exits non-zero
//! with the last probe's result, and the old generation serves on. The
//! app (tests/apps/health/) is http.server as usually written: it binds
//! its port itself and answers its pid; its /healthz answers 500 in the
//! bad version.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::drain::start_on_a_free_port;
use crate::util::*;

const T: Duration = Duration::from_secs(30);
const CLIENTS: usize = 8;

fn server() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps/health/health_server.py")
        .display()
        .to_string()
}

/// The app's next version: `good` or `bad`, and how long it waits before
/// it accepts.
pub fn version(app: &App, health: &str, slow: f64) {
    app.deploy(&format!(
        "exec python3 {} \"$1\" {health} {slow}\n",
        server()
    ));
}

/// `relaunch --port P --control C OPTIONS -- sh APP P` on a free port P;
/// the first answer's pid.
pub fn start(app: &App, options: &[&str]) -> (Relaunch, SocketAddr, String) {
    let ctl = app.control().display().to_string();
    let mut opts = vec!["--control", &ctl];
    opts.extend(options);
    let script = app.script();
    let (r, port) = start_on_a_free_port(&opts, &["sh", &script, "PORT"]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let first = wait_serving(addr);
    (r, addr, first)
}

/// `relaunch -l 0.0.0.0:P --control C OPTIONS -- sh APP P`: the address
/// the app binds, held from the start, so interception never moves it
/// (a probe that passes before the app binds would otherwise see a served
/// generation's bind refused); the first answer's pid.
fn start_at(app: &App, options: &[&str]) -> (Relaunch, SocketAddr, String) {
    let (r, addr) = launch_at(app, options);
    let first = wait_serving(addr);
    (r, addr, first)
}

/// As [`start_at`], without waiting for an answer.
fn launch_at(app: &App, options: &[&str]) -> (Relaunch, SocketAddr) {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let ctl = app.control().display().to_string();
    let script = app.script();
    let p = port.to_string();
    let mut args = vec!["-l", &listen, "--control", &ctl];
    args.extend(options);
    args.extend(["--", "sh", &script, &p]);
    let r = Relaunch::start(&args);
    (r, ([127, 0, 0, 1], port).into())
}

fn reload(app: &App) -> (Option<i32>, String, Duration) {
    let ctl = app.control().display().to_string();
    let t = Instant::now();
    let (code, out) = cli(&["reload", "--control", &ctl], T);
    (code, out, t.elapsed())
}

/// Every process relaunch runs, but relaunch (its children's trees).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = children_of(pid);
    while let Some(p) = todo.pop() {
        todo.extend(children_of(p));
        out.push(p);
    }
    out
}

#[test]
fn an_unhealthy_version_is_never_promoted_and_a_healthy_one_is_under_load() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-http", "");
    version(&app, "good", 0.0);
    // Time for a Python app to start on a loaded machine.
    let (r, addr, first) = start(&app, &["--ready", "http:/healthz", "--ready-timeout", "6s"]);
    r.log.wait("ready after", T);
    let load = Load::start(addr, CLIENTS);

    version(&app, "bad", 0.0);
    let before = descendants(r.pid());
    let reloading = {
        let ctl = app.control().display().to_string();
        std::thread::spawn(move || {
            let t = Instant::now();
            let (code, out) = cli(&["reload", "--control", &ctl], T);
            (code, out, t.elapsed())
        })
    };
    // Meanwhile `status` says why it is not promoted yet.
    let want = "probe: generation 2, --ready http:/healthz: GET /healthz answered 500";
    wait_for("status to show the probe's answer", T, || {
        status(&app.control()).contains(want).then_some(())
    });
    let (code, out, took) = reloading.join().unwrap();
    assert_eq!(code, Some(1), "the bad version's reload fails: {out}");
    assert!(
        out.contains("GET /healthz answered 500 Internal Server Error"),
        "the reason is the last probe's answer: {out}"
    );
    assert!(took >= Duration::from_secs(6), "probed until the timeout");
    assert_eq!(get(addr).unwrap(), first, "the old version serves on");
    wait_for("the bad version to be stopped", T, || {
        (descendants(r.pid()).len() <= before.len()).then_some(())
    });

    version(&app, "good", 0.0);
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(0), "the good version is promoted: {out}");
    let new = wait_new_pid(addr, &first);
    std::thread::sleep(Duration::from_millis(300));
    let rep = load.finish();
    let sum = rep.summary();
    assert!(rep.ok > 0, "the load ran: {sum}");
    assert_eq!(rep.failed(), 0, "no request failed: {sum}");
    let expected: std::collections::BTreeSet<String> = [first, new].into();
    assert_eq!(rep.pids, expected, "no client ever reached the bad version");
    assert!(r.log.text().contains("(GET /healthz answered 200 OK)"));
}

/// `tcp`: a connect alone is not enough (the kernel completes it in the
/// queue); the app must accept the probe.
#[test]
fn tcp_waits_until_the_app_accepts_and_fails_for_one_that_never_does() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-tcp", "");
    version(&app, "good", 0.0);
    let (r, addr, first) = start(&app, &["--ready", "tcp", "--ready-timeout", "8s"]);
    r.log.wait("ready after", T);
    let load = Load::start(addr, CLIENTS);

    // Listens at once, accepts 2 s later.
    version(&app, "good", 2.0);
    let (code, out, took) = reload(&app);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        took >= Duration::from_secs(2),
        "promoted only once it accepted, after {took:?}"
    );
    assert!(
        r.log.text().contains("accepted a probe connection"),
        "{}",
        r.log.text()
    );
    let second = wait_new_pid(addr, &first);

    // Never accepts within the ready timeout.
    version(&app, "good", 60.0);
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no process of it accepted a probe connection"),
        "{out}"
    );
    assert_eq!(get(addr).unwrap(), second, "the old version serves on");
    let rep = load.finish();
    let sum = rep.summary();
    assert_eq!(rep.failed(), 0, "no request failed: {sum}");
    assert!(rep.ok > 0, "{sum}");
    assert!(
        rep.pids.len() <= 2,
        "only the promoted versions served: {sum}"
    );
}

#[test]
fn exec_promotes_when_the_command_exits_zero_and_names_the_generation() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-exec", "");
    version(&app, "good", 0.0);
    let ok = app.dir.join("ok");
    let seen = app.dir.join("seen");
    // fd 3 reaches the new generation alone: its /healthz, not the old one's.
    let check = format!(
        "exec:echo \"$RELAUNCH_GENERATION $RELAUNCH_PIDS\" >> {}; test -f {} && \
         printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&$RELAUNCH_PROBE_FD && \
         head -n 1 <&$RELAUNCH_PROBE_FD | grep -q ' 200 '",
        seen.display(),
        ok.display()
    );
    std::fs::write(&ok, "").unwrap();
    let (_r, addr, first) = start_at(&app, &["--ready", &check, "--ready-timeout", "6s"]);
    std::fs::remove_file(&ok).unwrap();
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("its exec: command exited with status 1"),
        "{out}"
    );
    assert_eq!(get(addr).unwrap(), first);
    std::fs::write(&ok, "").unwrap();
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(0), "{out}");
    let new = wait_new_pid(addr, &first);
    let said = std::fs::read_to_string(&seen).unwrap();
    let last = said.lines().last().unwrap();
    assert!(last.starts_with("3 "), "the generation is named: {said}");
    assert!(
        last.split_whitespace().skip(1).any(|p| p == new),
        "its pids are named: {said} (serving: {new})"
    );
    // The bad version's own /healthz fails the check, though the one
    // serving answers 200 at the held address.
    version(&app, "bad", 0.0);
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(get(addr).unwrap(), new);
}

/// Where nothing can be steered, no probe could reach a new generation
/// alone: a usage error that says why, never a silent "ready".
#[test]
fn probes_where_generations_cannot_be_told_apart_are_a_usage_error() {
    let port = free_port().to_string();
    let udp = format!("udp:127.0.0.1:{port}");
    let unix = TempDir::new("health-unix").join("s.sock");
    let unix = format!("unix:{}", unix.display());
    for (extra, why) in [
        (&["--port", &port, "--no-drain"][..], "--no-drain"),
        (&["--listen", &udp][..], "UDP"),
        (&["--listen", &unix][..], "Unix"),
    ] {
        let mut args = vec!["--ready", "http:/healthz"];
        args.extend(extra);
        args.extend(["--", "sleep", "60"]);
        let (status, log) = run_to_exit(&args, T);
        assert_eq!(status.code(), Some(2), "{args:?}: {log}");
        assert!(
            log.contains("probes one generation alone") && log.contains(why),
            "{args:?}: {log}"
        );
    }
}

/// `--health`: the serving generation's checks; 3 failures in a row count
/// as a crash, and its worker restarts.
#[test]
fn a_serving_generation_that_fails_its_health_checks_is_restarted() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-serving", "");
    let sick = app.dir.join("sick");
    version(&app, &format!("unless:{}", sick.display()), 0.0);
    let opts = ["--health", "http:/healthz", "--health-every", "100ms"];
    let (r, addr, first) = start(&app, &opts);
    // Healthy: checked, and left alone.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(addr).unwrap(), first);
    assert_eq!(r.log.count("health check failed"), 0, "{}", r.log.text());
    std::fs::write(&sick, "").unwrap();
    r.log.wait("failed 3 health checks in a row", T);
    std::fs::remove_file(&sick).unwrap();
    let new = wait_new_pid(addr, &first);
    assert!(
        !pid_alive(first.parse().unwrap()),
        "the sick worker is gone"
    );
    let log = r.log.text();
    assert!(
        log.contains("health check failed (1 of 3 in a row): GET /healthz answered 500"),
        "{log}"
    );
    assert_eq!(get(addr).unwrap(), new, "its restart serves");
}

#[test]
fn health_options_without_health_are_refused() {
    let (status, log) = run_to_exit(&["--port", "0", "--health-every", "1s", "--", "true"], T);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("need --health"), "{log}");
    let port = free_port().to_string();
    let args = [
        "--port",
        &port,
        "--no-drain",
        "--health",
        "tcp",
        "--",
        "true",
    ];
    let (status, log) = run_to_exit(&args, T);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("--health tcp probes one generation alone"),
        "{log}"
    );
}

/// `relaunch upgrade` while a new generation is being probed: the new
/// image probes it afresh and promotes it once healthy, well before the
/// ready timeout.
#[test]
fn an_upgrade_during_a_probed_reload_carries_it_through() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-upgrade", "");
    version(&app, "good", 0.0);
    let opts = ["--ready", "http:/healthz", "--ready-timeout", "20s"];
    let (r, addr, first) = start(&app, &opts);
    r.log.wait("ready after", T);
    // Accepts 2 s after it starts: the upgrade comes meanwhile.
    version(&app, "good", 2.0);
    let reloading = {
        let ctl = app.control().display().to_string();
        std::thread::spawn(move || {
            let t = Instant::now();
            let (code, out) = cli(&["reload", "--control", &ctl], T);
            (code, out, t.elapsed())
        })
    };
    r.log.wait("generation=2 worker=0", T);
    let ctl = app.control().display().to_string();
    let (code, out) = cli(&["upgrade", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, took) = reloading.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        took < Duration::from_secs(10),
        "promoted once healthy: {took:?}"
    );
    wait_new_pid(addr, &first);
}

/// The first generation has nothing to fall back on: not healthy by
/// `--ready-timeout`, it is taken as serving with the probe's result said,
/// and probed on until it passes.
#[test]
fn a_first_generation_never_healthy_serves_with_a_warning_and_is_probed_on() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-first", "");
    let sick = app.dir.join("sick");
    std::fs::write(&sick, "").unwrap();
    version(&app, &format!("unless:{}", sick.display()), 0.0);
    let opts = ["--ready", "http:/healthz", "--ready-timeout", "5s"];
    let (r, addr, first) = start_at(&app, &opts);
    let said = r.log.wait("not healthy within 5s", T);
    assert!(
        said.contains("(GET /healthz answered 500 Internal Server Error)"),
        "{said}"
    );
    r.log.wait("serving: generation 1", T);
    std::fs::remove_file(&sick).unwrap();
    r.log.wait("ready after", T);
    assert_eq!(get(addr).unwrap(), first);
}

/// An `exec:` command that never uses its connection to the generation
/// does not add one to the generation's queue at each check: with a
/// backlog of 2 and an app that never accepts, every check still runs
/// (the reason is the command's, not a full queue).
#[test]
fn exec_checks_that_ignore_their_connection_do_not_fill_the_queue() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-exec-queue", "");
    version(&app, "good", 0.0);
    let ok = app.dir.join("ok");
    std::fs::write(&ok, "").unwrap();
    let check = format!("exec:test -f {}", ok.display());
    let opts = ["--backlog", "2", "--ready", &check, "--ready-timeout", "3s"];
    let (r, addr, first) = start_at(&app, &opts);
    r.log.wait("ready after", T);
    std::fs::remove_file(&ok).unwrap();
    version(&app, "good", 60.0);
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.trim_end()
            .ends_with("its exec: command exited with status 1"),
        "{out}"
    );
    assert!(
        r.log.count("not taken into its accept queue") == 0,
        "{}",
        r.log.text()
    );
    assert_eq!(get(addr).unwrap(), first);
}

/// A check under way at `relaunch upgrade` (an `exec:` command that
/// hangs) was the old image's: the new one probes afresh and knows
/// nothing of it, so it is ended, not left running with its connection.
#[test]
fn an_exec_check_under_way_at_an_upgrade_is_ended_not_left_running() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-exec-upgrade", "");
    version(&app, "good", 0.0);
    let checks = app.dir.join("checks");
    let check = format!("exec:echo $$ >> {}; exec sleep 600", checks.display());
    let opts = ["--health", &check, "--health-every", "100ms"];
    let (r, addr, first) = start(&app, &opts);
    let read = || std::fs::read_to_string(&checks).unwrap_or_default();
    let hung: i32 = wait_for("a check to start", T, || {
        read().lines().next().and_then(|l| l.trim().parse().ok())
    });
    assert!(pid_alive(hung));
    let ctl = app.control().display().to_string();
    let (code, out) = cli(&["upgrade", "--control", &ctl], T);
    assert_eq!(code, Some(0), "{out}");
    wait_for("the old image's check to end", T, || {
        (!pid_alive(hung)).then_some(())
    });
    // The new image checks on (a check of its own), and the app serves.
    wait_for("a check of the new image", T, || {
        (read().lines().count() >= 2).then_some(())
    });
    assert_eq!(get(addr).unwrap(), first);
    assert_eq!(r.log.count("health check failed"), 0, "{}", r.log.text());
}

/// `relaunch reload` of a bad version before the first generation's probe
/// passed: the first generation is still probed, and ready by its own
/// probe; when the reload fails, it serves on as any ready generation,
/// with no "not healthy, treating it as serving anyway" at its deadline.
#[test]
fn a_reload_asked_while_the_first_generation_starts_leaves_it_probed_and_ready() {
    if !require_tool("python3") {
        return;
    }
    let app = App::new("health-early-reload", "");
    // It accepts only after 3 s: the reload comes before its probe passes.
    version(&app, "good", 3.0);
    let ctl = app.control().display().to_string();
    let opts = ["--ready", "http:/healthz", "--ready-timeout", "6s"];
    let (mut r, addr) = launch_at(&app, &opts);
    wait_control(&ctl);
    version(&app, "bad", 0.0);
    let (code, out, _) = reload(&app);
    assert_eq!(code, Some(1), "the bad version's reload fails: {out}");
    assert!(out.contains("answered 500"), "{out}");
    let log = r.log.text();
    let at = |what: &dyn Fn(&str) -> bool| log.lines().position(what);
    let asked = at(&|l| l.contains("request=Reload")).expect("the reload is logged");
    let ready = at(&|l| l.contains("ready after") && l.contains("generation=1"));
    let ready = ready.unwrap_or_else(|| panic!("generation 1 was ready by its own probe:\n{log}"));
    assert!(asked < ready, "the reload came before it was ready:\n{log}");
    assert!(!log.contains("anyway"), "{log}");
    let st = status(&app.control());
    assert!(st.contains("serving, generation 1"), "{st}");
    get(addr).expect("generation 1 answers");
    r.signal(libc::SIGTERM);
    r.wait_exit(T);
}
