"""Advisory locks (flock) under the state directory: one syncd process per account at a time,
and one daemon per state directory. The kernel drops them when the process dies, even by
kill -9, so a crash never leaves a stale lock behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from syncd.errors import AccountError, SyncdError


class AlreadyRunning(SyncdError):
    pass


def _acquire(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def account_lock(account_name: str, state_dir: Path) -> Iterator[None]:
    """A `sync` beside a running daemon, or two overlapping `sync`s, would race on the Maildir
    and the state of the same account."""
    fd = _acquire(state_dir / f"{account_name}.lock")
    if fd is None:
        raise AccountError(account_name, "another syncd process is syncing this account "
                           "(is `syncd run` running?)", cause="busy")
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def daemon_lock(state_dir: Path) -> Iterator[None]:
    fd = _acquire(state_dir / "daemon.lock")
    if fd is None:
        raise AlreadyRunning(f"another `syncd run` is already running with state in {state_dir}")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
