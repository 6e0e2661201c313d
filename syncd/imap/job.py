"""What executing one folder's plan works on: handed from step to step (syncd/imap/execute.py,
changes.py, download.py, upload.py) instead of each of them reaching back into the account."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from syncd.imap.client import ImapSession
    from syncd.outcome.results import FolderResult, Reporter
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import FolderState, StateStore


class FolderJob(NamedTuple):
    account: str  # the account's name, for messages
    session: ImapSession
    state: StateStore
    fstate: FolderState
    folder: MaildirFolder
    result: FolderResult  # where the counts and the folder's error go
    # The letters the server keeps in this folder (PERMANENTFLAGS less what it refused or
    # dropped before): the rest stay local-only (see syncd/imap/writes.py).
    storable: str
    # Local key -> the flags the plan saw: a rename expects them, so that a mail reader's
    # change made since is never overwritten (fault suite, concurrent local changes).
    local_flags: dict[str, str]
    reporter: Reporter
    # Checked between download groups: the daemon's SIGTERM finishes the current batch.
    should_stop: Callable[[], bool]
    # Folders this run moved messages into (trash_folder), shared by the account's folders:
    # their STATUS, taken before the move, must not let the status shortcut skip them.
    moved_into: set[str]
    # The folder's sync policy direction ("both", "pull", "push"): a Download's content
    # pairing moves only the receiving side's flags (core.plan.pair_actions).
    direction: str = "both"
    # The folder has untracked entries or parked pairs (state.untracked): Forget and Pair
    # actions must drop theirs.
    fstate_has_untracked: bool = False
    # The folder's UIDVALIDITY as selected now (a placeholder names its original by it).
    uidvalidity: int | None = None
    # Every local folder of the account as (server name, or None for one the state does not
    # know yet; MaildirFolder): where a mail reader may have moved a placeholder to.
    local_folders: Callable[[], list[tuple[str | None, MaildirFolder]]] | None = None

    @property
    def fid(self) -> int:
        return self.fstate.id
