//! The state one relaunch image hands to the next when it upgrades itself
//! in place (`relaunch upgrade`, SIGUSR2): same pid, same listeners, same
//! children.
//!
//! - The old image asks the new binary first: `NEW --upgrade-check FORMAT`,
//!   with the state on stdin. The new binary parses it without adopting
//!   anything and prints [`CHECK_OK`] and its image, or exits non-zero with
//!   the reason. A binary that does not answer within [`CHECK_DEADLINE`] is
//!   refused.
//! - Then the old image writes the state into a sealed memfd (versioned
//!   JSON), clears close-on-exec on exactly the fds the state names
//!   ([`Fds::all`]) and on the memfd, blocks every signal (pending ones stay
//!   pending across execve) and execs the new binary with its own argv and
//!   environment plus `RELAUNCH_UPGRADE_STATE=<memfd>`. If execve fails, it
//!   undoes that and goes on.
//! - The new image ([`take`]) reads and closes the memfd, checks that the
//!   state is for this pid and this format and that its fds are each named
//!   once, open and above stderr ([`Fds::claim`]; the handshake checks what
//!   it can of that too), marks every fd close-on-exec again, adopts them
//!   and unblocks signals once its handlers are in.
//!
//! Instants travel as CLOCK_MONOTONIC microseconds ([`crate::serial::mono`]), which the
//! exec does not reset, so deadlines keep their place in time.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use serde::de::DeserializeOwned;

use crate::control::Request;
use crate::error::{Error, Result};
use crate::supervise::spawn::ExecFd;

/// Bumped whenever [`State`] changes in a way an older reader would misread.
/// 2: bind interception's fds and table (a reader of 1 would drop them).
/// 3: the metrics socket (a reader of 2 would leave it open for the
/// children, and fail to bind its port again).
/// 4: each generation's own sockets (the drain's groups, a Unix listener's
/// renamed-in sockets), a drain's end of reads, a canary and its share,
/// the probes (a reader of 3 would drop the sockets, stop a serving
/// generation at a rollback, or steer a canary everything).
pub const FORMAT: u32 = 4;
/// The oldest format this image still reads: what later formats added has
/// a default (format 1 is a relaunch without interception to carry).
pub const OLDEST: u32 = 1;
/// The variable that names the memfd in the new image.
pub const ENV: &str = "RELAUNCH_UPGRADE_STATE";
/// The new binary's handshake flag (first argument).
pub const CHECK_FLAG: &str = "--upgrade-check";
/// How the new binary's handshake answer starts.
pub const CHECK_OK: &str = "relaunch upgrade-check ok:";
/// How long the new binary may take to answer the handshake.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// A state larger than this is refused (it is a few KiB).
const MAX_STATE: u64 = 64 * 1024 * 1024;

/// Everything the next image needs: this envelope, and what the runtime
/// carries in it (`C`, its fields side by side with these in the JSON).
#[derive(Serialize, Deserialize, Debug)]
pub struct State<C> {
    pub format: u32,
    /// The process the state is for: a stray RELAUNCH_UPGRADE_STATE in
    /// another process's environment names nothing of its own.
    pub pid: u32,
    /// The image that wrote it.
    pub from: String,
    /// Signals blocked before the upgrade blocked them all.
    pub sigmask: Vec<i32>,
    #[serde(flatten)]
    pub carried: C,
    pub fds: Fds,
}

/// Every fd the state hands over, and nothing else: the one place that
/// lists the fd-owning pieces of the driver. A new piece (say, per-child
/// seccomp notification fds) is a field here and its line in [`Fds::all`]
/// (which destructures, so a field left out does not compile); the driver
/// fills it in `save` and takes it back in `adopt`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Fds {
    /// The listeners, in the children's order (fd 3, 4, ...).
    pub listeners: Vec<ListenerFd>,
    /// The control socket.
    pub control: Option<FileFd>,
    /// One notify socket per generation.
    pub notify: Vec<NotifyFd>,
    /// Exec status pipes of children that may not have exec'd yet.
    pub execs: Vec<ExecFd>,
    /// Control connections owed an answer: `relaunch reload` clients by
    /// the generation whose outcome answers them.
    pub waiters: Vec<(u64, RawFd)>,
    /// Requests read but not yet handled, with their connections.
    pub requests: Vec<(Request, RawFd)>,
    /// The connection of the `relaunch upgrade` that asked for this one.
    pub upgrade: Option<RawFd>,
    /// Bind interception: each child's seccomp notification fd, whose
    /// handler thread parked for the upgrade.
    #[serde(default)]
    pub intercept: Vec<crate::intercept::handler::Carried>,
    /// The keeper's pipe (see [`crate::supervise::keeper`]).
    #[serde(default)]
    pub keeper: Option<crate::supervise::keeper::Saved>,
    /// The `--metrics` listening socket.
    #[serde(default)]
    pub metrics: Option<RawFd>,
    /// The file the old image executed (the one its handshake ran), left
    /// open for a script's interpreter: the new image only closes it.
    #[serde(default)]
    pub image: Option<RawFd>,
    /// Each listener's SO_REUSEPORT group, where old generations drain.
    #[serde(default)]
    pub groups: Vec<GroupFds>,
}

