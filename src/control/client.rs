//! The client side: `relaunch status|reload|stop --control PATH`.

use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::timeout;

use super::protocol::{
    ChildInfo, ListenerInfo, MAX_RESPONSE, ReloadInfo, Request, Response, Status,
};
use crate::cli::ClientArgs;
use crate::duration;
use crate::error::{Error, Result};
use crate::logging;
use crate::table::table;

/// How long `reload` waits by default: the default `--ready-timeout` (60 s)
/// plus `--stop-timeout` (10 s), with room; the shipped units give systemd's
/// `TimeoutStartSec=` the same 90 s.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `status` and `stop` wait by default: both are answered at once.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `upgrade` waits by default: the new binary's check (5 s at
/// most), a reload it may have to wait for is not among them, and the exec.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a client command and prints the outcome (stdout on success, stderr
/// on a failed reload). Returns the exit code: 0 ok, 1 reload failed.
pub async fn client(args: &ClientArgs, request: Request, json: bool) -> Result<i32> {
    let path = args.control.as_deref().ok_or_else(|| {
        Error::usage("no control socket given").hint(
            "pass --control PATH or set RELAUNCH_CONTROL to the --control path of the running relaunch",
        )
    })?;
    let limit = time_limit(args.timeout.as_deref(), &request)?;
    let response = exchange(path, &request, limit).await?;
    if let Response::Upgraded { pid, to, .. } = &response {
        // The new image answered; it must also serve new connections.
        let status = match exchange(path, &Request::Status, limit).await? {
            Response::Status(s) => *s,
            other => {
                return Err(Error::runtime(format!(
                    "after the upgrade, relaunch answered a status request with {other:?}"
                ))
                .hint("check relaunch's log"));
            }
        };
        if status.pid != *pid || status.image() != *to {
            return Err(Error::runtime(format!(
                "after the upgrade to {to}, the relaunch on {} is pid {} running {}",
                path.display(),
                status.pid,
                status.image()
            ))
            .hint("another relaunch took over the control socket? check relaunch's log"));
        }
    }
    let (mut code, text) = render(&response, json)?;
    // What `rollback` asked for; a failure for `reload --canary`.
    if matches!(
        (&request, &response),
        (Request::Rollback, Response::RolledBack { .. })
    ) {
        code = 0;
    }
    if code != 0 {
        // A failed reload: under journald (ExecReload=) at priority err.
        logging::print(3, &text);
        return Ok(code);
    }
    match writeln!(io::stdout().lock(), "{text}") {
        // `relaunch status | head -1` is fine.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::runtime(format!("cannot print the answer: {e}")))
        }
        _ => Ok(code),
    }
}

/// `status --check`: 0 and silence while a ready generation serves; else 1
/// and one line on stderr (starting, reloading before the first ready,
/// backing off with nothing serving, stopping, unreachable), so a health
/// probe's log says why.
pub async fn check(args: &ClientArgs) -> Result<i32> {
    let path = args.control.as_deref().ok_or_else(|| {
        Error::usage("no control socket given").hint(
            "pass --control PATH or set RELAUNCH_CONTROL to the --control path of the running relaunch",
        )
    })?;
    let limit = time_limit(args.timeout.as_deref(), &Request::Status)?;
    let line = match exchange(path, &Request::Status, limit).await {
        Ok(Response::Status(s)) => match check_line(&s) {
            None => return Ok(0),
            Some(line) => line,
        },
        Ok(Response::Error { message }) => format!("not ready: relaunch refused: {message}"),
        Ok(_) => "not ready: relaunch answered something other than a status".to_string(),
        Err(e) => format!("not ready: {}", e.msg),
    };
    logging::print(3, &line);
    Ok(1)
}

/// Why a status does not pass `--check`; None when it does.
fn check_line(s: &Status) -> Option<String> {
    if s.ready {
        return None;
    }
    let head = format!("not ready: relaunch (pid {}) is {}", s.pid, s.state);
    Some(match s.state.as_str() {
        "stopping" => head,
        "starting" => format!("{head} generation {}", s.generation),
        _ => format!("{head}; no child of generation {} is ready", s.generation),
    })
}

