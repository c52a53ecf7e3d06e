#!/usr/bin/env python3
"""A dashboard written the usual way: it binds 0.0.0.0:5000 itself, with
SO_REUSEADDR and SO_REUSEPORT as the usual "address already in use" fixes do,
and knows nothing of relaunch. Run it unchanged:

    relaunch --port 5000 -- python3 examples/dashboard.py

Its bind() gets relaunch's socket (see "Your server, unchanged" in the
README), so restarts, crashes and deploys refuse no connection. Answers every
request with its pid and the client's address. SIGTERM: finish the request
in hand, then exit.
"""

import os
import signal
import socket
import socketserver
import sys
import threading

PORT = int(os.environ.get("PORT", "5000"))


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline().strip():
            pass
        body = f"dashboard pid {os.getpid()}, you are {self.client_address[0]}\n".encode()
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False  # server_close() waits for requests in flight

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main():
    server = Server(("0.0.0.0", PORT), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"dashboard: pid {os.getpid()} serving http://0.0.0.0:{PORT}/", file=sys.stderr)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
