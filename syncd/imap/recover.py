"""Finishing or undoing what a crash left open in one folder: the intents of downloads and
uploads (syncd/imap/download.py, upload.py). Runs before the folder is gathered, so the
snapshot never sees a half-done transfer."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from syncd.core.flags import normalize
from syncd.core.model import SyncedMessage

if TYPE_CHECKING:
    from syncd.imap.client import ImapSession
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import FolderState, Intent, StateStore

log = logging.getLogger("syncd.imap.account")


def recover(session: ImapSession, state: StateStore, fstate: FolderState,
            folder: MaildirFolder, account: str) -> None:
    """Finish or undo every open intent of this folder (left by a crash). Whatever is not
    settled here the planner settles: a file without a row is paired with its server copy by
    Message-ID and size, or by content, never uploaded twice."""
    # Bodies a killed sync was streaming into tmp/ (before or after their intents).
    folder.remove_partial()
    intents = state.open_intents(fstate.id)
    if not intents:
        return
    rows = _settle(session, state, fstate, folder, intents)
    with state.transaction():
        for row in rows:
            state.put_message(fstate.id, row)
        state.clear_intents([i.id for i in intents])
    if rows:
        log.info("%s/%s: recovered %d interrupted transfers", account, fstate.remote_name,
                 len(rows))


def _settle(session: ImapSession, state: StateStore, fstate: FolderState,
            folder: MaildirFolder, intents: list[Intent]) -> list[SyncedMessage]:
    """The rows the open intents' transfers turn out to have completed."""
    rows: list[SyncedMessage] = []
    entries = folder.scan() if folder.exists() else {}
    known = state.messages(fstate.id)
    known_keys = {m.key for m in known}
    known_uids = {m.uid for m in known}
    selected = False
    for intent in intents:
        key = intent.key
        if intent.op in ("placeholder", "fetch_full", "copy_original"):
            from syncd.imap.placeholders import settle_intent

            if intent.op == "placeholder":
                _remove_staged(folder, key)
            row = settle_intent(session, state, fstate, folder, intent, entries)
            if row is not None and row.key not in known_keys and row.uid not in known_uids:
                rows.append(row)
                known_keys.add(row.key)
                known_uids.add(row.uid)
            continue
        if intent.op == "download":
            _remove_staged(folder, key)
        if key is None or key in known_keys or key not in entries:
            continue
        if intent.op == "download" and intent.uid is not None:
            # Delivered, not recorded: record it; the planner reconciles flags.
            rows.append(SyncedMessage(intent.uid, key, normalize(intent.flags or "")))
        elif intent.op == "upload" and intent.extra:
            # APPEND may have reached the server before the crash: look for it there before
            # anything appends it again.
            if not selected:
                session.select(fstate.remote_name)
                selected = True
            found = [uid for uid in session.search_message_id(intent.extra)
                     if uid not in known_uids]
            if found:
                uid = max(found)
                rows.append(SyncedMessage(uid, key, normalize(intent.flags or ""), None,
                                          intent.extra))
                known_uids.add(uid)
        known_keys.add(key)
    return rows


def _remove_staged(folder: MaildirFolder, key: str | None) -> None:
    """A kill while its group was staged (or between the link and the unlink of the tmp name)
    leaves tmp/<key> behind. Nothing else writes that name and nothing would ever remove it:
    each kill left up to a group's worth of messages in tmp/ (crash tests, kill -9 during an
    initial sync)."""
    if key and "/" not in key and not key.startswith("."):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder.path / "tmp" / key)
