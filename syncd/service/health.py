"""Heartbeats: how the daemon knows that each of its threads is still doing its job, so that
WATCHDOG=1 tells systemd the truth (a live main loop says nothing about a deadlocked worker).

Every long-lived thread (account worker, IDLE watcher, the filesystem watcher's dispatcher)
owns a Heartbeat. It beats whenever it makes progress, and says so when it waits on purpose
(for the next request, a backoff): a waiting thread is healthy however long it waits. A thread
that is busy and has not beaten for longer than the stale threshold is stuck.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

# The stale threshold, as a share of systemd's WatchdogSec: below it, so that systemd restarts
# a stuck daemon a little after the threshold, yet generous enough for the slowest single step
# between two beats (a STATUS of every folder, one download group on a slow line).
STALE_SHARE = 0.75


class Heartbeat:
    """Written by its own thread only; read by the main loop. Plain attribute writes are
    atomic in CPython, so no lock: a reader sees the old or the new value, both fine."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()
        self.idle = False  # waiting on purpose: never stale
        self.doing = "starting"

    def beat(self, doing: str | None = None) -> None:
        """Progress: the thread is busy and moving."""
        self.last = time.monotonic()
        self.idle = False
        if doing is not None:
            self.doing = doing

    def waiting(self, why: str = "idle") -> None:
        """The thread is about to wait on purpose (no work, a backoff)."""
        self.last = time.monotonic()
        self.idle = True
        self.doing = why

    def stale_for(self, now: float) -> float:
        """Seconds since the last beat of a busy thread; 0 for a waiting one."""
        return 0.0 if self.idle else max(0.0, now - self.last)


class Stuck(NamedTuple):
    name: str
    seconds: float
    doing: str

    def describe(self) -> str:
        return f"{self.name} stuck for {self.seconds:.0f} s ({self.doing})"


def stale_threshold(watchdog_timeout: float) -> float:
    return watchdog_timeout * STALE_SHARE


def find_stuck(beats: Iterable[Heartbeat], threshold: float,
               now: float | None = None) -> list[Stuck]:
    when = time.monotonic() if now is None else now
    return [Stuck(b.name, b.stale_for(when), b.doing) for b in beats
            if b.stale_for(when) > threshold]


class BeatReporter:
    """A progress Reporter (syncd.outcome.results) that turns the engine's progress into
    beats: every folder started and every message downloaded shows that the account's sync
    moves."""

    def __init__(self, heartbeat: Heartbeat) -> None:
        self.heartbeat = heartbeat

    def folder_started(self, account: str, folder: str, messages: int, size: int) -> None:
        self.heartbeat.beat(f"downloading {messages} message(s) in {folder}")

    def advance(self, account: str, messages: int, size: int) -> None:
        self.heartbeat.beat()

    def folder_done(self, account: str, folder: str) -> None:
        self.heartbeat.beat()