/// One listener's group: its members, in slot order, and the rest.
#[derive(Serialize, Deserialize, Debug)]
pub struct GroupFds {
    pub members: Vec<RawFd>,
    pub saved: crate::sockets::group::Saved,
    /// A Unix listener's generations (then `saved` is empty).
    #[serde(default)]
    pub unix: Option<crate::sockets::unix_group::UnixSaved>,
}

impl Fds {
    /// Every fd named above.
    pub fn all(&self) -> Vec<RawFd> {
        let Fds {
            listeners,
            control,
            notify,
            execs,
            waiters,
            requests,
            upgrade,
            intercept,
            keeper,
            metrics,
            image,
            groups,
        } = self;
        listeners
            .iter()
            .map(|l| l.fd)
            .chain(control.iter().map(|c| c.fd))
            .chain(notify.iter().map(|n| n.fd))
            .chain(execs.iter().map(|e| e.fd))
            .chain(waiters.iter().map(|w| w.1))
            .chain(requests.iter().map(|r| r.1))
            .chain(upgrade.iter().copied())
            .chain(intercept.iter().map(|c| c.fd))
            .chain(keeper.iter().map(|k| k.fd))
            .chain(metrics.iter().copied())
            .chain(image.iter().copied())
            .chain(groups.iter().flat_map(|g| g.members.iter().copied()))
            .collect()
    }
}

