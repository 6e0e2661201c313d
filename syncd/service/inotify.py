"""One inotify instance and one thread for every directory the daemon watches (Linux).

watchdog runs a thread per watched directory (and, before 7.0, an inotify instance each,
of which a user gets 128): a daemon with 20 accounts of 6 folders, cur/ and new/ each, ran
240 emitter threads (issue 21), and a thousand folders would run 2,000. Here every directory
is one watch on one descriptor (inotify_simple, a thin binding of the kernel's calls), read by
one thread that sleeps in poll() until the kernel has events or stop() wakes it (no timeout:
an idle daemon's watcher never wakes).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inotify_simple import INotify

log = logging.getLogger("syncd.watch")

# inotify(7)'s values, as inotify_simple.flags has them (spelled out here so that this module
# imports on systems without inotify_simple, where the watchdog backend is used).
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
# What a mail client does to a Maildir: deliver (create, or a rename from tmp/), rename for
# flags, delete. IN_CLOSE_WRITE for files written in place (the daemon's own probe file).
MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR

# (directory, name, is_dir) for each event; no arguments for a lost queue (overflow)
OnEvent = Callable[[str, str, bool], None]


def available() -> bool:
    """True where inotify can be used: Linux, with inotify_simple installed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import inotify_simple  # noqa: F401
    except ImportError:
        return False
    return True


class Inotify:
    """Watches directories (not recursively); calls ``on_event`` in its own thread."""

    def __init__(self, on_event: OnEvent, on_overflow: Callable[[], None]) -> None:
        from inotify_simple import INotify

        self._inotify: INotify = INotify(nonblocking=True)
        self._on_event = on_event
        self._on_overflow = on_overflow
        self._lock = threading.Lock()  # guards the two maps (set_account runs in workers)
        self._paths: dict[int, str] = {}  # wd -> directory
        self._wds: dict[str, int] = {}  # directory -> wd
        self._woken, self._waker = socket.socketpair()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)

    def add(self, directory: str) -> None:
        """Watch ``directory``; OSError (with the errno) when the kernel refuses."""
        with self._lock:
            wd = self._inotify.add_watch(directory, MASK)
            self._paths[wd] = directory
            self._wds[directory] = wd

    def remove(self, directory: str) -> None:
        with self._lock:
            wd = self._wds.pop(directory, None)
            if wd is None:
                return
            others = [d for d, w in self._wds.items() if w == wd]
            if others:  # another path to the same directory still wants the watch
                self._paths[wd] = others[0]
                return
            self._paths.pop(wd, None)
            with contextlib.suppress(OSError):  # already gone with its directory
                self._inotify.rm_watch(wd)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._waker.send(b"s")

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._woken.fileno(), select.POLLIN)
        try:
            while not self._stopping.is_set():
                poller.poll()
                if self._stopping.is_set():
                    break
                self._deliver([(e.wd, e.mask, e.name) for e in self._inotify.read(timeout=0)])
        finally:
            self._inotify.close()
            self._woken.close()
            self._waker.close()

    def _deliver(self, events: list[tuple[int, int, str]]) -> None:
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                log.warning("filesystem events were lost (the kernel's queue overflowed); "
                            "rescanning every watched folder")
                self._on_overflow()
                continue
            with self._lock:
                directory = self._paths.get(wd)
                if mask & IN_IGNORED and directory is not None:
                    # The directory went away (or remove() ran): its wd may be reused.
                    del self._paths[wd]
                    if self._wds.get(directory) == wd:
                        del self._wds[directory]
            if directory is None or mask & IN_IGNORED:
                continue
            try:
                self._on_event(directory, name, bool(mask & IN_ISDIR))
            except Exception:  # a handler bug must not end the watching for good
                log.exception("filesystem event handler failed")
