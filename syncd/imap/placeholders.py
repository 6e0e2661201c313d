"""Placeholders on the engine's side (README, "Partial mirrors"; the format is
syncd/core/placeholder.py): downloading one (the header only), replacing one with the full
message in place (FetchFull, `syncd fetch`), and keeping the rule that a placeholder is never
uploaded: a placeholder a mail reader copied or moved into another folder becomes a
server-side UID COPY of its original (CopyOriginal at the destination; before the source's
deletion, a copy made first, see rescue_moved).

Each step follows the order that makes kill -9 safe: an intent, the server, the file (tmp ->
fsync -> rename), then the state with the intent cleared in one commit. recover.py settles
what a kill leaves open (settle_intent below).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from syncd.core import actions as A
from syncd.core.flags import normalize
from syncd.core.model import SyncedMessage
from syncd.core.placeholder import Original, build_placeholder
from syncd.faults import checkpoint
from syncd.store.maildir import crlf_to_lf, write_file_synced

if TYPE_CHECKING:
    from syncd.imap.client import ImapSession
    from syncd.imap.job import FolderJob
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import FolderState, Intent, StateStore

log = logging.getLogger("syncd.imap.account")

GROUP = 200  # placeholders per group commit (headers only: small)
FULL_SUFFIX = ".full"  # tmp/<key>.full: a full message on its way over its placeholder


# --- downloading placeholders ----------------------------------------------------------------

def download_placeholders(job: FolderJob, downloads: Sequence[A.Download]) -> None:
    """Deliver a placeholder for each of ``downloads`` (bigger than max_size): their headers
    only, in group commits like the full downloads (intents, staged files, one flush, links,
    directory fsync, the rows marked placeholder with the intents cleared)."""
    for start in range(0, len(downloads), GROUP):
        if job.should_stop():
            return
        _placeholder_group(job, downloads[start:start + GROUP])


def _placeholder_group(job: FolderJob, group: Sequence[A.Download]) -> None:
    state, folder, result = job.state, job.folder, job.result
    keys = {a.uid: folder.new_key() for a in group}
    intent_ids = state.add_intents(job.fid, "placeholder",
                                   [(a.uid, keys[a.uid], a.flags, None) for a in group])
    checkpoint("placeholder.intents")
    headers = job.session.fetch_headers([a.uid for a in group])
    staged, rows = [], []
    try:
        for action in group:
            if action.uid not in headers:
                continue  # expunged meanwhile
            header, size, date = headers[action.uid]
            data = crlf_to_lf(build_placeholder(
                header, size, folder=job.fstate.remote_name,
                uidvalidity=job.uidvalidity or 0, uid=action.uid))
            from syncd.core.message import header_identity

            mtime = date.timestamp() if date is not None else None
            staged.append(folder.stage(data, action.flags, mtime=mtime, key=keys[action.uid]))
            rows.append(SyncedMessage(action.uid, keys[action.uid], action.flags, size,
                                      header_identity(header).message_id, placeholder=True))
            result.downloaded_bytes += len(data)
            if "S" not in action.flags:
                result.new_mail += 1
    except BaseException:
        folder.discard(staged)
        raise
    folder.publish(staged)
    checkpoint("placeholder.publish")
    folder.sync()
    with state.transaction():
        state.put_messages(job.fid, rows)
        state.clear_intents(intent_ids)
    checkpoint("placeholder.commit")
    result.downloaded += len(rows)
    result.placeholders += len(rows)


# --- replacing a placeholder with the full message --------------------------------------------

def fetch_full(job: FolderJob, actions: Sequence[A.FetchFull]) -> None:
    """FetchFull: each placeholder replaced by its full message, in place."""
    sizes = {row.uid: row.size for row in job.state.messages(job.fid) if row.placeholder}
    for action in actions:
        if job.should_stop():
            return
        if replace_with_full(job.session, job.state, job.fid, job.folder, action.uid,
                             action.key, sizes.get(action.uid)):
            job.result.fetched_full += 1


def replace_with_full(session: ImapSession, state: StateStore, fid: int,
                      folder: MaildirFolder, uid: int, key: str, size: int | None) -> bool:
    """Replace the placeholder ``key`` (server message ``uid`` of the selected folder) with
    the full message: intent -> UID FETCH -> tmp/<key>.full, fsync -> rename over the file
    (same name, so same flags and folder) -> directory fsync -> the row no longer a
    placeholder, intent cleared (one commit). False when the message is gone from the server.
    A file that turns out not to be a placeholder (fetched before) only has its mark cleared."""
    [intent] = state.add_intents(fid, "fetch_full", [(uid, key, None, None)])
    checkpoint("fetch_full.intent")
    if folder.header_info(key).placeholder is None:
        _mark_full(state, fid, uid, intent)
        return False
    body = next(iter(session.fetch_bodies([(uid, size)])), None)
    if body is None:
        state.clear_intents([intent])
        return False
    tmp = folder.path / "tmp" / f"{key}{FULL_SUFFIX}"
    write_file_synced(tmp, crlf_to_lf(body[1]), exclusive=False)
    checkpoint("fetch_full.staged")
    for path in _current_paths(folder, key):
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keep INTERNALDATE
        try:
            # Same name: the flags a mail reader gave it stay. A rename that lost the race
            # with the mail reader's own (the file moved since we looked) is retried.
            os.rename(tmp, path)
            break
        except FileNotFoundError:
            if not tmp.exists():
                raise
            continue
    folder.sync()
    checkpoint("fetch_full.rename")
    _mark_full(state, fid, uid, intent)
    return True


def _current_paths(folder: MaildirFolder, key: str) -> Iterator[str]:
    """The file's present path, looked up again each time the caller finds it moved."""
    for _attempt in range(3):
        path = folder.path_of(key)
        yield str(path)
        folder.scan()  # moved under us: the next lookup is fresh
    raise FileNotFoundError(f"message {key!r} keeps moving")


