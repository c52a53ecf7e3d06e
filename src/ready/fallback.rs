//! "Does the generation serve somewhere else?" An app that checks its port
//! before binding it (`connect_ex(("127.0.0.1", port)) == 0` means "in
//! use") finds relaunch's socket there, falls back to another port and
//! serves on it, while clients of the held port wait in relaunch's queue.
//! [`elsewhere`] finds a child's tree waiting for connections on a TCP
//! listener relaunch does not hold; [`notice`] says what that means.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::scan::{self, Verdict};
use crate::proc::{self, Link};

/// A process of the tree that waits on a listener of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    pub pid: i32,
    pub at: SocketAddr,
}

/// The TCP listeners the processes in `tree` hold that are not among
/// `held`: (pid, address, inode).
pub fn listening(tree: &[i32], held: &HashSet<u64>) -> Vec<(i32, SocketAddr, u64)> {
    let mut theirs: Vec<(i32, u64)> = Vec::new();
    for &pid in tree {
        for (_, link) in proc::fds(pid).unwrap_or_default() {
            if let Link::Socket(ino) = link
                && !held.contains(&ino)
                && !theirs.iter().any(|&(_, i)| i == ino)
            {
                theirs.push((pid, ino));
            }
        }
    }
    if theirs.is_empty() {
        return Vec::new();
    }
    let listeners = proc::tcp_sockets(1 << proc::TCP_LISTEN).unwrap_or_default();
    theirs
        .into_iter()
        .filter_map(|(pid, ino)| {
            listeners
                .iter()
                .find(|e| e.inode == ino)
                .map(|e| (pid, e.local, ino))
        })
        .collect()
}

/// Where the tree under `roots` waits for connections on a TCP listener
/// relaunch does not hold (the caller saw it wait on none of `held`).
/// Blocking: reads /proc.
pub fn elsewhere(roots: &[i32], held: &HashSet<u64>) -> Option<Elsewhere> {
    let theirs = listening(&proc::tree(roots), held);
    if theirs.is_empty() {
        return None;
    }
    let inodes: HashSet<u64> = theirs.iter().map(|&(_, _, ino)| ino).collect();
    let pid = match scan::scan_each(&[roots.to_vec()], &inodes).pop()? {
        Verdict::Waiting { pid, .. } | Verdict::Accepted { pid } => pid,
        _ => return None,
    };
    let at = theirs
        .iter()
        .find(|&&(p, _, _)| p == pid)
        .unwrap_or(&theirs[0])
        .1;
    Some(Elsewhere { pid, at })
}

/// How relaunch meets a child's own binds and probes: what the notice
/// can advise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    Off,
    /// Binds are given the held socket; connects run.
    Binds,
    /// `--refuse-probes` too.
    Probes,
}

/// What to say when the tree under `roots`, seen waiting on none of `held`
/// (inodes), serves elsewhere; `addrs`: the TCP addresses relaunch holds.
pub fn check(
    roots: &[i32],
    held: &HashSet<u64>,
    addrs: &[SocketAddr],
    how: Interception,
) -> Option<String> {
    let e = elsewhere(roots, held)?;
    Some(notice(&e, &proc::comm(e.pid), addrs, how))
}

/// The held port the app most likely meant: the nearest one below where
/// it serves (fallbacks count up), else the first.
fn meant(held: &[SocketAddr], at: SocketAddr) -> Option<SocketAddr> {
    held.iter()
        .filter(|h| h.port() < at.port())
        .max_by_key(|h| h.port())
        .or(held.first())
        .copied()
}

