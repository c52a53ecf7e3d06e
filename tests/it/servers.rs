//! Real servers that take sockets their own way: gunicorn reads
//! LISTEN_FDS, uvicorn takes `--fd {fd}`, Flask's app.run() needs
//! `--compat werkzeug`, Node listens on `{fd: 3}`. Each serves a request
//! under relaunch, then is reloaded under client load with no failed request.
//! The tools are installed by .ci/run; elsewhere a missing one skips its test.

use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// Failed requests a server may cause itself during a reload.
#[derive(Clone, Copy, PartialEq)]
enum Allow {
    /// None at all.
    Nothing,
    /// A few (at most 2% of the answered requests) requests that the old
    /// generation cut off while exiting, seen as resets or truncated
    /// responses; never a refused connection or a timeout, which would be
    /// relaunch's. For servers that drop in-flight work on exit, see callers.
    CutOffByTheServer,
}

/// Starts relaunch with `args`, checks one answer, reloads under load.
fn serves_and_reloads_under_load(args: &[&str], allow: Allow) {
    let r = Relaunch::start(args);
    let addr = r.listen_addr(3);
    let first = wait_serving(addr);
    assert!(
        first.parse::<u32>().is_ok(),
        "the app answers its pid, got {first:?}"
    );

    let load = Load::start(addr, 4);
    r.signal(libc::SIGHUP);
    let second = wait_new_pid(addr, &first);
    // The old generation has exited only when the reload is done: keep the
    // load running until then, so its stop is covered too.
    r.log.wait("reload done", T);
    let report = load.finish();

    let summary = format!(
        "ok {}, refused {}, reset {}, timeout {}, other {}, pids {:?}, first errors {:?}",
        report.ok,
        report.refused,
        report.reset,
        report.timeout,
        report.other,
        report.pids,
        report.errors
    );
    assert!(report.ok > 0, "the load ran: {summary}");
    match allow {
        Allow::Nothing => assert_eq!(
            report.failed(),
            0,
            "failed requests during the reload: {summary}"
        ),
        Allow::CutOffByTheServer => {
            assert_eq!(
                report.refused + report.timeout,
                0,
                "refused or timed out during the reload: {summary}"
            );
            assert!(
                report.failed() * 50 <= report.ok,
                "more failures than the server's own exit explains: {summary}"
            );
        }
    }
    assert!(
        report.pids.contains(&first) && report.pids.contains(&second),
        "the load saw both generations ({first} then {second}): {summary}"
    );
}

fn examples_dir() -> String {
    example_src("").to_string_lossy().into_owned()
}

#[test]
fn gunicorn_reads_listen_fds() {
    if !require_tool("gunicorn") {
        return;
    }
    let dir = examples_dir();
    serves_and_reloads_under_load(
        &[
            "-l",
            "127.0.0.1:0",
            "--",
            "gunicorn",
            "--chdir",
            &dir,
            "--workers",
            "1",
            "--graceful-timeout",
            "10",
            "gunicorn_app:app",
        ],
        Allow::Nothing,
    );
}

#[test]
fn uvicorn_serves_the_fd_placeholder() {
    if !require_tool("uvicorn") {
        return;
    }
    let dir = examples_dir();
    serves_and_reloads_under_load(
        &[
            "-l",
            "web=127.0.0.1:0",
            "--",
            "uvicorn",
            "--app-dir",
            &dir,
            "--fd",
            "{fd:web}",
            "uvicorn_app:app",
        ],
        // On shutdown uvicorn closes the connections it has accepted but not
        // yet read (Kludex/uvicorn#2757): their clients see a reset.
        Allow::CutOffByTheServer,
    );
}

#[test]
fn flask_app_run_unmodified_with_compat_werkzeug() {
    if !python_has("flask") {
        return;
    }
    let app = example_src("flask_app.py");
    serves_and_reloads_under_load(
        &[
            "-l",
            "127.0.0.1:0",
            "--compat",
            "werkzeug",
            // werkzeug has no SIGTERM handler; INT stops it between requests.
            "--stop-signal",
            "INT",
            "--",
            "python3",
            app.to_str().unwrap(),
        ],
        // werkzeug serves requests on daemon threads and does not wait for
        // them on exit: a response being written when the old generation
        // exits is cut off.
        Allow::CutOffByTheServer,
    );
}

#[test]
fn node_listens_on_fd_3() {
    if !require_tool("node") {
        return;
    }
    let app = example_src("node_server.js");
    serves_and_reloads_under_load(
        &["-l", "127.0.0.1:0", "--", "node", app.to_str().unwrap()],
        Allow::Nothing,
    );
}
