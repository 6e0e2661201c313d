"""SQLite state store, one file per account: schema + migrations, transactions, intents.

CONTRACT (implemented by the state helper; the engine codes against exactly this).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from syncd.core.model import SyncedMessage


class StateCorrupt(Exception):
    """The database is unreadable, truncated, or fails its integrity check; not trusted."""


@dataclass(frozen=True, slots=True)
class FolderState:
    id: int
    remote_name: str  # the server's name, as the server spells it (mUTF-7 undecoded)
    local_path: str
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    last_sync: float | None  # unix time of the last successful sync


@dataclass(frozen=True, slots=True)
class Intent:
    id: int
    folder_id: int | None
    op: str  # "download" | "upload" | "push_flags" | "set_local_flags" | "delete_local"
    #           | "delete_remote" | "pop3_retr"
    uid: int | None
    key: str | None
    flags: str | None
    extra: str | None  # free text (JSON) for op-specific data, e.g. the Message-ID of an upload
    created: float


@dataclass(frozen=True, slots=True)
class Pop3Row:
    uidl: str
    key: str | None
    downloaded_at: float
    deleted: bool


class StateStore:
    """Opened with WAL and synchronous=FULL. One instance per thread that uses it."""

    path: Path

    def __init__(self, path: Path) -> None:
        """Create (0600, parent 0700) or open; run migrations; quick_check; StateCorrupt if bad."""
    def close(self) -> None: ...

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction (BEGIN IMMEDIATE ... COMMIT); nested use joins the outer one."""
        yield

    # folders
    def folders(self) -> list[FolderState]: ...
    def folder(self, remote_name: str) -> FolderState | None: ...
    def ensure_folder(self, remote_name: str, local_path: str) -> FolderState: ...
    def set_cursors(self, folder_id: int, *, uidvalidity: int | None, uidnext: int | None,
                    highestmodseq: int | None, last_sync: float | None) -> None: ...
    def reset_folder(self, folder_id: int) -> None:
        """Forget every message row and the cursors of a folder (UIDVALIDITY change)."""

    # messages
    def messages(self, folder_id: int) -> list[SyncedMessage]: ...
    def message_count(self, folder_id: int) -> int: ...
    def put_message(self, folder_id: int, message: SyncedMessage) -> None:
        """Insert or replace the row for (folder_id, uid)."""
    def put_messages(self, folder_id: int, messages: Iterable[SyncedMessage]) -> None: ...
    def set_synced_flags(self, folder_id: int, uid: int, flags: str) -> None: ...
    def delete_message(self, folder_id: int, uid: int) -> None: ...

    # intents: written BEFORE acting, cleared in the same transaction that records the result
    def add_intents(self, folder_id: int | None, op: str,
                    items: Iterable[tuple[int | None, str | None, str | None, str | None]]
                    ) -> list[int]:
        """items: (uid, key, flags, extra). Returns the new ids, in order."""
    def open_intents(self, folder_id: int | None = None) -> list[Intent]: ...
    def clear_intents(self, ids: Iterable[int]) -> None: ...

    # pop3
    def pop3_row(self, uidl: str) -> Pop3Row | None: ...
    def pop3_record(self, uidl: str, key: str | None, downloaded_at: float) -> None: ...
    def pop3_mark_deleted(self, uidls: Iterable[str]) -> None: ...
    def pop3_rows(self) -> list[Pop3Row]: ...
    def pop3_forget_missing(self, present: set[str]) -> int:
        """Drop rows whose UIDL the server no longer lists (and that are marked deleted)."""
