//! `relaunch upgrade`: relaunch re-executes itself in place (same pid, same
//! listeners, same children) from a second build of itself, under load.
//!
//! The second build is the same source with another `RELAUNCH_BUILD_ID`,
//! built once into target/upgrade-b by tests/upgrade-build.sh.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);
const BUILD_B: &str = "upgrade-test-b";

/// target/upgrade-b/debug/relaunch, built with RELAUNCH_BUILD_ID=upgrade-test-b
/// (the build id tests/upgrade-build.sh gives it).
fn second_build() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let target = Path::new(relaunch_bin())
            .parent()
            .unwrap()
            .parent()
            .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upgrade-build.sh");
        let built = Command::new("bash")
            .arg(script)
            .arg(target)
            .env("CARGO", env!("CARGO"))
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "building the second relaunch failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        target.join("upgrade-b/debug/relaunch")
    })
}

/// Puts `from` at `to` the way a deploy does: a new file renamed over the
/// old one (which runs, so it cannot be written in place). Written by `cp`,
/// not here: a child another test thread forks meanwhile would hold our
/// write fd until its exec, and running the file then fails with ETXTBSY.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    let ok = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(ok.success(), "cp {} {}", from.display(), tmp.display());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A shell script at `path`, written out of process like [`install`].
fn script(path: &Path, body: &str) {
    use std::io::Write;
    let tmp = path.with_extension("new");
    let mut sh = Command::new("sh")
        .args(["-c", "cat > \"$1\"", "sh"])
        .arg(&tmp)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    stdin
        .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
        .unwrap();
    drop(stdin);
    assert!(sh.wait().unwrap().success());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs a client subcommand: (exit code, stdout + stderr).
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(relaunch_bin()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn upgrade(ctl: &Path) -> (i32, String) {
    cli(&["upgrade", "--control", ctl.to_str().unwrap()])
}

fn status(ctl: &Path) -> serde_json::Value {
    let (code, out) = cli(&["status", "--json", "--control", ctl.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// (pid, generation) of every child.
fn children(s: &serde_json::Value) -> Vec<(i64, i64)> {
    s["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["pid"].as_i64().unwrap(),
                c["generation"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn fds_of(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// The fds of `pid` ("self" for this test) that an exec would carry: open
/// without close-on-exec.
fn open_across_exec(pid: &str) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let info = std::fs::read_to_string(e.path()).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
            (flags & libc::O_CLOEXEC as u32 == 0).then_some(fd)
        })
        .collect()
}

/// relaunch from a copy of its binary in a temp dir, serving `mode`.
struct Setup {
    app: App,
    bin: PathBuf,
    ctl: PathBuf,
    r: Relaunch,
}

fn setup(tag: &str, mode: &str, extra: &[&str]) -> Setup {
    let app = App::new(tag, mode);
    let bin = app.dir.join("relaunch");
    install(Path::new(relaunch_bin()), &bin);
    let ctl = app.control();
    let r = Relaunch::start_with(
        Command::new(&bin)
            .args(["-l", "127.0.0.1:0", "--control", ctl.to_str().unwrap()])
            .args(extra)
            .arg("--")
            .arg(app.script()),
    );
    Setup { app, bin, ctl, r }
}

#[test]
fn upgrade_under_load_keeps_the_pid_the_listeners_and_the_children() {
    let b = second_build();
    let files = TempDir::new("upgrade-ports");
    let ports = files.join("ports.json");
    let mut s = setup(
        "upgrade-load",
        &pid_server(""),
        &["--workers", "2", "--ports-file", ports.to_str().unwrap()],
    );
    let addr = s.r.listen_addr(3);
    wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    let before = status(&s.ctl);
    assert_eq!(before["build_id"], serde_json::Value::Null);
    let load = Load::start(addr, 8);
    install(b, &s.bin);
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    let pid = s.r.pid();
    assert!(
        out.contains(&format!(
            "upgraded relaunch (pid {pid}) from 0.1.0 to 0.1.0 (build {BUILD_B}), kept 1 listeners and 2 children"
        )),
        "{out}"
    );
    s.r.log.wait(
        &format!("upgraded from 0.1.0 to 0.1.0 (build {BUILD_B}), kept 1 listeners and 2 children"),
        T,
    );
    let after = status(&s.ctl);
    assert_eq!(after["pid"], pid);
    assert_eq!(after["build_id"], BUILD_B);
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(children(&after), children(&before));
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe.ino(), std::fs::metadata(&s.bin).unwrap().ino());
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        s.bin
    );
    // A reload afterwards works, from the new image.
    let (code, out) = crate::reload::reload_cli(&s.ctl);
    assert_eq!(code, 0, "{out}");
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert!(rep.ok > 0);
    let log = s.r.log.text();
    assert_eq!(log.matches(" started ").count(), 4, "{log}");
    assert!(!log.contains("restarting"), "{log}");
    assert_eq!(status(&s.ctl)["generation"], 2);
    // The ports file and the control socket were handed over too: still
    // there, and removed when relaunch stops.
    assert!(ports.exists());
    s.r.signal(libc::SIGTERM);
    assert!(s.r.wait_exit(T).success(), "{}", s.r.log.text());
    assert!(!ports.exists(), "the ports file outlived relaunch");
    assert!(!s.ctl.exists(), "the control socket outlived relaunch");
}

#[test]
fn twenty_upgrades_in_a_row_leak_nothing() {
    let b = second_build();
    let s = setup("upgrade-twenty", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    let pid = s.r.pid();
    let children_before = children(&status(&s.ctl));
    // A control connection may still be closing: the count settles at this.
    let baseline = wait_for("relaunch's fd count to settle", T, || {
        let n = fds_of(pid).len();
        std::thread::sleep(Duration::from_millis(50));
        (fds_of(pid).len() == n).then_some(n)
    });
    let load = Load::start(addr, 4);
    // `relaunch status` answers throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asking = {
        let (stop, ctl) = (stop.clone(), s.ctl.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match cli(&["status", "--control", ctl.to_str().unwrap()]) {
                    (0, _) => ok += 1,
                    (_, out) => failed.push(out),
                }
            }
            (ok, failed)
        })
    };
    for n in 0..20 {
        let (next, build) = if n % 2 == 0 {
            (b, serde_json::Value::from(BUILD_B))
        } else {
            (Path::new(relaunch_bin()), serde_json::Value::Null)
        };
        install(next, &s.bin);
        let (code, out) = upgrade(&s.ctl);
        assert_eq!(code, 0, "upgrade {n}: {out}");
        let st = status(&s.ctl);
        assert_eq!(st["build_id"], build, "upgrade {n}");
        assert_eq!(children(&st), children_before, "upgrade {n}");
        let fds = fds_of(pid);
        assert!(
            !fds.iter().any(|f| f.contains("memfd:")),
            "upgrade {n} left a memfd: {fds:?}"
        );
        // Flat: back to the count before the first upgrade (a leak never
        // is, and twenty of them would show even past a connection that
        // was closing when the baseline was taken).
        wait_for(
            &format!("at most {baseline} fds after upgrade {n}"),
            T,
            || (fds_of(pid).len() <= baseline).then_some(()),
        );
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(s.r.log.count("upgraded from"), 20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (asked, failed) = asking.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {asked} status requests failed: {failed:?}",
        failed.len()
    );
    // After twenty handovers every fd of relaunch's is close-on-exec again
    // (the next exec in place would carry it otherwise): open across exec
    // are only 0, 1, 2 and what this test's own parent left open for both.
    let ours = open_across_exec("self");
    let carried: Vec<i32> = open_across_exec(&pid.to_string())
        .into_iter()
        .filter(|fd| *fd > 2 && !ours.contains(fd))
        .collect();
    assert!(carried.is_empty(), "not close-on-exec: {carried:?}");
    // The next handshake, started as every child is, sees 0, 1, 2 and the
    // folder it lists: nothing of relaunch's, nor of this test's parent.
    let list = "import os; print('fds', sorted(map(int, os.listdir('/proc/self/fd')))); exit(1)";
    script(&s.bin, &format!("exec python3 -c \"{list}\""));
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": fds [0, 1, 2, 3];"), "{out}");
}

#[test]
fn a_broken_new_binary_is_refused_and_nothing_changes() {
    let s = setup("upgrade-broken", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let served = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    let before = status(&s.ctl);
    let exe = std::fs::metadata(format!("/proc/{}/exe", s.r.pid()))
        .unwrap()
        .ino();
    let load = Load::start(addr, 4);
    let cases = [
        (
            "echo 'relaunch: cannot start: libfoo.so missing' >&2; exit 1",
            "its handshake exited with status 1: relaunch: cannot start: libfoo.so missing",
        ),
        (
            "cat >/dev/null; echo 'relaunch upgrade-check ok: format 5, 9.0.0'",
            "it speaks another upgrade state format (relaunch upgrade-check ok: format 5, 9.0.0; this relaunch hands over format 4)",
        ),
        (
            "echo hello",
            "it does not speak relaunch's upgrade handshake (format 4): hello",
        ),
        (
            "exec sleep 60",
            "it did not answer the handshake within 5 s",
        ),
        // It passes the check, then cannot be executed when relaunch execs it.
        (
            &format!(
                "cat >/dev/null; echo 'relaunch upgrade-check ok: format 4, 0.9.9'; chmod a-x {}",
                s.bin.display()
            ),
            "Permission denied",
        ),
    ];
    for (body, reason) in cases {
        script(&s.bin, body);
        let (code, out) = upgrade(&s.ctl);
        assert_eq!(code, 1, "{body}: {out}");
        assert!(out.contains(reason), "{body}: {out}");
        assert!(
            out.contains("the running relaunch goes on unchanged"),
            "{out}"
        );
        let now = status(&s.ctl);
        assert_eq!(now["pid"], before["pid"]);
        assert_eq!(now["build_id"], before["build_id"]);
        assert_eq!(now["generation"], before["generation"]);
        assert_eq!(children(&now), children(&before));
        assert_eq!(get(addr).unwrap(), served);
    }
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    let still = std::fs::metadata(format!("/proc/{}/exe", s.r.pid())).unwrap();
    assert_eq!(still.ino(), exe, "the old image runs on");
    // A real relaunch asked for a format it does not read says so.
    let out = Command::new(relaunch_bin())
        .args(["--upgrade-check", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reads upgrade state formats 1 to 4, not 5"),
        "{err}"
    );
}

#[test]
fn an_upgrade_during_a_reload_finishes_the_reload_in_the_new_image() {
    let b = second_build();
    let s = setup("upgrade-in-reload", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let first = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    // Generation 2 takes 2 s to get ready: the upgrade comes meanwhile.
    s.app.deploy(&pid_server("--delay 2"));
    let load = Load::start(addr, 4);
    let ctl = s.ctl.clone();
    let reload = std::thread::spawn(move || crate::reload::reload_cli(&ctl));
    s.r.log.wait("reload: starting generation 2", T);
    install(b, &s.bin);
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    // Both generations were handed over, the new one still starting.
    assert!(out.contains("kept 1 listeners and 2 children"), "{out}");
    let mid = status(&s.ctl);
    assert_eq!(mid["state"], "reloading");
    assert_eq!(mid["build_id"], BUILD_B);
    let (code, out) = reload.join().unwrap();
    assert_eq!(
        code, 0,
        "the reload client is answered by the new image: {out}"
    );
    assert!(out.contains("reloaded: generation 2"), "{out}");
    let after = status(&s.ctl);
    assert_eq!(after["generation"], 2);
    let kids = children(&after);
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert_eq!(
        kids[0],
        (children(&mid).iter().find(|c| c.1 == 2).unwrap().0, 2),
        "the child started before the upgrade is the one serving"
    );
    assert_ne!(get(addr).unwrap(), first);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(s.r.log.count(" started "), 2, "{}", s.r.log.text());
}

#[test]
fn a_reload_during_an_upgrade_is_handed_over_with_it() {
    let b = second_build();
    let s = setup("reload-in-upgrade", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let first = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    // A new binary whose handshake takes a second: the reload comes in
    // meanwhile, and is still starting (2 s) when the exec happens.
    s.app.deploy(&pid_server("--delay 2"));
    script(
        &s.bin,
        &format!(
            "[ \"$1\" = --upgrade-check ] && sleep 1\nexec {} \"$@\"",
            b.display()
        ),
    );
    let load = Load::start(addr, 4);
    let ctl = s.ctl.clone();
    let upgrading = std::thread::spawn(move || upgrade(&ctl));
    s.r.log
        .wait("asking the new binary whether it can take over", T);
    let (code, out) = crate::reload::reload_cli(&s.ctl);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reloaded: generation 2"), "{out}");
    let (code, out) = upgrading.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("(build {BUILD_B})")), "{out}");
    s.r.log.wait("reload done", T);
    let log = s.r.log.text();
    let upgraded_at = log.find("upgraded from").expect("upgraded");
    let done_at = log.find("reload done").expect("reload done");
    assert!(
        upgraded_at < done_at,
        "the exec happened mid-reload:\n{log}"
    );
    let after = status(&s.ctl);
    assert_eq!(after["generation"], 2);
    assert_eq!(after["build_id"], BUILD_B);
    assert_eq!(children(&after).len(), 1);
    assert_ne!(get(addr).unwrap(), first);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(log.matches(" started ").count(), 2, "{log}");
}

#[test]
fn sigusr2_upgrades_instead_of_reaching_the_children() {
    let b = second_build();
    let s = setup("upgrade-usr2", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let served = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    install(b, &s.bin);
    s.r.signal(libc::SIGUSR2);
    s.r.log.wait("upgraded from", T);
    assert_eq!(status(&s.ctl)["build_id"], BUILD_B);
    // The child never saw it (SIGUSR2's default would have killed it).
    assert_eq!(get(addr).unwrap(), served);
    assert!(!s.r.log.text().contains("restarting"));
}

#[test]
fn a_stray_upgrade_state_variable_is_refused_with_a_hint() {
    for (value, code, says) in [
        ("abc", 2, "RELAUNCH_UPGRADE_STATE=abc is not an fd number"),
        (
            "77",
            2,
            "RELAUNCH_UPGRADE_STATE names fd 77, which is not open",
        ),
        // 0, 1 and 2 are never a state.
        ("1", 2, "is not an fd number"),
    ] {
        let out = Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--", "true"])
            .env("RELAUNCH_UPGRADE_STATE", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{value}: {err}");
        assert!(err.contains(says), "{value}: {err}");
        assert!(err.contains("unset it to start relaunch afresh"), "{err}");
    }
    // An open fd that is not a sealed state.
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = Command::new(relaunch_bin());
    cmd.args(["-l", "127.0.0.1:0", "--", "true"])
        .env("RELAUNCH_UPGRADE_STATE", fd.to_string());
    // SAFETY: fcntl in the child before exec, async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("it is not a sealed memfd"), "{err}");
}

/// What systemd hears around an upgrade: `STATUS=upgrading relaunch…`,
/// then `READY=1` with what serves once the new image runs; the fd store
/// offer is not made again (the store still holds the same socket).
#[test]
fn tells_systemd_around_an_upgrade() {
    let app = App::new("upgrade-sd", &pid_server(""));
    let bin = app.dir.join("relaunch");
    install(Path::new(relaunch_bin()), &bin);
    let path = app.dir.join("notify.sock");
    let sd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sd.set_read_timeout(Some(T)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sd.recv(&mut buf).expect("a datagram from relaunch");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ctl = app.control();
    let r = Relaunch::start_with(
        Command::new(&bin)
            .args(["-l", "127.0.0.1:0", "--control", ctl.to_str().unwrap()])
            .args(["--no-intercept", "--"])
            .arg(app.script())
            .env("NOTIFY_SOCKET", &path),
    );
    assert_eq!(next(), "FDSTORE=1\nFDNAME=relaunch.http");
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving: generation 1, pid "),
        "{ready}"
    );
    let (code, out) = upgrade(&ctl);
    assert_eq!(code, 0, "{out}");
    assert_eq!(next(), "STATUS=upgrading relaunch…");
    assert_eq!(next(), ready, "READY=1 again, with what serves");
    drop(r);
    assert_eq!(next(), "STOPPING=1");
}

/// A SIGHUP that lands just as the handshake ends, around the exec, is
/// not lost: whichever image takes it, generation 2 ends up serving.
#[test]
fn a_sighup_at_the_exec_is_not_lost() {
    let b = second_build();
    let s = setup("upgrade-hup", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let first = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    // The new binary's handshake answers, then sends relaunch SIGHUP.
    script(
        &s.bin,
        &format!(
            "if [ \"$1\" = --upgrade-check ]; then {b} \"$@\"; rc=$?; kill -HUP $PPID; exit $rc; fi\nexec {b} \"$@\"",
            b = b.display()
        ),
    );
    let load = Load::start(addr, 4);
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    s.r.log.wait("reload done: generation 2 serves", T);
    let after = status(&s.ctl);
    assert_eq!(after["generation"], 2);
    assert_eq!(after["build_id"], BUILD_B);
    assert_ne!(get(addr).unwrap(), first);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(s.r.log.count("SIGHUP: reload"), 1, "{}", s.r.log.text());
}

/// The file relaunch checked is the one it executes: a file swapped in at
/// the path between the handshake and the exec never runs.
#[test]
fn a_binary_swapped_after_the_handshake_does_not_run() {
    let b = second_build();
    let s = setup("upgrade-swap", &pid_server(""), &[]);
    let addr = s.r.listen_addr(3);
    let first = wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    let rogue = s.app.dir.join("rogue");
    script(&rogue, "echo rogue ran >&2; exit 7");
    // The new binary answers the handshake, then puts the rogue file at
    // its own path (as a second deploy racing the first would).
    script(
        &s.bin,
        &format!(
            "if [ \"$1\" = --upgrade-check ]; then {b} \"$@\"; rc=$?; mv {rogue} {bin}; exit $rc; fi\nexec {b} \"$@\"",
            b = b.display(),
            rogue = rogue.display(),
            bin = s.bin.display()
        ),
    );
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}\n{}", s.r.log.text());
    assert!(out.contains(&format!("(build {BUILD_B})")), "{out}");
    assert!(!s.r.log.text().contains("rogue ran"), "{}", s.r.log.text());
    assert!(pid_alive(s.r.pid()));
    assert_eq!(status(&s.ctl)["build_id"], BUILD_B);
    assert_eq!(get(addr).unwrap(), first);
}

/// A SIGTERM (`systemctl stop`) that lands anywhere in a stream of
/// upgrades, the exec included, stops relaunch: whichever image takes it.
#[test]
fn a_sigterm_during_a_stream_of_upgrades_always_stops_relaunch() {
    let tries = 25;
    for n in 0..tries {
        let mut s = setup("upgrade-term", &pid_server(""), &[]);
        wait_serving(s.r.listen_addr(3));
        s.r.log.wait("serving: generation 1", T);
        let ctl = s.ctl.clone();
        let stream = std::thread::spawn(move || {
            let mut done = 0;
            while upgrade(&ctl).0 == 0 {
                done += 1;
            }
            done
        });
        // Around the exec of the third upgrade, a different moment each try.
        s.r.log.wait_n("can take over; handing over", 3, T);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_micros(u64::from(nanos % 3_000)));
        s.r.signal(libc::SIGTERM);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end && s.r.child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            s.r.child.try_wait().unwrap().is_some(),
            "try {n}: relaunch still runs 10 s after SIGTERM; log:\n{}",
            s.r.log.text()
        );
        let status = s.r.wait_exit(T);
        let upgrades = stream.join().unwrap();
        assert!(status.success(), "try {n}: {status:?}\n{}", s.r.log.text());
        assert!(upgrades >= 1);
    }
}

/// A helper of the starting generation: waits on the FIFO `go`, sleeps the
/// milliseconds in `delay`, then sends READY=1 (once) and stays a while, so
/// its sender can be checked.
const READY_ON_GO: &str = r#"
import os, socket, sys, time
here = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(here, "waiting"), "w").close()
with open(os.path.join(here, "go")) as f:
    f.read()
time.sleep(float(open(os.path.join(here, "delay")).read()) / 1000)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
time.sleep(10)
"#;

/// Under `--ready notify`, a reload's READY=1 that arrives while relaunch
/// hands over (read by the old image, or still in the socket) counts: the
/// reload finishes, not at --ready-timeout. The READY=1 is sent when the
/// new binary's handshake ends, a little later at each try, so that the
/// tries sweep the hand-over.
#[test]
fn a_ready_at_the_exec_is_not_lost() {
    if !require_tool("python3") {
        return;
    }
    let b = second_build();
    let s = setup(
        "upgrade-ready",
        &pid_server(""),
        &["--ready", "notify", "--ready-timeout", "3s"],
    );
    let addr = s.r.listen_addr(3);
    wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    let dir = &s.app.dir;
    std::fs::write(dir.join("ready.py"), READY_ON_GO).unwrap();
    let fifo = dir.join("go");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    s.app.deploy(&format!(
        "python3 {} &\n{}",
        dir.join("ready.py").display(),
        pid_server("--no-notify")
    ));
    // The new binary's handshake answers, then lets the helper go.
    let shim = dir.join("relaunch-shim");
    script(
        &shim,
        &format!(
            "if [ \"$1\" = --upgrade-check ]; then {b} \"$@\"; rc=$?; echo go > {go}; exit $rc; fi\nexec {b} \"$@\"",
            b = b.display(),
            go = fifo.display()
        ),
    );
    let tries = 16;
    for n in 0..tries {
        std::fs::write(dir.join("delay"), format!("{}", n as f64 * 0.5)).unwrap();
        let _ = std::fs::remove_file(dir.join("waiting"));
        let ctl = s.ctl.clone();
        let reloading = std::thread::spawn(move || crate::reload::reload_cli(&ctl));
        wait_for("the helper waits", T, || {
            dir.join("waiting").exists().then_some(())
        });
        let (code, out) = cli(&[
            "upgrade",
            "--control",
            s.ctl.to_str().unwrap(),
            "--binary",
            shim.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = reloading.join().unwrap();
        assert_eq!(
            code,
            0,
            "try {n} (READY=1 {} ms after the handshake): {out}\n{}",
            n as f64 * 0.5,
            s.r.log.text()
        );
    }
    assert_eq!(s.r.log.count("upgraded from"), tries);
}

/// An unmodified Python server that binds `127.0.0.1:PORT` itself and
/// answers its pid. On SIGUSR1 it binds that address again on a new socket
/// (as a process that started before an upgrade and binds after it) and
/// writes what the bind returned to `rebound`.
const SELF_BINDING: &str = r#"
import os, signal, socket, socketserver, sys, threading

port = int(sys.argv[1])

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline().strip():
            pass
        body = f"{os.getpid()}\n".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)

# A server that stops well: at SIGTERM it finishes the requests it took
# (these tests are about what an upgrade carries; an app that dies
# mid-request at a reload is the drain's case, tested apart).
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

server = Server(("127.0.0.1", port), Handler)

def again(*_):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(5)
        said = "bound"
    except OSError as e:
        said = f"error {e.errno}"
    s.close()
    with open(os.path.join(os.path.dirname(__file__), "rebound.tmp"), "w") as f:
        f.write(said)
    os.rename(os.path.join(os.path.dirname(__file__), "rebound.tmp"),
              os.path.join(os.path.dirname(__file__), "rebound"))

def hammer():
    # Binds the held address again and again, so that an upgrade's exec
    # lands while interception has one of them in hand.
    n, here = 0, os.path.dirname(__file__)
    try:
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.close()
            n += 1
            if n % 10 == 0:
                said = str(n)
                tmp = os.path.join(here, f"binds-{os.getpid()}.tmp")
                with open(tmp, "w") as f:
                    f.write(said)
                os.rename(tmp, os.path.join(here, f"binds-{os.getpid()}"))
    except OSError as e:
        with open(os.path.join(here, f"binds-{os.getpid()}"), "w") as f:
            f.write(f"error {e.errno}")

if len(sys.argv) > 2:
    threading.Thread(target=hammer, daemon=True).start()

signal.signal(signal.SIGUSR1, again)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
server.server_close()
"#;

/// Bind interception (on by default) is carried by an upgrade: each child's
/// seccomp notification fd and the held sockets (here `--port` moved to
/// where the app bound) go to the new image, whose threads answer the binds
/// of processes that started before it, and of the generations after it.
#[test]
fn an_upgrade_carries_bind_interception() {
    if !(require_tool("python3") && require_tool("ss")) {
        return;
    }
    let b = second_build();
    let dir = TempDir::new("upgrade-intercept");
    let script = dir.join("app.py");
    std::fs::write(&script, SELF_BINDING).unwrap();
    let bin = dir.join("relaunch");
    install(Path::new(relaunch_bin()), &bin);
    let ctl = dir.join("ctl.sock");
    let port = free_port();
    let mut r = Relaunch::start_with(Command::new(&bin).args([
        "--port",
        &port.to_string(),
        "--control",
        ctl.to_str().unwrap(),
        "--",
        "python3",
        script.to_str().unwrap(),
        &port.to_string(),
    ]));
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let first = wait_serving(addr);
    r.log.wait("serving: generation 1", T);
    r.log.wait(&format!("now holds 127.0.0.1:{port}"), T);
    let before = status(&ctl);
    assert_eq!(
        before["listeners"][0]["address"],
        format!("127.0.0.1:{port}")
    );
    let load = Load::start(addr, 4);
    install(b, &bin);
    let (code, out) = upgrade(&ctl);
    assert_eq!(code, 0, "{out}\n{}", r.log.text());
    r.log.wait("upgraded from", T);
    let after = status(&ctl);
    assert_eq!(after["pid"], r.pid());
    assert_eq!(after["build_id"], BUILD_B);
    assert_eq!(children(&after), children(&before));
    // The moved --port socket came along, and status still says where.
    assert_eq!(
        after["listeners"][0]["address"],
        format!("127.0.0.1:{port}")
    );
    let found = held_listeners_on(port);
    assert!(
        found
            .iter()
            .all(|(l, _)| l.contains(&format!("127.0.0.1:{port}"))),
        "{found:?}"
    );
    // A process started before the upgrade binds after it: the new image
    // answers (a real bind would fail with EADDRINUSE, an unanswered one hang).
    let child: i32 = first.parse().unwrap();
    // SAFETY: a signal to the app's pid.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    let rebound = dir.join("rebound");
    let said = wait_for("the app's second bind", T, || {
        std::fs::read_to_string(&rebound).ok()
    });
    assert_eq!(said, "bound", "{}", r.log.text());
    // Said once per process, across the upgrade too.
    let log = r.log.text();
    assert_eq!(
        log.matches(&format!("pid {child} (python3) bound")).count(),
        1,
        "{log}"
    );
    // The next generation's bind is answered by the new image.
    let (code, out) = crate::reload::reload_cli(&ctl);
    assert_eq!(code, 0, "{out}\n{}", r.log.text());
    let second = wait_new_pid(addr, &first);
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}\n{}", rep.errors, r.log.text());
    assert!(rep.ok > 0);
    assert_eq!(status(&ctl)["generation"], 2);
    // kill -9 of the child: its restart binds under the new image, and no
    // connection is refused meanwhile.
    let load = Load::start(addr, 4);
    let pid: i32 = second.parse().unwrap();
    // SAFETY: a signal to the app's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_new_pid(addr, &second);
    let rep = load.finish();
    assert_eq!(rep.refused, 0, "{:?}\n{}", rep.errors, r.log.text());
    assert!(!r.log.text().contains("ENOSYS"), "{}", r.log.text());
    r.signal(libc::SIGTERM);
    assert!(r.wait_exit(T).success(), "{}", r.log.text());
}

/// Binds in flight when the exec comes are not lost: each interception
/// thread finishes the call in hand and parks first, and what arrives
/// during the exec is answered by the new image. Two workers bind the held
/// address in a loop through six upgrades; each goes on binding after every
/// one (a call received but not answered by the old image would hang it).
#[test]
fn binds_in_flight_at_an_upgrade_are_all_answered() {
    if !(require_tool("python3") && require_tool("ss")) {
        return;
    }
    let b = second_build();
    let dir = TempDir::new("upgrade-binds");
    let script = dir.join("app.py");
    std::fs::write(&script, SELF_BINDING).unwrap();
    let bin = dir.join("relaunch");
    install(Path::new(relaunch_bin()), &bin);
    let ctl = dir.join("ctl.sock");
    let port = free_port();
    let r = Relaunch::start_with(Command::new(&bin).args([
        "-l",
        &format!("127.0.0.1:{port}"),
        "--workers",
        "2",
        "--control",
        ctl.to_str().unwrap(),
        "--",
        "python3",
        script.to_str().unwrap(),
        &port.to_string(),
        "hammer",
    ]));
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_serving(addr);
    r.log.wait("serving: generation 1", T);
    let pids: Vec<i64> = children(&status(&ctl)).iter().map(|c| c.0).collect();
    assert_eq!(pids.len(), 2);
    let count = |pid: i64| -> u64 {
        let said = std::fs::read_to_string(dir.join(&format!("binds-{pid}"))).unwrap_or_default();
        assert!(
            !said.starts_with("error"),
            "pid {pid}: {said}\n{}",
            r.log.text()
        );
        said.parse().unwrap_or(0)
    };
    let load = Load::start(addr, 2);
    for n in 0..6 {
        let seen: Vec<u64> = pids.iter().map(|&p| count(p)).collect();
        install(
            if n % 2 == 0 {
                b
            } else {
                Path::new(relaunch_bin())
            },
            &bin,
        );
        let (code, out) = upgrade(&ctl);
        assert_eq!(code, 0, "upgrade {n}: {out}\n{}", r.log.text());
        for (&pid, &before) in pids.iter().zip(&seen) {
            wait_for(
                &format!("pid {pid} binding on after upgrade {n}"),
                T,
                || (count(pid) >= before + 50).then_some(()),
            );
        }
    }
    assert_eq!(
        children(&status(&ctl))
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        pids
    );
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}\n{}", rep.errors, r.log.text());
    assert!(
        !r.log.text().contains("did not stop within"),
        "{}",
        r.log.text()
    );
}

/// A Unix socket file the app deleted before binding, which relaunch bound
/// anew, is handed over as relaunch's: it serves on, and it is removed when
/// relaunch stops (by the image that did not make it).
#[test]
fn a_remade_unix_socket_file_is_carried() {
    if !require_tool("python3") {
        return;
    }
    let b = second_build();
    let dir = TempDir::new("upgrade-unix");
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        r#"
import asyncio, os, signal, sys

async def handle(reader, writer):
    while (await reader.readline()).strip():
        pass
    body = f"{os.getpid()}\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()

async def main():
    # asyncio removes a socket file found at the path before it binds.
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()

asyncio.run(main())
"#,
    )
    .unwrap();
    let bin = dir.join("relaunch");
    install(Path::new(relaunch_bin()), &bin);
    let ctl = dir.join("ctl.sock");
    let path = dir.join("app.sock");
    let mut r = Relaunch::start_with(Command::new(&bin).args([
        "-l",
        &format!("unix:{}", path.display()),
        "--control",
        ctl.to_str().unwrap(),
        "--",
        "python3",
        script.to_str().unwrap(),
        path.to_str().unwrap(),
    ]));
    let get = || crate::intercept::get_unix(&path);
    let first = wait_for("an answer on app.sock", T, || get().ok());
    r.log.wait("deleted relaunch's socket file", T);
    install(b, &bin);
    let (code, out) = upgrade(&ctl);
    assert_eq!(code, 0, "{out}\n{}", r.log.text());
    assert_eq!(get().unwrap(), first);
    // The next generation (asyncio deletes the file again) gets a remade
    // one too, from the new image.
    let (code, out) = crate::reload::reload_cli(&ctl);
    assert_eq!(code, 0, "{out}\n{}", r.log.text());
    let second = wait_for("the new generation on app.sock", T, || {
        get().ok().filter(|b| *b != first)
    });
    // Upgraded again, the file last made is still relaunch's to remove.
    install(Path::new(relaunch_bin()), &bin);
    let (code, out) = upgrade(&ctl);
    assert_eq!(code, 0, "{out}\n{}", r.log.text());
    assert_eq!(get().unwrap(), second);
    r.signal(libc::SIGTERM);
    assert!(r.wait_exit(T).success(), "{}", r.log.text());
    assert!(!path.exists(), "{} left behind", path.display());
}

