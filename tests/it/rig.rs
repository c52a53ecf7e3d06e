//! A booted real systemd (tests/systemd-rig.sh) for the tests that need one:
//! systemd.rs (the units) and package.rs (the Debian package). Runs as root
//! (CI is root); elsewhere `Rig::up` says why it is skipped. Under CI=true a
//! missing prerequisite fails the test.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::util::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd-rig.sh")
}

/// A booted rig. Dropping it kills everything in it and removes its cgroup.
pub struct Rig {
    /// Host pid of the rig's systemd.
    pub pid: i32,
    boot: Child,
    dir: TempDir,
}

impl Rig {
    /// None when this machine cannot run a rig (outside CI).
    pub fn up() -> Option<Rig> {
        let check = Command::new("bash").arg(script()).arg("check").output();
        let check = check.expect("run tests/systemd-rig.sh check");
        if !check.status.success() {
            let missing = String::from_utf8_lossy(&check.stdout);
            let missing = missing.trim().replace('\n', "; ");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("the real-systemd test needs: {missing}");
            }
            eprintln!("skipping the real-systemd test: it needs {missing}");
            return None;
        }
        let dir = TempDir::new("rig");
        let log = File::create(dir.join("boot.log")).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("boot")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // If this test dies without tearing down, the rig dies with it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let boot = cmd.spawn().expect("boot the rig");
        let mut rig = Rig { pid: 0, boot, dir };
        rig.pid = wait_for("the rig's systemd to run", Duration::from_secs(30), || {
            if let Some(status) = rig.boot.try_wait().unwrap() {
                panic!(
                    "the rig exited ({status}) while booting:\n{}",
                    rig.boot_log()
                );
            }
            let pid: i32 = std::fs::read_to_string(rig.dir.join("pid"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let state = rig.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout);
            matches!(state.trim(), "running" | "degraded").then_some(pid)
        });
        Some(rig)
    }

    pub fn boot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default()
    }

    /// Runs a command inside (the script finds PID 1 from the folder).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .arg("run")
            .arg(&self.dir.0)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run a command in the rig")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `bytes` at `path` inside the rig, atomically, as a deploy would.
    pub fn install(&self, path: &str, bytes: &[u8], mode: u32) {
        let dst = PathBuf::from(format!("/proc/{}/root{path}", self.pid));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let tmp = dst.with_extension("new");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }

    pub fn main_pid_of(&self, unit: &str) -> i32 {
        let out = self.ok(&["systemctl", "show", "-p", "MainPID", "--value", unit]);
        out.trim().parse().unwrap()
    }

    pub fn alive(&self, pid: &str) -> bool {
        self.run(&["kill", "-0", pid]).status.success()
    }

    /// Runs `f` on a thread in the rig's network namespace (threads it starts
    /// are in it too), so clients reach the rig's 127.0.0.1.
    pub fn in_net<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on an fd we own; it moves only this thread.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let journal = self.run(&[
                "journalctl",
                "--no-pager",
                "-n",
                "300",
                "-o",
                "short-monotonic",
            ]);
            eprintln!(
                "---- rig boot log ----\n{}---- rig journal ----\n{}----------------------",
                self.boot_log(),
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        let down = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir.0)
            .output();
        let _ = self.boot.kill();
        let _ = self.boot.wait();
        match down {
            Ok(o) if o.status.success() => {}
            Ok(o) if !std::thread::panicking() => {
                panic!(
                    "tearing the rig down: {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            }
            Ok(o) => eprintln!(
                "tearing the rig down: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("tearing the rig down: {e}"),
        }
    }
}
