"""Planner scenario tables, in the spirit of isync's run-tests.pl.

Each row: the state (synced), the local folder, the server folder -> the exact plan. Every
scenario is also executed by a small snapshot-level applier and re-planned: the second plan
must be empty (idempotency).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.core.actions import (
    Action,
    DeleteLocal,
    DeleteRemote,
    Download,
    FolderPlan,
    Forget,
    Pair,
    PushFlags,
    RecordFlags,
    SetLocalFlags,
    Upload,
)
from syncd.core.flags import merge, normalize
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    Pop3Known,
    Pop3Plan,
    RemoteMessage,
    SyncedMessage,
)
from syncd.core.plan import (
    DigestsNeeded,
    describe,
    digests_needed,
    pair_actions,
    plan_folder,
    plan_pop3,
    plan_summary,
)

S, L, R = SyncedMessage, LocalMessage, RemoteMessage


def snap(synced: tuple[SyncedMessage, ...] | list[SyncedMessage] = (),
         local: tuple[LocalMessage, ...] | list[LocalMessage] = (),
         remote: tuple[RemoteMessage, ...] | list[RemoteMessage] = (),
         *, uidvalidity_changed: bool = False, **policy: object) -> FolderSnapshot:
    return FolderSnapshot(tuple(synced), tuple(local), tuple(remote),
                          uidvalidity_changed=uidvalidity_changed,
                          policy=FolderPolicy(**policy))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# A snapshot-level executor: applies a plan the way the engine does, on plain dicts.


@dataclass
class Folder:
    synced: dict[int, SyncedMessage] = field(default_factory=dict)
    local: dict[str, LocalMessage] = field(default_factory=dict)  # always fully filled
    remote: dict[int, RemoteMessage] = field(default_factory=dict)  # always fully filled
    trash: list[RemoteMessage] = field(default_factory=list)
    policy: FolderPolicy = field(default_factory=FolderPolicy)
    # (uid, key) whose content is byte-identical although neither has a Message-ID
    same_content: set[tuple[int, str]] = field(default_factory=set)

    @classmethod
    def from_snapshot(cls, snapshot: FolderSnapshot,
                      same_content: set[tuple[int, str]] | None = None) -> Folder:
        return cls(
            synced={} if snapshot.uidvalidity_changed else {m.uid: m for m in snapshot.synced},
            local={m.key: m for m in snapshot.local},
            remote={m.uid: m for m in snapshot.remote},
            policy=snapshot.policy._replace(local_folder_missing=False),
            same_content=same_content or set(),
        )

    def snapshot(self) -> FolderSnapshot:
        """What the engine would hand the planner: size/Message-ID only for unknown messages."""
        keys = {row.key for row in self.synced.values()}
        local = tuple(m if m.key not in keys else L(m.key, m.flags) for m in self.local.values())
        remote = tuple(m if m.uid not in self.synced else R(m.uid, m.flags)
                       for m in self.remote.values())
        return FolderSnapshot(tuple(self.synced.values()), local, remote, policy=self.policy)

    def apply(self, plan: FolderPlan) -> None:
        paired_by_content: set[str] = set()
        for action in plan.actions:
            self._apply(action, paired_by_content)

    def _set_synced_flags(self, uid: int, flags: str) -> None:
        self.synced[uid] = self.synced[uid]._replace(flags=flags)

    def _apply(self, action: Action, paired_by_content: set[str]) -> None:
        match action:
            case Forget(uid, key):
                if uid in self.synced and self.synced[uid].key == key:
                    del self.synced[uid]
            case Pair(uid, key, flags, size, message_id):
                assert uid in self.remote and key in self.local
                assert all(row.key != key for row in self.synced.values())
                self.synced[uid] = S(uid, key, flags, size, message_id)
            case RecordFlags(uid, key, flags):
                assert self.local[key].flags == self.remote[uid].flags == flags
                self._set_synced_flags(uid, flags)
            case SetLocalFlags(uid, key, flags):
                self.local[key] = self.local[key]._replace(flags=flags)
                self._set_synced_flags(uid, action.synced_flags)
            case PushFlags(uid, key, add, remove, flags):
                old = self.remote[uid].flags
                new = normalize((set(old) | set(add)) - set(remove))
                assert new == flags, (old, action)
                self.remote[uid] = self.remote[uid]._replace(flags=new)
                self._set_synced_flags(uid, flags)
            case DeleteLocal(uid, key):
                del self.local[key]
                del self.synced[uid]
            case DeleteRemote(uid, key, trash_folder):
                message = self.remote.pop(uid)
                if trash_folder:
                    self.trash.append(message)
                del self.synced[uid]
            case Download(uid, flags, size, candidates):
                message = self.remote[uid]
                for key in candidates:
                    if key not in paired_by_content and (uid, key) in self.same_content:
                        paired_by_content.add(key)
                        for follow in pair_actions(uid, key, self.local[key].flags, flags,
                                                   size=size):
                            self._apply(follow, paired_by_content)
                        return
                key = f"dl-{uid}"
                assert key not in self.local
                self.local[key] = L(key, flags, message.size, message.message_id)
                self.synced[uid] = S(uid, key, flags, message.size, message.message_id)
            case Upload(key, flags, unless_paired):
                if unless_paired and key in paired_by_content:
                    return
                message = self.local[key]
                uid = max([*self.remote, *self.synced, 0]) + 1
                self.remote[uid] = R(uid, flags, message.size, message.message_id)
                self.synced[uid] = S(uid, key, flags, message.size, message.message_id)

    def assert_converged(self) -> None:
        assert len(self.synced) == len(self.local) == len(self.remote)
        for row in self.synced.values():
            assert self.local[row.key].flags == self.remote[row.uid].flags == row.flags


def assert_idempotent(snapshot: FolderSnapshot, *, converged: bool = True,
                      same_content: set[tuple[int, str]] | None = None) -> Folder:
    folder = Folder.from_snapshot(snapshot, same_content)
    first = plan_folder(snapshot)
    folder.apply(first)
    # what the engine remembers for the next sync of this folder
    folder.policy = folder.policy._replace(guard_held=first.guard is not None
                            and not snapshot.policy.local_folder_missing)
    second = plan_folder(folder.snapshot())
    assert second.actions == (), second
    if converged:
        assert second.guard is None
        folder.assert_converged()
    return folder


# --------------------------------------------------------------------------------------------
# The scenario table


SCENARIOS: list[tuple[str, FolderSnapshot, list[Action]]] = [
    ("nothing", snap(), []),
    ("in step", snap([S(1, "a", "S")], [L("a", "S")], [R(1, "S")]), []),
    ("new on server",
     snap(remote=[R(1, "S", 10, "<a@x>")]),
     [Download(1, "S", 10)]),
    ("new local",
     snap(local=[L("a", "RS", 10, "<a@x>")]),
     [Upload("a", "RS")]),
    ("new flagless local",
     snap(local=[L("a", "", 10, "<a@x>")]),
     [Upload("a", "")]),
    ("new on both sides, different messages",
     snap(local=[L("b", "", 20, "<b@x>")], remote=[R(1, "", 10, "<a@x>")]),
     [Download(1, "", 10), Upload("b", "")]),
    ("flag added locally",
     snap([S(1, "a", "")], [L("a", "S")], [R(1, "")]),
     [PushFlags(1, "a", add="S", remove="", flags="S")]),
    ("flag added on server",
     snap([S(1, "a", "")], [L("a", "")], [R(1, "S")]),
     [SetLocalFlags(1, "a", "S")]),
    ("flag removed locally",
     snap([S(1, "a", "FS")], [L("a", "F")], [R(1, "FS")]),
     [PushFlags(1, "a", add="", remove="S", flags="F")]),
    ("flag removed on server",
     snap([S(1, "a", "FS")], [L("a", "FS")], [R(1, "F")]),
     [SetLocalFlags(1, "a", "F")]),
    ("same change on both sides",
     snap([S(1, "a", "")], [L("a", "RS")], [R(1, "RS")]),
     [RecordFlags(1, "a", "RS")]),
    ("same removal on both sides",
     snap([S(1, "a", "FS")], [L("a", "S")], [R(1, "S")]),
     [RecordFlags(1, "a", "S")]),
    ("different changes on each side merge per flag",
     snap([S(1, "a", "S")], [L("a", "FS")], [R(1, "")]),
     [SetLocalFlags(1, "a", "F", synced=""), PushFlags(1, "a", add="F", remove="", flags="F")]),
    ("conflicting flags: local +F, server -S +R",
     snap([S(1, "a", "S")], [L("a", "FS")], [R(1, "R")]),
     [SetLocalFlags(1, "a", "FR", synced="R"),
      PushFlags(1, "a", add="F", remove="", flags="FR")]),
    ("T is just a flag (local)",
     snap([S(1, "a", "S")], [L("a", "ST")], [R(1, "S")]),
     [PushFlags(1, "a", add="T", remove="", flags="ST")]),
    ("T is just a flag (server)",
     snap([S(1, "a", "S")], [L("a", "S")], [R(1, "ST")]),
     [SetLocalFlags(1, "a", "ST")]),
    ("T removed on server",
     snap([S(1, "a", "T")], [L("a", "T")], [R(1, "")]),
     [SetLocalFlags(1, "a", "")]),
    ("expunged on server",
     snap([S(1, "a", "S")], [L("a", "S")], []),
     [DeleteLocal(1, "a")]),
    ("expunged on server beats a local flag change",
     snap([S(1, "a", "S")], [L("a", "FS")], []),
     [DeleteLocal(1, "a")]),
    ("deleted locally",
     snap([S(1, "a", "S")], [], [R(1, "S")]),
     [DeleteRemote(1, "a")]),
    ("deleted locally beats a server flag change",
     snap([S(1, "a", "S")], [], [R(1, "FS")]),
     [DeleteRemote(1, "a")]),
    ("deleted locally, trash folder",
     snap([S(1, "a", "S")], [], [R(1, "S")], trash_folder="Trash"),
     [DeleteRemote(1, "a", trash_folder="Trash")]),
    ("deleted on both sides",
     snap([S(1, "a", "S")], [], []),
     [Forget(1, "a")]),
    ("first sync: same message on both sides pairs by Message-ID and size",
     snap(local=[L("a", "S", 10, "<a@x>")], remote=[R(7, "S", 10, "<a@x>")]),
     [Pair(7, "a", "S", 10, "<a@x>")]),
    ("fresh pair takes the union of both sides' flags",
     snap(local=[L("a", "RS", 10, "<a@x>")], remote=[R(7, "FS", 10, "<a@x>")]),
     [Pair(7, "a", "S", 10, "<a@x>"), SetLocalFlags(7, "a", "FRS", synced="FS"),
      PushFlags(7, "a", add="R", remove="", flags="FRS")]),
    ("fresh pair, only the server lacks flags",
     snap(local=[L("a", "S", 10, "<a@x>")], remote=[R(7, "", 10, "<a@x>")]),
     [Pair(7, "a", "", 10, "<a@x>"), PushFlags(7, "a", add="S", remove="", flags="S")]),
    ("same Message-ID, other size: not the same message",
     snap(local=[L("a", "", 11, "<a@x>")], remote=[R(7, "", 10, "<a@x>")]),
     [Download(7, "", 10), Upload("a", "")]),
    ("duplicate Message-IDs pair in order",
     snap(local=[L("k2", "", 10, "<d@x>"), L("k1", "S", 10, "<d@x>")],
          remote=[R(9, "S", 10, "<d@x>"), R(5, "", 10, "<d@x>")]),
     [Pair(5, "k1", "", 10, "<d@x>"), Pair(9, "k2", "", 10, "<d@x>"),
      SetLocalFlags(9, "k2", "S"), PushFlags(5, "k1", add="S", remove="", flags="S")]),
    # Any size: a header a server or tool added (X-UIDL, ...) changes it.
    ("no Message-ID: every local file without one is a content candidate",
     snap(local=[L("k1", "", 10, None), L("k2", "S", 10, None), L("k3", "", 11, None),
                 L("k4", "", 10, "<x@x>")],
          remote=[R(3, "", 10, None)]),
     [Download(3, "", 10, pair_candidates=("k1", "k2", "k3")),
      Upload("k1", "", unless_paired=True), Upload("k2", "S", unless_paired=True),
      Upload("k3", "", unless_paired=True), Upload("k4", "")]),
    ("server has a Message-ID, local not: no candidates",
     snap(local=[L("k1", "", 10, None)], remote=[R(3, "", 10, "<a@x>")]),
     [Download(3, "", 10), Upload("k1", "")]),
]
SCENARIOS.append((
    "every kind at once, in order",
    snap([S(1, "a", "S"), S(2, "b", ""), S(3, "c", ""), S(4, "d", ""), S(5, "e", ""),
          S(6, "f", "S"), S(7, "g", "")],
         [L("a", "S"), L("b", "S"), L("c", ""), L("d", ""), L("f", "F"),
          L("n", "", 5, "<n@x>"), L("p", "", 6, "<p@x>")],
         [R(1, "S"), R(2, "S"), R(3, "F"), R(5, ""), R(6, "RS"), R(8, "", 7, "<m@x>"),
          R(9, "", 6, "<p@x>")]),
    [Forget(7, "g"),  # gone on both sides
     Pair(9, "p", "", 6, "<p@x>"),  # same message, new on both sides
     RecordFlags(2, "b", "S"),  # both sides added S
     SetLocalFlags(3, "c", "F"),  # server added F
     SetLocalFlags(6, "f", "FR", synced="RS"),  # local -S +F, server +R
     PushFlags(6, "f", add="F", remove="S", flags="FR"),
     DeleteLocal(4, "d"),  # expunged on the server
     DeleteRemote(5, "e"),  # deleted locally (1 of 7: below the guard)
     Download(8, "", 7),  # new on the server
     Upload("n", "")],  # new locally
))


@pytest.mark.parametrize(("snapshot", "expected"), [row[1:] for row in SCENARIOS],
                         ids=[row[0] for row in SCENARIOS])
def test_scenario(snapshot: FolderSnapshot, expected: list[Action]) -> None:
    plan = plan_folder(snapshot)
    assert list(plan.actions) == expected
    assert plan.guard is None


@pytest.mark.parametrize("snapshot", [row[1] for row in SCENARIOS],
                         ids=[row[0] for row in SCENARIOS])
def test_scenario_idempotent(snapshot: FolderSnapshot) -> None:
    assert_idempotent(snapshot)


def test_content_candidates_pair_once() -> None:
    """Two same-size messages without Message-ID on each side: the engine's content check pairs
    each with its twin and no Upload happens; flags end as the union."""
    snapshot = snap(local=[L("k1", "S", 10, None), L("k2", "", 10, None)],
                    remote=[R(1, "F", 10, None), R(2, "", 10, None)])
    plan = plan_folder(snapshot)
    assert plan.actions == (Download(1, "F", 10, ("k1", "k2")), Download(2, "", 10, ("k1", "k2")),
                            Upload("k1", "S", unless_paired=True),
                            Upload("k2", "", unless_paired=True))
    folder = assert_idempotent(snapshot, same_content={(1, "k1"), (2, "k2")})
    assert set(folder.local) == {"k1", "k2"} and set(folder.remote) == {1, 2}
    assert folder.local["k1"].flags == folder.remote[1].flags == "FS"


# --------------------------------------------------------------------------------------------
# Crash safety of flag actions: stopping after any prefix of a message's actions, the next plan
# still reaches the same flags (nothing reverted).


@pytest.mark.parametrize(
    ("synced", "local", "remote"),
    [("S", "FS", ""), ("S", "FS", "R"), ("FS", "F", "FRS"), ("", "T", "S")],
)
def test_flag_actions_survive_interruption(synced: str, local: str, remote: str) -> None:
    target = merge(synced, local, remote)
    snapshot = snap([S(1, "a", synced)], [L("a", local)], [R(1, remote)])
    actions = plan_folder(snapshot).actions
    for stop in range(len(actions) + 1):
        folder = Folder.from_snapshot(snapshot)
        folder.apply(FolderPlan(actions[:stop]))
        folder.apply(plan_folder(folder.snapshot()))
        assert folder.local["a"].flags == folder.remote[1].flags == target


@pytest.mark.parametrize(("local", "remote", "old"),
                         [("S", "F", None), ("RS", "", None), ("F", "FRS", "FS"), ("", "S", "S")])
def test_pair_survives_interruption(local: str, remote: str, old: str | None) -> None:
    actions = pair_actions(1, "a", local, remote, old_synced=old, size=1)
    target = merge(old, local, remote) if old is not None else normalize(local + remote)
    for stop in range(1, len(actions) + 1):
        folder = Folder(local={"a": L("a", local, 1)}, remote={1: R(1, remote, 1)})
        folder.apply(FolderPlan(actions[:stop]))
        folder.apply(plan_folder(folder.snapshot()))
        assert folder.local["a"].flags == folder.remote[1].flags == target


# --------------------------------------------------------------------------------------------
# Mass-deletion guard


def _known(n: int, present: int, **policy: object) -> FolderSnapshot:
    """n known messages, all on the server; only the first ``present`` still local."""
    synced = [S(i, f"k{i:03d}", "S", 100 + i, f"<{i}@x>") for i in range(1, n + 1)]
    local = [L(f"k{i:03d}", "S") for i in range(1, present + 1)]
    remote = [R(i, "S") for i in range(1, n + 1)]
    return snap(synced, local, remote, **policy)


@pytest.mark.parametrize(
    ("known", "vanished", "policy", "guarded"),
    [
        (10, 5, {}, False),  # exactly half: not more than the share
        (10, 6, {}, True),
        (40, 37, {}, True),
        (4, 4, {}, False),  # all of them, but fewer than guard_min_count
        (5, 5, {}, True),
        (100, 40, {}, False),
        (10, 6, {"force_deletions": True}, False),
        (40, 37, {"force_deletions": True}, False),
        (10, 2, {"guard_min_count": 1, "guard_share": 0.1}, True),
        (10, 6, {"guard_min_count": 7}, False),
    ],
)
def test_guard_thresholds(known: int, vanished: int, policy: dict[str, object],
                          guarded: bool) -> None:
    plan = plan_folder(_known(known, known - vanished, **policy))
    if guarded:
        assert plan.count(DeleteRemote) == 0
        assert plan.guard == (f"{vanished} of {known} known messages vanished locally; not "
                              "deleting them on the server (use --force-deletions to confirm)")
        assert plan.actions == ()
    else:
        assert plan.guard is None
        assert plan.count(DeleteRemote) == vanished


def test_guard_keeps_state_and_repeats_until_forced() -> None:
    snapshot = _known(40, 3)
    plan = plan_folder(snapshot)
    assert plan.guard and plan.actions == ()
    # Nothing was executed, so the next sync sees the same and says the same.
    assert plan_folder(snapshot) == plan
    forced = plan_folder(snapshot._replace(policy=FolderPolicy(force_deletions=True)))
    assert forced.guard is None
    assert forced.actions == tuple(DeleteRemote(i, f"k{i:03d}") for i in range(4, 41))
    assert_idempotent(snapshot._replace(policy=FolderPolicy(force_deletions=True)))


def test_guard_stays_held_while_new_mail_dilutes_the_share() -> None:
    """37 of 40 held; 40 new messages later it is 37 of 80, below the share. Without
    confirmation the deletions must still not reach the server."""
    snapshot = _known(40, 3)
    assert plan_folder(snapshot).guard is not None
    grown = snapshot._replace(
        synced=(*snapshot.synced, *(S(i, f"k{i:03d}", "") for i in range(41, 81))),
        local=(*snapshot.local, *(L(f"k{i:03d}", "") for i in range(41, 81))),
        remote=(*snapshot.remote, *(R(i, "") for i in range(41, 81))))
    assert plan_folder(grown).count(DeleteRemote) == 37  # the share alone would let them go
    held = plan_folder(grown._replace(policy=FolderPolicy(guard_held=True)))
    assert held.actions == ()
    assert held.guard == ("37 of 80 known messages vanished locally; not deleting them on the "
                          "server (use --force-deletions to confirm)")
    forced = plan_folder(grown._replace(policy=FolderPolicy(guard_held=True,
                                                            force_deletions=True)))
    assert forced.guard is None and forced.count(DeleteRemote) == 37
    # once nothing known is missing locally, a held guard has nothing to hold
    restored = grown._replace(local=tuple(L(f"k{i:03d}", "S" if i <= 40 else "")
                                          for i in range(1, 81)))
    assert plan_folder(restored._replace(policy=FolderPolicy(guard_held=True))).guard is None


def test_guard_leaves_other_work_alone() -> None:
    """Only the local deletions are held back: flags, downloads, uploads still flow."""
    base = _known(10, 3)
    snapshot = base._replace(local=(L("k001", "FS"), *base.local[1:], L("new", "", 5, "<n@x>")),
                       remote=(*base.remote[:-1], R(10, "", None), R(11, "", 9, "<m@x>")),
                       synced=base.synced)
    plan = plan_folder(snapshot)
    assert plan.guard is not None and plan.guard.startswith("7 of 10 known")
    assert plan.actions == (PushFlags(1, "k001", add="F", remove="", flags="FS"),
                            Download(11, "", 9), Upload("new", ""))


def test_guard_counts_only_deletions_that_would_reach_the_server() -> None:
    """Messages gone on both sides are plain Forgets and do not trip the guard."""
    synced = [S(i, f"k{i}", "") for i in range(1, 11)]
    snapshot = snap(synced, [L(f"k{i}", "") for i in range(1, 5)],
                    [R(i, "") for i in (1, 2, 3, 4, 5)])
    plan = plan_folder(snapshot)
    assert plan.guard is None
    assert plan.actions == (*(Forget(i, f"k{i}") for i in range(6, 11)), DeleteRemote(5, "k5"))


@pytest.mark.parametrize("force", [False, True])
def test_missing_local_folder_downloads_again(force: bool) -> None:
    synced = [S(1, "a", "S", 10, "<a@x>"), S(2, "b", "", 20, "<b@x>"), S(3, "c", "", 30, None)]
    snapshot = snap(synced, [], [R(1, "S"), R(2, "F"), R(4, "", 40, "<d@x>")],
                    local_folder_missing=True, force_deletions=force)
    plan = plan_folder(snapshot)
    assert plan.count(DeleteRemote) == 0
    assert plan.guard == ("the local folder is missing; its 2 known messages are kept on the "
                          "server and downloaded again")
    assert plan.actions == (Forget(1, "a"), Forget(2, "b"), Forget(3, "c"),
                            Download(1, "S", 10), Download(2, "F", 20), Download(4, "", 40))
    folder = assert_idempotent(snapshot)
    assert set(folder.remote) == {1, 2, 4}


def test_missing_local_folder_single_message_wording() -> None:
    plan = plan_folder(snap([S(1, "a", "")], [], [R(1, "")], local_folder_missing=True))
    assert plan.guard == ("the local folder is missing; its 1 known message is kept on the "
                          "server and downloaded again")


def test_missing_local_folder_with_nothing_known_is_quiet() -> None:
    plan = plan_folder(snap([], [], [R(1, "", 5, None)], local_folder_missing=True))
    assert plan.guard is None
    assert plan.actions == (Download(1, "", 5),)


# --------------------------------------------------------------------------------------------
# UIDVALIDITY change


def test_uidvalidity_repairs_without_download() -> None:
    old = [S(1, "a", "S", 10, "<a@x>"), S(2, "b", "", 20, "<b@x>")]
    # Known local files come without size/Message-ID: the old rows identify them.
    snapshot = snap(old, [L("a", "S"), L("b", "F")],
                    [R(101, "S", 10, "<a@x>"), R(102, "", 20, "<b@x>")],
                    uidvalidity_changed=True)
    plan = plan_folder(snapshot)
    assert plan.actions == (Forget(1, "a"), Forget(2, "b"),
                            Pair(101, "a", "S", 10, "<a@x>"), Pair(102, "b", "", 20, "<b@x>"),
                            PushFlags(102, "b", add="F", remove="", flags="F"))
    assert plan.count(Download) == plan.count(Upload) == 0
    assert_idempotent(snapshot)


def test_uidvalidity_merges_against_old_flags() -> None:
    # old FS; locally -S; on the server +R  ->  FR (a union would wrongly bring S back)
    snapshot = snap([S(1, "a", "FS", 10, "<a@x>")], [L("a", "F")], [R(50, "FRS", 10, "<a@x>")],
                    uidvalidity_changed=True)
    assert plan_folder(snapshot).actions == (
        Forget(1, "a"), Pair(50, "a", "FS", 10, "<a@x>"),
        SetLocalFlags(50, "a", "FR", synced="FRS"),
        PushFlags(50, "a", add="", remove="S", flags="FR"))
    assert_idempotent(snapshot)


def test_uidvalidity_both_sides_agree_on_new_flags() -> None:
    snapshot = snap([S(1, "a", "", 10, "<a@x>")], [L("a", "S")], [R(50, "S", 10, "<a@x>")],
                    uidvalidity_changed=True)
    assert plan_folder(snapshot).actions == (Forget(1, "a"), Pair(50, "a", "S", 10, "<a@x>"))


def test_uidvalidity_filled_local_values_win_over_old_row() -> None:
    snapshot = snap([S(1, "a", "", 10, "<old@x>")], [L("a", "", 12, "<a@x>")],
                    [R(50, "", 12, "<a@x>")], uidvalidity_changed=True)
    assert plan_folder(snapshot).actions == (Forget(1, "a"), Pair(50, "a", "", 12, "<a@x>"))


def test_uidvalidity_duplicate_message_ids_pair_in_order() -> None:
    old = [S(1, "k1", "S", 10, "<d@x>"), S(2, "k2", "", 10, "<d@x>")]
    snapshot = snap(old, [L("k1", "S"), L("k2", "")],
                    [R(30, "S", 10, "<d@x>"), R(31, "", 10, "<d@x>"), R(32, "", 10, "<d@x>")],
                    uidvalidity_changed=True)
    plan = plan_folder(snapshot)
    # Two pairs in order, and the server's third copy is downloaded: no loss, no new duplicate.
    assert plan.actions == (Forget(1, "k1"), Forget(2, "k2"), Pair(30, "k1", "S", 10, "<d@x>"),
                            Pair(31, "k2", "", 10, "<d@x>"), Download(32, "", 10))
    assert_idempotent(snapshot)


def test_uidvalidity_without_message_id_uses_content_candidates() -> None:
    old = [S(1, "a", "S", 10, None), S(2, "b", "", 10, None)]
    snapshot = snap(old, [L("a", "S"), L("b", "")], [R(7, "S", 10, None)],
                    uidvalidity_changed=True)
    plan = plan_folder(snapshot)
    assert plan.actions == (Forget(1, "a"), Forget(2, "b"),
                            Download(7, "S", 10, pair_candidates=("a", "b")),
                            Upload("a", "S", unless_paired=True),
                            Upload("b", "", unless_paired=True))
    # a is the server's message: paired by content; b was lost by the server: uploaded again.
    folder = assert_idempotent(snapshot, same_content={(7, "a")})
    assert set(folder.local) == {"a", "b"}
    assert len(folder.remote) == 2


def test_uidvalidity_never_deletes() -> None:
    """Known local files the server no longer has are uploaded; known messages whose local file
    is gone are downloaded: nothing is deleted on either side."""
    old = [S(1, "kept", "S", 10, "<k@x>"), S(2, "gone", "F", 20, "<g@x>")]
    snapshot = snap(old, [L("kept", "S"), L("fresh", "", 5, "<f@x>")],
                    [R(9, "F", 20, "<g@x>")], uidvalidity_changed=True)
    plan = plan_folder(snapshot)
    assert plan.count(DeleteLocal) == plan.count(DeleteRemote) == 0
    assert plan.guard is None
    assert plan.actions == (Forget(1, "kept"), Forget(2, "gone"), Download(9, "F", 20),
                            Upload("fresh", ""), Upload("kept", "S"))
    assert_idempotent(snapshot)


def test_uidvalidity_with_missing_local_folder() -> None:
    old = [S(1, "a", "S", 10, "<a@x>")]
    snapshot = snap(old, [], [R(5, "S", 10, "<a@x>")], uidvalidity_changed=True,
                    local_folder_missing=True)
    plan = plan_folder(snapshot)
    assert plan.actions == (Forget(1, "a"), Download(5, "S", 10))
    assert plan.guard is not None and "missing" in plan.guard


# --------------------------------------------------------------------------------------------
# Copies that differ in line ends or added headers (issue 15, defect 5): never +n down +n up


def test_trace_fields_do_not_count_in_the_size() -> None:
    """mbsync's X-TUID in each local file (28 bytes), or a server's X-UID/Status (20 bytes):
    Message-ID and the size without them pair, with nothing to digest."""
    snapshot = snap(local=[L("a", "S", 128, "<a@x>", trace_bytes=28),
                           L("b", "", 100, "<b@x>", trace_bytes=0)],
                    remote=[R(1, "", 100, "<a@x>"), R(2, "F", 120, "<b@x>", trace_bytes=20)])
    assert not digests_needed(snapshot)
    assert plan_folder(snapshot).actions == (
        Pair(1, "a", "", 100, "<a@x>"), Pair(2, "b", "", 120, "<b@x>"),
        SetLocalFlags(2, "b", "F"), PushFlags(1, "a", add="S", remove="", flags="S"))
    assert_idempotent(snapshot)


def test_lf_server_copy_pairs_by_body_digest() -> None:
    """A server that stores LF (pymap) reports a smaller size: Message-ID matches, sizes do not.
    Only those messages are digested (BODY[TEXT] and the local files), then they pair."""
    snapshot = snap(local=[L("a", "S", 120, "<a@x>"), L("n", "", 50, "<new@x>")],
                    remote=[R(1, "", 114, "<a@x>"), R(2, "", 70, "<other@x>")])
    assert digests_needed(snapshot) == DigestsNeeded(uids=(1,), keys=("a",))
    # Without digests (the engine has not filled them) nothing pairs: sizes decide alone.
    assert plan_folder(snapshot).count(Pair) == 0
    digested = snapshot._replace(
        local=(L("a", "S", 120, "<a@x>", body_digest="d1"), snapshot.local[1]),
        remote=(R(1, "", 114, "<a@x>", body_digest="d1"), snapshot.remote[1]))
    assert not digests_needed(digested)
    assert plan_folder(digested).actions == (
        Pair(1, "a", "", 114, "<a@x>"), PushFlags(1, "a", add="S", remove="", flags="S"),
        Download(2, "", 70), Upload("n", ""))
    assert_idempotent(digested)


def test_same_message_id_different_body_is_not_paired() -> None:
    snapshot = snap(local=[L("a", "", 120, "<a@x>", body_digest="mine")],
                    remote=[R(1, "", 140, "<a@x>", body_digest="theirs")])
    assert plan_folder(snapshot).actions == (Download(1, "", 140), Upload("a", ""))


def test_known_digests_veto_a_size_match() -> None:
    """Two local copies under one Message-ID, the same size: the digests say which it is."""
    snapshot = snap(local=[L("a", "", 100, "<d@x>", body_digest="other"),
                           L("b", "S", 100, "<d@x>", body_digest="same")],
                    remote=[R(1, "", 100, "<d@x>", body_digest="same")])
    assert plan_folder(snapshot).actions == (
        Pair(1, "b", "", 100, "<d@x>"), PushFlags(1, "b", add="S", remove="", flags="S"),
        Upload("a", ""))


def test_an_ambiguous_message_id_is_settled_by_digests() -> None:
    """Two local files under one Message-ID with equal sizes (an edited draft of the same
    length): the size cannot tell which one the server has, so the digests are asked for."""
    local = [L("a", "", 100, "<d@x>"), L("b", "S", 100, "<d@x>")]
    remote = [R(1, "", 100, "<d@x>")]
    snapshot = snap(local=local, remote=remote)
    assert digests_needed(snapshot) == DigestsNeeded(uids=(1,), keys=("a", "b"))
    digested = snap(local=[local[0]._replace(body_digest="edited"),
                           local[1]._replace(body_digest="same")],
                    remote=[remote[0]._replace(body_digest="same")])
    assert plan_folder(digested).actions == (
        Pair(1, "b", "", 100, "<d@x>"), PushFlags(1, "b", add="S", remove="", flags="S"),
        Upload("a", ""))
    # Not digested (the engine could not): Message-ID and size pair in order, as before.
    assert plan_folder(snapshot).count(Pair) == 1


def test_duplicate_message_ids_pair_one_to_one_by_digest() -> None:
    """The same message twice in a folder on an LF server, plus a different message under the
    same Message-ID locally: two pairs, one upload, no download."""
    snapshot = snap(local=[L("k1", "", 100, "<d@x>", body_digest="x"),
                           L("k2", "", 100, "<d@x>", body_digest="x"),
                           L("k3", "", 90, "<d@x>", body_digest="y")],
                    remote=[R(7, "S", 96, "<d@x>", body_digest="x"),
                            R(8, "", 96, "<d@x>", body_digest="x")])
    plan = plan_folder(snapshot)
    assert [a for a in plan.actions if isinstance(a, Pair)] == [
        Pair(7, "k1", "", 96, "<d@x>"), Pair(8, "k2", "", 96, "<d@x>")]
    assert plan.count(Download) == 0
    assert [a.key for a in plan.actions if isinstance(a, Upload)] == ["k3"]
    assert_idempotent(snapshot)


def test_digests_needed_is_empty_in_the_common_cases() -> None:
    # An initial sync into an empty Maildir; new mail on each side; a UIDVALIDITY change where
    # every size agrees.
    assert not digests_needed(snap(remote=[R(1, "", 10, None), R(2, "", 10, "<a@x>")]))
    assert not digests_needed(snap(local=[L("a", "", 10, "<a@x>")],
                                   remote=[R(1, "", 20, "<b@x>")]))
    assert not digests_needed(snap([S(1, "a", "", 10, "<a@x>")], [L("a", "", 10, "<a@x>")],
                                   [R(5, "", 10, "<a@x>")], uidvalidity_changed=True))
    # Known messages are never digested, whatever their sizes.
    assert not digests_needed(snap([S(1, "a", "")], [L("a", "")], [R(1, "")]))


def test_uidvalidity_change_on_an_lf_server_repairs_by_digest() -> None:
    old = [S(1, "a", "S", 114, "<a@x>")]
    snapshot = snap(old, [L("a", "S", 120, "<a@x>")], [R(9, "S", 114, "<a@x>")],
                    uidvalidity_changed=True)
    assert digests_needed(snapshot) == DigestsNeeded(uids=(9,), keys=("a",))
    digested = snapshot._replace(local=(L("a", "S", 120, "<a@x>", body_digest="d"),),
                                 remote=(R(9, "S", 114, "<a@x>", body_digest="d"),))
    assert plan_folder(digested).actions == (Forget(1, "a"), Pair(9, "a", "S", 114, "<a@x>"))


# --------------------------------------------------------------------------------------------
# Properties over random snapshots


FLAGS = st.sets(st.sampled_from("DFPRST")).map(normalize)
IDENTITIES = st.tuples(st.sampled_from([10, 20]), st.sampled_from([None, "<a@x>", "<b@x>"]))


@st.composite
def snapshots(draw: st.DrawFn) -> FolderSnapshot:
    n = draw(st.integers(0, 8))
    synced: list[SyncedMessage] = []
    local: list[LocalMessage] = []
    remote: list[RemoteMessage] = []
    uvc = draw(st.booleans())
    for i in range(1, n + 1):
        size, mid = draw(IDENTITIES)
        synced.append(S(i, f"k{i}", draw(FLAGS), size, mid))
        if draw(st.booleans()) or draw(st.booleans()):
            local.append(L(f"k{i}", draw(FLAGS)))
        if draw(st.booleans()) or draw(st.booleans()):
            # after a UIDVALIDITY change the server renumbered everything, fully filled
            remote.append(R(100 + i, draw(FLAGS), size, mid) if uvc else R(i, draw(FLAGS)))
    for i in range(draw(st.integers(0, 4))):
        size, mid = draw(IDENTITIES)
        local.append(L(f"n{i}", draw(FLAGS), size, mid))
    for i in range(draw(st.integers(0, 4))):
        size, mid = draw(IDENTITIES)
        remote.append(R(200 + i, draw(FLAGS), size, mid))
    policy = FolderPolicy(trash_folder=draw(st.sampled_from([None, "Trash"])),
                          force_deletions=draw(st.booleans()),
                          local_folder_missing=not local and draw(st.booleans()),
                          guard_min_count=draw(st.integers(1, 5)),
                          guard_held=draw(st.booleans()))
    return FolderSnapshot(tuple(synced), tuple(draw(st.permutations(local))),
                          tuple(draw(st.permutations(remote))), uvc, policy)


@settings(max_examples=400)
@given(snapshots())
def test_random_plans_are_consistent_and_idempotent(snapshot: FolderSnapshot) -> None:
    plan = plan_folder(snapshot)
    # deterministic, and independent of input order
    assert plan_folder(snapshot._replace(local=snapshot.local[::-1],
                               remote=snapshot.remote[::-1])) == plan
    if plan.guard and not snapshot.policy.local_folder_missing:
        assert plan.count(DeleteRemote) == 0
    if snapshot.uidvalidity_changed:
        assert plan.count(DeleteLocal) == plan.count(DeleteRemote) == 0
    # every server message and every local file is accounted for at most once
    remote_uses = [a.uid for a in plan.actions if isinstance(a, Pair | Download)]
    local_uses = [a.key for a in plan.actions if isinstance(a, Pair | Upload)]
    assert len(remote_uses) == len(set(remote_uses))
    assert len(local_uses) == len(set(local_uses))
    assert_idempotent(snapshot, converged=plan.guard is None
                      or snapshot.policy.local_folder_missing)


# --------------------------------------------------------------------------------------------
# Summary and dry-run text


def test_plan_summary_and_describe() -> None:
    plan = plan_folder(SCENARIOS[-1][1])
    assert plan_summary(plan) == {
        "forget": 1, "pair": 1, "record_flags": 1, "set_local_flags": 2, "push_flags": 1,
        "delete_local": 1, "delete_remote": 1, "download": 1, "fetch_full": 0,
        "copy_original": 0, "upload": 1,
    }
    assert describe(plan) == [
        "forget UID 7 / g (state only)",
        "pair UID 9 with local p (already on both sides)",
        "record flags S for UID 2 (both sides already agree)",
        "set local c (UID 3) to flags F",
        "set local f (UID 6) to flags FR",
        "server UID 6: add \\Flagged, remove \\Seen",
        "delete local d (UID 4 was expunged on the server)",
        "expunge UID 5 on the server (e was deleted locally)",
        "download UID 8 (7 bytes) with no flags",
        "upload n with no flags",
    ]
    assert sum(plan_summary(FolderPlan(())).values()) == 0


def test_describe_guard_trash_and_candidates() -> None:
    plan = plan_folder(snap([S(1, "a", "")], [L("b", "S", 10, None)],
                            [R(1, ""), R(2, "", 10, None)], trash_folder="Trash"))
    assert describe(plan) == [
        "move UID 1 to Trash (a was deleted locally)",
        "download UID 2 (10 bytes) with no flags, or pair it with one of 1 local file(s) if "
        "the content is the same",
        "upload b with flags S, unless a downloaded message turns out to be the same",
    ]
    guarded = plan_folder(_known(10, 0))
    assert describe(guarded) == [f"not propagated: {guarded.guard}"]


# --------------------------------------------------------------------------------------------
# POP3


def pop3(listed: list[tuple[int, str, int]], known: dict[str, Pop3Known] | None = None,
         **kw: object) -> Pop3Plan:
    args: dict[str, object] = {"leave_on_server": False, "delete_after": None, "now": 1000.0,
                               "max_message_size": None, "max_messages": None}
    args.update(kw)
    return plan_pop3(listed, known or {}, **args)  # type: ignore[arg-type]


def test_pop3_download_and_delete() -> None:
    plan = pop3([(1, "u1", 10), (2, "u2", 20), (3, "u3", 30)],
                {"u2": Pop3Known(deleted=False, downloaded_at=900.0)})
    assert plan == Pop3Plan(retrieve=(1, 3), delete_only=(2,), delete_retrieved=True)


def test_pop3_never_retrieves_a_known_uidl_twice() -> None:
    known = {"u1": Pop3Known(False, 1.0), "u2": Pop3Known(True, 1.0)}
    for leave in (False, True):
        plan = pop3([(1, "u1", 10), (2, "u2", 20)], known, leave_on_server=leave)
        assert plan.retrieve == ()


def test_pop3_leave_on_server() -> None:
    known = {"old": Pop3Known(False, 100.0), "young": Pop3Known(False, 950.0),
             "edge": Pop3Known(False, 900.0), "dele-sent": Pop3Known(True, 999.0)}
    listed = [(1, "old", 1), (2, "young", 1), (3, "edge", 1), (4, "dele-sent", 1), (5, "new", 1)]
    kept = pop3(listed, known, leave_on_server=True)
    assert kept == Pop3Plan(retrieve=(5,), delete_only=(4,), delete_retrieved=False)
    aged = pop3(listed, known, leave_on_server=True, delete_after=100.0)
    # more than 100 s ago: "old" yes, "edge" (exactly 100 s) not yet
    assert aged == Pop3Plan(retrieve=(5,), delete_only=(1, 4), delete_retrieved=False)


def test_pop3_limits() -> None:
    listed = [(4, "d", 10), (1, "a", 10), (2, "b", 5000), (3, "c", 10)]
    plan = pop3(listed, max_message_size=1000, max_messages=2)
    assert plan.retrieve == (1, 3)  # in message order; "d" waits for the next session
    assert plan.skipped_too_big == ((2, "b", 5000),)
    assert not plan.empty
    assert pop3([], max_messages=0).empty


def test_pop3_duplicate_uidl_handled_once() -> None:
    assert pop3([(1, "x", 10), (2, "x", 10)]).retrieve == (1,)
    known = {"x": Pop3Known(False, 0.0)}
    assert pop3([(1, "x", 10), (2, "x", 10)], known).delete_only == (1,)
