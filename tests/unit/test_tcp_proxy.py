"""The test proxy itself (tests/support/tcp_proxy.py): the kill tests rely on its latency and
its rate limit as lower bounds on how long a sync runs, so those bounds are checked here
against an echo server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def test_round_trips_cost_twice_the_delay_and_pipelining_does_not(echo_port: int) -> None:
    with TcpProxy(echo_port, delay=0.02) as proxy, connect(proxy) as sock:
        started = time.monotonic()
        for i in range(5):
            sock.sendall(b"ping %d\n" % i)
            assert receive(sock, 7) == b"ping %d\n" % i
        one_by_one = time.monotonic() - started
        started = time.monotonic()
        sock.sendall(b"".join(b"ping %d\n" % i for i in range(50)))
        receive(sock, 50 * 7)
        pipelined = time.monotonic() - started
    assert one_by_one >= proxy.least_time(round_trips=5) == pytest.approx(0.2)
    assert pipelined < one_by_one / 2  # one round trip, not fifty


def test_rate_limits_all_connections_together(echo_port: int) -> None:
    size = 200_000
    with TcpProxy(echo_port, rate=1_000_000) as proxy:
        socks = [connect(proxy) for _ in range(2)]
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"x" * size)
        for sock in socks:
            assert receive(sock, size) == b"x" * size
            sock.close()
        took = time.monotonic() - started
    assert proxy.bytes_down == 2 * size
    assert took >= proxy.least_time(down=2 * size) > 0.35


def test_cut_after_resets_and_refusing_refuses(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        proxy.cut_after = 1000
        with connect(proxy) as sock:
            sock.sendall(b"y" * 5000)
            data = b""
            with pytest.raises(OSError):  # ECONNRESET, or EOF below
                while chunk := sock.recv(65536):
                    data += chunk
                raise ConnectionResetError("EOF")
        assert len(data) <= 1000 and proxy.cuts == 1
        proxy.cut_after = None
        proxy.refusing = True
        # The reset may come before connect() returns, or at the first recv().
        with pytest.raises(OSError), connect(proxy) as sock:
            sock.sendall(b"z")
            if not sock.recv(1):
                raise ConnectionResetError("EOF")
        assert proxy.refused == 1 and proxy.accepted == 2 and not proxy.links()
