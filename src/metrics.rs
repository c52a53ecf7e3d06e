//! `--metrics ADDR`: `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Nothing here exists without `--metrics`. The counters are fed by the
//! supervisor's [`Count`] effects (one place: [`Tally::record`]); the gauges
//! are read at each scrape from the same status `relaunch status` shows, so a
//! scrape is a status request on the event loop (answered at once) plus the
//! accept-queue read off the loop. The `prometheus-client` crate writes the
//! format.
//!
//! The responder is deliberately tiny: HTTP/1.x, one request per connection,
//! `Connection: close`. A request head is at most 8 KiB, and the whole
//! exchange has 5 s; at most 16 connections are served at once, and one
//! beyond that is closed at once. Anything but `GET /metrics` (or `HEAD`) is
//! answered 400, 404 or 405 and closed. Every connection is its own task
//! ([`crate::serve`]'s accept loop, which the control socket shares), so a
//! slow or hostile client never holds the event loop.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::control::{Incoming, Request, Response, Status};
use crate::counts::{Count, ReloadResult, RestartReason};
use crate::error::{Error, Result};
use crate::serve::{self, Conn, Limits, Read};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// The whole exchange, from accept to the last byte written, has 5 s.
const LIMITS: Limits = Limits {
    request: MAX_HEAD,
    io: Duration::from_secs(5),
    exchange: Some(Duration::from_secs(5)),
    connections: Some(MAX_CONNECTIONS),
};
/// Scrapes waiting for the supervisor.
const QUEUE: usize = 4;

type Label = [(&'static str, &'static str); 1];
type ListenerLabel = [(&'static str, String); 2];

/// The counters the supervisor's transitions feed. Cheap to clone: the
/// registry holds the same ones.
#[derive(Clone, Debug)]
pub struct Tally {
    restarts: Family<Label, Counter>,
    reloads: Family<Label, Counter>,
    time_to_ready: Histogram,
    drains: Family<Label, Counter>,
    cut: Counter,
}

impl Tally {
    pub fn record(&self, c: Count) {
        match c {
            Count::Restart(r) => {
                self.restarts
                    .get_or_create(&[("reason", restart_reason(r))])
                    .inc();
            }
            Count::Reload(r) => {
                self.reloads
                    .get_or_create(&[("result", reload_result(r))])
                    .inc();
            }
            Count::Ready(d) => self.time_to_ready.observe(d.as_secs_f64()),
            Count::Drain { idle, cut } => {
                let result = if idle { "idle" } else { "timeout" };
                self.drains.get_or_create(&[("result", result)]).inc();
                self.cut.inc_by(u64::from(cut));
            }
        }
    }
}

fn restart_reason(r: RestartReason) -> &'static str {
    match r {
        RestartReason::Exit => "exit",
        RestartReason::Signal => "signal",
        RestartReason::GiveUp => "give_up",
    }
}

fn reload_result(r: ReloadResult) -> &'static str {
    match r {
        ReloadResult::Done => "done",
        ReloadResult::NotReady => "failed_not_ready",
        ReloadResult::Exited => "failed_exited",
        ReloadResult::Coalesced => "coalesced",
        ReloadResult::Cancelled => "cancelled",
        ReloadResult::RolledBack => "rolled_back",
    }
}

const CHILD_STATES: [&str; 4] = ["starting", "ready", "stopping", "lingering"];

/// Read at each scrape from the status.
#[derive(Debug)]
struct Gauges {
    started: Instant,
    generation: Gauge,
    ready: Gauge,
    children: Family<Label, Gauge>,
    waiting: Family<ListenerLabel, Gauge>,
    backlog: Family<ListenerLabel, Gauge>,
    uptime: Gauge<f64, AtomicU64>,
    /// A canary's generation and share of new connections (0 without one).
    canary_generation: Gauge,
    canary_share: Gauge<f64, AtomicU64>,
    /// The connections the canary and the generation beside it hold or
    /// have queued, when measured; no series otherwise.
    canary_open: Family<Label, Gauge>,
    /// `--keep-previous`: the generation kept for a rollback (0 without one).
    kept_generation: Gauge,
    /// The listeners' labels at the last scrape: a listener that moved
    /// (interception rebinds --port) has its old series removed.
    labelled: Mutex<Vec<ListenerLabel>>,
}

