"""`syncd adopt ACCOUNT`: take over a Maildir that mbsync or offlineimap has been syncing,
with no message downloaded again.

Three steps, and only the last writes anything:
1. the other tool's evidence, per server folder (mbsync_state / offlineimap_state): where it
   keeps the folder, the UIDVALIDITY it last saw, and which file is which server UID with
   which flags when both sides were last in step;
2. the server's side: one SELECT and one ``UID FETCH 1:* FLAGS`` per folder (no body, no
   header): its UIDVALIDITY, UIDNEXT and UIDs;
3. syncd's state, in ONE transaction for the account: each folder with its place, its pairs
   and cursors that make the next sync compare every flag (highestmodseq and last_sync left
   unset). The Maildir is never touched, so an interrupted adopt changes nothing and runs again.

A message the tool's state records as paired (both UIDs on its state line) whose file is gone
was deleted locally after the tool's last run: it is recorded as a pair whose file is missing,
so that the next sync treats it as any local deletion (the ``delete`` policy decides: expunged
on the server, or kept there untracked; never downloaded again). Only where that is certain:
the folder's cur/ and new/ were listed in full and every file name in them carries a UID the
tool's naming scheme explains (a file adopt cannot read could be that very message), the
folder's UIDs are trusted (UIDVALIDITY unchanged), and the state line has no status mark
(mbsync's expired, skipped or placeholder entries were removed by mbsync, not by the user).

Where the tool's UIDVALIDITY is not the server's, the folder is recorded with no pairs: the
next `syncd sync` re-pairs its files by content (Message-ID and size), downloading nothing that
is already there. Where the tool's state contradicts the server (a UID the server has never
given out), adopt refuses and writes nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.flags import Flags
from syncd.core.model import RemoteFolder, SyncedMessage
from syncd.errors import AccountError

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.store.maildir import Maildir
    from syncd.store.state import StateStore

log = logging.getLogger("syncd.adopt")

_UID_IN_NAME = re.compile(r",U=(\d+)")
# The key of a message deleted locally since the other tool's last run: no file has it (a
# plain name, never one a Maildir delivery makes), so the next sync sees a local deletion.
DELETED_KEY_PREFIX = "syncd-adopt-deleted-"


class AdoptRefused(AccountError):
    """The other tool's state cannot be trusted for this server; nothing was written."""

    def __init__(self, account: str, message: str) -> None:
        super().__init__(account, message, cause="adopt")


class ToolPair(NamedTuple):
    """A file the other tool paired with a server UID, and the flags both had then."""

    uid: int
    flags: Flags


@dataclass
class ToolFolder:
    """What the other tool knows of one server folder."""

    remote_name: str
    path: Path  # the Maildir folder the tool keeps it in
    uidvalidity: int | None  # the server's, as the tool last saw it; None: unknown
    pairs: dict[str, ToolPair] = field(default_factory=dict)  # maildir key -> pair
    # Why some files or the whole folder cannot be paired by UID (shown to the user).
    notes: list[str] = field(default_factory=list)
    # Set when the tool's own files contradict each other: the folder falls back to content.
    untrusted: str | None = None
    # Server UID -> the flags of the last sync, for pairs the tool's state records whose file
    # is gone (deleted locally since its last run; see record_deletions).
    deleted: dict[int, Flags] = field(default_factory=dict)


class ServerFolder(NamedTuple):
    uidvalidity: int
    uidnext: int | None
    flags: Mapping[int, Flags]  # every UID in the folder, with its flags

    @property
    def uids(self) -> frozenset[int]:
        return frozenset(self.flags)


class Identity(NamedTuple):
    """What content pairing compares: the Message-ID and the size on the server (CRLF)."""

    message_id: str
    size: int


