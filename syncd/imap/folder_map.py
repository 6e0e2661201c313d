"""Where each server folder lives in an account's Maildir, and which local folders the server
lacks: one answer for the engine, the no-change check and `syncd check`, so that they never
disagree about a folder's place.

Three rules, in this order:
1. A folder the state knows keeps the local path recorded for it, as long as that path is one
   this Maildir (root and layout) could hold: an upgrade never re-lays an existing Maildir out
   (folders synced before syncd knew the namespace stay at INBOX/Archive), and a folder
   created on the server from a local one stays paired with that very directory whatever its
   name looks like from the server (a local "a.b" on a "." server).
2. Otherwise the name without the personal namespace prefix (core.folders.local_components):
   INBOX.Archive.2024 is Archive/2024. Where that folder does not exist locally but the
   prefixed one does (a syncd without namespace support made it, and the state was lost),
   the existing one is taken: nothing is downloaded a second time.
3. A local folder that is no listed server folder's place is new: its server name puts it
   under the prefix with the server's delimiter (core.folders.server_name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from syncd.core.folders import Namespace, local_components, local_only_folders, server_delimiter
from syncd.core.model import RemoteFolder
from syncd.store.maildir import FolderName, Maildir, MaildirFolder


class FolderMap:
    """Local places of one account's server folders (see the module docstring).
    ``recorded``: server name -> local path, as the state holds them."""

    def __init__(self, maildir: Maildir, namespace: Namespace,
                 recorded: Mapping[str, str]) -> None:
        self.maildir = maildir
        self.namespace = namespace
        # Only places this Maildir could hold: after a change of maildir root or layout the
        # folders move to where the new layout puts them (the user moves the files).
        self._recorded: dict[str, Path] = {}
        for name, path in recorded.items():
            components = maildir.folder_name_of(path)
            if components is not None:
                self._recorded[name] = maildir.local_path(components)
        self._taken = set(self._recorded.values())
        self._state_names = set(recorded)
        self._places: dict[str, Path] = {}

    def local_path(self, folder: RemoteFolder) -> Path:
        place = self._places.get(folder.name)
        if place is None:
            place = self._places[folder.name] = self._place(folder)
        return place

    def local_folder(self, folder: RemoteFolder) -> MaildirFolder:
        return MaildirFolder(self.local_path(folder))

    def known(self, name: str) -> bool:
        """The state knows this server folder (it was synced before)."""
        return name in self._state_names

    def record(self, name: str, path: Path) -> None:
        """A folder just created on the server from the local folder at ``path``."""
        self._recorded[name] = self._places[name] = path
        self._taken.add(path)
        self._state_names.add(name)

    def _place(self, folder: RemoteFolder) -> Path:
        recorded = self._recorded.get(folder.name)
        if recorded is not None:
            return recorded
        path = self.maildir.local_path(local_components(folder, self.namespace))
        legacy = self.maildir.local_path(local_components(folder))
        if (legacy != path and legacy not in self._taken
                and not MaildirFolder(path).exists() and MaildirFolder(legacy).exists()):
            return legacy
        return path

    def local_only(self, listed: Sequence[RemoteFolder], local: Iterable[FolderName],
                   include: Iterable[str], exclude: Iterable[str]
                   ) -> list[tuple[str, FolderName]]:
        """(server name, local folder) of each selected local folder that is no listed
        server folder's place: to be created on the server, or, when the state knows the
        name, reported as deleted there. ``listed``: every folder the server lists."""
        claimed_paths = set()
        for folder in listed:
            try:
                claimed_paths.add(self.local_path(folder))
            except ValueError:
                continue  # a name the Maildir cannot hold claims nothing (the engine says so)
        local = list(local)
        claimed = {c for c in local if self.maildir.local_path(c) in claimed_paths}
        # A place the state knows for a folder the server no longer lists: that name.
        by_path = {path: name for name, path in self._recorded.items()}
        recorded = {c: by_path[p] for c in local
                    if (p := self.maildir.local_path(c)) in by_path}
        return local_only_folders(
            local, [f.name for f in listed], server_delimiter(listed), include, exclude,
            namespace=self.namespace, claimed=claimed, recorded=recorded)
