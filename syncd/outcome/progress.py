"""Progress bars (messages, bytes, ETA) on a terminal; nothing when output is not a TTY."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, TextIO

from syncd.outcome.results import NullReporter


class NullProgress(NullReporter):
    """No progress output (not a terminal); a context manager like RichProgress."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class RichProgress:
    """One bar per account, counting downloaded bytes; the description shows messages."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(file=stream), transient=True)
        self._tasks: dict[str, Any] = {}
        self._counts: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def folder_started(self, account: str, folder: str, messages: int, size: int) -> None:
        with self._lock:
            task = self._tasks.get(account)
            _done, total = self._counts.setdefault(account, [0, 0])
            self._counts[account][1] = total + messages
            if task is None:
                self._tasks[account] = self._progress.add_task(
                    self._label(account, folder), total=size or None)
            else:
                current = self._progress.tasks[task].total or 0
                self._progress.update(task, total=current + size,
                                      description=self._label(account, folder))

    def _label(self, account: str, folder: str) -> str:
        done, total = self._counts.get(account, [0, 0])
        return f"{account}/{folder} {done}/{total}"

    def advance(self, account: str, messages: int, size: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(account, [0, 0])
            counts[0] += messages
            task = self._tasks.get(account)
            if task is not None:
                description = self._progress.tasks[task].description.rsplit(" ", 1)[0]
                self._progress.update(task, advance=size,
                                      description=f"{description} {counts[0]}/{counts[1]}")

    def folder_done(self, account: str, folder: str) -> None:
        pass


def make_reporter(stream: TextIO) -> NullProgress | RichProgress:
    if stream.isatty():
        return RichProgress(stream)
    return NullProgress()
