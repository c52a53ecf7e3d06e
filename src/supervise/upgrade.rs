//! The old image's side of an upgrade in place: find the new binary, run
//! its handshake under a deadline, then exec it with the state (see
//! [`handover`] for the protocol). The binary is opened once: the handshake
//! runs that file and the exec executes it (`execveat`), so a file swapped
//! in at the path meanwhile never runs.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::control::ReplyId;
use crate::exit::ExitStatus;
use crate::supervise::handover::{self, CHECK_FLAG, FORMAT};
use crate::supervise::spawn;

/// The new binary's handshake, running.
pub struct Check {
    pub binary: PathBuf,
    /// The file at `binary` when the upgrade began (O_PATH).
    image: OwnedFd,
    pub reply: Option<ReplyId>,
    pub pid: i32,
    /// What it prints (stdout and stderr), read once it has exited.
    output: OwnedFd,
    /// Whether its exec worked.
    exec: spawn::ExecWatch,
    /// Set by the reaper.
    pub exit: Option<ExitStatus>,
    /// It ran past the deadline and was killed.
    pub timed_out: bool,
}

/// The file to exec: `asked`, or the path relaunch was started from (as
/// /proc/self/exe names it, even once replaced).
pub fn binary_path(asked: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match asked {
        Some(p) if p.is_absolute() => p,
        Some(p) => {
            return Err(format!(
                "--binary {} is not an absolute path (relaunch runs in another folder)",
                p.display()
            ));
        }
        None => {
            let exe = std::fs::read_link("/proc/self/exe")
                .map_err(|e| format!("cannot read /proc/self/exe ({e}); pass --binary PATH"))?;
            strip_deleted(exe)
        }
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!(
            "cannot use {} ({e}); put the new relaunch there, or pass --binary PATH",
            path.display()
        )),
    }
}

/// Pure: a replaced binary's link reads "PATH (deleted)"; the new file is
/// at PATH.
fn strip_deleted(exe: PathBuf) -> PathBuf {
    match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(p) => PathBuf::from(OsString::from_vec(p.to_vec())),
        None => exe,
    }
}

/// Starts `binary --upgrade-check FORMAT` with `state` on stdin, as every
/// child is started ([`spawn::spawn`]: forked from the event loop's thread,
/// its own group, a death signal); its exit is reaped by relaunch's one
/// reaper.
pub fn start(
    binary: PathBuf,
    reply: Option<ReplyId>,
    state: &[u8],
) -> Result<Check, (String, Option<ReplyId>)> {
    let cannot =
        |e: &dyn std::fmt::Display| format!("cannot run {} {CHECK_FLAG}: {e}", binary.display());
    let run = || -> Result<(spawn::Spawned, OwnedFd, OwnedFd), String> {
        let image = open(&binary).map_err(|e| cannot(&e))?;
        let stdin = handover::seal(state).map_err(|e| cannot(&e))?;
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| cannot(&e))?;
        // Only the read end is non-blocking: the write end is the child's.
        nix::fcntl::fcntl(
            &wr,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| cannot(&e))?;
        let hidden = [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "LISTEN_PIDFDID",
            "NOTIFY_SOCKET",
            handover::ENV,
        ];
        let env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !hidden.iter().any(|h| k == h))
            .collect();
        // The very file the exec will run: through our fd, by a name that
        // means the same in the child (and to a script's interpreter) as
        // here, while we hold the fd.
        let program: OsString = through(&image).into();
        let spawned = spawn::spawn(&spawn::Request {
            program: &program,
            args: &[CHECK_FLAG.into(), FORMAT.to_string().into()],
            env: &env,
            fds: &[],
            listen_pid: false,
            creds: None,
            intercept: None,
            traps: Default::default(),
            stdio: Some((stdin.as_fd(), wr.as_fd(), wr.as_fd())),
        })
        .map_err(|e| by_name(e.to_string(), &image, &binary))?;
        Ok((spawned, rd, image))
    };
    match run() {
        Ok((spawned, output, image)) => Ok(Check {
            binary,
            image,
            reply,
            pid: spawned.pid,
            output,
            exec: spawned.exec,
            exit: None,
            timed_out: false,
        }),
        Err(why) => Err((why, reply)),
    }
}

/// The name of the file open at `image`, here and in a child.
fn through(image: &OwnedFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), image.as_raw_fd())
}

/// `text` about the file run through `image`, said by its own name.
fn by_name(text: String, image: &OwnedFd, binary: &Path) -> String {
    text.replace(&through(image), &binary.display().to_string())
}

/// The file at `path`, opened once (O_PATH: no read permission needed to
/// exec it), and a regular file.
fn open(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    Ok(file.into())
}

