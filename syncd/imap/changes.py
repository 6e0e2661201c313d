"""Flag changes and deletions of one folder's plan, on both sides: local renames (one commit),
local removals (one commit), moves to the trash, and every server STORE with the expunge in
one pipelined round trip (one commit). Each step is idempotent: after a crash anywhere the
next sync finds both sides agreeing and only records it (docs/architecture.md, "The order that
makes kill -9 safe")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from syncd.core import actions as A
from syncd.faults import checkpoint
from syncd.imap.client import raise_refused
from syncd.imap.job import FolderJob


def by_kind(actions: Sequence[A.Action]) -> defaultdict[type, list]:
    """The actions grouped by their type, each group in plan order."""
    grouped: defaultdict[type, list] = defaultdict(list)
    for action in actions:
        grouped[type(action)].append(action)
    return grouped


def set_local_flags(job: FolderJob, local: list[A.SetLocalFlags],
                    pushes: list[A.PushFlags]) -> list[A.PushFlags]:
    """The renames (then one commit); returns the pushes still to make: not for a message
    whose local file changed under us, as the push would record a target that misses the
    local change, and the next merge would then revert the server's."""
    renamed = []
    changed_meanwhile: set[int] = set()
    for action in local:
        try:
            # expect: the flags the plan saw. A MUA that renamed the file since must not
            # have its change overwritten (fault suite, concurrent local changes).
            if not job.folder.set_flags(action.key, action.flags,
                                        expect=job.local_flags.get(action.key)):
                changed_meanwhile.add(action.uid)  # left for the next sync to merge
                continue
        except FileNotFoundError:
            continue  # deleted meanwhile; the next sync sees the deletion
        renamed.append(action)
        checkpoint("local-flags.rename")
    if renamed:
        job.folder.sync()
        # synced_flags, not flags: with a PushFlags still to come it is the server's present
        # flags, so a crash before the push still pushes the target on the next sync
        # instead of reverting this rename (crash tests, mixed-04).
        job.state.set_synced_flags_many(job.fid, ((a.uid, a.synced_flags) for a in renamed))
        checkpoint("local-flags.commit")
    job.result.local_flag_changes += len(renamed)
    return [a for a in pushes if a.uid not in changed_meanwhile]


def delete_local(job: FolderJob, deletes: list[A.DeleteLocal]) -> None:
    """The server expunged these: remove the files, fsync, then drop the rows (one commit)."""
    if not deletes:
        return
    for action in deletes:
        job.folder.remove(action.key)
        checkpoint("delete-local.remove")
    job.folder.sync()
    job.state.delete_messages(job.fid, (a.uid for a in deletes))
    checkpoint("delete-local.commit")
    job.result.deleted_local += len(deletes)


def move_deleted(job: FolderJob, deletes: list[A.DeleteRemote]
                 ) -> tuple[list[A.DeleteRemote], list[int]]:
    """Local deletions, first half: the ones still gone after a fresh look, and the UIDs to
    expunge (push_remote does it). Those bound for the trash are moved there now; without
    MOVE they are copied and then expunged like the rest."""
    if not deletes:
        return [], []
    # Look again before deleting anything on the server: a file a MUA renamed while the scan
    # read the directory (new/ -> cur/, or a flag rename inside cur/) can be missing from that
    # scan without being gone; it was expunged and then uploaded again without its server
    # flags (fault suite, concurrent local changes). One fresh scan; what is really gone is
    # still gone.
    present = job.folder.scan()
    deletes = [a for a in deletes if a.key not in present]
    to_trash = [a.uid for a in deletes if a.trash_folder]
    to_expunge = [a.uid for a in deletes if not a.trash_folder]
    if to_trash:
        trash = deletes[0].trash_folder
        assert trash is not None
        if trash == job.fstate.remote_name:
            to_expunge += to_trash  # deleting inside the trash itself
        else:
            job.moved_into.add(trash)
            if not job.session.move(to_trash, trash):
                # Only copied (no MOVE): the expunge is left, and must never copy them again
                # should it be deferred (see push_remote).
                job.state.mark_expunge_pending(job.fid, to_trash)
                to_expunge += to_trash
            checkpoint("delete-remote.move")
    return deletes, to_expunge


def push_remote(job: FolderJob, pushes: list[A.PushFlags], to_expunge: list[int],
                deletes: list[A.DeleteRemote]) -> None:
    """Server flag changes (grouped so equal changes share one STORE) and the expunge of
    local deletions, pipelined: one round trip for all, then one commit of what the server
    accepted. Safe in any order and after a crash anywhere: a STORE or an EXPUNGE is
    idempotent, and until the commit the next sync sees both sides agree and only records
    it. ``deletes`` are the DeleteRemote actions (moved ones included) whose rows go once the
    expunge of ``to_expunge`` succeeded."""
    if not pushes and not deletes:
        return
    from syncd.imap.writes import write_changes

    state, fid = job.state, job.fid
    outcome = write_changes(job.session, pushes, to_expunge, job.storable)
    gone = set(to_expunge)
    deleted = [a for a in deletes if a.uid in outcome.expunge.expunged or a.uid not in gone]
    with state.transaction():
        state.set_synced_flags_many(fid, ((a.uid, a.flags) for a in outcome.pushed))
        state.delete_messages(fid, (a.uid for a in deleted))
        # Marked \Deleted, not expunged (no UIDPLUS; others marked too): the rows stay, so
        # nothing is downloaded again, and the next sync retries the expunge.
        state.mark_expunge_pending(fid, outcome.expunge.deferred)
        if outcome.unkept:
            state.add_unkept_flags(fid, outcome.unkept)
    checkpoint("remote-changes.commit")
    job.result.remote_flag_changes += len(outcome.pushed)
    job.result.deleted_remote += len(deleted)
    raise_refused(outcome.refused)  # what the server refused is a folder error, as before


def apply_flags(job: FolderJob, actions: list[A.Action]) -> None:
    """SetLocalFlags (renames, one commit), then PushFlags (STOREs, one commit), then
    RecordFlags; a uid's SetLocalFlags before its PushFlags, as the plan requires. For the
    flags of messages the downloads paired by content (see download.py)."""
    grouped = by_kind(actions)
    pushes = set_local_flags(job, grouped[A.SetLocalFlags], grouped[A.PushFlags])
    push_remote(job, pushes, [], [])
    if grouped[A.RecordFlags]:
        job.state.set_synced_flags_many(
            job.fid, ((a.uid, a.flags) for a in grouped[A.RecordFlags]))