/// GET /metrics; the whole answer.
fn scrape(port: u16) -> String {
    try_scrape(port).unwrap()
}

fn try_scrape(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(T))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

/// `--metrics` and `--log-format json` are options of the relaunch that
/// started: the new image keeps them, and serves the metrics port again.
#[test]
fn metrics_and_json_logs_carry_over_an_upgrade() {
    let b = second_build();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let s = setup(
        "upgrade-metrics",
        &pid_server(""),
        &["--metrics", &metrics, "--log-format", "json"],
    );
    let addr = s.r.listen_addr(3);
    wait_serving(addr);
    s.r.log.wait("serving: generation 1", T);
    for _ in 0..3 {
        assert!(scrape(port).starts_with("HTTP/1.1 200"));
    }
    install(b, &s.bin);
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    let line = s.r.log.wait("upgraded from", T);
    let json: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("not a JSON line after the upgrade ({e}): {line}"));
    assert_eq!(json["pid"], s.r.pid(), "{line}");
    let text = scrape(port);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("relaunch_build_info"), "{text}");
}

/// The inode of the TCP listener on 127.0.0.1:`port`, from /proc/net/tcp
/// (looking does not connect).
fn listener_inode(port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].parse().unwrap())
        })
}

/// The metrics socket goes over with the others: the new image serves the
/// very socket the old one bound, so nothing can take the port meanwhile
/// (a failed rebind used to end relaunch, children and all) and scrapes
/// made during the exec wait in its backlog instead of being refused.
#[test]
fn the_metrics_socket_is_handed_over_not_bound_again() {
    let b = second_build();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let s = setup(
        "upgrade-metrics-fd",
        &pid_server(""),
        &["--metrics", &metrics],
    );
    wait_serving(s.r.listen_addr(3));
    s.r.log.wait("serving: generation 1", T);
    let inode = listener_inode(port).expect("the metrics listener");
    install(b, &s.bin);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Refused is the port unserved; a scrape in flight at
                    // the exec may still go unanswered, and 8 at once may
                    // hear 503 (busy), as without an upgrade.
                    match try_scrape(port) {
                        Ok(t) if t.starts_with("HTTP/1.1 200") => ok += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            failed.push(e.to_string())
                        }
                        _ => {}
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for n in 1..=3 {
        let (code, out) = upgrade(&s.ctl);
        assert_eq!(code, 0, "{out}");
        s.r.log.wait_n("upgraded from", n, T);
        assert_eq!(
            listener_inode(port),
            Some(inode),
            "the metrics port was bound again: {}",
            s.r.log.text()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in scrapers {
        let (ok, failed) = t.join().unwrap();
        assert!(ok > 0);
        assert!(failed.is_empty(), "{failed:?}");
    }
    let text = scrape(port);
    assert!(text.contains("relaunch_build_info"), "{text}");
    assert!(pid_alive(s.r.pid()));
}

/// `--metrics HOST:0`: the port the kernel picked at start is the one served
/// after each upgrade (the new image serves the socket bound, not port 0).
#[test]
fn metrics_on_port_zero_keep_their_port_across_upgrades() {
    let s = setup(
        "upgrade-metrics-0",
        &pid_server(""),
        &["--metrics", "127.0.0.1:0"],
    );
    let bound = |n: usize| {
        let line = s.r.log.wait_n("metrics on http://", n, T);
        let at = line.find("http://").unwrap() + "http://".len();
        let addr: std::net::SocketAddr = line[at..]
            .trim()
            .trim_end_matches("/metrics")
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        addr.port()
    };
    let port = bound(1);
    wait_serving(s.r.listen_addr(3));
    assert!(scrape(port).starts_with("HTTP/1.1 200"));
    for n in 1..=2 {
        let (code, out) = upgrade(&s.ctl);
        assert_eq!(code, 0, "{out}");
        s.r.log.wait_n("upgraded from", n, T);
        assert_eq!(bound(n + 1), port, "{}", s.r.log.text());
        let text = scrape(port);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

/// `,nonblock` is carried by an upgrade: after it, a new generation still
/// gets that listener non-blocking, though the one before cleared the flag.
#[test]
fn nonblock_listeners_stay_nonblock_after_an_upgrade() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("upgrade-nonblock");
    let (gen1, gen2) = (dir.join("gen1.json"), dir.join("gen2.json"));
    let probe = probe();
    let clears = format!(
        "PROBE_OUT={} exec python3 -c 'import fcntl, os, sys\n\
         fcntl.fcntl(4, fcntl.F_SETFL, fcntl.fcntl(4, fcntl.F_GETFL) & ~os.O_NONBLOCK)\n\
         os.execv(sys.argv[1], sys.argv[1:])' {} --notify\n",
        gen1.display(),
        probe.display()
    );
    let s = setup(
        "upgrade-nonblock",
        &clears,
        &["-l", "b=127.0.0.1:0,nonblock"],
    );
    let rep = read_report(&gen1);
    assert_eq!(fd(&rep, 4)["nonblocking"], false, "cleared: {rep:#}");
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    s.r.log.wait("upgraded from", T);
    s.app.deploy(&format!(
        "PROBE_OUT={} exec {} --notify\n",
        gen2.display(),
        probe.display()
    ));
    s.r.signal(libc::SIGHUP);
    s.r.log.wait("reload done", T);
    let rep = read_report(&gen2);
    assert_eq!(fd(&rep, 3)["nonblocking"], false, "{rep:#}");
    assert_eq!(fd(&rep, 4)["nonblocking"], true, "{rep:#}");
}

/// The keeper is carried by an upgrade: after it, kill -9 of relaunch
/// still leaves nothing it started behind.
#[test]
fn after_an_upgrade_a_killed_relaunch_still_leaves_nothing_behind() {
    let b = second_build();
    // The server behind a shell that does not exec it: PR_SET_PDEATHSIG
    // reaches only the shell, the keeper must end the server.
    let server = example("pid_server");
    let mut s = setup(
        "upgrade-keeper",
        &format!("{}\n", server.display()),
        &["--no-listen-pid"],
    );
    let addr = s.r.listen_addr(3);
    let served: i32 = wait_serving(addr).parse().unwrap();
    let keeper = keeper_of(s.r.pid()).expect("relaunch's keeper runs");
    install(b, &s.bin);
    let (code, out) = upgrade(&s.ctl);
    assert_eq!(code, 0, "{out}");
    // A generation started by the new image is known to the keeper too.
    let (code, out) = crate::reload::reload_cli(&s.ctl);
    assert_eq!(code, 0, "{out}");
    let server_pid: i32 = wait_new_pid(addr, &served.to_string()).parse().unwrap();
    assert_eq!(
        keeper_of(s.r.pid()),
        Some(keeper),
        "the same keeper, still relaunch's"
    );
    s.r.signal(libc::SIGKILL);
    let _ = s.r.child.wait();
    wait_for(
        "the server and the keeper to be gone",
        Duration::from_secs(5),
        || (!pid_alive(server_pid) && !pid_alive(keeper)).then_some(()),
    );
    wait_for("the port to bind again", Duration::from_secs(5), || {
        std::net::TcpListener::bind(addr).ok()
    });
}
