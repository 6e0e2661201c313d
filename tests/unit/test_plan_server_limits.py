"""The planner with a server that cannot keep every flag (FolderPolicy.storable) and with
expunges an earlier sync had to defer (FolderSnapshot.pending_expunge). Pure: no I/O."""

from __future__ import annotations

from syncd.core.actions import (
    DeleteRemote,
    Forget,
    Pair,
    PushFlags,
    RecordFlags,
    SetLocalFlags,
)
from syncd.core.flags import merge_keeping, storable
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    RemoteMessage,
    SyncedMessage,
)
from syncd.core.plan import pair_actions, plan_folder

NO_KEYWORDS = "DFRST"  # PERMANENTFLAGS without \*


def plan(synced: list[SyncedMessage], local: list[LocalMessage],
         remote: list[RemoteMessage], *, keep: str = "DFPRST",
         pending: frozenset[int] = frozenset(), **policy: object):
    return plan_folder(FolderSnapshot(
        tuple(synced), tuple(local), tuple(remote),
        policy=FolderPolicy(storable=keep, **policy),  # type: ignore[arg-type]
        pending_expunge=pending)).actions


def test_storable_from_permanentflags() -> None:
    assert storable(None) == "DFPRST"  # none sent: all permanent (RFC 3501)
    assert storable([b"\\Seen", b"\\Deleted"]) == "ST"
    assert storable([b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft",
                     b"\\*"]) == "DFPRST"
    assert storable(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]) \
        == NO_KEYWORDS
    assert storable([b"$Forwarded"]) == "P"


def test_merge_keeping_is_local_only_for_unkept_letters() -> None:
    # The server never shows P: no revert, no push.
    assert merge_keeping("PS", "PS", "S", NO_KEYWORDS) == "PS"
    # Removed locally: stays removed; added locally: stays added.
    assert merge_keeping("PS", "S", "S", NO_KEYWORDS) == "S"
    assert merge_keeping("S", "PS", "S", NO_KEYWORDS) == "PS"
    # A P the server reports anyway does not come down.
    assert merge_keeping("", "", "P", NO_KEYWORDS) == ""
    # Storable letters merge as always.
    assert merge_keeping("S", "PS", "FS", NO_KEYWORDS) == "FPS"


def test_local_keyword_is_recorded_not_pushed() -> None:
    row = SyncedMessage(1, "k1", "S")
    assert plan([row], [LocalMessage("k1", "PS")], [RemoteMessage(1, "S")],
                keep=NO_KEYWORDS) == (RecordFlags(1, "k1", "PS"),)
    # Recorded: idempotent from then on.
    done = SyncedMessage(1, "k1", "PS")
    assert plan([done], [LocalMessage("k1", "PS")], [RemoteMessage(1, "S")],
                keep=NO_KEYWORDS) == ()


def test_push_leaves_out_unkept_letters() -> None:
    actions = plan([SyncedMessage(1, "k1", "")], [LocalMessage("k1", "FP")],
                   [RemoteMessage(1, "S")], keep=NO_KEYWORDS)
    assert actions == (SetLocalFlags(1, "k1", "FPS", synced="PS"),
                       PushFlags(1, "k1", add="F", remove="", flags="FPS"))
    # Stopped after the rename (the row says "PS"): the next plan pushes, and reverts nothing.
    assert plan([SyncedMessage(1, "k1", "PS")], [LocalMessage("k1", "FPS")],
                [RemoteMessage(1, "S")], keep=NO_KEYWORDS) == (
        PushFlags(1, "k1", add="F", remove="", flags="FPS"),)


def test_fresh_pair_keeps_local_keyword() -> None:
    # Nothing to move: the pair is recorded with the final flags at once.
    assert pair_actions(1, "k1", "PS", "S", storable=NO_KEYWORDS) == (Pair(1, "k1", "PS"),)


def test_pending_expunge_is_retried_not_downloaded_and_not_guarded() -> None:
    rows = [SyncedMessage(uid, f"k{uid}", "S") for uid in range(1, 11)]
    remote = [RemoteMessage(uid, "S" if uid > 6 else "ST") for uid in range(1, 11)]
    local = [LocalMessage(f"k{uid}", "S") for uid in range(7, 11)]
    # Six of ten gone locally, but all six were decided by earlier syncs: no guard, each is
    # retried as an expunge only (no trash move again), and nothing is downloaded.
    pending = frozenset(range(1, 7))
    actions = plan(rows, local, remote, pending=pending, trash_folder="Trash")
    assert actions == tuple(DeleteRemote(uid, f"k{uid}") for uid in range(1, 7))
    # Not pending: the same picture is a mass deletion, and the guard holds.
    guarded = plan_folder(FolderSnapshot(tuple(rows), tuple(local), tuple(remote)))
    assert guarded.guard is not None and not guarded.actions
    # Gone from the server meanwhile: only the row goes.
    assert plan(rows[:1], [], [], pending=frozenset({1})) == (Forget(1, "k1"),)
