//! The things under test: how each scenario starts the server, restarts it,
//! and knows the restart is over. Every one runs the same server
//! (`handoff --server`) with the same delay; only the launcher differs.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::load::{self, Seen};
use crate::procs::{self, Proc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Steady,
    NaiveRebind,
    Reload,
    ReloadAuto,
    Crash,
    /// The self-binding server, unmodified, under relaunch: bind
    /// interception hands it relaunch's socket.
    Intercept,
    ServerStarter,
    SocketActivate,
    Systemfd,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Steady,
        Kind::NaiveRebind,
        Kind::Reload,
        Kind::ReloadAuto,
        Kind::Crash,
        Kind::Intercept,
        Kind::ServerStarter,
        Kind::SocketActivate,
        Kind::Systemfd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::NaiveRebind => "naive-rebind",
            Kind::Reload => "relaunch-reload",
            Kind::ReloadAuto => "relaunch-reload-auto",
            Kind::Crash => "relaunch-crash",
            Kind::Intercept => "relaunch-intercept",
            Kind::ServerStarter => "server-starter",
            Kind::SocketActivate => "systemd-socket-activate",
            Kind::Systemfd => "systemfd",
        }
    }

    /// The peer program a scenario needs; it is skipped when that is missing.
    pub fn needs(self) -> Option<&'static str> {
        match self {
            Kind::ServerStarter => Some("start_server"),
            Kind::SocketActivate => Some("systemd-socket-activate"),
            Kind::Systemfd => Some("systemfd"),
            _ => None,
        }
    }

    pub fn restarts(self) -> bool {
        self != Kind::Steady
    }

    fn is_relaunch(self) -> bool {
        matches!(
            self,
            Kind::Steady | Kind::Reload | Kind::ReloadAuto | Kind::Crash | Kind::Intercept
        )
    }
}

/// Paths every target needs.
pub struct Ctx {
    /// This bench binary: the server and the loop.
    pub bench: PathBuf,
    pub relaunch: PathBuf,
    pub log_dir: PathBuf,
    /// Control sockets and exec logs (short paths: sun_path is 108 bytes).
    pub run_dir: PathBuf,
}

pub struct Target {
    pub kind: Kind,
    pub proc: Proc,
    pub port: u16,
    /// Where the servers record their exec time (relaunch targets only).
    pub exec_log: PathBuf,
    /// CLOCK_REALTIME of each SIGHUP sent, ns.
    pub hups: Vec<u128>,
    /// The pid that takes SIGHUP (relaunch, start_server, the loop).
    hup_pid: i32,
    delay: f64,
    /// naive-rebind: the server now serving, and the stopped ones draining.
    naive: Vec<Proc>,
    tag: String,
    bench: PathBuf,
    log_dir: PathBuf,
}

fn server_args(ctx: &Ctx, delay: f64, notify: bool) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        ctx.bench.clone().into(),
        "--server".into(),
        "--delay".into(),
        delay.to_string().into(),
    ];
    if !notify {
        v.push("--no-notify".into());
    }
    v
}

