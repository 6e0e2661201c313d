"""Executes sync plans for one IMAP account: gathers snapshots (state, Maildir scan, server),
asks the pure planner what to do, and does it in the crash-safe order of docs/architecture.md.

Ordering rules that make kill -9 at any instant safe:
- a downloaded message is written to tmp/, fsynced, linked into place and its directory fsynced
  before the state records it; an intent naming its key is committed before the fetch, so a
  crash in between re-pairs the file instead of downloading it twice;
- an upload's intent is committed before APPEND, and recovery looks for the message on the
  server (Message-ID) before anything appends it again; content pairing covers the rest;
- flag changes and deletions are idempotent: after a crash both sides agree and the planner
  only records it;
- folder cursors (UIDNEXT, HIGHESTMODSEQ) advance only after the whole folder succeeded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.flags import ALL_LETTERS, normalize
from syncd.core.folders import (
    files_match,
    folder_selected,
    folder_untouched,
    remote_unchanged,
    server_delimiter,
    server_untouched,
)
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    RemoteMessage,
    SyncedMessage,
)
from syncd.errors import AccountError, FolderError
from syncd.faults import checkpoint
from syncd.imap.client import (
    UID_SET_CHUNK,
    FolderStatus,
    ImapSession,
    RemoteFolder,
    SelectChanges,
    SelectInfo,
    raise_refused,
    refusal_text,
)
from syncd.imap.folder_map import FolderMap
from syncd.imap.refusals import RefusedUploads, is_refusal
from syncd.outcome.results import AccountResult, FolderResult, NullReporter, Reporter
from syncd.store.maildir import LocalEntry, Maildir, MaildirFolder, crlf_to_lf, lf_to_crlf
from syncd.store.state import FolderState, StateStore

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.core import actions as A
else:
    A = None  # syncd.core.actions, imported by _import_planner()


def _mtimes(stamp: str | None) -> list[str] | None:
    """The directory mtimes of a MaildirFolder.stamp(), without the time it was taken."""
    return stamp.split()[:2] if stamp else None


def _import_planner() -> None:
    """The planner and its actions are imported when a folder first needs a plan: a sync with
    nothing to do (most of them) never plans, and starts ~15 ms sooner without them."""
    global A
    if A is None:
        from syncd.core import actions

        A = actions

log = logging.getLogger("syncd.imap.account")

# Group commit: how many downloaded messages share one directory fsync and one state commit.
DOWNLOAD_COMMIT_COUNT = 200
DOWNLOAD_COMMIT_BYTES = 2 * 1024 * 1024
# A folder missing at least this many messages locally gets its own connection (when the
# account allows more than one): first syncs of several big folders run side by side.
BULK_FOLDER_MESSAGES = 500
# A folder of at least this many messages with changes on either side is worth a connection of
# its own too when two or more are (an incremental sync): the per-folder round trips and local
# work (scan, plan, renames, fsyncs, commits) of several folders overlap. Smaller folders cost
# less than setting up a connection (TLS, LOGIN).
BUSY_FOLDER_MESSAGES = 200


class SyncOptions(NamedTuple):
    dry_run: bool = False
    force_deletions: bool = False
    # Only these folders (server names); None = every folder the config selects.
    only_folders: frozenset[str] | None = None
    # Skip SELECT when STATUS and the local scan show nothing changed (cheap periodic checks).
    use_status_shortcut: bool = True


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
        try:
            for group in self._groups:
                if self._halt.is_set():
                    return
                self._put((True, list(self._session.fetch_bodies(
                    [(a.uid, a.size) for a in group]))))
        except BaseException as exc:  # handed to the writer, which raises it
            self._put((False, exc))

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

    def next_group(self) -> list[tuple[int, bytes, dt.datetime | None]]:
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


class AccountSync:
    """One full sync of one IMAP account. Owns nothing long-lived: the caller passes the state
    store (one per thread) and a connection factory."""

    def __init__(self, account: AccountSettings, state: StateStore,
                 connect: Callable[[], ImapSession], *, options: SyncOptions | None = None,
                 reporter: Reporter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.account = account
        self.state = state
        self.connect = connect
        self.options = options or SyncOptions()
        self.reporter = reporter or NullReporter()
        self.maildir = Maildir(account.maildir, account.layout)
        self.clock = clock
        self.session: ImapSession | None = None
        self._remote_folders: list[RemoteFolder] | None = None
        # Every folder of the last LIST, selected or not (a local folder that is the place of
        # an excluded server folder is not new), and where each lives locally.
        self._listed: list[RemoteFolder] = []
        self._map: FolderMap | None = None
        # Folders this run moved messages into (trash_folder): their STATUS, taken before the
        # move, must not let the status shortcut skip them.
        self._moved_into: set[str] = set()
        # Checked between folders and download groups: the daemon's SIGTERM finishes the
        # current batch, not the whole sync.
        self.should_stop: Callable[[], bool] = lambda: False
        self._in_folder: str | None = None  # the folder being synced (for error messages)
        self._unchanged_folders: list[FolderState] = []
        # Folder id -> the letters its server keeps (SELECT's PERMANENTFLAGS, less what it
        # refused or dropped before): the rest stay local-only (see syncd/imap/writes.py).
        self._storable: dict[int, str] = {}
        self._candidate_digests: dict[str, str] = {}  # local key -> content digest

    # --- the whole account ----------------------------------------------------------------
    def run(self, only_folders: frozenset[str] | None = None, *,
            keep_open: bool = False) -> AccountResult:
        """Sync every selected folder (or only `only_folders`). With keep_open the connection
        stays up for the next run (the daemon); a broken one is dropped and made anew."""
        started = time.monotonic()
        result = AccountResult(self.account.name)
        self._in_folder = None
        only = only_folders if only_folders is not None else self.options.only_folders
        try:
            if self.session is None:
                self.session = self.connect()
            try:
                for folder_result in self._sync_folders(only):
                    result.folders.append(folder_result)
            finally:
                self._record_unchanged()
        except AccountError as exc:
            result.error = str(exc).removeprefix(f"{self.account.name}: ")
            result.error_cause = exc.cause
            self.close()
        except (OSError, EOFError) as exc:
            result.error = f"connection lost{self._during()}: {exc}"
            self.close()
        except Exception as exc:
            from imapclient.exceptions import IMAPClientError

            self.close()
            if not isinstance(exc, IMAPClientError):
                raise
            result.error = f"server error{self._during()}: {exc}"
        except BaseException:
            self.close()
            raise
        finally:
            if not keep_open:
                self.close()
            result.seconds = time.monotonic() - started
        return result

    def _record_unchanged(self) -> None:
        """last_sync of the folders the status shortcut found unchanged, in one commit."""
        folders, self._unchanged_folders = self._unchanged_folders, []
        if folders:
            self.state.set_last_sync([f.id for f in folders], self.clock())

    def _during(self) -> str:
        # Errors that end the whole account still name the folder they happened in.
        return f" (in folder {self._in_folder!r})" if self._in_folder else ""

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            self._remote_folders = None

    def _list_remote(self, refresh: bool) -> list[RemoteFolder]:
        if refresh or self._remote_folders is None:
            account = self.account
            session = self._session()
            self._listed = session.list_folders()
            namespace = session.personal_namespace()  # came with the LIST
            self._remote_folders = [
                f for f in self._listed
                if folder_selected(f.name, account.folders.include, account.folders.exclude,
                                   namespace=namespace)]
        return list(self._remote_folders)

    def _folder_map(self) -> FolderMap:
        if self._map is None:
            self._map = FolderMap(self.maildir, self._session().personal_namespace(),
                                  {f.remote_name: f.local_path for f in self.state.folders()})
        return self._map

    def _sync_folders(self, only: frozenset[str] | None) -> Iterable[FolderResult]:
        session = self._session()
        account = self.account
        # A targeted sync (an IDLE or filesystem event in the daemon) reuses the folder list
        # of the last full one: one round trip less on the path that must stay under a second.
        remote = self._list_remote(refresh=only is None)
        by_name = {f.name: f for f in remote}
        if only is not None and not set(only) <= set(by_name):
            remote = self._list_remote(refresh=True)
            by_name = {f.name: f for f in remote}
        delimiter = server_delimiter(remote)
        # Places as the state records them now (a new run may follow another's creations).
        self._map = None
        folder_map = self._folder_map()

        results: list[FolderResult] = []
        if not self.options.dry_run:
            self.maildir.ensure_root()
        # Local folders the server does not have: create them there (never delete a folder).
        local_only = [] if only is not None else folder_map.local_only(
            self._listed or remote, self.maildir.list_folders(), account.folders.include,
            account.folders.exclude)
        for name, components in local_only:
            if folder_map.known(name):
                # Synced before and now gone from the server: someone deleted it there.
                results.append(FolderResult(
                    name, error="deleted on the server; the local copy is kept (remove it "
                    "locally, or recreate it on the server)"))
                continue
            if self.options.dry_run:
                results.append(FolderResult(name, created_remote=True,
                                            plan_lines=[f"create folder {name!r} on server"]))
                continue
            try:
                session.create_folder(name)
            except FolderError as exc:
                # Refused (an invalid name, no permission): this folder's error, reported by
                # its name and tried again next sync; every other folder still syncs.
                path = self.maildir.local_path(components)
                log.warning("%s (local folder %s)", exc, path)  # exc names account/folder
                results.append(FolderResult(name, error=f"{exc.args[0].split(': ', 1)[-1]} "
                                            f"(local folder {path})"))
                continue
            # The state pairs the new server folder with this local folder at once: whatever
            # the server's name would map back to, this is its place (see FolderMap).
            path = self.maildir.local_path(components)
            self.state.ensure_folder(name, str(path))
            folder_map.record(name, path)
            created = RemoteFolder(name=name, delimiter=folder_map.namespace.delimiter
                                   or delimiter, noselect=False, special_use=None)
            remote.append(created)
            by_name[name] = created
            if self._remote_folders is not None:
                self._remote_folders.append(created)
            log.info("%s: created folder %r on the server", account.name, name)
            results.append(FolderResult(name, created_remote=True))

        selectable = [f for f in remote if not f.noselect]
        if only is not None:
            selectable = [f for f in selectable if f.name in only]
        # The trash folder last, so that what this run moves there is synced down in the same
        # run; otherwise the next sync, right after this one, would still download it (not
        # idempotent; crash tests, "trash" scenario).
        selectable.sort(key=lambda f: f.name == account.trash_folder)
        # Two server folders must never share one local folder: each would take the other's
        # messages for new local mail and upload them (a server listing both "INBOX" and
        # "Inbox", which both mean INBOX; fault suite, hostile folder names). The exact
        # "INBOX" keeps it, then folders whose place the state records; the other is reported
        # and left alone.
        claimed: dict[str, str] = {}
        for folder in sorted(selectable, key=lambda f: (f.name != "INBOX",
                                                        not folder_map.known(f.name))):
            path = str(folder_map.local_path(folder))
            if path in claimed:
                results.append(FolderResult(
                    folder.name, error=f"maps to the same local folder as {claimed[path]!r} "
                    f"({path}); not synced"))
            else:
                claimed[path] = folder.name
        self._moved_into = set()
        statuses = session.status_all([f.name for f in selectable])
        merged: dict[str, FolderResult] = {r.folder: r for r in results}
        # Not a folder already refused above (one that maps onto another's local folder).
        bulk = [f for f in self._bulk_folders(selectable, statuses)
                if f.name not in merged or merged[f.name].error is None]
        if len(bulk) >= 2:
            self._sync_in_parallel(bulk, statuses, merged)
            selectable = [f for f in selectable if f not in bulk]
        for folder in selectable:
            if self.should_stop():
                break
            folder_result = merged.get(folder.name) or FolderResult(folder.name)
            if folder_result.error:
                continue
            status = None if folder.name in self._moved_into else statuses.get(folder.name)
            self._sync_guarded(folder, status, folder_result)
            merged.setdefault(folder.name, folder_result)
        # \Noselect parents are directories only: make sure they exist locally for navigation.
        return list(merged.values())

    def _sync_guarded(self, folder: RemoteFolder, status: FolderStatus | None,
                      folder_result: FolderResult) -> None:
        """sync_folder, with the errors that concern only this folder recorded in its result;
        those that concern the whole account (a dead connection, a bug) propagate."""
        try:
            self._in_folder = folder.name
            self.sync_folder(folder, status, folder_result)
            self._in_folder = None
        except FolderError as exc:
            folder_result.error = str(exc).split(": ", 1)[-1]
        except OSError as exc:
            # A local problem (disk full, permissions) stops this folder only; a dead
            # connection stops the account.
            if isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError):
                raise
            folder_result.error = f"local error: {exc}"
        except Exception as exc:
            from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

            if isinstance(exc, IMAPClientAbortError) or not isinstance(exc,
                                                                      IMAPClientError):
                raise
            folder_result.error = f"server refused: {exc}"

    def _bulk_folders(self, selectable: list[RemoteFolder],
                      statuses: dict[str, FolderStatus]) -> list[RemoteFolder]:
        """Folders with so much to do that they are worth their own connection: first syncs
        (biggest first), then big folders with changes; none in a dry run or with
        `connections: 1`. Run side by side only when there are two or more."""
        if self.options.dry_run or self.account.connections < 2:
            return []
        known = {f.remote_name: f for f in self.state.folders()}
        sizes: list[tuple[int, RemoteFolder]] = []
        changed: list[tuple[int, RemoteFolder]] = []
        for folder in selectable:
            status = statuses.get(folder.name)
            if folder.name == self.account.trash_folder or status is None:
                continue  # the trash folder is synced last (it receives moves)
            fstate = known.get(folder.name)
            have = self.state.message_count(fstate.id) if fstate is not None else 0
            missing = (status.messages or 0) - have
            if missing >= BULK_FOLDER_MESSAGES:
                sizes.append((missing, folder))
            elif (fstate is not None and (status.messages or 0) >= BUSY_FOLDER_MESSAGES
                  and self._changed(fstate, folder, status)):
                # An incremental sync of a big folder: its round trips, scan, plan, renames
                # and commits overlap with another folder's. Ranked after every first sync.
                changed.append(((status.messages or 0), folder))
        sizes.sort(key=lambda item: -item[0])
        changed.sort(key=lambda item: -item[0])
        return [folder for _, folder in sizes + changed]

    def _changed(self, fstate: FolderState, folder: RemoteFolder, status: FolderStatus) -> bool:
        """Something to do in this folder, as far as STATUS and two stats can tell."""
        if not remote_unchanged(fstate, status, condstore=self._session().condstore):
            return True
        local = self._folder_map().local_folder(folder)
        return not local.unchanged_since(fstate.local_stamp)

    def _sync_in_parallel(self, bulk: list[RemoteFolder], statuses: dict[str, FolderStatus],
                          merged: dict[str, FolderResult]) -> None:
        """Big initial syncs: up to `connections` folders at once, each extra worker with its
        own connection and its own state connection (SQLite serialises the commits)."""
        from syncd.store.state import StateStore

        todo: queue.Queue[RemoteFolder] = queue.Queue()
        for folder in bulk:
            merged[folder.name] = FolderResult(folder.name)
            todo.put(folder)
        # (the folder an extra connection was syncing when it failed, or None, the error)
        failures: list[tuple[str | None, BaseException]] = []

        def drain(worker: AccountSync, current: list[str | None]) -> None:
            while not self.should_stop():
                try:
                    folder = todo.get_nowait()
                except queue.Empty:
                    return
                current[0] = folder.name
                worker._sync_guarded(folder, statuses.get(folder.name), merged[folder.name])
                current[0] = None

        def extra() -> None:
            state = StateStore(self.state.path)
            worker = AccountSync(self.account, state, self.connect, options=self.options,
                                 reporter=self.reporter, clock=self.clock)
            worker.should_stop = self.should_stop
            worker._moved_into = self._moved_into  # its moves into the trash count too
            worker._map = self._map  # the same places (a read-only mapping by now)
            current: list[str | None] = [None]
            try:
                worker.session = self.connect()
                drain(worker, current)
                worker._record_unchanged()
            except BaseException as exc:  # the main thread reports it
                failures.append((current[0], exc))
            finally:
                worker.close()
                state.close()

        threads = [threading.Thread(target=extra, name=f"sync-{self.account.name}-{n}",
                                    daemon=True)
                   for n in range(min(self.account.connections, len(bulk)) - 1)]
        for thread in threads:
            thread.start()
        try:
            drain(self, [None])
        finally:
            for thread in threads:
                thread.join()
        # Each failure belongs to the folder it happened in (issue 16: the first one was
        # given to every folder without changes, and the failed folder, if it had changed
        # anything, looked complete). The folders the failed connection never took were
        # synced by the others; one that failed before taking any is only logged.
        for folder_name, exc in failures:
            if folder_name is None:
                log.info("%s: an extra connection failed: %s", self.account.name, exc)
                continue
            result = merged[folder_name]
            if result.error is None:
                result.error = (f"interrupted: {exc}" if result.changed
                                else f"not synced: {exc}")

    def _session(self) -> ImapSession:
        assert self.session is not None
        return self.session

    # --- one folder -----------------------------------------------------------------------
    def sync_folder(self, folder: RemoteFolder, status: FolderStatus | None,
                    result: FolderResult) -> FolderResult:
        session = self._session()
        name = folder.name
        local_folder = self._folder_map().local_folder(folder)
        fstate = self.state.folder(name)
        dry = self.options.dry_run
        if fstate is None and not dry:
            fstate = self.state.ensure_folder(name, str(local_folder.path))
        if fstate is not None and not dry:
            self.recover(fstate, local_folder)

        # Nothing changed on either side: STATUS equals the cursors and the Maildir
        # directories are as the last sync left them. Two stats and no per-message work, so a
        # no-change sync costs the same for 100 messages or 100,000.
        if (self.options.use_status_shortcut and fstate is not None and status is not None
                and not self.options.force_deletions
                and folder_untouched(
                    fstate, status, condstore=session.condstore,
                    synced_count=lambda: self.state.message_count(fstate.id),
                    local_unchanged=lambda: local_folder.unchanged_since(fstate.local_stamp))):
            if not dry:
                # Only last_sync changes: recorded with the other unchanged folders' in one
                # commit (one fsync) at the end of the run.
                self._unchanged_folders.append(fstate)
            return result

        synced = self.state.messages(fstate.id) if fstate is not None else []
        missing = not local_folder.exists()
        local_folder_missing = missing and bool(synced)
        if missing and not dry:
            local_folder.create()
            result.created_local = not synced
        # The stamp describes the scan, so it is taken before it: a mail reader's change made
        # while this sync runs then moves an mtime past it, and the next sync looks (issue 16).
        scanned_stamp = None if dry else local_folder.stamp()
        entries = {} if missing else local_folder.scan()
        synced_by_key = {m.key: m for m in synced}

        if (self.options.use_status_shortcut and fstate is not None and status is not None
                and not local_folder_missing
                and self._unchanged(fstate, status, synced, entries, session)):
            if not dry:
                stamp = scanned_stamp
                with self.state.transaction():  # one commit for both
                    self.state.set_cursors(fstate.id, uidvalidity=fstate.uidvalidity,
                                           uidnext=fstate.uidnext,
                                           highestmodseq=fstate.highestmodseq,
                                           last_sync=self.clock())
                    self.state.set_local_stamp(fstate.id, stamp)
            return result

        prefetched: SelectChanges | None = None
        if (fstate is not None and fstate.highestmodseq is not None and fstate.uidnext
                and session.condstore and status is not None
                and status.uidvalidity == fstate.uidvalidity):
            # The incremental case: what changed comes with the SELECT in one round trip.
            # STATUS (just taken) vouches for the UIDVALIDITY, so the old cursors apply.
            # The new UIDs' meta rides along unless STATUS announces more new messages than
            # one fetch_meta chunk: that reply would not be bounded.
            many = (status.uidnext or 0) - fstate.uidnext > UID_SET_CHUNK
            info, prefetched = session.select_with_changes(
                name, fstate.highestmodseq, None if many else fstate.uidnext)
        else:
            info = session.select(name)
        uidvalidity_changed = (fstate is not None and fstate.uidvalidity is not None
                               and fstate.uidvalidity != info.uidvalidity)
        # Message-IDs only serve pairing local files the state does not know with server
        # messages; an initial sync into an empty Maildir has none, and skips a header fetch.
        unpaired_local = uidvalidity_changed or any(k not in synced_by_key for k in entries)
        remote = self._remote_view(fstate, info, synced, uidvalidity_changed,
                                   None if uidvalidity_changed else prefetched,
                                   message_ids=unpaired_local)
        # After a UIDVALIDITY change every file is re-paired, so every file needs its identity.
        local = self._local_view(local_folder, entries,
                                 {} if uidvalidity_changed else synced_by_key)
        _import_planner()
        from syncd.core.plan import plan_folder

        storable = info.storable
        pending: frozenset[int] = frozenset()
        if fstate is not None:
            storable = normalize(set(storable) - set(self.state.unkept_flags(fstate.id)))
            self._storable[fstate.id] = storable
            pending = self.state.pending_expunges(fstate.id)
        policy = FolderPolicy(trash_folder=self.account.trash_folder,
                              force_deletions=self.options.force_deletions,
                              local_folder_missing=local_folder_missing,
                              guard_held=fstate is not None and fstate.guard_held,
                              storable=storable)
        snapshot = FolderSnapshot(synced=tuple(synced), local=tuple(local),
                                  remote=tuple(remote.values()),
                                  uidvalidity_changed=uidvalidity_changed, policy=policy,
                                  pending_expunge=pending)
        plan = plan_folder(self._with_digests(snapshot, local_folder))
        # With the local folder missing, the plan's "guard" only says that its messages are
        # downloaded again: a warning, not a refusal that fails the run.
        if local_folder_missing:
            result.notice = plan.guard
        else:
            result.guard = plan.guard
        if plan.guard:
            log.warning("%s/%s: %s", self.account.name, name, plan.guard)
        if dry:
            from syncd.core.plan import describe

            result.plan_lines = describe(plan)
            return result
        assert fstate is not None
        held = plan.guard is not None and not local_folder_missing
        if held != fstate.guard_held:
            self.state.set_guard_held(fstate.id, held)
        if uidvalidity_changed:
            log.warning("%s/%s: UIDVALIDITY changed (%s -> %s); re-pairing by content",
                        self.account.name, name, fstate.uidvalidity, info.uidvalidity)
        # reset: the old UIDs are void; their rows go in the same commit as the re-pairings
        # (see execute).
        # Past planning only pairings look the server's view up again; the rest is in the
        # plan. Dropping the view keeps a big initial sync to one record per message.
        paired_remote = {a.uid: remote[a.uid] for a in plan.actions
                         if isinstance(a, A.Pair) and a.uid in remote}
        del remote
        self.execute(plan, fstate, local_folder, paired_remote, {m.key: m.flags for m in local},
                     result, reset=uidvalidity_changed)
        if self.should_stop():
            return result  # interrupted between batches: the cursors must not claim completion
        # No stamp after a refused upload: the next sync must look at the files again and
        # retry it, not find the folder unchanged.
        stamp = (self._stamp_after_execute(local_folder, scanned_stamp, fstate.id)
                 if result.error is None else None)
        with self.state.transaction():  # one commit for both
            self.state.set_cursors(fstate.id, uidvalidity=info.uidvalidity,
                                   uidnext=info.uidnext, highestmodseq=info.highestmodseq,
                                   last_sync=self.clock())
            self.state.set_local_stamp(fstate.id, stamp)
        checkpoint("folder.cursors")
        return result

    def _stamp_after_execute(self, folder: MaildirFolder, scanned: str | None,
                             fid: int) -> str | None:
        """The stamp to record once the plan is executed. The one taken before the scan holds
        if the directories have not changed since. If they have (this sync's own renames,
        deliveries and removals, or a mail reader's), one more look tells which: the files
        exactly the synced ones means nothing is left to do, and a stamp taken before that
        look holds; otherwise the stamp from before the scan makes the next sync look.
        Either way syncd's own changes cost at most one scan more, never one per sync."""
        if _mtimes(folder.stamp()) == _mtimes(scanned):
            return scanned
        again = folder.stamp()
        if files_match(self.state.messages(fid), folder.scan()):
            return again
        return scanned

    def _unchanged(self, fstate: FolderState, status: FolderStatus,
                   synced: list[SyncedMessage], entries: dict[str, LocalEntry],
                   session: ImapSession) -> bool:
        """True when neither side can have changed since the last completed sync: the server's
        STATUS matches the cursors (HIGHESTMODSEQ covers flag changes; without CONDSTORE we
        cannot know, so never), and the Maildir holds exactly the synced files and flags."""
        return (server_untouched(fstate, status, condstore=session.condstore,
                                 synced_count=lambda: len(synced))
                and files_match(synced, entries))

    def _remote_view(self, fstate: FolderState | None, info: SelectInfo,
                     synced: list[SyncedMessage], uidvalidity_changed: bool,
                     prefetched: SelectChanges | None = None, *,
                     message_ids: bool = True) -> dict[int, RemoteMessage]:
        """Every message on the server with its flags; size and Message-ID for UIDs the state
        does not know. With CONDSTORE only what changed since the last sync is fetched
        (or taken from ``prefetched``, asked for together with the SELECT)."""
        session = self._session()
        view: dict[int, RemoteMessage]
        incremental = (not uidvalidity_changed and fstate is not None
                       and fstate.highestmodseq is not None and info.highestmodseq is not None
                       and session.condstore)
        if incremental and info.highestmodseq == fstate.highestmodseq \
                and info.uidnext == fstate.uidnext and info.exists == len(synced):
            view = {m.uid: RemoteMessage(m.uid, m.flags) for m in synced}
        elif incremental:
            assert fstate is not None and fstate.highestmodseq is not None
            changes = prefetched.changes if prefetched is not None \
                and prefetched.changes is not None \
                else session.fetch_flags(changedsince=fstate.highestmodseq)
            view = {m.uid: RemoteMessage(m.uid, m.flags) for m in synced
                    if m.uid not in changes.vanished}
            for uid, flags in changes.flags.items():
                view[uid] = RemoteMessage(uid, flags)
            if len(view) != info.exists:
                # Expunges we were not told about (no QRESYNC) or a server that skipped some:
                # the UID list settles it in one round trip.
                present = session.search_all_uids() if info.exists else set()
                view = {uid: msg for uid, msg in view.items() if uid in present}
                known = set(view)
                missing = present - known
                if missing:
                    full = session.fetch_flags()
                    for uid in missing:
                        if uid in full.flags:
                            view[uid] = RemoteMessage(uid, full.flags[uid])
        else:
            full = session.fetch_flags() if info.exists else None
            view = {uid: RemoteMessage(uid, flags)
                    for uid, flags in (full.flags.items() if full else ())}

        known_uids = set() if uidvalidity_changed else {m.uid for m in synced}
        new_uids = [uid for uid in view if uid not in known_uids]
        if new_uids:
            early = prefetched.meta if prefetched is not None and prefetched.meta else {}
            meta = {uid: early[uid] for uid in new_uids if uid in early}
            rest = [uid for uid in new_uids if uid not in meta]
            if rest:
                meta.update(session.fetch_meta(rest, message_ids=message_ids))
            for uid in new_uids:
                if uid in meta:
                    found = meta[uid]
                    view[uid] = RemoteMessage(uid, view[uid].flags, found.size,
                                              found.message_id, found.trace_bytes)
                else:
                    del view[uid]  # expunged between the two fetches
        return view

    def _local_view(self, folder: MaildirFolder, entries: dict[str, LocalEntry],
                    synced_by_key: dict[str, SyncedMessage]) -> list[LocalMessage]:
        local = []
        for key, entry in entries.items():
            if key in synced_by_key:
                local.append(LocalMessage(key, entry.flags))
                continue
            try:
                info = folder.header_info(key)
            except FileNotFoundError:
                continue  # removed while we looked (mutt, another tool)
            local.append(LocalMessage(key, entry.flags, info.size, info.message_id,
                                      info.trace_bytes))
        return local

    def _with_digests(self, snapshot: FolderSnapshot, folder: MaildirFolder
                      ) -> FolderSnapshot:
        """The snapshot with the body digests the planner needs to pair copies whose sizes
        disagree under one Message-ID (a server storing LF, adding headers, or reporting
        inexact sizes) or whose Message-ID several messages carry: BODY[TEXT] of just those
        server messages, and those local files. Nothing is read in the common cases."""
        from syncd.core.message import body_digest, body_start
        from syncd.core.plan import digests_needed

        wanted = digests_needed(snapshot)
        if not wanted:
            return snapshot
        uids = set(wanted.uids)
        sizes = [(m.uid, m.size) for m in snapshot.remote if m.uid in uids]
        remote_digests = {uid: body_digest(text)
                          for uid, text in self._session().fetch_texts(sizes)}
        local_digests: dict[str, str] = {}
        for key in wanted.keys:
            try:
                data = folder.read(key)
            except FileNotFoundError:
                continue  # gone meanwhile: not paired; its Upload finds it gone
            local_digests[key] = body_digest(data[body_start(data):])
        log.debug("%s: digested %d server and %d local bodies to pair them",
                  self.account.name, len(remote_digests), len(local_digests))
        return snapshot._replace(
            remote=tuple(m._replace(body_digest=remote_digests[m.uid])
                         if m.uid in remote_digests else m for m in snapshot.remote),
            local=tuple(m._replace(body_digest=local_digests[m.key])
                        if m.key in local_digests else m for m in snapshot.local))

    # --- executing a plan -----------------------------------------------------------------
    def execute(self, plan: A.FolderPlan, fstate: FolderState, folder: MaildirFolder,
                paired_remote: dict[int, RemoteMessage], local_flags: dict[str, str],
                result: FolderResult, *, reset: bool = False) -> None:
        """``paired_remote``: the server's view of the messages the plan pairs."""
        session = self._session()
        state = self.state
        fid = fstate.id
        by_kind: dict[type, list] = defaultdict(list)
        for action in plan.actions:
            by_kind[type(action)].append(action)

        # State-only actions first: they move no data and make later steps' rows consistent.
        with state.transaction():
            if reset:
                # UIDVALIDITY changed: drop every old row (and the cursors) in the same commit
                # that records the re-pairings, so the new UIDs never collide with stale ones.
                # Resetting in a commit of its own lost the old synced flags when a crash came
                # before this one: the re-pairing then fell back to the union of both sides and
                # undid flags removed on one side (crash tests, "uidvalidity" scenario).
                state.reset_folder(fid)
            state.delete_messages(fid, (a.uid for a in by_kind[A.Forget]))
            for action in by_kind[A.Pair]:
                seen = paired_remote.get(action.uid)
                state.put_message(fid, SyncedMessage(action.uid, action.key, action.flags,
                                                     seen.size if seen else None,
                                                     seen.message_id if seen else None))
            state.set_synced_flags_many(fid, ((a.uid, a.flags) for a in by_kind[A.RecordFlags]))
        checkpoint("state-only.commit")
        result.paired += len(by_kind[A.Pair])

        # Local side first: flag renames (one commit), then files the server expunged.
        pushes = self._set_local_flags(by_kind[A.SetLocalFlags], by_kind[A.PushFlags], fid,
                                       folder, result, local_flags)

        # Server expunged: remove local files.
        deletes = by_kind[A.DeleteLocal]
        if deletes:
            for action in deletes:
                folder.remove(action.key)
                checkpoint("delete-local.remove")
            folder.sync()
            state.delete_messages(fid, (a.uid for a in deletes))
            checkpoint("delete-local.commit")
            result.deleted_local += len(deletes)

        # Local deletions: expunge (or move to trash) on the server.
        remote_deletes = by_kind[A.DeleteRemote]
        if remote_deletes:
            # Look again before deleting anything on the server: a file a MUA renamed while
            # the scan read the directory (new/ -> cur/, or a flag rename inside cur/) can be
            # missing from that scan without being gone; it was expunged and then uploaded
            # again without its server flags (fault suite, concurrent local changes). One
            # fresh scan; what is really gone is still gone.
            present = folder.scan()
            remote_deletes = [a for a in remote_deletes if a.key not in present]
        to_expunge: list[int] = []
        if remote_deletes:
            to_trash = [a.uid for a in remote_deletes if a.trash_folder]
            to_expunge = [a.uid for a in remote_deletes if not a.trash_folder]
            if to_trash:
                trash = remote_deletes[0].trash_folder
                assert trash is not None
                if trash == fstate.remote_name:
                    to_expunge += to_trash  # deleting inside the trash itself
                else:
                    self._moved_into.add(trash)
                    if not session.move(to_trash, trash):
                        # Only copied (no MOVE): the expunge is left, and must never copy
                        # them again should it be deferred (see _push_remote).
                        state.mark_expunge_pending(fid, to_trash)
                        to_expunge += to_trash
                    checkpoint("delete-remote.move")
        # Server side: every STORE and the EXPUNGE in one round trip, then one commit.
        self._push_remote(pushes, to_expunge, remote_deletes, fid, result)

        paired_keys: set[str] = set()
        downloads = by_kind[A.Download]
        if downloads:
            self._download(downloads, fstate, folder, result, paired_keys, local_flags)

        uploads = [a for a in by_kind[A.Upload]
                   if not (a.unless_paired and a.key in paired_keys)]
        if uploads:
            self._upload(uploads, fstate, folder, result)

    def _apply_flags(self, actions: list[A.Action], fid: int, folder: MaildirFolder,
                     result: FolderResult, local_flags: dict[str, str] | None = None) -> None:
        """SetLocalFlags (renames, one commit), then PushFlags (STOREs, one commit), then
        RecordFlags; a uid's SetLocalFlags before its PushFlags, as the plan requires."""
        by_kind: dict[type, list] = defaultdict(list)
        for action in actions:
            by_kind[type(action)].append(action)
        pushes = self._set_local_flags(by_kind[A.SetLocalFlags], by_kind[A.PushFlags], fid,
                                       folder, result, local_flags)
        self._push_remote(pushes, [], [], fid, result)
        if by_kind[A.RecordFlags]:
            self.state.set_synced_flags_many(
                fid, ((a.uid, a.flags) for a in by_kind[A.RecordFlags]))

    def _set_local_flags(self, local: list[A.SetLocalFlags], pushes: list[A.PushFlags],
                         fid: int, folder: MaildirFolder, result: FolderResult,
                         local_flags: dict[str, str] | None) -> list[A.PushFlags]:
        """The renames (then one commit); returns the pushes still to make: not for a message
        whose local file changed under us, as the push would record a target that misses the
        local change, and the next merge would then revert the server's."""
        state = self.state
        renamed = []
        changed_meanwhile: set[int] = set()
        for action in local:
            try:
                # expect: the flags the plan saw. A MUA that renamed the file since must not
                # have its change overwritten (fault suite, concurrent local changes).
                if not folder.set_flags(action.key, action.flags,
                                        expect=(local_flags or {}).get(action.key)):
                    changed_meanwhile.add(action.uid)  # left for the next sync to merge
                    continue
            except FileNotFoundError:
                continue  # deleted meanwhile; the next sync sees the deletion
            renamed.append(action)
            checkpoint("local-flags.rename")
        if renamed:
            folder.sync()
            # synced_flags, not flags: with a PushFlags still to come it is the server's present
            # flags, so a crash before the push still pushes the target on the next sync
            # instead of reverting this rename (crash tests, mixed-04).
            state.set_synced_flags_many(fid, ((a.uid, a.synced_flags) for a in renamed))
            checkpoint("local-flags.commit")
        result.local_flag_changes += len(renamed)
        return [a for a in pushes if a.uid not in changed_meanwhile]

    def _push_remote(self, pushes: list[A.PushFlags], to_expunge: list[int],
                     deletes: list[A.DeleteRemote], fid: int, result: FolderResult) -> None:
        """Server flag changes (grouped so equal changes share one STORE) and the expunge of
        local deletions, pipelined: one round trip for all, then one commit of what the server
        accepted. Safe in any order and after a crash anywhere: a STORE or an EXPUNGE is
        idempotent, and until the commit the next sync sees both sides agree and only
        records it. ``deletes`` are the DeleteRemote actions (moved ones included) whose rows
        go once the expunge of ``to_expunge`` succeeded."""
        if not pushes and not deletes:
            return
        from syncd.imap.writes import write_changes

        outcome = write_changes(self._session(), pushes, to_expunge,
                                self._storable.get(fid, ALL_LETTERS))
        gone = set(to_expunge)
        deleted = [a for a in deletes
                   if a.uid in outcome.expunge.expunged or a.uid not in gone]
        with self.state.transaction():
            self.state.set_synced_flags_many(fid, ((a.uid, a.flags) for a in outcome.pushed))
            self.state.delete_messages(fid, (a.uid for a in deleted))
            # Marked \Deleted, not expunged (no UIDPLUS; others marked too): the rows stay,
            # so nothing is downloaded again, and the next sync retries the expunge.
            self.state.mark_expunge_pending(fid, outcome.expunge.deferred)
            if outcome.unkept:
                self.state.add_unkept_flags(fid, outcome.unkept)
        checkpoint("remote-changes.commit")
        result.remote_flag_changes += len(outcome.pushed)
        result.deleted_remote += len(deleted)
        raise_refused(outcome.refused)  # what the server refused is a folder error, as before

    def _download(self, downloads: list[A.Download], fstate: FolderState,
                  folder: MaildirFolder, result: FolderResult, paired_keys: set[str],
                  local_flags: dict[str, str]) -> None:
        session = self._session()
        fid = fstate.id
        self._candidate_digests = {}  # see _content_match; keys are this folder's
        total_bytes = sum(a.size or 0 for a in downloads)
        self.reporter.folder_started(self.account.name, fstate.remote_name, len(downloads),
                                     total_bytes)
        paired_flags: list[A.Action] = []
        groups: list[list[A.Download]] = [[]]
        group_bytes = 0
        for action in downloads:
            if groups[-1] and (len(groups[-1]) >= DOWNLOAD_COMMIT_COUNT
                               or group_bytes >= DOWNLOAD_COMMIT_BYTES):
                groups.append([])
                group_bytes = 0
            groups[-1].append(action)
            group_bytes += action.size or 0
        # The next group's bodies come over the network while this one is written and
        # flushed. Fetching stores nothing, so it may run ahead of the group's intents.
        prefetch = BodyPrefetcher(session, groups)
        try:
            for group in groups:
                if self.should_stop():
                    break
                self._download_group(group, prefetch.next_group(), fid, folder, result,
                                     paired_keys, local_flags, paired_flags)
        finally:
            prefetch.close()
        if paired_flags:
            self._apply_flags(paired_flags, fid, folder, result, local_flags)

    def _download_group(self, group: list[A.Download],
                        bodies: list[tuple[int, bytes, dt.datetime | None]], fid: int,
                        folder: MaildirFolder, result: FolderResult, paired_keys: set[str],
                        local_flags: dict[str, str], paired_flags: list[A.Action]) -> None:
        """One group commit: intents (one commit) -> stage each body in tmp/ -> one flush ->
        links -> directory fsync -> rows and cleared intents (one commit)."""
        state = self.state
        keys = {a.uid: folder.new_key() for a in group}
        intent_ids = state.add_intents(
            fid, "download", [(a.uid, keys[a.uid], a.flags, None) for a in group])
        checkpoint("download.intents")
        by_uid = {a.uid: a for a in group}
        rows: list[SyncedMessage] = []
        staged = []
        try:
            for uid, raw, internaldate in bodies:
                action = by_uid[uid]
                data = crlf_to_lf(raw)
                candidate = self._content_match(folder, action, data, paired_keys)
                if candidate is not None:
                    # Same content already here under another name (a crash between APPEND
                    # and its record, or a state rebuilt from scratch): pair, do not
                    # duplicate. As a planned Pair (see A.Download): record the merge base
                    # now, bring both sides to the union of their flags once the downloads
                    # are done. Recording the local flags instead left the sides apart and
                    # made the next merge drop a local-only flag (crash tests, "initial").
                    from syncd.core.plan import pair_actions

                    pair, *flag_actions = pair_actions(uid, candidate,
                                                       local_flags.get(candidate, ""),
                                                       action.flags, size=action.size)
                    assert isinstance(pair, A.Pair)
                    rows.append(SyncedMessage(uid, candidate, pair.flags, action.size,
                                              None))
                    paired_flags.extend(flag_actions)
                    paired_keys.add(candidate)
                    result.paired += 1
                    continue
                mtime = internaldate.timestamp() \
                    if isinstance(internaldate, dt.datetime) else None
                staged.append(folder.stage(data, action.flags, mtime=mtime, key=keys[uid]))
                rows.append(SyncedMessage(uid, keys[uid], action.flags, action.size))
                result.downloaded_bytes += len(raw)
                if "S" not in action.flags:
                    result.new_mail += 1
                self.reporter.advance(self.account.name, 1, len(raw))
        except BaseException:
            folder.discard(staged)  # never leave half a batch in tmp/
            raise
        # tmp files -> one flush for the whole group -> links -> directory fsync -> rows.
        folder.publish(staged)
        checkpoint("download.publish")
        result.downloaded += len(staged)
        folder.sync()
        with state.transaction():
            state.put_messages(fid, rows)
            state.clear_intents(intent_ids)
        checkpoint("download.commit")

    def _content_match(self, folder: MaildirFolder, action: A.Download, data: bytes,
                       paired_keys: set[str]) -> str | None:
        """The first candidate (a local file without Message-ID, like this message) with the
        same content digest: the same body and Date/From/To/Cc/Subject whatever the line ends
        and added headers (a POP3 server's X-UIDL, mbsync's X-TUID). Bytes would not do."""
        candidates = [key for key in action.pair_candidates if key not in paired_keys]
        if not candidates:
            return None
        from syncd.core.message import content_digest

        wanted = content_digest(data)
        for key in candidates:
            digest = self._candidate_digests.get(key)
            if digest is None:
                try:
                    digest = content_digest(folder.read(key))
                except FileNotFoundError:
                    continue
                # Every no-Message-ID download shares the candidates: read each file once.
                self._candidate_digests[key] = digest
            if digest == wanted:
                return key
        return None

    def _upload(self, uploads: list[A.Upload], fstate: FolderState, folder: MaildirFolder,
                result: FolderResult) -> None:
        from syncd.imap.writes import append_keeping, verify_appended

        session = self._session()
        state = self.state
        fid = fstate.id
        refused = RefusedUploads(self.account.name, fstate.remote_name)
        storable = self._storable.get(fid, ALL_LETTERS)
        unkept = ""
        appended: dict[int, str] = {}  # uid -> the flags given, read back at the end
        for n, action in enumerate(uploads):
            if refused.give_up:
                refused.not_tried = len(uploads) - n
                break
            try:
                path = folder.path_of(action.key)
                data = folder.read(action.key)
                mtime = os.stat(path).st_mtime
                message_id = folder.header_info(action.key).message_id
            except FileNotFoundError:
                continue  # deleted before we got to it
            [intent_id] = state.add_intents(fid, "upload",
                                            [(None, action.key, action.flags, message_id)])
            checkpoint("upload.intent")
            internaldate = dt.datetime.fromtimestamp(mtime, tz=dt.UTC)
            try:
                uid, dropped = append_keeping(session, fstate.remote_name, lf_to_crlf(data),
                                              action.flags, internaldate, storable)
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                # NO/BAD: nothing was stored. The intent goes, the file stays; the next
                # sync plans its upload again. The other messages still go up.
                state.clear_intents([intent_id])
                refused.add(action.key, data, refusal_text(exc))
                continue
            refused.accepted()
            unkept += dropped
            storable = normalize(set(storable) - set(dropped))
            checkpoint("upload.append")
            if uid is None and message_id:
                uid = self._find_uploaded(fid, fstate.remote_name, message_id)
            if uid is not None:
                appended[uid] = action.flags
            with state.transaction():
                if uid is not None:
                    state.put_message(fid, SyncedMessage(uid, action.key, action.flags,
                                                         None, message_id))
                state.clear_intents([intent_id])
            checkpoint("upload.commit")
            result.uploaded += 1
        # The recorded flags are the local ones; letters the server did not keep become
        # local-only for this folder, so the next sync neither reverts nor re-pushes them.
        unkept += verify_appended(session, appended, storable)
        if unkept:
            state.add_unkept_flags(fid, unkept)
        if refused:
            result.error = refused.error()

    def _find_uploaded(self, fid: int, folder: str, message_id: str) -> int | None:
        """The UID of a message we appended, on a server without UIDPLUS (the folder selected
        anew if the APPEND left it: ImapSession.append)."""
        session = self._session()
        if session.selected == folder:
            session.noop()
        else:
            session.select(folder)
        known = {m.uid for m in self.state.messages(fid)}
        candidates = [uid for uid in session.search_message_id(message_id) if uid not in known]
        return max(candidates) if candidates else None

    # --- recovery -------------------------------------------------------------------------
    def recover(self, fstate: FolderState, folder: MaildirFolder) -> None:
        """Finish or undo every open intent of this folder (left by a crash)."""
        intents = self.state.open_intents(fstate.id)
        if not intents:
            return
        fid = fstate.id
        rows: list[SyncedMessage] = []
        entries = folder.scan() if folder.exists() else {}
        known = self.state.messages(fid)
        known_keys = {m.key for m in known}
        known_uids = {m.uid for m in known}
        selected = False
        for intent in intents:
            key = intent.key
            if intent.op == "download" and key and "/" not in key and not key.startswith("."):
                # A kill while its group was staged (or between the link and the unlink of
                # the tmp name) leaves tmp/<key> behind. Nothing else writes that name and
                # nothing would ever remove it: each kill left up to a group's worth of
                # messages in tmp/ (crash tests, kill -9 during an initial sync).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder.path / "tmp" / key)
            if key is None or key in known_keys or key not in entries:
                continue
            if intent.op == "download" and intent.uid is not None:
                # Delivered, not recorded: record it; the planner reconciles flags.
                rows.append(SyncedMessage(intent.uid, key, normalize(intent.flags or "")))
            elif intent.op == "upload" and intent.extra:
                # APPEND may have reached the server before the crash: look for it there
                # before anything appends it again.
                if not selected:
                    self._session().select(fstate.remote_name)
                    selected = True
                found = [uid for uid in self._session().search_message_id(intent.extra)
                         if uid not in known_uids]
                if found:
                    uid = max(found)
                    rows.append(SyncedMessage(uid, key, normalize(intent.flags or ""),
                                              None, intent.extra))
                    known_uids.add(uid)
            known_keys.add(key)
        # Whatever is not settled here the planner settles: a file without a row is paired with
        # its server copy by Message-ID and size, or by content, never uploaded twice.
        with self.state.transaction():
            for row in rows:
                self.state.put_message(fid, row)
            self.state.clear_intents([i.id for i in intents])
        if rows:
            log.info("%s/%s: recovered %d interrupted transfers", self.account.name,
                     fstate.remote_name, len(rows))


__all__ = [
    "AccountResult",
    "AccountSync",
    "FolderResult",
    "NullReporter",
    "Reporter",
    "SyncOptions",
    "folder_selected",
]
