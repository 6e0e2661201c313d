"""`syncd status`: gathers the status file, the state databases and a scan of each Maildir
into one structure, and renders it as a table or JSON."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from syncd.outcome.status import read_status

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings, Settings


def _folder_rows(db_path: str) -> list[tuple[int, str, str, float | None]]:
    # Read-only, no migrations: status must work while the daemon writes.
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return list(conn.execute(
            "SELECT id, remote_name, local_path, last_sync FROM folder ORDER BY remote_name"))
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _message_flags(db_path: str, folder_id: int) -> dict[str, str]:
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        return dict(conn.execute(
            "SELECT maildir_key, synced_flags FROM message WHERE folder_id = ?", (folder_id,)))
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def _untracked_keys(db_path: str, folder_id: int) -> set[str]:
    """Local files the sync policy keeps out of the sync (untracked, or parked outside the
    window): not pending anything."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return set()
    try:
        return {key for (key,) in conn.execute(
            "SELECT maildir_key FROM untracked WHERE folder_id = ? AND maildir_key IS NOT NULL",
            (folder_id,))}
    except sqlite3.Error:  # a state from before the table
        return set()
    finally:
        conn.close()


def gather_status(settings: Settings, outbox_summary: Callable[[AccountSettings], Any] | None = None
                  ) -> dict[str, Any]:
    from syncd.store.maildir import MaildirFolder

    saved = read_status(settings.general.state_dir).get("accounts", {})
    accounts: dict[str, Any] = {}
    for name, account in settings.accounts.items():
        entry = saved.get(name, {})
        info: dict[str, Any] = {
            "protocol": account.protocol,
            "last_sync": entry.get("last_sync"),
            "last_attempt": entry.get("last_attempt"),
            "error": entry.get("error"),
            "connection": entry.get("connection", "unknown"),
            # Set while the daemon waits for the account's lock (a `syncd sync` holds it).
            "waiting": entry.get("waiting"),
            "folders": {},
        }
        saved_folders = entry.get("folders", {})
        db = account.state_path
        rows = _folder_rows(str(db)) if db.exists() else []
        for folder_id, remote_name, local_path, last_sync in rows:
            synced = _message_flags(str(db), folder_id)
            untracked = _untracked_keys(str(db), folder_id)
            total = unread = 0
            pending = {"new": 0, "flags": 0, "deleted": 0}
            folder = MaildirFolder(Path(local_path))
            entries = folder.scan() if folder.exists() else {}
            for key, local in entries.items():
                total += 1
                if "S" not in local.flags:
                    unread += 1
                if key in untracked:
                    continue
                if key not in synced:
                    pending["new"] += 1
                elif synced[key] != local.flags:
                    pending["flags"] += 1
            pending["deleted"] = sum(1 for key in synced if key not in entries)
            info["folders"][remote_name] = {
                "local_path": local_path,
                "last_sync": last_sync,
                "messages": total,
                "unread": unread,
                "pending": pending,
                "error": saved_folders.get(remote_name, {}).get("error"),
                # A window (max_age, max_messages): what the last sync mirrored of how many.
                "window": saved_folders.get(remote_name, {}).get("window"),
            }
        _add_failed_folders(info, saved_folders, entry.get("last_attempt"))
        if account.smtp is not None and outbox_summary is not None:
            info["outbox"] = outbox_summary(account)  # the outbox is above this module
        accounts[name] = info
    return {"accounts": accounts}


def _add_failed_folders(info: dict[str, Any], saved: dict[str, Any],
                        last_attempt: float | None) -> None:
    """Folders the last sync failed on that the state does not know (a local folder whose
    CREATE the server refused): shown with their error, or they would not be shown at all.
    Only those of the last attempt: an error that no sync repeats is gone."""
    for folder, values in saved.items():
        error = values.get("error") if isinstance(values, dict) else None
        if folder in info["folders"] or not error:
            continue
        if last_attempt is not None and (values.get("last_attempt") or 0) < last_attempt:
            continue
        info["folders"][folder] = {
            "local_path": None, "last_sync": None, "messages": 0, "unread": 0,
            "pending": {"new": 0, "flags": 0, "deleted": 0}, "error": error,
        }


def _when(stamp: float | None) -> str:
    if not stamp:
        return "never"
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def render_status(data: dict[str, Any], stream: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="syncd status")
    for column in ("account", "folder", "last sync", "unread/total", "pending", "state / error"):
        table.add_column(column)
    for name, account in data["accounts"].items():
        table.add_row(name, "", _when(account.get("last_sync")), "", "",
                      account.get("waiting") or account.get("error")
                      or account.get("connection") or "")
        for folder, info in account["folders"].items():
            pending = info["pending"]
            pending_text = " ".join(f"{k} {v}" for k, v in pending.items() if v) or "-"
            window = info.get("window")
            mirrored = (f"{window['label']}: {window['inside']:,} of {window['total']:,}"
                        if window else "")
            table.add_row("", folder, _when(info.get("last_sync")),
                          f"{info['unread']}/{info['messages']}", pending_text,
                          info.get("error") or mirrored)
        outbox = account.get("outbox")
        if outbox:
            table.add_row("", "(outbox)", "", "", ", ".join(f"{n} {state}" for state, n
                                                          in sorted(outbox.items())),
                          "see `syncd outbox`")
    Console(file=stream, width=120).print(table)
