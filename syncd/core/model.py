"""Plain values the planner works on. No I/O, no behaviour beyond derived properties."""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.core.flags import Flags


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    """A message on the server, as one SELECT/FETCH saw it.

    ``size`` is RFC822.SIZE (CRLF line ends). ``message_id`` is filled only where the engine
    needs it for pairing (messages the state does not know yet).
    """

    uid: int
    flags: Flags
    size: int | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class LocalMessage:
    """A file in a Maildir folder.

    ``key`` is the file name before ``:2,`` (stable across mutt's flag renames). ``size`` is the
    size the message would have on the server (LF turned into CRLF); like ``message_id`` it is
    filled only for files the state does not know yet.
    """

    key: str
    flags: Flags
    size: int | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class SyncedMessage:
    """One row of the state: the pairing of a UID with a Maildir key, and the flags both sides
    had when they were last in step."""

    uid: int
    key: str
    flags: Flags
    size: int | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class FolderPolicy:
    """What the planner may do in one folder."""

    trash_folder: str | None = None  # local deletions become a move there instead of an expunge
    force_deletions: bool = False  # the user confirmed a mass deletion
    local_folder_missing: bool = False  # the folder (or the whole maildir) directory vanished
    # The guard holds when at least this many known messages, and more than this share of them,
    # vanish locally in one go.
    guard_min_count: int = 5
    guard_share: float = 0.5


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """Everything the planner knows about one folder at one moment."""

    synced: tuple[SyncedMessage, ...]
    local: tuple[LocalMessage, ...]
    remote: tuple[RemoteMessage, ...]
    # True when UIDVALIDITY changed: every synced UID is void and must be re-paired.
    uidvalidity_changed: bool = False
    policy: FolderPolicy = field(default_factory=FolderPolicy)
