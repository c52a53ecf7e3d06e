//! The old image's side of an upgrade in place: find the new binary, run
//! its handshake under a deadline, then exec it with the state (see
//! [`handover`] for the protocol). The binary is opened once: the handshake
//! runs that file and the exec executes it (`execveat`), so a file swapped
//! in at the path meanwhile never runs.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::control::Reply;
use crate::exit::ExitStatus;
use crate::supervise::handover::{self, CHECK_FLAG, FORMAT};
use crate::supervise::spawn;

/// The new binary's handshake, running.
pub struct Check {
    pub binary: PathBuf,
    /// The file at `binary` when the upgrade began (O_PATH).
    image: OwnedFd,
    pub reply: Option<Reply>,
    pub pid: i32,
    /// What it prints (stdout and stderr), read once it has exited.
    output: OwnedFd,
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

/// Starts `binary --upgrade-check FORMAT` with `state` on stdin. Forks from
/// the event loop's thread; its exit is reaped by relaunch's one reaper.
pub fn start(
    binary: PathBuf,
    reply: Option<Reply>,
    state: &[u8],
) -> Result<Check, (String, Option<Reply>)> {
    let run = || -> std::io::Result<(i32, OwnedFd, OwnedFd)> {
        let image = open(&binary)?;
        // Run through its fd, as the exec will be: a copy without
        // close-on-exec, as a script's interpreter opens it by that name.
        let handed = nix::unistd::dup(&image)?;
        let stdin = handover::seal(state)?;
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // Only the read end is non-blocking: the write end is the child's.
        nix::fcntl::fcntl(
            &wr,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        let mut cmd = Command::new(format!("/proc/self/fd/{}", handed.as_raw_fd()));
        std::os::unix::process::CommandExt::arg0(&mut cmd, &binary);
        cmd.arg(CHECK_FLAG)
            .arg(FORMAT.to_string())
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(wr.try_clone()?))
            .stderr(Stdio::from(wr));
        for var in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "LISTEN_PIDFDID",
            "NOTIFY_SOCKET",
            handover::ENV,
        ] {
            cmd.env_remove(var);
        }
        let child = cmd.spawn()?;
        drop(handed);
        // Never waited for here: the reaper collects it.
        Ok((child.id() as i32, rd, image))
    };
    match run() {
        Ok((pid, output, image)) => Ok(Check {
            binary,
            image,
            reply,
            pid,
            output,
            exit: None,
            timed_out: false,
        }),
        Err(e) => Err((
            format!("cannot run {} {CHECK_FLAG}: {e}", binary.display()),
            reply,
        )),
    }
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
}
