"""The question `syncd sync` asks first for an IMAP account: has anything changed at all?

Most syncs (a timer, a mail reader's hook, a habit) find nothing to do. The answer needs one
LIST-STATUS (syncd/adapters/imap_probe.py), the state's cursors and two stats per folder, and
none of the engine, imapclient or the planner, whose imports are most of such a sync's time.
It is the engine's own status shortcut (core.folders.folder_untouched) applied to every
folder at once, with the account-wide conditions the engine checks on its way there: every
selected server folder known and synced, no local folder the server lacks, no two server
folders sharing a local one, no interrupted transfer to finish. Anything else, or any doubt,
answers None and the full sync runs, on a fresh connection.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.adapters.imap_probe import probe
from syncd.adapters.maildir import Maildir
from syncd.core.folders import (
    folder_selected,
    folder_untouched,
    local_components,
    local_only_folders,
    server_delimiter,
)
from syncd.results import AccountResult, FolderResult

if TYPE_CHECKING:
    from syncd.adapters.state import StateStore
    from syncd.config import AccountSettings

log = logging.getLogger("syncd.nochange")


def sync_if_unchanged(account: AccountSettings, state: StateStore, sock: socket.socket,
                      password: Callable[[], str], *,
                      clock: Callable[[], float] = time.time) -> AccountResult | None:
    """The result of a sync that found nothing to do (each folder's last_sync recorded, as
    the engine records it), or None when there may be something to do or it cannot tell.
    ``sock`` is the account's open connection (TLS done); it is closed in every case.
    Raises AccountError where a full sync would fail the same way (connection, login)."""
    started = time.monotonic()
    listing = probe(account, sock, password)
    if listing is None:
        return _full(account, "the server's replies do not allow the light check")
    include, exclude = account.folders.include, account.folders.exclude
    remote = [f for f in listing.folders if folder_selected(f.name, include, exclude)]
    selectable = [f for f in remote if not f.noselect]
    maildir = Maildir(account.maildir, account.layout)
    try:
        if local_only_folders(maildir.list_folders(), [f.name for f in remote],
                              server_delimiter(remote), include, exclude):
            return _full(account, "a local folder is not on the server")
        locals_ = [maildir.folder(local_components(f)) for f in selectable]
    except ValueError:
        # A name that maps outside the Maildir: the engine reports it.
        return _full(account, "a folder name the Maildir cannot hold")
    if len({str(f.path) for f in locals_}) != len(locals_):
        return _full(account, "two server folders map to one local folder")
    if state.open_intents():
        return _full(account, "an interrupted transfer to finish")
    known = {f.remote_name: f for f in state.folders()}
    untouched = []
    for folder, local in zip(selectable, locals_, strict=True):
        fstate = known.get(folder.name)
        status = listing.statuses.get(folder.name)
        if fstate is None or status is None:
            return _full(account, f"{folder.name!r} is new or has no STATUS")
        if not folder_untouched(
                fstate, status, condstore=listing.condstore,
                synced_count=lambda f=fstate: state.message_count(f.id),
                local_unchanged=lambda f=fstate, d=local: d.unchanged_since(f.local_stamp)):
            return _full(account, f"{folder.name!r} may have changed")
        untouched.append(fstate.id)
    state.set_last_sync(untouched, clock())
    return AccountResult(account.name, [FolderResult(f.name) for f in selectable],
                         seconds=time.monotonic() - started)


def _full(account: AccountSettings, why: str) -> None:
    log.debug("%s: a full sync: %s", account.name, why)
    return None