impl Gauges {
    fn set(&self, s: &Status) {
        self.generation.set(s.generation as i64);
        self.ready.set(i64::from(s.ready));
        for state in CHILD_STATES {
            let n = s.children.iter().filter(|c| c.state == state).count();
            self.children
                .get_or_create(&[("state", state)])
                .set(n as i64);
        }
        let labels: Vec<ListenerLabel> = s
            .listeners
            .iter()
            .map(|l| [("listener", l.name.clone()), ("address", l.address.clone())])
            .collect();
        if let Ok(mut before) = self.labelled.lock() {
            for gone in before.iter().filter(|b| !labels.contains(b)) {
                self.waiting.remove(gone);
                self.backlog.remove(gone);
            }
            before.clone_from(&labels);
        }
        for (l, label) in s.listeners.iter().zip(labels) {
            // No accept queue (UDP), or it could not be read this time: no
            // series rather than a 0 or a stale value.
            for (family, value) in [(&self.waiting, l.waiting), (&self.backlog, l.backlog)] {
                match value {
                    Some(v) => {
                        family.get_or_create(&label).set(i64::from(v));
                    }
                    None => {
                        family.remove(&label);
                    }
                }
            }
        }
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let canary = s.canary.as_ref();
        self.canary_generation
            .set(canary.map_or(0, |c| c.generation as i64));
        self.canary_share.set(canary.map_or(0.0, |c| c.share));
        let open = [
            ("canary", canary.and_then(|c| c.open)),
            ("serving", canary.and_then(|c| c.beside_open)),
        ];
        for (of, n) in open {
            match n {
                Some(n) => {
                    self.canary_open
                        .get_or_create(&[("of", of)])
                        .set(i64::from(n));
                }
                None => {
                    self.canary_open.remove(&[("of", of)]);
                }
            }
        }
        self.kept_generation
            .set(s.kept.as_ref().map_or(0, |k| k.generation as i64));
    }
}

struct Shared {
    registry: Registry,
    gauges: Gauges,
}

/// The counters, with every label value from the start (so rate() sees
/// the first increase).
fn tally() -> Tally {
    let tally = Tally {
        restarts: Family::default(),
        reloads: Family::default(),
        time_to_ready: Histogram::new([
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ]),
        drains: Family::default(),
        cut: Counter::default(),
    };
    for r in [
        RestartReason::Exit,
        RestartReason::Signal,
        RestartReason::GiveUp,
    ] {
        let _ = tally
            .restarts
            .get_or_create(&[("reason", restart_reason(r))]);
    }
    for res in [
        ReloadResult::Done,
        ReloadResult::NotReady,
        ReloadResult::Exited,
        ReloadResult::Coalesced,
        ReloadResult::Cancelled,
        ReloadResult::RolledBack,
    ] {
        let _ = tally
            .reloads
            .get_or_create(&[("result", reload_result(res))]);
    }
    for result in ["idle", "timeout"] {
        let _ = tally.drains.get_or_create(&[("result", result)]);
    }
    tally
}

