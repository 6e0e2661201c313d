"""Which server folders a sync covers, which local folders the server lacks, and when a folder
can be skipped because neither side changed. Pure: the engine and the no-change check
(syncd/imap/nochange.py) decide with the same functions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Container, Iterable, Mapping
from typing import NamedTuple, Protocol

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


class Namespace(NamedTuple):
    """The server's personal namespace (RFC 2342 NAMESPACE): where the user's own folders
    live. ``prefix`` is "" on most servers and "INBOX." on Courier and Cyrus (whose top-level
    CREATE is refused); ``delimiter`` is its hierarchy delimiter (None: unknown or flat)."""

    prefix: str = ""
    delimiter: str | None = None


NO_NAMESPACE = Namespace()


def personal_namespace(prefix: str, delimiter: str | None) -> Namespace:
    """A Namespace from a NAMESPACE reply's first personal entry. A prefix that does not end
    with its delimiter ("INBOX" with ".") gets it: every folder under it is prefix+delimiter
    +name, and a bare name equal to the prefix is the prefix folder itself, not under it."""
    if prefix and delimiter and not prefix.endswith(delimiter):
        prefix += delimiter
    return Namespace(prefix, delimiter or None)


def _is_inbox(component: str) -> bool:
    return component.upper() == "INBOX"


def without_prefix(name: str, namespace: Namespace) -> str | None:
    """``name`` with the personal prefix cut off; None when it is not under the prefix, or
    is INBOX itself. The INBOX part of a prefix matches in any case (RFC 3501 5.1: INBOX is
    case-insensitive). A remainder that would itself be INBOX ("INBOX.INBOX"), or begin with
    an INBOX level, is not stripped: it would take the real INBOX's local folder."""
    prefix = namespace.prefix
    if not prefix or len(name) <= len(prefix) or _is_inbox(name):
        return None
    head = name[:len(prefix)]
    if head != prefix and not (prefix[:5].upper() == "INBOX" and head[:5].upper() == "INBOX"
                               and head[5:] == prefix[5:]):
        return None
    rest = name[len(prefix):]
    first = rest.split(namespace.delimiter, 1)[0] if namespace.delimiter else rest
    return None if _is_inbox(first) else rest


def folder_selected(name: str, include: Iterable[str], exclude: Iterable[str], *,
                    namespace: Namespace = NO_NAMESPACE) -> bool:
    """Glob filters on folder names; INBOX matches case-insensitively. A pattern matches the
    server's name or, under a personal namespace prefix, the name without it: a Courier user's
    `exclude: [Trash]` excludes INBOX.Trash, and `exclude: [INBOX.Trash]` does too."""
    names = [name]
    short = without_prefix(name, namespace)
    if short is not None:
        names.append(short)

    def matches(pattern: str) -> bool:
        if name.upper() == "INBOX" and pattern.upper() == "INBOX":
            return True
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)

    return any(matches(p) for p in include) and not any(matches(p) for p in exclude)


def glob_matcher(name: str, *, namespace: Namespace = NO_NAMESPACE) -> Callable[[str], bool]:
    """Whether one glob matches folder ``name`` as include/exclude patterns do (the server's
    name or the name without the personal namespace prefix; INBOX in any case): for
    ``folder_settings``, where the first matching glob wins."""
    return lambda pattern: folder_selected(name, (pattern,), (), namespace=namespace)


def prefixed_name(name: str, namespace: Namespace) -> str:
    """The server name a folder written as syncd shows it locally stands for: ``Lists`` (or
    ``Lists/python``, its local path) is ``INBOX.Lists`` (``INBOX.Lists.python``) under
    Courier's ``INBOX.`` prefix. INBOX, a name already under the prefix, and any name on a
    server without a prefix are returned as they are. Whether a folder outside the prefix
    really has this name is the caller's to ask (only the server knows)."""
    prefix = namespace.prefix
    if (not prefix or _is_inbox(name.split("/", 1)[0])
            or name.upper().startswith(prefix.upper())):
        return name
    delimiter = namespace.delimiter
    return prefix + (name.replace("/", delimiter) if delimiter else name)


def local_components(folder: RemoteFolder, namespace: Namespace = NO_NAMESPACE
                     ) -> tuple[str, ...]:
    """The folder's path components under the account's Maildir (any INBOX is "INBOX"),
    without the personal namespace prefix: INBOX.Archive.2024 is Archive/2024."""
    if folder.name.upper() == "INBOX":
        return ("INBOX",)
    short = without_prefix(folder.name, namespace)
    if short is None:
        return folder.components
    return tuple(short.split(folder.delimiter)) if folder.delimiter else (short,)


def server_delimiter(folders: Iterable[RemoteFolder]) -> str:
    return next((f.delimiter for f in folders if f.delimiter), None) or "/"


def server_name(components: tuple[str, ...], namespace: Namespace, delimiter: str) -> str:
    """The server name a new local folder gets: under the personal prefix with the server's
    delimiter (local Archive/2024 -> INBOX.Archive.2024 on Courier). A local folder below
    INBOX (``INBOX/Sub``, as a syncd without namespace support laid them out) is the server's
    INBOX hierarchy: INBOX.Sub, never INBOX.INBOX.Sub."""
    if components == ("INBOX",):
        return "INBOX"
    delimiter = namespace.delimiter or delimiter
    if _is_inbox(components[0]):
        return delimiter.join(("INBOX", *components[1:]))
    return namespace.prefix + delimiter.join(components)


def local_only_folders(local: Iterable[tuple[str, ...]], remote_names: Iterable[str],
                       delimiter: str, include: Iterable[str], exclude: Iterable[str], *,
                       namespace: Namespace = NO_NAMESPACE,
                       claimed: Container[tuple[str, ...]] = (),
                       recorded: Mapping[tuple[str, ...], str] | None = None
                       ) -> list[tuple[str, tuple[str, ...]]]:
    """(server name, local components) of the selected local folders the server does not
    list (to be created there, or reported as deleted there). ``claimed``: local folders that
    are a listed server folder's place already, whatever their names say; ``recorded``: the
    server name the state records for a local folder (it wins over the computed one)."""
    listed = set(remote_names)
    found = []
    for components in local:
        if components in claimed:
            continue
        name = (recorded or {}).get(components) or server_name(components, namespace,
                                                                delimiter)
        if name not in listed and folder_selected(name, include, exclude, namespace=namespace):
            found.append((name, components))
    return found


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
