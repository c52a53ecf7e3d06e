//! The developer loop: `--watch`, `--build`, under a client loop.
//! How fast a save is served is the bench's figure (dev-loop); here the
//! deadlines are generous and what is checked is that nothing fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// A Python server on the held socket (fd 3) that answers "VERSION PID".
fn python_app(version: &str) -> String {
    format!(
        r#"import os, signal, socket, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

VERSION = "{version}"

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{{VERSION}} {{os.getpid()}}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    # server_close() waits for the requests in flight.
    daemon_threads = False

    def __init__(self, sock):
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock

sock = socket.socket(fileno=3)
# Shared with the other generation, which may take a connection first.
sock.setblocking(False)
server = Server(sock)
# SIGTERM: stop accepting, finish what was accepted, exit.
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.1)
server.server_close()
"#
    )
}

/// Saves `text` the way an editor does: the whole file at once.
fn save(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The version part of an answer.
fn version(addr: SocketAddr) -> Option<String> {
    get(addr)
        .ok()
        .and_then(|b| b.split_whitespace().next().map(str::to_string))
}

/// Waits for `want` to answer; returns how long after `since` it did.
fn wait_version(addr: SocketAddr, want: &str, since: Instant) -> Duration {
    wait_for(&format!("{want} answering on {addr}"), T, || {
        (version(addr).as_deref() == Some(want)).then(|| since.elapsed())
    })
}

#[test]
fn python_app_under_watch_reloads_on_save_and_keeps_serving_through_a_broken_save() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("watch-py");
    let app = dir.join("app.py");
    save(&app, &python_app("v1"));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--watch",
        dir.0.to_str().unwrap(),
        "--",
        "python3",
        app.to_str().unwrap(),
    ]);
    let addr = r.listen_addr(3);
    wait_version(addr, "v1", Instant::now());
    let load = Load::start(addr, 4);

    // An edit: the new version answers (the bench times it; 2 s is its target).
    let saved = Instant::now();
    save(&app, &python_app("v2"));
    let took = wait_version(addr, "v2", saved);
    eprintln!("v2 answered {} ms after the save", took.as_millis());
    r.log.wait("reload done", T);

    // A save that crashes on start: the old version keeps answering, and the
    // log shows why (the child's traceback and relaunch's verdict).
    save(
        &app,
        &format!("import no_such_module_xyz\n{}", python_app("v3")),
    );
    r.log.wait("ModuleNotFoundError", T);
    let verdict = r.log.wait("reload failed", T);
    assert!(
        verdict.contains("exited with status 1 before it was ready")
            && verdict.contains("keeps serving"),
        "{verdict}"
    );
    assert_eq!(version(addr).as_deref(), Some("v2"));

    // Fixed: the new version answers.
    let saved = Instant::now();
    save(&app, &python_app("v4"));
    wait_version(addr, "v4", saved);

    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    let versions: Vec<&str> = rep
        .pids
        .iter()
        .filter_map(|b| b.split_whitespace().next())
        .collect();
    assert!(!versions.contains(&"v3"), "{versions:?}");
    // Python's own __pycache__ writes (default-ignored) caused no reloads:
    // three saves, one of them broken.
    assert_eq!(
        r.log.count("reload: starting generation"),
        3,
        "{}",
        r.log.text()
    );
}

#[test]
fn a_failed_build_keeps_the_old_version_serving() {
    if !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("watch-build-fails");
    let app = dir.join("app.py");
    save(&app, &python_app("v1"));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--watch",
        dir.0.to_str().unwrap(),
        "--build",
        "sh -c 'echo compiling; echo oops >&2; exit 3'",
        "--",
        "python3",
        app.to_str().unwrap(),
    ]);
    let addr = r.listen_addr(3);
    // The first build fails too: what is there serves.
    r.log.wait("build failed", T);
    let old = wait_serving(addr);
    assert!(old.starts_with("v1 "), "{old}");
    let load = Load::start(addr, 4);
    save(&app, &python_app("v2"));
    let failed = r.log.wait_n("build failed", 2, T);
    assert!(failed.contains("exited with status 3"), "{failed}");
    assert!(failed.contains("generation 1 keeps serving"), "{failed}");
    // The tail of its output, both streams.
    let text = r.log.text();
    assert!(
        text.contains("  | compiling") && text.contains("  | oops"),
        "{text}"
    );
    assert!(text.contains("build | oops"), "shown live too: {text}");
    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    assert_eq!(get(addr).unwrap(), old, "the same process answers");
    assert_eq!(r.log.count("reload:"), 0, "no reload: {text}");
}

/// A tiny crate (no dependencies, so it builds offline) whose server says
/// its VERSION; its build script sleeps, so every build takes a while.
fn make_crate(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"devloop\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("build.rs"),
        "fn main() {\n    println!(\"cargo:rerun-if-changed=src\");\n    \
         std::thread::sleep(std::time::Duration::from_millis(1500));\n}\n",
    )
    .unwrap();
    set_version(dir, version);
}

