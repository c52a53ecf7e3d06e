"""asyncio.start_unix_server as it is usually written (asyncio removes the
socket file it finds at the path before it binds): no signal handler
(SIGTERM kills it mid-request), 30 ms of work per request. Answers its pid.
Usage: unix_asyncio_server.py PATH"""
import asyncio
import os
import sys


async def handle(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.03)
    body = f"{os.getpid()}\n".encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    async with server:
        await server.serve_forever()


asyncio.run(main())
