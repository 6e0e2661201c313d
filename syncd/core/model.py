"""Plain values the planner works on. No I/O, no behaviour beyond derived properties.

They are NamedTuples rather than frozen dataclasses: as immutable and as small, but a
dataclass costs about 1 ms to create at import (its methods are generated and compiled), and a
`syncd sync` with nothing to do starts in a fraction of a second.
"""

from __future__ import annotations

from typing import NamedTuple

from syncd.core.flags import ALL_LETTERS, Flags


class RemoteFolder(NamedTuple):
    name: str  # decoded from modified UTF-7; what state and the user see
    delimiter: str | None
    noselect: bool
    special_use: str | None  # "\\Sent", "\\Trash", ... where the server says so

    @property
    def components(self) -> tuple[str, ...]:
        if self.delimiter:
            return tuple(self.name.split(self.delimiter))
        return (self.name,)


class FolderStatus(NamedTuple):
    uidvalidity: int | None
    uidnext: int | None
    messages: int | None
    highestmodseq: int | None


class RemoteMessage(NamedTuple):
    """A message on the server, as one SELECT/FETCH saw it.

    ``size`` is RFC822.SIZE (CRLF line ends). ``message_id`` and ``trace_bytes`` (the part of
    ``size`` taken by header fields that servers and tools add, see syncd.core.message) are
    filled only where the engine needs them for pairing (messages the state does not know
    yet); ``body_digest`` only where ``digests_needed`` asked for it.
    """

    uid: int
    flags: Flags
    size: int | None = None
    message_id: str | None = None
    trace_bytes: int = 0
    body_digest: str | None = None


class LocalMessage(NamedTuple):
    """A file in a Maildir folder.

    ``key`` is the file name before ``:2,`` (stable across mutt's flag renames). ``size`` is the
    size the message would have on the server (LF turned into CRLF); like ``message_id`` it is
    filled only for files the state does not know yet; so are ``trace_bytes`` and (where
    ``digests_needed`` asked for it) ``body_digest``.
    """

    key: str
    flags: Flags
    size: int | None = None
    message_id: str | None = None
    trace_bytes: int = 0  # as RemoteMessage's: mbsync's X-TUID, ...
    body_digest: str | None = None  # as RemoteMessage's
    # A placeholder (syncd.core.placeholder) the state does not know: ``size`` is then the
    # full message's (its X-Syncd-Placeholder), so that it pairs with its server copy. Never
    # uploaded: its original is copied on the server instead (CopyOriginal).
    placeholder: bool = False


class SyncedMessage(NamedTuple):
    """One row of the state: the pairing of a UID with a Maildir key, and the flags both sides
    had when they were last in step."""

    uid: int
    key: str
    flags: Flags
    size: int | None = None
    message_id: str | None = None
    # The local file is a placeholder for the full message (max_size; ``size`` is the full
    # message's): never uploaded, replaced by the full message by FetchFull.
    placeholder: bool = False


