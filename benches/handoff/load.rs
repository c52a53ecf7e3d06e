//! Closed-loop client load: C threads, each doing connect → `GET /` → read
//! the whole answer, one request per connection, over and over. Every request
//! is recorded: when it started, how long it took, how it ended, which pid
//! answered. After a failed request a client pauses 10 ms, so a port that
//! refuses at once does not turn the client into a SYN flood and the failure
//! counts of different scenarios stay comparable.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// The connection was refused: nothing listened on the port.
    Refused,
    /// Reset, or closed without an answer.
    Reset,
    /// No answer within the request's budget.
    Timeout,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the scenario's start.
    pub at: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
    /// The pid that answered (0 unless ok).
    pub pid: u32,
}

/// The pids that have answered so far, waitable: "a restart happened" is
/// "a pid we had not seen answered".
#[derive(Default)]
pub struct Seen {
    pids: Mutex<HashSet<u32>>,
    changed: Condvar,
}

impl Seen {
    fn add(&self, pid: u32) {
        let mut g = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        if g.insert(pid) {
            self.changed.notify_all();
        }
    }

    pub fn snapshot(&self) -> HashSet<u32> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for an answer from a pid not in `before`.
    pub fn wait_new(&self, before: &HashSet<u32>, timeout: Duration) -> Option<u32> {
        let end = Instant::now() + timeout;
        let mut g = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(p) = g.iter().find(|p| !before.contains(p)) {
                return Some(*p);
            }
            let left = end.checked_duration_since(Instant::now())?;
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Sample>>>,
    pub seen: Arc<Seen>,
}

impl Load {
    pub fn start(addr: SocketAddr, conns: usize, epoch: Instant, timeout: Duration) -> Load {
        Load::paced(addr, conns, epoch, timeout, Duration::ZERO)
    }

    /// Like [`Load::start`], but each client pauses `pause` after every
    /// answered request: steady traffic that leaves the CPUs to others.
    pub fn paced(
        addr: SocketAddr,
        conns: usize,
        epoch: Instant,
        timeout: Duration,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let clients = (0..conns)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || client(addr, epoch, timeout, pause, &stop, &seen))
            })
            .collect();
        Load {
            stop,
            clients,
            seen,
        }
    }

    /// Stops the clients (each finishes its request in flight) and returns
    /// every sample, sorted by start time.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .clients
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        all.sort_by(|a, b| a.at.total_cmp(&b.at));
        all
    }
}

fn client(
    addr: SocketAddr,
    epoch: Instant,
    timeout: Duration,
    pause: Duration,
    stop: &AtomicBool,
    seen: &Seen,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(16 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let (outcome, pid) = match request(addr, timeout) {
            Ok(pid) => (Outcome::Ok, pid),
            Err(e) => (classify(&e), 0),
        };
        out.push(Sample {
            at: start.duration_since(epoch).as_secs_f64(),
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            outcome,
            pid,
        });
        if outcome == Outcome::Ok {
            seen.add(pid);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        } else {
            std::thread::sleep(PAUSE_AFTER_FAILURE);
        }
    }
    out
}

/// One request on a fresh connection; the answering pid.
pub fn request(addr: SocketAddr, timeout: Duration) -> io::Result<u32> {
    let end = Instant::now() + timeout;
    let left = || {
        end.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(left()?))?;
    s.write_all(REQUEST)?;
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        s.set_read_timeout(Some(left()?))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    // Close with RST once the whole answer is in: otherwise every request
    // leaves a TIME_WAIT socket, and 100k's of them slow the later scenarios.
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    parse_answer(&answer)
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a full answer"))
}

/// The pid in a `200` answer's body.
pub fn parse_answer(answer: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return None;
    }
    body.trim_end().parse().ok()
}

pub fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Reset,
    }
}

pub fn self_check() -> Result<(), String> {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n1234\n";
    if parse_answer(ok) != Some(1234) {
        return Err("parse_answer missed the pid in a 200 answer".into());
    }
    for bad in [
        &b"HTTP/1.1 400 Bad\r\n\r\nbad\n"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"",
    ] {
        if parse_answer(bad).is_some() {
            return Err(format!(
                "parse_answer accepted {:?}",
                String::from_utf8_lossy(bad)
            ));
        }
    }
    let kinds = [
        (io::ErrorKind::ConnectionRefused, Outcome::Refused),
        (io::ErrorKind::ConnectionReset, Outcome::Reset),
        (io::ErrorKind::UnexpectedEof, Outcome::Reset),
        (io::ErrorKind::WouldBlock, Outcome::Timeout),
        (io::ErrorKind::TimedOut, Outcome::Timeout),
    ];
    for (kind, want) in kinds {
        let got = classify(&io::Error::from(kind));
        if got != want {
            return Err(format!("classify({kind:?}) = {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// Load runs meanwhile; this is a scenario's length, not a wait for an event.
pub fn pause(secs: f64) {
    std::thread::sleep(Duration::from_secs_f64(secs));
}
