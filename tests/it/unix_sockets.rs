//! Unix socket listeners: a stale socket file is replaced and a live one
//! refused (also one relaunch may not connect to), the file's mode and group.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn unix_socket_stale_file_is_replaced_and_live_one_refused() {
    let dir = TempDir::new("unix");
    let path = dir.join("app.sock");
    // A stale file: bound, then the owner went away.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let spec = format!("unix:{}", path.display());
    let r = Relaunch::start(&["-l", &spec, "--", "sleep", "60"]);
    r.log.wait("listening on unix:", T);
    // Now it is live: a second relaunch must refuse it.
    let (s, log) = run_to_exit(&["-l", &spec, "--", "true"], T);
    assert_eq!(s.code(), Some(1), "{log}");
    assert!(log.contains("already in use"), "{log}");
    assert!(
        path.exists(),
        "the refused relaunch did not remove the live file"
    );
    drop(r);
    assert!(!path.exists());
    let (s, log) = run_to_exit(&["-l", "unix:/nonexistent-dir/x.sock", "--", "true"], T);
    assert_eq!(s.code(), Some(1), "{log}");
    assert!(log.contains("does not exist"), "{log}");
}

#[test]
fn unix_socket_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("unix-mode");
    let path = dir.join("app.sock");
    let default = dir.join("default.sock");
    let spec = format!("unix:{},mode=0640,group=65534", path.display());
    let spec2 = format!("unix:{}", default.display());
    let r = Relaunch::start(&["-l", &spec, "-l", &spec2, "--", "sleep", "60"]);
    r.log.wait("as fd 4", T);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), 65534);
    // The documented default, as systemd's SocketMode=.
    assert_eq!(
        std::fs::metadata(&default).unwrap().permissions().mode() & 0o777,
        0o666
    );
}

#[test]
fn a_live_socket_relaunch_may_not_connect_to_is_never_unlinked() {
    if unsafe { libc::geteuid() } != 0 || !require_tool("setpriv") {
        eprintln!("live socket of another user: NOT RUN: needs root and setpriv");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    // A shared folder: relaunch (as nobody) may create files here, and may
    // unlink root's, but must not: root's server is live on it.
    let dir = TempDir::new("others-sock");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let spec = format!("unix:{}", path.display());
    let mut r = Relaunch::start_with(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                relaunch_bin(),
            ])
            .args(["-l", &spec, "--restart", "never", "--", "true"]),
    );
    let status = r.wait_exit(T);
    let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
    assert_eq!(
        now,
        Some(inode),
        "relaunch replaced a live socket it could not connect to (EACCES is not ECONNREFUSED); log:\n{}",
        r.log.text()
    );
    assert_eq!(status.code(), Some(1), "{}", r.log.text());
    drop(live);
}
