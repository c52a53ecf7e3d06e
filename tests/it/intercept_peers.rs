//! Unmodified servers that bind the held port themselves, from other
//! ecosystems than Python (Node, Go, uvicorn), and what relaunch says when it
//! cannot hand them its socket.

use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// The usual self-binding server, reduced to its bind: it dies of
/// EADDRINUSE while relaunch holds the port.
const SELF_BIND: &str = "import socket, sys\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(sys.argv[1])))\n\
s.listen(5)\n\
while True: s.accept()[0].close()\n";

const HINT: &str = "probably binds the port itself";

/// A child that binds the held port itself dies at once, over and over;
/// relaunch says why and what to do, once, not on every restart.
#[test]
fn a_self_binding_child_gets_the_hint_once() {
    let r = Relaunch::start(&[
        "-l",
        "127.0.0.1:0",
        "--no-intercept",
        "--",
        "python3",
        "-c",
        SELF_BIND,
        "{port}",
    ]);
    r.log.wait("Address already in use", T);
    let hint = r.log.wait(HINT, T);
    for remedy in ["drop --no-intercept", "--compat", "{fd}", "LISTEN_FDS"] {
        assert!(hint.contains(remedy), "{remedy} missing from: {hint}");
    }
    // Three more restarts of the crash loop: still one hint.
    r.log.wait_n("restarting in", 4, T);
    assert_eq!(r.log.count(HINT), 1, "{}", r.log.text());
}
