"""The composition root of `syncd run`: load config, start one worker per account, IDLE
watchers, the filesystem watcher and the scheduler; handle signals, sd_notify and the status
file. It only schedules and wires; all syncing happens in the workers."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.core.folders import NO_NAMESPACE, Namespace, folder_selected
from syncd.errors import ConfigError, SyncdError
from syncd.locks import AccountBusy, AccountLock, daemon_lock
from syncd.outcome.status import record_result, update_account
from syncd.service import sdnotify
from syncd.service.health import Heartbeat, Stuck, find_stuck, stale_threshold
from syncd.service.hooks import HookRunner
from syncd.service.idle import IdleWatcher
from syncd.service.watch import DEBOUNCE, MaildirWatcher
from syncd.service.worker import AccountWorker, SyncSlots

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from syncd.config.load import AccountSettings, Settings
    from syncd.outcome.results import AccountResult

log = logging.getLogger("syncd.daemon")

STOP_GRACE = 4.0  # SIGTERM -> exit 0 within 5 s
TICK = 1.0
CLOCK_JUMP = 20.0  # wall clock moved this much more than the monotonic one: we were asleep
# An account whose lock another process holds at start (a `syncd sync` from cron): tried
# again after 1, 2, 4 ... seconds, at most LOCK_RETRY_CAP apart (a flock each: cheap).
LOCK_RETRY_START = 1.0
LOCK_RETRY_CAP = 30.0
# Account syncs at once (issue 21): memory grows with each sync under way, not with the number
# of accounts; two cores are busy with four, and a fifth account's sync waits its turn.
SYNC_SLOTS = 4


class AccountRuntime:
    """Everything the daemon runs for one account."""

    def __init__(self, daemon: Daemon, account: AccountSettings) -> None:
        self.account = account
        self.daemon = daemon
        self.lock = AccountLock(account.name, daemon.settings.general.state_dir)
        self.worker = AccountWorker(daemon.settings, account, on_result=daemon.on_result,
                                    on_synced_folders=self._synced_folders,
                                    slots=daemon.sync_slots)
        self.idle: list[IdleWatcher] = []
        self._watcher: Callable[..., IdleWatcher] | None = None
        self._watchers_lock = threading.Lock()  # the NOTIFY/IDLE decision adds watchers late
        self._stopped = False

    def start(self) -> None:
        """Take the account's lock (AccountBusy if another process holds it), then start."""
        self.lock.acquire()
        self.worker.start()
        self.worker.request(None, "startup")
        if self.account.protocol == "imap":
            from syncd.auth.secrets import get_password
            from syncd.imap.client import ImapSession

            account = self.account
            if not account.idle:
                return  # polling only

            def watcher(folder: str, *, first: bool) -> IdleWatcher:
                return IdleWatcher(
                    account, folder,
                    connect=lambda: ImapSession.connect(account, lambda: get_password(account)),
                    on_change=self.daemon.on_remote_change,
                    on_reconnect=self.daemon.on_server_back,
                    notify=first, on_mode=self._watch_mode if first else None)

            # The first watcher finds out whether the server offers NOTIFY: then its one
            # connection watches every folder; otherwise each `idle:` folder gets its own.
            self._watcher = watcher
            first = watcher(account.idle[0], first=True)
            self.idle.append(first)
            first.start()

    def namespace(self) -> Namespace:
        """The server's personal namespace as the IDLE/NOTIFY connections learnt it (the one
        that reports a folder by name has always asked); none known yet: no prefix."""
        with self._watchers_lock:
            known = [w.namespace for w in self.idle if w.namespace is not None]
        return known[0] if known else NO_NAMESPACE

    def _watch_mode(self, mode: str) -> None:
        log.info("%s: watching %s", self.account.name,
                 "every folder with NOTIFY" if mode == "notify"
                 else f"{', '.join(self.account.idle)} with IDLE")
        if mode != "idle":
            return
        assert self._watcher is not None
        from syncd.config.providers import idle_folders_within_limit

        watched, polled = idle_folders_within_limit(self.account.host, self.account.connections,
                                                    self.account.idle)
        if polled:
            log.warning("%s: %s allows %d connections at once: %s polled, not watched with IDLE",
                        self.account.name, self.account.host, len(watched) +
                        self.account.connections, ", ".join(polled))
        with self._watchers_lock:
            if self._stopped:
                return
            for folder in watched[1:]:
                extra = self._watcher(folder, first=False)
                self.idle.append(extra)
                extra.start()

    def _synced_folders(self, account: str, folders: dict[str, str]) -> None:
        # Only the account's current worker says what to watch: a worker still finishing
        # after a reload replaced it must not undo what its successor set (issue 16).
        if self.daemon.accounts.get(account) is self:
            self.daemon.watcher.set_account(account, folders)

    def heartbeats(self) -> list[Heartbeat]:
        with self._watchers_lock:
            return [self.worker.heartbeat, *(w.heartbeat for w in self.idle)]

    def stop(self) -> None:
        with self._watchers_lock:
            self._stopped = True
            for watcher in self.idle:
                watcher.stop()
        self.worker.stop()

    def join(self, deadline: float) -> bool:
        """Wait until the deadline; True once the worker has ended. Only then is the lock
        released: a worker still inside a sync owns the Maildir and the state, and a new
        worker for the account (a reload) must wait for it, not run beside it."""
        if self.worker.is_alive():
            self.worker.join(max(0.0, deadline - time.monotonic()))
        for watcher in self.idle:
            watcher.join(max(0.0, min(0.5, deadline - time.monotonic())))
        return self.release_if_done()

    def release_if_done(self) -> bool:
        if self.worker.is_alive():
            return False
        self.lock.release()
        return True


