"""socketserver.ThreadingTCPServer as it is usually written: SO_REUSEPORT set
before bind, no signal handler (SIGTERM kills it mid-request), 30 ms of work
per request. Answers its pid. Usage: threading_server.py PORT"""
import os
import socket
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


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


Server(("", int(sys.argv[1])), Handler).serve_forever()
