"""Fixtures of the system tests: ``daemons`` starts `syncd run` subprocesses and ends every one
by its PID (SIGTERM, then SIGKILL), printing its log (shown when a test fails)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess

STOP_LIMIT = 5.0  # SIGTERM -> exit 0 within this many seconds (the README's contract)

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def daemons(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartDaemon]:
    """start(config, env=..., args=...) -> DaemonProcess; every one is stopped by PID. If the
    test failed, a daemon still running first dumps its threads' stacks into its log."""
    started: list[DaemonProcess] = []
    failed_before = request.session.testsfailed

    def start(config: Path, *, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(config, log_path=tmp_path / f"daemon-{len(started)}.log", env=env,
                          args=args)
        started.append(d.start())
        return d

    try:
        yield start
    finally:
        failed = request.session.testsfailed > failed_before
        for d in started:
            if failed and d.alive():
                d.signal(signal.SIGUSR1)
                time.sleep(0.3)
            rc, seconds = d.stop(STOP_LIMIT)
            print(f"--- daemon pid {d.pid}: exit {rc} {seconds:.1f} s after SIGTERM; log:\n"
                  f"{d.log()[-6000:]}")
