"""The pure planner: a folder snapshot in, the actions that bring it into step out.

Nothing here does I/O or reads a clock; the engine gathers the snapshot, calls
``plan_folder`` and executes the plan. Everything is O(n) dictionary work plus one sort per
action kind, so planning stays cheap for large folders.

Decisions worth knowing (docs/architecture.md "What every sync keeps"):

- Flags merge three ways per flag against the last synced flags (``flags.merge``).
- A deletion on one side beats a flag change on the other, in both directions.
- Mass-deletion guard: local files that vanish wholesale are not expunged on the server
  (``FolderPlan.guard`` says why) and their rows are kept, so every later sync re-detects them
  until --force-deletions (``policy.guard_held`` keeps the guard from decaying as new mail adds
  known messages); a missing local folder is never a deletion: its messages are
  downloaded again (``Forget(uid, old_key)`` then ``Download(uid)``), even with
  ``force_deletions``.
- A server message and a local file the state does not know are paired, not transferred, when
  their Message-IDs agree and either their sizes without trace fields (X-TUID, X-UID, Status,
  X-UIDL...: ``syncd.core.message``) agree or their body digests (line ends normalised) do.
  Digests are inputs: ``digests_needed`` names the few messages whose sizes disagree under one
  Message-ID, the engine digests just those, then plans. With no Message-ID on either side the
  engine compares content digests of the downloaded message and the local files
  (``Download.pair_candidates`` / ``Upload.unless_paired``). A fresh pair gets the union of both
  sides' flags (neither side is older); a re-pair after a UIDVALIDITY change merges against the
  old synced flags of the local file.
- UIDVALIDITY change: every old row is forgotten, nothing is deleted anywhere; server messages
  re-pair with local files by content or are downloaded; local files that match nothing are
  uploaded, including ones the old state knew (the server lost them: uploading restores them,
  and it cannot duplicate since no server message matched).
- Flags the server cannot keep (``policy.storable`` lacks them: PERMANENTFLAGS, or refused or
  dropped before) are local-only: never pushed, never reverted locally, and recorded in the
  synced flags as the local side has them, so neither side shows a change next time.
- Sync policy (``policy.direction``/``policy.delete``, README "Partial mirrors"): one way,
  only the receiving side is changed (no Download/SetLocalFlags/DeleteLocal under "push", no
  Upload/PushFlags/DeleteRemote under "pull"), and a pair's row records the sending side's
  flags, so a flag changed on the receiving side keeps its value there. A deletion not
  propagated is not undone: ``Forget(keep=...)`` drops the row and the engine remembers the
  kept copy as untracked (``snapshot.untracked_uids``/``untracked_keys``): never paired,
  downloaded or uploaded again. The mass-deletion guard holds such untracking back as it
  holds deletions back.
- A local deletion whose expunge an earlier sync had to defer (``snapshot.pending_expunge``:
  no UIDPLUS, and other messages were marked \\Deleted) is retried as an expunge only; it is
  neither downloaded again nor counted by the mass-deletion guard (it was decided before).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import NamedTuple

from syncd.core.actions import (
    Action,
    CopyOriginal,
    DeleteLocal,
    DeleteRemote,
    Download,
    FetchFull,
    FolderPlan,
    Forget,
    Pair,
    PushFlags,
    RecordFlags,
    SetLocalFlags,
    Upload,
)
from syncd.core.flags import ALL_LETTERS, LETTER_TO_IMAP, Flags, merge_keeping, normalize
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    Pop3Known,
    Pop3Plan,
    RemoteMessage,
    SyncedMessage,
)

__all__ = [
    "DigestsNeeded",
    "describe",
    "digests_needed",
    "pair_actions",
    "plan_folder",
    "plan_pop3",
    "plan_summary",
]

# Summary keys, in the order the plan lists the kinds.
_KIND_NAMES: dict[type, str] = {
    Forget: "forget",
    Pair: "pair",
    RecordFlags: "record_flags",
    SetLocalFlags: "set_local_flags",
    PushFlags: "push_flags",
    DeleteLocal: "delete_local",
    DeleteRemote: "delete_remote",
    Download: "download",
    FetchFull: "fetch_full",
    CopyOriginal: "copy_original",
    Upload: "upload",
}


@dataclass(slots=True)
class _Out:
    """Actions collected per kind; ``actions()`` sorts each kind and concatenates them."""

    forget: list[Forget] = field(default_factory=list)
    pair: list[Pair] = field(default_factory=list)
    record: list[RecordFlags] = field(default_factory=list)
    set_local: list[SetLocalFlags] = field(default_factory=list)
    push: list[PushFlags] = field(default_factory=list)
    delete_local: list[DeleteLocal] = field(default_factory=list)
    delete_remote: list[DeleteRemote] = field(default_factory=list)
    download: list[Download] = field(default_factory=list)
    fetch_full: list[FetchFull] = field(default_factory=list)
    copy_original: list[CopyOriginal] = field(default_factory=list)
    upload: list[Upload] = field(default_factory=list)

    def add(self, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case Forget():
                    self.forget.append(action)
                case Pair():
                    self.pair.append(action)
                case RecordFlags():
                    self.record.append(action)
                case SetLocalFlags():
                    self.set_local.append(action)
                case PushFlags():
                    self.push.append(action)
                case DeleteLocal():
                    self.delete_local.append(action)
                case DeleteRemote():
                    self.delete_remote.append(action)
                case Download():
                    self.download.append(action)
                case FetchFull():
                    self.fetch_full.append(action)
                case CopyOriginal():
                    self.copy_original.append(action)
                case Upload():
                    self.upload.append(action)

    def actions(self) -> tuple[Action, ...]:
        def by_uid(action: Action) -> tuple[int, str]:
            return (getattr(action, "uid", 0), getattr(action, "key", ""))

        ordered: list[Action] = []
        for group in (self.forget, self.pair, self.record, self.set_local, self.push,
                      self.delete_local, self.delete_remote, self.download,
                      self.fetch_full):
            ordered.extend(sorted(group, key=by_uid))
        ordered.extend(sorted(self.copy_original, key=lambda action: action.key))
        ordered.extend(sorted(self.upload, key=lambda action: action.key))
        return tuple(ordered)


def _union(a: Flags, b: Flags) -> Flags:
    return normalize(set(a) | set(b))


def _common(a: Flags, b: Flags) -> Flags:
    return normalize(set(a) & set(b))


def _minus(a: Flags, b: Flags) -> Flags:
    return normalize(set(a) - set(b))


def _flag_actions(uid: int, key: str, base: Flags, local: Flags, remote: Flags,
                  target: Flags, storable: Flags = ALL_LETTERS,
                  direction: str = "both") -> list[Action]:
    """Bring both sides of a pair from (local, remote) to ``target``; ``base`` is what the state
    row says now. Emits nothing when all four agree. Only ``storable`` letters are compared
    with the server and pushed; the others are the local side's alone.

    One way (``direction`` "pull" or "push") only the receiving side moves to the target, and
    the row records the *sending* side's flags: a change made on the receiving side then stays
    a change against the row at every later merge, so it is kept there and never undone, and
    never sent either."""
    if direction == "pull":
        record = _union(_common(remote, storable), _minus(target, storable))
        if target != local:
            return [SetLocalFlags(uid, key, target, synced=record)]
        return [RecordFlags(uid, key, record)] if record != base else []
    want, have = _common(target, storable), _common(remote, storable)
    push_needed = want != have
    if direction == "push":
        if push_needed:
            return [PushFlags(uid, key, add=_minus(want, have), remove=_minus(have, want),
                              flags=local)]
        return [RecordFlags(uid, key, local)] if local != base else []
    set_needed = target != local
    actions: list[Action] = []
    if set_needed:
        # With a push still to come, record the server's present flags (and the local-only
        # letters of the target): should the run stop between the two, the next merge still
        # yields the target, so the next sync pushes instead of undoing the rename.
        synced = _union(have, _minus(target, storable)) if push_needed else None
        actions.append(SetLocalFlags(uid, key, target, synced=synced))
    if push_needed:
        actions.append(PushFlags(uid, key, add=_minus(want, have), remove=_minus(have, want),
                                 flags=target))
    if not set_needed and not push_needed and target != base:
        actions.append(RecordFlags(uid, key, target))
    return actions


def pair_actions(uid: int, key: str, local_flags: Flags, remote_flags: Flags, *,
                 old_synced: Flags | None = None, size: int | None = None,
                 message_id: str | None = None, storable: Flags = ALL_LETTERS,
                 direction: str = "both", placeholder: bool = False) -> tuple[Action, ...]:
    """Pair server ``uid`` with local ``key`` and bring both to one set of flags.

    Without history (``old_synced`` None) neither side is older, so the target is the union of
    both (mbsync's rule for a fresh pair). With the old synced flags of the local file (a re-pair
    after a UIDVALIDITY change) the target is the usual three-way merge. The engine also calls
    this when a Download's content check pairs with one of its ``pair_candidates``.
    ``direction`` one way: only the receiving side moves (see ``_flag_actions``).
    """
    if old_synced is None:
        # merge(local & remote, local, remote) == local | remote: the intersection is the base
        # that makes a later merge reach the union even if the run stops after the Pair.
        base = _common(local_flags, remote_flags)
        target = merge_keeping(base, local_flags, remote_flags, storable)
    else:
        base = normalize(old_synced)
        target = merge_keeping(base, local_flags, remote_flags, storable)
    if target == local_flags and _common(target, storable) == _common(remote_flags, storable):
        base = target  # nothing to move: record the final flags at once
    return (Pair(uid, key, base, size=size, message_id=message_id, placeholder=placeholder),
            *_flag_actions(uid, key, base, local_flags, remote_flags, target, storable,
                           direction))


@dataclass(frozen=True, slots=True)
class _Unpaired:
    """A local file the (valid) state does not pair, with what identifies its content."""

    message: LocalMessage
    size: int | None  # as the server would count it, without the trace fields (see below)
    message_id: str | None
    old_synced: Flags | None  # the old row's flags (UIDVALIDITY change), else None

    @property
    def key(self) -> str:
        return self.message.key

    @property
    def digest(self) -> str | None:
        return self.message.body_digest


def _content_size(size: int | None, trace_bytes: int) -> int | None:
    """The size without the header fields servers and tools add (syncd.core.message): what
    two copies of one message agree on when one has mbsync's X-TUID or a server's X-UID."""
    return None if size is None else size - trace_bytes


def _fresh(local: LocalMessage, old_synced: Flags | None = None) -> _Unpaired:
    return _Unpaired(local, _content_size(local.size, local.trace_bytes), local.message_id,
                     old_synced)


class _Matching(NamedTuple):
    pairs: list[tuple[RemoteMessage, _Unpaired]]
    remote_left: list[RemoteMessage]  # by uid
    local_left: dict[str, _Unpaired]  # by key


_Identity = Callable[[str | None, int | None, str | None], tuple[object, ...] | None]


def _by_size(message_id: str | None, size: int | None, _digest: str | None
             ) -> tuple[object, ...] | None:
    return (message_id, size) if message_id is not None and size is not None else None


def _by_digest(message_id: str | None, _size: int | None, digest: str | None
               ) -> tuple[object, ...] | None:
    return (message_id, digest) if message_id is not None and digest is not None else None


def _take(queue: deque[_Unpaired] | None, digest: str | None) -> _Unpaired | None:
    """The first entry of ``queue`` that the digests do not tell apart from the message."""
    for entry in queue or ():
        if digest is None or entry.digest is None or entry.digest == digest:
            queue.remove(entry)  # type: ignore[union-attr]
            return entry
    return None


def _pair_pass(remotes: list[RemoteMessage], local_left: dict[str, _Unpaired],
               pairs: list[tuple[RemoteMessage, _Unpaired]], identity: _Identity,
               skip_ids: Set[str] = frozenset()) -> list[RemoteMessage]:
    """Pair each server message with the first unpaired local file of the same identity
    (none under ``skip_ids``); returns the server messages left. Ascending uids meet ascending
    keys, so duplicate Message-IDs pair one to one, in order."""
    queues: dict[tuple[object, ...], deque[_Unpaired]] = {}
    for entry in local_left.values():
        found = identity(entry.message_id, entry.size, entry.digest)
        if found is not None and entry.message_id not in skip_ids:
            queues.setdefault(found, deque()).append(entry)
    left: list[RemoteMessage] = []
    for remote in remotes:
        found = identity(remote.message_id, _content_size(remote.size, remote.trace_bytes),
                         remote.body_digest)
        entry = _take(queues.get(found), remote.body_digest) if found is not None else None
        if entry is None:
            left.append(remote)
            continue
        del local_left[entry.key]
        pairs.append((remote, entry))
    return left


def _ambiguous_ids(remotes: Iterable[RemoteMessage], entries: Iterable[_Unpaired]
                   ) -> frozenset[str]:
    """Message-IDs that more than one server message or more than one local file carries
    (a message twice in a folder, drafts re-saved under one ID), on both sides: a size may
    then pick the wrong one of them, so their digests decide."""
    remote_ids = Counter(m.message_id for m in remotes if m.message_id is not None)
    local_ids = Counter(e.message_id for e in entries if e.message_id is not None)
    return frozenset(mid for mid in remote_ids.keys() & local_ids.keys()
                     if remote_ids[mid] > 1 or local_ids[mid] > 1)


def _match(new_remote: Iterable[RemoteMessage], unpaired: Iterable[_Unpaired], *,
           final: bool = True) -> _Matching:
    """Which new server messages are unpaired local files, cheapest evidence first:
    1. Message-ID and size without trace fields: no content is read (the common case, and
       copies that differ only in X-TUID/X-UID/Status/... fields); not for ambiguous IDs;
    2. Message-ID and body digest (line ends normalised), for the candidates the engine was
       asked to digest (``digests_needed``): a server that stores LF, adds other headers or
       reports an inexact RFC822.SIZE, or an ambiguous ID. Different bodies never pair here;
    3. (``final``) what is left of ambiguous IDs without digests, by size as in 1 (a caller
       that gives no digests gets the plain Message-ID and size rule, one to one in order).
    A digest known on both sides vetoes a size match."""
    local_left = {entry.key: entry for entry in sorted(unpaired, key=lambda e: e.key)}
    remotes = sorted(new_remote, key=lambda m: m.uid)
    pairs: list[tuple[RemoteMessage, _Unpaired]] = []
    ambiguous = _ambiguous_ids(remotes, local_left.values())
    remote_left = _pair_pass(remotes, local_left, pairs, _by_size, ambiguous)
    remote_left = _pair_pass(remote_left, local_left, pairs, _by_digest)
    if final and ambiguous:
        remote_left = _pair_pass(remote_left, local_left, pairs, _by_size)
    return _Matching(pairs, remote_left, local_left)


def _match_new(out: _Out, new_remote: Iterable[RemoteMessage],
               unpaired: Iterable[_Unpaired], policy: FolderPolicy,
               window: Set[int] | None = None) -> None:
    """Rules 4 and 5: pair new server messages with unpaired local files, download the rest,
    upload the local files left over. One way, the other side's leftovers wait (not
    transferred, not untracked: they may still pair later)."""
    storable = policy.storable
    matching = _match(new_remote, unpaired)
    for remote, entry in matching.pairs:
        if window is not None and remote.uid not in window:
            # The same message outside the window: parked as a pair (never uploaded again,
            # never synced until the window holds it).
            out.add((Pair(remote.uid, entry.key, _common(entry.message.flags, remote.flags),
                          size=remote.size, message_id=remote.message_id, outside=True,
                          placeholder=entry.message.placeholder),))
            continue
        out.add(pair_actions(remote.uid, entry.key, entry.message.flags, remote.flags,
                             old_synced=entry.old_synced, size=remote.size,
                             message_id=remote.message_id, storable=storable,
                             direction=policy.direction,
                             placeholder=entry.message.placeholder))
    # Without a Message-ID the engine decides from the downloaded message (its content digest,
    # which survives line ends and added headers): any local file without one may be it.
    # Sizes do not narrow this down, as added headers change them. One shared tuple. (Not a
    # placeholder: its body is not the message's.)
    no_id = tuple(key for key, entry in matching.local_left.items()
                  if entry.message_id is None and entry.size is not None
                  and not entry.message.placeholder)
    any_no_id_remote = False
    for remote in matching.remote_left:
        candidates = no_id if remote.message_id is None else ()
        outside = window is not None and remote.uid not in window
        if (outside or not policy.to_local) and not (candidates and policy.to_server):
            # Outside the window, or push: server mail is not downloaded (only compared with
            # local files about to be uploaded).
            continue
        any_no_id_remote = any_no_id_remote or bool(candidates)
        # outside the window or push: fetched only to compare with the local files (never
        # delivered), so that an upload cannot duplicate it
        out.add((_download(remote.uid, remote.flags, remote.size, policy,
                           candidates=candidates, pair_only=outside or not policy.to_local,
                           outside=outside),))
    if not policy.to_server:
        return  # pull: local files are not uploaded
    maybe_paired = set(no_id) if any_no_id_remote else set()
    for key, entry in matching.local_left.items():
        if entry.message.placeholder:
            # Never uploaded: copied from its original on the server (a mail reader moved or
            # copied it here).
            out.add((CopyOriginal(key, entry.message.flags),))
        else:
            out.add((Upload(key, entry.message.flags, unless_paired=key in maybe_paired),))


def _download(uid: int, flags: Flags, size: int | None, policy: FolderPolicy, *,
              candidates: tuple[str, ...] = (), pair_only: bool = False,
              outside: bool = False) -> Download:
    """A Download, as a placeholder when the message is bigger than max_size and nothing
    needs its whole body (a content comparison)."""
    big = (policy.max_size is not None and size is not None and size > policy.max_size
           and not candidates and not pair_only)
    return Download(uid, flags, size=size, pair_candidates=candidates, pair_only=pair_only,
                    outside=outside, placeholder=big)


def _wants_full(row: SyncedMessage, target: Flags, policy: FolderPolicy) -> bool:
    """A placeholder whose full message the policy now wants: max_size raised past it (or
    removed), or flagged F under fetch_flagged."""
    if policy.max_size is None or (row.size is not None and row.size <= policy.max_size):
        return True
    return policy.fetch_flagged and "F" in target


class DigestsNeeded(NamedTuple):
    """The server messages (BODY[TEXT]) and local files whose ``body_digest`` would let
    ``plan_folder`` pair them: the same Message-ID on both sides, and sizes that disagree or
    an ID more than one message carries."""

    uids: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.uids or self.keys)


def digests_needed(snapshot: FolderSnapshot) -> DigestsNeeded:
    """What the engine should digest before planning (``body_digest`` of RemoteMessage and
    LocalMessage). Nothing when Message-ID and size settle every pairing: an initial sync into
    an empty Maildir, new mail on one side, or copies that differ only in trace fields."""
    new_remote, unpaired = _unpaired(snapshot)
    matching = _match(new_remote, unpaired, final=False)
    local_ids = {entry.message_id for entry in matching.local_left.values()}
    remote_ids = {remote.message_id for remote in matching.remote_left}
    return DigestsNeeded(
        uids=tuple(remote.uid for remote in matching.remote_left
                   if remote.message_id is not None and remote.message_id in local_ids
                   and remote.body_digest is None),
        keys=tuple(key for key, entry in matching.local_left.items()
                   if entry.message_id is not None and entry.message_id in remote_ids
                   and entry.digest is None and not entry.message.placeholder))


def _unpaired(snapshot: FolderSnapshot) -> tuple[list[RemoteMessage], list[_Unpaired]]:
    """The server messages and local files that no state row pairs (all of them after a
    UIDVALIDITY change)."""
    skip_keys = snapshot.untracked_keys
    if snapshot.uidvalidity_changed:
        # The untracked UIDs are void with the rest; untracked local files stay untracked.
        old_by_key = {row.key: row for row in (*snapshot.outside, *snapshot.synced)}
        return list(snapshot.remote), [_reset_entry(m, old_by_key.get(m.key))
                                       for m in snapshot.local if m.key not in skip_keys]
    rows = (*snapshot.synced, *snapshot.outside)
    synced_uids = {row.uid for row in rows} | snapshot.untracked_uids
    synced_keys = {row.key for row in rows} | skip_keys
    return ([m for m in snapshot.remote if m.uid not in synced_uids],
            [_fresh(m) for m in snapshot.local if m.key not in synced_keys])


def _reset_entry(local: LocalMessage, old: SyncedMessage | None) -> _Unpaired:
    """A local file after a UIDVALIDITY change, identified by what was read of it, else by
    what its old row recorded (the server's size then: no trace fields known)."""
    if local.size is not None or old is None:
        return _fresh(local, old.flags if old else None)
    return _Unpaired(local, old.size, old.message_id, old.flags)


def _guard_reason(vanished: int, known: int, policy: FolderPolicy) -> str | None:
    """Why local deletions must not reach the server, or None when they may."""
    if vanished == 0 or policy.force_deletions:
        return None
    if policy.guard_held or (vanished >= policy.guard_min_count
                             and vanished > policy.guard_share * known):
        what = ("not deleting them on the server" if policy.deletes_remote
                else "still tracking them")
        return (f"{vanished} of {known} known messages vanished locally; {what} (use "
                "--force-deletions to confirm)")
    return None


def _missing_reason(count: int) -> str:
    noun = "message is" if count == 1 else "messages are"
    return (f"the local folder is missing; its {count} known {noun} kept on the server and "
            "downloaded again")


def _plan_incremental(snapshot: FolderSnapshot, out: _Out) -> str | None:
    policy = snapshot.policy
    local_by_key = {m.key: m for m in snapshot.local}
    remote_by_uid = {m.uid: m for m in snapshot.remote}
    synced_uids: set[int] = set()
    synced_keys: set[str] = set()
    vanished: list[tuple[SyncedMessage, RemoteMessage]] = []
    retried = 0  # deferred expunges retried (decided at an earlier sync: not for the guard)
    storable = policy.storable
    window = snapshot.window
    for row in snapshot.outside:
        synced_uids.add(row.uid)
        synced_keys.add(row.key)
        _plan_outside(row, remote_by_uid.get(row.uid), local_by_key.get(row.key), snapshot,
                      out)

    for row in snapshot.synced:
        synced_uids.add(row.uid)
        synced_keys.add(row.key)
        remote = remote_by_uid.get(row.uid)
        local = local_by_key.get(row.key)
        if remote is not None and window is not None and row.uid not in window:
            # The window moved past it: parked, both copies left as they are (never a
            # deletion because of the window); with no local copy left, simply forgotten
            # (widening the window downloads it again).
            if local is None:
                out.add((Forget(row.uid, row.key),))
            else:
                out.add((Pair(row.uid, row.key, row.flags, size=row.size,
                              message_id=row.message_id, outside=True,
                              placeholder=row.placeholder),))
        elif remote is None:
            # Expunged on the server: that wins over any local flag change. Not propagated,
            # the local file stays, untracked.
            if local is None:
                out.add((Forget(row.uid, row.key),))
            elif policy.deletes_local:
                out.add((DeleteLocal(row.uid, row.key),))
            else:
                out.add((Forget(row.uid, row.key, keep="local"),))
        elif local is None and row.uid in snapshot.pending_expunge and not policy.deletes_remote:
            # Decided under a policy that deleted on the server; this one does not.
            out.add((Forget(row.uid, row.key, keep="server"),))
            retried += 1
        elif local is None and row.uid in snapshot.pending_expunge:
            # Marked \Deleted (and copied to the trash, for a move) by an earlier sync: only
            # the expunge is left. Never downloaded again, never moved twice.
            out.add((DeleteRemote(row.uid, row.key, placeholder=row.placeholder),))
            retried += 1
        elif local is None:
            vanished.append((row, remote))  # decided below, all together (the guard)
        else:
            target = merge_keeping(row.flags, local.flags, remote.flags, storable)
            out.add(_flag_actions(row.uid, row.key, row.flags, local.flags, remote.flags,
                                  target, storable, policy.direction))
            if row.placeholder and policy.to_local and _wants_full(row, target, policy):
                out.add((FetchFull(row.uid, row.key),))

    guard: str | None = None
    if vanished and policy.local_folder_missing and not policy.to_local:
        # push: the Maildir is not written, so nothing is downloaded again; nor is anything
        # deleted on the server: the server copies stay there, untracked.
        guard = (f"the local folder is missing; its {len(vanished)} known message(s) are "
                 "kept on the server and not downloaded (direction: push)")
        out.add(Forget(row.uid, row.key, keep="server") for row, _ in vanished)
    elif vanished and policy.local_folder_missing:
        # Not a deletion: the directory (or the whole maildir) is gone. Drop the stale rows and
        # fetch the messages again; force_deletions does not change this.
        guard = _missing_reason(len(vanished))
        for row, remote in vanished:
            out.add((Forget(row.uid, row.key),
                     _download(remote.uid, remote.flags,
                               remote.size if remote.size is not None else row.size, policy)))
    else:
        guard = _guard_reason(len(vanished), len(snapshot.synced) - retried, policy)
        if guard is None and policy.deletes_remote:
            # The local deletion wins over a server-side flag change.
            out.add(DeleteRemote(row.uid, row.key, trash_folder=policy.trash_folder,
                                 placeholder=row.placeholder)
                    for row, _ in vanished)
        elif guard is None:
            # Not propagated: kept on the server, untracked (never downloaded again).
            out.add(Forget(row.uid, row.key, keep="server") for row, _ in vanished)
        # else: keep the rows untouched, so the next sync detects the same deletions again and
        # the user can confirm them with --force-deletions.

    skip_uids, skip_keys = snapshot.untracked_uids, snapshot.untracked_keys
    new_remote = (m for m in snapshot.remote if m.uid not in synced_uids
                  and m.uid not in skip_uids)
    unpaired = (_fresh(m) for m in snapshot.local if m.key not in synced_keys
                and m.key not in skip_keys)
    _match_new(out, new_remote, unpaired, policy, window)
    return guard


def _plan_outside(row: SyncedMessage, remote: RemoteMessage | None,
                  local: LocalMessage | None, snapshot: FolderSnapshot, out: _Out) -> None:
    """A pair parked outside the window: taken back when the window holds it again (paired
    again, or downloaded again if the local copy went meanwhile); dropped when its local copy
    went while outside (nothing deleted anywhere); untracked locally when the server expunged
    it (the local copy stays, never uploaded)."""
    window = snapshot.window
    inside = remote is not None and (window is None or row.uid in window)
    policy = snapshot.policy
    if inside and local is not None:
        assert remote is not None
        out.add(pair_actions(row.uid, row.key, local.flags, remote.flags,
                             old_synced=row.flags, size=row.size, message_id=row.message_id,
                             storable=policy.storable, direction=policy.direction,
                             placeholder=row.placeholder))
    elif inside and policy.to_local:
        assert remote is not None
        out.add((Forget(row.uid, row.key),
                 _download(row.uid, remote.flags,
                           remote.size if remote.size is not None else row.size, policy)))
    elif remote is None and local is not None:
        out.add((Forget(row.uid, row.key, keep="local"),))
    elif local is None and not inside:
        out.add((Forget(row.uid, row.key),))
    # else: still outside (or push, inside with no local copy: left parked)


def _plan_uidvalidity(snapshot: FolderSnapshot, out: _Out) -> str | None:
    # Every old UID is void, so nothing can be deleted on either side: a server message we do
    # not find again may just have been renumbered beyond recognition.
    out.add(Forget(row.uid, row.key) for row in snapshot.synced)
    # (the parked pairs are void too: the engine drops them with the rows)
    _match_new(out, *_unpaired(snapshot), snapshot.policy, snapshot.window)
    if snapshot.policy.local_folder_missing and snapshot.synced:
        return _missing_reason(len(snapshot.synced))
    return None


def plan_folder(snapshot: FolderSnapshot) -> FolderPlan:
    """The actions that bring one folder into step; see the module docstring for the rules.

    A plan computed right after a perfectly executed plan is empty (idempotency), except for a
    guard that still holds: then the plan repeats the guard's reason and has no actions for the
    guarded messages.
    """
    out = _Out()
    if snapshot.uidvalidity_changed:
        guard = _plan_uidvalidity(snapshot, out)
    else:
        guard = _plan_incremental(snapshot, out)
    return FolderPlan(actions=out.actions(), guard=guard)


def plan_summary(plan: FolderPlan) -> dict[str, int]:
    """Count per action kind; every kind is present (zero when absent), in plan order."""
    counts = dict.fromkeys(_KIND_NAMES.values(), 0)
    for action in plan.actions:
        counts[_KIND_NAMES[type(action)]] += 1
    return counts


def _imap_names(letters: Flags) -> str:
    return " ".join(LETTER_TO_IMAP[letter] for letter in normalize(letters))


def _flags_text(letters: Flags) -> str:
    return f"flags {letters}" if letters else "no flags"


def _describe_action(action: Action) -> str:
    match action:
        case Download() if action.placeholder:
            return (f"download UID {action.uid} as a placeholder ({action.size} bytes, more "
                    f"than max_size; its header only) with {_flags_text(action.flags)}")
        case FetchFull():
            return f"replace placeholder {action.key} with the full message of UID {action.uid}"
        case CopyOriginal():
            return (f"copy the original of placeholder {action.key} into this folder on the "
                    f"server with {_flags_text(action.flags)} (never uploaded)")
        case Download():
            text = f"download UID {action.uid}"
            if action.size is not None:
                text += f" ({action.size} bytes)"
            text += f" with {_flags_text(action.flags)}"
            if action.pair_only:
                text = (f"compare UID {action.uid} with {len(action.pair_candidates)} local "
                        "file(s) and pair it if the content is the same (not downloaded)")
            elif action.pair_candidates:
                text += (f", or pair it with one of {len(action.pair_candidates)} local file(s) "
                         "if the content is the same")
            return text
        case Upload():
            text = f"upload {action.key} with {_flags_text(action.flags)}"
            if action.unless_paired:
                text += ", unless a downloaded message turns out to be the same"
            return text
        case Pair() if action.outside:
            return (f"park UID {action.uid} / {action.key} outside the window (kept on both "
                    "sides, not synced)")
        case Pair():
            return f"pair UID {action.uid} with local {action.key} (already on both sides)"
        case RecordFlags():
            return (f"record {_flags_text(action.flags)} for UID {action.uid} "
                    "(both sides already agree)")
        case SetLocalFlags():
            return f"set local {action.key} (UID {action.uid}) to {_flags_text(action.flags)}"
        case PushFlags():
            changes = []
            if action.add:
                changes.append(f"add {_imap_names(action.add)}")
            if action.remove:
                changes.append(f"remove {_imap_names(action.remove)}")
            return f"server UID {action.uid}: {', '.join(changes)}"
        case DeleteLocal():
            return f"delete local {action.key} (UID {action.uid} was expunged on the server)"
        case DeleteRemote():
            where = (f"move UID {action.uid} to {action.trash_folder}" if action.trash_folder
                     else f"expunge UID {action.uid} on the server")
            return f"{where} ({action.key} was deleted locally)"
        case Forget() if action.keep == "server":
            return (f"untrack UID {action.uid} ({action.key} was deleted locally; kept on the "
                    "server, not downloaded again)")
        case Forget() if action.keep == "local":
            return (f"untrack local {action.key} (UID {action.uid} was expunged on the server; "
                    "kept locally, not uploaded again)")
        case Forget():
            return f"forget UID {action.uid} / {action.key} (state only)"
    raise TypeError(f"not an action: {action!r}")  # pragma: no cover


def describe(plan: FolderPlan) -> list[str]:
    """Human lines for ``--dry-run``: the guard first (if any), then one line per action."""
    lines = [f"not propagated: {plan.guard}"] if plan.guard else []
    lines.extend(_describe_action(action) for action in plan.actions)
    return lines


def plan_pop3(listed: Sequence[tuple[int, str, int]], known: Mapping[str, Pop3Known], *,
              leave_on_server: bool, delete_after: float | None, now: float,
              max_message_size: int | None, max_messages: int | None) -> Pop3Plan:
    """Decide one POP3 session from its UIDL/LIST listing ``(msgnum, uidl, size)``.

    A UIDL already delivered is never retrieved again. Without ``leave_on_server`` delivered
    messages are deleted (those still listed: a previous DELE never reached QUIT) and new ones
    are deleted right after delivery (``delete_retrieved``). With it, delivered messages are
    deleted only once older than ``delete_after`` seconds (never when None). A UIDL listed twice
    (a broken server) is handled once: the first listing wins, the others are left alone.
    ``max_messages`` bounds retrievals per session; the rest wait for the next one.
    """
    retrieve: list[int] = []
    delete_only: list[int] = []
    too_big: list[tuple[int, str, int]] = []
    seen: set[str] = set()
    for msgnum, uidl, size in sorted(listed):
        if uidl in seen:
            continue
        seen.add(uidl)
        record = known.get(uidl)
        if record is not None:
            if record.deleted or not leave_on_server or (
                    delete_after is not None and now - record.downloaded_at > delete_after):
                delete_only.append(msgnum)
        elif max_message_size is not None and size > max_message_size:
            too_big.append((msgnum, uidl, size))
        elif max_messages is None or len(retrieve) < max_messages:
            retrieve.append(msgnum)
    return Pop3Plan(retrieve=tuple(retrieve), delete_only=tuple(delete_only),
                    skipped_too_big=tuple(too_big), delete_retrieved=not leave_on_server)