/// The line relaunch says once when a generation serves on a port it does
/// not hold. `held`: the TCP addresses relaunch holds; `comm`: the
/// process's name.
pub fn notice(e: &Elsewhere, comm: &str, held: &[SocketAddr], how: Interception) -> String {
    let shown = |a: SocketAddr| crate::intercept::shown(&crate::intercept::Asked::Inet(a));
    let Some(h) = meant(held, e.at) else {
        return format!(
            "pid {} ({comm}) serves on {}, which relaunch does not hold, and waits on none of \
             relaunch's sockets: clients of relaunch's sockets get no answer",
            e.pid,
            shown(e.at)
        );
    };
    let (port, other) = (h.port(), e.at.port());
    let (cause, fix) = match how {
        Interception::Binds => (
            "It most likely probed the port before binding it (a connect() there succeeds: \
             relaunch holds it), took it for in use and fell back",
            "pass --refuse-probes, so that such a probe is refused as on a free port, or \
             remove the app's port check so that it binds the port itself (relaunch then gives \
             it its socket)",
        ),
        Interception::Probes => (
            "relaunch refuses connect() probes of the port, so the app most likely checked it \
             another way, took it for in use and fell back",
            "remove the app's port check so that it binds the port itself (relaunch then gives \
             it its socket)",
        ),
        Interception::Off => (
            "It most likely probed the port before binding it (a connect() there succeeds: \
             relaunch holds it), took it for in use and fell back",
            "have the app take relaunch's socket (LISTEN_FDS), or drop --no-intercept and pass \
             --refuse-probes",
        ),
    };
    format!(
        "pid {} ({comm}) serves on {}, not on relaunch's {}, and never took relaunch's socket: \
         clients of port {port} wait unanswered. {cause} to port {other}. To serve on port \
         {port}: {fix}; or hold port {other} instead",
        e.pid,
        shown(e.at),
        shown(h),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_notice_names_both_ports_the_cause_and_the_fix() {
        let e = Elsewhere {
            pid: 42,
            at: at("0.0.0.0:8002"),
        };
        let held = [at("[::]:9000"), at("0.0.0.0:8000")];
        let line = notice(&e, "python3", &held, Interception::Binds);
        assert!(
            line.contains("pid 42 (python3) serves on 0.0.0.0:8002"),
            "{line}"
        );
        assert!(line.contains("relaunch's 0.0.0.0:8000"), "{line}");
        assert!(line.contains("probed the port"), "{line}");
        assert!(line.contains("fell back to port 8002"), "{line}");
        assert!(line.contains("pass --refuse-probes"), "{line}");
        assert!(line.contains("remove the app's port check"), "{line}");
        assert!(!line.contains("--ready"), "{line}");
        let line = notice(&e, "python3", &held, Interception::Probes);
        assert!(!line.contains("pass --refuse-probes"), "{line}");
        assert!(line.contains("another way"), "{line}");
        let line = notice(&e, "python3", &held, Interception::Off);
        assert!(line.contains("LISTEN_FDS"), "{line}");
        // Nothing held below it: the first held port.
        let e = Elsewhere {
            pid: 1,
            at: at("127.0.0.1:80"),
        };
        assert!(notice(&e, "x", &held, Interception::Binds).contains("relaunch's [::]:9000"));
        assert!(notice(&e, "x", &[], Interception::Binds).contains("does not hold"));
    }

    #[test]
    fn a_listener_of_its_own_that_it_waits_on_is_found() {
        use std::os::fd::AsFd;
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held: HashSet<u64> = [scan::socket_inode(ours.as_fd()).unwrap()].into();
        // A child that listens on a port of its own and blocks in accept.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n\
                 print(s.getsockname()[1], flush=True)\ns.accept()",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            if let Some(e) = elsewhere(&[pid], &held) {
                break e;
            }
            assert!(std::time::Instant::now() < deadline, "never seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // Its listener held by relaunch: nothing elsewhere.
        let its: HashSet<u64> = listening(&[pid], &HashSet::new())
            .iter()
            .map(|&(_, _, ino)| ino)
            .collect();
        let elsewhere_then = elsewhere(&[pid], &its);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found,
            Elsewhere {
                pid,
                at: at(&format!("127.0.0.1:{port}"))
            }
        );
        assert_eq!(its.len(), 1);
        assert_eq!(elsewhere_then, None);
    }
}
