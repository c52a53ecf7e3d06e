//! Log lines on stderr.
//!
//! - Under journald (systemd sets `JOURNAL_STREAM=dev:ino` to name the stream
//!   it gave us, and it is still our stderr): each line is `<N>message`, with
//!   the sd-daemon(3) priority of its level, so `journalctl -p warning` works,
//!   and no timestamp (the journal stamps every line).
//! - Elsewhere: time, level, message; colours on a terminal.
//!
//! `RUST_LOG` is a plain level (`error`, `warn`, `info`, `debug`, `trace`,
//! `off`); the default is `info`, or `warn` with `--quiet`. A plain level
//! needs no filter engine: regex-based directives would cost start-up time
//! and resident memory for a process that idles for weeks.

use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

pub fn init(quiet: bool) {
    let default = if quiet {
        LevelFilter::WARN
    } else {
        LevelFilter::INFO
    };
    let rust_log = std::env::var_os("RUST_LOG");
    let level = match level(rust_log.as_deref(), default) {
        Ok(level) => level,
        Err(bad) => {
            print(
                4,
                &format!(
                    "relaunch: warning: RUST_LOG={bad:?} is not a level (error, warn, info, debug, trace or off); logging at {default}"
                ),
            );
            default
        }
    };
    let ansi = !journal() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing::subscriber::set_global_default(subscriber(
        journal(),
        ansi,
        level,
        std::io::stderr,
    ));
}

/// Prints `text` on stderr outside the log (an error that ends relaunch, a
/// failed reload); under journald every line at `priority` (3 err, 4 warning).
pub fn print(priority: u8, text: &str) {
    let text = lines(journal().then_some(priority), text);
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Whether stderr is the journal; decided once.
fn journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        is_journal(
            std::env::var_os("JOURNAL_STREAM").as_deref(),
            std::io::stderr().as_fd(),
        )
    })
}

/// `text` as lines, each after `<priority>` when there is one. A line
/// without its own prefix would land in the journal as info.
fn lines(priority: Option<u8>, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        if let Some(p) = priority {
            out.push_str(&format!("<{p}>"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The level `RUST_LOG` asks for, or the text when it is not one.
fn level(rust_log: Option<&OsStr>, default: LevelFilter) -> Result<LevelFilter, String> {
    let Some(text) = rust_log else {
        return Ok(default);
    };
    let text = text.to_string_lossy();
    if text.trim().is_empty() {
        return Ok(default);
    }
    text.trim().parse().map_err(|_| text.into_owned())
}

/// Whether `fd` is the journal stream that `JOURNAL_STREAM` (`dev:ino`) names.
fn is_journal(journal_stream: Option<&OsStr>, fd: BorrowedFd<'_>) -> bool {
    let Some((dev, ino)) = journal_stream
        .and_then(OsStr::to_str)
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

fn subscriber<W>(
    journal: bool,
    ansi: bool,
    level: LevelFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(ansi);
    if journal {
        Box::new(fmt.event_format(Journal).finish())
    } else {
        Box::new(fmt.finish())
    }
}

/// sd-daemon(3) priority prefixes, one per line; no time, no level word.
struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        let mut text = String::new();
        ctx.format_fields(Writer::new(&mut text), event)?;
        writer.write_str(&lines(Some(priority), &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};

    #[test]
    fn rust_log_is_a_plain_level() {
        let info = LevelFilter::INFO;
        let level = |s: Option<&str>| level(s.map(OsStr::new), info);
        assert_eq!(level(None), Ok(info));
        assert_eq!(level(Some("")), Ok(info));
        assert_eq!(level(Some("debug")), Ok(LevelFilter::DEBUG));
        assert_eq!(level(Some(" WARN ")), Ok(LevelFilter::WARN));
        assert_eq!(level(Some("off")), Ok(LevelFilter::OFF));
        assert_eq!(level(Some("relaunch=debug")), Err("relaunch=debug".into()));
    }

    #[test]
    fn printed_lines_carry_the_priority_under_journald() {
        let error = "relaunch: error: port 80 is in use\n  hint: run `relaunch who 80`";
        assert_eq!(
            lines(Some(3), error),
            "<3>relaunch: error: port 80 is in use\n<3>  hint: run `relaunch who 80`\n"
        );
        assert_eq!(lines(None, error), format!("{error}\n"));
        assert_eq!(lines(Some(4), ""), "");
    }

    #[test]
    fn journal_stream_must_name_this_fd() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let st = nix::sys::stat::fstat(&file).unwrap();
        let fd = file.as_fd();
        let var = |s: String| Some(std::ffi::OsString::from(s));
        assert!(is_journal(
            var(format!("{}:{}", st.st_dev, st.st_ino)).as_deref(),
            fd
        ));
        assert!(!is_journal(
            var(format!("{}:{}", st.st_dev, st.st_ino + 1)).as_deref(),
            fd
        ));
        assert!(!is_journal(
            var(format!("{}:{}", st.st_dev + 1, st.st_ino)).as_deref(),
            fd
        ));
        assert!(!is_journal(None, fd));
        for bad in ["", "1", "1:", ":1", "x:y", "1:2:3"] {
            assert!(!is_journal(var(bad.into()).as_deref(), fd), "{bad:?}");
        }
        assert!(fd.as_raw_fd() > 2);
    }

    /// What the subscriber writes, for the format tests.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(journal: bool, level: LevelFilter) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let sub = subscriber(journal, false, level, move || writer.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::error!("cannot bind");
            tracing::warn!(pid = 7, "exited\nbefore it was ready");
            tracing::info!(generation = 2, "serving");
            tracing::debug!("scan");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn journal_lines_carry_a_priority_and_no_timestamp() {
        assert_eq!(
            logged(true, LevelFilter::DEBUG),
            "<3>cannot bind\n<4>exited\n<4>before it was ready pid=7\n<6>serving generation=2\n<7>scan\n"
        );
        assert_eq!(
            logged(true, LevelFilter::WARN),
            "<3>cannot bind\n<4>exited\n<4>before it was ready pid=7\n"
        );
    }

    #[test]
    fn terminal_lines_carry_time_and_level() {
        let text = logged(false, LevelFilter::INFO);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].ends_with("ERROR cannot bind"), "{text}");
        assert!(lines[3].ends_with(" INFO serving generation=2"), "{text}");
        // An RFC 3339 time first.
        assert!(
            lines[0].as_bytes()[..4].iter().all(u8::is_ascii_digit),
            "{text}"
        );
        assert!(!text.contains('<'), "{text}");
    }
}
