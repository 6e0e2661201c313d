"""Maildir adapter: scan, durable delivery, flag renames, removal; the two layouts; safe
folder-name mapping. Thin and honest: no sync decisions here.

CONTRACT (implemented by the maildir helper; the engine codes against exactly this):

Folder names inside syncd are tuples of components, already decoded from modified UTF-7,
e.g. ("Lists", "python"); INBOX is ("INBOX",). The server's delimiter never appears here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from syncd.core.flags import Flags

Layout = Literal["verbatim", "maildir++"]
FolderName = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocalEntry:
    key: str  # file name before ":2," (or the whole name when there is no info)
    subdir: Literal["cur", "new"]
    name: str  # the full file name as it is on disk now
    flags: Flags


class MaildirFolder:
    """One Maildir folder (a directory with cur/ new/ tmp/)."""

    path: Path

    def __init__(self, path: Path) -> None: ...
    def exists(self) -> bool: ...
    def create(self) -> None:
        """Create path, cur, new, tmp with mode 0700 (parents too, 0700); fsync the parent."""
    def scan(self) -> dict[str, LocalEntry]:
        """key -> entry for every message file in cur/ and new/ (os.scandir, no stat per file).
        Ignores dot files. If one key appears twice (another tool copied a file), the first in
        cur/ wins and the duplicate is left alone."""
    def deliver(self, data: bytes | Iterable[bytes], flags: Flags, *, mtime: float | None = None,
                size_hint: int | None = None) -> str:
        """Write data to tmp/ (0600), fsync, then link into cur/ (with ":2,<flags>") or new/
        (flagless) without ever overwriting, unlink the tmp file; set mtime if given. Returns the
        new key. Does NOT fsync the directories: call sync() once per batch before recording."""
    def sync(self) -> None:
        """fsync cur/ and new/ (and tmp/) directories: makes preceding delivers/renames durable."""
    def set_flags(self, key: str, flags: Flags) -> None:
        """Rename the file of key so that it carries flags (moving new/ -> cur/ when needed).
        Letters the file had that syncd does not know are kept. Missing file: FileNotFoundError."""
    def remove(self, key: str) -> bool:
        """Unlink the file of key; False if it was already gone."""
    def path_of(self, key: str) -> Path:
        """Current path of the file of key (scans if needed). FileNotFoundError if absent."""
    def read(self, key: str) -> bytes:
        """The file's bytes (LF line ends, as stored)."""
    def header_info(self, key: str) -> tuple[str | None, int]:
        """(Message-ID or None, size the message has on the server: LF -> CRLF counted)."""
    def clean_tmp(self, older_than: float = 36 * 3600) -> int:
        """Remove tmp/ files older than older_than seconds (the spec's rule); returns the count."""


class Maildir:
    """An account's maildir root with its layout."""

    root: Path
    layout: Layout

    def __init__(self, root: Path, layout: Layout) -> None: ...
    def folder(self, name: FolderName) -> MaildirFolder:
        """The MaildirFolder for a server folder name (escaped so it can never leave root)."""
    def local_path(self, name: FolderName) -> Path: ...
    def list_folders(self) -> list[FolderName]:
        """Every Maildir folder under root (directories holding cur/ new/ tmp/), mapped back to
        folder names (unescaped). INBOX included if present."""
    def ensure_root(self) -> None:
        """Create root 0700 if missing."""


def escape_component(component: str, layout: Layout) -> str:
    """Reversible escaping of one folder-name component for use as (part of) a directory name."""
    raise NotImplementedError


def unescape_component(text: str) -> str:
    raise NotImplementedError


def write_crlf_to_lf(data: bytes) -> bytes:
    """Server bytes -> file bytes: CRLF becomes LF; nothing else changes."""
    raise NotImplementedError


def lf_to_crlf(data: bytes) -> bytes:
    """File bytes -> upload bytes: bare LF becomes CRLF (existing CRLF kept)."""
    raise NotImplementedError
