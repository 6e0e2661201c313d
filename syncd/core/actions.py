"""Frozen action records: what the engine must do to bring one folder into step.

The planner only produces these; the engine executes them with intents and group commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.core.flags import Flags


@dataclass(frozen=True, slots=True)
class Download:
    """Fetch server message ``uid`` and deliver it locally with ``flags``.

    ``pair_candidates`` are unpaired local keys of the same size without a Message-ID: if the
    fetched body equals one of them byte for byte (after CRLF -> LF), the engine pairs instead of
    delivering a duplicate.
    """

    uid: int
    flags: Flags
    size: int | None = None
    pair_candidates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Upload:
    """APPEND local file ``key`` with ``flags``; record the UID the server gives it.

    ``unless_paired``: skip if a Download's content check paired this key during the same run.
    """

    key: str
    flags: Flags
    unless_paired: bool = False


@dataclass(frozen=True, slots=True)
class Pair:
    """Record that ``uid`` and local ``key`` are one message (no transfer); ``flags`` become the
    synced flags. Flag differences are carried by SetLocalFlags/PushFlags in the same plan."""

    uid: int
    key: str
    flags: Flags


@dataclass(frozen=True, slots=True)
class SetLocalFlags:
    """Rename the local file so its info suffix says ``flags``."""

    uid: int
    key: str
    flags: Flags


@dataclass(frozen=True, slots=True)
class PushFlags:
    """UID STORE on the server: add ``add`` and remove ``remove`` (letters); afterwards the synced
    flags are ``flags``."""

    uid: int
    key: str
    add: Flags
    remove: Flags
    flags: Flags


@dataclass(frozen=True, slots=True)
class DeleteLocal:
    """The server expunged ``uid``: remove the local file and the state row."""

    uid: int
    key: str


@dataclass(frozen=True, slots=True)
class DeleteRemote:
    """The local file is gone: expunge ``uid`` on the server (or move it to ``trash_folder``)."""

    uid: int
    key: str
    trash_folder: str | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """Gone on both sides: drop the state row."""

    uid: int
    key: str


Action = Download | Upload | Pair | SetLocalFlags | PushFlags | DeleteLocal | DeleteRemote | Forget


@dataclass(frozen=True, slots=True)
class FolderPlan:
    actions: tuple[Action, ...]
    # Set when the mass-deletion guard held: why, in one sentence. The plan then contains no
    # DeleteRemote actions.
    guard: str | None = None

    def count(self, kind: type) -> int:
        return sum(1 for action in self.actions if isinstance(action, kind))

    @property
    def empty(self) -> bool:
        return not self.actions
