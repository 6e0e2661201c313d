"""Frozen action records: what the engine must do to bring one folder into step.

The planner only produces these; the engine executes them with intents and group commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.core.flags import Flags


@dataclass(frozen=True, slots=True)
class Download:
    """Fetch server message ``uid`` and deliver it locally with ``flags``.

    ``pair_candidates`` are the unpaired local keys without a Message-ID (the message has none
    either): if the fetched message has the same ``syncd.core.message.content_digest`` as one of
    them (body and Date/From/To/Cc/Subject; line ends and added fields such as X-UIDL do not
    count, so sizes do not narrow the candidates), the engine pairs instead of delivering a
    duplicate. It pairs with the first candidate (in the given order) that matches
    and that no earlier Download of the run has paired, and executes
    ``syncd.core.plan.pair_actions(uid, key, local_flags, self.flags, ...)`` for it: the pair is
    recorded and both sides are brought to the union of their flags, exactly as a planned Pair.
    """

    uid: int
    flags: Flags
    size: int | None = None
    pair_candidates: tuple[str, ...] = ()
    # direction: push: fetched only for the content check; when no candidate matches, the
    # message is not delivered (and stays unpaired).
    pair_only: bool = False
    # Outside the window (max_age, max_messages; with pair_only): a content pair is parked
    # (as Pair.outside), its flags left alone.
    outside: bool = False
    # Bigger than max_size: only its header is fetched, and a placeholder delivered
    # (syncd.core.placeholder); never with pair_candidates (those need the whole body).
    placeholder: bool = False


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
    synced flags. Flag differences are carried by SetLocalFlags/PushFlags in the same plan.

    ``flags`` is deliberately the merge *base*, not the target: when the sides differ, the
    SetLocalFlags/PushFlags that follow move both sides to the target and record it. If the run
    stops after the Pair alone, the next three-way merge against this base still yields the
    same target (a target recorded too early would read as a deletion of flags on one side).
    ``size`` and ``message_id`` are stored in the state row so that a later UIDVALIDITY change
    can re-pair the message without reading it again.
    """

    uid: int
    key: str
    flags: Flags
    size: int | None = None
    message_id: str | None = None
    # Parked outside the window (max_age, max_messages): recorded as a pair that is not synced
    # (no flags, no deletions) until the window takes it back. A Pair without it for a parked
    # uid takes it back.
    outside: bool = False
    placeholder: bool = False  # the local file is a placeholder (SyncedMessage.placeholder)


@dataclass(frozen=True, slots=True)
class SetLocalFlags:
    """Rename the local file so its info suffix says ``flags``, then record ``synced`` as the
    state row's synced flags (``None``: record ``flags``).

    When a PushFlags for the same uid follows in the plan, ``synced`` is the server's flags as
    planned: if the run stops between the rename and the push, the next merge (local = target,
    server = synced) still pushes the target instead of reverting the local file. The plan lists
    a uid's SetLocalFlags before its PushFlags; the engine must keep that order.
    """

    uid: int
    key: str
    flags: Flags
    synced: Flags | None = None

    @property
    def synced_flags(self) -> Flags:
        """The flags to record in the state row once the rename is done."""
        return self.flags if self.synced is None else self.synced


@dataclass(frozen=True, slots=True)
class PushFlags:
    """UID STORE on the server: add ``add`` and remove ``remove`` (letters); afterwards the synced
    flags are ``flags`` (under direction: push the local side's, see core.plan)."""

    uid: int
    key: str
    add: Flags
    remove: Flags
    flags: Flags


@dataclass(frozen=True, slots=True)
class RecordFlags:
    """Both sides already carry ``flags`` (each changed the same way, or a UIDVALIDITY re-pair
    found them equal), or, under a one-way direction, the sending side does: only the state
    row's synced flags change. No I/O."""

    uid: int
    key: str
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
    # The local file was a placeholder: a mail reader that moved it into another folder
    # left a copy there that must become a server-side copy of this message before it goes.
    placeholder: bool = False


@dataclass(frozen=True, slots=True)
class FetchFull:
    """Replace the placeholder ``key`` of ``uid`` with the full message, in place (max_size
    raised or removed, or flagged F under fetch_flagged)."""

    uid: int
    key: str


@dataclass(frozen=True, slots=True)
class CopyOriginal:
    """Local placeholder ``key``, which the state does not know (a mail reader copied or moved
    it here), with ``flags``: copy its original into this folder on the server (UID COPY)
    and pair the copy with it. A placeholder is never APPENDed."""

    key: str
    flags: Flags


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the state row of ``uid``/``key``; nothing else.

    Used when the message is gone on both sides, for every old row on a UIDVALIDITY change, and
    before a Download of the same uid when the local folder went missing (the row is stale; the
    message is downloaded afresh).

    ``keep``: a deletion the sync policy does not propagate (README, "Partial mirrors"). The
    message stays on one side only and becomes untracked there: "server" remembers ``uid``
    (deleted locally, kept on the server: never downloaded again), "local" remembers ``key``
    (expunged on the server, kept locally: never uploaded again)."""

    uid: int
    key: str
    keep: str | None = None


Action = (
    Download
    | Upload
    | Pair
    | RecordFlags
    | SetLocalFlags
    | PushFlags
    | DeleteLocal
    | DeleteRemote
    | FetchFull
    | CopyOriginal
    | Forget
)


@dataclass(frozen=True, slots=True)
class FolderPlan:
    """The actions for one folder, in execution order: Forget, Pair, RecordFlags, SetLocalFlags,
    PushFlags, DeleteLocal, DeleteRemote, Download, FetchFull, CopyOriginal, Upload (each kind
    by uid, CopyOriginal and Upload by key).

    The order matters in three places: a Forget precedes a Pair/Download that reuses its key or
    uid (UIDVALIDITY change; missing local folder: ``Forget(uid, old_key)`` then
    ``Download(uid)`` means "drop the stale row, download again"); a uid's SetLocalFlags
    precedes its PushFlags (see SetLocalFlags); Downloads precede the ``unless_paired`` Uploads
    they may pair.
    """

    actions: tuple[Action, ...]
    # Set when the mass-deletion guard held: why, in one sentence. The plan then contains no
    # DeleteRemote actions. Also set when the local folder is missing (policy.local_folder_missing):
    # then its known messages are downloaded again instead of deleted on the server.
    guard: str | None = None

    def count(self, kind: type) -> int:
        return sum(1 for action in self.actions if isinstance(action, kind))

    @property
    def empty(self) -> bool:
        return not self.actions
