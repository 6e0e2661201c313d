"""Uploads of one folder's plan: per message an intent (one commit) -> APPEND -> the new UID
(APPENDUID, else SEARCH by Message-ID) -> the row with the intent cleared (one commit).
Recovery (recover.py) looks for an open upload's Message-ID on the server before anything
appends it again. A message the server refuses stays local and is reported; the others
still go up (refusals.py)."""

from __future__ import annotations

import datetime as dt
import os
from typing import BinaryIO

from syncd.core import actions as A
from syncd.core.flags import normalize
from syncd.core.model import SyncedMessage
from syncd.faults import checkpoint
from syncd.imap.client import STREAM_APPEND_MIN, AppendSource, refusal_text
from syncd.imap.job import FolderJob
from syncd.imap.refusals import RefusedUploads, is_refusal
from syncd.store.maildir import (
    file_chunks,
    header_info_of,
    lf_to_crlf,
    read_head,
    to_crlf_stream,
)


def upload_source(handle: BinaryIO) -> bytes | AppendSource:
    """What APPEND sends of this file: its bytes with CRLF line ends, or (a big one) an
    AppendSource that reads them from the file as they are sent, after one pass to size
    them (never the whole message in memory)."""
    if os.fstat(handle.fileno()).st_size <= STREAM_APPEND_MIN:
        return lf_to_crlf(file_read_all(handle))
    size = sum(len(chunk) for chunk in to_crlf_stream(file_chunks(handle, _STREAM_CHUNK)))
    return AppendSource(size, lambda: to_crlf_stream(file_chunks(handle, _STREAM_CHUNK)))


def file_read_all(handle: BinaryIO) -> bytes:
    handle.seek(0)
    return handle.read()


_STREAM_CHUNK = 1 << 20


class Uploader:
    """One folder's uploads. ``storable`` narrows as the server drops letters from what it
    is given, so later APPENDs do not offer them again."""

    def __init__(self, job: FolderJob) -> None:
        self.job = job
        self.refused = RefusedUploads(job.account, job.fstate.remote_name)
        self.storable = job.storable
        self.unkept = ""
        self.appended: dict[int, str] = {}  # uid -> the flags given, read back at the end

    def run(self, uploads: list[A.Upload]) -> None:
        from syncd.imap.writes import verify_appended

        job = self.job
        for n, action in enumerate(uploads):
            if self.refused.give_up:
                self.refused.not_tried = len(uploads) - n
                break
            self._one(action)
        # The recorded flags are the local ones; letters the server did not keep become
        # local-only for this folder, so the next sync neither reverts nor re-pushes them.
        self.unkept += verify_appended(job.session, self.appended, self.storable)
        if self.unkept:
            job.state.add_unkept_flags(job.fid, self.unkept)
        if self.refused:
            error = self.refused.error()
            job.result.error = f"{job.result.error}; {error}" if job.result.error else error

    def _one(self, action: A.Upload) -> None:
        from syncd.imap.writes import append_keeping

        job = self.job
        state, folder = job.state, job.folder
        try:
            handle = folder.open_message(action.key)
        except FileNotFoundError:
            return  # deleted before we got to it
        with handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            message_id = header_info_of(handle).message_id
            message = upload_source(handle)
            [intent_id] = state.add_intents(job.fid, "upload",
                                            [(None, action.key, action.flags, message_id)])
            checkpoint("upload.intent")
            internaldate = dt.datetime.fromtimestamp(mtime, tz=dt.UTC)
            try:
                uid, dropped = append_keeping(job.session, job.fstate.remote_name, message,
                                              action.flags, internaldate, self.storable)
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                # NO/BAD: nothing was stored. The intent goes, the file stays; the next sync
                # plans its upload again. The other messages still go up.
                state.clear_intents([intent_id])
                self.refused.add(action.key, read_head(handle), refusal_text(exc))
                return
        self.refused.accepted()
        self.unkept += dropped
        self.storable = normalize(set(self.storable) - set(dropped))
        checkpoint("upload.append")
        if uid is None and message_id:
            uid = self._find_uploaded(message_id)
        if uid is not None:
            self.appended[uid] = action.flags
        with state.transaction():
            if uid is not None:
                state.put_message(job.fid, SyncedMessage(uid, action.key, action.flags, None,
                                                         message_id))
            state.clear_intents([intent_id])
        checkpoint("upload.commit")
        job.result.uploaded += 1

    def _find_uploaded(self, message_id: str) -> int | None:
        """The UID of a message we appended, on a server without UIDPLUS (the folder selected
        anew if the APPEND left it: ImapSession.append)."""
        session, folder = self.job.session, self.job.fstate.remote_name
        if session.selected == folder:
            session.noop()
        else:
            session.select(folder)
        known = {m.uid for m in self.job.state.messages(self.job.fid)}
        candidates = [uid for uid in session.search_message_id(message_id) if uid not in known]
        return max(candidates) if candidates else None
