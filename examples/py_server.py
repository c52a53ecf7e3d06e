#!/usr/bin/env python3
"""relaunch example: a Python (stdlib only) HTTP server that answers every
request with its pid, serving the listener relaunch hands it at fd 3.

    relaunch -l 127.0.0.1:8000 -- python3 examples/py_server.py

Without LISTEN_FDS it binds 127.0.0.1:$PORT (default 8000) itself.
--delay SECS sleeps before touching the socket (a slow start-up); READY=1 goes
to NOTIFY_SOCKET once serving, unless --no-notify. SIGTERM/SIGINT: stop
accepting, finish in-flight requests, exit 0.
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PidHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a silent client cannot hold up shutdown for longer

    def do_GET(self):
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_POST = do_GET

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # Non-daemon threads, so server_close() waits for in-flight requests.
    daemon_threads = False


def inherited_socket():
    """fd 3 if LISTEN_FDS/LISTEN_PID say it is ours (sd_listen_fds), else None."""
    fds, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our own children
    if not fds or pid != str(os.getpid()):
        return None
    if not fds.isdigit() or int(fds) < 1:
        sys.exit(f"py_server: LISTEN_FDS={fds!r} gives no socket")
    sock = socket.socket(fileno=3)
    if sock.type != socket.SOCK_STREAM:
        sys.exit("py_server: fd 3 is not a stream socket; give it a tcp: listener")
    # socketserver polls, then accepts. The listener is shared with the other
    # generation, which may take the connection first: a blocking accept()
    # would then hang (and delay our shutdown) until the next one.
    sock.setblocking(False)
    return sock


def own_socket():
    port = int(os.environ.get("PORT", "8000"))
    print(f"py_server: no LISTEN_FDS, binding 127.0.0.1:{port} myself", file=sys.stderr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(socket.SOMAXCONN)
    return sock


def sd_notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as e:
        print(f"py_server: cannot notify {path!r}: {e}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECS",
                        help="sleep before touching the socket")
    parser.add_argument("--no-notify", action="store_true",
                        help="do not send READY=1 to NOTIFY_SOCKET")
    args = parser.parse_args()
    if args.delay < 0:
        parser.error("--delay must be >= 0")

    # A stop request during start-up is still a clean exit.
    stop = lambda *_: sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    time.sleep(args.delay)

    sock = inherited_socket() or own_socket()
    server = Server(("127.0.0.1", 0), PidHandler, bind_and_activate=False)
    server.socket.close()  # the unbound socket TCPServer made for itself
    # Take the socket as it is: no bind, no listen (which would reset the
    # backlog relaunch chose), no SO_REUSEADDR.
    server.socket = sock
    server.server_address = sock.getsockname()
    server.server_name, server.server_port = server.server_address[:2]

    def on_stop(*_):
        # shutdown() waits for serve_forever() to return: not from its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    host, port = server.server_address[:2]
    print(f"py_server: pid {os.getpid()} serving http://{host}:{port}/", file=sys.stderr)
    if not args.no_notify:
        sd_notify("READY=1")
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listener, then joins request threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
