"""SQLite state store, one file per account: schema + migrations, transactions, intents.

CONTRACT (implemented by the state helper; the engine codes against exactly this).

Durability: WAL + synchronous=FULL, so a COMMIT that returned is on disk. Every write method
runs inside ``transaction()`` (joining the caller's transaction when there is one), so a batch
the engine wraps in one transaction costs one fsync, and a single call outside any transaction
is still atomic.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

from syncd.core.model import SyncedMessage

_P = ParamSpec("_P")
_T = TypeVar("_T")

_SQLITE_HEADER = b"SQLite format 3\x00"
_HEADER_SIZE = 100  # a real database file is never shorter than its 100-byte header
# Primary result codes that mean "this file is not a database we can trust". Anything else
# (locked, busy, I/O, permission, disk full) is an operational problem: the file may be fine,
# and must never be moved aside for it.
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_BUSY_TIMEOUT = 30.0  # seconds to wait for another connection's write lock (e.g. `status`)

# Threads of one process that write the same database queue on a lock of their own before
# BEGIN IMMEDIATE. SQLite's busy handler polls instead, sleeping 1, 2, 5, 10 ... 100 ms
# between attempts: in a first sync with parallel folders the waiting thread slept through
# commits it could have followed at once (strace: 3,400 sleeps, 18 s of the threads' time in
# a 10 s sync of 20,000 messages). Other processes (`syncd status`, a CLI sync against the
# daemon's lock) still meet SQLite's own lock and busy timeout.
_writer_locks: dict[str, threading.Lock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _writer_locks_guard:
        lock = _writer_locks.get(key)
        if lock is None:
            lock = _writer_locks[key] = threading.Lock()
        return lock


class StateCorrupt(Exception):
    """The database is unreadable, truncated, or fails its integrity check; not trusted."""


class StateTooNew(Exception):
    """The database was written by a newer syncd (a schema version we do not know). Not
    corruption: it must not be rebuilt, or a downgrade would throw the newer state away."""


class StateConflict(sqlite3.IntegrityError):
    """A write broke a uniqueness rule, e.g. a Maildir key already paired with another UID in
    the folder. Subclasses sqlite3.IntegrityError so either can be caught."""


class FolderState(NamedTuple):
    id: int
    remote_name: str  # the server's name, as the server spells it (mUTF-7 undecoded)
    local_path: str
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    last_sync: float | None  # unix time of the last successful sync
    # The mass-deletion guard held at the last sync and was not confirmed: it keeps holding,
    # however much new mail dilutes the share of vanished messages, until --force-deletions.
    guard_held: bool = False
    # "<cur mtime ns> <new mtime ns> <unix time recorded>": the Maildir directories as the last
    # completed sync left them (see MaildirFolder.stamp); None = unknown.
    local_stamp: str | None = None
    # Messages on the server at the last completed sync, where the policy leaves some out of
    # the state (a window, one way, untracked); None: as many as the synced rows.
    server_count: int | None = None
    counted_policy: str | None = None  # the policy server_count was taken under


class Intent(NamedTuple):
    id: int
    folder_id: int | None
    op: str  # "download" | "upload" | "push_flags" | "set_local_flags" | "delete_local"
    #           | "delete_remote" | "pop3_retr"
    uid: int | None
    key: str | None
    flags: str | None
    extra: str | None  # free text (JSON) for op-specific data, e.g. the Message-ID of an upload
    created: float


class Untracked(NamedTuple):
    """StateStore.untracked: what the sync policy keeps out of a folder's sync."""

    uids: frozenset[int]  # server copies never downloaded again
    keys: frozenset[str]  # local copies never uploaded again
    outside: tuple[SyncedMessage, ...]  # pairs parked outside the window


class Pop3Row(NamedTuple):
    uidl: str
    key: str | None
    downloaded_at: float
    deleted: bool


