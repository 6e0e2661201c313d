"""Filesystem watching: watchdog observes every synced folder's cur/ and new/. Events are hints
only: the folder is rescanned and planned, so the echo of syncd's own renames plans to nothing
and needs no filtering."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("syncd.watch")

# Mutt renames and unlinks in bursts; one sync shortly after the first event covers the burst.
DEBOUNCE = 0.3


class MaildirEventHandler(FileSystemEventHandler):
    def __init__(self, lookup: Callable[[str], tuple[str, str] | None],
                 on_change: Callable[[str, str], None]) -> None:
        self.lookup = lookup
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed", "closed_no_write"):
            return
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        for raw in paths:
            path = os.fsdecode(raw)
            name = os.path.basename(path)
            if name.startswith("."):
                continue
            target = self.lookup(os.path.dirname(path))
            if target is not None:
                self.on_change(*target)


class MaildirWatcher:
    """Watches the cur/ and new/ directories of every synced folder of every account."""

    def __init__(self, on_change: Callable[[str, str], None]) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._dirs: dict[str, tuple[str, str]] = {}  # ".../Folder/cur" -> (account, folder)
        self._watches: dict[str, object] = {}
        self._observer = Observer()
        self._observer.daemon = True
        self._handler = MaildirEventHandler(self._lookup, on_change)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
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
        with self._lock:
            for directory, (owner, _) in list(self._dirs.items()):
                if owner == account and directory not in wanted:
                    del self._dirs[directory]
                    watch = self._watches.pop(directory, None)
                    if watch is not None:
                        self._observer.unschedule(watch)
            for directory, target in wanted.items():
                self._dirs[directory] = target
                if directory not in self._watches and os.path.isdir(directory):
                    try:
                        self._watches[directory] = self._observer.schedule(
                            self._handler, directory, recursive=False)
                    except OSError as exc:
                        log.warning("cannot watch %s: %s", directory, exc)

    def remove_account(self, account: str) -> None:
        self.set_account(account, {})
