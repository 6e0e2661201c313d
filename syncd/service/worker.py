"""One AccountWorker thread per account: it alone owns the account's connection and state.
Everything else (IDLE watchers, the filesystem watcher, the scheduler, SIGHUP) only calls
request(); requests coalesce, so a burst of events costs one sync."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd import faults
from syncd.heap import release_free_memory
from syncd.outcome.results import AccountResult
from syncd.service.health import BeatReporter, Heartbeat

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings, Settings
    from syncd.imap.account import AccountSync
    from syncd.store.state import StateStore

log = logging.getLogger("syncd.worker")

BACKOFF_START = 2.0
BACKOFF_CAP = 300.0
AUTH_RETRY = 900.0  # a wrong password is retried slowly, never hammered


def throttle_pause(account: str) -> tuple[float, str] | None:
    """(seconds left, status text) of the pause a throttling reply set, or None."""
    from syncd.config.providers import PAUSES, describe_pause

    pause = PAUSES.get(account)
    if pause is None:
        return None
    return PAUSES.remaining(account), describe_pause(pause)


def next_backoff(previous: float | None, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with ±25% jitter, capped: 2, 4, 8, ... 300 s."""
    base = BACKOFF_START if previous is None else min(BACKOFF_CAP, previous * 2)
    return min(BACKOFF_CAP, base * (0.75 + 0.5 * rng()))


class SyncSlots:
    """At most ``size`` account syncs at once in one daemon (issue 21). A sync holds its
    folders' listings, its plan and its connections in memory: twenty accounts' first syncs
    at once peaked at twenty times one. The others wait for a slot; a no-change sync holds
    one for a fraction of a second."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._cond = threading.Condition()

    def acquire(self, stopping: threading.Event) -> bool:
        """Wait for a slot; False when ``stopping`` was set first."""
        with self._cond:
            while self.busy >= self.size:
                if stopping.is_set():
                    return False
                # Woken by release(); the timeout only lets a stop be seen while waiting
                # (only under contention, never while the daemon is idle).
                self._cond.wait(1.0)
            if stopping.is_set():
                return False
            self.busy += 1
            return True

    def release(self) -> None:
        with self._cond:
            self.busy -= 1
            self._cond.notify()


@dataclass
class Pending:
    full: bool = False
    folders: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)
    due: float | None = None  # monotonic time the coalesced request may run

    def empty(self) -> bool:
        return not self.full and not self.folders


class AccountWorker(threading.Thread):
    def __init__(self, settings: Settings, account: AccountSettings, *,
                 on_result: Callable[[AccountWorker, AccountResult], None] | None = None,
                 on_synced_folders: Callable[[str, dict[str, str]], None] | None = None,
                 slots: SyncSlots | None = None) -> None:
        super().__init__(name=f"worker-{account.name}", daemon=True)
        self.settings = settings
        self.account = account
        self.on_result = on_result
        self.on_synced_folders = on_synced_folders
        self.slots = slots  # shared by the daemon's workers; None: no limit
        self._cond = threading.Condition()
        self._pending = Pending()
        self._stopping = threading.Event()
        self._retry_at: float | None = None  # monotonic; None = not backing off
        self._backoff: float | None = None
        self.connection = "starting"
        self.last_result: AccountResult | None = None
        self.syncs = 0
        # Beats at every step of a sync, waits on purpose between syncs (service/health.py).
        self.heartbeat = Heartbeat(f"worker {account.name}")

    # --- called from other threads --------------------------------------------------------
    def request(self, folder: str | None = None, reason: str = "", delay: float = 0.0) -> None:
        """Ask for a sync of one folder (None: the whole account), at the earliest after
        `delay` seconds (debounce)."""
        with self._cond:
            if folder is None:
                self._pending.full = True
            else:
                self._pending.folders.add(folder)
            if reason:
                self._pending.reasons.add(reason)
            due = time.monotonic() + delay
            if self._pending.due is None or due < self._pending.due:
                self._pending.due = due
            self._cond.notify()

    def reconnect_now(self, reason: str) -> None:
        """The network changed (wake from suspend, a watcher saw the server come back):
        forget the backoff and sync everything."""
        with self._cond:
            self._retry_at = None
            self._backoff = None
        self.request(None, reason)

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the thread -----------------------------------------------------------------------
    def _take(self) -> Pending | None:
        """Block until a request is due (or we stop); return it, or None to stop."""
        with self._cond:
            while not self._stopping.is_set():
                now = time.monotonic()
                if not self._pending.empty():
                    waits = [self._pending.due or now]
                    if self._retry_at is not None:
                        waits.append(self._retry_at)
                    ready = max(waits)
                    if ready <= now:
                        taken, self._pending = self._pending, Pending()
                        self.heartbeat.beat("syncing")
                        return taken
                    self.heartbeat.waiting("waiting to retry" if self._retry_at else "idle")
                    self._cond.wait(ready - now)
                else:
                    self.heartbeat.waiting("idle")
                    self._cond.wait()
            return None

    def progress(self, step: str = "") -> None:
        """The sync moved (a checkpoint, a folder, a download group): a heartbeat."""
        self.heartbeat.beat(f"syncing: {step}" if step else None)

    def run(self) -> None:
        faults.set_progress(self.progress)
        runner = self._make_runner()
        try:
            while True:
                taken = self._take()
                if taken is None:
                    break
                result = self._sync(runner, None if taken.full else frozenset(taken.folders))
                if result is None:
                    break  # stopped while waiting for a slot
                self._after(result, taken)
        finally:
            closer = getattr(runner, "close", None)
            if closer is not None:
                closer()

    def _sync(self, runner: Callable[[frozenset[str] | None], AccountResult],
              folders: frozenset[str] | None) -> AccountResult | None:
        """One sync in one of the daemon's slots; None if we stopped waiting for one."""
        if self.slots is not None:
            self.heartbeat.waiting("waiting for a sync slot")
            if not self.slots.acquire(self._stopping):
                return None
            self.heartbeat.beat("syncing")
        try:
            return runner(folders)
        except Exception as exc:  # a bug must not kill the account's thread forever
            log.exception("%s: sync failed unexpectedly", self.account.name)
            return AccountResult(self.account.name, error=f"internal error: {exc}")
        finally:
            if self.slots is not None:
                self.slots.release()
            # What the sync freed goes back to the kernel, so that the idle daemon's RSS
            # is what it holds, not the high-water mark of its busiest sync.
            release_free_memory()

    def _after(self, result: AccountResult, taken: Pending) -> None:
        self.heartbeat.beat("recording the result")
        self.syncs += 1
        self.last_result = result
        # A throttling reply (syncd/config/providers.py) pauses the account however the sync ended.
        paused = throttle_pause(self.account.name)
        if result.error or paused:
            auth = result.error_cause == "auth"
            with self._cond:
                self._backoff = AUTH_RETRY if auth else next_backoff(self._backoff)
                if paused:
                    self._backoff = max(self._backoff, paused[0])
                self._retry_at = time.monotonic() + self._backoff
                # What we could not do is still to do: keep it queued for the retry.
                self._pending.full = self._pending.full or taken.full
                self._pending.folders |= taken.folders
                self._pending.due = self._pending.due or time.monotonic()
            self.connection = paused[1] if paused else (
                f"{'auth failed' if auth else 'offline'}, retry in {self._backoff:.0f} s")
            log.warning("%s: %s (retry in %.0f s)", self.account.name,
                        result.error or self.connection, self._backoff)
        else:
            with self._cond:
                self._backoff = None
                self._retry_at = None
            self.connection = "connected" if self.account.protocol == "imap" else "idle"
            if any(f.changed for f in result.folders):
                log.info("%s", result.summary())
        if self.on_result is not None:
            self.on_result(self, result)

    def _make_runner(self) -> Callable[[frozenset[str] | None], AccountResult]:
        if self.account.protocol == "pop3":
            return self._pop3_runner()
        return ImapRunner(self, self.settings, self.account)

    def _pop3_runner(self) -> Callable[[frozenset[str] | None], AccountResult]:
        from syncd.pop3.fetch import sync_pop3_account

        def run(_folders: frozenset[str] | None) -> AccountResult:
            return sync_pop3_account(self.settings, self.account)

        return run