@dataclass
class FolderAdoption:
    """The outcome for one folder: what goes into the state, and what to tell the user."""

    remote_name: str
    local_path: Path
    uidvalidity: int | None
    uidnext: int | None
    messages: list[SyncedMessage]
    by_content: str | None = None  # why the UIDs could not be used
    content_paired: int = 0  # files paired by Message-ID and size (by_content folders)
    gone_on_server: int = 0  # pairs whose UID the server expunged since the tool's last run
    deleted_locally: int = 0  # pairs whose file was deleted since the tool's last run
    notes: list[str] = field(default_factory=list)


@dataclass
class Adoption:
    tool: str
    folders: list[FolderAdoption]
    not_adopted: list[str]  # server folders the tool does not keep (downloaded by the next sync)
    leftovers: list[Path]  # the other tool's files, for the user to delete later


def uid_in_name(key: str) -> int | None:
    """The ``,U=<uid>`` both tools put into a file name, if any."""
    match = _UID_IN_NAME.search(key)
    return int(match.group(1)) if match else None


def message_names(path: Path) -> list[str] | None:
    """Every entry of the folder's cur/ and new/ (dot files included: nothing is skipped);
    None when either cannot be listed."""
    names: list[str] = []
    for sub in ("cur", "new"):
        try:
            names += os.listdir(path / sub)
        except OSError:
            return None
    return names


def record_deletions(tool: ToolFolder, names: Sequence[str] | None,
                     recorded: Mapping[int, tuple[int, Flags]],
                     uid_of: Callable[[str], int | None], tool_name: str) -> None:
    """Fill ``tool.deleted``: the pairs in ``recorded`` (the tool's own UID in file names ->
    (server UID, flags), only state lines that name both UIDs and carry no status mark) that
    no file in the folder carries any more. ``names`` is the full listing of cur/ and new/
    (message_names); ``uid_of`` reads the tool's UID from a name, None when it cannot. Nothing
    is counted as deleted unless every name was read: an unreadable one could be the very
    message whose file seems to be gone, and deleting it would delete server mail."""
    if names is None:
        if recorded:
            tool.notes.append("cur/ or new/ could not be listed: no message counted as "
                              "deleted locally")
        return
    present: set[int] = set()
    unreadable = 0
    for name in names:
        uid = uid_of(name)
        if uid is None:
            unreadable += 1
        else:
            present.add(uid)
    gone = [pair for own, pair in sorted(recorded.items()) if own not in present]
    if not gone:
        return
    if unreadable:
        tool.notes.append(f"{len(gone)} message(s) in {tool_name}'s state have no file any "
                          f"more, but {unreadable} file name(s) here do not carry a UID "
                          f"adopt can read: none counted as deleted (the next sync pairs them "
                          f"by content or downloads them again)")
        return
    for server_uid, flags in gone:
        tool.deleted[server_uid] = flags


def deleted_key(uid: int) -> str:
    return f"{DELETED_KEY_PREFIX}{uid}"


# --- the decision (pure) -----------------------------------------------------------------------

def adopt_folder(account: str, tool: ToolFolder, server: ServerFolder) -> FolderAdoption:
    """The state for one folder from the tool's evidence and the server's UIDs. Raises
    AdoptRefused when the evidence contradicts the server (then nothing at all is written)."""
    result = FolderAdoption(tool.remote_name, tool.path, server.uidvalidity, server.uidnext, [],
                            notes=list(tool.notes))
    if tool.untrusted is not None:
        result.by_content = tool.untrusted
    elif tool.uidvalidity is None:
        result.by_content = "the other tool recorded no UIDVALIDITY for it"
    elif tool.uidvalidity != server.uidvalidity:
        result.by_content = (f"UIDVALIDITY changed on the server since the other tool's last "
                             f"run ({tool.uidvalidity} -> {server.uidvalidity})")
    if result.by_content is not None:
        # No pairs and no cursors: the next sync pairs every file by content.
        result.uidvalidity = result.uidnext = None
        return result
    too_new = sorted(uid for uid in [*(p.uid for p in tool.pairs.values()), *tool.deleted]
                     if server.uidnext is not None and uid >= server.uidnext)
    if too_new:
        raise AdoptRefused(account, f"{tool.remote_name}: the other tool's state names UID "
                           f"{too_new[0]}, which the server has never given out (UIDNEXT "
                           f"{server.uidnext}) with the same UIDVALIDITY {server.uidvalidity}: "
                           f"its state is not this server's; nothing was changed")
    seen: dict[int, str] = {}
    for key, pair in sorted(tool.pairs.items()):
        if pair.uid in seen:
            raise AdoptRefused(account, f"{tool.remote_name}: the other tool's state pairs UID "
                               f"{pair.uid} with two files ({seen[pair.uid]}, {key}); nothing "
                               f"was changed")
        seen[pair.uid] = key
        if pair.uid not in server.uids:
            # Expunged on the server since: recorded all the same, so that the next sync
            # removes the local copy, as the other tool's next run would have.
            result.gone_on_server += 1
        result.messages.append(SyncedMessage(pair.uid, key, pair.flags))
    for uid, flags in sorted(tool.deleted.items()):
        if uid in seen or uid not in server.uids:
            continue  # a file holds it after all; or deleted on both sides: nothing to do
        # A pair with no file: the next sync's local deletion (the `delete` policy decides).
        result.messages.append(SyncedMessage(uid, deleted_key(uid), flags))
        result.deleted_locally += 1
    return result


