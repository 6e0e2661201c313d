"""One inotify instance and one thread for every directory the daemon watches (Linux).

watchdog runs a thread per watched directory (and, before 7.0, an inotify instance each,
of which a user gets 128): a daemon with 20 accounts of 6 folders, cur/ and new/ each, ran
240 emitter threads (issue 21), and a thousand folders would run 2,000. Here every directory
is one watch on one descriptor, read by one thread that sleeps in poll() until the kernel
has events or stop() wakes it (no timeout: an idle daemon's watcher never wakes).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("syncd.watch")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# What a mail client does to a Maildir: deliver (create, or a rename from tmp/), rename for
# flags, delete. IN_CLOSE_WRITE for files written in place (the daemon's own probe file).
MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ_SIZE = 64 * 1024

# (directory, name, is_dir) for each event; no arguments for a lost queue (overflow)
OnEvent = Callable[[str, str, bool], None]


def available() -> bool:
    """True where inotify can be used (Linux with a libc that has inotify_init1)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).inotify_init1  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


def parse(data: bytes) -> list[tuple[int, int, str]]:
    """(wd, mask, name) of each event in a buffer read from an inotify descriptor."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((wd, mask, os.fsdecode(name)))
    return events


class Inotify:
    """Watches directories (not recursively); calls ``on_event`` in its own thread."""

    def __init__(self, on_event: OnEvent, on_overflow: Callable[[], None]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
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
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), MASK)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), directory)
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
            self._libc.inotify_rm_watch(self._fd, wd)  # fails only if already gone

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
        poller.register(self._fd, select.POLLIN)
        poller.register(self._woken.fileno(), select.POLLIN)
        try:
            while not self._stopping.is_set():
                poller.poll()
                if self._stopping.is_set():
                    break
                try:
                    data = os.read(self._fd, _READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                self._deliver(parse(data))
        finally:
            os.close(self._fd)
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
