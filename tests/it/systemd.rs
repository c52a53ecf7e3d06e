//! relaunch under systemd: what it tells its manager on NOTIFY_SOCKET around
//! a start, a reload and a stop, and the shipped units. The units pass
//! `systemd-analyze verify`; every service is `Type=notify` and reloads
//! through the control socket, so it works on systemd before 253. Under a
//! real systemd as PID 1 (tests/systemd-rig.sh): socket activation, reloads
//! that wait for the handoff and fail when the new version never gets ready,
//! relaunch killed and restarted by systemd without a refused connection
//! (also through the fd store), log priorities in the journal, nothing left
//! after stop; and the template pair (`relaunch@PORT`) serving and reloading.
//!
//! The real-systemd tests run as root (CI is root); elsewhere they say why
//! they are skipped. Under CI=true a missing prerequisite fails them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::rig::Rig;
use crate::util::*;

const UNIT: &str = "web-dashboard.service";
const APP: &str = "/opt/web-dashboard/web_dashboard";
/// The unit's cgroup, inside the rig.
const CGROUP: &str = "/sys/fs/cgroup/system.slice/web-dashboard.service";

const T: Duration = Duration::from_secs(30);

#[test]
fn units_under_real_systemd() {
    let t0 = Instant::now();
    let Some(rig) = Rig::up() else {
        return;
    };
    let booted = t0.elapsed();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let good = std::fs::read(example("pid_server")).unwrap();
    rig.install(
        "/usr/bin/relaunch",
        &std::fs::read(relaunch_bin()).unwrap(),
        0o755,
    );
    rig.install(APP, &good, 0o755);
    for unit in [
        "web-dashboard.socket",
        "web-dashboard.service",
        "relaunch@.socket",
        "relaunch@.service",
    ] {
        let text = std::fs::read(units.join(unit)).unwrap();
        rig.install(&format!("/etc/systemd/system/{unit}"), &text, 0o644);
    }
    rig.ok(&["systemctl", "daemon-reload"]);
    rig.ok(&["systemctl", "start", "web-dashboard.socket"]);
    let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();

    rig.in_net(|| {
        // The first connection starts the service; relaunch is its main pid.
        let mut serving = wait_serving(addr);
        let main = rig.main_pid_of(UNIT);
        assert!(main > 0);
        assert_ne!(main.to_string(), serving, "the app, not relaunch, answers");

        // Three reloads under load: none fails a request, and each returns
        // only once the handoff is over (the old app is gone).
        let load = Load::start(addr, 4);
        for _ in 0..3 {
            rig.ok(&["systemctl", "reload", UNIT]);
            assert!(
                !rig.alive(&serving),
                "systemctl reload returned while the old app {serving} still ran"
            );
            let now = get(addr).unwrap();
            assert_ne!(now, serving);
            serving = now;
        }
        let report = load.finish();
        assert_eq!(report.failed(), 0, "{report:?}");
        assert!(report.pids.len() >= 4, "{:?}", report.pids);
        assert_eq!(rig.main_pid_of(UNIT), main, "a reload must not restart relaunch");

        // A broken new version: the reload fails, the old version serves on.
        rig.install(APP, b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n", 0o755);
        let out = rig.run(&["systemctl", "reload", UNIT]);
        assert!(!out.status.success(), "systemctl reload of a broken version succeeded");
        assert_eq!(get(addr).unwrap(), serving);
        assert_eq!(
            rig.ok(&["systemctl", "is-active", UNIT]).trim(),
            "active"
        );

        // relaunch's log lines carry a priority (journalctl -p warning shows
        // its warning about the failed version) and no timestamp of their own.
        let main_pid = format!("_PID={main}");
        let warnings = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-p", "warning", &main_pid]);
        assert!(
            warnings.lines().any(|l| l.contains("before it was ready")),
            "no warning about the broken version at priority warning:\n{warnings}"
        );
        // The reload client (ExecReload=) reports the failure at priority err.
        let errors = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-p", "err", "-u", UNIT]);
        assert!(
            errors.lines().any(|l| l.starts_with("reload failed: ")),
            "no error from the reload client at priority err:\n{errors}"
        );
        // Only warnings (and worse) at priority warning: none of the info lines.
        for info in ["listening on", "started", "ready after", "reload done", "serving: generation"] {
            assert!(
                !warnings.lines().any(|l| l.starts_with(info)),
                "an info line ({info:?}) at priority warning:\n{warnings}"
            );
        }
        // Through the unit too: relaunch's lines start with the message.
        let unit = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", UNIT]);
        assert!(
            unit.lines().any(|l| l.starts_with("listening on ") || l.starts_with("using ")),
            "no line of relaunch's that starts with its message:\n{unit}"
        );
        assert!(
            unit.lines().any(|l| l.starts_with("reload done: generation ")),
            "{unit}"
        );
        let all = rig.ok(&["journalctl", "--no-pager", "-o", "cat", &main_pid]);
        assert!(all.contains("listening on"), "{all}");
        for line in all.lines() {
            let stamped = line.len() > 10
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && line.as_bytes()[4] == b'-';
            assert!(!stamped && !line.starts_with('<'), "a second timestamp or a raw priority: {line}");
        }

        // relaunch killed under load: systemd restarts it; it holds the socket
        // meanwhile, so not one connection is refused.
        rig.install(APP, &good, 0o755);
        let load = Load::start(addr, 4);
        wait_for("the app to answer", Duration::from_secs(10), || {
            (get(addr).ok()? == serving).then_some(())
        });
        rig.ok(&["kill", "-9", &main.to_string()]);
        let restarted = wait_for("systemd to restart relaunch", Duration::from_secs(20), || {
            let m = rig.main_pid_of(UNIT);
            (m > 0 && m != main).then_some(m)
        });
        let after = wait_new_pid(addr, &serving);
        let report = load.finish();
        eprintln!(
            "relaunch killed under load: {} ok, {} refused, {} reset (in flight on the app that systemd then SIGKILLs)",
            report.ok, report.refused, report.reset
        );
        assert_eq!(report.refused, 0, "{report:?}");
        assert_eq!(report.timeout, 0, "{report:?}");
        assert!(
            report.pids.contains(&serving) && report.pids.contains(&after),
            "the load did not span the restart: {:?}",
            report.pids
        );
        assert_eq!(rig.main_pid_of(UNIT), restarted);

        // Stop: nothing is left in the unit's cgroup, and the port is closed.
        let procs = rig.ok(&["cat", &format!("{CGROUP}/cgroup.procs")]);
        assert!(!procs.trim().is_empty(), "the unit's cgroup is empty while it runs");
        rig.ok(&["systemctl", "stop", "web-dashboard.socket", UNIT]);
        let left = rig.run(&["cat", &format!("{CGROUP}/cgroup.procs")]);
        let left = String::from_utf8_lossy(&left.stdout);
        assert!(left.trim().is_empty(), "left in {CGROUP}: {left}");
        let refused = get(addr).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        // The template pair: one instance per port, its command from
        // /etc/relaunch/PORT.conf; it serves and reloads the same way.
        rig.install("/etc/relaunch/8000.conf", format!("APP={APP}\n").as_bytes(), 0o644);
        rig.ok(&["systemctl", "start", "relaunch@8000.socket"]);
        let port: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let first = wait_serving(port);
        // The app answers before relaunch has told READY=1; a reload asked
        // while the start job runs would be merged into it.
        wait_for("relaunch@8000 to be active", Duration::from_secs(20), || {
            let state = rig.run(&["systemctl", "is-active", "relaunch@8000.service"]);
            (String::from_utf8_lossy(&state.stdout).trim() == "active").then_some(())
        });
        rig.ok(&["systemctl", "reload", "relaunch@8000.service"]);
        assert!(!rig.alive(&first), "reload returned before the handoff");
        assert_ne!(get(port).unwrap(), first);
        rig.ok(&["systemctl", "stop", "relaunch@8000.socket", "relaunch@8000.service"]);
    });
    eprintln!(
        "real-systemd test: boot {:.2?}, whole test {:.2?}",
        booted,
        t0.elapsed()
    );
}

/// relaunch killed with -9 under load, with no .socket unit: with the fd
/// store (the shipped web-dashboard-fdstore.service) systemd hands the same
/// listening socket back and not one connection is refused; the same unit
/// without FileDescriptorStoreMax= refuses connections until the restart.
#[test]
fn fd_store_keeps_the_port_open_across_a_crash() {
    let Some(rig) = Rig::up() else {
        return;
    };
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    rig.install(
        "/usr/bin/relaunch",
        &std::fs::read(relaunch_bin()).unwrap(),
        0o755,
    );
    rig.install(APP, &std::fs::read(example("pid_server")).unwrap(), 0o755);
    // The upgrade below needs --no-intercept (interception's per-child
    // listeners are not handed over yet).
    let store = std::fs::read_to_string(units.join("web-dashboard-fdstore.service"))
        .unwrap()
        .replace(
            "/usr/bin/relaunch -l",
            "/usr/bin/relaunch --no-intercept -l",
        );
    assert!(store.contains("FileDescriptorStoreMax=4"), "{store}");
    let without: String = store
        .lines()
        .filter(|l| !l.starts_with("FileDescriptorStoreMax="))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(":5000", ":5001")
        .replace("%t/web-dashboard/", "%t/web-dashboard-nostore/")
        .replace(
            "RuntimeDirectory=web-dashboard",
            "RuntimeDirectory=web-dashboard-nostore",
        );
    rig.install(
        "/etc/systemd/system/web-dashboard-fdstore.service",
        store.as_bytes(),
        0o644,
    );
    rig.install(
        "/etc/systemd/system/web-dashboard-nostore.service",
        without.as_bytes(),
        0o644,
    );
    rig.ok(&["systemctl", "daemon-reload"]);
    let crash = |unit: &str, port: u16| -> LoadReport {
        rig.ok(&["systemctl", "start", unit]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        rig.in_net(|| {
            let serving = wait_serving(addr);
            let main = rig.main_pid_of(unit);
            let load = Load::start(addr, 4);
            // SIGUSR2 upgrades relaunch in place: systemd's MainPID stays.
            rig.ok(&["systemctl", "kill", "-s", "USR2", "--kill-who=main", unit]);
            wait_for("the upgrade", Duration::from_secs(20), || {
                let log = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
                log.contains("upgraded from").then_some(())
            });
            assert_eq!(rig.main_pid_of(unit), main);
            assert_eq!(rig.ok(&["systemctl", "is-active", unit]).trim(), "active");
            assert_eq!(get(addr).unwrap(), serving, "the app was not touched");
            wait_for("the load to be served", Duration::from_secs(10), || {
                (get(addr).ok()? == serving).then_some(())
            });
            rig.ok(&["kill", "-9", &main.to_string()]);
            wait_for(
                "systemd to restart relaunch",
                Duration::from_secs(20),
                || {
                    let m = rig.main_pid_of(unit);
                    (m > 0 && m != main).then_some(())
                },
            );
            let after = wait_new_pid(addr, &serving);
            // Some requests served by the restarted one too.
            wait_for(
                "the restarted app to serve the load",
                Duration::from_secs(10),
                || (get(addr).ok()? == after).then_some(()),
            );
            let report = load.finish();
            rig.ok(&["systemctl", "stop", unit]);
            report
        })
    };
    let kept = crash("web-dashboard-fdstore.service", 5000);
    let lost = crash("web-dashboard-nostore.service", 5001);
    eprintln!(
        "relaunch killed under load: with the fd store {} ok, {} refused, {} reset; \
         without it {} ok, {} refused, {} reset",
        kept.ok, kept.refused, kept.reset, lost.ok, lost.refused, lost.reset
    );
    assert_eq!(kept.refused, 0, "{kept:?}");
    assert_eq!(kept.timeout, 0, "{kept:?}");
    assert!(
        lost.refused > 0,
        "without the store the port should close: {lost:?}"
    );
    let journal = rig.ok(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        "web-dashboard-fdstore.service",
    ]);
    assert!(
        journal.contains("offered http to systemd's fd store"),
        "{journal}"
    );
    assert!(
        journal.contains("http: reusing the socket relaunch kept in systemd's fd store"),
        "{journal}"
    );
}

#[test]
fn talks_to_systemd_around_start_reload_and_stop() {
    let app = App::new("sd", &pid_server(""));
    let path = app.dir.join("notify.sock");
    let sd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sd.set_read_timeout(Some(T)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sd.recv(&mut buf).expect("a datagram from relaunch");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--", &app.script()])
            .env("NOTIFY_SOCKET", &path),
    );
    // The listener it bound, offered to systemd's fd store first.
    let offer = next();
    assert_eq!(offer, "FDSTORE=1\nFDNAME=relaunch.http");
    let first = next();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        first.contains("STATUS=serving: generation 1, pid "),
        "{first}"
    );
    r.signal(libc::SIGHUP);
    let mut reloading = next();
    // As root the reload's generation gets a socket of its own (the drain),
    // kept in the store beside the first.
    if reloading.starts_with("FDSTORE=1") {
        assert_eq!(reloading, "FDSTORE=1\nFDNAME=relaunch.http~1");
        reloading = next();
    }
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready = next();
    assert!(
        ready.contains("READY=1") && ready.contains("generation 2"),
        "{ready}"
    );
    r.signal(libc::SIGTERM);
    assert!(next().contains("STOPPING=1"));
    assert_eq!(r.wait_exit(T).code(), Some(0));
}

