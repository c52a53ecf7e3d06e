"""socketserver.ThreadingUnixStreamServer as it is usually written: the
socket file left by the last run removed before bind, no signal handler
(SIGTERM kills it mid-request), 30 ms of work per request. Answers its pid.
Usage: unix_threading_server.py PATH"""
import os
import socketserver
import sys
import time


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        time.sleep(0.03)
        body = f"{os.getpid()}\n".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.wfile.write(head.encode() + body)


path = sys.argv[1]
if os.path.exists(path):
    os.remove(path)
socketserver.ThreadingUnixStreamServer(path, Handler).serve_forever()
