"""What one folder's sync leaves in the state once it ends: the one place where its cursors,
its Maildir stamp and its last_sync are written. Cursors move only when the folder completed
(every action executed, not interrupted): until then the next sync looks again."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.folders import files_match
from syncd.faults import checkpoint

if TYPE_CHECKING:
    from syncd.imap.client import SelectInfo
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import FolderState, StateStore

# How a folder's sync ended (Ending.kind).
UNTOUCHED = "untouched"  # STATUS and two stats: nothing changed on either side
UNCHANGED = "unchanged"  # the scan and STATUS agree with the state: nothing to plan
PLANNED = "planned"  # a dry run: planned, nothing done, nothing recorded
INTERRUPTED = "interrupted"  # stopped between download groups: nothing may claim completion
COMPLETED = "completed"  # the plan executed


class Ending(NamedTuple):
    kind: str
    stamp: str | None = None  # the Maildir stamp taken before the scan
    info: SelectInfo | None = None  # the SELECT's numbers (COMPLETED)
    # COMPLETED under a policy that leaves messages out of the state: the server's count, to
    # compare STATUS with next time (FolderState.server_count)
    server_count: int | None = None
    counted_policy: str | None = None  # the policy it was counted under (fingerprint)


def record_folder(state: StateStore, fstate: FolderState, ending: Ending,
                  folder: MaildirFolder, *, error: str | None, clock: Callable[[], float],
                  untouched: list[FolderState]) -> None:
    """Record how the folder's sync ended. ``untouched`` collects the folders whose only
    change is last_sync, recorded together by record_untouched (one commit, one fsync)."""
    if ending.kind == UNTOUCHED:
        untouched.append(fstate)
    elif ending.kind == UNCHANGED:
        _record(state, fstate.id, fstate.uidvalidity, fstate.uidnext, fstate.highestmodseq,
                ending.stamp, clock(), fstate.server_count, fstate.counted_policy)
    elif ending.kind == COMPLETED:
        assert ending.info is not None
        info = ending.info
        # No stamp after a refused upload: the next sync must look at the files again and
        # retry it, not find the folder unchanged.
        stamp = (stamp_after_execute(state, folder, ending.stamp, fstate.id)
                 if error is None else None)
        _record(state, fstate.id, info.uidvalidity, info.uidnext, info.highestmodseq, stamp,
                clock(), ending.server_count, ending.counted_policy)
        checkpoint("folder.cursors")


def _record(state: StateStore, fid: int, uidvalidity: int | None, uidnext: int | None,
            highestmodseq: int | None, stamp: str | None, now: float,
            server_count: int | None = None, counted_policy: str | None = None) -> None:
    with state.transaction():  # one commit for all
        state.set_cursors(fid, uidvalidity=uidvalidity, uidnext=uidnext,
                          highestmodseq=highestmodseq, last_sync=now)
        state.set_local_stamp(fid, stamp)
        state.set_server_count(fid, server_count, counted_policy)


def record_untouched(state: StateStore, folders: list[FolderState], now: float) -> None:
    """last_sync of the folders the status shortcut found untouched, in one commit."""
    if folders:
        state.set_last_sync([f.id for f in folders], now)


def _mtimes(stamp: str | None) -> list[str] | None:
    """The directory mtimes of a MaildirFolder.stamp(), without the time it was taken."""
    return stamp.split()[:2] if stamp else None


def stamp_after_execute(state: StateStore, folder: MaildirFolder, scanned: str | None,
                        fid: int) -> str | None:
    """The stamp to record once the plan is executed. The one taken before the scan holds
    if the directories have not changed since. If they have (this sync's own renames,
    deliveries and removals, or a mail reader's), one more look tells which: the files
    exactly the synced ones means nothing is left to do, and a stamp taken before that
    look holds; otherwise the stamp from before the scan makes the next sync look.
    Either way syncd's own changes cost at most one scan more, never one per sync."""
    if _mtimes(folder.stamp()) == _mtimes(scanned):
        return scanned
    again = folder.stamp()
    if files_match(state.messages(fid), folder.scan()):
        return again
    return scanned