def _mark_full(state: StateStore, fid: int, uid: int, intent: int) -> None:
    with state.transaction():
        state.set_placeholder(fid, uid, False)
        state.clear_intents([intent])
    checkpoint("fetch_full.commit")


# --- a placeholder copied or moved by the mail reader -----------------------------------------

def copy_originals(job: FolderJob, actions: Sequence[A.CopyOriginal]) -> None:
    """CopyOriginal: for each placeholder the state does not know here, its original copied
    into this folder on the server (UID COPY) and paired with it; never APPENDed. One whose
    original is gone stays local only (untracked, reported)."""
    session, name = job.session, job.fstate.remote_name
    lost: list[str] = []
    try:
        for action in actions:
            try:
                info = job.folder.header_info(action.key)
            except FileNotFoundError:
                continue
            if info.placeholder is None:
                continue  # replaced by the full message meanwhile: uploaded next time
            found = locate_original(session, job.state, info.placeholder, info.message_id)
            if found is None:
                lost.append(action.key)
                continue
            _copy_one(job, action, found, info.placeholder.size, info.message_id)
    finally:
        if session.selected != name:
            session.select(name)
    if lost:
        job.state.add_untracked(job.fid, keys=lost)
        job.result.notice = (
            f"{len(lost)} placeholder(s) copied here by the mail reader ({', '.join(lost[:3])}"
            f"{', ...' if len(lost) > 3 else ''}) have no original on the server any more: "
            "kept locally only, never uploaded (a placeholder is not the message)")
        log.warning("%s/%s: %s", job.account, name, job.result.notice)


def locate_original(session: ImapSession, state: StateStore, origin: Original,
                    message_id: str | None) -> tuple[str, int] | None:
    """Where a placeholder's full message is on the server now: (folder, UID), that folder
    left selected; None when it is nowhere to be found. The UID the placeholder names, if its
    folder's UIDVALIDITY is still the one it names, else the folder's message with its
    Message-ID."""
    if origin.folder is None or state.folder(origin.folder) is None:
        return None
    try:
        info = session.select(origin.folder)
    except Exception as exc:  # the folder is gone or refused: the original with it
        log.info("placeholder's folder %r cannot be selected: %s", origin.folder, exc)
        return None
    if origin.uid is not None and info.uidvalidity == origin.uidvalidity \
            and origin.uid in session.fetch_flags_of([origin.uid]):
        return origin.folder, origin.uid
    if message_id:
        found = session.search_message_id(message_id)
        if found:
            return origin.folder, max(found)
    return None