class LockWait:
    """An account whose lock another process held when the daemon wanted to start it."""

    def __init__(self, account: AccountSettings, holder: int | None) -> None:
        self.account = account
        self.holder = holder
        self.delay = LOCK_RETRY_START
        self.next_try = time.monotonic() + self.delay

    def again(self, holder: int | None) -> None:
        self.holder = holder
        self.delay = min(LOCK_RETRY_CAP, self.delay * 2)
        self.next_try = time.monotonic() + self.delay

    def describe(self) -> str:
        if self.holder == os.getpid():
            who = "the previous worker of this account (reload) to finish"
        elif self.holder:
            who = f"the lock held by pid {self.holder}"
        else:
            who = "the account's lock (held by another syncd process)"
        return f"waiting for {who}; next try in {self.delay:.0f} s"


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.accounts: dict[str, AccountRuntime] = {}
        # Accounts kept waiting for their lock, and runtimes replaced by a reload whose worker
        # had not finished its sync yet (they hold their lock until it has).
        self.waiting: dict[str, LockWait] = {}
        self.retiring: list[AccountRuntime] = []
        self.sync_slots = SyncSlots(SYNC_SLOTS)
        self.watcher = MaildirWatcher(self.on_local_change,
                                      canary_dir=settings.general.state_dir / "watch-probe")
        self.hooks = HookRunner()
        self.scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._status_lock = threading.Lock()
        from syncd.smtp.sender import OutboxSender

        self.outbox = OutboxSender(lambda: self.settings)  # sends queued mail (syncd.smtp)
        self._stuck: list[Stuck] = []

    # --- events (any thread) --------------------------------------------------------------
    def on_remote_change(self, account: str, folder: str | None) -> None:
        runtime = self.accounts.get(account)
        if runtime is None:
            return
        filters = runtime.account.folders
        # NOTIFY reports every folder by its server name; the patterns match it, or the name
        # without the namespace prefix, exactly as the engine selects folders (`include:
        # [Lists]` wants Courier's INBOX.Lists). Excluded ones are none of our business.
        if folder is not None and not folder_selected(folder, filters.include, filters.exclude,
                                                      namespace=runtime.namespace()):
            return
        runtime.worker.request(folder, "idle")

    def on_server_back(self, account: str, folder: str | None) -> None:
        """An IDLE watcher reconnected after losing its connection: the server is reachable
        again, so push what waited (local changes made offline) now, not after the backoff."""
        runtime = self.accounts.get(account)
        if runtime is not None:
            log.info("%s: the server is reachable again", account)
            runtime.worker.reconnect_now("server back")

    def on_local_change(self, account: str, folder: str) -> None:
        runtime = self.accounts.get(account)
        if runtime is not None:
            runtime.worker.request(folder, "local", delay=DEBOUNCE)

    def on_result(self, worker: AccountWorker, result: AccountResult) -> None:
        with self._status_lock:
            record_result(self.settings.general.state_dir, result,
                          connection=worker.connection, daemon=True)
        self.hooks.submit(self.settings.general.on_new_mail, result)
        if not result.error:
            self.outbox.reachable(result.account)

    # --- lifecycle (main thread) ----------------------------------------------------------
    def run(self) -> int:
        state_dir = self.settings.general.state_dir
        with daemon_lock(state_dir):
            self._install_signals()
            self.watcher.start()
            self._start_scheduler()
            for account in self.settings.accounts.values():
                self._start_account(account)
            self.outbox.start()
            sdnotify.notify("READY=1\nSTATUS=first sync under way")
            log.info("syncd running: %d account(s)", len(self.accounts))
            self._loop()
            self._shutdown()
        return 0

    def _record_waiting(self, name: str, text: str | None) -> None:
        """`syncd status` shows why an account is not running yet (None: it runs now)."""
        with self._status_lock:
            try:
                update_account(self.settings.general.state_dir, name, waiting=text)
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc)

    def _install_signals(self) -> None:
        # SIGUSR1 dumps every thread's stack to stderr (the journal): a stuck daemon can be
        # diagnosed without stopping it.
        with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _start_account(self, account: AccountSettings) -> None:
        runtime = AccountRuntime(self, account)
        try:
            runtime.start()
        except AccountBusy as exc:
            # A `syncd sync` (cron, a terminal) or our own previous worker is on it: wait for
            # it, never drop the account (issue 16).
            self._wait_for_lock(account, exc.holder)
            return
        except SyncdError as exc:
            log.error("%s", exc)
            runtime.stop()
            runtime.lock.release()
            return
        if self.waiting.pop(account.name, None) is not None:
            log.info("%s: got the account's lock; starting", account.name)
            self._record_waiting(account.name, None)
        self.accounts[account.name] = runtime
        self._schedule(account)
        # Watch what the state already knows at once; the first full sync refreshes it.
        known = self._known_folders(account)
        if known:
            self.watcher.set_account(account.name, known)

    def _wait_for_lock(self, account: AccountSettings, holder: int | None) -> None:
        wait = self.waiting.get(account.name)
        if wait is None:
            wait = self.waiting[account.name] = LockWait(account, holder)
            log.warning("%s: %s", account.name, wait.describe())
        else:
            wait.account = account
            wait.again(holder)
        self._record_waiting(account.name, wait.describe())

    def _retry_waiting(self) -> None:
        now = time.monotonic()
        for name, wait in list(self.waiting.items()):
            if wait.next_try <= now and name not in self.accounts:
                self._start_account(wait.account)

    def _retire(self) -> None:
        """Release the locks of replaced runtimes whose worker has finished by now."""
        still: list[AccountRuntime] = []
        for runtime in self.retiring:
            if not runtime.release_if_done():
                still.append(runtime)
            elif runtime.account.name in self.waiting:
                self.waiting[runtime.account.name].next_try = 0.0  # its successor, now
        self.retiring = still

    def _known_folders(self, account: AccountSettings) -> dict[str, str]:
        if account.protocol != "imap" or not account.state_path.exists():
            return {}
        import sqlite3

        try:
            conn = sqlite3.connect(f"file:{account.state_path}?mode=ro", uri=True, timeout=5)
            try:
                return dict(conn.execute("SELECT remote_name, local_path FROM folder"))
            finally:
                conn.close()
        except sqlite3.Error:
            return {}

    def _stop_account(self, name: str) -> AccountRuntime | None:
        """Stop an account's threads (without waiting for them: see _join_stopped)."""
        if self.waiting.pop(name, None) is not None:
            self._record_waiting(name, None)
        runtime = self.accounts.pop(name, None)
        if runtime is None:
            return None
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(f"poll-{name}")
        self.watcher.remove_account(name)
        runtime.stop()
        return runtime

    def _join_stopped(self, runtimes: list[AccountRuntime]) -> None:
        """Wait a little for stopped accounts; a worker still inside a sync (its batch is
        finishing) keeps its lock until it ends, and the account's new runtime waits."""
        deadline = time.monotonic() + STOP_GRACE
        for runtime in runtimes:
            if not runtime.join(deadline):
                log.info("%s: the previous worker is finishing its sync; the new one waits",
                         runtime.account.name)
                self.retiring.append(runtime)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            daemon=True)
        self.scheduler.start()

    def _schedule(self, account: AccountSettings) -> None:
        """Polls (POP3 fetches, the periodic full check of every IMAP folder) only enqueue."""
        assert self.scheduler is not None
        name = account.name
        self.scheduler.add_job(
            lambda: self._poll(name),
            "interval", seconds=max(5.0, account.poll_interval), id=f"poll-{name}",
            replace_existing=True)

    def _poll(self, name: str) -> None:
        # The scheduler's thread: a reload may remove the account at any moment, so one
        # lookup (a check and then an index raced it: KeyError).
        runtime = self.accounts.get(name)
        if runtime is not None:
            runtime.worker.request(None, "poll")

    def heartbeats(self) -> list[Heartbeat]:
        beats = [self.watcher.heartbeat]
        for runtime in list(self.accounts.values()):
            beats += runtime.heartbeats()
        return beats

    def _healthy(self, threshold: float) -> bool:
        """Every thread making progress or waiting on purpose (service/health.py); a worker
        thread that died counts as stuck. Logs a change of verdict once."""
        stuck = find_stuck(self.heartbeats(), threshold)
        for name, runtime in list(self.accounts.items()):
            if not runtime.worker.is_alive():
                stuck.append(Stuck(f"worker {name}", 0.0, "its thread has ended"))
        if stuck and not self._stuck:
            log.error("not telling systemd we are alive (it will restart syncd): %s",
                      "; ".join(s.describe() for s in stuck))
        elif self._stuck and not stuck:
            log.warning("every thread is moving again")
        self._stuck = stuck
        return not stuck

    def _loop(self) -> None:
        watchdog = sdnotify.watchdog_interval()
        # WATCHDOG_USEC is twice the ping interval; a thread busy without a beat for longer
        # than the threshold (below it) stops the pings, and systemd restarts the daemon.
        threshold = stale_threshold(2 * watchdog) if watchdog is not None else None
        last_probe = 0.0
        last_ping = time.monotonic()
        last_status = ""
        offset = time.time() - time.monotonic()
        while not self._stop.is_set():
            timeout = TICK
            if watchdog is not None:
                # Wake up for the next ping on time, not up to a TICK late: a ping due a hair
                # after a wake-up would otherwise wait a whole TICK more (and with
                # WatchdogSec=1s, a TICK is all systemd allows).
                timeout = max(0.0, min(TICK, last_ping + watchdog - time.monotonic()))
            self._stop.wait(timeout)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._retire()
            self._retry_waiting()
            now_offset = time.time() - time.monotonic()
            if abs(now_offset - offset) > CLOCK_JUMP:
                log.info("the clock jumped by %.0f s (suspend?); reconnecting",
                         now_offset - offset)
                self.reconnect_all("wake")
            offset = now_offset
            if threshold is not None and time.monotonic() - last_probe >= threshold / 3:
                # The filesystem watcher beats only when it delivers an event: give it one.
                self.watcher.probe()
                last_probe = time.monotonic()
            if watchdog is not None and time.monotonic() - last_ping >= watchdog - 0.01:
                assert threshold is not None
                if self._healthy(threshold):
                    sdnotify.notify("WATCHDOG=1")
                last_ping = time.monotonic()
            status = self._status_line()
            if status != last_status:
                sdnotify.notify(f"STATUS={status}")
                last_status = status

    def _status_line(self) -> str:
        states = [f"{name}: {rt.worker.connection}" for name, rt in self.accounts.items()]
        states += [f"{name}: {wait.describe()}" for name, wait in self.waiting.items()]
        if self._stuck:
            states.insert(0, "STUCK: " + "; ".join(s.describe() for s in self._stuck))
        return "; ".join(states) or "no accounts"

    def reconnect_all(self, reason: str) -> None:
        for runtime in self.accounts.values():
            for watcher in runtime.idle:
                watcher.reconnect()
            runtime.worker.reconnect_now(reason)

    def reload(self) -> None:
        from syncd.config.cache import load_settings

        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        if settings.general != self.settings.general:
            log.warning("reload: changes under `general` take effect after a restart "
                        "(only accounts are reloaded)")
            settings = settings._replace(general=self.settings.general)
        old = self.settings.accounts
        self.settings = settings
        stopped: list[AccountRuntime] = []
        for name in [n for n in old if n not in settings.accounts
                     or settings.accounts[n] != old[n]]:
            log.info("reload: stopping account %s", name)
            runtime = self._stop_account(name)
            if runtime is not None:
                stopped.append(runtime)
        # Stop them all, then wait once: several changed accounts cost one grace period.
        self._join_stopped(stopped)
        for name, account in settings.accounts.items():
            if name not in self.accounts and name not in self.waiting:
                log.info("reload: starting account %s", name)
                self._start_account(account)
        log.info("configuration reloaded: %d account(s)%s", len(self.accounts),
                 f", {len(self.waiting)} waiting for their lock" if self.waiting else "")

    def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        deadline = time.monotonic() + STOP_GRACE
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.watcher.stop()
        self.outbox.stop()
        for runtime in self.accounts.values():
            runtime.stop()
        for runtime in [*self.accounts.values(), *self.retiring]:
            runtime.join(deadline)
        for name in self.waiting:
            self._record_waiting(name, None)
        self.hooks.stop(max(0.0, deadline - time.monotonic()))
        stuck = [name for name, rt in self.accounts.items() if rt.worker.is_alive()]
        if stuck:
            # Every state commit is crash-safe, so leaving a stuck network read behind loses
            # nothing; the next start recovers.
            log.warning("exiting while still busy: %s", ", ".join(stuck))
        log.info("syncd stopped")


def run_daemon(settings: Settings, *, config_path: Path | None, debug: bool = False) -> int:
    del debug
    return Daemon(settings, config_path).run()