fn set_version(dir: &Path, version: &str) {
    std::fs::write(
        dir.join("src/main.rs"),
        format!(
            r#"use std::io::{{Read, Write}};
use std::os::fd::FromRawFd;
use std::sync::atomic::{{AtomicBool, Ordering}};

const VERSION: &str = "{version}";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {{
    STOP.store(true, Ordering::SeqCst);
}}

#[repr(C)]
struct PollFd {{
    fd: i32,
    events: i16,
    revents: i16,
}}

unsafe extern "C" {{
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn poll(fds: *mut PollFd, n: u64, timeout_ms: i32) -> i32;
}}

fn main() {{
    // SIGTERM: finish the request in hand, then exit (std only, no crates).
    unsafe {{ signal(15, on_term) }};
    // SAFETY: relaunch passes the listener at fd 3.
    let listener = unsafe {{ std::net::TcpListener::from_raw_fd(3) }};
    while !STOP.load(Ordering::SeqCst) {{
        let mut fd = PollFd {{ fd: 3, events: 1, revents: 0 }};
        if unsafe {{ poll(&mut fd, 1, 100) }} != 1 {{
            continue;
        }}
        let Ok((mut s, _)) = listener.accept() else {{ continue }};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let body = format!("{{VERSION}} {{}}", std::process::id());
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {{}}\r\nConnection: close\r\n\r\n{{body}}", body.len());
    }}
}}
"#
        ),
    )
    .unwrap();
}

/// Where the crate's builds go: under this checkout's target/, kept between
/// runs so only the first build is a cold one.
fn crate_target() -> PathBuf {
    Path::new(relaunch_bin())
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("it-devloop")
}

#[test]
fn rust_dev_loop_rebuilds_while_the_old_binary_serves() {
    if !require_tool("cargo") {
        return;
    }
    let dir = TempDir::new("watch-rust");
    make_crate(&dir.0, "v1");
    let target = crate_target();
    let bin = target.join("debug/devloop");
    let mut cmd = Command::new(relaunch_bin());
    cmd.current_dir(&dir.0)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "-l",
            "127.0.0.1:0",
            "--watch",
            "src",
            "--build",
            "cargo build --offline",
            "--",
        ])
        .arg(&bin);
    let r = Relaunch::start_with(&mut cmd);
    let addr = r.listen_addr(3);
    // The first build comes before generation 1.
    r.log.wait("build succeeded", Duration::from_secs(120));
    wait_version(addr, "v1", Instant::now());
    let load = Load::start(addr, 4);

    set_version(&dir.0, "v2");
    r.log.wait("building; generation 1 serves meanwhile", T);
    // The build takes at least 1.5 s (build.rs): the old binary answers meanwhile.
    assert_eq!(version(addr).as_deref(), Some("v1"));
    assert_eq!(r.log.count("build succeeded"), 1, "still building");
    r.log.wait_n("build succeeded", 2, Duration::from_secs(120));
    wait_version(addr, "v2", Instant::now());
    r.log.wait("reload done", T);

    let rep = load.finish();
    assert_eq!(rep.failed(), 0, "{:?}", rep.errors);
    let versions: std::collections::BTreeSet<&str> = rep
        .pids
        .iter()
        .filter_map(|b| b.split_whitespace().next())
        .collect();
    assert!(
        versions.contains("v1") && versions.contains("v2"),
        "{versions:?}"
    );
}

#[test]
fn a_change_during_a_build_cancels_it_and_builds_again() {
    let dir = TempDir::new("watch-cancel");
    let marker = dir.join("builds");
    // Each build notes its start, then takes long; the test's second change
    // comes while the first build runs.
    let build = format!(
        "echo start >> {m}; sleep 30 & wait; echo done >> {m}",
        m = marker.display()
    );
    let app = App::new("watch-cancel-app", &pid_server(""));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let control = app.control();
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--control",
        control.to_str().unwrap(),
        "--watch",
        src.to_str().unwrap(),
        "--build",
        &build,
        "--",
        &app.script(),
    ]);
    let first = r
        .log
        .wait("first build: building", T)
        .split("pid=")
        .nth(1)
        .and_then(|p| p.trim().parse::<i32>().ok())
        .expect("the build's pid");
    // The build runs (not merely forked) when the change comes.
    wait_for("the first build to start", T, || {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|t| !t.is_empty())
    });
    let status = Command::new(relaunch_bin())
        .args(["status", "--control", control.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("watch: building (pid {first}, for ")),
        "{status}"
    );
    std::fs::write(src.join("a.txt"), "1").unwrap();
    r.log.wait("changed during the build: cancelling it", T);
    // The whole group goes, the shell's `sleep` too.
    wait_for("the cancelled build's group to be gone", T, || {
        (unsafe { libc::killpg(first, 0) } != 0).then_some(())
    });
    r.log.wait_n(": building", 2, T);
    wait_for("the second build to start", T, || {
        let text = std::fs::read_to_string(&marker).ok()?;
        (text.lines().count() >= 2).then_some(())
    });
    let text = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(text, "start\nstart\n", "two starts, no finish");
}

