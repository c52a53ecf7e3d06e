//! Real servers that take sockets their own way (issue 4): gunicorn reads
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
    /// Up to 1% resets, nothing else. uvicorn closes connections it has
    /// accepted but not yet read when it shuts down (Kludex/uvicorn#2757), so
    /// a few clients that reached the old generation in its last moment see
    /// a reset. Refused connections or timeouts would still be relaunch's.
    UvicornShutdownResets,
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

    assert_eq!(
        report.failed(),
        0,
        "failed requests during the reload: {report:?}"
    );
    assert!(report.ok > 0, "the load ran: {report:?}");
    assert!(
        report.pids.contains(&first) && report.pids.contains(&second),
        "the load saw both generations ({first} then {second}): {:?}",
        report.pids
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
        Allow::UvicornShutdownResets,
    );
}

#[test]
fn flask_app_run_unmodified_with_compat_werkzeug() {
    if !require_tool("python3") {
        return;
    }
    // Flask itself comes from .ci/requirements.txt.
    let has_flask = std::process::Command::new("python3")
        .args(["-c", "import flask"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_flask {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "flask is required under CI=true: pip install -r .ci/requirements.txt"
        );
        eprintln!("skipping: flask is not installed");
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
        Allow::Nothing,
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