impl Target {
    /// Starts the target and returns once it answers a request.
    pub fn start(kind: Kind, delay: f64, ctx: &Ctx, tag: &str) -> Result<Target, String> {
        let exec_log = ctx.run_dir.join(format!("{tag}.exec"));
        let _ = std::fs::remove_file(&exec_log);
        let mut port = 0;
        let mut cmd = match kind {
            Kind::Steady | Kind::Reload | Kind::ReloadAuto | Kind::Crash => {
                let auto = kind == Kind::ReloadAuto;
                let mut c = Command::new(&ctx.relaunch);
                c.args([
                    "-l",
                    "127.0.0.1:0",
                    "--ready",
                    if auto { "auto" } else { "notify" },
                ])
                .arg("--control")
                .arg(ctx.run_dir.join(format!("{tag}.sock")))
                .arg("--")
                .args(server_args(ctx, delay, !auto))
                .env("HANDOFF_EXEC_LOG", &exec_log);
                c
            }
            Kind::NaiveRebind => {
                port = procs::free_port()?;
                naive_cmd(&ctx.bench, delay, port)
            }
            Kind::Intercept => {
                // The front page's command with the naive server as is: it
                // binds 127.0.0.1:PORT itself and sends no READY=1.
                let p = procs::free_port()?;
                let mut c = Command::new(&ctx.relaunch);
                c.args(["--port", &p.to_string(), "--ready", "auto"])
                    .arg("--control")
                    .arg(ctx.run_dir.join(format!("{tag}.sock")))
                    .arg("--")
                    .arg(&ctx.bench)
                    .args(naive_args(delay, p));
                c
            }
            Kind::ServerStarter => {
                port = procs::free_port()?;
                let mut c = Command::new("start_server");
                c.arg(format!("--port=127.0.0.1:{port}"))
                    .arg("--interval=1")
                    .arg("--")
                    .args(server_args(ctx, delay, false));
                c
            }
            Kind::SocketActivate => {
                port = procs::free_port()?;
                let mut c = Command::new(&ctx.bench);
                c.args(["--loop", "--", "systemd-socket-activate", "-l"])
                    .arg(format!("127.0.0.1:{port}"))
                    .args(server_args(ctx, delay, false));
                c
            }
            Kind::Systemfd => {
                port = procs::free_port()?;
                // --no-pid: the loop, not systemfd's exec target, runs the server.
                let mut c = Command::new("systemfd");
                c.args(["--quiet", "--no-pid", "-s"])
                    .arg(format!("tcp::127.0.0.1:{port}"))
                    .arg("--")
                    .arg(&ctx.bench)
                    .args(["--loop", "--"])
                    .args(server_args(ctx, delay, false));
                c
            }
        };
        let proc = Proc::spawn(tag, &mut cmd, &ctx.log_dir)?;
        let mut t = Target {
            kind,
            hup_pid: proc.pid(),
            proc,
            port,
            exec_log,
            hups: Vec::new(),
            delay,
            naive: Vec::new(),
            tag: tag.into(),
            bench: ctx.bench.clone(),
            log_dir: ctx.log_dir.clone(),
        };
        let startup = Duration::from_secs_f64(delay) + Duration::from_secs(20);
        if kind.is_relaunch() {
            t.port = t
                .proc
                .lines
                .wait_for(startup, |ls| ls.iter().find_map(|l| listening_port(l)))
                .ok_or_else(|| t.failed("relaunch did not log its port"))?;
        }
        if matches!(kind, Kind::SocketActivate | Kind::Systemfd) {
            t.hup_pid = t
                .proc
                .lines
                .wait_for(startup, |ls| ls.iter().find_map(|l| loop_pid(l)))
                .ok_or_else(|| t.failed("the restart loop did not start"))?;
        }
        t.wait_serving(startup)?;
        Ok(t)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Polls with requests until one is answered (the load is not running yet).
    fn wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.port != 0 && load::request(self.addr(), Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if self.proc.exited() {
                return Err(self.failed("exited before it served"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.failed(&format!("did not answer within {timeout:?}")))
    }

    /// Restarts the server the way this scenario does, and returns once the
    /// restart is over: relaunch says the reload is done, or a new pid answers.
    pub fn restart(&mut self, seen: &Seen) -> Result<(), String> {
        let deadline = Duration::from_secs_f64(self.delay) + Duration::from_secs(20);
        let before = seen.snapshot();
        match self.kind {
            Kind::Steady => return Ok(()),
            Kind::Reload | Kind::ReloadAuto => return self.reload(deadline),
            Kind::Crash => self.kill_newest_child()?,
            Kind::Intercept => {
                // A reload, then a crash of the generation it started.
                self.reload(deadline)?;
                let before = seen.snapshot();
                self.kill_newest_child()?;
                return seen.wait_new(&before, deadline).map(|_| ()).ok_or_else(|| {
                    self.failed(&format!(
                        "no new pid answered within {deadline:?} of the crash"
                    ))
                });
            }
            Kind::NaiveRebind => {
                // Stop, then start at once: the new one retries its bind until the old lets go.
                self.proc.signal(Signal::SIGTERM)?;
                let n = self.naive.len();
                let mut cmd = naive_cmd(&self.bench, self.delay, self.port);
                let next = Proc::spawn(&format!("{}-{n}", self.tag), &mut cmd, &self.log_dir)?;
                self.naive.push(std::mem::replace(&mut self.proc, next));
            }
            Kind::ServerStarter | Kind::SocketActivate | Kind::Systemfd => {
                self.hup()?;
            }
        }
        seen.wait_new(&before, deadline).map(|_| ()).ok_or_else(|| {
            self.failed(&format!(
                "no new pid answered within {deadline:?} of the restart"
            ))
        })
    }

    /// SIGKILL to the child relaunch started last.
    fn kill_newest_child(&self) -> Result<(), String> {
        let line = self
            .proc
            .lines
            .last_with(" started pid=")
            .ok_or_else(|| self.failed("no child started"))?;
        let pid = started_pid(&line)
            .ok_or_else(|| self.failed(&format!("cannot read a pid in {line:?}")))?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| format!("cannot SIGKILL child {pid}: {e}"))
    }

    fn reload(&mut self, deadline: Duration) -> Result<(), String> {
        let done = self.proc.lines.count("reload done: generation");
        let failed = self.proc.lines.count("reload failed");
        self.hup()?;
        let outcome = self.proc.lines.wait_for(deadline, |ls| {
            let count = |n: &str| ls.iter().filter(|l| l.contains(n)).count();
            if count("reload failed") > failed {
                Some(Err(()))
            } else if count("reload done: generation") > done {
                Some(Ok(()))
            } else {
                None
            }
        });
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(())) => Err(self.failed("relaunch reported a failed reload")),
            None => Err(self.failed(&format!("reload not done within {deadline:?}"))),
        }
    }

