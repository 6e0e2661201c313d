"""Filesystem watching: every synced folder's cur/ and new/ are watched, with one inotify
descriptor and thread on Linux (syncd/service/inotify.py) and with watchdog elsewhere. Events
are hints only: the folder is rescanned and planned, so the echo of syncd's own renames plans
to nothing and needs no filtering."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from syncd.service import inotify
from syncd.service.health import Heartbeat

log = logging.getLogger("syncd.watch")

# Mutt renames and unlinks in bursts; one sync shortly after the first event covers the burst.
DEBOUNCE = 0.3


class MaildirEventHandler(FileSystemEventHandler):
    """Runs in watchdog's dispatcher thread. Under watchdog <= 6 that thread holds the
    observer's lock while it calls us, so nothing here may wait for a lock that is held while
    calling into the observer (see MaildirWatcher.set_account)."""

    def __init__(self, lookup: Callable[[str], tuple[str, str] | None],
                 on_change: Callable[[str, str], None], heartbeat: Heartbeat,
                 canary_dir: str | None = None) -> None:
        self.lookup = lookup
        self.on_change = on_change
        self.heartbeat = heartbeat
        self.canary_dir = canary_dir

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Any event proves the dispatcher alive; the canary's exist for nothing else.
        self.heartbeat.waiting("watching")
        if event.is_directory or event.event_type in ("opened", "closed", "closed_no_write"):
            return
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        for raw in paths:
            self.changed(os.fsdecode(raw))

    def on_inotify(self, directory: str, name: str, is_dir: bool) -> None:
        """An event of the inotify backend (its own thread)."""
        self.heartbeat.waiting("watching")
        if not is_dir:
            self.changed(os.path.join(directory, name))

    def changed(self, path: str) -> None:
        name = os.path.basename(path)
        directory = os.path.dirname(path)
        if name.startswith(".") or directory == self.canary_dir:
            return
        target = self.lookup(directory)
        if target is not None:
            self.on_change(*target)


class MaildirWatcher:
    """Watches the cur/ and new/ directories of every synced folder of every account.

    Two locks, never nested the other way round: ``_schedule_lock`` serialises the changes to
    the set of watches (workers of several accounts call set_account) and is held while calling
    into the observer; ``_lock`` guards only the directory map the handler reads, and is never
    held while calling into the observer. watchdog's dispatcher thread holds the observer's
    lock while it runs the handler (up to watchdog 6), and schedule() takes that lock too:
    holding ``_lock`` around schedule() deadlocked both threads for good (issue 16)."""

    def __init__(self, on_change: Callable[[str, str], None], *,
                 canary_dir: Path | None = None, backend: str | None = None) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._schedule_lock = threading.Lock()
        self._dirs: dict[str, tuple[str, str]] = {}  # ".../Folder/cur" -> (account, folder)
        self._watches: dict[str, object] = {}  # under _schedule_lock only
        self.heartbeat = Heartbeat("filesystem watcher")
        self._canary_dir = canary_dir
        self._handler = MaildirEventHandler(self._lookup, on_change, self.heartbeat,
                                            str(canary_dir) if canary_dir else None)
        if backend is None:
            backend = "inotify" if inotify.available() else "watchdog"
        self.backend = backend
        self._inotify: inotify.Inotify | None = None
        self._observer: BaseObserver | None = None
        if backend == "inotify":
            self._inotify = inotify.Inotify(self._handler.on_inotify, self._everything_changed)
        else:
            self._observer = Observer()
            self._observer.daemon = True

    def _everything_changed(self) -> None:
        """Events were lost: every watched folder may have changed."""
        with self._lock:
            targets = set(self._dirs.values())
        for target in sorted(targets):
            self._on_change(*target)

    def _watch(self, directory: str) -> object:
        """Start watching ``directory``; a handle for _unschedule. OSError if refused."""
        if self._inotify is not None:
            self._inotify.add(directory)
            return directory
        assert self._observer is not None
        return self._observer.schedule(self._handler, directory, recursive=False)

    def start(self) -> None:
        if self._inotify is not None:
            self._inotify.start()
        else:
            assert self._observer is not None
            self._observer.start()
        self.heartbeat.waiting("watching")
        if self._canary_dir is not None:
            try:
                self._canary_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                with self._schedule_lock:
                    self._watch(str(self._canary_dir))
            except OSError as exc:
                log.warning("cannot watch %s: %s", self._canary_dir, exc)
                self._canary_dir = None

    def probe(self) -> None:
        """Make an event the dispatcher must deliver: if it does not within the stale
        threshold, the heartbeat goes stale (a busy beat now, a waiting one on delivery)."""
        if self._canary_dir is None:
            return
        self.heartbeat.beat("delivering a probe event")
        try:
            (self._canary_dir / "probe").write_bytes(b"%d\n" % time.monotonic_ns())
        except OSError as exc:
            log.warning("cannot write the watcher probe in %s: %s", self._canary_dir, exc)
            self.heartbeat.waiting("watching")  # cannot tell; never restart for that

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.stop()
        elif self._observer is not None:
            self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._inotify is not None:
            self._inotify.join(timeout)
        elif self._observer is not None:
            self._observer.join(timeout)

    def _lookup(self, directory: str) -> tuple[str, str] | None:
        with self._lock:
            return self._dirs.get(directory)

    def set_account(self, account: str, folders: dict[str, str]) -> None:
        """Watch exactly these folders (server name -> local folder path) for the account."""
        wanted: dict[str, tuple[str, str]] = {}
        for folder, local_path in folders.items():
            for sub in ("cur", "new"):
                wanted[str(Path(local_path) / sub)] = (account, folder)
        with self._schedule_lock:
            with self._lock:  # the map first: events of dropped folders stop at once
                dropped = [d for d, (owner, _) in self._dirs.items()
                           if owner == account and d not in wanted]
                for directory in dropped:
                    del self._dirs[directory]
                self._dirs.update(wanted)
            for directory in dropped:
                watch = self._watches.pop(directory, None)
                if watch is not None:
                    self._unschedule(watch)
            for directory in wanted:
                if directory not in self._watches and os.path.isdir(directory):
                    try:
                        self._watches[directory] = self._watch(directory)
                    except OSError as exc:
                        log.warning("cannot watch %s: %s", directory, exc)

    def _unschedule(self, watch: object) -> None:
        if self._inotify is not None:
            self._inotify.remove(str(watch))
            return
        assert self._observer is not None
        # KeyError: the emitter already ended (its directory was removed).
        with contextlib.suppress(KeyError):
            self._observer.unschedule(watch)  # type: ignore[arg-type]

    def remove_account(self, account: str) -> None:
        self.set_account(account, {})
