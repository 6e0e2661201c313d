"""The sync policy in the planner (README, "Partial mirrors"): direction, delete, and the
untracked messages a deletion that is not propagated leaves behind.

Tables first (one scenario each, the exact plan), then the hypothesis state machine of
test_plan_statemachine.py run under a random policy: one way, nothing ever touches the side
that does not receive; a deletion not propagated is never undone (the kept copy is untracked,
never transferred again); nothing is lost or duplicated; a second plan is empty.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from syncd.core.actions import (
    DeleteLocal,
    DeleteRemote,
    Download,
    Forget,
    Pair,
    PushFlags,
    RecordFlags,
    SetLocalFlags,
    Upload,
)
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    RemoteMessage,
    SyncedMessage,
)
from syncd.core.plan import describe, plan_folder
from tests.unit.test_plan_statemachine import SyncMachine

S, L, R = SyncedMessage, LocalMessage, RemoteMessage

SERVER_WRITES = (Upload, PushFlags, DeleteRemote)
LOCAL_WRITES = (Download, SetLocalFlags, DeleteLocal)


def plan(synced=(), local=(), remote=(), *, untracked_uids=(), untracked_keys=(), **policy):
    return plan_folder(FolderSnapshot(tuple(synced), tuple(local), tuple(remote),
                                      policy=FolderPolicy(**policy),
                                      untracked_uids=frozenset(untracked_uids),
                                      untracked_keys=frozenset(untracked_keys))).actions


def test_policy_properties() -> None:
    assert FolderPolicy().deletes_local and FolderPolicy().deletes_remote
    pull = FolderPolicy(direction="pull")
    assert (pull.to_local, pull.to_server, pull.deletes_local, pull.deletes_remote) == (
        True, False, True, False)
    push = FolderPolicy(direction="push")
    assert (push.to_local, push.to_server, push.deletes_local, push.deletes_remote) == (
        False, True, False, True)
    # delete only narrows direction
    assert not FolderPolicy(direction="pull", delete="push").deletes_remote
    assert not FolderPolicy(direction="pull", delete="push").deletes_local
    none = FolderPolicy(delete="none")
    assert not none.deletes_local and not none.deletes_remote
    assert FolderPolicy(delete="pull").deletes_local
    assert not FolderPolicy(delete="pull").deletes_remote


# ---- new mail --------------------------------------------------------------------------------

def test_pull_downloads_but_never_uploads() -> None:
    actions = plan(local=[L("k1", "S", 10, "<a@x>")], remote=[R(5, "", 20, "<b@x>")],
                   direction="pull")
    assert actions == (Download(5, "", size=20),)


def test_push_uploads_but_never_downloads() -> None:
    actions = plan(local=[L("k1", "S", 10, "<a@x>")], remote=[R(5, "", 20, "<b@x>")],
                   direction="push")
    assert actions == (Upload("k1", "S"),)


@pytest.mark.parametrize("direction", ["pull", "push"])
def test_one_way_still_pairs_copies_on_both_sides(direction: str) -> None:
    actions = plan(local=[L("k1", "S", 10, "<a@x>")], remote=[R(5, "S", 10, "<a@x>")],
                   direction=direction)
    assert actions == (Pair(5, "k1", "S", size=10, message_id="<a@x>"),)


def test_pull_fresh_pair_moves_only_local_flags_and_records_the_servers() -> None:
    actions = plan(local=[L("k1", "S", 10, "<a@x>")], remote=[R(5, "F", 10, "<a@x>")],
                   direction="pull")
    assert actions == (Pair(5, "k1", "", size=10, message_id="<a@x>"),
                       SetLocalFlags(5, "k1", "FS", synced="F"))


def test_push_fresh_pair_moves_only_server_flags() -> None:
    actions = plan(local=[L("k1", "S", 10, "<a@x>")], remote=[R(5, "F", 10, "<a@x>")],
                   direction="push")
    assert actions == (Pair(5, "k1", "", size=10, message_id="<a@x>"),
                       PushFlags(5, "k1", add="S", remove="", flags="S"))


# ---- flags -----------------------------------------------------------------------------------

def test_pull_local_flag_change_stays_local_and_is_not_reverted() -> None:
    synced = [S(1, "k1", "")]
    actions = plan(synced, [L("k1", "S")], [R(1, "")], direction="pull")
    assert actions == ()  # neither pushed nor undone
    # and a server change still arrives, keeping the local one
    actions = plan(synced, [L("k1", "S")], [R(1, "F")], direction="pull")
    assert actions == (SetLocalFlags(1, "k1", "FS", synced="F"),)


def test_push_server_flag_change_stays_on_the_server_and_is_not_reverted() -> None:
    synced = [S(1, "k1", "")]
    actions = plan(synced, [L("k1", "")], [R(1, "F")], direction="push")
    assert actions == ()
    actions = plan(synced, [L("k1", "S")], [R(1, "F")], direction="push")
    assert actions == (PushFlags(1, "k1", add="S", remove="", flags="S"),)


# ---- deletions -------------------------------------------------------------------------------

def test_pull_local_deletion_untracks_the_server_copy() -> None:
    actions = plan([S(1, "k1", "S")], [], [R(1, "S")], direction="pull")
    assert actions == (Forget(1, "k1", keep="server"),)
    assert "not downloaded again" in describe(plan_folder(FolderSnapshot(
        (S(1, "k1", "S"),), (), (R(1, "S"),), policy=FolderPolicy(direction="pull"))))[0]


def test_push_server_expunge_untracks_the_local_copy() -> None:
    actions = plan([S(1, "k1", "S")], [L("k1", "S")], [], direction="push")
    assert actions == (Forget(1, "k1", keep="local"),)


@pytest.mark.parametrize(("delete", "local_gone", "expected"), [
    ("both", True, DeleteRemote(1, "k1")),
    ("both", False, DeleteLocal(1, "k1")),
    ("pull", True, Forget(1, "k1", keep="server")),
    ("pull", False, DeleteLocal(1, "k1")),
    ("push", True, DeleteRemote(1, "k1")),
    ("push", False, Forget(1, "k1", keep="local")),
    ("none", True, Forget(1, "k1", keep="server")),
    ("none", False, Forget(1, "k1", keep="local")),
])
def test_delete_policy(delete: str, local_gone: bool, expected: object) -> None:
    local = [] if local_gone else [L("k1", "")]
    remote = [R(1, "")] if local_gone else []
    assert plan([S(1, "k1", "")], local, remote, delete=delete) == (expected,)


def test_untracked_are_never_transferred_or_paired_again() -> None:
    actions = plan(local=[L("k2", "", 10, "<a@x>")], remote=[R(1, "", 10, "<a@x>")],
                   untracked_uids={1}, untracked_keys={"k2"})
    assert actions == ()
    actions = plan(local=[L("k2", "", 10, "<a@x>")], remote=[R(1, "", 10, "<b@x>")],
                   untracked_uids={1})
    assert actions == (Upload("k2", ""),)


def test_untracking_is_held_back_by_the_mass_deletion_guard() -> None:
    synced = [S(uid, f"k{uid}", "") for uid in range(1, 11)]
    remote = [R(uid, "") for uid in range(1, 11)]
    result = plan_folder(FolderSnapshot(tuple(synced), (L("k1", ""),), tuple(remote),
                                        policy=FolderPolicy(direction="pull")))
    assert result.actions == ()
    assert result.guard is not None and "still tracking them" in result.guard


def test_pending_expunge_under_a_policy_that_keeps_server_copies() -> None:
    snapshot = FolderSnapshot((S(1, "k1", ""),), (), (R(1, ""),),
                              policy=FolderPolicy(delete="none"), pending_expunge=frozenset({1}))
    assert plan_folder(snapshot).actions == (Forget(1, "k1", keep="server"),)


def test_push_with_the_local_folder_missing_downloads_nothing() -> None:
    result = plan_folder(FolderSnapshot((S(1, "k1", ""),), (), (R(1, ""),),
                                        policy=FolderPolicy(direction="push",
                                                            local_folder_missing=True)))
    assert result.actions == (Forget(1, "k1", keep="server"),)
    assert result.guard is not None and "direction: push" in result.guard


def test_record_flags_under_pull_when_both_sides_agree() -> None:
    assert plan([S(1, "k1", "")], [L("k1", "S")], [R(1, "S")], direction="pull") == (
        RecordFlags(1, "k1", "S"),)


# ---- the state machine under a policy --------------------------------------------------------

class PolicyMachine(SyncMachine):
    """SyncMachine with a random direction and delete policy."""

    def __init__(self) -> None:
        super().__init__()
        self.gone_for_good: set[str] = set()  # bodies whose untracked copy must never travel

    @initialize(trash=st.sampled_from([None, "Trash"]),
                direction=st.sampled_from(["both", "pull", "push"]),
                delete=st.sampled_from(["both", "pull", "push", "none"]))
    def configure_policy(self, trash: str | None, direction: str, delete: str) -> None:
        self.policy = FolderPolicy(trash_folder=trash, direction=direction, delete=delete)

    def configure(self, trash: str | None, form: str) -> None:  # replaced by configure_policy
        raise AssertionError("not used")

    @rule(confirm=st.booleans())
    def sync(self, confirm: bool) -> None:
        policy = self.policy._replace(local_folder_missing=self.local_missing)
        plan = plan_folder(self.snapshot(policy))
        if plan.guard is not None and not self.local_missing and confirm:
            plan = plan_folder(self.snapshot(policy._replace(force_deletions=True)))
            assert plan.guard is None
        guarded = plan.guard is not None and not self.local_missing
        # One way: the side that does not receive is never written.
        if not policy.to_server:
            assert not any(isinstance(a, SERVER_WRITES) for a in plan.actions), plan
        if not policy.to_local:
            assert not any(isinstance(a, LOCAL_WRITES)
                           and not (isinstance(a, Download) and a.pair_only)
                           for a in plan.actions), plan
        if not policy.deletes_local:
            assert plan.count(DeleteLocal) == 0
        if not policy.deletes_remote:
            assert plan.count(DeleteRemote) == 0
        server_before = dict(self.server)
        local_before = dict(self.local)
        self.execute(plan)
        if not policy.to_server:
            assert self.server == server_before
        if not policy.to_local:
            assert self.local == local_before
        if self.uidvalidity_changed:
            self.gone_for_good.clear()  # the untracked UIDs are void: restored by content
        self.uidvalidity_changed = False
        self.local_missing = False
        self.policy = self.policy._replace(guard_held=guarded)
        self.check_policy(guarded)

    def check_policy(self, guarded: bool) -> None:
        server_bodies = [m.body for m in self.server.values()]
        local_bodies = [m.body for m in self.local.values()]
        assert len(set(server_bodies)) == len(server_bodies), "duplicate on the server"
        assert len(set(local_bodies)) == len(local_bodies), "duplicate locally"
        # nothing lost
        assert self.created - self.lost_by_user <= set(server_bodies) | set(local_bodies)
        # rows pair one message
        for row in self.state.values():  # (a held guard keeps the vanished files' rows)
            if not guarded or row.key in self.local:
                assert self.server[row.uid].body == self.local[row.key].body
        # the untracked copies stay where they are, alone
        for uid in self.untracked_uids:
            if uid in self.server:
                self.gone_for_good.add(self.server[uid].body)
        for key in self.untracked_keys:
            if key in self.local:
                self.gone_for_good.add(self.local[key].body)
        for body in self.gone_for_good:
            assert not (body in server_bodies and body in local_bodies), body
        if not guarded:
            # what the policy propagates has arrived
            tracked_server = {m.body for u, m in self.server.items()
                              if u not in self.untracked_uids}
            tracked_local = {m.body for k, m in self.local.items()
                             if k not in self.untracked_keys}
            if self.policy.to_local:
                assert tracked_server <= set(local_bodies)
            if self.policy.to_server:
                assert tracked_local <= set(server_bodies)
            # idempotency
            again = plan_folder(self.snapshot(self.policy))
            assert again.actions == () and again.guard is None, again


PolicyMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                           deadline=None)
TestPolicyMachine = PolicyMachine.TestCase


def test_plain_sync_machine_untracks_nothing() -> None:
    # The default policy never leaves a message on one side only.
    assert FolderPolicy().direction == "both" and FolderPolicy().delete == "both"