#[test]
fn bad_watch_paths_and_globs_are_usage_errors() {
    let dir = TempDir::new("watch-bad");
    let nosuch = dir.join("nosuch");
    let (status, log) = run_to_exit(
        &[
            "-l",
            "127.0.0.1:0",
            "--watch",
            nosuch.to_str().unwrap(),
            "--",
            "sleep",
            "60",
        ],
        T,
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("--watch") && log.contains("No such file"),
        "{log}"
    );
    assert!(
        log.contains("hint: give a directory or file that exists"),
        "{log}"
    );
    assert!(!log.contains("started pid="), "nothing was started: {log}");

    let (status, log) = run_to_exit(
        &[
            "-l",
            "127.0.0.1:0",
            "--watch",
            dir.0.to_str().unwrap(),
            "--ignore",
            "{a,b",
            "--",
            "sleep",
            "60",
        ],
        T,
    );
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--ignore \"{a,b\""), "{log}");

    // Options of the watch that would otherwise be ignored in silence.
    for option in [
        &["--debounce", "1s"][..],
        &["--build", "true"],
        &["--ignore", "*.log"],
    ] {
        let mut args = vec!["-l", "127.0.0.1:0"];
        args.extend_from_slice(option);
        args.extend_from_slice(&["--", "sleep", "60"]);
        let (status, log) = run_to_exit(&args, T);
        assert_eq!(status.code(), Some(2), "{option:?} without --watch: {log}");
        assert!(log.contains("--watch"), "{option:?}: {log}");
        assert!(!log.contains("started pid="), "nothing was started: {log}");
    }
}

/// relaunch alone, without its helper beside it: --watch says what is missing.
#[test]
fn watch_without_its_helper_says_so() {
    let dir = TempDir::new("watch-alone");
    let alone = dir.join("relaunch");
    std::fs::copy(relaunch_bin(), &alone).unwrap();
    let mut cmd = Command::new(&alone);
    cmd.args(["-l", "127.0.0.1:0", "--watch"])
        .arg(&dir.0)
        .args(["--", "sleep", "60"]);
    let mut r = Relaunch::start_with(&mut cmd);
    let status = r.wait_exit(T);
    let log = r.log.text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--watch needs relaunch-watch beside relaunch")
            && log.contains("hint: `cargo install` installs both"),
        "{log}"
    );
}

/// The watcher dying is said, and the server goes on serving.
#[test]
fn a_watcher_that_dies_is_reported_and_the_server_keeps_serving() {
    let dir = TempDir::new("watch-dies");
    let app = App::new("watch-dies-app", &pid_server(""));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--watch",
        dir.0.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let pid = wait_serving(addr);
    let helper = wait_for("relaunch-watch among relaunch's children", T, || {
        children_of(r.pid()).into_iter().find(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|comm| comm.trim() == "relaunch-watch")
        })
    });
    unsafe { libc::kill(helper, libc::SIGKILL) };
    let line = r.log.wait("the file watcher", T);
    assert!(
        line.contains("killed by signal 9") && line.contains("no longer seen"),
        "{line}"
    );
    assert_eq!(get(addr).unwrap(), pid);
}

/// A watched directory that a build removes and makes again (`rm -rf dist &&
/// mkdir dist`) is watched again: each of two later edits reloads. So is
/// one whose parent went too (`rm -rf build && mkdir -p build/dist`).
#[test]
fn a_watched_directory_removed_and_made_again_is_still_watched() {
    let dir = TempDir::new("watch-remade");
    let build = dir.join("build");
    let dist = build.join("dist");
    std::fs::create_dir_all(dist.join("sub")).unwrap();
    let app = App::new("watch-remade-app", &pid_server(""));
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--watch",
        dist.to_str().unwrap(),
        "--",
        &app.script(),
    ]);
    let addr = r.listen_addr(3);
    let mut pid = wait_serving(addr);
    for (gone, round) in [(&dist, 1), (&build, 2)] {
        std::fs::remove_dir_all(gone).unwrap();
        std::fs::create_dir_all(&dist).unwrap();
        // The removal and the re-creation are changes too.
        pid = wait_new_pid(addr, &pid);
        for edit in ["one", "two"] {
            let file = dist.join(format!("{edit}-{round}.txt"));
            std::fs::write(&file, "edit").unwrap();
            // Said alone ("PATH changed") or first of several, when the
            // debounce takes it together with the re-creation ("PATH and
            // 3 other paths changed").
            r.log.wait(&file.display().to_string(), T);
            pid = wait_new_pid(addr, &pid);
        }
    }
    assert_eq!(r.log.count("reload failed"), 0, "{}", r.log.text());
}
