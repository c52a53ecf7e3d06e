"""relaunch example: a plain ASGI app for uvicorn that answers every request
with its pid.

    relaunch -l web=127.0.0.1:8000 -- uvicorn --app-dir examples uvicorn_app:app --fd {fd:web}

uvicorn does not read LISTEN_FDS; `--fd N` serves an already bound socket, and
relaunch fills in N with the {fd} placeholder. uvicorn wraps the fd as
AF_UNIX whatever it is (socket.fromfd(fd, AF_UNIX, ...)); TCP and Unix
listeners both serve, but asyncio then skips TCP_NODELAY on accepted
connections.
"""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{os.getpid()}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
