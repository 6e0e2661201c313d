"""`syncd adopt` end to end: read the other tool, look at the server (flags only), write the
state in one transaction (see adopt.py for the rules)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.errors import UsageError
from syncd.migrate.adopt import (
    Adoption,
    AdoptRefused,
    Identity,
    ServerFolder,
    ToolFolder,
    describe,
    plan_adoption,
    refuse_if_synced,
    write_adoption,
)

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.core.folders import Namespace
    from syncd.core.model import RemoteFolder
    from syncd.imap.client import ImapSession

TOOLS = ("mbsync", "offlineimap")


def default_rc(tool: str) -> Path:
    return Path(os.path.expanduser("~/.mbsyncrc" if tool == "mbsync" else "~/.offlineimaprc"))


def detect_tool(account: AccountSettings, rc: Path | None) -> str:
    """--from auto: mbsync leaves .mbsyncstate/.uidvalidity files in the folders (or is named
    by an mbsyncrc that keeps this maildir); offlineimap names its files with FMD5=."""
    root = account.maildir
    offlineimap_names = False
    for dirpath, dirnames, filenames in os.walk(root):
        if ".mbsyncstate" in filenames or ".uidvalidity" in filenames:
            return "mbsync"
        if os.path.basename(dirpath) in ("cur", "new") and any(",FMD5=" in f
                                                               for f in filenames):
            offlineimap_names = True
        dirnames[:] = [d for d in dirnames if d != "tmp"]
    if offlineimap_names:
        return "offlineimap"
    for tool in TOOLS:
        path = rc if rc is not None else default_rc(tool)
        if path.is_file() and str(root) in path.read_text(encoding="utf-8", errors="replace"):
            return tool
    raise UsageError(f"{account.name}: cannot tell which tool synced {root}; say --from "
                     f"mbsync or --from offlineimap")


def read_tool(account: AccountSettings, tool: str, rc: Path | None,
              folders: Sequence[RemoteFolder], namespace: Namespace
              ) -> tuple[list[ToolFolder], list[Path]]:
    root = account.maildir
    if tool == "mbsync":
        from syncd.migrate.mbsync_state import read_mbsync
        from syncd.migrate.mbsyncrc import load_mbsyncrc

        path = rc or default_rc("mbsync")
        config = load_mbsyncrc(path) if path.is_file() else None
        if rc is not None and config is None:
            raise UsageError(f"no such file: {rc}")
        return read_mbsync(account.name, root, folders, namespace, config)
    from syncd.migrate.offlineimap_state import read_offlineimap
    from syncd.migrate.offlineimaprc import load_offlineimaprc

    path = rc or default_rc("offlineimap")
    if not path.is_file():
        raise UsageError(f"{account.name}: adopting from offlineimap needs its config "
                         f"({path} not found; give it with --rc FILE)")
    for candidate in load_offlineimaprc(path):
        where = candidate.localfolders
        if where is not None and os.path.abspath(where) == os.path.abspath(root):
            return read_offlineimap(account.name, root, folders, candidate)
    raise UsageError(f"{account.name}: no account in {path} keeps its Maildir at {root} "
                     f"(localfolders); set this account's `maildir:` to offlineimap's")


def look_at_server(session: ImapSession, names: Sequence[str]) -> dict[str, ServerFolder]:
    """SELECT and one UID FETCH 1:* FLAGS per folder: no body, no header."""
    result: dict[str, ServerFolder] = {}
    for name in names:
        info = session.select(name)
        flags = session.fetch_flags().flags if info.exists else {}
        result[name] = ServerFolder(info.uidvalidity, info.uidnext, dict(flags))
    return result


def _local_identities(path: Path, keys: Sequence[str]) -> dict[str, Identity]:
    """key -> (Message-ID, size without the fields tools and servers add) of the files:
    mbsync adds ``X-TUID:`` to every message it downloads (syncd.core.message.IGNORED_FIELDS),
    so its files never match the server's size as they are."""
    from syncd.store.maildir import MaildirFolder

    folder = MaildirFolder(path)
    result: dict[str, Identity] = {}
    for key in keys:
        try:
            header = folder.header_info(key)
        except FileNotFoundError:
            continue
        if header.message_id:
            result[key] = Identity(header.message_id, header.size - header.trace_bytes)
    return result


def pair_remaining(session: ImapSession, adoption: Adoption, tools: Sequence[ToolFolder],
                   server: dict[str, ServerFolder]) -> None:
    """Folders whose UIDs could not be used: pair by Message-ID and size now (headers only),
    so that no message is downloaded again even where the next sync's size check would not
    see through another tool's added header."""
    from syncd.migrate.adopt import pair_by_content
    from syncd.store.maildir import MaildirFolder

    by_name = {t.remote_name: t for t in tools}
    for folder in adoption.folders:
        if folder.by_content is None or not server[folder.remote_name].flags:
            continue
        info = server[folder.remote_name]
        session.select(folder.remote_name)
        meta = session.fetch_meta(list(info.flags), message_ids=True)
        remote = {uid: Identity(m.message_id, m.size - m.trace_bytes)
                  for uid, m in meta.items() if m.message_id}
        keys = sorted(MaildirFolder(folder.local_path).scan())
        local = _local_identities(folder.local_path, keys)
        pair_by_content(folder, by_name[folder.remote_name], local, remote, info)


def adopt(account: AccountSettings, password: Callable[[], str], *, tool: str = "auto",
          rc: Path | None = None, dry_run: bool = False) -> tuple[Adoption, list[str]]:
    """Adopt the account's Maildir; returns the adoption and the lines describing it."""
    from syncd.core.folders import folder_selected
    from syncd.imap.client import ImapSession
    from syncd.store.maildir import Maildir
    from syncd.store.state import StateStore

    if account.protocol != "imap":
        raise UsageError(f"{account.name}: adopt is for IMAP accounts")
    if not account.maildir.is_dir():
        raise UsageError(f"{account.name}: no Maildir at {account.maildir} to adopt")
    chosen = detect_tool(account, rc) if tool == "auto" else tool
    state_path = account.state_path
    if state_path.exists():
        with StateStore(state_path) as state:
            refuse_if_synced(account, state)
    session = ImapSession.connect(account, password)
    try:
        listed = session.list_folders()
        namespace = session.personal_namespace()
        selected = [f for f in listed if not f.noselect and folder_selected(
            f.name, account.folders.include, account.folders.exclude, namespace=namespace)]
        tool_folders, leftovers = read_tool(account, chosen, rc, selected, namespace)
        server = look_at_server(session, [t.remote_name for t in tool_folders])
        maildir = Maildir(account.maildir, account.layout)
        adoption = plan_adoption(account, maildir, chosen, tool_folders, server,
                                 [f.name for f in selected], leftovers)
        pair_remaining(session, adoption, tool_folders, server)
    finally:
        session.close()
    if not dry_run:
        with StateStore(state_path) as state:
            refuse_if_synced(account, state)  # again, under the account lock the caller holds
            write_adoption(state, adoption)
    lines = describe(adoption, account.name)
    if dry_run:
        lines.append("  (dry run: nothing was written)")
    return adoption, lines


__all__ = ["TOOLS", "AdoptRefused", "adopt", "detect_tool"]
