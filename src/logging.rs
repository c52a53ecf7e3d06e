//! Log lines on stderr.
//!
//! - Under journald (systemd sets `JOURNAL_STREAM=dev:ino` to name the stream
//!   it gave us, and it is still our stderr): each line is `<N>message`, with
//!   the sd-daemon(3) priority of its level, so `journalctl -p warning` works,
//!   and no timestamp (the journal stamps every line).
//! - Elsewhere: time, level, message; colours on a terminal.
//! - `--log-format json`: one JSON object a line, with `time`, `level`,
//!   `message`, the event's fields, and always `pid` (the child the line is
//!   about, else relaunch itself) and `generation` (the one the line is
//!   about, else the serving one; null before the first starts). Under
//!   journald each line still gets its `<N>` prefix. A tiny formatter of our
//!   own on serde_json, which relaunch has anyway: tracing-subscriber's json
//!   feature would add tracing-serde and nest span fields.
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
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The serving generation, for log lines that name none (0: none yet).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called by the driver after each event: the generation that serves now.
pub fn set_generation(generation: u64) {
    GENERATION.store(generation, Ordering::Relaxed);
}

/// `--log-format json`, once logging is set up.
static JSON: OnceLock<bool> = OnceLock::new();

/// Whether lines are JSON (`--log-format json`), for the next image.
pub fn json() -> bool {
    JSON.get() == Some(&true)
}

pub fn init(quiet: bool, json: bool) {
    let _ = JSON.set(json);
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
    let ansi = !json && !journal() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing::subscriber::set_global_default(subscriber(
        journal(),
        json,
        ansi,
        level,
        std::io::stderr,
    ));
}

/// Prints `text` on stderr outside the log (an error that ends relaunch, a
/// failed reload); under journald every line at `priority` (3 err, 4 warning).
pub fn print(priority: u8, text: &str) {
    let prefix = journal().then_some(priority);
    let text = if JSON.get() == Some(&true) {
        let level = if priority <= 3 {
            Level::ERROR
        } else {
            Level::WARN
        };
        let mut fields = Map::new();
        fields.insert("message".into(), text.into());
        json_line(level, fields, prefix)
    } else {
        lines(prefix, text)
    };
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
    json: bool,
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
    if json {
        Box::new(fmt.event_format(Json { journal }).finish())
    } else if journal {
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
        let priority = priority(*event.metadata().level());
        let mut text = String::new();
        ctx.format_fields(Writer::new(&mut text), event)?;
        writer.write_str(&lines(Some(priority), &text))
    }
}

/// The sd-daemon(3) priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One JSON object a line (see the module's doc).
struct Json {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let level = *event.metadata().level();
        let prefix = self.journal.then(|| priority(level));
        writer.write_str(&json_line(level, fields.0, prefix))
    }
}

/// An event's fields as JSON values; what is not a number, a bool or a
/// string is its Debug text (the message, `%display` fields).
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// `{"generation":…,"level":…,"message":…,"pid":…,"time":…, fields…}` and
/// a newline, after `<priority>` under journald.
fn json_line(level: Level, mut fields: Map<String, Value>, prefix: Option<u8>) -> String {
    use tracing_subscriber::fmt::time::FormatTime;
    let mut time = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut time));
    fields.entry("message").or_insert_with(|| "".into());
    fields
        .entry("pid")
        .or_insert_with(|| std::process::id().into());
    fields
        .entry("generation")
        .or_insert_with(|| match GENERATION.load(Ordering::Relaxed) {
            0 => Value::Null,
            g => g.into(),
        });
    fields.insert("level".into(), level.as_str().into());
    fields.insert("time".into(), time.into());
    let mut line = prefix.map(|p| format!("<{p}>")).unwrap_or_default();
    line.push_str(&Value::Object(fields).to_string());
    line.push('\n');
    line
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
        logged_as(journal, false, level)
    }

    fn logged_as(journal: bool, json: bool, level: LevelFilter) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let sub = subscriber(journal, json, false, level, move || writer.clone());
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
    fn json_lines_carry_pid_and_generation() {
        set_generation(5);
        let text = logged_as(false, true, LevelFilter::INFO);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let me = u64::from(std::process::id());
        assert_eq!(lines[0]["message"], "cannot bind");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(
            (lines[0]["pid"].as_u64(), lines[0]["generation"].as_u64()),
            (Some(me), Some(5))
        );
        // Newlines stay inside the one object; the event's own fields win.
        assert_eq!(lines[1]["message"], "exited\nbefore it was ready");
        assert_eq!(
            (lines[1]["pid"].as_u64(), lines[1]["generation"].as_u64()),
            (Some(7), Some(5))
        );
        assert_eq!(lines[2]["generation"], 2);
        assert!(
            lines[2]["time"].as_str().unwrap().starts_with("20"),
            "{text}"
        );
        // Under journald: the priority first, JSON after it.
        let text = logged_as(true, true, LevelFilter::WARN);
        assert!(text.starts_with("<3>{"), "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with("<4>{"), "{text}");
        set_generation(0);
        let line = json_line(Level::WARN, Map::new(), None);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["generation"], Value::Null);
        assert_eq!(v["message"], "");
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
