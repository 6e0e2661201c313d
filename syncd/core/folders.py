"""Which server folders a sync covers, which local folders the server lacks, and when a folder
can be skipped because neither side changed. Pure: the engine and the no-change check
(syncd/nochange.py) decide with the same functions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from syncd.core.flags import Flags
from syncd.core.model import FolderStatus, RemoteFolder


class HasFlags(Protocol):
    @property
    def flags(self) -> Flags: ...


class HasKeyAndFlags(HasFlags, Protocol):
    @property
    def key(self) -> str: ...


class Cursors(Protocol):
    """What the state remembers of a folder's last completed sync (adapters.state.FolderState)."""

    @property
    def uidvalidity(self) -> int | None: ...
    @property
    def uidnext(self) -> int | None: ...
    @property
    def highestmodseq(self) -> int | None: ...
    @property
    def last_sync(self) -> float | None: ...
    @property
    def guard_held(self) -> bool: ...


def folder_selected(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Glob filters on server folder names; INBOX matches case-insensitively."""
    def matches(pattern: str) -> bool:
        if name.upper() == "INBOX" and pattern.upper() == "INBOX":
            return True
        return fnmatch.fnmatchcase(name, pattern)

    return any(matches(p) for p in include) and not any(matches(p) for p in exclude)


def local_components(folder: RemoteFolder) -> tuple[str, ...]:
    """The folder's path components under the account's Maildir (any INBOX is "INBOX")."""
    if folder.name.upper() == "INBOX":
        return ("INBOX",)
    return folder.components


def server_delimiter(folders: Iterable[RemoteFolder]) -> str:
    return next((f.delimiter for f in folders if f.delimiter), None) or "/"


def local_only_folders(local: Iterable[tuple[str, ...]], remote_names: Iterable[str],
                       delimiter: str, include: Iterable[str],
                       exclude: Iterable[str]) -> list[str]:
    """Server names of the selected local folders the server does not list (to be created
    there, or reported as deleted there)."""
    listed = set(remote_names)
    names = []
    for components in local:
        name = "INBOX" if components == ("INBOX",) else delimiter.join(components)
        if name not in listed and folder_selected(name, include, exclude):
            names.append(name)
    return names


def remote_unchanged(cursors: Cursors, status: FolderStatus, *, condstore: bool) -> bool:
    """STATUS matches the cursors of the last completed sync. HIGHESTMODSEQ is what covers
    flag changes; without CONDSTORE we cannot know, so never."""
    if cursors.highestmodseq is None or not condstore or status.highestmodseq is None:
        return False
    return (status.uidvalidity == cursors.uidvalidity and status.uidnext == cursors.uidnext
            and status.highestmodseq == cursors.highestmodseq)


def server_untouched(cursors: Cursors, status: FolderStatus, *, condstore: bool,
                     synced_count: Callable[[], int]) -> bool:
    """Nothing changed on the server since the last completed sync: STATUS equals the
    cursors, and the server has as many messages as the state. A held mass-deletion guard
    always needs a real look. ``synced_count`` (a query) runs only when the rest agreed."""
    return (cursors.last_sync is not None and not cursors.guard_held
            and remote_unchanged(cursors, status, condstore=condstore)
            and status.messages == synced_count())


def folder_untouched(cursors: Cursors, status: FolderStatus, *, condstore: bool,
                     synced_count: Callable[[], int],
                     local_unchanged: Callable[[], bool]) -> bool:
    """Nothing changed on either side since the last completed sync: the server as
    server_untouched says, and the Maildir directories as that sync left them
    (``local_unchanged``, two stats, runs last)."""
    return (server_untouched(cursors, status, condstore=condstore, synced_count=synced_count)
            and local_unchanged())


def files_match(synced: Iterable[HasKeyAndFlags], entries: Mapping[str, HasFlags]) -> bool:
    """The Maildir holds exactly the synced messages' files, with the synced flags."""
    count = 0
    for message in synced:
        count += 1
        entry = entries.get(message.key)
        if entry is None or entry.flags != message.flags:
            return False
    return count == len(entries)