# Schema migrations: MIGRATIONS[i] takes user_version i to i + 1. Append only; never edit a
# released step (existing databases already ran it). Statements run one by one inside the
# migration's transaction (executescript would commit on its own).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE folder(
            id INTEGER PRIMARY KEY,
            remote_name TEXT NOT NULL UNIQUE,
            local_path TEXT NOT NULL,
            uidvalidity INTEGER,
            uidnext INTEGER,
            highestmodseq INTEGER,
            last_sync REAL
        )""",
        # WITHOUT ROWID: the table is its (folder_id, uid) index, so loading a folder in UID
        # order is one range scan with no second lookup per row.
        """CREATE TABLE message(
            folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
            uid INTEGER NOT NULL,
            maildir_key TEXT NOT NULL,
            synced_flags TEXT NOT NULL,
            size INTEGER,
            message_id TEXT,
            PRIMARY KEY(folder_id, uid),
            UNIQUE(folder_id, maildir_key)
        ) WITHOUT ROWID""",
        # AUTOINCREMENT: an intent id is never reused, so a stale id held across a crash can
        # never clear somebody else's intent.
        """CREATE TABLE intent(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            folder_id INTEGER REFERENCES folder(id) ON DELETE CASCADE,
            op TEXT NOT NULL,
            uid INTEGER,
            maildir_key TEXT,
            flags TEXT,
            extra TEXT,
            created REAL NOT NULL
        )""",
        "CREATE INDEX intent_folder ON intent(folder_id)",
        """CREATE TABLE pop3_seen(
            uidl TEXT PRIMARY KEY,
            maildir_key TEXT,
            downloaded_at REAL NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    ("ALTER TABLE folder ADD COLUMN guard_held INTEGER NOT NULL DEFAULT 0",),
    ("ALTER TABLE folder ADD COLUMN local_stamp TEXT",),
    (
        # 1: deleted locally and marked \Deleted on the server, but not expunged yet (no
        # UIDPLUS, and other messages were marked \Deleted too); retried at later syncs.
        "ALTER TABLE message ADD COLUMN expunge_pending INTEGER NOT NULL DEFAULT 0",
        # Maildir letters the server refused or dropped in this folder: local-only from then on.
        "ALTER TABLE folder ADD COLUMN unkept_flags TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Messages the sync policy keeps on one side only (a deletion not propagated): a server
        # UID never downloaded again (maildir_key NULL), or a local key never uploaded again
        # (uid NULL). With both set, a pair parked outside the window (max_age, max_messages),
        # with the synced flags, size and Message-ID it had.
        """CREATE TABLE untracked(
            folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
            uid INTEGER,
            maildir_key TEXT,
            synced_flags TEXT,
            size INTEGER,
            message_id TEXT,
            UNIQUE(folder_id, uid),
            UNIQUE(folder_id, maildir_key)
        )""",
        # Messages on the server at the last completed sync, for a folder whose policy leaves
        # some out (a window, one way, untracked): its STATUS is compared with this rather
        # than with the synced rows. NULL: compare with the rows.
        "ALTER TABLE folder ADD COLUMN server_count INTEGER",
        # The policy that count was taken under (FolderSettings.fingerprint).
        "ALTER TABLE folder ADD COLUMN counted_policy TEXT",
    ),
    (
        # 1: the local file is a placeholder for the full message (max_size): never uploaded,
        # replaced by the full message by `syncd fetch` or fetch_flagged. Also on pairs parked
        # outside the window, so that one taken back is still known for what it is.
        "ALTER TABLE message ADD COLUMN placeholder INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE untracked ADD COLUMN placeholder INTEGER NOT NULL DEFAULT 0",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def aside_path(path: Path) -> Path:
    """Where a corrupt ``path`` is moved aside to: ``<name>.corrupt-<timestamp>``, never over
    an earlier one."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    return aside


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES  # extended codes keep the primary in the low byte
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _guard(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Corruption found later than open (a bad page read mid-sync) surfaces as StateCorrupt
    too, so callers have one exception to handle for "the state cannot be trusted"."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.IntegrityError) or not _is_corruption(exc):
                raise
            store = args[0]
            raise StateCorrupt(f"state database {store.path} is corrupt: {exc}") from exc

    return wrapper


def _make_private_dirs(path: Path) -> None:
    """Create missing parents with exactly 0700 (umask ignored); existing ones are untouched."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, 0o700)


class StateStore:
    """Opened with WAL and synchronous=FULL. One instance per thread that uses it."""

    path: Path

    def __init__(self, path: Path) -> None:
        """Create (0600, parent 0700) or open; run migrations; quick_check; StateCorrupt if bad.
        StateTooNew if a newer syncd wrote it. Operational errors (locked, permissions) are
        raised as they are: they say nothing about the file's health."""
        self.path = Path(path)
        self._depth = 0  # transaction nesting: 0 = none, 1 = BEGIN, >1 = savepoints
        _make_private_dirs(self.path.parent)
        self._writer = _writer_lock(self.path)
        self._check_header()
        self._create_private_file()
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT)
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._corrupt(str(exc)) from exc
            raise
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    def _corrupt(self, why: str) -> StateCorrupt:
        return StateCorrupt(
            f"state database {self.path} is corrupt ({why}); move it aside to start over "
            "(syncd re-pairs messages by content, nothing is downloaded twice)")

    def _check_header(self) -> None:
        """Reject a file that cannot be a database before SQLite gets to guess. A zero-length
        file is a new database (that is what sqlite itself makes of it)."""
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(_HEADER_SIZE)
        except FileNotFoundError:
            return
        if not head:
            return
        if len(head) < _HEADER_SIZE:
            raise self._corrupt(f"truncated to {len(head)} bytes")
        if not head.startswith(_SQLITE_HEADER):
            raise self._corrupt("not an SQLite database")

    def _create_private_file(self) -> None:
        # Create it ourselves: sqlite would use 0644 & ~umask. SQLite gives the -wal and -shm
        # files the database file's mode, so they are private too.
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & 0o077:
                os.fchmod(fd, 0o600)  # the state names folders and messages: keep it private
        finally:
            os.close(fd)

    def _setup(self) -> None:
        conn = self._conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if rows != [("ok",)]:
                detail = "; ".join(str(row[0]) for row in rows[:3])
                raise self._corrupt(f"integrity check failed: {detail}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._corrupt(str(exc)) from exc
            raise

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateTooNew(
                    f"state database {self.path} has schema version {version}, newer than this "
                    f"syncd understands ({SCHEMA_VERSION}); upgrade syncd")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    self._conn.execute(statement)
                # PRAGMA does not take parameters; the value is our own integer.
                self._conn.execute(f"PRAGMA user_version = {step + 1}")

    @classmethod
    def open_or_rebuild(cls, path: Path) -> tuple[StateStore, bool]:
        """Open the store; if it is corrupt, move it (and its -wal/-shm/-journal) aside to
        ``<name>.corrupt-<timestamp>`` and start a fresh one. Returns (store, rebuilt). The stale
        WAL must move with it: left behind, SQLite could replay it into the new database."""
        path = Path(path)
        try:
            return cls(path), False
        except StateCorrupt:
            pass
        base = aside_path(path)
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.rename(side, base.with_name(base.name + suffix))
        os.rename(path, base)
        return cls(path), True

    def shrink_memory(self) -> None:
        """Drop the connection's page cache (SQLite keeps up to 2 MB a connection): a daemon
        holds one state open per account between syncs, and the file is in the OS's cache
        anyway. Not inside a transaction."""
        if not self._depth:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA shrink_memory")

    def close(self) -> None:
        if self._depth:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._depth = 0
        self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This process's turn to write the database (see _writer_lock); after the busy
        timeout, the error SQLite would give."""
        if not self._writer.acquire(timeout=_BUSY_TIMEOUT):
            raise sqlite3.OperationalError("database is locked")
        try:
            yield
        finally:
            self._writer.release()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction (BEGIN IMMEDIATE ... COMMIT); nested use joins the outer one.

        IMMEDIATE takes the write lock up front, so a transaction never fails half way with
        "database is locked" after it has read. A nested block is a SAVEPOINT inside the outer
        transaction: its writes commit only with the outer one, and if it raises, its own writes
        are undone even when the caller catches the exception and carries on."""
        conn = self._conn
        if self._depth == 0:
            with self._writer_turn():
                conn.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield
                except BaseException:
                    self._depth = 0
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
            return
        name = f"sp{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    # folders

    _FOLDER_COLS = ("id, remote_name, local_path, uidvalidity, uidnext, highestmodseq, "
                    "last_sync, guard_held, local_stamp, server_count, counted_policy")

    @staticmethod
    def _folder_state(row: tuple) -> FolderState:
        return FolderState(*row[:-4], guard_held=bool(row[-4]), local_stamp=row[-3],
                           server_count=row[-2], counted_policy=row[-1])

    @_guard
    def folders(self) -> list[FolderState]:
        rows = self._conn.execute(f"SELECT {self._FOLDER_COLS} FROM folder ORDER BY id")
        return [self._folder_state(row) for row in rows]

    @_guard
    def folder(self, remote_name: str) -> FolderState | None:
        row = self._conn.execute(f"SELECT {self._FOLDER_COLS} FROM folder WHERE remote_name = ?",
                                 (remote_name,)).fetchone()
        return self._folder_state(row) if row else None

    @_guard
    def set_local_stamp(self, folder_id: int, stamp: str | None) -> None:
        with self.transaction():
            self._conn.execute("UPDATE folder SET local_stamp = ? WHERE id = ?",
                               (stamp, folder_id))

    @_guard
    def set_guard_held(self, folder_id: int, held: bool) -> None:
        with self.transaction():
            self._conn.execute("UPDATE folder SET guard_held = ? WHERE id = ?",
                               (int(held), folder_id))

    @_guard
    def ensure_folder(self, remote_name: str, local_path: str) -> FolderState:
        """The folder's row, created if missing. local_path is updated when it differs (the
        layout or maildir root changed); cursors are kept."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO folder(remote_name, local_path) VALUES(?, ?) "
                "ON CONFLICT(remote_name) DO UPDATE SET local_path = excluded.local_path "
                "WHERE local_path IS NOT excluded.local_path",
                (remote_name, local_path))
            state = self.folder(remote_name)
        assert state is not None
        return state

    @_guard
    def set_cursors(self, folder_id: int, *, uidvalidity: int | None, uidnext: int | None,
                    highestmodseq: int | None, last_sync: float | None) -> None:
        with self.transaction():
            self._conn.execute(
                "UPDATE folder SET uidvalidity = ?, uidnext = ?, highestmodseq = ?, last_sync = ? "
                "WHERE id = ?", (uidvalidity, uidnext, highestmodseq, last_sync, folder_id))

    @_guard
    def set_server_count(self, folder_id: int, count: int | None,
                         policy: str | None = None) -> None:
        """See FolderState.server_count and counted_policy."""
        with self.transaction():
            self._conn.execute(
                "UPDATE folder SET server_count = ?, counted_policy = ? WHERE id = ?",
                (count, policy, folder_id))

    @_guard
    def set_last_sync(self, folder_ids: Iterable[int], last_sync: float) -> None:
        """Folders found unchanged: only their last_sync moves, in one commit."""
        with self.transaction():
            self._conn.executemany("UPDATE folder SET last_sync = ? WHERE id = ?",
                                   [(last_sync, fid) for fid in folder_ids])

    @_guard
    def reset_folder(self, folder_id: int) -> None:
        """Forget every message row and the cursors of a folder (UIDVALIDITY change).
        last_sync is kept (it is history, not a cursor); intents are left for recover()."""
        with self.transaction():
            self._conn.execute("DELETE FROM message WHERE folder_id = ?", (folder_id,))
            # Untracked UIDs are void with the rest; untracked local files stay untracked.
            self._conn.execute("DELETE FROM untracked WHERE folder_id = ? AND uid IS NOT NULL",
                               (folder_id,))
            self._conn.execute(
                "UPDATE folder SET uidvalidity = NULL, uidnext = NULL, highestmodseq = NULL, "
                "local_stamp = NULL, server_count = NULL, counted_policy = NULL WHERE id = ?",
                (folder_id,))

    # messages

    @_guard
    def messages(self, folder_id: int) -> list[SyncedMessage]:
        """All rows of a folder, in UID order, in one query."""
        rows = self._conn.execute(
            "SELECT uid, maildir_key, synced_flags, size, message_id, placeholder = 1 "
            "FROM message WHERE folder_id = ? ORDER BY uid", (folder_id,))
        # starmap: measurably cheaper than a comprehension with *row for 20k+ rows.
        return list(itertools.starmap(SyncedMessage, rows))

    @_guard
    def message_by_key(self, folder_id: int, key: str) -> SyncedMessage | None:
        """The row pairing local ``key`` in the folder, or None."""
        row = self._conn.execute(
            "SELECT uid, maildir_key, synced_flags, size, message_id, placeholder = 1 "
            "FROM message WHERE folder_id = ? AND maildir_key = ?", (folder_id, key)).fetchone()
        return SyncedMessage(*row) if row else None

    @_guard
    def set_placeholder(self, folder_id: int, uid: int, placeholder: bool) -> None:
        """Mark the row's local file a placeholder, or the full message (syncd fetch)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE message SET placeholder = ? WHERE folder_id = ? AND uid = ?",
                (int(placeholder), folder_id, uid))

    @_guard
    def message_count(self, folder_id: int) -> int:
        row = self._conn.execute("SELECT count(*) FROM message WHERE folder_id = ?",
                                 (folder_id,)).fetchone()
        return int(row[0])

    # An upsert on the primary key only. INSERT OR REPLACE would also silently delete whatever
    # OTHER row holds the same maildir_key, and a lost pairing means a re-download (a duplicate)
    # later; a key clash is a bug upstream and must fail loudly instead.
    _PUT_SQL = (
        "INSERT INTO message(folder_id, uid, maildir_key, synced_flags, size, message_id, "
        "placeholder) VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(folder_id, uid) DO UPDATE SET "
        "maildir_key = excluded.maildir_key, synced_flags = excluded.synced_flags, "
        "size = excluded.size, message_id = excluded.message_id, expunge_pending = 0, "
        "placeholder = excluded.placeholder")

    @_guard
    def put_message(self, folder_id: int, message: SyncedMessage) -> None:
        """Insert or replace the row for (folder_id, uid). StateConflict if its key is already
        paired with another UID in the folder (or the folder does not exist)."""
        self.put_messages(folder_id, (message,))

    @_guard
    def put_messages(self, folder_id: int, messages: Iterable[SyncedMessage]) -> None:
        """put_message for many, in one statement batch and one transaction: all or nothing."""
        rows = ((folder_id, m.uid, m.key, m.flags, m.size, m.message_id, int(m.placeholder))
                for m in messages)
        try:
            with self.transaction():
                self._conn.executemany(self._PUT_SQL, rows)
        except sqlite3.IntegrityError as exc:
            if isinstance(exc, StateConflict):
                raise
            raise StateConflict(
                f"state {self.path}: cannot record messages in folder {folder_id}: {exc} "
                "(a Maildir key is already paired with another UID, or no such folder)"
            ) from exc

    @_guard
    def set_synced_flags(self, folder_id: int, uid: int, flags: str) -> None:
        """Set the synced flags of a row; a missing row is left missing (nothing to pair)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE message SET synced_flags = ? WHERE folder_id = ? AND uid = ?",
                (flags, folder_id, uid))

    @_guard
    def set_synced_flags_many(self, folder_id: int, items: Iterable[tuple[int, str]]) -> None:
        """set_synced_flags for many (uid, flags), in one statement batch: a SAVEPOINT per row
        cost more than the rows themselves in an incremental sync with many flag changes."""
        with self.transaction():
            self._conn.executemany(
                "UPDATE message SET synced_flags = ? WHERE folder_id = ? AND uid = ?",
                ((flags, folder_id, uid) for uid, flags in items))

    @_guard
    def delete_message(self, folder_id: int, uid: int) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM message WHERE folder_id = ? AND uid = ?",
                               (folder_id, uid))

    @_guard
    def delete_messages(self, folder_id: int, uids: Iterable[int]) -> None:
        """delete_message for many, in one statement batch."""
        with self.transaction():
            self._conn.executemany("DELETE FROM message WHERE folder_id = ? AND uid = ?",
                                   ((folder_id, uid) for uid in uids))

    @_guard
    def untracked(self, folder_id: int) -> Untracked:
        """The server UIDs and the local keys the sync policy keeps on one side only, and the
        pairs parked outside the window."""
        rows = self._conn.execute(
            "SELECT uid, maildir_key, synced_flags, size, message_id, placeholder = 1 "
            "FROM untracked WHERE folder_id = ? ORDER BY uid", (folder_id,))
        uids: set[int] = set()
        keys: set[str] = set()
        outside: list[SyncedMessage] = []
        for uid, key, flags, size, message_id, placeholder in rows:
            if uid is not None and key is not None:
                outside.append(SyncedMessage(uid, key, flags or "", size, message_id,
                                             placeholder))
            elif uid is not None:
                uids.add(uid)
            else:
                keys.add(key)
        return Untracked(frozenset(uids), frozenset(keys), tuple(outside))

    @_guard
    def put_outside(self, folder_id: int, messages: Iterable[SyncedMessage]) -> None:
        """Park pairs outside the window: their message rows go, they are kept here."""
        rows = [(folder_id, m.uid, m.key, m.flags, m.size, m.message_id, int(m.placeholder))
                for m in messages]
        with self.transaction():
            self._conn.executemany("DELETE FROM message WHERE folder_id = ? AND uid = ?",
                                   ((fid, uid) for fid, uid, *_ in rows))
            self._conn.executemany(
                "INSERT OR REPLACE INTO untracked(folder_id, uid, maildir_key, synced_flags, "
                "size, message_id, placeholder) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    @_guard
    def add_untracked(self, folder_id: int, uids: Iterable[int] = (),
                      keys: Iterable[str] = ()) -> None:
        """Remember server UIDs / local keys as untracked (see untracked())."""
        with self.transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO untracked(folder_id, uid) VALUES (?, ?)",
                ((folder_id, uid) for uid in uids))
            self._conn.executemany(
                "INSERT OR IGNORE INTO untracked(folder_id, maildir_key) VALUES (?, ?)",
                ((folder_id, key) for key in keys))

    @_guard
    def drop_untracked(self, folder_id: int, uids: Iterable[int] = (),
                       keys: Iterable[str] = ()) -> None:
        """Forget untracked entries whose message is gone from its side."""
        with self.transaction():
            self._conn.executemany("DELETE FROM untracked WHERE folder_id = ? AND uid = ?",
                                   ((folder_id, uid) for uid in uids))
            self._conn.executemany(
                "DELETE FROM untracked WHERE folder_id = ? AND maildir_key = ?",
                ((folder_id, key) for key in keys))

    @_guard
    def pending_expunges(self, folder_id: int) -> frozenset[int]:
        """UIDs deleted locally whose expunge on the server is still to be done."""
        rows = self._conn.execute(
            "SELECT uid FROM message WHERE folder_id = ? AND expunge_pending = 1", (folder_id,))
        return frozenset(uid for (uid,) in rows)

    @_guard
    def mark_expunge_pending(self, folder_id: int, uids: Iterable[int]) -> None:
        """These rows' messages are marked \\Deleted on the server (and, for a move, copied to
        the trash): what is left is the expunge, at a later sync."""
        with self.transaction():
            self._conn.executemany(
                "UPDATE message SET expunge_pending = 1 WHERE folder_id = ? AND uid = ?",
                ((folder_id, uid) for uid in uids))

    @_guard
    def unkept_flags(self, folder_id: int) -> str:
        """Letters this folder's server refused or dropped before (see add_unkept_flags)."""
        row = self._conn.execute("SELECT unkept_flags FROM folder WHERE id = ?",
                                 (folder_id,)).fetchone()
        return row[0] if row else ""

    @_guard
    def add_unkept_flags(self, folder_id: int, letters: str) -> None:
        """Remember that the server does not keep these letters in this folder."""
        with self.transaction():
            known = self.unkept_flags(folder_id)
            merged = "".join(sorted(set(known) | set(letters)))
            self._conn.execute("UPDATE folder SET unkept_flags = ? WHERE id = ?",
                               (merged, folder_id))

    # intents: written BEFORE acting, cleared in the same transaction that records the result

    @_guard
    def add_intents(self, folder_id: int | None, op: str,
                    items: Iterable[tuple[int | None, str | None, str | None, str | None]]
                    ) -> list[int]:
        """items: (uid, key, flags, extra). Returns the new ids, in order."""
        if not op:
            raise ValueError("an intent needs an op")
        now = time.time()
        ids: list[int] = []
        with self.transaction():
            cursor = self._conn.cursor()
            for uid, key, flags, extra in items:
                cursor.execute(
                    "INSERT INTO intent(folder_id, op, uid, maildir_key, flags, extra, created) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)", (folder_id, op, uid, key, flags, extra, now))
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
        return ids

    @_guard
    def open_intents(self, folder_id: int | None = None) -> list[Intent]:
        """Open intents in creation order: of one folder, or of every folder (and of none,
        i.e. POP3) when folder_id is None."""
        sql = ("SELECT id, folder_id, op, uid, maildir_key, flags, extra, created FROM intent")
        if folder_id is None:
            rows = self._conn.execute(sql + " ORDER BY id")
        else:
            rows = self._conn.execute(sql + " WHERE folder_id = ? ORDER BY id", (folder_id,))
        return [Intent(*row) for row in rows]

    @_guard
    def clear_intents(self, ids: Iterable[int]) -> None:
        with self.transaction():
            self._conn.executemany("DELETE FROM intent WHERE id = ?", ((i,) for i in ids))

    # pop3

    @_guard
    def pop3_row(self, uidl: str) -> Pop3Row | None:
        row = self._conn.execute(
            "SELECT uidl, maildir_key, downloaded_at, deleted FROM pop3_seen WHERE uidl = ?",
            (uidl,)).fetchone()
        return Pop3Row(row[0], row[1], row[2], bool(row[3])) if row else None

    @_guard
    def pop3_record(self, uidl: str, key: str | None, downloaded_at: float) -> None:
        """Record a delivered UIDL (not deleted yet). Recording it again updates key and time
        but never un-marks a deletion."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO pop3_seen(uidl, maildir_key, downloaded_at) VALUES(?, ?, ?) "
                "ON CONFLICT(uidl) DO UPDATE SET maildir_key = excluded.maildir_key, "
                "downloaded_at = excluded.downloaded_at", (uidl, key, downloaded_at))

    @_guard
    def pop3_mark_deleted(self, uidls: Iterable[str]) -> None:
        with self.transaction():
            self._conn.executemany("UPDATE pop3_seen SET deleted = 1 WHERE uidl = ?",
                                   ((u,) for u in uidls))

    @_guard
    def pop3_rows(self) -> list[Pop3Row]:
        rows = self._conn.execute(
            "SELECT uidl, maildir_key, downloaded_at, deleted FROM pop3_seen ORDER BY uidl")
        return [Pop3Row(r[0], r[1], r[2], bool(r[3])) for r in rows]

    @_guard
    def pop3_forget_missing(self, present: set[str], *, only_deleted: bool = True) -> int:
        """Drop rows whose UIDL the server no longer lists (and that are marked deleted).
        only_deleted=False also drops kept rows the server stopped listing (leave_on_server
        with mail deleted by another client), so the table does not grow forever."""
        sql = "SELECT uidl FROM pop3_seen" + (" WHERE deleted = 1" if only_deleted else "")
        with self.transaction():
            gone = [(u,) for (u,) in self._conn.execute(sql) if u not in present]
            self._conn.executemany("DELETE FROM pop3_seen WHERE uidl = ?", gone)
        return len(gone)
