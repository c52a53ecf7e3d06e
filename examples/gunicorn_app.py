"""relaunch example: a WSGI app for gunicorn that answers every request with
the pid of the worker that served it.

    relaunch -l 127.0.0.1:8000 -- gunicorn --chdir examples gunicorn_app:app

gunicorn reads LISTEN_FDS itself (gunicorn/systemd.py): it takes fds 3.. when
LISTEN_PID equals the pid of the gunicorn master, which is the process
relaunch starts (so no `sh -c` in front of it). --bind is then ignored.
Leave --reuse-port off: with it gunicorn ignores the inherited sockets.
"""

import os


def app(environ, start_response):
    body = f"{os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    return [body]
