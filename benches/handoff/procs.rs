//! Processes the bench starts: each in its own process group (so a peer's
//! workers go with it), stdout and stderr copied line by line into a
//! waitable `Lines` and into `target/bench/logs/NAME.log`. Every wait has a
//! deadline; a `Proc` dropped without `stop` is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Output lines of a process, waitable.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn guard(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        self.guard().push(line);
        self.0.1.notify_all();
    }

    pub fn count(&self, needle: &str) -> usize {
        self.guard().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn last_with(&self, needle: &str) -> Option<String> {
        self.guard()
            .iter()
            .rev()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub fn tail(&self, n: usize) -> String {
        let g = self.guard();
        g[g.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until `f` finds something in the lines, or the deadline passes.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + timeout;
        let mut g = self.guard();
        loop {
            if let Some(v) = f(&g) {
                return Some(v);
            }
            let left = end.checked_duration_since(Instant::now())?;
            g = self
                .0
                .1
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: Lines,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Result<Proc, String> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        // Own group: Ctrl-C does not reach it, so it must hear of our death.
        // SAFETY: prctl is async-signal-safe; nothing else runs before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // cargo sets LD_LIBRARY_PATH for the bench (its target and toolchain
        // folders); a deployed server never has it. Left in, the loader
        // searches those folders for libc and libgcc_s at every server start
        // (some 50 failed opens), which the SIGHUP-to-exec figure would count.
        let mut child = cmd
            .env_remove("LD_LIBRARY_PATH")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{name}: cannot start {program}: {e}"))?;
        let lines = Lines::default();
        let log = open_log(&log_dir.join(format!("{name}.log")));
        if let Some(out) = child.stdout.take() {
            copy_lines(out, lines.clone(), log.clone());
        }
        if let Some(err) = child.stderr.take() {
            copy_lines(err, lines.clone(), log);
        }
        Ok(Proc {
            name: name.into(),
            child,
            lines,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: Signal) -> Result<(), String> {
        nix::sys::signal::kill(Pid::from_raw(self.pid()), sig).map_err(|e| {
            format!(
                "{}: cannot send {sig} to pid {}: {e}",
                self.name,
                self.pid()
            )
        })
    }

    /// SIGTERM to the group, then SIGKILL if it is still there after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let group = Pid::from_raw(self.pid());
        let _ = killpg(group, Signal::SIGTERM);
        if !self.wait_exit(grace) {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Stragglers left in the group (a peer's orphaned workers).
        let _ = killpg(group, Signal::SIGKILL);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.exited() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

type Log = Option<Arc<Mutex<std::fs::File>>>;

fn open_log(path: &PathBuf) -> Log {
    std::fs::File::create(path)
        .ok()
        .map(|f| Arc::new(Mutex::new(f)))
}

/// A reader thread per pipe: the bench process may use threads (relaunch may not).
fn copy_lines(pipe: impl Read + Send + 'static, lines: Lines, log: Log) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(f) = &log {
                let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(f, "{line}");
            }
            lines.push(line);
        }
    });
}

/// A free loopback port for peers that need one up front. Another process
/// could take it before the peer binds; the scenario then fails loudly.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// A program on PATH. cargo-installed tools (systemfd) need ~/.cargo/bin on
/// PATH, as after rustup's set-up.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
