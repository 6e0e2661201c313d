"""Placeholders in the planner (README, "Partial mirrors"): max_size and fetch_flagged are
inputs; a message bigger than max_size is downloaded as a placeholder, a placeholder is never
uploaded (CopyOriginal instead), and one the policy wants in full gets a FetchFull. The size
policy never changes what is paired, deleted or untracked: a property over random snapshots.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from syncd.core.actions import (
    CopyOriginal,
    DeleteRemote,
    Download,
    FetchFull,
    Pair,
    Upload,
)
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    RemoteMessage,
    SyncedMessage,
)
from syncd.core.placeholder import build_placeholder, placeholder_of
from syncd.core.plan import describe, plan_folder

S, L, R = SyncedMessage, LocalMessage, RemoteMessage


def plan(synced=(), local=(), remote=(), **policy):
    return plan_folder(FolderSnapshot(tuple(synced), tuple(local), tuple(remote),
                                      policy=FolderPolicy(**policy))).actions


def test_big_new_mail_is_downloaded_as_a_placeholder() -> None:
    actions = plan(remote=[R(1, "", 100, "<a>"), R(2, "S", 5000, "<b>")], max_size=1000)
    assert actions == (Download(1, "", size=100), Download(2, "S", size=5000, placeholder=True))
    assert "as a placeholder" in describe(plan_folder(FolderSnapshot(
        (), (), (R(2, "", 5000, "<b>"),), policy=FolderPolicy(max_size=1000))))[0]


def test_a_content_comparison_needs_the_whole_body() -> None:
    # no Message-ID on either side: the body decides, so it is fetched in full
    actions = plan(local=[L("k", "", 90)], remote=[R(1, "", 5000)], max_size=1000)
    assert actions[0] == Download(1, "", size=5000, pair_candidates=("k",))


def test_a_placeholder_is_never_uploaded() -> None:
    moved = L("k", "FS", 5000, "<big>", placeholder=True)
    assert plan(local=[moved], max_size=1000) == (CopyOriginal("k", "FS"),)
    # its server copy is here: paired by Message-ID and the full size, marked a placeholder
    actions = plan(local=[moved], remote=[R(7, "FS", 5000, "<big>")], max_size=1000)
    assert actions == (Pair(7, "k", "FS", size=5000, message_id="<big>", placeholder=True),)
    assert plan(local=[moved], direction="pull") == ()


def test_a_deleted_placeholder_is_marked_for_the_moved_copy_check() -> None:
    row = S(3, "k", "S", 5000, placeholder=True)
    assert plan([row], [], [R(3, "S")]) == (DeleteRemote(3, "k", placeholder=True),)


def test_fetch_full_when_flagged_under_fetch_flagged_or_no_longer_too_big() -> None:
    row = S(3, "k", "S", 5000, placeholder=True)
    assert plan([row], [L("k", "S")], [R(3, "S")], max_size=1000) == ()
    assert plan([row], [L("k", "S")], [R(3, "S")], max_size=1000, fetch_flagged=True) == ()
    flagged = plan([row], [L("k", "FS")], [R(3, "S")], max_size=1000, fetch_flagged=True)
    assert FetchFull(3, "k") in flagged
    on_server = plan([row], [L("k", "S")], [R(3, "FS")], max_size=1000, fetch_flagged=True)
    assert FetchFull(3, "k") in on_server
    assert plan([row], [L("k", "FS")], [R(3, "S")], max_size=1000) != flagged  # not without
    assert plan([row], [L("k", "S")], [R(3, "S")], max_size=9000) == (FetchFull(3, "k"),)
    assert plan([row], [L("k", "S")], [R(3, "S")]) == (FetchFull(3, "k"),)
    # push never changes local mail
    assert plan([row], [L("k", "S")], [R(3, "S")], direction="push") == ()


def test_placeholder_format_round_trip() -> None:
    header = (b"From: a@b\r\nSubject: big\r\nMessage-ID: <x@y>\r\nContent-Type: multipart/"
              b"mixed;\r\n boundary=zz\r\n\r\n")
    data = build_placeholder(header, 123456, folder="Archiv/Ä b", uidvalidity=9, uid=42)
    found = placeholder_of(data)
    assert found is not None and found == (123456, "Archiv/Ä b", 9, 42)
    assert data.isascii() and b"\r" not in data
    assert b"X-Syncd-Original-Content-Type: multipart/mixed;\n boundary=zz" in data
    assert b"\nContent-Type: text/plain" in data
    # a placeholder of a placeholder keeps one set of our fields
    again = build_placeholder(data, 5, folder="INBOX", uidvalidity=1, uid=2)
    assert again.count(b"X-Syncd-Placeholder:") == 1 and placeholder_of(again).size == 5
    assert placeholder_of(b"Subject: x\n\nX-Syncd-Placeholder: 5\n") is None  # body, not header


FLAGS = st.sampled_from(["", "S", "F", "FS", "RS"])


@st.composite
def snapshots(draw):
    """A folder with synced rows (some placeholders), local files and server messages in any
    combination, a few new on either side, big and small."""
    synced, local, remote = [], [], []
    for uid in range(1, draw(st.integers(0, 6)) + 1):
        size = draw(st.sampled_from([100, 5000]))
        row = S(uid, f"k{uid}", draw(FLAGS), size, f"<{uid}>",
                placeholder=size > 1000 and draw(st.booleans()))
        synced.append(row)
        if draw(st.booleans()):
            local.append(L(row.key, draw(FLAGS)))
        if draw(st.booleans()):
            remote.append(R(uid, draw(FLAGS)))
    for n in range(draw(st.integers(0, 3))):
        size = draw(st.sampled_from([100, 5000]))
        with_id = draw(st.booleans())
        if draw(st.booleans()):
            remote.append(R(100 + n, draw(FLAGS), size, f"<n{n}>" if with_id else None))
        if draw(st.booleans()):
            local.append(L(f"n{n}", draw(FLAGS), size, f"<n{n}>" if with_id else None,
                           placeholder=size > 1000 and draw(st.booleans())))
    policy = FolderPolicy(direction=draw(st.sampled_from(["both", "pull", "push"])))
    return FolderSnapshot(tuple(synced), tuple(local), tuple(remote), policy=policy)


def _without_size_policy(actions):
    """The plan as it would be without max_size: no FetchFull, no placeholder downloads."""
    return tuple(dataclasses.replace(a, placeholder=False) if isinstance(a, Download) else a
                 for a in actions if not isinstance(a, FetchFull))


@given(snapshot=snapshots(), max_size=st.sampled_from([None, 1000, 10_000]),
       fetch_flagged=st.booleans())
def test_the_size_policy_changes_only_how_much_is_fetched(snapshot, max_size,
                                                          fetch_flagged) -> None:
    policy = snapshot.policy._replace(max_size=max_size, fetch_flagged=fetch_flagged)
    sized = plan_folder(snapshot._replace(policy=policy)).actions
    plain = plan_folder(snapshot._replace(policy=policy._replace(max_size=10**9))).actions
    # nothing paired, deleted, untracked or uploaded differently because of max_size
    assert _without_size_policy(sized) == _without_size_policy(plain)
    placeholders = {m.key for m in snapshot.local if m.placeholder}
    rows = {row.uid: row for row in snapshot.synced}
    for action in sized:
        assert not (isinstance(action, Upload) and action.key in placeholders)
        if isinstance(action, Download) and action.placeholder:
            assert max_size is not None and action.size > max_size
            assert not action.pair_candidates and not action.pair_only
        if isinstance(action, FetchFull):
            assert rows[action.uid].placeholder and policy.to_local
        if isinstance(action, CopyOriginal):
            assert action.key in placeholders and policy.to_server
