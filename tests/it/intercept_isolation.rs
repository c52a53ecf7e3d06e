//! Interception stays inside the child relaunch started: a swapped socket
//! folder, another network namespace or another uid never gets root's
//! listener or root's hand on a file.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

const NOBODY: u32 = 65534;

fn as_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{test}: NOT RUN: relaunch must start as root");
        return false;
    }
    true
}

/// An app running as --user, which may write the folders above its socket,
/// deletes relaunch's socket file, swaps the socket's folder for a symlink
/// to a folder only root may write, and binds the path: relaunch, as root,
/// must not make (or chown) a socket in that other folder.
#[test]
fn a_socket_folder_swapped_for_a_symlink_gets_no_socket_elsewhere() {
    if !as_root("swapped socket folder") || !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("swap-folder");
    let target = TempDir::new("swap-target");
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    for d in [&dir.0, &sub] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        r#"
import os, signal, socket, sys
d, target = sys.argv[1], sys.argv[2]
sub, old = os.path.join(d, "sub"), os.path.join(d, "old")
if not os.path.islink(sub):
    os.unlink(os.path.join(sub, "app.sock"))
    os.rename(sub, old)
    os.symlink(target, sub)
s = socket.socket(socket.AF_UNIX)
try:
    s.bind(os.path.join(sub, "app.sock"))
    print("swap-bind: bound", file=sys.stderr, flush=True)
except OSError as e:
    print(f"swap-bind: {e}", file=sys.stderr, flush=True)
signal.pause()
"#,
    )
    .unwrap();
    let spec = format!("unix:{}", sub.join("app.sock").display());
    let r = Relaunch::start_with(Command::new(relaunch_bin()).args([
        "-l",
        &spec,
        "--user",
        "nobody",
        "--",
        "python3",
        script.to_str().unwrap(),
        dir.0.to_str().unwrap(),
        target.0.to_str().unwrap(),
    ]));
    r.log.wait("swap-bind:", T);
    let made: Vec<_> = std::fs::read_dir(&target.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        made.is_empty(),
        "relaunch made {made:?} in a folder the app may not write\n{}",
        r.log.text()
    );
}
