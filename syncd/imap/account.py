"""One IMAP account's sync: the folder list, which folders to sync (and which to create on the
server), their order, the big ones side by side on extra connections, and errors by blast
radius (a folder's stop that folder; a dead connection stops the account). Each folder's own
sync is syncd/imap/folder_sync.py: gather, plan, execute, record (docs/architecture.md).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.core.folders import (
    folder_selected,
    remote_unchanged,
    server_delimiter,
)
from syncd.errors import AccountError, FolderError
from syncd.imap.client import FolderStatus, ImapSession, RemoteFolder
from syncd.imap.folder_map import FolderMap
from syncd.imap.folder_sync import FolderSync, SyncOptions, folder_policy
from syncd.imap.record import record_untouched
from syncd.outcome.results import AccountResult, FolderResult, NullReporter, Reporter
from syncd.store.maildir import Maildir, MaildirFolder

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.store.state import FolderState, StateStore

log = logging.getLogger("syncd.imap.account")

# A folder missing at least this many messages locally gets its own connection (when the
# account allows more than one): first syncs of several big folders run side by side.
BULK_FOLDER_MESSAGES = 500
# A folder of at least this many messages with changes on either side is worth a connection of
# its own too when two or more are (an incremental sync): the per-folder round trips and local
# work (scan, plan, renames, fsyncs, commits) of several folders overlap. Smaller folders cost
# less than setting up a connection (TLS, LOGIN).
BUSY_FOLDER_MESSAGES = 200


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
        # Folders found untouched: their last_sync is recorded together at the end of the run.
        self._untouched: list[FolderState] = []

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
                result.folders.extend(self._sync_folders(only))
            finally:
                self._record_untouched()
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

    def _record_untouched(self) -> None:
        folders, self._untouched = self._untouched, []
        record_untouched(self.state, folders, self.clock())

    def _during(self) -> str:
        # Errors that end the whole account still name the folder they happened in.
        return f" (in folder {self._in_folder!r})" if self._in_folder else ""

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            self._remote_folders = None

    def _session(self) -> ImapSession:
        assert self.session is not None
        return self.session

    # --- which folders --------------------------------------------------------------------
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

    def _sync_folders(self, only: frozenset[str] | None) -> list[FolderResult]:
        # A targeted sync (an IDLE or filesystem event in the daemon) reuses the folder list
        # of the last full one: one round trip less on the path that must stay under a second.
        remote = self._list_remote(refresh=only is None)
        if only is not None and not set(only) <= {f.name for f in remote}:
            remote = self._list_remote(refresh=True)
        # Places as the state records them now (a new run may follow another's creations).
        self._map = None
        if not self.options.dry_run:
            self.maildir.ensure_root()
        results = [] if only is not None else self._create_local_only(remote)
        selectable = [f for f in remote if not f.noselect and self._exists_or_creatable(f)]
        if only is not None:
            selectable = [f for f in selectable if f.name in only]
        # The trash folder last, so that what this run moves there is synced down in the same
        # run; otherwise the next sync, right after this one, would still download it (not
        # idempotent; crash tests, "trash" scenario).
        selectable.sort(key=lambda f: f.name == self.account.trash_folder)
        results += self._shared_places(selectable)
        self._moved_into = set()
        statuses = self._session().status_all([f.name for f in selectable])
        merged: dict[str, FolderResult] = {r.folder: r for r in results}
        self._sync_selected(selectable, statuses, merged)
        return list(merged.values())

    def _create_local_only(self, remote: list[RemoteFolder]) -> list[FolderResult]:
        """Local folders the server does not have: create them there (never delete a folder).
        Each created one is added to ``remote`` (and the cached list) to be synced."""
        folder_map = self._folder_map()
        account = self.account
        delimiter = server_delimiter(remote)
        results: list[FolderResult] = []
        for name, components in folder_map.local_only(
                self._listed or remote, self.maildir.list_folders(), account.folders.include,
                account.folders.exclude):
            if not folder_map.known(name) and not self._creates(name, "server"):
                continue  # left alone, as create_folders/direction say: no error
            result = self._create_on_server(name, components)
            results.append(result)
            if not result.created_remote or result.plan_lines:
                continue  # refused, gone from the server, or a dry run
            created = RemoteFolder(name=name, delimiter=folder_map.namespace.delimiter
                                   or delimiter, noselect=False, special_use=None)
            remote.append(created)
            if self._remote_folders is not None:
                self._remote_folders.append(created)
        return results

    def _creates(self, name: str, side: str) -> bool:
        """Whether the sync policy lets a folder missing on ``side`` ("server" or "local") be
        created there (create_folders, and direction: pull never writes the server, push
        never the Maildir)."""
        keys = folder_policy(self.account, name, self._session().personal_namespace())
        blocked = "pull" if side == "server" else "push"
        return keys.create_folders in ("both", side) and keys.direction != blocked

    def _exists_or_creatable(self, folder: RemoteFolder) -> bool:
        """A server folder is synced unless it has no local folder, never had one, and the
        policy does not create it locally (then it is left alone: no error)."""
        folder_map = self._folder_map()
        if folder_map.known(folder.name) or self._creates(folder.name, "local"):
            return True
        try:
            exists = folder_map.local_folder(folder).exists()
        except ValueError:
            return True  # a name the Maildir cannot hold: the engine reports it
        if not exists:
            log.debug("%s/%s: not created locally (create_folders)", self.account.name,
                      folder.name)
        return exists

    def _create_on_server(self, name: str, components: tuple[str, ...]) -> FolderResult:
        folder_map = self._folder_map()
        if folder_map.known(name):
            # Synced before and now gone from the server: someone deleted it there.
            return FolderResult(name, error="deleted on the server; the local copy is kept "
                                "(remove it locally, or recreate it on the server)")
        if self.options.dry_run:
            return FolderResult(name, created_remote=True,
                                plan_lines=[f"create folder {name!r} on server"])
        path = self.maildir.local_path(components)
        try:
            self._session().create_folder(name)
        except FolderError as exc:
            # Refused (an invalid name, no permission): this folder's error, reported by its
            # name and tried again next sync; every other folder still syncs.
            log.warning("%s (local folder %s)", exc, path)  # exc names account/folder
            return FolderResult(name, error=f"{exc.args[0].split(': ', 1)[-1]} "
                                f"(local folder {path})")
        # The state pairs the new server folder with this local folder at once: whatever the
        # server's name would map back to, this is its place (see FolderMap).
        self.state.ensure_folder(name, str(path))
        folder_map.record(name, path)
        log.info("%s: created folder %r on the server", self.account.name, name)
        return FolderResult(name, created_remote=True)

    def _shared_places(self, selectable: list[RemoteFolder]) -> list[FolderResult]:
        """Two server folders must never share one local folder: each would take the other's
        messages for new local mail and upload them (a server listing both "INBOX" and
        "Inbox", which both mean INBOX; fault suite, hostile folder names). The exact "INBOX"
        keeps it, then folders whose place the state records; the other is reported and left
        alone."""
        folder_map = self._folder_map()
        claimed: dict[str, str] = {}
        refused: list[FolderResult] = []
        for folder in sorted(selectable, key=lambda f: (f.name != "INBOX",
                                                        not folder_map.known(f.name))):
            path = str(folder_map.local_path(folder))
            if path in claimed:
                refused.append(FolderResult(
                    folder.name, error=f"maps to the same local folder as {claimed[path]!r} "
                    f"({path}); not synced"))
            else:
                claimed[path] = folder.name
        return refused

    # --- syncing them ---------------------------------------------------------------------
    def _sync_selected(self, selectable: list[RemoteFolder],
                       statuses: dict[str, FolderStatus],
                       merged: dict[str, FolderResult]) -> None:
        """The big folders side by side (when two or more), then the rest one by one, in
        order. A folder already refused (sharing another's local folder) is not synced."""
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

    def sync_folder(self, folder: RemoteFolder, status: FolderStatus | None,
                    result: FolderResult) -> FolderResult:
        """One folder: gather, plan, execute, record (syncd/imap/folder_sync.py)."""
        FolderSync(self.account, self.state, self._session(), self.options,
                   reporter=self.reporter, should_stop=self.should_stop,
                   moved_into=self._moved_into, untouched=self._untouched,
                   clock=self.clock, local_folders=self._local_folders,
                   ).run(folder.name, self._folder_map().local_folder(folder), status, result)
        return result

    def _local_folders(self) -> list[tuple[str | None, MaildirFolder]]:
        """Every local folder of the account, with the server folder it is the place of where
        the state knows that folder (None: not synced yet): where a mail reader may have
        moved a placeholder to (syncd/imap/placeholders.py)."""
        folder_map = self._folder_map()
        known = {f.remote_name for f in self.state.folders()}
        found: dict[str, tuple[str | None, MaildirFolder]] = {}
        for folder in self._listed:
            if folder.noselect:
                continue
            try:
                place = folder_map.local_folder(folder)
            except ValueError:
                continue  # a name the Maildir cannot hold
            found[str(place.path)] = (folder.name if folder.name in known else None, place)
        for components in self.maildir.list_folders():
            path = self.maildir.local_path(components)
            found.setdefault(str(path), (None, MaildirFolder(path)))
        return list(found.values())

    # --- big folders side by side ---------------------------------------------------------
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
        """Big folders: up to `connections` at once, each extra worker with its own connection
        and its own state connection (SQLite serialises the commits)."""
        todo: queue.Queue[RemoteFolder] = queue.Queue()
        for folder in bulk:
            merged[folder.name] = FolderResult(folder.name)
            todo.put(folder)
        # (the folder an extra connection was syncing when it failed, or None, the error)
        failures: list[tuple[str | None, BaseException]] = []
        threads = [threading.Thread(target=self._extra_worker,
                                    args=(todo, statuses, merged, failures),
                                    name=f"sync-{self.account.name}-{n}", daemon=True)
                   for n in range(min(self.account.connections, len(bulk)) - 1)]
        for thread in threads:
            thread.start()
        try:
            self._drain(todo, statuses, merged, [None])
        finally:
            for thread in threads:
                thread.join()
        self._report_failures(failures, merged)

    def _drain(self, todo: queue.Queue[RemoteFolder], statuses: dict[str, FolderStatus],
               merged: dict[str, FolderResult], current: list[str | None]) -> None:
        """Sync folders from ``todo`` until it is empty; ``current`` names the one under way
        (for the failure report of an extra connection)."""
        while not self.should_stop():
            try:
                folder = todo.get_nowait()
            except queue.Empty:
                return
            current[0] = folder.name
            self._sync_guarded(folder, statuses.get(folder.name), merged[folder.name])
            current[0] = None

    def _extra_worker(self, todo: queue.Queue[RemoteFolder], statuses: dict[str, FolderStatus],
                      merged: dict[str, FolderResult],
                      failures: list[tuple[str | None, BaseException]]) -> None:
        """One extra connection (a thread) draining the same queue."""
        from syncd.store.state import StateStore

        state = StateStore(self.state.path)
        worker = AccountSync(self.account, state, self.connect, options=self.options,
                             reporter=self.reporter, clock=self.clock)
        worker.should_stop = self.should_stop
        worker._moved_into = self._moved_into  # its moves into the trash count too
        worker._map = self._map  # the same places (a read-only mapping by now)
        current: list[str | None] = [None]
        try:
            worker.session = self.connect()
            worker._drain(todo, statuses, merged, current)
            worker._record_untouched()
        except BaseException as exc:  # the main thread reports it
            failures.append((current[0], exc))
        finally:
            worker.close()
            state.close()

    def _report_failures(self, failures: list[tuple[str | None, BaseException]],
                         merged: dict[str, FolderResult]) -> None:
        """Each failure belongs to the folder it happened in (issue 16: the first one was
        given to every folder without changes, and the failed folder, if it had changed
        anything, looked complete). The folders the failed connection never took were
        synced by the others; one that failed before taking any is only logged."""
        for folder_name, exc in failures:
            if folder_name is None:
                log.info("%s: an extra connection failed: %s", self.account.name, exc)
                continue
            result = merged[folder_name]
            if result.error is None:
                result.error = (f"interrupted: {exc}" if result.changed
                                else f"not synced: {exc}")


__all__ = [
    "AccountResult",
    "AccountSync",
    "FolderResult",
    "NullReporter",
    "Reporter",
    "SyncOptions",
    "folder_selected",
]