impl Fds {
    /// Pure: each fd named once, and none of stdin, stdout and stderr
    /// (nothing relaunch hands over lives there).
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for fd in self.all() {
            if fd <= 2 {
                return Err(format!(
                    "it names fd {fd}, which relaunch never hands over (stdin, stdout, stderr \
                     or no fd at all)"
                ));
            }
            if !seen.insert(fd) {
                return Err(format!("it names fd {fd} twice"));
            }
        }
        Ok(())
    }

    /// The new image, before adopting anything: every fd is open and none
    /// is the state's own memfd (`state`, closed once read); then each is
    /// close-on-exec again. All or nothing: a refused state takes no fd.
    pub fn claim(&self, state: Option<RawFd>) -> std::result::Result<(), String> {
        self.check()?;
        let fds = self.all();
        for &fd in &fds {
            if Some(fd) == state {
                return Err(format!("it names fd {fd}, the state's own memfd"));
            }
            // SAFETY: F_GETFD only reads a flag; EBADF on a closed fd.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("it names fd {fd}, which is not open"));
            }
        }
        for fd in fds {
            set_cloexec(fd, true);
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ListenerFd {
    pub name: String,
    pub fd: RawFd,
    /// The Unix socket file relaunch created for it.
    pub file: Option<OwnedPath>,
    /// `,nonblock` (absent in a state from an image without it).
    #[serde(default)]
    pub nonblock: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct FileFd {
    pub fd: RawFd,
    pub file: OwnedPath,
}

/// A file relaunch created and removes on exit if the path still names it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct OwnedPath {
    pub path: PathBuf,
    pub identity: (u64, u64),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NotifyFd {
    pub generation: u64,
    pub fd: RawFd,
    /// The NOTIFY_SOCKET value its children were given.
    pub env: String,
}

/// Writes `state` into a new sealed memfd (close-on-exec until the exec).
pub fn seal(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated name and flags; the fd returned is
    // new and ours alone.
    let fd = unsafe {
        libc::memfd_create(
            c"relaunch-upgrade".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created above.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // Read from the start by whoever gets it as stdin.
    file.seek(std::io::SeekFrom::Start(0))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own open fd with integer arguments.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Reads a sealed state memfd whole (from offset 0).
fn unseal(fd: &OwnedFd) -> std::result::Result<Vec<u8>, String> {
    let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own, integer arguments.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & want != want {
        return Err("it is not a sealed memfd".into());
    }
    let file = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_STATE {
        return Err(format!("it holds {len} bytes, more than any state"));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Pure: the state in `bytes`, checked for `format` and `pid`.
pub fn parse<C: DeserializeOwned>(
    bytes: &[u8],
    pid: Option<u32>,
) -> std::result::Result<State<C>, String> {
    // The format first, so a newer layout is named as such rather than as
    // a missing field.
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| format!("not a state: {e}"))?;
    if !(OLDEST..=FORMAT).contains(&head.format) {
        return Err(format!(
            "it is in upgrade state format {}, this relaunch {} reads formats {OLDEST} to {FORMAT}",
            head.format,
            crate::version::image()
        ));
    }
    let state: State<C> =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed state: {e}"))?;
    if let Some(pid) = pid
        && state.pid != pid
    {
        return Err(format!(
            "it was written for pid {}, this is pid {pid}",
            state.pid
        ));
    }
    state.fds.check()?;
    Ok(state)
}

/// The new image: the state named by `RELAUNCH_UPGRADE_STATE`, read once.
/// The memfd is closed here whatever happens.
pub fn take<C: DeserializeOwned>(value: &std::ffi::OsStr) -> Result<State<C>> {
    let hint = "RELAUNCH_UPGRADE_STATE is set by a relaunch upgrading itself; unset it to start relaunch afresh";
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&fd| fd > 2)
        .ok_or_else(|| {
            Error::usage(format!(
                "RELAUNCH_UPGRADE_STATE={} is not an fd number",
                value.to_string_lossy()
            ))
            .hint(hint)
        })?;
    if !set_cloexec(fd, true) {
        return Err(Error::usage(format!(
            "RELAUNCH_UPGRADE_STATE names fd {fd}, which is not open"
        ))
        .hint(hint));
    }
    // SAFETY: the fd is open (fcntl worked) and the protocol makes it ours:
    // the previous image left it for us alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bad = |why: String| {
        Error::runtime(format!(
            "cannot adopt the upgrade state in fd {}: {why}",
            fd.as_raw_fd()
        ))
        .hint(hint)
    };
    let bytes = unseal(&fd).map_err(bad)?;
    let state: State<C> = parse(&bytes, Some(std::process::id())).map_err(bad)?;
    state.fds.claim(Some(fd.as_raw_fd())).map_err(bad)?;
    Ok(state)
}

/// The new binary's side of the handshake: `relaunch --upgrade-check N`
/// with the state on stdin. Returns the exit code and the line to print
/// (stdout when 0, stderr otherwise).
pub fn check<C: DeserializeOwned>(
    format: Option<&std::ffi::OsStr>,
    stdin: impl Read,
) -> (i32, String) {
    let asked = format
        .and_then(|f| f.to_str())
        .and_then(|f| f.parse::<u32>().ok());
    match asked {
        Some(f) if (OLDEST..=FORMAT).contains(&f) => {}
        Some(other) => {
            return (
                1,
                format!(
                    "relaunch: error: this relaunch {} reads upgrade state formats {OLDEST} to {FORMAT}, not {other}",
                    crate::version::image()
                ),
            );
        }
        None => {
            return (
                2,
                "relaunch: error: --upgrade-check takes the state format number (relaunch upgrade runs it)"
                    .into(),
            );
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = stdin.take(MAX_STATE + 1).read_to_end(&mut bytes) {
        return (1, format!("relaunch: error: cannot read the state: {e}"));
    }
    match parse::<C>(&bytes, None) {
        // The format asked, which the old image looks for.
        Ok(state) => (
            0,
            format!(
                "{CHECK_OK} format {}, {}",
                state.format,
                crate::version::image()
            ),
        ),
        Err(why) => (
            1,
            format!("relaunch: error: cannot adopt this state: {why}"),
        ),
    }
}

/// The old image's reading of the handshake: Ok(the new image) or why not.
/// `output` is what the binary printed (stdout and stderr), `exit` its
/// exit status as text, None when it ran past the deadline.
pub fn check_verdict(
    output: &[u8],
    exit: Option<(bool, String)>,
) -> std::result::Result<String, String> {
    let text = String::from_utf8_lossy(output);
    let last = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect::<String>());
    let said = last
        .as_deref()
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    let Some((ok, status)) = exit else {
        return Err(format!(
            "it did not answer the handshake within {} s{said}",
            CHECK_DEADLINE.as_secs()
        ));
    };
    if !ok {
        return Err(format!("its handshake {status}{said}"));
    }
    let want = format!("{CHECK_OK} format {FORMAT}, ");
    match text.lines().find_map(|l| l.trim().strip_prefix(&want)) {
        Some(image) => Ok(image.to_string()),
        None => match text.lines().find(|l| l.starts_with(CHECK_OK)) {
            Some(l) => Err(format!(
                "it speaks another upgrade state format ({}; this relaunch hands over format {FORMAT})",
                l.trim()
            )),
            None => Err(format!(
                "it does not speak relaunch's upgrade handshake (format {FORMAT}){said}"
            )),
        },
    }
}

/// Sets or clears FD_CLOEXEC; false if the fd is not open.
pub fn set_cloexec(fd: RawFd, on: bool) -> bool {
    // SAFETY: F_GETFD/F_SETFD only read and set a flag; on a closed fd they
    // fail with EBADF and touch nothing.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, flags) >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_reads_back_and_cannot_change() {
        let fd = seal(b"{\"format\":1}").unwrap();
        assert_eq!(unseal(&fd).unwrap(), b"{\"format\":1}");
        let file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(
            file.write_at(b"x", 0).is_err(),
            "a sealed memfd took a write"
        );
        // A plain file is not a state, whatever it holds.
        let plain = std::fs::File::open("/proc/self/status").unwrap();
        assert!(unseal(&plain.into()).is_err());
    }

    /// What a runtime carries, as far as these tests care.
    #[derive(Deserialize, Debug)]
    struct Carried {
        #[allow(dead_code)]
        anything: bool,
    }

    #[test]
    fn parse_names_what_is_wrong() {
        assert!(
            parse::<Carried>(b"", None)
                .unwrap_err()
                .starts_with("not a state")
        );
        let other = parse::<Carried>(br#"{"format":9,"anything":true}"#, None).unwrap_err();
        assert!(other.contains("format 9"), "{other}");
        assert!(
            other.contains(&format!("reads formats 1 to {FORMAT}")),
            "{other}"
        );
        let missing =
            parse::<Carried>(format!(r#"{{"format":{FORMAT}}}"#).as_bytes(), None).unwrap_err();
        assert!(missing.starts_with("malformed state"), "{missing}");
    }

    #[test]
    fn check_answers_the_handshake() {
        let (code, line) = check::<Carried>(Some("9".as_ref()), &b""[..]);
        assert_eq!(code, 1);
        assert!(
            line.contains(&format!("reads upgrade state formats 1 to {FORMAT}, not 9")),
            "{line}"
        );
        let (code, line) = check::<Carried>(Some("x".as_ref()), &b""[..]);
        assert_eq!(code, 2, "{line}");
        // The formats it reads (the older ones too) get to the state itself.
        for format in OLDEST..=FORMAT {
            let (code, line) = check::<Carried>(Some(format.to_string().as_ref()), &b"{}"[..]);
            assert_eq!(code, 1, "{line}");
            assert!(line.contains("cannot adopt this state"), "{line}");
        }
    }

    #[test]
    fn verdicts() {
        let ok = format!("{CHECK_OK} format {FORMAT}, 0.2.0 (build b)\n");
        assert_eq!(
            check_verdict(ok.as_bytes(), Some((true, "exited with status 0".into()))),
            Ok("0.2.0 (build b)".into())
        );
        let failed = check_verdict(b"boom\n", Some((false, "exited with status 1".into())));
        assert_eq!(
            failed,
            Err("its handshake exited with status 1: boom".into())
        );
        let other = format!("{CHECK_OK} format {}, 9.0.0\n", FORMAT + 1);
        let e = check_verdict(
            other.as_bytes(),
            Some((true, "exited with status 0".into())),
        )
        .unwrap_err();
        assert!(e.contains("another upgrade state format"), "{e}");
        let e = check_verdict(b"hello\n", Some((true, "exited with status 0".into()))).unwrap_err();
        assert!(e.contains("does not speak"), "{e}");
        let e = check_verdict(b"", None).unwrap_err();
        assert!(e.contains("did not answer the handshake within 5 s"), "{e}");
    }

    /// A state naming `fds` as listeners, as the handshake reads it.
    fn state_with_listeners(fds: &[RawFd]) -> Vec<u8> {
        let listeners: Vec<_> = fds
            .iter()
            .map(|fd| format!(r#"{{"name":"l{fd}","fd":{fd},"file":null}}"#))
            .collect();
        format!(
            r#"{{"format":{FORMAT},"pid":1,"from":"x","sigmask":[],"anything":true,
                "fds":{{"listeners":[{}],"control":null,"notify":[],"execs":[],
                "waiters":[],"requests":[],"upgrade":null}}}}"#,
            listeners.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn a_state_naming_an_fd_twice_or_a_standard_one_is_refused() {
        assert!(parse::<Carried>(&state_with_listeners(&[3, 4]), None).is_ok());
        let twice = parse::<Carried>(&state_with_listeners(&[3, 4, 3]), None).unwrap_err();
        assert!(twice.contains("fd 3") && twice.contains("twice"), "{twice}");
        for fd in [-1, 0, 1, 2] {
            let e = parse::<Carried>(&state_with_listeners(&[3, fd]), None).unwrap_err();
            assert!(e.contains(&format!("fd {fd}")), "{e}");
        }
        // The handshake reads it the same way: the old image hears why and goes on.
        let (code, line) = check::<Carried>(
            Some(FORMAT.to_string().as_ref()),
            &state_with_listeners(&[5, 5])[..],
        );
        assert_eq!(code, 1, "{line}");
        assert!(line.contains("cannot adopt this state"), "{line}");
    }

    #[test]
    fn claiming_a_state_refuses_an_fd_that_is_not_open_and_touches_nothing() {
        let open = std::fs::File::open("/dev/null").unwrap();
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        // Far above any fd this test process opens (other tests run beside it).
        let closed = 999_999;
        let fds = |list: &[RawFd]| Fds {
            listeners: list
                .iter()
                .map(|&fd| ListenerFd {
                    name: "l".into(),
                    fd,
                    file: None,
                    nonblock: false,
                })
                .collect(),
            ..Default::default()
        };
        // SAFETY: reads a flag of an fd this test owns.
        let cloexec = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC;
        set_cloexec(open.as_raw_fd(), false);
        let e = fds(&[open.as_raw_fd(), closed]).claim(None).unwrap_err();
        assert!(
            e.contains(&format!("fd {closed}")) && e.contains("not open"),
            "{e}"
        );
        // Refused whole: nothing of it was taken.
        assert_eq!(cloexec(open.as_raw_fd()), 0);
        // Nor may it name the fd the state itself came in.
        let e = fds(&[open.as_raw_fd()])
            .claim(Some(open.as_raw_fd()))
            .unwrap_err();
        assert!(e.contains("the state's own"), "{e}");
        fds(&[open.as_raw_fd(), rd.as_raw_fd()])
            .claim(None)
            .unwrap();
        assert_ne!(cloexec(open.as_raw_fd()), 0);
    }

    #[test]
    fn fds_lists_every_piece() {
        let fds = Fds {
            listeners: vec![ListenerFd {
                name: "http".into(),
                fd: 3,
                file: None,
                nonblock: false,
            }],
            control: Some(FileFd {
                fd: 4,
                file: OwnedPath {
                    path: "/run/x.sock".into(),
                    identity: (1, 2),
                },
            }),
            notify: vec![NotifyFd {
                generation: 1,
                fd: 5,
                env: "@x".into(),
            }],
            execs: vec![ExecFd {
                pid: 9,
                fd: 6,
                shown: "x".into(),
                explicit: true,
                candidates: Vec::new(),
            }],
            waiters: vec![(2, 7)],
            requests: vec![(Request::Status, 8)],
            upgrade: Some(9),
            intercept: vec![crate::intercept::handler::Carried::new(11, 10)],
            keeper: Some(crate::supervise::keeper::Saved { pid: 12, fd: 11 }),
            metrics: Some(12),
            image: Some(13),
            groups: vec![GroupFds {
                members: vec![14, 15],
                saved: crate::sockets::group::Saved {
                    generations: vec![vec![1], Vec::new()],
                    route: 0,
                    backlog: 128,
                    canary: None,
                },
                unix: None,
            }],
        };
        assert_eq!(fds.all(), vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    }
}
