//! The control socket: `relaunch --control PATH` serves it, and the
//! subcommands `relaunch status [--json]`, `relaunch reload`,
//! `relaunch stop` and `relaunch upgrade` are its client.
//!
//! - [`protocol`]: the wire format, one JSON line each way.
//! - [`server`]: the socket file's life (never wider than 0600, only a stale
//!   file replaced, only our own removed) and the peer check (root or our uid).
//! - [`client`]: the subcommands. `reload` answers only once the reload has
//!   succeeded or failed, so the whole exchange has one deadline, `--timeout`:
//!   90 s for reload (the default `--ready-timeout` 60 s plus `--stop-timeout`
//!   10 s, with room), 30 s for upgrade, 10 s for status and stop, which
//!   answer at once. `upgrade` is answered by the new image, over the same
//!   connection (its fd is handed over, see [`Reply`]), and then asked for
//!   its status, so 0 means the new image serves the control socket.

mod client;
mod protocol;
mod server;

pub use client::{canary_request, check, client};
pub use protocol::{
    CANARY_PERCENT, CanaryInfo, ChildInfo, DrainInfo, KeptInfo, ListenerInfo, ReloadInfo, Request,
    Response, Status,
};
pub use server::{Incoming, Replies, Reply, ReplyId, Server};

/// Helpers for the tests of all three parts.
#[cfg(test)]
mod testing {
    use std::future::Future;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;

    pub const DEADLINE: Duration = Duration::from_secs(10);

    /// A fresh folder under the temp dir, removed at the end of the test.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "relaunch-control-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub async fn within<F: Future>(f: F) -> F::Output {
        timeout(DEADLINE, f).await.expect("timed out")
    }

    /// Plays the supervisor for one request.
    pub async fn answer_one(
        rx: &mut mpsc::Receiver<super::server::Incoming>,
        expect: Request,
        response: Response,
    ) {
        let incoming = rx.recv().await.expect("a request");
        assert_eq!(incoming.request, expect);
        assert!(incoming.reply.send(response), "client still waiting");
    }

    pub fn sample_status() -> Status {
        Status {
            pid: 4242,
            version: "0.1.0".into(),
            build_id: None,
            generation: 3,
            state: "serving".into(),
            ready: true,
            status_text: Some("accepting connections".into()),
            listeners: vec![ListenerInfo {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
                fd: 3,
                waiting: Some(2),
                backlog: Some(4096),
                others: Vec::new(),
            }],
            children: vec![ChildInfo {
                pid: 4250,
                generation: 3,
                worker: 0,
                state: "ready".into(),
                uptime_secs: 3725.0,
                restarts: 2,
                last_exit: Some("signal 9 (SIGKILL)".into()),
                lingering: Vec::new(),
                elsewhere: Vec::new(),
            }],
            last_reload: Some(ReloadInfo {
                generation: 3,
                ok: true,
                message: "ready after 0.4s".into(),
                seconds_ago: 125.0,
            }),
            escaped: Vec::new(),
            watch: None,
            idle_secs: None,
            draining: None,
            probe: None,
            canary: None,
            kept: None,
        }
    }

    /// Bytes that look like JSON often enough to reach serde's deeper paths.
    pub fn jsonish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "[\\[\\]{}\":,a-z0-9_ \\\\\n.-]{0,64}".prop_map(String::into_bytes),
        ]
    }
}
