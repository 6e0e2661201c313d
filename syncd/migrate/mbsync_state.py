"""What mbsync knows of a Maildir it syncs (isync 1.4), read for `syncd adopt`.

mbsync names its files ``...,U=<uid>:2,<flags>``, but that UID is its OWN Maildir-side number
(counted in the folder's ``.uidvalidity`` file: line 1 the Maildir's UIDVALIDITY, line 2 the
last UID given), not the server's. Only the sync state maps one to the other: a header
(``FarUidValidity`` = the server's UIDVALIDITY, ``NearUidValidity`` = the Maildir's), an empty
line, then one ``<far uid> <near uid> <flags>`` line per pair, flags being the ones both sides
had at the last sync. The state is ``.mbsyncstate`` in the folder itself with ``SyncState *``,
else, for a channel's own ``SyncState DIR/``, ``DIR/<near box>``, and for the global one
(default ~/.mbsync/) ``<SyncState>:<far store>:<far box>_:<near store>:<near box>`` ('/' in
box names written '!'). A ``.journal`` beside it means a run was interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from syncd.core.flags import normalize
from syncd.core.folders import Namespace, without_prefix
from syncd.core.model import RemoteFolder
from syncd.migrate.adopt import (
    AdoptRefused,
    ToolFolder,
    ToolPair,
    message_names,
    record_deletions,
    uid_in_name,
)
from syncd.migrate.mbsyncrc import Channel, MbsyncConfig, channels

STATE_NAME = ".mbsyncstate"
_DEFAULT_SYNC_STATE = "~/.mbsync/"


@dataclass
class MbsyncState:
    far_uidvalidity: int | None
    near_uidvalidity: int | None
    pairs: dict[int, tuple[int, str]]  # near (Maildir) uid -> (far (server) uid, flags)
    # Near uids whose line carries a status mark before the flags (isync's save_state:
    # '<'/'>' placeholder, '^' skipped, '!' pending, '~' expired): mbsync itself may have
    # removed such a file, so its absence is no evidence of a deletion by the user.
    marked: set[int] = field(default_factory=set)

    def plain_pairs(self) -> dict[int, tuple[int, str]]:
        return {near: pair for near, pair in self.pairs.items() if near not in self.marked}


def parse_state(text: str) -> MbsyncState:
    """isync 1.4's state file (the pre-1.4 Master/Slave header names too). ValueError when it
    is not one."""
    header, _, body = text.partition("\n\n")
    values: dict[str, int] = {}
    for line in header.splitlines():
        key, _, value = line.partition(" ")
        if not value.strip().isdigit():
            raise ValueError(f"not an mbsync state header line: {line!r}")
        values[key] = int(value)
    far = values.get("FarUidValidity", values.get("MasterUidValidity"))
    near = values.get("NearUidValidity", values.get("SlaveUidValidity"))
    if far is None and near is None:
        raise ValueError("no UidValidity in the mbsync state header")
    pairs: dict[int, tuple[int, str]] = {}
    marked: set[int] = set()
    for line in body.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 2:
            continue
        far_uid, near_uid = int(parts[0]), int(parts[1])
        # A status mark (expire, placeholder) may precede the letters; keep the letters.
        rest = parts[2] if len(parts) > 2 else ""
        letters = [c for c in rest if c.isalpha()]
        if far_uid > 0 and near_uid > 0:  # 0 or negative: one side not there (yet)
            pairs[near_uid] = (far_uid, normalize(letters))
            if len(letters) != len(rest):
                marked.add(near_uid)
    return MbsyncState(far, near, pairs, marked)


def _read_uidvalidity(folder: Path) -> int | None:
    try:
        first = (folder / ".uidvalidity").read_text(encoding="ascii").split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


# --- where mbsync keeps a folder ----------------------------------------------------------

@dataclass
class Place:
    """Where one server folder lives for mbsync: its Maildir folder and its state file."""

    path: Path
    state: Path


def canonical(folder: RemoteFolder, far_prefix: str, namespace: Namespace) -> str | None:
    """mbsync's name for a server folder: the IMAPStore's ``Path`` (or the namespace prefix)
    taken off, the server's delimiter turned into '/'."""
    name = folder.name
    if name.upper() == "INBOX":
        return "INBOX"
    if far_prefix:
        if not name.startswith(far_prefix):
            return None
        name = name[len(far_prefix):]
    else:
        name = without_prefix(name, namespace) or name
    return name.replace(folder.delimiter, "/") if folder.delimiter else name


def near_path(channel: Channel, box: str) -> Path:
    """Where mbsync's Maildir store puts mailbox ``box`` (mbsync(1), SubFolders/Flatten)."""
    store = channel.near
    inbox = os.path.expanduser(store.get("inbox") or "~/Maildir")
    if box.upper() == "INBOX":
        return Path(inbox)
    style = (store.get("subfolders") or "").lower()
    flatten = store.get("flatten")
    prefix = os.path.expanduser(store.get("path") or "")
    if style == "maildir++":
        return Path(inbox) / ("." + box.replace("/", "."))
    if flatten:
        return Path(prefix + box.replace("/", flatten))
    if style == "legacy":
        first, *rest = box.split("/")
        return Path(prefix + "/.".join([first, *rest]))
    return Path(prefix + box)


def _state_file(channel: Channel, far_box: str, near_box: str, folder: Path) -> Path:
    """isync's sync.c: a channel's own SyncState is a prefix for the near box's name; the
    global one (default ~/.mbsync/) is followed by both stores' and boxes' names."""
    own = channel.section.get("syncstate")
    where = own or channel.config.globals.get("syncstate") or _DEFAULT_SYNC_STATE
    if where == "*":
        return folder / STATE_NAME
    near = near_box.replace("/", "!")
    if own:
        return Path(os.path.expanduser(own) + near)
    name = f":{channel.far.name}:{far_box.replace('/', '!')}_:{channel.near.name}:{near}"
    return Path(os.path.expanduser(where) + name)


