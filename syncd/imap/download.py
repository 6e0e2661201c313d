"""Downloads of one folder's plan, in group commits: intents for a group -> each body staged in
tmp/ -> one flush -> links into cur/ or new/ -> directory fsync -> the rows with the intents
cleared, and the next group's intents, in one commit (one state fsync a group, not two). The
next group's bodies arrive while this one is written (BodyPrefetcher). A body whose content is
already here under another name is paired, never stored twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import sqlite3
import threading
from typing import NamedTuple

from syncd.core import actions as A
from syncd.core.model import SyncedMessage
from syncd.faults import checkpoint
from syncd.imap.changes import apply_flags
from syncd.imap.client import SPOOL_LITERAL_MIN, FetchedBody, ImapSession
from syncd.imap.job import FolderJob
from syncd.imap.refusals import RefusedDownloads
from syncd.store.maildir import MaildirFolder, Written, crlf_to_lf, file_chunks

# Group commit: how many downloaded messages share one directory fsync and one state commit.
DOWNLOAD_COMMIT_COUNT = 200
DOWNLOAD_COMMIT_BYTES = 2 * 1024 * 1024

# uid, raw bytes (or, for a big one, the tmp/ file it was streamed into), INTERNALDATE
Body = tuple[int, FetchedBody, dt.datetime | None]


def discard_bodies(bodies: list[Body]) -> None:
    """Remove the tmp/ files of streamed bodies that will not be delivered."""
    for _uid, raw, _date in bodies:
        if isinstance(raw, Written):
            raw.discard()


class BodyPrefetcher:
    """Fetches download groups' bodies on the session in a thread, one group ahead of the
    writer, so network transfer overlaps with writing and flushing; memory stays bounded by
    two groups. The writer must not use the session until close()."""

    def __init__(self, session: ImapSession, groups: list[list[A.Download]],
                 refused: RefusedDownloads, folder: MaildirFolder) -> None:
        self._groups = groups
        self._refused = refused
        self._session = session
        self._folder = folder
        self._queue: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._taken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imap-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # One fetch for every group, cut into groups as the bodies come: the session keeps
        # the next batches' commands in flight across group boundaries (issue 21), where a
        # fetch per group waited a round trip at the start of each.
        # A big body is streamed into a tmp/ file of the folder as it arrives.
        group_of = {a.uid: k for k, group in enumerate(self._groups) for a in group}
        bodies = self._session.fetch_bodies([(a.uid, a.size) for g in self._groups for a in g],
                                            self._refused.add, spool=self._folder.tmp_writer)
        current: list[Body] = []
        try:
            k = 0
            for body in bodies:
                while group_of[body[0]] > k:  # this group is complete (absent ones vanished)
                    self._put((True, current))
                    current, k = [], k + 1
                if self._halt.is_set():
                    discard_bodies([body, *current])
                    return
                current.append(body)
            while k < len(self._groups) and not self._halt.is_set():
                self._put((True, current))
                current, k = [], k + 1
        except BaseException as exc:  # handed to the writer, which raises it
            discard_bodies(current)  # a group cut short is never delivered
            self._put((False, exc))
        finally:
            # Reads the replies still in flight, in this thread. A connection that breaks
            # meanwhile is the next command's error (the writer has what it needs).
            with contextlib.suppress(Exception):
                bodies.close()

    def _put(self, item: tuple[bool, object]) -> None:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                break
            except queue.Full:
                continue
        else:
            if item[0]:
                discard_bodies(item[1])  # type: ignore[arg-type]
            return
        # Fetch the next group only once the writer has taken this one: at most two groups
        # (the one being written, the one arriving) are in memory.
        while not self._halt.is_set() and not self._taken.wait(0.2):
            pass
        self._taken.clear()

    def next_group(self) -> list[Body]:
        ok, value = self._queue.get()
        self._taken.set()
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    def close(self) -> None:
        self._halt.set()
        # Whatever it is fetching now completes (or times out) before the session is reused.
        self._thread.join()
        # A group fetched but never taken (the sync stopped): its streamed files go.
        while not self._queue.empty():
            ok, value = self._queue.get_nowait()
            if ok:
                discard_bodies(value)  # type: ignore[arg-type]


class IntentsAhead(NamedTuple):
    """A group's download intents, committed with the previous group's rows: the key each
    body will be written under, and the intents' ids."""

    keys: dict[int, str]
    ids: list[int]


