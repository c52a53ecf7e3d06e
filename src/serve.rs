//! One accept loop for relaunch's own small servers: the control socket
//! and `--metrics`.
//!
//! Each connection is its own task, so a slow or hostile peer never holds
//! the loop: one request read (at most [`Limits::request`] bytes, within
//! [`Limits::io`]), one answer written (within [`Limits::io`] again), then
//! closed. What a request is and what it gets is the caller's `handle`,
//! given the connection as a [`Conn`]. The loop ends when `closed` does
//! (nobody takes requests any more), dropping the listener.

use std::future::{Future, poll_fn};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::{debug, warn};

/// One server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most bytes read for one request.
    pub request: usize,
    /// To read the request, from accept; and again to write the answer.
    pub io: Duration,
    /// The whole exchange, from accept to the last byte written, where it
    /// is bounded (the control socket's is not: a reload is answered when
    /// it ends).
    pub exchange: Option<Duration>,
    /// Connections served at once; one more is closed at once, so fds stay
    /// bounded. None: no bound.
    pub connections: Option<usize>,
}

/// A listening socket the loop accepts on.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Stream>>;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        TcpListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// What reading a request gave.
#[derive(Debug)]
pub enum Read {
    /// The bytes read: a whole request, or [`Limits::request`] bytes, or
    /// what came before the peer closed.
    Request(Vec<u8>),
    /// The peer closed without sending anything.
    Nothing,
    /// No whole request within [`Limits::io`].
    Late,
    Failed(io::Error),
}

/// One accepted connection, with its server's limits.
pub struct Conn<S> {
    stream: S,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, limits: Limits) -> Conn<S> {
        Conn { stream, limits }
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Reads until `complete` says the bytes so far are a whole request, the
    /// size limit is reached, or the peer closes; within the io deadline.
    pub async fn read(&mut self, complete: impl Fn(&[u8]) -> bool) -> Read {
        let limit = self.limits.request;
        let stream = &mut self.stream;
        let read = async {
            let mut buf = Vec::with_capacity(limit.min(1024));
            let mut chunk = [0u8; 4096];
            while buf.len() < limit {
                let want = chunk.len().min(limit - buf.len());
                let n = stream.read(&mut chunk[..want]).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if complete(&buf) {
                    break;
                }
            }
            Ok(buf)
        };
        match timeout(self.limits.io, read).await {
            Err(_) => Read::Late,
            Ok(Err(e)) => Read::Failed(e),
            Ok(Ok(buf)) if buf.is_empty() => Read::Nothing,
            Ok(Ok(buf)) => Read::Request(buf),
        }
    }

    /// Writes the answer and closes, within the io deadline.
    pub async fn answer(mut self, bytes: &[u8]) -> io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.shutdown().await
        };
        match timeout(self.limits.io, write).await {
            Ok(written) => written,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer did not take the answer within {:?}",
                    self.limits.io
                ),
            )),
        }
    }
}