def pair_by_content(folder: FolderAdoption, tool: ToolFolder, local: Mapping[str, Identity],
                    remote: Mapping[int, Identity], server: ServerFolder) -> None:
    """Pair files with server messages whose Message-ID and size are the same and unique on
    both sides (a folder whose UIDs could not be used). The synced flags are the tool's where
    it had the file (its last known state), else the server's. What stays unpaired is left
    to the next sync's own re-pairing."""
    def unique(items: Mapping) -> dict:
        seen: dict[Identity, list] = {}
        for item, identity in items.items():
            seen.setdefault(identity, []).append(item)
        return {identity: found[0] for identity, found in seen.items() if len(found) == 1}

    local_by_id = unique(local)
    remote_by_id = unique(remote)
    for identity, key in sorted(local_by_id.items(), key=lambda item: item[1]):
        uid = remote_by_id.get(identity)
        if uid is None:
            continue
        pair = tool.pairs.get(key)
        flags = pair.flags if pair is not None else server.flags.get(uid, "")
        folder.messages.append(SyncedMessage(uid, key, flags, identity.size,
                                             identity.message_id))
    folder.content_paired = len(folder.messages)
    folder.uidvalidity, folder.uidnext = server.uidvalidity, server.uidnext


# --- where syncd would keep a folder --------------------------------------------------------

def check_place(account: AccountSettings, maildir: Maildir, tool: ToolFolder) -> str | None:
    """None when syncd's Maildir (root and layout) can hold the folder where the tool keeps
    it; else what to change in the config."""
    if maildir.folder_name_of(tool.path) is not None:
        return None
    from syncd.store.maildir import Maildir as MaildirClass

    other = "maildir++" if maildir.layout == "verbatim" else "verbatim"
    if MaildirClass(maildir.root, other).folder_name_of(tool.path) is not None:
        return (f"{tool.remote_name} is at {tool.path}, where layout {maildir.layout} does not "
                f"put it: set `layout: {other}` for account {account.name}")
    if not tool.path.is_relative_to(maildir.root):
        return (f"{tool.remote_name} is at {tool.path}, outside the account's maildir "
                f"{maildir.root}: set `maildir:` to the other tool's maildir")
    return (f"{tool.remote_name} is at {tool.path}, a place no syncd layout uses (a leading "
            f"dot in a folder's name: mbsync's `SubFolders Legacy`?); switch the other tool to "
            f"`SubFolders Verbatim` or `Maildir++`, or let syncd download the folder anew")


# --- the whole account ----------------------------------------------------------------------

ToolReader = Callable[[Sequence[RemoteFolder]], tuple[list[ToolFolder], list[Path]]]


