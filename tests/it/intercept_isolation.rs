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

/// Binds the port in argv[1] on 0.0.0.0 and says on stderr, after `tag`,
/// whether the socket it got lives in this network namespace ("own") or
/// in another ("foreign": relaunch's), or the bind's error.
const BIND_AND_TELL: &str = r#"
import os, signal, socket, sys
port, tag = int(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:
    os.setgroups([])
    os.setgid(int(sys.argv[3]))
    os.setuid(int(sys.argv[3]))
SO_NETNS_COOKIE = 71
cookie = lambda s: s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", port))
    s.listen()
    where = "own" if cookie(s) == cookie(socket.socket()) else "foreign"
    print(f"{tag}: bound, {where}", file=sys.stderr, flush=True)
except OSError as e:
    print(f"{tag}: {e.strerror}", file=sys.stderr, flush=True)
signal.pause()
"#;

/// A sandboxed plugin or a container runtime under the child: it binds
/// the held port in its own network namespace, and gets a socket there,
/// never relaunch's (a host client would reach it).
#[test]
fn a_child_in_another_network_namespace_binds_its_own_socket() {
    if !as_root("unshare -n child") || !require_tool("python3") || !require_tool("unshare") {
        return;
    }
    let dir = TempDir::new("netns");
    let script = dir.join("app.py");
    std::fs::write(&script, BIND_AND_TELL).unwrap();
    let port = free_port();
    let p = port.to_string();
    let r = Relaunch::start(&[
        "--port",
        &p,
        "--",
        "unshare",
        "-n",
        "python3",
        script.to_str().unwrap(),
        &p,
        "netns-bind",
    ]);
    let line = r.log.wait("netns-bind:", T);
    assert!(line.ends_with("bound, own"), "{line}\n{}", r.log.text());
    assert_eq!(r.log.count("got relaunch's socket"), 0, "{}", r.log.text());
    // The host's port is still relaunch's, unmoved, with nobody behind it.
    held_listeners_on(port);
}

/// A child started as root whose descendant drops to another uid: that
/// process is not the child relaunch started, and does not get the
/// listener; its bind runs as it is (EADDRINUSE), and relaunch says why.
#[test]
fn a_descendant_under_another_uid_does_not_get_the_listener() {
    if !as_root("uid drop") || !require_tool("python3") {
        return;
    }
    let dir = TempDir::new("uid-drop");
    let script = dir.join("app.py");
    std::fs::write(&script, BIND_AND_TELL).unwrap();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    let p = port.to_string();
    let nobody = NOBODY.to_string();
    let r = Relaunch::start(&[
        "--port",
        &p,
        "--",
        "python3",
        script.to_str().unwrap(),
        &p,
        "uid-bind",
        &nobody,
    ]);
    let line = r.log.wait("uid-bind:", T);
    assert!(
        line.ends_with("uid-bind: Address already in use"),
        "{line}\n{}",
        r.log.text()
    );
    let why = r.log.wait("runs as uid 65534", T);
    assert!(why.contains("not the uid relaunch started"), "{why}");
}

/// A child in its own mount namespace, with another folder mounted where
/// relaunch's socket file is: the path there names another file, so its
/// bind makes its own socket file, never gets relaunch's.
#[test]
fn a_child_in_another_mount_namespace_binds_its_own_path() {
    if !as_root("unshare -m child")
        || !require_tool("python3")
        || !require_tool("unshare")
        || !require_tool("mount")
    {
        return;
    }
    let dir = TempDir::new("mntns");
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    let path = run.join("app.sock");
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        r#"
import os, signal, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen()
where = "own file" if os.path.exists(path) else "no file"
print(f"mntns-bind: bound, {where}", file=sys.stderr, flush=True)
signal.pause()
"#,
    )
    .unwrap();
    let spec = format!("unix:{}", path.display());
    let inner = format!(
        "mount -t tmpfs none {} && exec python3 {} {}",
        run.display(),
        script.display(),
        path.display()
    );
    let r = Relaunch::start(&["-l", &spec, "--", "unshare", "-m", "sh", "-c", &inner]);
    let line = r.log.wait("mntns-bind:", T);
    assert!(
        line.ends_with("bound, own file"),
        "{line}\n{}",
        r.log.text()
    );
    assert_eq!(r.log.count("got relaunch's socket"), 0, "{}", r.log.text());
    // relaunch's file is still where it was, in relaunch's namespace.
    assert!(std::fs::symlink_metadata(&path).is_ok());
}
