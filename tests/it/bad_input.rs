//! Malformed invocations of the real binary: every option, every grammar,
//! the control commands, garbage `LISTEN_*` and non-socket fds. Each must fail
//! fast with the documented exit code (2 usage, 1 runtime, 126/127 exec),
//! never panic, and say in one line (plus an optional `hint:` line) what went
//! wrong.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// How long a failing invocation may take to fail.
const LIMIT: Duration = Duration::from_secs(10);
/// How long a started relaunch may take to listen or to exit.
const T: Duration = Duration::from_secs(15);

/// How the case is run: plain arguments, or a `sh -c` line that execs
/// `"$RELAUNCH"` (so `$$` is relaunch's own pid and fds can be set up).
enum How {
    Args(Vec<String>),
    Shell(String),
}

struct Case {
    how: How,
    code: i32,
    /// A piece of the message that says what went wrong.
    says: &'static str,
}

fn args(a: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        how: How::Args(a.iter().map(|s| s.to_string()).collect()),
        code,
        says,
    }
}

fn shell(line: &str, code: i32, says: &'static str) -> Case {
    Case {
        how: How::Shell(line.to_string()),
        code,
        says,
    }
}

fn cases(dir: &TempDir) -> Vec<Case> {
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    let plain = plain.display().to_string();
    let long_name = format!("{}=127.0.0.1:0", "n".repeat(256));
    let missing_ctl = dir.join("no-such.sock").display().to_string();
    let l = ["-l", "127.0.0.1:0"];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(l.iter().map(|s| s.to_string()));
        v.extend(["--", "true"].map(String::from));
        v
    };
    let run = |extra: &[&str], code, says| Case {
        how: How::Args(with(extra)),
        code,
        says,
    };
    let env = |vars: &str, code, says| {
        shell(
            &format!("{vars} exec \"$RELAUNCH\" -l 127.0.0.1:0 -- true"),
            code,
            says,
        )
    };
    vec![
        // No command, or an empty program.
        args(&[], 2, "COMMAND"),
        args(&["-l", "127.0.0.1:0"], 2, "COMMAND"),
        args(&["-l", "127.0.0.1:0", "--"], 2, "COMMAND"),
        args(&["-l", "127.0.0.1:0", "--", ""], 2, "empty"),
        args(&["--bogus", "--", "true"], 2, "--bogus"),
        // --port
        args(&["--port", "0", "--", "true"], 2, "port"),
        args(&["--port", "65536", "--", "true"], 2, "65536"),
        args(&["--port", "-1", "--", "true"], 2, "-1"),
        args(&["--port", "abc", "--", "true"], 2, "abc"),
        // Listen specs.
        args(&["-l", "", "--", "true"], 2, "empty"),
        args(&["-l", "unix:", "--", "true"], 2, "unix:"),
        args(&["-l", "unix:@", "--", "true"], 2, "unix:@"),
        args(&["-l", "http=", "--", "true"], 2, "http="),
        args(&["-l", "tcp:", "--", "true"], 2, "tcp:"),
        args(&["-l", "udp:127.0.0.1", "--", "true"], 2, "port"),
        args(&["-l", "udp:127.0.0.1:70000", "--", "true"], 2, "70000"),
        args(&["-l", "1.2.3.4.5:80", "--", "true"], 2, "1.2.3.4.5"),
        args(&["-l", "[::1", "--", "true"], 2, "]"),
        args(
            &["-l", "a=127.0.0.1:0", "-l", "a=127.0.0.1:0", "--", "true"],
            2,
            "twice",
        ),
        args(
            &["-l", "127.0.0.1:5555", "-l", "127.0.0.1:5555", "--", "true"],
            2,
            "twice",
        ),
        args(&["-l", "a:b=127.0.0.1:0", "--", "true"], 2, ":"),
        args(&["-l", &long_name, "--", "true"], 2, "255"),
        args(
            &["-l", "unix:/nonexistent-relaunch-dir/x.sock", "--", "true"],
            1,
            "does not exist",
        ),
        // Other options.
        run(&["--backlog", "0"], 2, "backlog"),
        run(&["--workers", "0"], 2, "workers"),
        run(&["--workers", "many"], 2, "workers"),
        run(&["--stop-timeout", "10x"], 2, "10x"),
        run(&["--stop-timeout", ""], 2, "stop-timeout"),
        run(&["--ready-timeout", "soon"], 2, "soon"),
        run(&["--ready-timeout", "0s"], 2, "--ready-timeout"),
        run(&["--ready", "sometimes"], 2, "sometimes"),
        run(&["--ready", "delay:xx"], 2, "xx"),
        run(&["--restart", "sometimes"], 2, "sometimes"),
        run(&["--stop-signal", "NOPE"], 2, "NOPE"),
        run(&["--stop-signal", "99"], 2, "99"),
        run(&["--stop-signal", "KILL"], 2, "KILL"),
        run(&["--stop-signal", "9"], 2, "KILL"),
        run(&["--user", "no-such-user"], 2, "no-such-user"),
        run(&["--group", "no-such-group"], 2, "no-such-group"),
        run(
            &["--control", "/nonexistent-relaunch-dir/ctl.sock"],
            1,
            "does not exist",
        ),
        // The program cannot be run.
        args(
            &["-l", "127.0.0.1:0", "--", "/nonexistent/server"],
            127,
            "/nonexistent/server",
        ),
        args(
            &["-l", "127.0.0.1:0", "--", "no-such-command-xyz"],
            127,
            "no-such-command-xyz",
        ),
        args(
            &["-l", "127.0.0.1:0", "--", &plain],
            126,
            "permission denied",
        ),
        args(&["-l", "127.0.0.1:0", "--", "/"], 126, "directory"),
        // Control commands without a socket, or against a missing one.
        args(&["status"], 2, "control"),
        args(&["reload"], 2, "control"),
        args(&["stop"], 2, "control"),
        args(&["status", "--control", &missing_ctl], 1, "does not exist"),
        args(&["reload", "--control", &missing_ctl], 1, "does not exist"),
        args(&["stop", "--control", &missing_ctl], 1, "does not exist"),
        args(
            &["reload", "--control", &missing_ctl, "--timeout", "0s"],
            2,
            "--timeout",
        ),
        args(
            &["status", "--control", &missing_ctl, "--timeout", "soon"],
            2,
            "--timeout",
        ),
        args(&["who", "notaport"], 2, "notaport"),
        args(&["who"], 2, "TARGET"),
        // Garbage LISTEN_* addressed to relaunch's own pid.
        env("LISTEN_PID=$$ LISTEN_FDS=lots", 2, "LISTEN_FDS"),
        env("LISTEN_PID=$$ LISTEN_FDS=-1", 2, "LISTEN_FDS"),
        env(
            "LISTEN_PID=$$ LISTEN_FDS=99999999999999999999",
            2,
            "LISTEN_FDS",
        ),
        env("LISTEN_PID=abc LISTEN_FDS=1", 2, "LISTEN_PID"),
        env("LISTEN_PID= LISTEN_FDS=1", 2, "LISTEN_PID"),
        env("LISTEN_PID=0 LISTEN_FDS=1", 2, "LISTEN_PID"),
        env(
            "exec 3</etc/hostname; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b",
            2,
            "LISTEN_FDNAMES",
        ),
        // Non-socket fds announced as sockets, and an fd that is not open.
        env(
            "exec 3</etc/hostname; LISTEN_PID=$$ LISTEN_FDS=1",
            2,
            "not a socket",
        ),
        env(
            "exec 3</dev/null 4</etc/hostname; LISTEN_PID=$$ LISTEN_FDS=2",
            2,
            "not a socket",
        ),
        env("exec 3<&-; LISTEN_PID=$$ LISTEN_FDS=1", 2, "not open"),
    ]
}