def places_from_config(config: MbsyncConfig, root: Path, folders: Sequence[RemoteFolder],
                       namespace: Namespace) -> dict[str, Place]:
    """Server folder name -> mbsync's place, from the channels whose Maildir store lies in
    the account's maildir ``root``."""
    places: dict[str, Place] = {}
    for channel in channels(config):
        prefix = channel.far.get("path") or ""
        for folder in folders:
            box = canonical(folder, prefix, namespace)
            if box is None:
                continue
            if channel.far_box or channel.near_box:
                # A channel for one mailbox (Far :remote:Sent, Near :local:sent), or with a
                # prefix on both sides under Patterns.
                if channel.option_args("patterns") is None:
                    if box != (channel.far_box or "INBOX"):
                        continue
                    near_box = channel.near_box or "INBOX"
                else:
                    if not box.startswith(channel.far_box):
                        continue
                    near_box = channel.near_box + box[len(channel.far_box):]
            else:
                near_box = box
            path = near_path(channel, near_box)
            if not _inside(path, root) or folder.name in places:
                continue
            far_box = (channel.far_box + box[len(channel.far_box):]) if channel.far_box else box
            places[folder.name] = Place(path, _state_file(channel, far_box, near_box, path))
    return places


def _inside(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
    except ValueError:
        return False


def places_by_probing(root: Path, folders: Sequence[RemoteFolder],
                      namespace: Namespace) -> dict[str, Place]:
    """Without an mbsyncrc: the usual places (SubFolders Verbatim, Maildir++, Flatten '.',
    INBOX as INBOX, Inbox, inbox or the root) that hold a ``.mbsyncstate`` (SyncState *)."""
    places: dict[str, Place] = {}
    for folder in folders:
        box = canonical(folder, "", namespace)
        if box is None:
            continue
        if box == "INBOX":
            candidates = [root / "INBOX", root / "Inbox", root / "inbox", root]
        else:
            candidates = [root.joinpath(*box.split("/")), root / ("." + box.replace("/", ".")),
                          root / box.replace("/", ".")]
        for candidate in candidates:
            if (candidate / STATE_NAME).is_file():
                places[folder.name] = Place(candidate, candidate / STATE_NAME)
                break
    return places


# --- reading one folder -------------------------------------------------------------------

def read_folder(account: str, remote_name: str, place: Place) -> ToolFolder | None:
    """The evidence for one folder; None when mbsync never synced it (no folder, no state)."""
    from syncd.store.maildir import MaildirFolder

    folder = MaildirFolder(place.path)
    if not folder.exists():
        return None
    journal = Path(str(place.state) + ".journal")
    if journal.exists():
        raise AdoptRefused(account, f"{remote_name}: mbsync's last run was interrupted "
                           f"({journal} is there): run mbsync once more so that it finishes, "
                           f"then adopt; nothing was changed")
    try:
        state = parse_state(place.state.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return ToolFolder(remote_name, place.path, None, untrusted=(
            f"no mbsync state at {place.state}"))
    except ValueError as exc:
        return ToolFolder(remote_name, place.path, None, untrusted=(
            f"mbsync's state {place.state} is not in a format syncd reads ({exc})"))
    tool = ToolFolder(remote_name, place.path, state.far_uidvalidity)
    if (place.path / ".isyncuidmap.db").exists():
        tool.untrusted = "mbsync keeps its UIDs in .isyncuidmap.db (AltMap), not in file names"
        return tool
    if _read_uidvalidity(place.path) != state.near_uidvalidity:
        tool.untrusted = ("the folder's .uidvalidity is not the one in mbsync's state: its "
                          "file names' UIDs cannot be trusted")
        return tool
    _pair_files(tool, folder.scan(), state)
    record_deletions(tool, message_names(place.path), state.plain_pairs(), uid_in_name,
                     "mbsync")
    return tool


def _pair_files(tool: ToolFolder, entries: dict, state: MbsyncState) -> None:
    taken: set[int] = set()
    unknown = copies = 0
    for key in sorted(entries):
        near = uid_in_name(key)
        if near is None:
            continue  # new since mbsync's last run (mutt saved it): the next sync uploads it
        pair = state.pairs.get(near)
        if pair is None:
            unknown += 1
            continue
        if near in taken:
            copies += 1  # a copy of another file (cp -a): uploaded as its own message
            continue
        taken.add(near)
        tool.pairs[key] = ToolPair(pair[0], pair[1])
    if unknown:
        tool.notes.append(f"{unknown} file(s) with a UID mbsync's state does not know: paired "
                          f"by content by the next sync")
    if copies:
        tool.notes.append(f"{copies} file(s) carry another file's UID (copies): treated as new")


def read_mbsync(account: str, root: Path, folders: Sequence[RemoteFolder],
                namespace: Namespace, config: MbsyncConfig | None
                ) -> tuple[list[ToolFolder], list[Path]]:
    """(evidence per folder mbsync keeps, mbsync's own files for the user to delete)."""
    places = places_from_config(config, root, folders, namespace) if config else {}
    if not places:
        places = places_by_probing(root, folders, namespace)
    found: list[ToolFolder] = []
    leftovers: list[Path] = []
    for folder in folders:
        place = places.get(folder.name)
        if place is None:
            continue
        tool = read_folder(account, folder.name, place)
        if tool is None:
            continue
        found.append(tool)
        leftovers += [p for p in (place.state, place.path / ".uidvalidity") if p.exists()]
    return found, leftovers
