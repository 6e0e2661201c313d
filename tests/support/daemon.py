"""Helpers for tests that run `syncd run` as a subprocess: start/stop it (always by PID),
poll with a deadline, and a fake $NOTIFY_SOCKET that records what the daemon tells systemd.
(The TCP proxy that plays a failing network is tests/support/tcp_proxy.py.)

This module must not import pytest or syncd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
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
