"""One folder's sync, as data flows through it: open (the state's row, open intents
recovered) -> gather (state rows once, Maildir scan, server view) -> plan (core/plan, pure) ->
execute (execute.py, in the crash-safe order) -> record (record.py, in one place).

Two shortcuts end it before planning: STATUS equal to the cursors with the Maildir
directories as the last sync left them (untouched: two stats, no per-message work), or the
scan holding exactly the synced files (unchanged). Either way the ending is recorded by
record.py like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from syncd.config.settings import FolderSettings
from syncd.core.folders import Namespace, folder_untouched, glob_matcher
from syncd.core.model import FolderPolicy
from syncd.imap.gather import (
    FolderView,
    LocalScan,
    WindowSpec,
    gather_view,
    read_rows,
    scan_local,
    unchanged,
    with_digests,
)
from syncd.imap.record import (
    COMPLETED,
    INTERRUPTED,
    PLANNED,
    UNCHANGED,
    UNTOUCHED,
    Ending,
    record_folder,
)
from syncd.imap.recover import recover

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.core.actions import FolderPlan
    from syncd.core.model import FolderStatus
    from syncd.imap.client import ImapSession
    from syncd.outcome.results import FolderResult, Reporter
    from syncd.store.maildir import MaildirFolder
    from syncd.store.state import FolderState, StateStore

log = logging.getLogger("syncd.imap.account")


def folder_policy(account: AccountSettings, name: str, namespace: Namespace) -> FolderSettings:
    """The sync policy keys of server folder ``name``: the account's, overridden by the first
    matching ``folder_settings`` glob."""
    if not account.folder_settings:
        return FolderSettings(account.direction, account.delete, account.create_folders,
                              account.max_age, account.max_messages, account.max_size,
                              account.fetch_flagged)
    return account.folder_policy(glob_matcher(name, namespace=namespace))


def expected_count(state: StateStore, fstate: FolderState, keys: FolderSettings) -> int:
    """How many messages STATUS must report for the folder to be untouched: the server's
    count at the last completed sync where the policy leaves some out of the state, else the
    synced rows; -1 (never) when the policy changed since (a window narrowed or widened)."""
    if fstate.counted_policy != keys.fingerprint:
        return -1
    if fstate.server_count is not None:
        return fstate.server_count
    return state.message_count(fstate.id)


def window_label(spec: WindowSpec) -> str:
    """"last 90 days", "newest 500", or both: what `syncd status` says a window mirrors."""
    parts = []
    if spec.max_age is not None:
        days = spec.max_age / 86400
        parts.append(f"last {days:g} days" if days >= 1 else f"last {spec.max_age:g} s")
    if spec.max_messages is not None:
        parts.append(f"newest {spec.max_messages:,}")
    return ", ".join(parts)


class SyncOptions(NamedTuple):
    dry_run: bool = False
    force_deletions: bool = False
    # Only these folders (server names); None = every folder the config selects.
    only_folders: frozenset[str] | None = None
    # Skip SELECT when STATUS and the local scan show nothing changed (cheap periodic checks).
    use_status_shortcut: bool = True


class FolderSync:
    """Syncs folders of one account on one connection and one state store (the account's,
    or a parallel worker's); owns nothing beyond a run."""

    def __init__(self, account: AccountSettings, state: StateStore, session: ImapSession,
                 options: SyncOptions, *, reporter: Reporter,
                 should_stop: Callable[[], bool], moved_into: set[str],
                 untouched: list[FolderState], clock: Callable[[], float] = time.time,
                 local_folders: Callable[[], list[tuple[str | None, MaildirFolder]]]
                 | None = None) -> None:
        self.account = account
        self.state = state
        self.session = session
        self.options = options
        self.reporter = reporter
        self.should_stop = should_stop
        self.moved_into = moved_into  # see FolderJob.moved_into
        self.untouched = untouched  # see record_folder
        self.clock = clock
        # Every local folder of the account (see FolderJob.local_folders).
        self.local_folders = local_folders

    def run(self, name: str, place: MaildirFolder, status: FolderStatus | None,
            result: FolderResult) -> None:
        """Sync the server folder ``name`` with the local folder ``place``; what it did goes
        into ``result``. A dry run plans and records nothing."""
        fstate = self._open(name, place)
        ending = self._sync(name, fstate, place, status, result)
        if fstate is not None and not self.options.dry_run:
            record_folder(self.state, fstate, ending, place, error=result.error,
                          clock=self.clock, untouched=self.untouched)
        # The folder's end, for the progress display and the daemon's heartbeat (a folder
        # with much to do but nothing to download beats here too).
        self.reporter.folder_done(self.account.name, name)

    def _open(self, name: str, place: MaildirFolder) -> FolderState | None:
        """The folder's row (made on its first sync), with the intents a crash left open
        finished or undone. A dry run changes nothing: a new folder has no row."""
        fstate = self.state.folder(name)
        if self.options.dry_run:
            return fstate
        if fstate is None:
            fstate = self.state.ensure_folder(name, str(place.path))
        recover(self.session, self.state, fstate, place, self.account.name)
        return fstate

    def _sync(self, name: str, fstate: FolderState | None, place: MaildirFolder,
              status: FolderStatus | None, result: FolderResult) -> Ending:
        if self._untouched(fstate, status, place):
            return Ending(UNTOUCHED)
        keys = folder_policy(self.account, name, self.session.personal_namespace())
        rows = read_rows(self.state, fstate)
        scan, created = scan_local(place, rows.synced, dry=self.options.dry_run)
        if created:
            result.created_local = True
        if (self.options.use_status_shortcut and fstate is not None and status is not None
                and unchanged(fstate, status, rows, scan, condstore=self.session.condstore,
                              policy_changed=fstate.counted_policy != keys.fingerprint)):
            return Ending(UNCHANGED, scan.stamp)
        window = None
        if keys.max_age is not None or keys.max_messages is not None:
            window = WindowSpec(keys.max_age, keys.max_messages, self.clock())
        view = gather_view(self.session, fstate, name, status, rows, scan, place,
                           self._policy(keys, fstate, scan), window)
        if window is not None and view.snapshot.window is not None:
            result.window = (window_label(window), len(view.snapshot.window),
                             view.info.exists or 0)
        plan = self._plan(name, view, place, result)
        if self.options.dry_run:
            return Ending(PLANNED)
        assert fstate is not None
        self._execute(plan, view, fstate, place, scan, result)
        if self.should_stop():
            return Ending(INTERRUPTED)
        # A policy that leaves messages out of the state: next time STATUS is compared with
        # the server's count, not the synced rows (FolderState.server_count).
        fingerprint = keys.fingerprint
        narrows = fingerprint is not None or bool(view.snapshot.outside)
        return Ending(COMPLETED, scan.stamp, view.info,
                      view.info.exists if narrows else None, fingerprint)

    def _untouched(self, fstate: FolderState | None, status: FolderStatus | None,
                   place: MaildirFolder) -> bool:
        """Nothing changed on either side: STATUS equals the cursors and the Maildir
        directories are as the last sync left them. Two stats and no per-message work, so a
        no-change sync costs the same for 100 messages or 100,000."""
        if (not self.options.use_status_shortcut or fstate is None or status is None
                or self.options.force_deletions):
            return False
        return folder_untouched(
            fstate, status, condstore=self.session.condstore,
            synced_count=lambda: expected_count(self.state, fstate, self._keys(fstate)),
            local_unchanged=lambda: place.unchanged_since(fstate.local_stamp))

    def _keys(self, fstate: FolderState) -> FolderSettings:
        return folder_policy(self.account, fstate.remote_name,
                             self.session.personal_namespace())

    def _policy(self, keys: FolderSettings, fstate: FolderState | None,
                scan: LocalScan) -> FolderPolicy:
        """What the planner may do here (gather_view adds what the server keeps)."""
        return FolderPolicy(trash_folder=self.account.trash_folder,
                            force_deletions=self.options.force_deletions,
                            local_folder_missing=scan.folder_missing,
                            guard_held=fstate is not None and fstate.guard_held,
                            direction=keys.direction, delete=keys.delete,
                            max_size=keys.max_size, fetch_flagged=bool(keys.fetch_flagged))

    def _plan(self, name: str, view: FolderView, place: MaildirFolder,
              result: FolderResult) -> FolderPlan:
        # The planner is imported when a folder first needs a plan: a sync with nothing to do
        # (most of them) never plans, and starts ~15 ms sooner without it.
        from syncd.core.plan import describe, plan_folder

        plan = plan_folder(with_digests(self.session, view.snapshot, place, self.account.name))
        # With the local folder missing, the plan's "guard" only says that its messages are
        # downloaded again: a warning, not a refusal that fails the run.
        if view.snapshot.policy.local_folder_missing:
            result.notice = plan.guard
        else:
            result.guard = plan.guard
        if plan.guard:
            log.warning("%s/%s: %s", self.account.name, name, plan.guard)
        if self.options.dry_run:
            result.plan_lines = describe(plan)
        return plan

    def _execute(self, plan: FolderPlan, view: FolderView, fstate: FolderState,
                 place: MaildirFolder, scan: LocalScan, result: FolderResult) -> None:
        from syncd.core import actions as A
        from syncd.imap.execute import execute
        from syncd.imap.job import FolderJob

        if view.uidvalidity_changed:
            log.warning("%s/%s: UIDVALIDITY changed (%s -> %s); re-pairing by content",
                        self.account.name, fstate.remote_name, fstate.uidvalidity,
                        view.info.uidvalidity)
        # Past planning only pairings look the server's view up again; the rest is in the
        # plan.
        pairs = {a.uid for a in plan.actions if isinstance(a, A.Pair)}
        paired_remote = {m.uid: m for m in view.snapshot.remote if m.uid in pairs}
        snapshot = view.snapshot
        job = FolderJob(self.account.name, self.session, self.state, fstate, place, result,
                        snapshot.policy.storable,
                        {m.key: m.flags for m in snapshot.local}, self.reporter,
                        self.should_stop, self.moved_into, snapshot.policy.direction,
                        bool(snapshot.untracked_uids or snapshot.untracked_keys
                             or snapshot.outside),
                        view.info.uidvalidity, self.local_folders)
        # The guard's verdict is kept (held) unless the folder itself vanished locally.
        held = plan.guard is not None and not scan.folder_missing
        # Untracked copies gone from their side need remembering no longer.
        gone_uids: set[int] = set()
        if snapshot.untracked_uids:
            gone_uids = set(snapshot.untracked_uids) - {m.uid for m in snapshot.remote}
        gone_keys = {key for key in snapshot.untracked_keys if key not in scan.entries}
        execute(job, plan, paired_remote, reset=view.uidvalidity_changed, guard_held=held,
                untracked_gone=(gone_uids, gone_keys))
