"""The question `syncd sync` asks first for an IMAP account: has anything changed at all?

Most syncs (a timer, a mail reader's hook, a habit) find nothing to do. The answer needs one
LIST-STATUS (syncd/imap/probe.py), the state's cursors and two stats per folder (or,
where the directories' mtimes do not vouch, a look at the files), and none of the engine,
imapclient or the planner, whose imports are most of such a sync's time.
It is the engine's own status shortcuts (core.folders: server_untouched, then the stamps or
files_match) applied to every folder at once, with the account-wide conditions the engine
checks on its way there: every
selected server folder known and synced, no local folder the server lacks, no two server
folders sharing a local one, no interrupted transfer to finish. Anything else, or any doubt,
answers None and the full sync runs, on a fresh connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.core.folders import files_match, folder_selected, glob_matcher, server_untouched
from syncd.imap.folder_map import FolderMap
from syncd.outcome.results import AccountResult, FolderResult
from syncd.store.maildir import Maildir

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.core.folders import Namespace
    from syncd.imap.probe import Listing
    from syncd.store.state import FolderState, StateStore

log = logging.getLogger("syncd.imap.nochange")


class Probe:
    """The server's side of the check, started as early as `syncd sync` can (a thread: the
    connection opened ahead, LOGIN, LIST-STATUS). The server's answer takes a few round trips
    plus its own work (tens of ms for a big mailbox); meanwhile the main thread imports, opens
    and checks the state database and takes the account lock."""

    def __init__(self, account: AccountSettings, password: Callable[[], str]) -> None:
        self.account = account
        self._password = password
        self._listing: Listing | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"check-{account.name}")
        self._thread.start()

    def _run(self) -> None:
        from syncd import net as transport

        try:
            # Imported while the TLS handshake is still under way.
            from syncd.imap.probe import probe

            # The password (a command: gpg, pass) is asked for while the TLS handshake is
            # under way, once the server is known to be reachable. The answer, or the
            # failure, is remembered (cli._password_source): the login meets it where it
            # always did, after the connection's own errors.
            if transport.server_reached(self.account):
                with contextlib.suppress(Exception):
                    self._password()
            try:
                sock = transport.take_dialed(self.account)
            except Exception as exc:
                raise transport.connect_failed(self.account, exc) from None
            if sock is None:
                return
            self._listing = probe(self.account, sock, self._password)
        except BaseException as exc:  # raised again in the thread that asks for the result
            self._error = exc

    def result(self) -> Listing | None:
        """The listing; None if the server does not allow the light check. Raises what the
        connection or the login raised (an AccountError, as a full sync would have)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._listing


def sync_if_unchanged(account: AccountSettings, state: StateStore, listing: Listing | None,
                      *, clock: Callable[[], float] = time.time) -> AccountResult | None:
    """The result of a sync that found nothing to do (each folder's last_sync recorded, as
    the engine records it), or None when there may be something to do. ``listing`` is the
    Probe's (None: the server's replies did not allow the light check)."""
    started = time.monotonic()
    if listing is None:
        return _full(account, "the server's replies do not allow the light check")
    include, exclude = account.folders.include, account.folders.exclude
    namespace = listing.namespace
    remote = [f for f in listing.folders
              if folder_selected(f.name, include, exclude, namespace=namespace)]
    selectable = [f for f in remote if not f.noselect]
    maildir = Maildir(account.maildir, account.layout)
    known = {f.remote_name: f for f in state.folders()}
    # The engine's places: recorded ones first, then the name without the namespace prefix.
    folder_map = FolderMap(maildir, namespace, {n: f.local_path for n, f in known.items()})
    try:
        if folder_map.local_only(listing.folders, maildir.list_folders(), include, exclude):
            return _full(account, "a local folder is not on the server")
        locals_ = [folder_map.local_folder(f) for f in selectable]
    except ValueError:
        # A name that maps outside the Maildir: the engine reports it.
        return _full(account, "a folder name the Maildir cannot hold")
    if len({str(f.path) for f in locals_}) != len(locals_):
        return _full(account, "two server folders map to one local folder")
    if state.open_intents():
        return _full(account, "an interrupted transfer to finish")
    untouched: list[int] = []
    restamped: list[tuple[int, str | None]] = []
    for folder, local in zip(selectable, locals_, strict=True):
        fstate = known.get(folder.name)
        status = listing.statuses.get(folder.name)
        if fstate is None or status is None:
            return _full(account, f"{folder.name!r} is new or has no STATUS")
        if not server_untouched(fstate, status, condstore=True,  # see Listing
                                synced_count=lambda f=fstate: _expected(
                                    account, state, f, namespace)):
            return _full(account, f"{folder.name!r} changed on the server")
        if local.unchanged_since(fstate.local_stamp):
            untouched.append(fstate.id)
            continue
        # The directories' mtimes do not vouch for the folder (a change, or a stamp taken
        # within a second of the last one): look at the files, as the engine would, and take
        # a new stamp if they are the synced ones (the next sync then needs only the stats).
        stamp = local.stamp()  # before the look it vouches for (issue 16)
        if not local.exists() or not files_match(state.messages(fstate.id), local.scan()):
            return _full(account, f"{folder.name!r} changed locally")
        restamped.append((fstate.id, stamp))
    with state.transaction():  # one commit
        state.set_last_sync(untouched + [fid for fid, _ in restamped], clock())
        for fid, stamp in restamped:
            state.set_local_stamp(fid, stamp)
    return AccountResult(account.name, [FolderResult(f.name) for f in selectable],
                         seconds=time.monotonic() - started)


def _expected(account: AccountSettings, state: StateStore, fstate: FolderState,
              namespace: Namespace) -> int:
    """As syncd.imap.folder_sync.expected_count (kept here: this path imports no engine)."""
    keys = account.folder_policy(glob_matcher(fstate.remote_name, namespace=namespace))
    if fstate.counted_policy != keys.fingerprint:
        return -1
    if fstate.server_count is not None:
        return fstate.server_count
    return state.message_count(fstate.id)


def _full(account: AccountSettings, why: str) -> None:
    log.debug("%s: a full sync: %s", account.name, why)
    return None
