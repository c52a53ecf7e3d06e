//! Fallback and ephemeral ports, placeholders, the ports file.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(15);

#[test]
fn held_port_falls_back_and_the_child_gets_the_fallback() {
    let dir = TempDir::new("fallback");
    let out = dir.join("report.json");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = held.local_addr().unwrap().port();
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe = probe();
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                &format!("127.0.0.1:{p}"),
                "--fallback",
                &free.to_string(),
            ])
            .args(["--", probe.to_str().unwrap()])
            .env("PROBE_OUT", &out),
    );
    let rep = read_report(&out);
    let fd3 = rep["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == 3)
        .unwrap();
    assert_eq!(fd3["addr"], format!("127.0.0.1:{free}"));
    r.log
        .wait(&format!("listening on 127.0.0.1:{free} as fd 3"), T);
    let why = r.log.wait("using fallback port", T);
    assert!(
        why.contains(&format!("port {p} is held by pid {}", std::process::id())),
        "{why}"
    );
}

#[test]
fn every_fallback_held_is_an_error() {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let (s, log) = run_to_exit(
        &[
            "-l",
            &format!("127.0.0.1:{pa}"),
            "--fallback",
            &pb.to_string(),
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(s.code(), Some(1), "{log}");
    assert!(log.contains("every fallback port is in use too"), "{log}");
}

#[test]
fn ephemeral_port_placeholders_and_ports_file() {
    let dir = TempDir::new("placeholders");
    let out = dir.join("report.json");
    let ports = dir.join("ports.json");
    let probe = probe();
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args([
                "-l",
                "web=127.0.0.1:0",
                "--ports-file",
                ports.to_str().unwrap(),
            ])
            .args([
                "--",
                probe.to_str().unwrap(),
                "--fd={fd:web}",
                "--port={port:web}",
                "{{literal}}",
            ])
            .env("PROBE_OUT", &out),
    );
    let addr = r.listen_addr(3);
    assert_ne!(addr.port(), 0, "the log shows the real port");
    let rep = read_report(&out);
    let argv: Vec<&str> = rep["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[1..],
        ["--fd=3", &format!("--port={}", addr.port()), "{literal}"]
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ports).unwrap()).unwrap();
    assert_eq!(file, serde_json::json!({ "web": addr.to_string() }));
}

#[test]
fn unknown_placeholder_name_lists_the_known_ones() {
    let (s, log) = run_to_exit(&["-l", "web=127.0.0.1:0", "--", "echo", "{fd:nope}"], T);
    assert_eq!(s.code(), Some(2), "{log}");
    assert!(log.contains("web"), "{log}");
}