impl Check {
    /// Once it has exited: Ok(the new image) or why it is refused.
    pub fn verdict(&self) -> Result<String, String> {
        if let spawn::ExecStatus::Failed(e) = self.exec.check() {
            return Err(by_name(e.to_string(), &self.image, &self.binary));
        }
        let mut out = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < out.len() {
            match nix::unistd::read(&self.output, &mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let exit = match (self.timed_out, self.exit) {
            (false, Some(status)) => Some((status.success(), status.to_string())),
            _ => None,
        };
        handover::check_verdict(&out[..got], exit)
            .map_err(|why| format!("{}: {why}", self.binary.display()))
    }
}

/// Executes the file the handshake ran in place, with `state` sealed in a
/// memfd and the fds it names left open (the file's own fd among them, for
/// the new image to close). Returns only if execveat failed, with
/// everything as it was except the signal mask (the caller restores it).
pub fn exec<C: serde::Serialize>(check: &Check, state: &mut handover::State<C>) -> String {
    let binary = &check.binary;
    state.fds.image = Some(check.image.as_raw_fd());
    let json = match serde_json::to_vec(state) {
        Ok(j) => j,
        Err(e) => return format!("cannot encode the state: {e}"),
    };
    let memfd = match handover::seal(&json) {
        Ok(fd) => fd,
        Err(e) => return format!("cannot create the state memfd: {e}"),
    };
    let fds: Vec<RawFd> = state
        .fds
        .all()
        .into_iter()
        .chain([memfd.as_raw_fd()])
        .collect();
    let cstr = |b: &[u8]| CString::new(b).ok();
    let argv: Option<Vec<CString>> = std::env::args_os().map(|a| cstr(a.as_bytes())).collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != handover::ENV && k != spawn::FD_LIMIT_ENV)
        .collect();
    env.push((handover::ENV.into(), memfd.as_raw_fd().to_string().into()));
    if let Some(n) = spawn::started_fd_limit() {
        env.push((spawn::FD_LIMIT_ENV.into(), n.to_string().into()));
    }
    let envp: Option<Vec<CString>> = env
        .iter()
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let (Some(argv), Some(envp)) = (argv, envp) else {
        return "an argument or variable holds a NUL byte".into();
    };
    let mut cleared = Vec::new();
    for &fd in &fds {
        if !handover::set_cloexec(fd, false) {
            for &fd in &cleared {
                handover::set_cloexec(fd, true);
            }
            return format!("fd {fd} of the state is not open (a bug in relaunch)");
        }
        cleared.push(fd);
    }
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: an open fd, NUL-terminated strings and NULL-terminated arrays
    // that live until the call returns (it returns only on failure).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            check.image.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    let err = std::io::Error::last_os_error();
    for &fd in &cleared {
        handover::set_cloexec(fd, true);
    }
    drop(memfd);
    format!("execveat {}: {err}", binary.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaced_binary_is_found_at_its_path() {
        assert_eq!(
            strip_deleted("/opt/relaunch/bin/relaunch (deleted)".into()),
            PathBuf::from("/opt/relaunch/bin/relaunch")
        );
        assert_eq!(
            strip_deleted("/usr/bin/relaunch".into()),
            PathBuf::from("/usr/bin/relaunch")
        );
    }

    #[test]
    fn binary_must_be_absolute_and_a_file() {
        assert!(
            binary_path(Some("relaunch".into()))
                .unwrap_err()
                .contains("not an absolute path")
        );
        assert!(
            binary_path(Some("/".into()))
                .unwrap_err()
                .contains("is not a file")
        );
        assert!(
            binary_path(Some("/nonexistent/relaunch".into()))
                .unwrap_err()
                .contains("cannot use")
        );
        assert!(binary_path(None).is_ok());
    }

    /// A script at a fresh path, with `mode`.
    fn script(name: &str, body: &str, mode: u32) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("relaunch-upgrade-{}-{name}", std::process::id()));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// The handshake of `binary` run to its end, reaped as the reaper would.
    fn handshake(binary: &Path, state: &[u8]) -> Result<String, String> {
        let mut check = start(binary.to_path_buf(), None, state).map_err(|(why, _)| why)?;
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(check.pid), None).unwrap();
        check.exit = ExitStatus::of_wait(status).map(|(_, s)| s);
        check.verdict()
    }

    #[test]
    fn the_handshake_gets_the_state_on_stdin_and_its_output_is_read() {
        let ok = script(
            "ok",
            &format!(
                "read -r state; [ \"$state\" = hello ] || exit 3; \
                 echo noise >&2; echo '{} format {FORMAT}, 9.9.9'",
                handover::CHECK_OK
            ),
            0o755,
        );
        assert_eq!(handshake(&ok, b"hello\n"), Ok("9.9.9".to_string()));
        let failing = script("fails", "echo 'libfoo.so missing' >&2; exit 1", 0o755);
        let why = handshake(&failing, b"").unwrap_err();
        assert!(why.contains("status 1: libfoo.so missing"), "{why}");
        let _ = std::fs::remove_file(ok);
        let _ = std::fs::remove_file(failing);
    }

    /// Like every child relaunch starts: ended as a group, not reached by
    /// what a terminal sends relaunch's group.
    #[test]
    fn the_handshake_runs_in_its_own_process_group() {
        let group = script(
            "group",
            &format!(
                "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo \"{} format {FORMAT}, $$ $pgid\"",
                handover::CHECK_OK
            ),
            0o755,
        );
        let said = handshake(&group, b"").unwrap();
        let (pid, pgid) = said.split_once(' ').unwrap();
        assert_eq!(pid, pgid, "{said}");
        let _ = std::fs::remove_file(group);
    }

    #[test]
    fn a_new_binary_that_cannot_be_executed_is_refused_with_the_reason() {
        let plain = script("plain", "exit 0", 0o644);
        let why = handshake(&plain, b"").unwrap_err();
        assert!(
            why.contains(&plain.display().to_string())
                && why.to_lowercase().contains("permission denied"),
            "{why}"
        );
        let _ = std::fs::remove_file(plain);
    }
}
