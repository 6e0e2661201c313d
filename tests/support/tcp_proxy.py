"""A TCP proxy on 127.0.0.1 for tests: forwards byte for byte to a server (TLS passes through
untouched: the test server's certificate is for 127.0.0.1, where clients connect anyway), with
a latency per direction and faults that can be set at any time from the test.

It runs in threads of the test process. bench/proxy.py does the latency alone as a separate
process (asyncio) for the benchmarks.

This module must not import pytest or syncd.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass

CHUNK = 65536  # read at most this much at once
PIECE = 16384  # under a rate limit, send at most this much at once


@dataclass(eq=False)
class Link:
    """One proxied connection: the client's side, the server's side, bytes carried."""

    client: socket.socket
    upstream: socket.socket
    number: int  # 1 for the first connection accepted, 2 for the next, ...
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    closed: bool = False


class TcpProxy:
    """127.0.0.1:<port> -> (target_host, target_port).

    ``delay``: one-way latency added in each direction. Every chunk is released ``delay``
    seconds after it was read, without limiting throughput: pipelined data keeps flowing, so a
    round trip costs 2 x delay and nothing else does.

    ``rate``: bytes per second each direction carries at most, all connections together (a
    slow line), None for no limit.

    A client that needs ``n`` more bytes from the server, or ``k`` more replies one after
    another, cannot be done sooner than ``least_time(down=n, round_trips=k)``, however fast
    its CPU: the kill tests kill within that time to be sure the work is still going on.
    ``bytes_down`` counts what went to clients over all connections.

    Faults, applied to the bytes flowing from the server to the client:

    - ``cut_after``: reset a connection (RST on both sides) once it has carried this many
      bytes down (e.g. in the middle of a big FETCH literal), for the connections numbered in
      ``cut_links`` (None: every one);
    - ``stall_after`` / ``stall_for``: stop forwarding for ``stall_for`` seconds once a
      connection has carried that many bytes down (``stall_links`` as ``cut_links``);
    - ``refusing``: new connections are reset at once (counted in ``refused``);
    - ``drop(link)`` / ``drop_all()``: reset open connections now, as a dying network path does;
    - ``split_lines``: a delay in seconds (None: off). Every line the server sends (literal
      data too) reaches the client in two TCP segments, cut in its middle, the second one
      ``split_lines`` seconds after the first (as a server that writes a response in two
      pieces, or a congested path, delivers it). Only meaningful on plaintext connections:
      under TLS the proxy sees records, not lines. ``splits`` counts the cuts made.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *,
                 delay: float = 0.0, rate: float | None = None) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.rate = rate
        self.bytes_down = 0
        self._line_free_at = {True: 0.0, False: 0.0}  # up?: when the line is idle again
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[Link] = []  # the open ones
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.stalls = 0
        self.refusing = False
        self.cut_after: int | None = None
        self.cut_links: set[int] | None = None
        self.stall_after: int | None = None
        self.stall_for = 0.0
        self.stall_links: set[int] | None = None
        self.split_lines: float | None = None
        self.splits = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="tcp-proxy")

    def start(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not, and the
        # descriptor could then be reused by another listener and accepted on by that thread.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        self._listener.close()
        self.drop_all()

    def least_time(self, *, down: int = 0, round_trips: int = 0) -> float:
        """Seconds a client needs at least to receive ``down`` bytes through this proxy, or to
        wait for ``round_trips`` replies one after another (whichever is longer: the two may
        overlap)."""
        # The piece on the line right now may be nearly through already.
        transfer = max(0, down - PIECE) / self.rate if self.rate else 0.0
        return max(transfer, round_trips * 2 * self.delay)

    def links(self) -> list[Link]:
        """The open connections, oldest first."""
        with self._lock:
            return list(self._links)

    def drop(self, link: Link) -> bool:
        """Reset one connection (both sides); False if it was closed already."""
        if not self._forget(link):
            return False
        _reset(link.client)
        _reset(link.upstream)
        return True

    def drop_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        return sum(self.drop(link) for link in self.links())

    def _forget(self, link: Link) -> bool:
        """Mark a link closed; True for the one caller that closed it."""
        with self._lock:
            if link.closed:
                return False
            link.closed = True
            self._links.remove(link)
            return True

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            refuse = self.refusing
            with self._lock:
                self.accepted += 1
                number = self.accepted
                self.refused += refuse
            if refuse:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                # Small writes (commands, status lines) must not wait for Nagle's ~40 ms:
                # the only latency is the one asked for.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Link(client, upstream, number)
            with self._lock:
                self._links.append(link)
            for up in (True, False):
                # Two threads a direction: one reads and stamps each chunk with its release
                # time, the other releases it then, so reading goes on during the delay.
                pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
                name = "tcp-proxy-up" if up else "tcp-proxy-down"
                src = client if up else upstream
                threading.Thread(target=self._read, args=(src, pending), daemon=True,
                                 name=name).start()
                threading.Thread(target=self._send, args=(link, up, pending), daemon=True,
                                 name=name).start()

    def _read(self, src: socket.socket, pending: queue.SimpleQueue[tuple[float, bytes]]
              ) -> None:
        # The queue is unbounded: it holds what arrives during one delay (megabytes at most
        # in these tests), and a bound would limit the throughput.
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            pending.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _send(self, link: Link, up: bool,
              pending: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        stalled = False
        try:
            while not link.closed:
                due, data = pending.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data or link.closed:
                    break
                if up:
                    self._paced_send(link, up, data)
                    continue
                go_on, stalled = self._forward_down(link, data, stalled)
                if not go_on:
                    return
        except OSError:
            pass
        self._close_link(link)

    def _applies(self, numbers: set[int] | None, link: Link) -> bool:
        return numbers is None or link.number in numbers

    def _forward_down(self, link: Link, data: bytes, stalled: bool) -> tuple[bool, bool]:
        """Send one chunk from the server to the client through the faults:
        (go on, stalled by now)."""
        cut = self.cut_after
        if (cut is not None and self._applies(self.cut_links, link)
                and link.bytes_down + len(data) > cut):
            keep = max(0, cut - link.bytes_down)
            if keep:
                self._paced_send(link, False, data[:keep])
            with self._lock:
                self.cuts += 1
            self.drop(link)
            return False, stalled
        stall = self.stall_after
        if (stall is not None and not stalled and self._applies(self.stall_links, link)
                and link.bytes_down + len(data) > stall):
            stalled = True
            with self._lock:
                self.stalls += 1
            time.sleep(self.stall_for)
            if link.closed:
                return False, stalled
        split = self.split_lines
        if split is not None:
            self._split_send(link, data, split)
        else:
            self._paced_send(link, False, data)
        return True, stalled

    def _split_send(self, link: Link, data: bytes, delay: float) -> None:
        """Send ``data`` with a cut in the middle of every line that ends in it (a line that
        began in an earlier chunk is cut in the middle of its rest), ``delay`` seconds between
        the pieces: each piece leaves as its own segment (TCP_NODELAY)."""
        cuts = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            cuts.append((start + end + 1) // 2)
            start = end + 1
        begin = 0
        for cut in cuts:
            if cut <= begin:
                continue
            self._paced_send(link, False, data[begin:cut])
            with self._lock:
                self.splits += 1
            begin = cut
            time.sleep(delay)
            if link.closed:
                return
        if begin < len(data):
            self._paced_send(link, False, data[begin:])

    def _paced_send(self, link: Link, up: bool, data: bytes) -> None:
        """Send within ``rate``: each piece leaves once the line would have carried it, so
        that connections sharing the line take turns."""
        for start in range(0, len(data), PIECE):
            piece = data[start:start + PIECE]
            rate = self.rate
            if rate:
                with self._lock:
                    begin = max(time.monotonic(), self._line_free_at[up])
                    self._line_free_at[up] = done = begin + len(piece) / rate
                wait = done - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            if up:
                link.upstream.sendall(piece)
                link.bytes_up += len(piece)
            else:
                link.client.sendall(piece)
                link.bytes_down += len(piece)
                with self._lock:
                    self.bytes_down += len(piece)

    def _close_link(self, link: Link) -> None:
        """One side is gone: end the other too (a half-closed TLS stream is of no use)."""
        if self._forget(link):
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a broken network path does. SHUT_RD first wakes a
    thread blocked in recv() on it without sending anything."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
