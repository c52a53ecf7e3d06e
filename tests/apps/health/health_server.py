"""http.server as it is usually written: binds its port itself, no signal
handler. / answers its pid; /healthz answers 200 in a good version and 500
in a bad one, and 500 while PATH exists in an unless:PATH one. Usage:
health_server.py PORT good|bad|unless:PATH [SECONDS]: with
SECONDS, it listens, then waits that long before it accepts anything (a
slow start: connections queue meanwhile)."""
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = sys.argv[2]


def healthy():
    if VERSION.startswith("unless:"):
        return not os.path.exists(VERSION[len("unless:"):])
    return VERSION == "good"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            code, body = (200, b"ok\n") if healthy() else (500, b"broken\n")
        else:
            code, body = 200, f"{os.getpid()}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("", int(sys.argv[1])), Handler)
if len(sys.argv) > 3:
    time.sleep(float(sys.argv[3]))
server.serve_forever()