def _copy_one(job: FolderJob, action: A.CopyOriginal, found: tuple[str, int], size: int,
              message_id: str | None) -> None:
    """UID COPY (the source selected), the copy's flags set to the file's, the row recorded:
    behind an intent that recovery settles by Message-ID."""
    session, state = job.session, job.state
    [intent] = state.add_intents(job.fid, "copy_original",
                                 [(None, action.key, action.flags, message_id)])
    checkpoint("copy_original.intent")
    copied = session.copy_message(found[1], job.fstate.remote_name)
    checkpoint("copy_original.copy")
    session.select(job.fstate.remote_name)
    uid = copied[1] if copied is not None else _find_copy(job, message_id)
    if uid is not None:
        # The copy came with the original's flags; the file's are the ones the user sees.
        session.replace_flags(uid, normalize(set(action.flags) & set(job.storable)))
    with state.transaction():
        if uid is not None:
            state.put_message(job.fid, SyncedMessage(uid, action.key, action.flags, size,
                                                     message_id, placeholder=True))
        state.clear_intents([intent])
    checkpoint("copy_original.commit")
    job.result.copied_originals += 1


def _find_copy(job: FolderJob, message_id: str | None) -> int | None:
    """The copy's UID without COPYUID: the newest message of its Message-ID the state does
    not know (none without one: the next sync pairs it by Message-ID and size)."""
    if not message_id:
        return None
    known = {m.uid for m in job.state.messages(job.fid)}
    found = [uid for uid in job.session.search_message_id(message_id) if uid not in known]
    return max(found) if found else None


def rescue_moved(job: FolderJob, deletes: list[A.DeleteRemote]) -> list[A.DeleteRemote]:
    """Before the placeholders among ``deletes`` (deleted locally) go from the server: any of
    them a mail reader moved into another local folder is copied there on the server first
    (UID COPY of the original, while it still exists), so the move does not lose the message.
    Returns the deletions to carry out: one whose moved copy sits in a folder the server
    does not have yet is held (its row kept) until a sync has created that folder."""
    wanted = {a.uid: a for a in deletes if a.placeholder}
    if not wanted or job.local_folders is None:
        return deletes
    held: set[int] = set()
    for dest, place, key, info in _moved_copies(job, set(wanted)):
        assert info.placeholder is not None and info.placeholder.uid is not None
        uid = info.placeholder.uid
        if dest is None:
            held.add(uid)
            log.info("%s/%s: UID %d moved into local folder %s, which the server does not "
                     "have yet: kept until it is created", job.account,
                     job.fstate.remote_name, uid, place.path)
            continue
        _copy_to(job, uid, dest, key, info.message_id, info.placeholder.size)
    return [a for a in deletes if a.uid not in held]


def _moved_copies(job: FolderJob, uids: set[int]) -> Iterator[tuple]:
    """(server name or None, MaildirFolder, key, HeaderInfo) of each placeholder in another
    local folder, unknown to the state there, whose original is one of ``uids`` here."""
    assert job.local_folders is not None
    me = job.folder.path.resolve()
    for dest, place in job.local_folders():
        if place.path.resolve() == me or not place.exists():
            continue
        dstate = job.state.folder(dest) if dest is not None else None
        known = {m.key for m in job.state.messages(dstate.id)} if dstate else set()
        for key in place.scan():
            if key in known:
                continue
            try:
                info = place.header_info(key)
            except FileNotFoundError:
                continue
            origin = info.placeholder
            if (origin is not None and origin.folder == job.fstate.remote_name
                    and origin.uidvalidity == job.uidvalidity and origin.uid in uids):
                yield dest, place, key, info


