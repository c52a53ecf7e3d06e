"""A websockets server as it is usually written: no signal handler; pushes
"PID N" to every client every 50 ms, for as long as it is connected.
Usage: ws_server.py PORT"""
import asyncio
import os
import sys

import websockets


async def push(ws):
    n = 0
    while True:
        await ws.send(f"{os.getpid()} {n}")
        n += 1
        await asyncio.sleep(0.05)


async def main():
    async with websockets.serve(push, "127.0.0.1", int(sys.argv[1])):
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
