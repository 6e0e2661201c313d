"""Fault injection for the crash tests: the engine calls checkpoint() between every I/O step
and every state commit. Inert (one global lookup) unless a test arms it.

- In-process: ``arm(n)`` makes the n-th checkpoint raise InjectedCrash (a BaseException, so no
  handler in syncd swallows it, just like a kill).
- Subprocess: ``SYNCD_CRASH_AT=n`` makes the n-th checkpoint kill the process with SIGKILL.
- Hooks: ``add_hook(step, fn)`` runs fn at every checkpoint named step (a test that changes
  the Maildir in the middle of a sync); ``SYNCD_HANG_AT=step`` makes a subprocess block for
  good at that step (a stuck worker, for the watchdog tests), ``SYNCD_SLOW_AT=step=seconds``
  pause there once (a batch that outlasts a reload's grace period).

Checkpoints are also where a sync shows progress: a thread that set ``set_progress(fn)`` has
fn called at each of its checkpoints (the daemon's heartbeats, syncd/service/health.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable


class InjectedCrash(BaseException):
    def __init__(self, step: str, count: int) -> None:
        super().__init__(f"injected crash at checkpoint {count} ({step})")
        self.step = step
        self.count = count


_armed_at = int(os.environ.get("SYNCD_CRASH_AT", "0") or 0)
_kill = _armed_at > 0
_count = 0
trace: list[str] | None = None  # when a list, every checkpoint name is appended
_hooks: dict[str, Callable[[str], None]] = {}
_thread = threading.local()  # .progress: the calling thread's progress callback


def _hang(step: str) -> None:
    print(f"faults: hanging for good at {step}", file=sys.stderr, flush=True)
    while True:  # a stuck network read, a deadlock: only the process's end ends it
        time.sleep(3600)


def _slow_once(seconds: float) -> Callable[[str], None]:
    done: list[bool] = []

    def slow(step: str) -> None:
        if not done:
            done.append(True)
            print(f"faults: {seconds:g} s pause at {step}", file=sys.stderr, flush=True)
            time.sleep(seconds)

    return slow


if os.environ.get("SYNCD_HANG_AT"):
    _hooks[os.environ["SYNCD_HANG_AT"]] = _hang
if os.environ.get("SYNCD_SLOW_AT"):  # "step=seconds": the first time only (a long batch)
    _step, _, _seconds = os.environ["SYNCD_SLOW_AT"].partition("=")
    _hooks[_step] = _slow_once(float(_seconds or 5))


def add_hook(step: str, hook: Callable[[str], None] | None) -> None:
    """Run hook(step) at every checkpoint named step, in the syncing thread (None: remove)."""
    if hook is None:
        _hooks.pop(step, None)
    else:
        _hooks[step] = hook


def set_progress(callback: Callable[[str], None] | None) -> None:
    """Call callback(step) at each checkpoint this thread passes (None: stop)."""
    _thread.progress = callback


def arm(at: int | None, *, record: bool = False) -> None:
    """Crash at the at-th checkpoint from now (None: disarm). record=True keeps a trace."""
    global _armed_at, _count, _kill, trace
    _armed_at = at or 0
    _kill = False
    _count = 0
    trace = [] if record else None


def checkpoint(step: str) -> None:
    global _count
    progress = getattr(_thread, "progress", None)
    if progress is not None:
        progress(step)
    if _hooks:
        hook = _hooks.get(step)
        if hook is not None:
            hook(step)
    if not _armed_at and trace is None:
        return
    _count += 1
    if trace is not None:
        trace.append(step)
    if _armed_at and _count == _armed_at:
        if _kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrash(step, _count)