def _copy_to(job: FolderJob, uid: int, dest: str, key: str, message_id: str | None,
             size: int) -> None:
    """UID COPY from this (selected) folder into ``dest``, behind an intent of ``dest`` (its
    recovery finds the copy by Message-ID); the copy paired there with the moved placeholder
    when COPYUID names it under the UIDVALIDITY the state knows, with the original's flags as
    the synced ones (the next sync of ``dest`` carries the file's own)."""
    session, state = job.session, job.state
    dstate = state.folder(dest)
    assert dstate is not None  # dest comes from the state's folders
    if any(i.op == "copy_original" and i.key == key for i in state.open_intents(dstate.id)) \
            and _already_copied(job, dest, message_id):
        return  # copied before a kill: dest's recovery pairs it
    flags = session.fetch_flags_of([uid]).get(uid, "")
    [intent] = state.add_intents(dstate.id, "copy_original", [(None, key, flags, message_id)])
    checkpoint("rescue.intent")
    copied = session.copy_message(uid, dest)
    checkpoint("rescue.copy")
    log.info("%s/%s: placeholder of UID %d moved locally to %s: copied there on the server",
             job.account, job.fstate.remote_name, uid, dest)
    job.result.copied_originals += 1
    with state.transaction():
        if copied is not None and dstate.uidvalidity == copied[0]:
            state.put_message(dstate.id, SyncedMessage(copied[1], key, flags, size,
                                                       message_id, placeholder=True))
            state.clear_intents([intent])
        # else: left open, for dest's recovery (by Message-ID) or its pairing by content
    checkpoint("rescue.commit")


def _already_copied(job: FolderJob, dest: str, message_id: str | None) -> bool:
    """Whether ``dest`` has a message of this Message-ID its state does not know (a copy a
    kill kept from being recorded); this folder selected again afterwards."""
    if not message_id:
        return False
    dstate = job.state.folder(dest)
    known = {m.uid for m in job.state.messages(dstate.id)} if dstate else set()
    job.session.select(dest)
    try:
        return any(uid not in known for uid in job.session.search_message_id(message_id))
    finally:
        job.session.select(job.fstate.remote_name)


# --- recovery ---------------------------------------------------------------------------------

def settle_intent(session: ImapSession, state: StateStore, fstate: FolderState,
                  folder: MaildirFolder, intent: Intent, entries: dict) -> SyncedMessage | None:
    """What a kill left open of a placeholder step: the row to record, if any.
    "placeholder": delivered, not recorded: a placeholder row. "fetch_full": the file is the
    full message (renamed into place) or still the placeholder: the mark follows the file.
    "copy_original" (also a rescue's, filed under its destination): the copy may be on the
    server: found by its Message-ID."""
    key = intent.key
    if intent.op == "fetch_full" and key:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder.path / "tmp" / f"{key}{FULL_SUFFIX}")
        if key in entries and intent.uid is not None:
            with contextlib.suppress(FileNotFoundError):
                if folder.header_info(key).placeholder is None:
                    state.set_placeholder(fstate.id, intent.uid, False)
        return None
    if key is None or key not in entries:
        return None
    if intent.op == "placeholder" and intent.uid is not None:
        info = folder.header_info(key)
        return SyncedMessage(intent.uid, key, normalize(intent.flags or ""),
                             info.placeholder.size if info.placeholder else None,
                             info.message_id, placeholder=True)
    if intent.op == "copy_original" and intent.extra:
        if session.selected != fstate.remote_name:
            session.select(fstate.remote_name)
        known = {m.uid for m in state.messages(fstate.id)}
        found = [uid for uid in session.search_message_id(intent.extra) if uid not in known]
        if found:
            # The copy's flags as the base: those it has now (the original's, if the kill came
            # before they were set to the file's), so the next merge carries the file's up.
            uid = max(found)
            info = folder.header_info(key)
            return SyncedMessage(uid, key, session.fetch_flags_of([uid]).get(uid, ""),
                                 info.placeholder.size if info.placeholder else None,
                                 intent.extra, placeholder=True)
    return None
