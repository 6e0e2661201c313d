"""The outbox queue of one account: a Maildir under ``<state_dir>/outbox/<account>/`` and a
JSON record per message.

Layout::

    tmp/            messages being written
    new/<id>        queued messages, exactly the bytes to transmit (no Bcc header)
    records/<id>.json   envelope, state, attempts, last error, next attempt

Order of operations (every step fsynced before the next, so kill -9 at any instant leaves a
consistent queue):

- enqueue: the record (tmp -> rename) -> the message into ``tmp/`` -> rename into ``new/`` ->
  fsync ``new/``. The rename into ``new/`` is the commit: a record without a message is
  debris of an interrupted enqueue and is removed by ``ids()``.
- state changes replace the record (write a temporary file, fsync, rename, fsync the dir).
- remove: the message first, then the record.

States: ``queued`` (waiting, maybe with ``next_attempt``), ``sending`` (DATA may have reached
the server: the outcome is unknown until the Sent folder says otherwise), ``sent`` (the server
said 250; only the copy in the Sent folder is left to do), ``failed`` (a permanent refusal;
kept until `syncd outbox retry` or `drop`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from syncd.errors import SyncdError
from syncd.smtp import queue_dir
from syncd.store.maildir import write_file_synced

__all__ = ["STATES", "Outbox", "OutboxBusy", "Record"]

STATES = ("queued", "sending", "sent", "failed")


class OutboxBusy(SyncdError):
    pass


@dataclass
class Record:
    """What the queue knows about one message besides its bytes."""

    id: str
    account: str
    sender: str
    recipients: list[str]
    created: float
    subject: str = ""
    message_id: str = ""
    state: str = "queued"
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0  # wall clock; 0: at once
    # The outcome of an earlier attempt was unknown and the message was not found in the
    # Sent folder: it was sent again, and the recipients may have it twice.
    possible_duplicate: bool = False
    # The copy in the Sent folder is there (saved by syncd, or found there).
    saved: bool = False

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Record:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


@dataclass
class Outbox:
    """One account's queue."""

    root: Path
    account: str
    _dirs_made: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, state_dir: Path, account: str) -> Outbox:
        return cls(queue_dir(state_dir, account), account)

    # --- paths ------------------------------------------------------------------------------
    def message_path(self, ident: str) -> Path:
        return self.root / "new" / ident

    def record_path(self, ident: str) -> Path:
        return self.root / "records" / f"{ident}.json"

    def _ensure_dirs(self) -> None:
        if self._dirs_made:
            return
        for sub in ("tmp", "new", "records"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        _fsync_dir(self.root)
        _fsync_dir(self.root.parent)
        self._dirs_made = True

    # --- writing ----------------------------------------------------------------------------
    def enqueue(self, data: bytes, record: Record) -> Record:
        """Put a message in the queue, durably; returns its record (with its id)."""
        self._ensure_dirs()
        record.id = new_id()
        record.account = self.account
        self.write_record(record)
        tmp = self.root / "tmp" / record.id
        write_file_synced(tmp, data)
        # link, not rename: never overwrite (ids are unique, but a Maildir never trusts that)
        os.link(tmp, self.message_path(record.id))
        os.unlink(tmp)
        _fsync_dir(self.root / "new")
        return record

    def write_record(self, record: Record) -> None:
        """Replace the record durably (temporary file, fsync, rename, fsync the dir)."""
        self._ensure_dirs()
        final = self.record_path(record.id)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        write_file_synced(tmp, json.dumps(asdict(record), indent=1).encode())
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def remove(self, ident: str) -> None:
        """Remove a message and its record (the message first: it is the commit)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.message_path(ident))
            _fsync_dir(self.root / "new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(ident))
            _fsync_dir(self.root / "records")

    # --- reading ----------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Queued message ids, oldest first. Records without a message (an enqueue that was
        interrupted, or a removal) are removed here."""
        try:
            names = sorted(n for n in os.listdir(self.root / "new") if not n.startswith("."))
        except FileNotFoundError:
            return []
        self._drop_orphans(set(names))
        return names

    def _drop_orphans(self, present: set[str]) -> None:
        try:
            records = os.listdir(self.root / "records")
        except FileNotFoundError:
            return
        for name in records:
            ident = name.removesuffix(".json")
            if name.endswith(".json") and not name.startswith(".") and ident not in present:
                # Written just now by an enqueue in flight? Leave young ones alone.
                path = self.root / "records" / name
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - path.stat().st_mtime > 3600:
                        path.unlink()

    def record(self, ident: str) -> Record:
        try:
            data = json.loads(self.record_path(ident).read_bytes())
        except FileNotFoundError:
            raise SyncdError(f"{self.account}: no message {ident!r} in the outbox") from None
        except ValueError:
            raise SyncdError(f"{self.account}: the outbox record of {ident} is damaged "
                             f"({self.record_path(ident)})") from None
        return Record.from_json(data)

    def records(self) -> list[Record]:
        result = []
        for ident in self.ids():
            with contextlib.suppress(SyncdError):
                result.append(self.record(ident))
        return result

    def message(self, ident: str) -> bytes:
        return self.message_path(ident).read_bytes()

    # --- one sender at a time ---------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[None]:
        """The account's sending lock (flock: the kernel drops it when the holder dies, even
        by kill -9). The daemon and `syncd outbox flush` never send the same queue at once,
        so a record in state ``sending`` seen by the holder is left by a dead process."""
        path = self.root.parent / f".{self.account}.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OutboxBusy(f"{self.account}: another syncd process is sending "
                                         "this account's outbox") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)


def new_id() -> str:
    """Unique and sortable by time: microseconds since the epoch in hex, then random."""
    return f"{time.time_ns() // 1000:013x}-{secrets.token_hex(3)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