/// Accepts on `listener` until `closed` ends, running `handle` on each
/// connection in its own task. `what` names the server in logs.
pub async fn accept_loop<L, H, F>(
    listener: L,
    what: String,
    limits: Limits,
    closed: impl Future<Output = ()>,
    handle: H,
) where
    L: Listener,
    H: Fn(Conn<L::Stream>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = limits.connections.map(|n| Arc::new(Semaphore::new(n)));
    let mut closed = std::pin::pin!(closed);
    loop {
        let accepted = tokio::select! {
            () = &mut closed => {
                debug!("{what} closing: nobody takes requests any more");
                break;
            }
            accepted = poll_fn(|cx| listener.poll_accept(cx)) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // Typically EMFILE: back off a little instead of spinning.
                warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match &slots {
            None => None,
            Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    debug!("{what}: too many connections; closing this one");
                    continue;
                }
            },
        };
        let exchange = handle(Conn::new(stream, limits));
        let what = what.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(deadline) = limits.exchange else {
                return exchange.await;
            };
            if timeout(deadline, exchange).await.is_err() {
                debug!("{what}: no complete exchange within {deadline:?}; closed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::sync::{mpsc, oneshot};

    const DEADLINE: Duration = Duration::from_secs(10);

    const LIMITS: Limits = Limits {
        request: 16,
        io: Duration::from_millis(300),
        exchange: None,
        connections: None,
    };

    /// Serves `limits` on a fresh loopback port: each connection reports on
    /// the returned channel ("accepted", what it read, "done"), and is
    /// answered "late", "nothing" or the request's length; a request
    /// starting "hang" is never answered. Dropping the stopper ends the loop.
    async fn server(
        limits: Limits,
    ) -> (
        SocketAddr,
        mpsc::UnboundedReceiver<String>,
        oneshot::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, reads) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let closed = async move {
            let _ = stopped.await;
        };
        let handle = move |mut conn: Conn<TcpStream>| {
            let seen = seen.clone();
            async move {
                let _ = seen.send("accepted".to_string());
                let said = match conn.read(|b| b.contains(&b'\n')).await {
                    Read::Request(r) if r.starts_with(b"hang") => std::future::pending().await,
                    Read::Request(r) => format!("{} bytes", r.len()),
                    Read::Nothing => "nothing".to_string(),
                    Read::Late => "late".to_string(),
                    Read::Failed(e) => format!("failed: {e}"),
                };
                let _ = seen.send(said.clone());
                let _ = conn.answer(format!("{said}\n").as_bytes()).await;
                let _ = seen.send("done".to_string());
            }
        };
        tokio::spawn(accept_loop(listener, "test".into(), limits, closed, handle));
        (addr, reads, stop)
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        timeout(DEADLINE, f).await.expect("no result within 10 s")
    }

    /// Sends `bytes`, then reads everything until the server closes.
    async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
        talk(addr, bytes, false).await
    }

    /// Sends `bytes` and, if `close`, ends its side; then reads everything
    /// until the server closes.
    async fn talk(addr: SocketAddr, bytes: &[u8], close: bool) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if close {
            s.shutdown().await.unwrap();
        }
        let mut answer = String::new();
        within(s.read_to_string(&mut answer)).await.unwrap();
        answer
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_is_read_to_its_end_or_the_size_limit_then_answered_and_closed() {
        let (addr, _reads, _stop) = server(LIMITS).await;
        assert_eq!(exchange(addr, b"hi\n").await, "3 bytes\n");
        assert_eq!(exchange(addr, &[b'x'; 40]).await, "16 bytes\n");
        // Closed before a whole request: what came is the request.
        assert_eq!(talk(addr, b"abc", true).await, "3 bytes\n");
        assert_eq!(talk(addr, b"", true).await, "nothing\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_client_is_cut_at_the_deadline() {
        let (addr, _reads, _stop) = server(LIMITS).await;
        let t = Instant::now();
        assert_eq!(exchange(addr, b"no end of line").await, "late\n");
        let waited = t.elapsed();
        assert!(waited >= LIMITS.io && waited < DEADLINE, "{waited:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_whole_exchange_is_cut_at_its_deadline() {
        let limits = Limits {
            exchange: Some(Duration::from_millis(300)),
            ..LIMITS
        };
        let (addr, _reads, _stop) = server(limits).await;
        let t = Instant::now();
        // Read at once, then the answer never comes: closed without one.
        assert_eq!(exchange(addr, b"hang\n").await, "");
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < DEADLINE,
            "{waited:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_connection_beyond_the_bound_is_closed_at_once() {
        let limits = Limits {
            io: DEADLINE * 2,
            connections: Some(16),
            ..LIMITS
        };
        let (addr, mut reads, _stop) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..16 {
            held.push(TcpStream::connect(addr).await.unwrap());
            assert_eq!(within(reads.recv()).await.unwrap(), "accepted");
        }
        // The 17th: closed at once, not after the io deadline.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        match within(extra.read(&mut buf)).await {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
        assert!(reads.try_recv().is_err(), "the 17th was served");
        // One goes: its slot serves the next.
        drop(held.pop());
        assert_eq!(within(reads.recv()).await.unwrap(), "nothing");
        assert_eq!(within(reads.recv()).await.unwrap(), "done");
        assert_eq!(exchange(addr, b"hi\n").await, "3 bytes\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_loop_ends_and_the_listener_closes_when_nobody_takes_requests() {
        let (addr, _reads, stop) = server(LIMITS).await;
        assert_eq!(exchange(addr, b"hi\n").await, "3 bytes\n");
        drop(stop);
        within(async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}
