//! The lines a child writes to a pipe (a `--build`'s output, relaunch-watch's
//! reports), read without blocking and without holding the event loop: a
//! look reads at most [`READ_BUDGET`] bytes, and a line is cut at
//! [`LINE_MAX`] bytes, its rest dropped. A build that writes faster than the
//! log is shown (`yes | head -c 1G`) then costs each turn of the loop one
//! budget, and memory stays flat.

use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A longer line is cut there (in the build's tail and its live output).
const LINE_MAX: usize = 1000;
/// Read per look: a full pipe of the default size, so the one look after
/// the writer is reaped reads all it left.
const READ_BUDGET: usize = 64 * 1024;

pub struct PipeLines {
    /// Read end, non-blocking; None after EOF.
    fd: Option<AsyncFd<OwnedFd>>,
    /// The start of a line not finished yet; at most LINE_MAX bytes.
    partial: Vec<u8>,
    /// The current line passed LINE_MAX: it was given cut, and the rest of
    /// it is dropped up to its end.
    cut: bool,
    /// The last look stopped at its budget, not at EAGAIN: there is more,
    /// and the readiness that said so was taken already.
    more: bool,
}

impl PipeLines {
    pub fn new(read: OwnedFd) -> std::io::Result<PipeLines> {
        // Only our end: a child writing to a non-blocking pipe would see EAGAIN.
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the OwnedFd is moved in and never swapped, so the fd stays
        // open and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(PipeLines {
            fd: Some(fd),
            partial: Vec::new(),
            cut: false,
            more: false,
        })
    }

    /// Waits until there is something to read (pending forever after EOF).
    pub async fn readable(&self) {
        if self.more {
            // Let the loop's other work go first, then read on.
            tokio::task::yield_now().await;
            return;
        }
        match &self.fd {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable().await {
                    guard.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The complete lines of one look (at most READ_BUDGET bytes read);
    /// after EOF, the unfinished one too.
    pub fn lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; 8192];
        let mut lines = Vec::new();
        let mut read = 0;
        self.more = false;
        while let Some(fd) = &self.fd {
            if read >= READ_BUDGET {
                self.more = true;
                break;
            }
            match nix::unistd::read(fd.get_ref(), &mut buf) {
                Ok(0) => self.fd = None,
                Ok(n) => {
                    read += n;
                    self.split(&buf[..n], &mut lines);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => self.fd = None,
            }
        }
        if self.fd.is_none() {
            lines.extend(self.rest());
        }
        lines
    }

    /// Whether the writers are all gone (EOF) and everything was read.
    pub fn ended(&self) -> bool {
        self.fd.is_none()
    }

    /// The unfinished line, if any (the writer is gone, or no more is awaited).
    pub fn rest(&mut self) -> Option<String> {
        self.cut = false;
        (!self.partial.is_empty()).then(|| text(&std::mem::take(&mut self.partial)))
    }

    /// Adds `bytes` to the unfinished line; each line they end goes to `lines`.
    fn split(&mut self, mut bytes: &[u8], lines: &mut Vec<String>) {
        loop {
            let end = bytes.iter().position(|&b| b == b'\n');
            let piece = &bytes[..end.unwrap_or(bytes.len())];
            if !self.cut {
                let room = LINE_MAX - self.partial.len();
                self.partial
                    .extend_from_slice(&piece[..piece.len().min(room)]);
                if piece.len() > room {
                    // Shown now: the line may never end.
                    lines.push(text(&std::mem::take(&mut self.partial)));
                    self.cut = true;
                }
            }
            let Some(end) = end else {
                return;
            };
            if !self.cut {
                lines.push(text(&std::mem::take(&mut self.partial)));
            }
            self.cut = false;
            bytes = &bytes[end + 1..];
        }
    }
}

/// A line for the log: lossy UTF-8, no CR.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A runtime for AsyncFd, and a pipe: our end as PipeLines, the
    /// writer's as a File.
    fn pipe(size: Option<i32>) -> (tokio::runtime::Runtime, PipeLines, std::fs::File) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        if let Some(size) = size {
            nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)).unwrap();
        }
        let lines = {
            let _in = rt.enter();
            PipeLines::new(read).unwrap()
        };
        (rt, lines, std::fs::File::from(write))
    }

    /// A writer faster than the loop: each look reads a bounded amount and
    /// leaves the rest for the next, which comes without a new wakeup.
    #[test]
    fn a_look_reads_a_bounded_amount() {
        // 1 MiB: the most a pipe holds without privilege.
        let (rt, mut p, mut w) = pipe(Some(1 << 20));
        w.write_all(&b"y\n".repeat(1 << 19)).unwrap();
        let first = p.lines();
        assert!(
            !first.is_empty() && first.len() <= 64 * 1024 / 2,
            "{} lines in one look",
            first.len()
        );
        let mut total = first.len();
        while total < 1 << 19 {
            // No new data arrives: readiness must not be what wakes us.
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), p.readable())
                    .await
                    .expect("left at the budget, the next look comes at once")
            });
            let next = p.lines();
            assert!(next.len() <= 64 * 1024 / 2);
            assert!(next.iter().all(|l| l == "y"));
            total += next.len();
        }
        assert_eq!(total, 1 << 19);
        drop(w);
        assert!(p.lines().is_empty());
        assert!(p.ended());
    }

    /// A line without end is given once, cut, and its rest dropped; what is
    /// held for it never grows past the cut.
    #[test]
    fn a_long_line_is_cut_once_and_the_rest_dropped() {
        let (_rt, mut p, mut w) = pipe(None);
        let mut seen = Vec::new();
        for _ in 0..8 {
            w.write_all(&[b'a'; 4000]).unwrap();
            seen.extend(p.lines());
            assert!(p.partial.len() <= LINE_MAX, "{}", p.partial.len());
        }
        assert_eq!(seen.len(), 1, "one line, not one piece per look");
        assert_eq!(seen[0], "a".repeat(LINE_MAX));
        w.write_all(b"aaa\nnext\r\nlast").unwrap();
        drop(w);
        assert_eq!(p.lines(), ["next", "last"]);
        assert!(p.ended());
        assert_eq!(p.rest(), None);
    }

    #[test]
    fn lines_split_across_reads_and_the_unfinished_one() {
        let (_rt, mut p, mut w) = pipe(None);
        w.write_all(b"one\ntw").unwrap();
        assert_eq!(p.lines(), ["one"]);
        w.write_all(b"o\nthr").unwrap();
        assert_eq!(p.lines(), ["two"]);
        assert_eq!(p.rest().as_deref(), Some("thr"));
        w.write_all(b"\xffee\n").unwrap();
        assert_eq!(p.lines(), ["\u{fffd}ee"]);
        assert!(!p.ended());
    }
}
