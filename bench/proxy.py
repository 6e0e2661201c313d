"""A TCP proxy on 127.0.0.1 that delays each direction by a fixed time (a WAN round trip).

    python -m bench.proxy --delay 0.010 TARGET_PORT [TARGET_PORT ...]

For every target port it listens on a free port of 127.0.0.1 and prints one line
``<target> <listen>`` per target, then ``READY``, on stdout. Every chunk read from one side is
written to the other side ``delay`` seconds after it was read, so a round trip costs 2 x delay
while bandwidth is not limited (pipelined commands keep flowing). TLS passes through untouched:
the server certificate is for 127.0.0.1, which is also where clients connect. Stops on SIGTERM.
Only loopback addresses are ever used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import time

HOST = "127.0.0.1"
CHUNK = 256 * 1024


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time() + delay, b""))

    async def write() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


async def _handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  target: int, delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(HOST, target)
    except OSError:
        client_writer.close()
        return
    _nodelay(client_writer)
    _nodelay(server_writer)
    try:
        await asyncio.gather(_pump(client_reader, server_writer, delay),
                             _pump(server_reader, client_writer, delay))
    finally:
        for w in (client_writer, server_writer):
            with contextlib.suppress(Exception):
                w.close()


async def serve(targets: list[int], delay: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for target in targets:
        server = await asyncio.start_server(
            lambda r, w, t=target: _handle(r, w, t, delay), HOST, 0, backlog=256)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        print(f"{target} {port}", flush=True)
    print("READY", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.010,
                        help="one-way delay in seconds (default 0.010: 20 ms round trip)")
    parser.add_argument("targets", type=int, nargs="+", metavar="TARGET_PORT")
    args = parser.parse_args(argv)
    started = time.monotonic()
    asyncio.run(serve(args.targets, args.delay))
    print(f"stopped after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
