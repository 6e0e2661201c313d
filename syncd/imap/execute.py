"""Executing one folder's plan in the order that makes kill -9 at any instant safe
(docs/architecture.md):

1. state-only actions (pairings, forgotten rows, recorded flags, the guard's verdict), one
   commit: they move no data and make the later steps' rows consistent;
2. local flag renames (one commit), then files the server expunged (one commit);
3. local deletions moved to the trash, then every server STORE and the expunge in one round
   trip (one commit);
4. downloads in group commits (download.py), each body durable before its row;
5. uploads, each behind an intent (upload.py).

The crash tests (tests/crash/) stop the process at every checkpoint() on the way, by name and
count: the order of the steps and their checkpoints is part of the contract.
"""

from __future__ import annotations

from syncd.core import actions as A
from syncd.core.model import RemoteMessage, SyncedMessage
from syncd.faults import checkpoint
from syncd.imap.changes import by_kind, delete_local, move_deleted, push_remote, set_local_flags
from syncd.imap.download import Downloader
from syncd.imap.job import FolderJob
from syncd.imap.placeholders import (
    copy_originals,
    download_placeholders,
    fetch_full,
    rescue_moved,
)
from syncd.imap.upload import Uploader


def execute(job: FolderJob, plan: A.FolderPlan, paired_remote: dict[int, RemoteMessage], *,
            reset: bool = False, guard_held: bool = False,
            untracked_gone: tuple[set[int], set[str]] = (set(), set())) -> None:
    """Every action of ``plan``, step by step. ``paired_remote``: the server's view of the
    messages the plan pairs. ``reset``: the UIDVALIDITY changed, the old rows go. ``guard_held``:
    the mass-deletion guard's verdict, recorded with the state-only actions.
    ``untracked_gone``: untracked UIDs and keys whose message is gone from its side."""
    grouped = by_kind(plan.actions)
    record_state_only(job, grouped, paired_remote, reset=reset, guard_held=guard_held,
                      untracked_gone=untracked_gone)
    # Local side first: flag renames (one commit), then files the server expunged.
    pushes = set_local_flags(job, grouped[A.SetLocalFlags], grouped[A.PushFlags])
    delete_local(job, grouped[A.DeleteLocal])
    # Local deletions: moved to the trash now, expunged with the STOREs. A placeholder that
    # the mail reader moved to another folder is copied there first (placeholders.py).
    deleting = grouped[A.DeleteRemote]
    if any(a.placeholder for a in deleting):
        deleting = rescue_moved(job, deleting)
    deletes, to_expunge = move_deleted(job, deleting)
    # Server side: every STORE and the EXPUNGE in one round trip, then one commit.
    push_remote(job, pushes, to_expunge, deletes)
    paired_keys: set[str] = set()
    full = [a for a in grouped[A.Download] if not a.placeholder]
    if full:
        downloader = Downloader(job)
        downloader.run(full)
        paired_keys = downloader.paired_keys
    # Placeholders (max_size): delivered, replaced by the full message, copied on the server.
    if len(full) != len(grouped[A.Download]):
        download_placeholders(job, [a for a in grouped[A.Download] if a.placeholder])
    if grouped[A.FetchFull]:
        fetch_full(job, grouped[A.FetchFull])
    if grouped[A.CopyOriginal]:
        copy_originals(job, grouped[A.CopyOriginal])
    uploads = [a for a in grouped[A.Upload] if not (a.unless_paired and a.key in paired_keys)]
    if uploads:
        Uploader(job).run(uploads)


def record_state_only(job: FolderJob, grouped: dict[type, list],
                      paired_remote: dict[int, RemoteMessage], *, reset: bool,
                      guard_held: bool,
                      untracked_gone: tuple[set[int], set[str]] = (set(), set())) -> None:
    """The actions that move no data, and the guard's verdict, in one commit."""
    state, fid = job.state, job.fid
    with state.transaction():
        if reset:
            # UIDVALIDITY changed: drop every old row (and the cursors) in the same commit
            # that records the re-pairings, so the new UIDs never collide with stale ones.
            # Resetting in a commit of its own lost the old synced flags when a crash came
            # before this one: the re-pairing then fell back to the union of both sides and
            # undid flags removed on one side (crash tests, "uidvalidity" scenario).
            state.reset_folder(fid)
        if guard_held != job.fstate.guard_held:
            # Kept from one sync to the next: new mail must not dilute a held guard away.
            state.set_guard_held(fid, guard_held)
        forgets, pairs = grouped[A.Forget], grouped[A.Pair]
        state.delete_messages(fid, (a.uid for a in forgets))
        if job.fstate_has_untracked:
            # Pairs parked outside the window that are forgotten or taken back.
            state.drop_untracked(fid, uids=[a.uid for a in (*forgets, *pairs)])
        if untracked_gone[0] or untracked_gone[1]:
            state.drop_untracked(fid, *untracked_gone)
        # A deletion the policy kept from the other side: the copy left is untracked.
        if any(a.keep for a in forgets):
            state.add_untracked(fid, uids=(a.uid for a in forgets if a.keep == "server"),
                                keys=(a.key for a in forgets if a.keep == "local"))
        parked = []
        for action in pairs:
            seen = paired_remote.get(action.uid)
            row = SyncedMessage(
                action.uid, action.key, action.flags,
                seen.size if seen and seen.size is not None else action.size,
                seen.message_id if seen and seen.message_id is not None else action.message_id,
                action.placeholder)
            if action.outside:
                parked.append(row)
            else:
                state.put_message(fid, row)
        if parked:
            state.put_outside(fid, parked)
        state.set_synced_flags_many(fid, ((a.uid, a.flags) for a in grouped[A.RecordFlags]))
    checkpoint("state-only.commit")
    job.result.paired += sum(1 for a in grouped[A.Pair] if not a.outside)