/// `relaunch reload --canary PERCENT [--canary-for DURATION]`, checked
/// here: a usage error exits 2 before relaunch is asked.
pub fn canary_request(share: &str, canary_for: Option<&str>) -> Result<Request> {
    let text = share.trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    let range = crate::control::CANARY_PERCENT;
    let percent = match number.parse::<f64>() {
        Ok(p) if range.contains(&p) => p,
        Ok(_) => {
            return Err(Error::usage(format!(
                "--canary {share:?}: the share must be from {}% to {}%",
                range.start(),
                range.end()
            ))
            .hint("100% is a plain reload (relaunch reload); give e.g. --canary 10%"));
        }
        Err(_) => {
            return Err(
                Error::usage(format!("--canary {share:?}: not a percentage"))
                    .hint("give the share of new connections, e.g. --canary 10% or --canary 2.5"),
            );
        }
    };
    let promote_after_ms = match canary_for.map(duration::parse).transpose() {
        Ok(d) => d.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        Err(e) => {
            return Err(Error::usage(format!("--canary-for: {e}"))
                .hint("give a duration such as 60s, 5m or 1m30s"));
        }
    };
    Ok(Request::Canary {
        percent,
        promote_after_ms,
    })
}

/// `--timeout`, or the default for the request.
fn time_limit(timeout: Option<&str>, request: &Request) -> Result<Duration> {
    let Some(text) = timeout else {
        return Ok(match request {
            Request::Reload | Request::Promote | Request::Rollback => RELOAD_TIMEOUT,
            // The canary's start, then its time before promotion.
            Request::Canary {
                promote_after_ms, ..
            } => RELOAD_TIMEOUT + Duration::from_millis(promote_after_ms.unwrap_or(0)),
            Request::Upgrade { .. } => UPGRADE_TIMEOUT,
            Request::Status | Request::Stop => ANSWER_TIMEOUT,
        });
    };
    match duration::parse(text) {
        Ok(d) if d.is_zero() => Err(Error::usage("--timeout 0s would give up before asking")
            .hint("give the time relaunch may take to answer, e.g. --timeout 2m")),
        Ok(d) => Ok(d),
        Err(e) => Err(Error::usage(format!("--timeout {text:?}: {e}"))
            .hint("give a duration such as 30s, 2m or 1m30s")),
    }
}

/// Sends one request to the relaunch at `path` and reads its answer, all
/// within `limit`.
pub(super) async fn exchange(path: &Path, request: &Request, limit: Duration) -> Result<Response> {
    let ask = async {
        // relaunch upgrading itself closes, at the exec, the connections it
        // had taken but not yet answered (the next image serves those still
        // in the backlog). One it had not read is sent again, whatever the
        // request; one read but unanswered may have been acted on, so only
        // a status is asked again.
        for _ in 0..3 {
            match talk(path, request).await? {
                Talk::Answer(r) => return Ok(*r),
                Talk::Unread => continue,
                Talk::Unanswered if *request == Request::Status => continue,
                Talk::Unanswered => break,
            }
        }
        Err(Error::runtime(format!(
            "relaunch on {} closed the connection without answering",
            path.display()
        ))
        .hint("check relaunch's log; it may have stopped, or been upgrading itself"))
    };
    match timeout(limit, ask).await {
        Ok(answer) => answer,
        Err(_) => {
            let p = path.display();
            let err = Error::runtime(format!(
                "relaunch on {p} did not answer within {}",
                duration::human(limit)
            ));
            Err(match request {
                Request::Reload
                | Request::Canary { .. }
                | Request::Promote
                | Request::Rollback => err.hint(format!(
                    "the reload may still be running: see `relaunch status --control {p}` and relaunch's log; \
                     if its --ready-timeout plus --stop-timeout is longer, pass a longer --timeout"
                )),
                Request::Upgrade { .. } => err.hint(format!(
                    "the upgrade may have failed or still run: see `relaunch status --control {p}` \
                     (its pid and build id) and relaunch's log"
                )),
                Request::Status | Request::Stop => err.hint(
                    "it may be overloaded or stuck: check its log, or pass a longer --timeout",
                ),
            })
        }
    }
}

