//! Who holds a port: `relaunch who` against a real listener (a holder, a free
//! port, a bad target), and the error that names the holder when relaunch
//! cannot bind a held port.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(15);

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `relaunch who ARGS` under a deadline: (status, stdout, stderr).
fn who(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(relaunch_bin())
        .arg("who")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaunch who");
    let status = wait_for("relaunch who to exit", T, || child.try_wait().unwrap());
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

#[test]
fn who_names_the_python_process_holding_a_port() {
    if !require_tool("python3") {
        return;
    }
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.socket()\n\
             s.bind(('127.0.0.1', 0))\n\
             s.listen()\n\
             print(s.getsockname()[1], flush=True)\n\
             sys.stdin.read()",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = py.id();
    let _py = Killed(py);
    let port = line.trim();
    assert!(port.parse::<u16>().is_ok(), "python printed {line:?}");

    let (status, out, err) = who(&[port]);
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let row = out
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port}")))
        .unwrap_or_else(|| panic!("no row for the port in:\n{out}"));
    assert!(
        row.split_whitespace().any(|w| w == pid.to_string()),
        "pid {pid} missing in {row:?}"
    );
    assert!(row.contains("python"), "\"python\" missing in {row:?}");
}

#[test]
fn who_exits_1_for_a_free_port() {
    // Bound then released: free unless another process grabs it meanwhile.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (status, out, err) = who(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
}

#[test]
fn who_exits_2_for_a_bad_target() {
    let (status, out, err) = who(&["notaport"]);
    assert_eq!(status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("notaport"),
        "the error names the bad input: {err}"
    );
}

#[test]
fn held_port_names_the_holder() {
    let mut holder = Command::new("python3")
        .args(["-c", "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim();
    let t = Instant::now();
    let (status, log) = run_to_exit(
        &["-l", &format!("127.0.0.1:{port}"), "--", "true"],
        Duration::from_secs(5),
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "port {port} is already in use by pid {} (python3",
            holder.id()
        )),
        "{log}"
    );
    assert!(log.contains("relaunch who"), "{log}");
}
