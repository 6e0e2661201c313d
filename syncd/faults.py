"""Fault injection for the crash tests: the engine calls checkpoint() between every I/O step
and every state commit. Inert (one global lookup) unless a test arms it.

- In-process: ``arm(n)`` makes the n-th checkpoint raise InjectedCrash (a BaseException, so no
  handler in syncd swallows it, just like a kill).
- Subprocess: ``SYNCD_CRASH_AT=n`` makes the n-th checkpoint kill the process with SIGKILL.
"""

from __future__ import annotations

import os
import signal


class InjectedCrash(BaseException):
    def __init__(self, step: str, count: int) -> None:
        super().__init__(f"injected crash at checkpoint {count} ({step})")
        self.step = step
        self.count = count


_armed_at = int(os.environ.get("SYNCD_CRASH_AT", "0") or 0)
_kill = _armed_at > 0
_count = 0
trace: list[str] | None = None  # when a list, every checkpoint name is appended


def arm(at: int | None, *, record: bool = False) -> None:
    """Crash at the at-th checkpoint from now (None: disarm). record=True keeps a trace."""
    global _armed_at, _count, _kill, trace
    _armed_at = at or 0
    _kill = False
    _count = 0
    trace = [] if record else None


def checkpoint(step: str) -> None:
    global _count
    if not _armed_at and trace is None:
        return
    _count += 1
    if trace is not None:
        trace.append(step)
    if _armed_at and _count == _armed_at:
        if _kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrash(step, _count)
