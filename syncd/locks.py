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


class AccountBusy(AccountError):
    """The account's lock is held by another process (pid in ``holder`` when known)."""

    def __init__(self, account: str, holder: int | None) -> None:
        self.holder = holder
        by = f" (pid {holder})" if holder else ""
        super().__init__(account, f"another syncd process{by} is syncing this account "
                         "(is `syncd run` running?)", cause="busy")


def _acquire(path: Path) -> int | None:
    """The lock, with our pid written into the file so that a process kept waiting can say
    who holds it; None if another process holds it. A flock and a short write: cheap enough
    for the no-change path of `syncd sync`."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # only informative
    return fd


def lock_holder(path: Path) -> int | None:
    """The pid written by the process that holds (or last held) the lock file, if any."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(32)
        return int(text.split()[0]) if text.strip() else None
    except (OSError, ValueError, IndexError):
        return None


def account_lock_path(account_name: str, state_dir: Path) -> Path:
    return state_dir / f"{account_name}.lock"


class AccountLock:
    """One account's lock, held from acquire() until release(): `syncd sync` takes it before
    it dials or logs in (issue 16), the daemon for the account's whole run."""

    def __init__(self, account_name: str, state_dir: Path) -> None:
        self.account = account_name
        self.path = account_lock_path(account_name, state_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take it now or raise AccountBusy (naming the holder's pid); never waits."""
        if self._fd is not None:
            return
        fd = _acquire(self.path)
        if fd is None:
            raise AccountBusy(self.account, lock_holder(self.path))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def account_lock(account_name: str, state_dir: Path) -> Iterator[None]:
    """A `sync` beside a running daemon, or two overlapping `sync`s, would race on the Maildir
    and the state of the same account."""
    lock = AccountLock(account_name, state_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def daemon_lock(state_dir: Path) -> Iterator[None]:
    fd = _acquire(state_dir / "daemon.lock")
    if fd is None:
        raise AlreadyRunning(f"another `syncd run` is already running with state in {state_dir}")
    try:
        yield
    finally:
        os.close(fd)
