"""What offlineimap (offlineimap3) knows of a Maildir it syncs, read for `syncd adopt`.

offlineimap names its files ``<time>_<n>.<pid>.<host>,U=<uid>,FMD5=<md5>:2,<flags>``: the UID
is the SERVER's, and FMD5 is the MD5 of the local folder's name, so a file moved into another
folder by the mail reader no longer counts as that UID. Its state, per account under the
metadata directory (~/.offlineimap):
- ``Account-NAME/LocalStatus-sqlite/<folder>`` (SQLite, table ``status(id, flags, ...)``) or
  ``Account-NAME/LocalStatus/<folder>`` (text: a magic line, then ``uid|flags|mtime|labels``
  lines, or ``uid:flags`` in format 1): the UIDs and flags as of the last sync;
- ``Repository-REMOTE/FolderValidity/<folder>``: the server's UIDVALIDITY it last saw.
The local folder of server folder ``A/B`` is ``A<sep>B`` under ``localfolders`` (``sep``
default "."; with "/" the folders nest); files names under the state directories have "/"
written ".".
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from syncd.core.flags import normalize
from syncd.core.model import RemoteFolder
from syncd.migrate.adopt import (
    AdoptRefused,
    ToolFolder,
    ToolPair,
    message_names,
    record_deletions,
)
from syncd.migrate.offlineimaprc import OfflineimapAccount

_NAME_RE = re.compile(r",U=(\d+),FMD5=([0-9a-fA-F]+)")
_MAGIC = "OFFLINEIMAP LocalStatus CACHE DATA - DO NOT MODIFY - FORMAT "


def _basename(name: str) -> str:
    """offlineimap's getfolderbasename: '/' -> '.', and a final '.' spelled 'dot'."""
    base = name.replace("/", ".") if name else "."
    return re.sub(r"(^|/)\.$", r"\1dot", base)


def read_status(status_dir: Path, name: str) -> dict[int, str] | None:
    """UID -> flags from LocalStatus-sqlite or LocalStatus; None when neither has the folder."""
    sqlite_file = status_dir / "LocalStatus-sqlite" / _basename(name)
    if sqlite_file.is_file():
        # Read-only and immutable: never touch offlineimap's database.
        uri = f"file:{sqlite_file}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True)
        try:
            return {int(uid): normalize(flags or "")
                    for uid, flags in conn.execute("SELECT id, flags FROM status")}
        finally:
            conn.close()
    text_file = status_dir / "LocalStatus" / _basename(name)
    if not text_file.is_file():
        return None
    lines = text_file.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].startswith(_MAGIC):
        raise ValueError(f"{text_file} is not an offlineimap LocalStatus file")
    separator = ":" if lines[0].endswith("1") else "|"
    result = {}
    for line in lines[1:]:
        parts = line.strip().split(separator)
        if len(parts) >= 2 and parts[0].isdigit():
            result[int(parts[0])] = normalize(parts[1])
    return result


def _read_validity(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def local_name(folder: RemoteFolder, sep: str) -> str:
    """offlineimap's local folder name: the remote name with the server's delimiter made
    ``sep`` (no nametrans)."""
    if folder.delimiter and folder.delimiter != sep:
        return folder.name.replace(folder.delimiter, sep)
    return folder.name


def read_folder(account: OfflineimapAccount, folder: RemoteFolder, root: Path
                ) -> ToolFolder | None:
    from syncd.store.maildir import MaildirFolder

    name = local_name(folder, account.sep)
    path = root.joinpath(*name.split("/")) if account.sep == "/" else root / name
    local = MaildirFolder(path)
    if not local.exists():
        return None
    status_name = local_name(folder, ".")
    validity = _read_validity(account.validity_dir / _basename(folder.name))
    tool = ToolFolder(folder.name, path, validity)
    try:
        status = read_status(account.status_dir, status_name)
    except (ValueError, sqlite3.Error) as exc:
        tool.untrusted = f"offlineimap's LocalStatus cannot be read: {exc}"
        return tool
    if status is None:
        tool.untrusted = f"no offlineimap LocalStatus for it in {account.status_dir}"
        return tool
    md5 = hashlib.md5(name.encode("utf-8")).hexdigest()
    _pair_files(tool, local.scan(), status, md5)
    # offlineimap's UID is the server's: its state line pairs a UID with itself.
    recorded = {uid: (uid, flags) for uid, flags in status.items() if uid > 0}
    record_deletions(tool, message_names(path), recorded, _uid_reader(md5), "offlineimap")
    return tool


def _uid_reader(md5: str) -> Callable[[str], int | None]:
    """The UID of a file of this folder; None for any other name, a file moved in from
    another folder (its FMD5) included: if this folder's FMD5 were computed wrongly, every
    file would look moved in, and none may then count as deleted."""
    def uid_of(name: str) -> int | None:
        match = _NAME_RE.search(name)
        if match is None or match.group(2).lower() != md5:
            return None
        return int(match.group(1))

    return uid_of


def _pair_files(tool: ToolFolder, entries: dict, status: dict[int, str], md5: str) -> None:
    foreign = unknown = 0
    for key in sorted(entries):
        match = _NAME_RE.search(key)
        if match is None:
            continue  # a new local file: the next sync uploads it
        uid, fmd5 = int(match.group(1)), match.group(2).lower()
        if fmd5 != md5:
            foreign += 1  # moved here from another folder by the mail reader: new here
            continue
        if uid not in status:
            unknown += 1
            continue
        if any(p.uid == uid for p in tool.pairs.values()):
            raise AdoptRefused("", f"{tool.remote_name}: two files carry UID {uid}")
        tool.pairs[key] = ToolPair(uid, status[uid])
    if foreign:
        tool.notes.append(f"{foreign} file(s) moved here from another folder: uploaded as new")
    if unknown:
        tool.notes.append(f"{unknown} file(s) with a UID offlineimap's LocalStatus does not "
                          f"know: paired by content by the next sync")


def read_offlineimap(account_name: str, root: Path, folders: Sequence[RemoteFolder],
                     config: OfflineimapAccount) -> tuple[list[ToolFolder], list[Path]]:
    for key in ("nametrans",):
        if config.local.get(key) or config.remote.get(key):
            raise AdoptRefused(account_name, f"offlineimap account {config.name!r} renames "
                               f"folders with `{key}`, which syncd does not evaluate; nothing "
                               f"was changed")
    found: list[ToolFolder] = []
    for folder in folders:
        try:
            tool = read_folder(config, folder, root)
        except AdoptRefused as exc:
            raise AdoptRefused(account_name, str(exc).removeprefix(": ")) from None
        if tool is not None:
            found.append(tool)
    leftovers = [p for p in (config.status_dir, config.validity_dir.parent) if p.exists()]
    return found, leftovers