def keys_known_ahead(group: list[A.Download]) -> bool:
    """Whether a group's intents can be written before its bodies arrive: only when every body
    will be stored under a key chosen now, i.e. none will be spooled into tmp/ as it arrives
    (a literal above SPOOL_LITERAL_MIN gets a key of its own there). Half the limit: a server's
    literal may be a little bigger than the RFC822.SIZE it announced."""
    return all(a.size is not None and a.size < SPOOL_LITERAL_MIN // 2 for a in group)


def commit_groups(downloads: list[A.Download]) -> list[list[A.Download]]:
    """The downloads cut into group commits, bounded by count and by bytes."""
    groups: list[list[A.Download]] = [[]]
    group_bytes = 0
    for action in downloads:
        if groups[-1] and (len(groups[-1]) >= DOWNLOAD_COMMIT_COUNT
                           or group_bytes >= DOWNLOAD_COMMIT_BYTES):
            groups.append([])
            group_bytes = 0
        groups[-1].append(action)
        group_bytes += action.size or 0
    return groups


class Downloader:
    """One folder's downloads. ``paired_keys`` collects the local files a download was paired
    with by content: their planned uploads (unless_paired) are dropped."""

    def __init__(self, job: FolderJob) -> None:
        self.job = job
        self.paired_keys: set[str] = set()
        self._paired_flags: list[A.Action] = []
        self._parked: list[SyncedMessage] = []  # content pairs outside the window
        # Local key -> content digest: every no-Message-ID download shares the candidates,
        # so each file is read once (see _content_match).
        self._candidate_digests: dict[str, str] = {}
        # The next group's intents, committed with this group's rows (see _group).
        self._ahead: IntentsAhead | None = None

    def run(self, downloads: list[A.Download]) -> None:
        job = self.job
        job.reporter.folder_started(job.account, job.fstate.remote_name, len(downloads),
                                    sum(a.size or 0 for a in downloads))
        groups = commit_groups(downloads)
        # The next group's bodies come over the network while this one is written and
        # flushed. Fetching stores nothing, so it may run ahead of the group's intents.
        refused = RefusedDownloads(job.account, job.fstate.remote_name)
        prefetch = BodyPrefetcher(job.session, groups, refused, job.folder)
        try:
            for k, group in enumerate(groups):
                if job.should_stop():
                    break
                following = groups[k + 1] if k + 1 < len(groups) else None
                self._group(group, prefetch.next_group(), following)
        finally:
            prefetch.close()
            self._drop_ahead()
        if refused:
            error = refused.error(job.session.fetch_subjects(sorted(refused.reasons)))
            job.result.error = f"{job.result.error}; {error}" if job.result.error else error
        if self._paired_flags:
            apply_flags(job, self._paired_flags)

    def _drop_ahead(self) -> None:
        """Intents written ahead for a group that was never started (the sync stopped, or its
        bodies did not come): nothing was done for them. Left open (a crash), recovery finds
        no file of theirs and drops them the same way."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(sqlite3.Error):
                self.job.state.clear_intents(ahead.ids)

    def _intents(self, group: list[A.Download], bodies: list[Body]
                 ) -> tuple[dict[int, str], list[int]]:
        """The group's keys and committed intents: those written ahead with the previous
        group's rows, or now (one commit). A streamed body is in tmp/ under a key of its own
        already: that is its key, and its intent says so before anything is published."""
        job = self.job
        streamed = {uid: raw.key for uid, raw, _date in bodies if isinstance(raw, Written)}
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            keys = {a.uid: job.folder.new_key() for a in group} | streamed
            ids = job.state.add_intents(
                job.fid, "download", [(a.uid, keys[a.uid], a.flags, None) for a in group])
            checkpoint("download.intents")
            return keys, ids
        keys, ids = dict(ahead.keys), list(ahead.ids)
        moved = {uid: key for uid, key in streamed.items() if keys.get(uid) != key}
        if moved:  # a body bigger than announced was spooled: its own key, its own intent
            flags = {a.uid: a.flags for a in group}
            keys.update(moved)
            ids += job.state.add_intents(
                job.fid, "download", [(uid, key, flags[uid], None) for uid, key in moved.items()])
        return keys, ids

    def _group(self, group: list[A.Download], bodies: list[Body],
               following: list[A.Download] | None = None) -> None:
        """One group commit: intents (written ahead with the previous group's rows, or now)
        -> stage each body in tmp/ -> one flush -> links -> directory fsync -> rows, cleared
        intents and the ``following`` group's intents (one commit)."""
        job = self.job
        state, folder = job.state, job.folder
        keys, intent_ids = self._intents(group, bodies)
        by_uid = {a.uid: a for a in group}
        rows: list[SyncedMessage] = []
        staged = []
        try:
            for n, (uid, raw, internaldate) in enumerate(bodies):
                action = by_uid[uid]
                data = raw if isinstance(raw, Written) else crlf_to_lf(raw)
                row = self._pair(action, data)
                if row is not None or action.pair_only:  # (or parked by _pair)
                    # Paired with a local file; or direction: push (compared, never
                    # delivered).
                    if isinstance(raw, Written):
                        raw.discard()
                    if row is not None:
                        rows.append(row)
                    continue
                mtime = internaldate.timestamp() \
                    if isinstance(internaldate, dt.datetime) else None
                if isinstance(data, Written):
                    staged.append(folder.stage_written(data, action.flags, mtime=mtime))
                else:
                    staged.append(folder.stage(data, action.flags, mtime=mtime, key=keys[uid]))
                bodies[n] = (uid, b"", None)  # staged: its file belongs to `staged` now
                rows.append(SyncedMessage(uid, keys[uid], action.flags, action.size))
                self._count(action, raw)
        except BaseException:
            folder.discard(staged)  # never leave half a batch in tmp/
            discard_bodies(bodies)
            raise
        # tmp files -> one flush for the whole group -> links -> directory fsync -> rows.
        folder.publish(staged)
        checkpoint("download.publish")
        job.result.downloaded += len(staged)
        folder.sync()
        parked, self._parked = self._parked, []
        ahead = None
        with state.transaction():
            state.put_messages(job.fid, rows)
            if parked:
                state.put_outside(job.fid, parked)
            state.clear_intents(intent_ids)
            if following and keys_known_ahead(following) and not job.should_stop():
                # The next group's intents ride with this commit: written before its bodies
                # are staged, as they must be, and one state fsync a group instead of two.
                next_keys = {a.uid: folder.new_key() for a in following}
                ahead = IntentsAhead(next_keys, state.add_intents(
                    job.fid, "download",
                    [(a.uid, next_keys[a.uid], a.flags, None) for a in following]))
        self._ahead = ahead
        checkpoint("download.commit")

    def _count(self, action: A.Download, raw: FetchedBody) -> None:
        job = self.job
        size = raw.server_bytes if isinstance(raw, Written) else len(raw)
        job.result.downloaded_bytes += size
        if "S" not in action.flags:
            job.result.new_mail += 1
        job.reporter.advance(job.account, 1, size)

    def _pair(self, action: A.Download, data: bytes | Written) -> SyncedMessage | None:
        """The row pairing this message with a local file of the same content, or None.
        Same content already here under another name (a crash between APPEND and its record,
        or a state rebuilt from scratch): pair, do not duplicate. As a planned Pair (see
        A.Download): record the merge base now, bring both sides to the union of their flags
        once the downloads are done. Recording the local flags instead left the sides apart
        and made the next merge drop a local-only flag (crash tests, "initial")."""
        candidate = self._content_match(action, data)
        if candidate is None:
            return None
        self.paired_keys.add(candidate)
        if action.outside:
            # Outside the window: parked as it is (state.put_outside), no flags moved.
            self._parked.append(SyncedMessage(action.uid, candidate, "", action.size, None))
            return None
        from syncd.core.plan import pair_actions

        pair, *flag_actions = pair_actions(action.uid, candidate,
                                           self.job.local_flags.get(candidate, ""),
                                           action.flags, size=action.size,
                                           storable=self.job.storable,
                                           direction=self.job.direction)
        assert isinstance(pair, A.Pair)
        self._paired_flags.extend(flag_actions)
        self.job.result.paired += 1
        return SyncedMessage(action.uid, candidate, pair.flags, action.size, None)

    def _content_match(self, action: A.Download, data: bytes | Written) -> str | None:
        """The first candidate (a local file without Message-ID, like this message) with the
        same content digest: the same body and Date/From/To/Cc/Subject whatever the line ends
        and added headers (a POP3 server's X-UIDL, mbsync's X-TUID). Bytes would not do."""
        candidates = [key for key in action.pair_candidates if key not in self.paired_keys]
        if not candidates:
            return None
        from syncd.core.message import content_digest, content_digest_stream

        if isinstance(data, Written):
            with open(data.tmp_path, "rb") as handle:
                wanted = content_digest_stream(file_chunks(handle))
        else:
            wanted = content_digest(data)
        for key in candidates:
            digest = self._candidate_digests.get(key)
            if digest is None:
                try:
                    with self.job.folder.open_message(key) as handle:
                        digest = content_digest_stream(file_chunks(handle))
                except FileNotFoundError:
                    continue
                self._candidate_digests[key] = digest
            if digest == wanted:
                return key
        return None