/// How one exchange ended.
enum Talk {
    Answer(Box<Response>),
    /// Closed with the request unread (EPIPE on the write, or a reset
    /// before any answer): not acted on.
    Unread,
    /// Closed without a byte of answer, the request read.
    Unanswered,
}

async fn talk(path: &Path, request: &Request) -> Result<Talk> {
    let p = path.display();
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| connect_error(path, &e))?;
    let mut line = serde_json::to_vec(request)
        .map_err(|e| Error::runtime(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    match stream.write_all(&line).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Talk::Unread),
        Err(e) => {
            return Err(
                Error::runtime(format!("cannot send the request to {p}: {e}"))
                    .hint("check relaunch's log; it may be stopping"),
            );
        }
    }
    let mut answer = Vec::new();
    let read = BufReader::new((&mut stream).take(MAX_RESPONSE))
        .read_until(b'\n', &mut answer)
        .await;
    match read {
        // Closed with our request unread: a reset, not an end of file.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && answer.is_empty() => {
            return Ok(Talk::Unread);
        }
        Err(e) => {
            return Err(
                Error::runtime(format!("cannot read the answer from {p}: {e}"))
                    .hint("check relaunch's log; it may have stopped"),
            );
        }
        Ok(_) => {}
    }
    if answer.is_empty() {
        return Ok(Talk::Unanswered);
    }
    serde_json::from_slice(&answer)
        .map(Talk::Answer)
        .map_err(|e| {
            Error::runtime(format!("cannot understand the answer from {p}: {e}"))
                .hint("is the relaunch there the same version as this one?")
        })
}

fn connect_error(path: &Path, e: &io::Error) -> Error {
    let p = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => Error::runtime(format!(
            "no relaunch is listening on {p} (the file does not exist)"
        ))
        .hint(
            "check the --control path (or RELAUNCH_CONTROL) the running relaunch was started with",
        ),
        io::ErrorKind::ConnectionRefused => Error::runtime(format!(
            "nobody is listening on {p} (a stale socket: relaunch is not running)"
        ))
        .hint("start relaunch with this --control path, or remove the stale file"),
        io::ErrorKind::PermissionDenied => Error::runtime(format!(
            "permission denied on {p}: run as the same user as relaunch or root"
        )),
        _ => Error::runtime(format!("cannot connect to {p}: {e}")).hint(
            "check the --control path (or RELAUNCH_CONTROL) the running relaunch was started with",
        ),
    }
}

/// What to print for an answer, and the exit code; an Error answer is an error.
fn render(response: &Response, json: bool) -> Result<(i32, String)> {
    match response {
        Response::Status(status) if json => serde_json::to_string_pretty(status)
            .map(|text| (0, text))
            .map_err(|e| Error::runtime(format!("cannot encode the status as JSON: {e}"))),
        Response::Status(status) => Ok((0, render_status(status))),
        Response::Reloaded { generation, pids } => {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            let text = match pids.len() {
                0 => "nothing to reload: no child runs (waiting for a connection); \
                      the next connection starts the program as it is then"
                    .to_string(),
                1 => format!(
                    "reloaded: generation {generation} serving (pid {})",
                    pids[0]
                ),
                _ => format!(
                    "reloaded: generation {generation} serving (pids {})",
                    pids.join(", ")
                ),
            };
            Ok((0, text))
        }
        Response::ReloadFailed { reason, .. } => Ok((1, format!("reload failed: {reason}"))),
        Response::CanaryServes {
            generation,
            share,
            pids,
        } => {
            let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            Ok((
                0,
                format!(
                    "canary: generation {generation} serves {}% of new connections (pids {}); \
                     `relaunch promote` gives it every one, `relaunch rollback` takes its share \
                     back",
                    (share * 1e6).round() / 1e4,
                    pids.join(", ")
                ),
            ))
        }
        Response::RolledBack {
            serving, reason, ..
        } => Ok((
            1,
            format!("rolled back: {reason}; generation {serving} serves every new connection"),
        )),
        Response::Upgraded {
            pid,
            from,
            to,
            listeners,
            children,
        } => Ok((
            0,
            format!(
                "upgraded relaunch (pid {pid}) from {from} to {to}, kept {listeners} listeners and {children} children"
            ),
        )),
        Response::UpgradeFailed { reason } => Ok((
            1,
            format!("upgrade refused: {reason}; the running relaunch goes on unchanged"),
        )),
        Response::Stopping => Ok((0, "relaunch is stopping".to_string())),
        Response::Error { message } => {
            let err = Error::runtime(format!("relaunch refused the request: {message}"));
            Err(if message.starts_with("permission denied") {
                err.hint("run as the same user as relaunch or root")
            } else {
                err.hint("check relaunch's log for details")
            })
        }
    }
}