#[test]
fn systemd_units_verify() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = TempDir::new("units");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .extension()
            .is_some_and(|e| e == "service" || e == "socket")
        {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        // Point the units at programs that exist here, so verify checks the rest.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/relaunch", relaunch_bin())
            .replace("/usr/bin/relaunch", relaunch_bin())
            .replace("/opt/web-dashboard/web_dashboard", "/bin/true")
            .replace(
                "EnvironmentFile=/etc/relaunch/%i.conf",
                "Environment=APP=/bin/true",
            )
            .replace("User=www-data", "");
        // Instantiate templates as verify requires.
        let name = name.replace("@.", "@8000.");
        std::fs::write(dir.join(&name), text).unwrap();
        units.push(dir.join(&name));
    }
    assert_eq!(units.len(), 5);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        // Documentation=man:relaunch(1) must resolve: the pages build.rs wrote.
        .env("MANPATH", Path::new(env!("OUT_DIR")).join("assets/man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// Every service works on systemd before 253 (which ignores `Type=notify-reload`
/// and runs the unit as `Type=simple`): `Type=notify`, and a reload that waits for
/// relaunch's answer on the control socket that ExecStart serves.
#[test]
fn services_reload_through_the_control_socket() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut services = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        services += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let setting = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .collect()
        };
        let name = path.display();
        assert_eq!(setting("Type"), ["notify"], "{name}");
        let control = |line: &str| {
            line.split_once("--control ")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        };
        let start = setting("ExecStart");
        let served = control(&start[0]).unwrap_or_else(|| panic!("{name}: no --control"));
        let binary = start[0].split_whitespace().next().unwrap();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("relaunch@")
        {
            assert_eq!(
                binary, "/usr/bin/relaunch",
                "{name}: the Debian package's binary"
            );
        }
        let reload = setting("ExecReload");
        assert_eq!(
            reload,
            [format!("{binary} reload --control {served}")],
            "{name}"
        );
        assert!(
            setting("Restart").iter().any(|r| r == "on-failure"),
            "{name}: relaunch killed must be restarted"
        );
    }
    assert_eq!(services, 3);
}

