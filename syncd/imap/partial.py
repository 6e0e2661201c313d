"""The two commands of partial mirrors (README, "Partial mirrors"): `syncd fetch FILE...`
replaces placeholders with their full messages in place; `syncd prune ACCOUNT` removes the
local copies the window left outside (never touching the server).

`fetch` takes no account lock, so that it works beside a running daemon: each replacement is
one atomic rename behind an intent, which a sync running at the same time either sees before
or after (placeholders.replace_with_full). `prune` takes the lock: a sync taking a parked pair
back while its file goes would read the missing file as a deletion.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

from syncd.errors import SyncdError

if TYPE_CHECKING:
    from syncd.config.settings import AccountSettings, Settings
    from syncd.store.state import StateStore

log = logging.getLogger("syncd.imap.account")

OK, FAILED, USAGE = 0, 1, 2


class Target(NamedTuple):
    """One FILE of `syncd fetch`, placed: its account, its folder's directory and its key."""

    path: Path
    account: AccountSettings
    folder_dir: Path
    key: str


def place_file(settings: Settings, path: Path) -> Target | str:
    """Where FILE belongs, or why it cannot be fetched (a usage error)."""
    path = path.expanduser().absolute()
    if not path.is_file():
        return f"{path}: no such file"
    if path.parent.name not in ("cur", "new"):
        return f"{path}: not a message file of a Maildir folder (not in cur/ or new/)"
    folder_dir = path.parent.parent
    for account in settings.accounts.values():
        root = account.maildir.expanduser().absolute()
        if account.protocol == "imap" and folder_dir.is_relative_to(root):
            return Target(path, account, folder_dir, path.name.split(":", 1)[0])
    return f"{path}: not in the Maildir of any IMAP account of the config"


def fetch_files(settings: Settings, paths: Iterable[Path],
                password: Callable[[AccountSettings], Callable[[], str]], out: TextIO) -> int:
    """`syncd fetch`: each placeholder replaced; 0, 1 (a fetch failed) or 2 (a FILE that
    cannot be fetched: not a placeholder, not in a configured Maildir)."""
    code = OK
    by_account: dict[str, list[Target]] = {}
    for path in paths:
        placed = place_file(settings, path)
        if isinstance(placed, str):
            print(f"syncd: {placed}", file=out)
            code = USAGE
        else:
            by_account.setdefault(placed.account.name, []).append(placed)
    for targets in by_account.values():
        account = targets[0].account
        try:
            failed = _fetch_account(account, targets, password(account), out)
        except SyncdError as exc:
            print(f"syncd: {exc}", file=out)
            failed = FAILED
        code = max(code, failed)
    return code


def _fetch_account(account: AccountSettings, targets: list[Target],
                   password: Callable[[], str], out: TextIO) -> int:
    from syncd.imap.client import ImapSession
    from syncd.store.state import StateStore

    code = OK
    if not account.state_path.exists():
        for target in targets:
            print(f"syncd: {target.path}: account {account.name} has never been synced",
                  file=out)
        return USAGE
    with StateStore(account.state_path) as state:
        session: ImapSession | None = None
        try:
            for target in targets:
                found = _row_of(state, target)
                if isinstance(found, str):
                    print(f"syncd: {found}", file=out)
                    code = max(code, USAGE)
                    continue
                if session is None:
                    session = ImapSession.connect(account, password)
                code = max(code, _fetch_one(session, state, target, *found, out))
        finally:
            if session is not None:
                session.close()
    return code


def _row_of(state: StateStore, target: Target) -> tuple[int, str, int, int | None] | str:
    """(folder id, server folder, UID, size) of a placeholder FILE, or why not."""
    from syncd.store.maildir import MaildirFolder

    fstate = next((f for f in state.folders()
                   if Path(f.local_path).absolute() == target.folder_dir), None)
    info = MaildirFolder(target.folder_dir).header_info(target.key)
    if info.placeholder is None:
        return f"{target.path}: not a placeholder (it is the full message already)"
    row = state.message_by_key(fstate.id, target.key) if fstate is not None else None
    if fstate is None or row is None:
        return (f"{target.path}: a placeholder this folder's state does not know (copied "
                f"here by hand?); run `syncd sync {target.account.name}` first")
    return fstate.id, fstate.remote_name, row.uid, info.placeholder.size


def _fetch_one(session: object, state: StateStore, target: Target, fid: int, folder: str,
               uid: int, size: int | None, out: TextIO) -> int:
    from syncd.errors import FolderError
    from syncd.imap.client import ImapSession
    from syncd.imap.placeholders import replace_with_full
    from syncd.store.maildir import MaildirFolder

    assert isinstance(session, ImapSession)
    known = state.folder(folder)
    try:
        info = session.select(folder)
    except FolderError as exc:
        print(f"syncd: {target.path}: {exc}", file=out)
        return FAILED
    if known is None or info.uidvalidity != known.uidvalidity:
        print(f"syncd: {target.path}: {target.account.name}/{folder} changed on the server "
              "(UIDVALIDITY); run `syncd sync` first", file=out)
        return FAILED
    if not replace_with_full(session, state, fid, MaildirFolder(target.folder_dir), uid,
                             target.key, size):
        print(f"syncd: {target.path}: {target.account.name}/{folder} UID {uid} is no longer "
              "on the server; the placeholder is left as it is", file=out)
        return FAILED
    print(f"fetched {target.path} ({size:,} bytes from {target.account.name}/{folder})"
          if size is not None else f"fetched {target.path}")
    return OK


# --- prune ------------------------------------------------------------------------------------

def prune_account(account: AccountSettings, *, dry_run: bool, out: TextIO) -> int:
    """`syncd prune ACCOUNT`: remove the local copies of the pairs the window (max_age,
    max_messages) left outside at the last sync; the server is not touched. Each file goes
    first, then its parked row (one commit per folder): killed in between, the next sync
    finds a parked pair without its local copy and forgets it, deleting nothing."""
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import StateStore

    if not account.state_path.exists():
        print(f"{account.name}: never synced; nothing to prune", file=out)
        return OK
    removed = 0
    with StateStore(account.state_path) as state:
        for fstate in state.folders():
            parked = state.untracked(fstate.id).outside
            if not parked:
                continue
            folder = MaildirFolder(Path(fstate.local_path))
            gone = []
            for row in parked:
                try:
                    path = folder.path_of(row.key)
                except FileNotFoundError:
                    gone.append(row.uid)  # already removed: only the row is left to drop
                    continue
                verb = "would remove" if dry_run else "removed"
                if not dry_run:
                    os.unlink(path)
                print(f"{verb} {path} ({account.name}/{fstate.remote_name} UID {row.uid}, "
                      "outside the window)", file=out)
                gone.append(row.uid)
                removed += 1
            if not dry_run and gone:
                folder.sync()
                state.drop_untracked(fstate.id, uids=gone)
    what = "would remove" if dry_run else "removed"
    print(f"{account.name}: {what} {removed} local cop{'y' if removed == 1 else 'ies'} "
          "outside the window; the server is unchanged", file=out)
    return OK