fn render_status(s: &Status) -> String {
    let mut out = render_header(s);
    out += &render_listeners(&s.listeners);
    out += &render_children(&s.children);
    if !s.escaped.is_empty() {
        let pids: Vec<String> = s.escaped.iter().map(|p| p.to_string()).collect();
        out += &format!(
            "escaped processes of ended children, being stopped: pids {}\n",
            pids.join(", ")
        );
    }
    out += &render_canary(s.canary.as_ref());
    out += &render_last_reload(s.last_reload.as_ref());
    out
}

/// "canary: generation 3 gets 10% of new connections (4 open), generation
/// 2 the other 90% (40 open); promoted in 42s".
fn render_canary(c: Option<&super::CanaryInfo>) -> String {
    let Some(c) = c else {
        return String::new();
    };
    let pct = |share: f64| (share * 1e6).round() / 1e4;
    let open = |n: Option<u32>| n.map_or_else(|| "open: unknown".into(), |n| format!("{n} open"));
    let next = match c.promote_in_secs {
        Some(secs) => format!(
            "promoted in {} unless it fails",
            duration::human(Duration::from_secs_f64(secs.max(0.0)))
        ),
        None => "relaunch promote or relaunch rollback decides".into(),
    };
    format!(
        "canary: generation {} gets {}% of new connections ({}), generation {} the other {}% \
         ({}); {next}\n",
        c.generation,
        pct(c.share),
        open(c.open),
        c.beside,
        pct(1.0 - c.share),
        open(c.beside_open)
    )
}

/// Who and in what state, then the optional one-liners (status text, watch, idle).
fn render_header(s: &Status) -> String {
    let mut out = if s.generation == 0 {
        format!("relaunch (pid {}): {}\n", s.pid, s.state)
    } else {
        format!(
            "relaunch (pid {}): {}, generation {}\n",
            s.pid, s.state, s.generation
        )
    };
    if let Some(text) = &s.status_text {
        out += &format!("status: {text}\n");
    }
    if let Some(text) = &s.watch {
        out += &format!("watch: {text}\n");
    }
    if let Some(secs) = s.idle_secs {
        out += &format!("idle since {} ago\n", age(secs));
    }
    if let Some(text) = &s.probe {
        out += &format!("probe: {text}\n");
    }
    if let Some(k) = &s.kept {
        out += &format!(
            "generation {} (pids {:?}): kept for rollback until {} (in {}), frozen; relaunch \
             rollback returns to it\n",
            k.generation,
            k.pids,
            clock_in(k.ends_in_secs),
            age(k.ends_in_secs)
        );
    }
    if let Some(d) = &s.draining {
        let busy = match d.measured {
            true => {
                let mut b = format!("{} open connection(s), {} queued", d.open, d.queued);
                if d.handshakes > 0 {
                    b += &format!(", {} handshake(s) under way", d.handshakes);
                }
                b
            }
            false => "measuring".into(),
        };
        out += &format!(
            "generation {} (draining): {busy}; stopped once idle, or in {} at the latest\n",
            d.generation,
            age(d.left_secs)
        );
    }
    out
}

