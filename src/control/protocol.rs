//! The wire format. The client connects to the Unix stream socket and sends
//! one JSON line, a [`Request`] (`"status"`, `"reload"`, `"stop"`,
//! `"promote"`, `"rollback"`, `{"canary":{"percent":10.0}}` or
//! `{"upgrade":{"binary":null}}`); the
//! server answers one JSON line, a [`Response`] tagged by `"result"`, and
//! closes. A request is at most 64 KiB; an answer (a status with many
//! children is a few KiB) at most 16 MiB.

use serde::{Deserialize, Serialize};

/// Longest request line the server reads.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// The shares a canary may take, in percent: the steering program draws
/// against a 32-bit threshold, so a share nearer 0 or 100 would round to
/// nothing or to everything.
pub const CANARY_PERCENT: std::ops::RangeInclusive<f64> = 0.01..=99.99;
/// Longest answer the client reads.
pub const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Status,
    Reload,
    Stop,
    /// A reload whose new generation gets `percent` of new connections
    /// once ready; promoted after `promote_after_ms` if given.
    Canary {
        percent: f64,
        #[serde(default)]
        promote_after_ms: Option<u64>,
    },
    /// The canary gets every new connection; the old generation drains.
    Promote,
    /// The serving generation gets every new connection again; the canary
    /// drains and stops.
    Rollback,
    /// Re-execute relaunch in place from `binary` (default: the file at
    /// relaunch's own path).
    Upgrade {
        binary: Option<std::path::PathBuf>,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Boxed: a status is far larger than any other answer.
    Status(Box<Status>),
    Reloaded {
        generation: u64,
        pids: Vec<i32>,
    },
    ReloadFailed {
        generation: u64,
        reason: String,
    },
    /// A canary is ready and gets `share` (0..1) of new connections.
    CanaryServes {
        generation: u64,
        share: f64,
        pids: Vec<i32>,
    },
    /// The canary `generation` was rolled back (`reason`): `serving` has
    /// every new connection, and the canary stopped.
    RolledBack {
        generation: u64,
        serving: u64,
        reason: String,
    },
    /// Sent by the new image once it has adopted everything.
    Upgraded {
        pid: u32,
        from: String,
        to: String,
        listeners: usize,
        children: usize,
    },
    UpgradeFailed {
        reason: String,
    },
    Stopping,
    Error {
        message: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Status {
    /// relaunch's own pid.
    pub pid: u32,
    /// The running image: its version and `RELAUNCH_BUILD_ID`.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub build_id: Option<String>,
    /// The serving generation.
    pub generation: u64,
    /// "starting" | "serving" | "serving with a canary" | "reloading" |
    /// "backing off" | "stopping" |
    /// "waiting for the first connection" | "waiting for a connection" |
    /// "stopping when idle" (the last three with --lazy or --idle-stop)
    pub state: String,
    /// A ready generation serves now: a ready child of it runs (what
    /// `status --check` asks).
    #[serde(default)]
    pub ready: bool,
    /// Last STATUS= from the serving generation.
    pub status_text: Option<String>,
    pub listeners: Vec<ListenerInfo>,
    pub children: Vec<ChildInfo>,
    pub last_reload: Option<ReloadInfo>,
    /// Processes that escaped the process group of a child that is over
    /// (setsid), being stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escaped: Vec<i32>,
    /// `--watch`: the build and the changes ("building (pid 7, for 2.1 s)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    /// Seconds since nothing was open or waiting on the listeners: while no
    /// child runs, or measured with --idle-stop. Absent while busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
    /// The generation finishing what it accepted after a reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<DrainInfo>,
    /// `--ready http:`/`tcp`/`exec:` or `--health`: the generation probed
    /// and what its last probe found ("generation 2, --ready http:/healthz:
    /// GET /healthz answered 500 Internal Server Error").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// A canary beside the serving generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
    /// `--keep-previous`: the generation kept, frozen, for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptInfo>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct KeptInfo {
    pub generation: u64,
    pub pids: Vec<i32>,
    /// Seconds until it is stopped.
    pub ends_in_secs: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CanaryInfo {
    /// The canary, and its share (0..1) of new connections.
    pub generation: u64,
    pub share: f64,
    /// The serving generation, which gets the rest.
    pub beside: u64,
    /// Seconds until it is promoted (`--canary-for`).
    #[serde(default)]
    pub promote_in_secs: Option<f64>,
    /// Connections each holds open or has waiting in its accept queue,
    /// when they could be measured.
    #[serde(default)]
    pub open: Option<u32>,
    #[serde(default)]
    pub beside_open: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct DrainInfo {
    /// The newest of the old generations (the older ones drain with it).
    pub generation: u64,
    /// As last measured: connections its processes hold open, waiting in
    /// its accept queue, and handshakes from before the switch.
    pub open: u32,
    pub queued: u32,
    pub handshakes: u32,
    /// It is stopped at the latest this much later.
    pub left_secs: f64,
    /// The figures above come from a measure (the first one may not have
    /// come back yet).
    #[serde(default)]
    pub measured: bool,
}

impl Status {
    /// "0.1.0 (build b7)": the image that answered.
    pub fn image(&self) -> String {
        crate::version::describe(&self.version, self.build_id.as_deref())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    pub address: String,
    pub fd: i32,
    /// Of a stream listener: connections the kernel holds for it that no
    /// child accepted yet (None for UDP, or when it could not be read).
    #[serde(default)]
    pub waiting: Option<u32>,
    /// The most that may wait (the listen backlog), when the kernel says.
    #[serde(default)]
    pub backlog: Option<u32>,
    /// Of a TCP listener: other listeners on its port that are not
    /// relaunch's (they may take connections meant for it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ChildInfo {
    pub pid: i32,
    pub generation: u64,
    pub worker: usize,
    pub state: String,
    pub uptime_secs: f64,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// State "lingering": the leader exited and these processes of its
    /// group live on (they are being stopped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lingering: Vec<i32>,
    /// TCP addresses its processes listen on that relaunch does not hold
    /// (an app that probed its port and fell back serves there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elsewhere: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReloadInfo {
    pub generation: u64,
    pub ok: bool,
    pub message: String,
    pub seconds_ago: f64,
}

pub fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| {
        "malformed request (not UTF-8): send one JSON line: \"status\", \"reload\", \"stop\" or {\"upgrade\":{}}"
            .to_string()
    })?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!("malformed request ({e}): send one JSON line: \"status\", \"reload\", \"stop\" or {{\"upgrade\":{{}}}}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{jsonish, sample_status};

    #[test]
    fn parses_requests() {
        for (line, want) in [
            (&b"\"status\"\n"[..], Some(Request::Status)),
            (b"\"reload\"", Some(Request::Reload)),
            (b"  \"stop\"\r\n", Some(Request::Stop)),
            (
                b"{\"upgrade\":{}}\n",
                Some(Request::Upgrade { binary: None }),
            ),
            (b"\"upgrade\"\n", None),
            (
                b"{\"canary\":{\"percent\":10}}",
                Some(Request::Canary {
                    percent: 10.0,
                    promote_after_ms: None,
                }),
            ),
            (b"\"promote\"", Some(Request::Promote)),
            (b"\"STATUS\"\n", None),
            (b"status\n", None),
            (b"{\"request\":\"status\"}\n", None),
            (b"\"status\" \"stop\"\n", None),
            (b"\xff\n", None),
            (b"\n", None),
        ] {
            let got = parse_request(line);
            match want {
                Some(r) => assert_eq!(got, Ok(r), "{line:?}"),
                None => {
                    let msg = got.expect_err("should be refused");
                    assert!(msg.starts_with("malformed request"), "{msg}");
                    assert!(
                        msg.contains("\"status\", \"reload\", \"stop\" or {\"upgrade\":{}}"),
                        "{msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Reload).unwrap(),
            "\"reload\""
        );
        let r = Response::Reloaded {
            generation: 4,
            pids: vec![12, 13],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"result":"reloaded","generation":4,"pids":[12,13]}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Stopping).unwrap(),
            r#"{"result":"stopping"}"#
        );
        let failed: Response =
            serde_json::from_str(r#"{"result":"reload_failed","generation":5,"reason":"x"}"#)
                .unwrap();
        assert!(matches!(
            failed,
            Response::ReloadFailed { generation: 5, .. }
        ));
        let json = serde_json::to_string(&Response::Status(Box::new(sample_status()))).unwrap();
        assert!(
            json.starts_with(r#"{"result":"status","pid":4242,"#),
            "{json}"
        );
        let Response::Status(back) = serde_json::from_str(&json).unwrap() else {
            panic!("not a status: {json}");
        };
        assert_eq!(
            back.children[0].last_exit.as_deref(),
            Some("signal 9 (SIGKILL)")
        );
    }

    /// Every request, spelled so that a new variant fails to compile here.
    fn all_requests() -> Vec<Request> {
        let all = vec![
            Request::Status,
            Request::Reload,
            Request::Stop,
            Request::Upgrade { binary: None },
            Request::Upgrade {
                binary: Some("/usr/local/bin/relaunch".into()),
            },
            Request::Canary {
                percent: 2.5,
                promote_after_ms: Some(60_000),
            },
            Request::Canary {
                percent: 10.0,
                promote_after_ms: None,
            },
            Request::Promote,
            Request::Rollback,
        ];
        for r in &all {
            match r {
                Request::Status
                | Request::Reload
                | Request::Stop
                | Request::Upgrade { .. }
                | Request::Canary { .. }
                | Request::Promote
                | Request::Rollback => {}
            }
        }
        all
    }

    fn request() -> impl proptest::strategy::Strategy<Value = Request> {
        proptest::sample::select(all_requests())
    }

    proptest::proptest! {
        #[test]
        fn parse_request_never_panics(bytes in jsonish()) {
            if let Err(msg) = parse_request(&bytes) {
                proptest::prop_assert!(msg.starts_with("malformed request"), "{}", msg);
            }
        }

        #[test]
        fn every_request_round_trips(req in request(), pad in "[ \t\r]{0,3}") {
            let mut line = serde_json::to_vec(&req).unwrap();
            line.extend_from_slice(pad.as_bytes());
            line.push(b'\n');
            proptest::prop_assert_eq!(parse_request(&line), Ok(req));
        }

        #[test]
        fn answers_round_trip(
            generation in proptest::num::u64::ANY,
            pids in proptest::collection::vec(proptest::num::i32::ANY, 0..4),
            text in "\\PC{0,32}",
            kind in 0u8..5,
        ) {
            let r = match kind {
                0 => Response::Reloaded { generation, pids },
                1 => Response::ReloadFailed { generation, reason: text },
                2 => Response::Error { message: text },
                3 => Response::UpgradeFailed { reason: text },
                _ => Response::Stopping,
            };
            let json = serde_json::to_string(&r).unwrap();
            let back: Response = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
    }
}