class FolderPolicy(NamedTuple):
    """What the planner may do in one folder."""

    trash_folder: str | None = None  # local deletions become a move there instead of an expunge
    force_deletions: bool = False  # the user confirmed a mass deletion
    local_folder_missing: bool = False  # the folder (or the whole maildir) directory vanished
    # The guard holds when at least this many known messages, and more than this share of them,
    # vanish locally in one go.
    guard_min_count: int = 5
    guard_share: float = 0.5
    # The guard held at this folder's last sync and no --force-deletions has confirmed since.
    # Keeps it holding while any known message is still missing locally: new mail synced in
    # the meantime adds known messages, so the share alone would decay and let the deletions
    # through unconfirmed. The engine sets it to ``plan.guard is not None and not
    # local_folder_missing`` after each sync (clearing it when the guard no longer holds).
    guard_held: bool = False
    # The letters the server keeps in this folder (PERMANENTFLAGS, less what it refused or
    # dropped before). Any other letter is local-only: never pushed, never reverted locally,
    # recorded in the synced flags as the local side has it.
    storable: Flags = ALL_LETTERS
    # The sync policy (README, "Partial mirrors"): which way changes flow ("both", "pull":
    # server -> local only, "push": local -> server only) and whose deletions propagate
    # ("both", "pull": the server's reach the Maildir, "push": the Maildir's reach the server,
    # "none"). ``delete`` only narrows ``direction``. A change not propagated is not undone:
    # the message becomes untracked (FolderSnapshot.untracked_uids / untracked_keys).
    direction: str = "both"
    delete: str = "both"
    # Messages bigger than this (RFC822.SIZE) are downloaded as placeholders; a placeholder
    # whose message is not (max_size raised or removed), or flagged F with fetch_flagged, is
    # replaced by the full message (FetchFull).
    max_size: int | None = None
    fetch_flagged: bool = False

    @property
    def to_local(self) -> bool:
        """Server changes (new mail, flags) reach the Maildir."""
        return self.direction != "push"

    @property
    def to_server(self) -> bool:
        """Local changes (new files, flags) reach the server."""
        return self.direction != "pull"

    @property
    def deletes_local(self) -> bool:
        """A message expunged on the server is removed from the Maildir."""
        return self.to_local and self.delete in ("both", "pull")

    @property
    def deletes_remote(self) -> bool:
        """A file deleted locally is expunged (or moved to the trash) on the server."""
        return self.to_server and self.delete in ("both", "push")


class FolderSnapshot(NamedTuple):
    """Everything the planner knows about one folder at one moment.

    ``size``/``message_id`` must be filled for local files and server messages the state does
    not know. When ``uidvalidity_changed`` they must be filled for every server message and
    should be for every local file too (the planner falls back to the old state row's values
    for a local file without them; with neither, the file cannot be re-paired and is uploaded).
    """

    synced: tuple[SyncedMessage, ...]
    local: tuple[LocalMessage, ...]
    remote: tuple[RemoteMessage, ...]
    # True when UIDVALIDITY changed: every synced UID is void and must be re-paired.
    uidvalidity_changed: bool = False
    policy: FolderPolicy = FolderPolicy()  # immutable, so one shared default is safe
    # UIDs whose local deletion an earlier sync decided but could not finish: marked \Deleted
    # (and, for a move to the trash, copied there already) but not expunged, because the
    # server offers no UID EXPUNGE and other messages were marked \Deleted too.
    pending_expunge: frozenset[int] = frozenset()
    # Untracked messages (a deletion the policy did not propagate, see Forget.keep): server
    # UIDs never downloaded or paired again (void after a UIDVALIDITY change), local keys
    # never uploaded or paired again.
    untracked_uids: frozenset[int] = frozenset()
    untracked_keys: frozenset[str] = frozenset()
    # The window (max_age, max_messages): the server UIDs inside it, None for no window. A
    # message outside is not tracked: never downloaded, and never deleted on either side
    # because of the window. ``outside`` are the pairs parked there (the window moved past
    # them): both copies stay as they are until the window takes them back.
    window: frozenset[int] | None = None
    outside: tuple[SyncedMessage, ...] = ()


class Pop3Known(NamedTuple):
    """What the state remembers of one POP3 UIDL: delivered locally at ``downloaded_at`` (unix
    time); ``deleted`` once syncd decided to DELE it (it may still be listed if the session
    that sent DELE never reached QUIT)."""

    deleted: bool
    downloaded_at: float


class Pop3Plan(NamedTuple):
    """What one POP3 session should do; message numbers are the session's own.

    ``retrieve``: RETR, deliver durably, record the UIDL, and then DELE as well when
    ``delete_retrieved``. ``delete_only``: DELE without RETR (already on disk).
    ``skipped_too_big``: (msgnum, uidl, size) over max_message_size, left on the server.
    """

    retrieve: tuple[int, ...] = ()
    delete_only: tuple[int, ...] = ()
    skipped_too_big: tuple[tuple[int, str, int], ...] = ()
    delete_retrieved: bool = False

    @property
    def empty(self) -> bool:
        return not (self.retrieve or self.delete_only)
