#!/usr/bin/env python3
"""The usual restart without relaunch, for the benchmark: each generation binds
127.0.0.1:$PORT itself (SO_REUSEADDR), retrying while the old one still holds
the port. Connections that arrive in the gap, or wait in the old process's
backlog when it closes, are refused or reset: the failures relaunch removes.

    PORT=8000 python3 examples/naive_server.py [--delay SECS]

Retries on EADDRINUSE back off from 50 ms, doubling, to 2 s between tries, and
give up after 60 s. Answers every request with its pid. SIGTERM/SIGINT: close
the listener first, then finish in-flight requests, exit 0.
"""

import argparse
import errno
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GIVE_UP_AFTER = 60.0


class PidHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def do_GET(self):
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() waits for in-flight requests


def bind_with_retry(port):
    delay, deadline = 0.05, time.monotonic() + GIVE_UP_AFTER
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(socket.SOMAXCONN)
            return sock
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE:
                raise
            if time.monotonic() + delay > deadline:
                sys.exit(f"naive_server: 127.0.0.1:{port} still in use after "
                         f"{GIVE_UP_AFTER:.0f}s; stop whatever holds it")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECS",
                        help="sleep before binding (a slow start-up)")
    args = parser.parse_args()
    if args.delay < 0:
        parser.error("--delay must be >= 0")
    port = int(os.environ.get("PORT", "8000"))

    stop = lambda *_: sys.exit(0)  # nothing to finish yet
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    time.sleep(args.delay)

    server = Server(("127.0.0.1", port), PidHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = bind_with_retry(port)

    def on_stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    print(f"naive_server: pid {os.getpid()} serving http://127.0.0.1:{port}/", file=sys.stderr)
    server.serve_forever(poll_interval=0.1)
    server.server_close()  # closes the listener first, then joins request threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