/// An app that binds its own port (`relaunch --port P`, the app binds
/// 127.0.0.1:P, so relaunch moves its socket there): the fd store must keep
/// the moved socket, not the one of the start, which relaunch shut down.
/// relaunch killed with -9 twice under 8 clients: not one refused.
#[test]
fn fd_store_keeps_a_moved_port_open_across_crashes() {
    let Some(rig) = Rig::up() else {
        return;
    };
    rig.install(
        "/usr/bin/relaunch",
        &std::fs::read(relaunch_bin()).unwrap(),
        0o755,
    );
    rig.install(APP, &std::fs::read(example("pid_server")).unwrap(), 0o755);
    let unit = "moved-port.service";
    // Without LISTEN_FDS the app binds 127.0.0.1:$PORT itself.
    let text = format!(
        "[Service]\nType=notify\n\
         ExecStart=/usr/bin/relaunch --port 5002 -- /usr/bin/env -u LISTEN_FDS -u LISTEN_PID \
         -u LISTEN_FDNAMES PORT=5002 {APP}\n\
         FileDescriptorStoreMax=4\nKillMode=mixed\nTimeoutStopSec=20\n\
         Restart=on-failure\nRestartSec=100ms\n"
    );
    rig.install(
        &format!("/etc/systemd/system/{unit}"),
        text.as_bytes(),
        0o644,
    );
    rig.ok(&["systemctl", "daemon-reload"]);
    rig.ok(&["systemctl", "start", unit]);
    let addr: SocketAddr = "127.0.0.1:5002".parse().unwrap();
    let report = rig.in_net(|| {
        let mut serving = wait_serving(addr);
        wait_for("the move", Duration::from_secs(20), || {
            let log = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
            log.contains("now holds 127.0.0.1:5002").then_some(())
        });
        let load = Load::start(addr, 8);
        for _ in 0..2 {
            wait_for("the load to be served", Duration::from_secs(10), || {
                (get(addr).ok()? == serving).then_some(())
            });
            let main = rig.main_pid_of(unit);
            rig.ok(&["kill", "-9", &main.to_string()]);
            wait_for(
                "systemd to restart relaunch",
                Duration::from_secs(20),
                || {
                    let m = rig.main_pid_of(unit);
                    (m > 0 && m != main).then_some(())
                },
            );
            serving = wait_new_pid(addr, &serving);
        }
        wait_for(
            "the restarted app to serve the load",
            Duration::from_secs(10),
            || (get(addr).ok()? == serving).then_some(()),
        );
        load.finish()
    });
    let journal = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
    rig.ok(&["systemctl", "stop", unit]);
    eprintln!(
        "relaunch killed twice under load after a --port move: {} ok, {} refused, {} reset",
        report.ok, report.refused, report.reset
    );
    let counts = format!(
        "{} ok, {} refused, {} reset, {} timed out, {} other: {:?}",
        report.ok,
        report.refused,
        report.reset,
        report.timeout,
        report.other,
        report.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(report.refused, 0, "{counts}\n{journal}");
    assert_eq!(report.timeout, 0, "{counts}\n{journal}");
    assert!(
        journal.contains("http: systemd's fd store keeps its new socket in place of the old one"),
        "{journal}"
    );
    // The restarted relaunch got the moved socket back: no move again.
    assert_eq!(
        journal
            .matches("reusing the socket relaunch kept in systemd's fd store")
            .count(),
        2,
        "{journal}"
    );
    assert_eq!(
        journal.matches("now holds 127.0.0.1:5002").count(),
        1,
        "{journal}"
    );
}

/// An app that deletes its socket file and binds the path itself (asyncio):
/// its unlink is answered and not done, so the file stays relaunch's, and
/// the fd store gives back the socket of that very file. relaunch killed
/// with -9 twice while 8 clients connect by the path: not one refused, and
/// the restarted relaunch knows the file as its own (its drain stays on).
#[test]
fn fd_store_keeps_a_socket_file_an_app_deletes_across_crashes() {
    let Some(rig) = Rig::up() else {
        return;
    };
    if !Path::new("/usr/bin/python3").exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "the test needs /usr/bin/python3"
        );
        eprintln!("skipping: no /usr/bin/python3");
        return;
    }
    rig.install(
        "/usr/bin/relaunch",
        &std::fs::read(relaunch_bin()).unwrap(),
        0o755,
    );
    rig.install("/opt/refile/app.py", ASYNCIO_UNIX_APP.as_bytes(), 0o644);
    rig.ok(&["mkdir", "-p", "/run/refile"]);
    let unit = "refile.service";
    let text = "[Service]\nType=notify\n\
         ExecStart=/usr/bin/relaunch -l app=unix:/run/refile/app.sock -- /usr/bin/python3 \
         /opt/refile/app.py /run/refile/app.sock\n\
         FileDescriptorStoreMax=4\nKillMode=mixed\nTimeoutStopSec=20\n\
         Restart=on-failure\nRestartSec=100ms\n";
    rig.install(
        &format!("/etc/systemd/system/{unit}"),
        text.as_bytes(),
        0o644,
    );
    rig.ok(&["systemctl", "daemon-reload"]);
    rig.ok(&["systemctl", "start", unit]);
    // The rig's /run, from here.
    let path = PathBuf::from(format!("/proc/{}/root/run/refile/app.sock", rig.pid));
    let ask = |path: &Path| -> std::io::Result<String> {
        use std::io::Read;
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if out.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(out.trim().to_string())
    };
    let first = wait_for("the app to serve", Duration::from_secs(20), || {
        ask(&path).ok()
    });
    wait_for(
        "the app's unlink of the socket file",
        Duration::from_secs(20),
        || {
            let log = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
            log.contains("deleted relaunch's socket file").then_some(())
        },
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (refused, other) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let (mut refused, mut other) = (0usize, Vec::new());
                    let end = Instant::now() + Duration::from_secs(120);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                        match ask(&path) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                refused += 1
                            }
                            Err(e) => other.push(e.to_string()),
                        }
                    }
                    (refused, other)
                })
            })
            .collect();
        let mut serving = first.clone();
        for _ in 0..2 {
            let main = rig.main_pid_of(unit);
            rig.ok(&["kill", "-9", &main.to_string()]);
            wait_for(
                "systemd to restart relaunch",
                Duration::from_secs(20),
                || {
                    let m = rig.main_pid_of(unit);
                    (m > 0 && m != main).then_some(())
                },
            );
            serving = wait_for("the new app", Duration::from_secs(20), || {
                ask(&path).ok().filter(|p| *p != serving)
            });
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients.into_iter().map(|c| c.join().unwrap()).fold(
            (0, Vec::new()),
            |(r, mut o), (r2, o2)| {
                o.extend(o2);
                (r + r2, o)
            },
        )
    });
    let journal = rig.ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
    rig.ok(&["systemctl", "stop", unit]);
    eprintln!(
        "relaunch killed twice while clients connect to a remade socket file: {refused} refused, \
         {} other failures ({:?})",
        other.len(),
        other.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(refused, 0, "{journal}");
    // Each new app deleted the file again; it stayed, so nothing was remade.
    assert!(!journal.contains("bound a new socket there"), "{journal}");
    // The socket systemd gave back is known as the file's own: its old
    // generations drain at reloads as before the crash.
    assert!(!journal.contains("drain is off"), "{journal}");
}

/// Deletes the socket file it finds and binds the path (asyncio does), then
/// answers each connection with its pid.
const ASYNCIO_UNIX_APP: &str = r#"
import asyncio, os, socket, sys

async def answer(reader, writer):
    writer.write(f"{os.getpid()}\n".encode())
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_unix_server(answer, path=sys.argv[1])
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect("\0" + notify[1:] if notify.startswith("@") else notify)
        s.send(b"READY=1")
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;
