//! Unix socket listeners: a stale socket file is replaced and a live one
//! refused, the file's mode and group.

use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(15);

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