fn registry() -> (Registry, Tally, Gauges) {
    let mut r = Registry::with_prefix("relaunch");
    let tally = tally();
    let gauges = Gauges {
        started: Instant::now(),
        generation: Gauge::default(),
        ready: Gauge::default(),
        children: Family::default(),
        waiting: Family::default(),
        backlog: Family::default(),
        uptime: Gauge::default(),
        canary_generation: Gauge::default(),
        canary_share: Gauge::default(),
        canary_open: Family::default(),
        kept_generation: Gauge::default(),
        labelled: Mutex::new(Vec::new()),
    };
    r.register(
        "restarts",
        "Serving workers restarted after exiting on their own, by how they ended (exit, signal); give_up: relaunch stopped after a crash loop",
        tally.restarts.clone(),
    );
    r.register(
        "reloads",
        "Reloads by result: done, failed_not_ready, failed_exited, coalesced (merged into the next), cancelled (by a stop), rolled_back (a canary)",
        tally.reloads.clone(),
    );
    r.register(
        "drains",
        "Old generations drained at a reload: idle (stopped once they served nothing), timeout (stopped at --drain-timeout)",
        tally.drains.clone(),
    );
    r.register(
        "drain_cut_connections",
        "Connections an old generation still had open when the drain timeout stopped it",
        tally.cut.clone(),
    );
    r.register(
        "time_to_ready_seconds",
        "Time from a generation's start until all its workers were ready",
        tally.time_to_ready.clone(),
    );
    r.register(
        "generation",
        "The serving generation",
        gauges.generation.clone(),
    );
    r.register(
        "ready",
        "1 while a generation that became ready serves (what `status --check` asks)",
        gauges.ready.clone(),
    );
    r.register(
        "children",
        "Child process groups by state",
        gauges.children.clone(),
    );
    r.register(
        "listener_waiting_connections",
        "Connections in a listener's accept queue that no child accepted yet",
        gauges.waiting.clone(),
    );
    r.register(
        "listener_backlog",
        "The most connections a listener's accept queue holds",
        gauges.backlog.clone(),
    );
    r.register(
        "uptime_seconds",
        "Seconds since relaunch started",
        gauges.uptime.clone(),
    );
    r.register(
        "canary_generation",
        "The generation running as a canary beside the serving one; 0 when none runs",
        gauges.canary_generation.clone(),
    );
    r.register(
        "canary_share",
        "The canary's share of new connections (0 to 1); 0 when none runs",
        gauges.canary_share.clone(),
    );
    r.register(
        "canary_open_connections",
        "While a canary runs: the connections it (of=\"canary\") and the serving generation beside it (of=\"serving\") hold open or have queued, as last measured",
        gauges.canary_open.clone(),
    );
    r.register(
        "kept_generation",
        "The generation kept, frozen, for relaunch rollback (--keep-previous); 0 when none is",
        gauges.kept_generation.clone(),
    );
    r.register(
        "build",
        "relaunch's version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    (r, tally, gauges)
}

/// Who can read the metrics served at `addr`, when that is more than this
/// host: said once at start. None for a loopback address.
pub fn exposure(addr: SocketAddr) -> Option<String> {
    let ip = addr.ip().to_canonical();
    if ip.is_loopback() {
        return None;
    }
    let who = if ip.is_unspecified() {
        "on every interface: anyone who can reach this host".to_string()
    } else {
        format!("on {ip}: anyone who can reach that address")
    };
    Some(format!(
        "--metrics {addr} serves {who} on that port can read the metrics, without \
         authentication (listener names and addresses, the children's states, restarts, \
         reloads, relaunch's version); give 127.0.0.1:PORT or [::1]:PORT to keep them on \
         this host, or firewall the port"
    ))
}

/// Binds ADDR and serves scrapes from a task; each scrape comes to the
/// supervisor as a status request on the returned channel. The address
/// bound is returned too: for port 0, the next image binds that one.
pub fn serve(addr: SocketAddr) -> Result<Served> {
    // SO_REUSEADDR: the scrapes relaunch closed first sit in TIME_WAIT on
    // this port, and must not stop the next start from binding it.
    let listener = (|| {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(MAX_CONNECTIONS as u32 * 4)
    })()
    .map_err(|e| {
        Error::runtime(format!("cannot serve metrics on {addr}: {e}")).hint(format!(
            "pick another --metrics address; `relaunch who {addr}` shows who holds this one"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    Ok(serve_on(listener, bound))
}

/// Serves scrapes on a listening socket an earlier image handed over (an
/// upgrade binds nothing, so nothing can take the port meanwhile).
pub fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<Served> {
    let socket = socket2::Socket::from(fd);
    let bound = socket.local_addr()?.as_socket();
    let (Some(bound), true, true) = (
        bound,
        socket.r#type()? == socket2::Type::STREAM,
        socket.is_listener()?,
    ) else {
        return Err(std::io::Error::other("it is not a listening TCP socket"));
    };
    socket.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std::net::TcpListener::from(socket))?;
    Ok(serve_on(listener, bound))
}

/// What `--metrics` gives the driver: the counters, the scrapes, the
/// address served and a copy of the socket for the next image.
pub type Served = (
    Tally,
    mpsc::Receiver<Incoming>,
    SocketAddr,
    Option<std::os::fd::OwnedFd>,
);

fn serve_on(listener: TcpListener, bound: SocketAddr) -> Served {
    info!("metrics on http://{bound}/metrics");
    let copy = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned()
    };
    if let Err(e) = &copy {
        warn!(
            "metrics: cannot keep a copy of the socket for an upgrade ({e}); it binds again then"
        );
    }
    let (registry, tally, gauges) = registry();
    let shared = Arc::new(Shared { registry, gauges });
    let (tx, rx) = mpsc::channel(QUEUE);
    let closer = tx.clone();
    let closed = async move { closer.closed().await };
    let each = move |conn| exchange(conn, Arc::clone(&shared), tx.clone());
    tokio::spawn(serve::accept_loop(
        listener,
        "metrics".into(),
        LIMITS,
        closed,
        each,
    ));
    (tally, rx, bound, copy.ok())
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics {
        head_only: bool,
    },
    /// Answer with this status line and close.
    Refuse(&'static str),
    /// The head is not complete yet.
    More,
}

/// Pure: what the bytes read so far ask for.
fn parse_head(buf: &[u8]) -> Asked {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Asked::Refuse("400 Bad Request")
        } else {
            Asked::More
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Asked::Refuse("400 Bad Request");
    };
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Refuse("400 Bad Request");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Asked::Refuse("400 Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
            return Asked::Refuse("405 Method Not Allowed");
        }
        _ => return Asked::Refuse("400 Bad Request"),
    };
    if path != "/metrics" {
        return Asked::Refuse("404 Not Found");
    }
    Asked::Metrics { head_only }
}

async fn exchange(mut conn: Conn<TcpStream>, shared: Arc<Shared>, tx: mpsc::Sender<Incoming>) {
    let Read::Request(head) = conn.read(|b| parse_head(b) != Asked::More).await else {
        return;
    };
    let asked = parse_head(&head);
    let (status, body, head_only) = match asked {
        Asked::Metrics { head_only } => match scrape(&shared, &tx).await {
            Some(text) => ("200 OK", text, head_only),
            None => (
                "503 Service Unavailable",
                "relaunch is busy or stopping\n".to_string(),
                false,
            ),
        },
        Asked::Refuse(status) => (
            status,
            format!("{status}: only GET /metrics is served here\n"),
            false,
        ),
        // The peer closed before its head was complete.
        Asked::More => return,
    };
    let content_type = if status.starts_with("200") {
        prometheus_text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    let _ = conn.answer(out.as_bytes()).await;
}

/// A status from the supervisor, turned into the text format.
async fn scrape(shared: &Shared, tx: &mpsc::Sender<Incoming>) -> Option<String> {
    // No connection of the control socket's: nothing to hand over.
    let (reply, answer) = crate::control::Reply::new(-1);
    tx.try_send(Incoming {
        request: Request::Status,
        reply,
    })
    .ok()?;
    let Ok(Response::Status(status)) = answer.await else {
        return None;
    };
    shared.gauges.set(&status);
    let mut text = String::new();
    prometheus_text::encode(&mut text, &shared.registry).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ChildInfo, ListenerInfo};

    #[test]
    fn request_heads() {
        let m = Asked::Metrics { head_only: false };
        for (head, want) in [
            (&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..], m),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Asked::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Asked::Metrics { head_only: true },
            ),
            (b"GET /metrics HTTP/1.1\r\n", Asked::More),
            (b"", Asked::More),
            (b"GET / HTTP/1.1\r\n\r\n", Asked::Refuse("404 Not Found")),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Asked::Refuse("405 Method Not Allowed"),
            ),
            (
                b"GET /metrics HTTP/2\r\n\r\n",
                Asked::Refuse("400 Bad Request"),
            ),
            (
                b"GET metrics HTTP/1.1\r\n\r\n",
                Asked::Refuse("400 Bad Request"),
            ),
            (
                b"GET  /metrics HTTP/1.1\r\n\r\n",
                Asked::Refuse("400 Bad Request"),
            ),
            (b"\xff\xfe\r\n\r\n", Asked::Refuse("400 Bad Request")),
            (
                b"get /metrics HTTP/1.1\r\n\r\n",
                Asked::Refuse("400 Bad Request"),
            ),
            (b"\r\n\r\n", Asked::Refuse("400 Bad Request")),
        ] {
            assert_eq!(
                parse_head(head),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(
            parse_head(&[b'A'; MAX_HEAD]),
            Asked::Refuse("400 Bad Request")
        );
        assert_eq!(parse_head(&[b'A'; MAX_HEAD - 1]), Asked::More);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_an_answer_or_more(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&bytes);
        }
    }

    #[test]
    fn the_text_names_every_metric() {
        let (registry, tally, gauges) = registry();
        tally.record(Count::Restart(RestartReason::Signal));
        tally.record(Count::Reload(ReloadResult::Done));
        tally.record(Count::Reload(ReloadResult::Done));
        tally.record(Count::Ready(Duration::from_millis(300)));
        gauges.set(&Status {
            generation: 3,
            ready: true,
            state: "serving".into(),
            listeners: vec![
                ListenerInfo {
                    name: "http".into(),
                    address: "[::]:5000".into(),
                    fd: 3,
                    waiting: Some(2),
                    backlog: Some(4096),
                    others: Vec::new(),
                },
                ListenerInfo {
                    name: "dns".into(),
                    address: "udp:0.0.0.0:53".into(),
                    fd: 4,
                    waiting: None,
                    backlog: None,
                    others: Vec::new(),
                },
            ],
            children: vec![ChildInfo {
                pid: 7,
                generation: 3,
                worker: 0,
                state: "ready".into(),
                uptime_secs: 1.0,
                restarts: 0,
                last_exit: None,
                lingering: Vec::new(),
                elsewhere: Vec::new(),
            }],
            kept: Some(crate::control::KeptInfo {
                generation: 2,
                pids: vec![6],
                ends_in_secs: 30.0,
            }),
            canary: Some(crate::control::CanaryInfo {
                generation: 4,
                share: 0.1,
                beside: 3,
                promote_in_secs: None,
                open: Some(3),
                beside_open: None,
            }),
            ..Status::default()
        });
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "relaunch_restarts_total{reason=\"signal\"} 1",
            "relaunch_restarts_total{reason=\"exit\"} 0",
            "relaunch_restarts_total{reason=\"give_up\"} 0",
            "relaunch_reloads_total{result=\"done\"} 2",
            "relaunch_reloads_total{result=\"coalesced\"} 0",
            "relaunch_time_to_ready_seconds_count 1",
            "relaunch_time_to_ready_seconds_bucket{le=\"0.5\"} 1",
            "relaunch_generation 3",
            "relaunch_ready 1",
            "relaunch_children{state=\"ready\"} 1",
            "relaunch_children{state=\"starting\"} 0",
            "relaunch_kept_generation 2",
            "relaunch_canary_generation 4",
            "relaunch_canary_share 0.1",
            "relaunch_canary_open_connections{of=\"canary\"} 3",
            "relaunch_listener_waiting_connections{listener=\"http\",address=\"[::]:5000\"} 2",
            "relaunch_listener_backlog{listener=\"http\",address=\"[::]:5000\"} 4096",
            &format!(
                "relaunch_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("_connections{of=\"serving\"}"),
            "an unmeasured count is no series:\n{text}"
        );
        assert!(text.contains("relaunch_uptime_seconds "), "{text}");
        assert!(!text.contains("dns"), "UDP has no accept queue:\n{text}");
        // A queue that could not be read this time leaves no stale value.
        let unread = Status {
            listeners: vec![ListenerInfo {
                name: "http".into(),
                address: "[::]:5000".into(),
                fd: 3,
                waiting: None,
                backlog: None,
                others: Vec::new(),
            }],
            ..Status::default()
        };
        gauges.set(&unread);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            !text.contains("relaunch_listener_waiting_connections{"),
            "{text}"
        );
        assert!(text.contains("relaunch_generation 0"), "{text}");
        assert!(text.contains("\nrelaunch_kept_generation 0\n"), "{text}");
        assert!(
            !text.contains("relaunch_canary_open_connections{"),
            "{text}"
        );
    }

    /// A listener that moved (interception rebinds --port where the app
    /// asks) is one series at its new address: the old one goes.
    #[test]
    fn only_a_loopback_address_is_private() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(exposure(a("127.0.0.1:9464")), None);
        assert_eq!(exposure(a("[::1]:9464")), None);
        assert_eq!(exposure(a("[::ffff:127.0.0.2]:9464")), None);
        let every = exposure(a("0.0.0.0:9464")).unwrap();
        assert!(every.contains("every interface"), "{every}");
        assert!(exposure(a("[::]:0")).unwrap().contains("every interface"));
        let one = exposure(a("10.1.2.3:9464")).unwrap();
        assert!(one.contains("on 10.1.2.3: anyone"), "{one}");
    }

    #[test]
    fn a_moved_listener_leaves_no_series_at_its_old_address() {
        let (registry, _tally, gauges) = registry();
        let at = |address: &str| Status {
            listeners: vec![ListenerInfo {
                name: "http".into(),
                address: address.into(),
                fd: 3,
                waiting: Some(0),
                backlog: Some(4096),
                others: Vec::new(),
            }],
            ..Status::default()
        };
        gauges.set(&at("[::]:5000"));
        gauges.set(&at("127.0.0.1:5001"));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "relaunch_listener_backlog{listener=\"http\",address=\"127.0.0.1:5001\"} 4096"
            ),
            "{text}"
        );
        assert!(!text.contains("5000"), "{text}");
    }
}