fn render_listeners(listeners: &[ListenerInfo]) -> String {
    if listeners.is_empty() {
        return "listeners: none\n".into();
    }
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            let mut row = vec![l.name.clone(), l.address.clone(), format!("fd {}", l.fd)];
            match (l.waiting, l.backlog) {
                (Some(w), Some(b)) => row.push(format!("waiting {w} / {b}")),
                (Some(w), None) => row.push(format!("waiting {w}")),
                _ => {}
            }
            row
        })
        .collect();
    let mut out = "listeners:\n".to_string() + &table(&rows, "  ");
    for l in listeners.iter().filter(|l| !l.others.is_empty()) {
        out += &format!(
            "  {}: also listening on its port, not relaunch's: {} (relaunch never steers there)\n",
            l.name,
            l.others.join(", ")
        );
    }
    out
}

fn render_children(children: &[ChildInfo]) -> String {
    if children.is_empty() {
        return "children: none\n".into();
    }
    let mut rows = vec![
        [
            "PID",
            "GEN",
            "WORKER",
            "STATE",
            "UPTIME",
            "RESTARTS",
            "LAST EXIT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    rows.extend(children.iter().map(|c| {
        vec![
            c.pid.to_string(),
            c.generation.to_string(),
            c.worker.to_string(),
            if c.lingering.is_empty() {
                c.state.clone()
            } else {
                let pids: Vec<String> = c.lingering.iter().map(|p| p.to_string()).collect();
                format!("{} (pids {})", c.state, pids.join(", "))
            },
            age(c.uptime_secs),
            c.restarts.to_string(),
            c.last_exit.clone().unwrap_or_else(|| "-".into()),
        ]
    }));
    let mut out = "children:\n".to_string() + &table(&rows, "  ");
    for c in children.iter().filter(|c| !c.elsewhere.is_empty()) {
        out += &format!(
            "  pid {} listens on {}, which relaunch does not hold\n",
            c.pid,
            c.elsewhere.join(", ")
        );
    }
    out
}

/// The last line, without a newline.
fn render_last_reload(last: Option<&ReloadInfo>) -> String {
    let Some(r) = last else {
        return "last reload: none".into();
    };
    let mut out = format!(
        "last reload: generation {} {} {} ago",
        r.generation,
        if r.ok { "succeeded" } else { "failed" },
        age(r.seconds_ago)
    );
    if !r.message.is_empty() {
        out += &format!(": {}", r.message);
    }
    out
}