def plan_adoption(account: AccountSettings, maildir: Maildir, tool_name: str,
                  tool_folders: Sequence[ToolFolder], server: Mapping[str, ServerFolder],
                  selected: Sequence[str], leftovers: list[Path]) -> Adoption:
    problems = [p for t in tool_folders if (p := check_place(account, maildir, t))]
    if problems:
        raise AdoptRefused(account.name, "cannot adopt: " + "; ".join(problems) +
                           "; nothing was changed")
    places: dict[Path, str] = {}
    for tool in tool_folders:
        if tool.path in places:
            raise AdoptRefused(account.name, f"{places[tool.path]} and {tool.remote_name} are "
                               f"both kept at {tool.path}; nothing was changed")
        places[tool.path] = tool.remote_name
    folders = [adopt_folder(account.name, t, server[t.remote_name]) for t in tool_folders]
    kept = {t.remote_name for t in tool_folders}
    return Adoption(tool_name, folders, [n for n in selected if n not in kept], leftovers)


def refuse_if_synced(account: AccountSettings, state: StateStore) -> None:
    """Adopt is for a Maildir syncd has never synced: once it has, syncd's own state is the
    truth and the other tool's is older. An earlier adopt (no folder synced yet) is redone."""
    synced = [f.remote_name for f in state.folders() if f.last_sync is not None]
    if synced:
        raise AdoptRefused(account.name, f"syncd has already synced this account ({synced[0]}"
                           f"{' and others' if len(synced) > 1 else ''}); its own state is "
                           f"newer than the other tool's, so there is nothing to adopt")


def write_adoption(state: StateStore, adoption: Adoption) -> None:
    """Every folder's pairs and cursors in one transaction (one commit, all or nothing)."""
    with state.transaction():
        for old in state.folders():
            state.reset_folder(old.id)  # an earlier, interrupted or repeated, adopt
        for folder in adoption.folders:
            fstate = state.ensure_folder(folder.remote_name, str(folder.local_path))
            state.put_messages(fstate.id, folder.messages)
            # highestmodseq unset: the next sync fetches every flag once and compares all of
            # them (the tool's changes since its last run included); last_sync unset: the
            # no-change shortcut does not apply before that first full look.
            state.set_cursors(fstate.id, uidvalidity=folder.uidvalidity,
                              uidnext=folder.uidnext, highestmodseq=None, last_sync=None)


def describe(adoption: Adoption, account: str) -> list[str]:
    lines = [f"{account}: adopted from {adoption.tool}:"]
    for folder in adoption.folders:
        if folder.by_content:
            lines.append(f"  {folder.remote_name} ({folder.local_path}): {folder.by_content}; "
                         f"{folder.content_paired} message(s) paired by Message-ID and size "
                         f"(headers read, no body); the next `syncd sync` pairs the rest by "
                         f"content")
        else:
            extra = (f"; {folder.gone_on_server} deleted on the server since, removed locally "
                     f"by the next sync" if folder.gone_on_server else "")
            if folder.deleted_locally:
                extra += (f"; {folder.deleted_locally} deleted locally since {adoption.tool}'s "
                          f"last run, a local deletion for the next sync (the `delete` policy "
                          f"decides whether the server copy goes)")
            lines.append(f"  {folder.remote_name} ({folder.local_path}): "
                         f"{len(folder.messages) - folder.deleted_locally} message(s) paired "
                         f"by UID{extra}")
        lines.extend(f"    note: {note}" for note in folder.notes)
    for name in adoption.not_adopted:
        lines.append(f"  {name}: not kept by {adoption.tool}; the next sync downloads it "
                     f"(or exclude it under folders: exclude)")
    if adoption.leftovers:
        shown = ", ".join(str(p) for p in adoption.leftovers[:5])
        more = f" and {len(adoption.leftovers) - 5} more" if len(adoption.leftovers) > 5 else ""
        lines.append(f"  {adoption.tool}'s own files are left alone ({shown}{more}); stop "
                     f"{adoption.tool} now (two tools syncing one Maildir duplicate mail) and "
                     f"delete them once syncd runs well")
    return lines
