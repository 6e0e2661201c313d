"""Downloads of one folder's plan, in group commits: intents for a group (one commit) -> each
body staged in tmp/ -> one flush -> links into cur/ or new/ -> directory fsync -> the rows
with the intents cleared (one commit). The next group's bodies arrive while this one is
written (BodyPrefetcher). A body whose content is already here under another name is paired,
never stored twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading

from syncd.core import actions as A
from syncd.core.model import SyncedMessage
from syncd.faults import checkpoint
from syncd.imap.changes import apply_flags
from syncd.imap.client import ImapSession
from syncd.imap.job import FolderJob
from syncd.store.maildir import crlf_to_lf

# Group commit: how many downloaded messages share one directory fsync and one state commit.
DOWNLOAD_COMMIT_COUNT = 200
DOWNLOAD_COMMIT_BYTES = 2 * 1024 * 1024

Body = tuple[int, bytes, dt.datetime | None]  # uid, raw bytes, INTERNALDATE


class BodyPrefetcher:
    """Fetches download groups' bodies on the session in a thread, one group ahead of the
    writer, so network transfer overlaps with writing and flushing; memory stays bounded by
    two groups. The writer must not use the session until close()."""

    def __init__(self, session: ImapSession, groups: list[list[A.Download]]) -> None:
        self._groups = groups
        self._session = session
        self._queue: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._taken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imap-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # One fetch for every group, cut into groups as the bodies come: the session keeps
        # the next batches' commands in flight across group boundaries (issue 21), where a
        # fetch per group waited a round trip at the start of each.
        group_of = {a.uid: k for k, group in enumerate(self._groups) for a in group}
        bodies = self._session.fetch_bodies([(a.uid, a.size) for g in self._groups for a in g])
        try:
            current: list[Body] = []
            k = 0
            for body in bodies:
                while group_of[body[0]] > k:  # this group is complete (absent ones vanished)
                    self._put((True, current))
                    current, k = [], k + 1
                if self._halt.is_set():
                    return
                current.append(body)
            while k < len(self._groups) and not self._halt.is_set():
                self._put((True, current))
                current, k = [], k + 1
        except BaseException as exc:  # handed to the writer, which raises it
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

    def run(self, downloads: list[A.Download]) -> None:
        job = self.job
        job.reporter.folder_started(job.account, job.fstate.remote_name, len(downloads),
                                    sum(a.size or 0 for a in downloads))
        groups = commit_groups(downloads)
        # The next group's bodies come over the network while this one is written and
        # flushed. Fetching stores nothing, so it may run ahead of the group's intents.
        prefetch = BodyPrefetcher(job.session, groups)
        try:
            for group in groups:
                if job.should_stop():
                    break
                self._group(group, prefetch.next_group())
        finally:
            prefetch.close()
        if self._paired_flags:
            apply_flags(job, self._paired_flags)

    def _group(self, group: list[A.Download], bodies: list[Body]) -> None:
        """One group commit: intents (one commit) -> stage each body in tmp/ -> one flush ->
        links -> directory fsync -> rows and cleared intents (one commit)."""
        job = self.job
        state, folder, result = job.state, job.folder, job.result
        keys = {a.uid: folder.new_key() for a in group}
        intent_ids = state.add_intents(
            job.fid, "download", [(a.uid, keys[a.uid], a.flags, None) for a in group])
        checkpoint("download.intents")
        by_uid = {a.uid: a for a in group}
        rows: list[SyncedMessage] = []
        staged = []
        try:
            for uid, raw, internaldate in bodies:
                action = by_uid[uid]
                data = crlf_to_lf(raw)
                row = self._pair(action, data)
                if row is not None:
                    rows.append(row)
                    continue
                if action.pair_only:  # (or parked by _pair, outside the window)
                    continue  # direction: push: compared, never delivered
                mtime = internaldate.timestamp() \
                    if isinstance(internaldate, dt.datetime) else None
                staged.append(folder.stage(data, action.flags, mtime=mtime, key=keys[uid]))
                rows.append(SyncedMessage(uid, keys[uid], action.flags, action.size))
                result.downloaded_bytes += len(raw)
                if "S" not in action.flags:
                    result.new_mail += 1
                job.reporter.advance(job.account, 1, len(raw))
        except BaseException:
            folder.discard(staged)  # never leave half a batch in tmp/
            raise
        # tmp files -> one flush for the whole group -> links -> directory fsync -> rows.
        folder.publish(staged)
        checkpoint("download.publish")
        result.downloaded += len(staged)
        folder.sync()
        parked, self._parked = self._parked, []
        with state.transaction():
            state.put_messages(job.fid, rows)
            if parked:
                state.put_outside(job.fid, parked)
            state.clear_intents(intent_ids)
        checkpoint("download.commit")

    def _pair(self, action: A.Download, data: bytes) -> SyncedMessage | None:
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

    def _content_match(self, action: A.Download, data: bytes) -> str | None:
        """The first candidate (a local file without Message-ID, like this message) with the
        same content digest: the same body and Date/From/To/Cc/Subject whatever the line ends
        and added headers (a POP3 server's X-UIDL, mbsync's X-TUID). Bytes would not do."""
        candidates = [key for key in action.pair_candidates if key not in self.paired_keys]
        if not candidates:
            return None
        from syncd.core.message import content_digest

        wanted = content_digest(data)
        for key in candidates:
            digest = self._candidate_digests.get(key)
            if digest is None:
                try:
                    digest = content_digest(self.job.folder.read(key))
                except FileNotFoundError:
                    continue
                self._candidate_digests[key] = digest
            if digest == wanted:
                return key
        return None