class ImapRunner:
    """Keeps one AccountSync (and its connection and state store) for the worker's life."""

    def __init__(self, worker: AccountWorker, settings: Settings,
                 account: AccountSettings) -> None:
        self.worker = worker
        self.account = account
        self.settings = settings
        self._state: StateStore | None = None
        self._sync: AccountSync | None = None

    def _ensure(self) -> AccountSync:
        if self._sync is None:
            from syncd.auth.secrets import get_password
            from syncd.imap.account import AccountSync
            from syncd.imap.client import ImapSession
            from syncd.store.state import StateStore

            state, rebuilt = StateStore.open_or_rebuild(self.account.state_path)
            if rebuilt:
                log.warning("%s: the state database was corrupt; moved aside and rebuilt by "
                            "pairing messages by content", self.account.name)
            self._state = state
            account = self.account
            self._sync = AccountSync(
                account, state,
                lambda: ImapSession.connect(account, lambda: get_password(account)),
                reporter=BeatReporter(self.worker.heartbeat))
            self._sync.should_stop = self._should_stop
        return self._sync

    def _should_stop(self) -> bool:
        # Asked between folders and download groups, also by the sync's extra connections'
        # threads: progress of the account's sync, whichever thread makes it.
        self.worker.progress()
        return self.worker.stopping

    def __call__(self, folders: frozenset[str] | None) -> AccountResult:
        sync = self._ensure()
        reused = sync.session is not None
        result = sync.run(folders, keep_open=True)
        if result.error and reused and result.error_cause != "auth" and not self.worker.stopping:
            # The connection kept open since the last sync may have died meanwhile (the
            # server's 30-minute autologout, a NAT timeout, a server restart): one immediate
            # retry on a fresh connection, so that only a real outage costs a backoff.
            log.info("%s: the kept-open connection failed (%s); reconnecting",
                     self.account.name, result.error)
            first = result
            result = sync.run(folders, keep_open=True)
            # Keep what the failed attempt did (its downloads count for on_new_mail).
            result.folders[:0] = [f for f in first.folders if f.changed]
        assert self._state is not None
        self._state.shrink_memory()
        if folders is None and not result.error and self.worker.on_synced_folders is not None:
            self.worker.on_synced_folders(
                self.account.name,
                {f.remote_name: f.local_path for f in self._state.folders()})
        return result

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._state is not None:
            self._state.close()
