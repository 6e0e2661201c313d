"""The status file: what `syncd status` shows, written atomically by `sync` and the daemon.

`<state_dir>/status.json` holds per account: last attempt, last success, last error, connection
state, and per folder the last sync, counts and last error. Writers replace the whole file
(tmp -> fsync -> rename) under a lock file so `sync` and the daemon never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.outcome.results import AccountResult

log = logging.getLogger("syncd.outcome.status")

STATUS_FILE = "status.json"


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "status.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class CorruptStatus(ValueError):
    """The status file is not what syncd writes (not UTF-8, not JSON, not its shape)."""


def read_status(state_dir: Path) -> dict[str, Any]:
    """The status file's contents; empty when there is none. A corrupt one reads as empty with
    a warning: the next writer moves it aside (reading alone must not: a writer may be
    replacing it at that moment)."""
    try:
        return _load(status_path(state_dir))
    except FileNotFoundError:
        pass
    except CorruptStatus as exc:
        log.warning("%s is corrupt (%s); the next sync moves it aside and starts a new one",
                    status_path(state_dir), exc)
    return {"accounts": {}}


def _load(path: Path) -> dict[str, Any]:
    """Raises FileNotFoundError, CorruptStatus, or OSError."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError
        raise CorruptStatus(type(exc).__name__) from None
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), dict):
        raise CorruptStatus("not a status mapping")
    return data


def _read_or_move_aside(state_dir: Path) -> dict[str, Any]:
    """read_status for a writer holding the lock: a corrupt file is moved aside to
    ``status.json.corrupt-<timestamp>`` (kept for a post-mortem, like a corrupt state database)
    and the status starts over; it only ever holds what the next syncs write again."""
    path = status_path(state_dir)
    try:
        return _load(path)
    except FileNotFoundError:
        return {"accounts": {}}
    except CorruptStatus as exc:
        from syncd.store.state import aside_path

        aside = aside_path(path)
        os.rename(path, aside)
        log.warning("%s was corrupt (%s); it was moved aside to %s and is rebuilt", path, exc,
                    aside.name)
        return {"accounts": {}}


def update_account(state_dir: Path, account: str, **fields: Any) -> None:
    """Merge fields into one account's entry (folders merge by name)."""
    with _locked(state_dir):
        data = _read_or_move_aside(state_dir)
        entry = data["accounts"].setdefault(account, {})
        folders = fields.pop("folders", None)
        entry.update(fields)
        if folders is not None:
            known = entry.setdefault("folders", {})
            for name, values in folders.items():
                known.setdefault(name, {}).update(values)
        data["updated"] = time.time()
        _write_atomic(status_path(state_dir), json.dumps(data, indent=1, sort_keys=True))


def record_result(state_dir: Path, result: AccountResult, *, started: float | None = None,
                  **extra: Any) -> None:
    """Record one sync's outcome (per account and folder); a status file that cannot be
    written is a warning, never a failed sync."""
    now = time.time()
    folders: dict[str, dict[str, Any]] = {}
    for f in result.folders:
        entry: dict[str, Any] = {"last_attempt": now, "error": f.error or f.guard}
        if not (f.error or f.guard):
            entry["last_sync"] = now
        if f.window is not None:
            label, inside, total = f.window
            entry["window"] = {"label": label, "inside": inside, "total": total}
        folders[f.folder] = entry
    fields: dict[str, Any] = {"last_attempt": started or now, "error": result.error,
                              "folders": folders, **extra}
    if result.ok:
        fields["last_sync"] = now
    try:
        update_account(state_dir, result.account, **fields)
    except OSError as exc:
        log.warning("cannot write the status file in %s: %s", state_dir, exc)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