/// An age or uptime for people: tenths below 10 s, whole seconds above.
/// The UTC time of day `secs` from now ("05:31:02 UTC").
fn clock_in(secs: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = now.as_secs() + secs.max(0.0).round() as u64;
    let day = at % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let shown = if secs < 10.0 {
        Duration::from_millis((secs * 10.0).round() as u64 * 100)
    } else {
        Duration::from_secs(secs.round() as u64)
    };
    duration::human(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Server;
    use crate::control::testing::{DEADLINE, TempDir, answer_one, jsonish, sample_status, within};

    #[test]
    fn renders_answers() {
        let ok = |r: Response| render(&r, false).unwrap();
        assert_eq!(
            ok(Response::Reloaded {
                generation: 4,
                pids: vec![12, 13]
            }),
            (0, "reloaded: generation 4 serving (pids 12, 13)".into())
        );
        assert_eq!(
            ok(Response::Reloaded {
                generation: 2,
                pids: vec![7]
            }),
            (0, "reloaded: generation 2 serving (pid 7)".into())
        );
        assert_eq!(
            ok(Response::ReloadFailed {
                generation: 5,
                reason: "exited with status 1 before it was ready".into()
            }),
            (
                1,
                "reload failed: exited with status 1 before it was ready".into()
            )
        );
        assert_eq!(ok(Response::Stopping).0, 0);
        let (code, text) = ok(Response::Reloaded {
            generation: 0,
            pids: vec![],
        });
        assert_eq!(code, 0);
        assert!(
            text.starts_with("nothing to reload: no child runs"),
            "{text}"
        );
        let err = render(
            &Response::Error {
                message: "permission denied: uid 7".into(),
            },
            false,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.msg.contains("permission denied: uid 7"), "{err}");
        assert!(err.hint.unwrap().contains("same user"));
    }

    #[test]
    fn renders_a_generation_kept_for_rollback() {
        let s = Status {
            kept: Some(super::super::KeptInfo {
                generation: 2,
                pids: vec![7],
                ends_in_secs: 42.0,
            }),
            ..sample_status()
        };
        let text = render_status(&s);
        assert!(
            text.contains("generation 2 (pids [7]): kept for rollback until ")
                && text.contains(" UTC (in 42s), frozen; relaunch rollback returns to it\n"),
            "{text}"
        );
        assert!(!render_status(&sample_status()).contains("kept"));
    }

    #[test]
    fn renders_status() {
        let (code, text) = render(&Response::Status(Box::new(sample_status())), false).unwrap();
        assert_eq!(code, 0);
        let want = "\
relaunch (pid 4242): serving, generation 3
status: accepting connections
listeners:
  http  127.0.0.1:8080  fd 3  waiting 2 / 4096
children:
  PID   GEN  WORKER  STATE  UPTIME  RESTARTS  LAST EXIT
  4250  3    0       ready  1h2m5s  2         signal 9 (SIGKILL)
last reload: generation 3 succeeded 2m5s ago: ready after 0.4s";
        assert_eq!(text, want);

        let waiting = render_status(&Status {
            state: "waiting for the first connection".into(),
            idle_secs: Some(42.4),
            ..Status::default()
        });
        assert_eq!(
            waiting,
            "relaunch (pid 0): waiting for the first connection\nidle since 42s ago\nlisteners: none\nchildren: none\nlast reload: none"
        );
        let mut after_idle = sample_status();
        after_idle.state = "waiting for a connection".into();
        after_idle.children.clear();
        after_idle.status_text = None;
        after_idle.idle_secs = Some(3.0);
        let text = render_status(&after_idle);
        assert!(
            text.starts_with(
                "relaunch (pid 4242): waiting for a connection, generation 3\nidle since 3s ago\n"
            ),
            "{text}"
        );
        let json = serde_json::to_string(&after_idle).unwrap();
        assert!(json.contains(r#""idle_secs":3.0"#), "{json}");
        assert!(!json.contains("probe"), "no probe, no field: {json}");
        let mut probed = sample_status();
        probed.probe =
            Some("generation 4, --ready http:/healthz: GET /healthz answered 500".into());
        let text = render_status(&probed);
        assert!(
            text.contains(
                "\nprobe: generation 4, --ready http:/healthz: GET /healthz answered 500\n"
            ),
            "{text}"
        );
        assert!(
            !serde_json::to_string(&sample_status())
                .unwrap()
                .contains("idle_secs"),
            "absent while busy"
        );
        let watching = render_status(&Status {
            watch: Some("building (pid 7, for 2.1 s)".into()),
            ..Status::default()
        });
        assert!(
            watching.contains("\nwatch: building (pid 7, for 2.1 s)\n"),
            "{watching}"
        );

        let (_, json) = render(&Response::Status(Box::new(sample_status())), true).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pid, 4242);
        assert!(json.contains("\n  \"generation\": 3"), "{json}");
    }

    #[test]
    fn check_lines() {
        let mut s = sample_status();
        assert_eq!(check_line(&s), None);
        s.ready = false;
        s.state = "starting".into();
        assert_eq!(
            check_line(&s).unwrap(),
            "not ready: relaunch (pid 4242) is starting generation 3"
        );
        s.state = "backing off".into();
        assert_eq!(
            check_line(&s).unwrap(),
            "not ready: relaunch (pid 4242) is backing off; no child of generation 3 is ready"
        );
        s.state = "stopping".into();
        assert_eq!(
            check_line(&s).unwrap(),
            "not ready: relaunch (pid 4242) is stopping"
        );
    }

    #[test]
    fn ages() {
        for (secs, want) in [
            (0.0, "0s"),
            (0.04, "0s"),
            (4.25, "4.3s"),
            (9.97, "10s"),
            (42.4, "42s"),
            (187.0, "3m7s"),
            (7500.0, "2h5m"),
            (273_600.0, "76h"),
            (-1.0, "?"),
            (f64::NAN, "?"),
            (f64::INFINITY, "?"),
        ] {
            assert_eq!(age(secs), want, "{secs}");
        }
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let p = Path::new("/run/x.sock");
        let msg = |kind| connect_error(p, &io::Error::from(kind)).msg;
        assert_eq!(
            msg(io::ErrorKind::NotFound),
            "no relaunch is listening on /run/x.sock (the file does not exist)"
        );
        assert_eq!(
            msg(io::ErrorKind::ConnectionRefused),
            "nobody is listening on /run/x.sock (a stale socket: relaunch is not running)"
        );
        assert_eq!(
            msg(io::ErrorKind::PermissionDenied),
            "permission denied on /run/x.sock: run as the same user as relaunch or root"
        );
        assert!(
            connect_error(p, &io::Error::from(io::ErrorKind::NotFound))
                .hint
                .unwrap()
                .contains("--control")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_round_trip() {
        let dir = TempDir::new("status");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();

        let (got, ()) = within(async {
            tokio::join!(
                exchange(&path, &Request::Status, DEADLINE),
                answer_one(
                    &mut rx,
                    Request::Status,
                    Response::Status(Box::new(sample_status()))
                )
            )
        })
        .await;
        let Response::Status(status) = got.unwrap() else {
            panic!("not a status");
        };
        assert_eq!(status.pid, 4242);
        assert_eq!(status.listeners[0].address, "127.0.0.1:8080");
        assert_eq!(status.children[0].restarts, 2);

        // The whole client command, text and JSON.
        let args = ClientArgs {
            control: Some(path.clone()),
            timeout: None,
        };
        for json in [false, true] {
            let (code, ()) = within(async {
                tokio::join!(
                    client(&args, Request::Status, json),
                    answer_one(
                        &mut rx,
                        Request::Status,
                        Response::Status(Box::new(sample_status()))
                    )
                )
            })
            .await;
            assert_eq!(code.unwrap(), 0);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn check_exit_codes() {
        let dir = TempDir::new("check");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        let args = ClientArgs {
            control: Some(path.clone()),
            timeout: None,
        };
        let starting = Status {
            state: "starting".into(),
            ready: false,
            ..sample_status()
        };
        for (response, want) in [
            (Response::Status(Box::new(sample_status())), 0),
            (Response::Status(Box::new(starting)), 1),
            (
                Response::Error {
                    message: "permission denied: uid 7".into(),
                },
                1,
            ),
        ] {
            let (code, ()) = within(async {
                tokio::join!(check(&args), answer_one(&mut rx, Request::Status, response))
            })
            .await;
            assert_eq!(code.unwrap(), want);
        }
        drop(rx);
        let gone = ClientArgs {
            control: Some(dir.path("gone.sock")),
            timeout: None,
        };
        assert_eq!(within(check(&gone)).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reload_outcomes_set_exit_code() {
        let dir = TempDir::new("reload");
        let path = dir.path("ctl.sock");
        let mut rx = Server::bind(&path).unwrap().serve();
        let args = ClientArgs {
            control: Some(path.clone()),
            timeout: None,
        };
        for (response, want) in [
            (
                Response::ReloadFailed {
                    generation: 5,
                    reason: "not ready within 30s".into(),
                },
                1,
            ),
            (
                Response::Reloaded {
                    generation: 5,
                    pids: vec![10],
                },
                0,
            ),
            (Response::Stopping, 0),
        ] {
            let request = match response {
                Response::Stopping => Request::Stop,
                _ => Request::Reload,
            };
            let (code, ()) = within(async {
                tokio::join!(
                    client(&args, request.clone(), false),
                    answer_one(&mut rx, request.clone(), response)
                )
            })
            .await;
            assert_eq!(code.unwrap(), want);
        }
    }

    #[test]
    fn time_limits() {
        assert_eq!(time_limit(None, &Request::Reload).unwrap(), RELOAD_TIMEOUT);
        assert_eq!(time_limit(None, &Request::Status).unwrap(), ANSWER_TIMEOUT);
        assert_eq!(time_limit(None, &Request::Stop).unwrap(), ANSWER_TIMEOUT);
        // A reload with the default timeouts fits, with room.
        assert!(RELOAD_TIMEOUT >= Duration::from_secs(60 + 10 + 10));
        assert_eq!(
            time_limit(Some("5m"), &Request::Status).unwrap(),
            Duration::from_secs(300)
        );
        for bad in ["0s", "0", "soon", "-1s", ""] {
            let err = time_limit(Some(bad), &Request::Reload).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.msg.contains("--timeout"), "{bad:?}: {err}");
        }
    }

    /// A socket that takes connections but never answers (a stuck relaunch,
    /// or another program): the client gives up at its limit and says so.
    /// A server that closes its first connection unanswered (as relaunch
    /// does at the moment it execs itself), with the request read or not,
    /// then answers the next one.
    #[tokio::test(flavor = "current_thread")]
    async fn closed_unanswered_is_asked_again_when_that_is_safe() {
        let dir = TempDir::new("unanswered");
        let path = dir.path("ctl.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        async fn read_line(s: &mut UnixStream) {
            let mut line = Vec::new();
            BufReader::new(s)
                .read_until(b'\n', &mut line)
                .await
                .unwrap();
        }
        // (read the first request before closing, answered in the end)
        let rounds = [(false, true), (false, true), (true, true), (true, false)];
        let server = async {
            for (read_first, answers) in rounds {
                let (mut first, _) = listener.accept().await.unwrap();
                if read_first {
                    read_line(&mut first).await;
                }
                drop(first);
                if !answers {
                    continue;
                }
                let (mut second, _) = listener.accept().await.unwrap();
                read_line(&mut second).await;
                let answer = serde_json::to_vec(&Response::Stopping).unwrap();
                second.write_all(&answer).await.unwrap();
                second.write_all(b"\n").await.unwrap();
            }
        };
        let clients = async {
            // Not read: anything is sent again.
            for request in [Request::Reload, Request::Status] {
                let got = exchange(&path, &request, DEADLINE).await.unwrap();
                assert!(matches!(got, Response::Stopping), "{request:?}");
            }
            // Read, then closed: only a status is asked again.
            let got = exchange(&path, &Request::Status, DEADLINE).await.unwrap();
            assert!(matches!(got, Response::Stopping));
            let err = exchange(&path, &Request::Reload, DEADLINE)
                .await
                .unwrap_err();
            assert!(
                err.msg.ends_with("closed the connection without answering"),
                "{}",
                err.msg
            );
            assert!(err.hint.unwrap().contains("upgrading itself"));
        };
        within(async { tokio::join!(server, clients) }).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gives_up_on_a_socket_that_never_answers() {
        let dir = TempDir::new("mute");
        let path = dir.path("ctl.sock");
        let _mute = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let limit = Duration::from_millis(200);
        for request in [Request::Reload, Request::Status, Request::Stop] {
            let t = std::time::Instant::now();
            let err = within(exchange(&path, &request, limit)).await.unwrap_err();
            assert!(t.elapsed() >= limit, "{request:?}");
            assert_eq!(err.exit_code(), 1);
            assert_eq!(
                err.msg,
                format!("relaunch on {} did not answer within 200ms", path.display())
            );
            let hint = err.hint.unwrap();
            assert!(hint.contains("--timeout"), "{hint}");
            assert_eq!(
                hint.contains("reload may still be running"),
                request == Request::Reload
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn client_errors() {
        let dir = TempDir::new("client");
        let missing = dir.path("missing.sock");
        let err = client(
            &ClientArgs {
                control: Some(missing.clone()),
                timeout: None,
            },
            Request::Status,
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.msg,
            format!(
                "no relaunch is listening on {} (the file does not exist)",
                missing.display()
            )
        );

        let stale = dir.path("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = exchange(&stale, &Request::Status, DEADLINE)
            .await
            .unwrap_err();
        assert!(err.msg.starts_with("nobody is listening on"), "{err}");

        let err = client(
            &ClientArgs {
                control: None,
                timeout: None,
            },
            Request::Status,
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.hint.unwrap().contains("RELAUNCH_CONTROL"));
    }

    proptest::proptest! {
        #[test]
        fn answers_of_any_bytes_never_panic_the_client(bytes in jsonish()) {
            if let Ok(r) = serde_json::from_slice::<Response>(&bytes) {
                // Whatever decodes also renders, as text and as JSON.
                let _ = render(&r, false);
                let _ = render(&r, true);
            }
        }
    }
}