struct Outcome {
    shown: String,
    code: Option<i32>,
    took: Duration,
    stderr: String,
}

fn run_case(case: &Case) -> Outcome {
    let mut cmd = match &case.how {
        How::Args(a) => {
            let mut c = Command::new(relaunch_bin());
            c.args(a);
            c
        }
        How::Shell(line) => {
            let mut c = Command::new("sh");
            c.args(["-c", line]).env("RELAUNCH", relaunch_bin());
            c
        }
    };
    let shown = match &case.how {
        How::Args(a) => format!("relaunch {a:?}"),
        How::Shell(line) => format!("sh -c {line:?}"),
    };
    let mut child = cmd
        .env("RUST_LOG", "info")
        .env_remove("RELAUNCH_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // stderr is small; reading it to EOF ends when the process (and any child
    // that kept it) is gone, so the deadline is enforced by killing.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t.elapsed();
    Outcome {
        shown,
        code: status.and_then(|s| s.code()),
        took,
        stderr: reader.join().unwrap(),
    }
}

/// Log lines from tracing start with a timestamp; the error is what is left.
fn message_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.len() > 4
                && l.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && l.as_bytes()[4] == b'-')
        })
        .collect()
}

#[test]
fn malformed_invocations_fail_fast_with_the_right_code() {
    let dir = TempDir::new("bad");
    let cases = cases(&dir);
    assert!(cases.len() >= 30, "fewer than 30 malformed invocations");
    let mut wrong = Vec::new();
    for case in &cases {
        let o = run_case(case);
        let problem = if o.code.is_none() && o.took >= LIMIT {
            Some(format!("did not exit within {LIMIT:?}"))
        } else if o.stderr.contains("panicked") {
            Some("panicked".to_string())
        } else if o.code != Some(case.code) {
            Some(format!("exit {:?}, want {}", o.code, case.code))
        } else if message_lines(&o.stderr).is_empty() {
            Some("no message on stderr".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            wrong.push(format!("{}: {p}\n{}", o.shown, o.stderr));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// The promise: "always says in one line what went wrong and what to do".
/// One message line, naming the problem, then at most one `hint:` line.
#[test]
fn every_failure_is_one_line_plus_an_optional_hint() {
    let dir = TempDir::new("bad-msg");
    let cases = cases(&dir);
    let mut wrong = Vec::new();
    for case in &cases {
        let o = run_case(case);
        let lines = message_lines(&o.stderr);
        let shape_ok = match lines.as_slice() {
            [_] => true,
            [_, hint] => hint.trim_start().starts_with("hint:"),
            _ => false,
        };
        let says_ok = lines.first().is_some_and(|l| l.contains(case.says));
        if !shape_ok || !says_ok {
            let why = if shape_ok {
                format!("first line does not mention {:?}", case.says)
            } else {
                format!("{} lines, want 1 (+ hint:)", lines.len())
            };
            wrong.push(format!("{}: {why}\n{}", o.shown, lines.join("\n")));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n\n")
    );
}

/// A control socket that accepts but never answers (a stuck or foreign
/// process): every client command gives up at its --timeout and says so.
#[test]
fn clients_give_up_on_a_control_socket_that_never_answers() {
    let dir = TempDir::new("mute-ctl");
    let path = dir.join("ctl.sock");
    // Never accepted: connect succeeds through the backlog, no answer comes.
    let _mute = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let ctl = path.display().to_string();
    for command in ["status", "reload", "stop"] {
        let o = run_case(&args(
            &[command, "--control", &ctl, "--timeout", "300ms"],
            1,
            "",
        ));
        let lines = message_lines(&o.stderr);
        assert_eq!(o.code, Some(1), "{}: {}", o.shown, o.stderr);
        assert!(
            o.took < Duration::from_secs(5),
            "{}: took {:?}",
            o.shown,
            o.took
        );
        assert!(
            lines[0].contains("did not answer within 300ms"),
            "{}: {}",
            o.shown,
            o.stderr
        );
        assert!(lines[1].contains("--timeout"), "{}: {}", o.shown, o.stderr);
    }
}

#[test]
fn exec_failures_exit_127_and_126_without_restarting() {
    let dir = TempDir::new("exec");
    let (s, log) = run_to_exit(&["-l", "127.0.0.1:0", "--", "/nonexistent/server"], T);
    assert_eq!(s.code(), Some(127), "{log}");
    assert!(log.contains("cannot run /nonexistent/server"), "{log}");
    let (s, log) = run_to_exit(&["-l", "127.0.0.1:0", "--", "no-such-command-xyz"], T);
    assert_eq!(s.code(), Some(127), "{log}");
    assert!(log.contains("command not found"), "{log}");
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, "not a program").unwrap();
    let (s, log) = run_to_exit(&["-l", "127.0.0.1:0", "--", plain.to_str().unwrap()], T);
    assert_eq!(s.code(), Some(126), "{log}");
    assert!(log.contains("permission denied"), "{log}");
    // The fork happens (one "started"); its failed exec is not retried.
    assert_eq!(log.matches("started").count(), 1, "no restart storm: {log}");
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for args in [
        &["--port", "0", "--", "true"][..],
        &["--port", "65536", "--", "true"],
        &["--port", "abc", "--", "true"],
        &["-l", "", "--", "true"],
        &["-l", "unix:", "--", "true"],
        &["-l", "http=", "--", "true"],
        &["-l", "1.2.3.4.5:80", "--", "true"],
        &["-l", "[::1", "--", "true"],
        &["-l", "a=127.0.0.1:0", "-l", "a=127.0.0.1:0", "--", "true"],
        &["--stop-timeout", "10x", "-l", "127.0.0.1:0", "--", "true"],
        &["--ready", "sometimes", "-l", "127.0.0.1:0", "--", "true"],
        &["--workers", "0", "-l", "127.0.0.1:0", "--", "true"],
        &["-l", "127.0.0.1:0"],
        &[],
    ] {
        let (s, log) = run_to_exit(args, Duration::from_secs(10));
        assert_eq!(s.code(), Some(2), "{args:?}: {log}");
        assert!(!log.trim().is_empty(), "{args:?}: no message");
        assert!(!log.contains("panicked"), "{args:?}: {log}");
    }
}

#[test]
fn garbage_listen_env_is_a_clear_error() {
    let r = Relaunch::start_with(
        Command::new(relaunch_bin())
            .args(["-l", "127.0.0.1:0", "--", "true"])
            .env("LISTEN_FDS", "lots")
            .env("LISTEN_PID", std::process::id().to_string()),
    );
    // LISTEN_PID names the test, not relaunch: not ours, so ignored.
    r.log.wait("listening on", T);
    drop(r);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "LISTEN_PID=$$ LISTEN_FDS=lots exec {} -l 127.0.0.1:0 -- true",
            relaunch_bin()
        ),
    ]);
    let mut r = Relaunch::start_with(&mut cmd);
    let s = r.wait_exit(T);
    assert_eq!(s.code(), Some(2), "{}", r.log.text());
    assert!(r.log.text().contains("LISTEN_FDS"), "{}", r.log.text());
}