    fn hup(&mut self) -> Result<(), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.hups.push(now);
        kill(Pid::from_raw(self.hup_pid), Signal::SIGHUP)
            .map_err(|e| format!("cannot send SIGHUP to {}: {e}", self.hup_pid))
    }

    /// SIGHUP to the new child's exec, ms, one per reload.
    pub fn hup_to_exec_ms(&self) -> Vec<f64> {
        let text = std::fs::read_to_string(&self.exec_log).unwrap_or_default();
        hup_to_exec(&self.hups, &exec_times(&text))
    }

    pub fn stop(mut self) {
        let grace = Duration::from_secs(15);
        for p in &mut self.naive {
            p.stop(grace);
        }
        self.proc.stop(grace);
    }

    fn failed(&self, what: &str) -> String {
        format!(
            "{} ({}): {what}; last lines of its log:\n{}",
            self.kind.name(),
            self.tag,
            self.proc.lines.tail(15)
        )
    }
}

fn naive_cmd(bench: &Path, delay: f64, port: u16) -> Command {
    let mut c = Command::new(bench);
    c.args(naive_args(delay, port));
    c
}

/// The server binding 127.0.0.1:PORT itself, no READY=1.
fn naive_args(delay: f64, port: u16) -> [String; 6] {
    [
        "--server".into(),
        "--no-notify".into(),
        "--delay".into(),
        delay.to_string(),
        "--naive".into(),
        port.to_string(),
    ]
}

/// `... listening on 127.0.0.1:PORT as fd 3 (http)` -> PORT.
pub fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split_once("listening on ")?.1;
    let addr = rest.split_once(" as fd")?.0;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `... started pid=N generation=G worker=W` -> N.
pub fn started_pid(line: &str) -> Option<i32> {
    let rest = line.split_once("started pid=")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn loop_pid(line: &str) -> Option<i32> {
    line.strip_prefix("handoff-loop: pid ")?.trim().parse().ok()
}

/// Lines `<pid> <ns>` -> ns, in file order.
pub fn exec_times(text: &str) -> Vec<u128> {
    text.lines()
        .filter_map(|l| l.split_once(' ')?.1.trim().parse().ok())
        .collect()
}

/// For each SIGHUP, the first exec after it (and before the next SIGHUP), ms.
pub fn hup_to_exec(hups: &[u128], execs: &[u128]) -> Vec<f64> {
    hups.iter()
        .enumerate()
        .filter_map(|(i, &h)| {
            let next = hups.get(i + 1).copied().unwrap_or(u128::MAX);
            let e = execs
                .iter()
                .copied()
                .filter(|&e| e >= h && e < next)
                .min()?;
            Some((e - h) as f64 / 1e6)
        })
        .collect()
}

pub fn self_check() -> Result<(), String> {
    let l = "2026-11-23T10:50:01.795321Z  INFO listening on 127.0.0.1:45215 as fd 3 (http)";
    if listening_port(l) != Some(45215) {
        return Err(format!("listening_port({l:?})"));
    }
    if listening_port("INFO control socket listening path=/x").is_some() {
        return Err("listening_port matched the control socket line".into());
    }
    let s = "2026-11-23T10:50:01.797399Z  INFO started pid=32165 generation=1 worker=0";
    if started_pid(s) != Some(32165) {
        return Err(format!("started_pid({s:?})"));
    }
    if loop_pid("handoff-loop: pid 77") != Some(77) {
        return Err("loop_pid".into());
    }
    let execs = exec_times("10 1000000\n11 5000000\nbad\n12 9000000\n");
    if execs != [1_000_000, 5_000_000, 9_000_000] {
        return Err(format!("exec_times: {execs:?}"));
    }
    let got = hup_to_exec(&[4_000_000, 8_000_000, 9_500_000], &execs);
    if got != [1.0, 1.0] {
        return Err(format!("hup_to_exec: {got:?}"));
    }
    Ok(())
}
