"""Helpers for tests that run `syncd run` as a subprocess: start/stop it (always by PID),
poll with a deadline, a TCP proxy that can drop every connection or refuse new ones for a
while (a network outage between the daemon and the server), and a fake $NOTIFY_SOCKET that
records what the daemon tells systemd.

This module must not import pytest or syncd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call `predicate` until it returns something truthy (returned) or `timeout` seconds have
    passed (AssertionError naming `message`). Exceptions from the predicate count as false."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # e.g. a file renamed between listdir and read
            value, last_exc = None, exc  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            extra = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {text}{extra}")
        time.sleep(interval)


class DaemonProcess:
    """`python -m syncd --config CFG run` as a child process; stdout+stderr go to a log file."""

    def __init__(
        self,
        config: Path,
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.config = Path(config)
        self.log_path = log_path or self.config.with_name(f"daemon-{time.time_ns()}.log")
        self.env = dict(env or {})
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> DaemonProcess:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "--config", str(self.config), *self.args, "run"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0, *, since: int = 0) -> None:
        wait_until(
            lambda: text in self.log()[since:],
            timeout,
            message=lambda: f"{text!r} in the daemon log:\n{self.log()[-3000:]}",
        )

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit; its exit code, or None if it is still running."""
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout: float = 5.0) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after `timeout`: (exit code or None if it had to be killed,
        seconds until it exited after SIGTERM)."""
        if self.proc is None:
            return None, 0.0
        started = time.monotonic()
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            return self.returncode, 0.0
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        elapsed = time.monotonic() - started
        if rc is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            self.returncode = None
            return None, elapsed
        return rc, elapsed

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(eq=False)
class Link:
    """One proxied connection: the daemon's side, the server's side, bytes carried."""

    client: socket.socket
    upstream: socket.socket
    accepted_at: float
    bytes_up: int = 0  # daemon -> server
    bytes_down: int = 0  # server -> daemon


class TcpProxy:
    """Forwards 127.0.0.1:<port> to (host, target_port), byte for byte (TLS passes through).

    `drop_all()` / `drop(link)` reset open connections (both sides) as a dying network path
    does; while `refusing` is true, new connections are reset at once."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[Link] = []
        self._stop = threading.Event()
        self.refusing = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close with RST (SO_LINGER 0), as a broken network path does. SHUT_RD first wakes
        a pump thread blocked in recv() on it without sending anything."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            sock.close()

    def links(self) -> list[Link]:
        """The open connections, oldest first."""
        with self._lock:
            return list(self._links)

    def connections(self) -> int:
        return len(self.links())

    def drop(self, link: Link) -> bool:
        """Reset one connection; False if it was closed already."""
        with self._lock:
            if link not in self._links:
                return False
            self._links.remove(link)
        self._reset(link.client)
        self._reset(link.upstream)
        return True

    def drop_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        return sum(self.drop(link) for link in self.links())

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            link = Link(client, upstream, time.monotonic())
            with self._lock:
                self._links.append(link)
            for up in (True, False):
                threading.Thread(target=self._pump, args=(link, up), daemon=True,
                                 name="tcp-proxy-pump").start()

    def _pump(self, link: Link, up: bool) -> None:
        src, dst = (link.client, link.upstream) if up else (link.upstream, link.client)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if up:
                    link.bytes_up += len(data)
                else:
                    link.bytes_down += len(data)
        except OSError:
            pass
        # One side is gone: end the other too (a half-closed TLS stream is of no use).
        with self._lock:
            known = link in self._links
            if known:
                self._links.remove(link)
        if known:
            for sock in (link.client, link.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.drop_all()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NotifySocket:
    """A fake $NOTIFY_SOCKET: an AF_UNIX datagram socket that records every sd_notify message
    (each a list of "KEY=value" lines) with the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)

    def start(self) -> NotifySocket:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.decode("utf-8", errors="replace").splitlines()
            with self._lock:
                self._messages.append((time.monotonic(), lines))

    def messages(self) -> list[tuple[float, list[str]]]:
        with self._lock:
            return list(self._messages)

    def lines(self, prefix: str = "") -> list[str]:
        return [line for _, msg in self.messages() for line in msg if line.startswith(prefix)]

    def times(self, line: str) -> list[float]:
        return [t for t, msg in self.messages() if line in msg]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> NotifySocket:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
