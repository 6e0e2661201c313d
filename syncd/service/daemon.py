"""The composition root of `syncd run`: load config, start one worker per account, IDLE
watchers, the filesystem watcher and the scheduler; handle signals, sd_notify and the status
file. It only schedules and wires; all syncing happens in the workers."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from syncd.core.folders import folder_selected
from syncd.errors import ConfigError, SyncdError
from syncd.hooks import run_new_mail_hooks
from syncd.locks import account_lock, daemon_lock
from syncd.service import sdnotify
from syncd.service.idle import IdleWatcher
from syncd.service.watch import DEBOUNCE, MaildirWatcher
from syncd.service.worker import AccountWorker
from syncd.status import record_result

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from syncd.config import AccountSettings, Settings
    from syncd.results import AccountResult

log = logging.getLogger("syncd.daemon")

STOP_GRACE = 4.0  # SIGTERM -> exit 0 within 5 s
TICK = 1.0
CLOCK_JUMP = 20.0  # wall clock moved this much more than the monotonic one: we were asleep


class AccountRuntime:
    """Everything the daemon runs for one account."""

    def __init__(self, daemon: Daemon, account: AccountSettings) -> None:
        self.account = account
        self.daemon = daemon
        self.locks = contextlib.ExitStack()
        self.worker = AccountWorker(daemon.settings, account, on_result=daemon.on_result,
                                    on_synced_folders=daemon.on_synced_folders)
        self.idle: list[IdleWatcher] = []
        self._watcher: Callable[..., IdleWatcher] | None = None
        self._watchers_lock = threading.Lock()  # the NOTIFY/IDLE decision adds watchers late
        self._stopped = False

    def start(self) -> None:
        self.locks.enter_context(account_lock(self.account.name,
                                              self.daemon.settings.general.state_dir))
        self.worker.start()
        self.worker.request(None, "startup")
        if self.account.protocol == "imap":
            from syncd.adapters.imap import ImapSession
            from syncd.secrets import get_password

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

    def _watch_mode(self, mode: str) -> None:
        log.info("%s: watching %s", self.account.name,
                 "every folder with NOTIFY" if mode == "notify"
                 else f"{', '.join(self.account.idle)} with IDLE")
        if mode != "idle":
            return
        assert self._watcher is not None
        from syncd.providers import idle_folders_within_limit

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

    def stop(self) -> None:
        with self._watchers_lock:
            self._stopped = True
            for watcher in self.idle:
                watcher.stop()
        self.worker.stop()

    def join(self, deadline: float) -> None:
        self.worker.join(max(0.0, deadline - time.monotonic()))
        for watcher in self.idle:
            watcher.join(max(0.0, min(0.5, deadline - time.monotonic())))
        self.locks.close()


class Daemon:
    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.accounts: dict[str, AccountRuntime] = {}
        self.watcher = MaildirWatcher(self.on_local_change)
        self.scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._status_lock = threading.Lock()
        from syncd.smtp.sender import OutboxSender

        self.outbox = OutboxSender(lambda: self.settings)  # sends queued mail (syncd.smtp)

    # --- events (any thread) --------------------------------------------------------------
    def on_remote_change(self, account: str, folder: str | None) -> None:
        runtime = self.accounts.get(account)
        if runtime is None:
            return
        filters = runtime.account.folders
        if folder is not None and not folder_selected(folder, filters.include, filters.exclude):
            return  # NOTIFY reports every folder; excluded ones are none of our business
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

    def on_synced_folders(self, account: str, folders: dict[str, str]) -> None:
        if account in self.accounts:
            self.watcher.set_account(account, folders)

    def on_result(self, worker: AccountWorker, result: AccountResult) -> None:
        with self._status_lock:
            record_result(self.settings.general.state_dir, result,
                          connection=worker.connection, daemon=True)
        run_new_mail_hooks(self.settings.general.on_new_mail, result, wait=False)
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
        except SyncdError as exc:
            log.error("%s", exc)
            runtime.stop()
            runtime.locks.close()
            return
        self.accounts[account.name] = runtime
        self._schedule(account)
        # Watch what the state already knows at once; the first full sync refreshes it.
        known = self._known_folders(account)
        if known:
            self.watcher.set_account(account.name, known)

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

    def _stop_account(self, name: str) -> None:
        runtime = self.accounts.pop(name, None)
        if runtime is None:
            return
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(f"poll-{name}")
        self.watcher.remove_account(name)
        runtime.stop()
        runtime.join(time.monotonic() + STOP_GRACE)

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
            lambda: self.accounts[name].worker.request(None, "poll")
            if name in self.accounts else None,
            "interval", seconds=max(5.0, account.poll_interval), id=f"poll-{name}",
            replace_existing=True)

    def _loop(self) -> None:
        watchdog = sdnotify.watchdog_interval()
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
            now_offset = time.time() - time.monotonic()
            if abs(now_offset - offset) > CLOCK_JUMP:
                log.info("the clock jumped by %.0f s (suspend?); reconnecting",
                         now_offset - offset)
                self.reconnect_all("wake")
            offset = now_offset
            if watchdog is not None and time.monotonic() - last_ping >= watchdog - 0.01:
                sdnotify.notify("WATCHDOG=1")
                last_ping = time.monotonic()
            status = self._status_line()
            if status != last_status:
                sdnotify.notify(f"STATUS={status}")
                last_status = status

    def _status_line(self) -> str:
        states = [f"{name}: {rt.worker.connection}" for name, rt in self.accounts.items()]
        return "; ".join(states) or "no accounts"

    def reconnect_all(self, reason: str) -> None:
        for runtime in self.accounts.values():
            for watcher in runtime.idle:
                watcher.reconnect()
            runtime.worker.reconnect_now(reason)

    def reload(self) -> None:
        from syncd.settings import load_settings

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
        for name in [n for n in old if n not in settings.accounts
                     or settings.accounts[n] != old[n]]:
            log.info("reload: stopping account %s", name)
            self._stop_account(name)
        for name, account in settings.accounts.items():
            if name not in self.accounts:
                log.info("reload: starting account %s", name)
                self._start_account(account)
        log.info("configuration reloaded: %d account(s)", len(self.accounts))

    def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        deadline = time.monotonic() + STOP_GRACE
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.watcher.stop()
        self.outbox.stop()
        for runtime in self.accounts.values():
            runtime.stop()
        for runtime in self.accounts.values():
            runtime.join(deadline)
        stuck = [name for name, rt in self.accounts.items() if rt.worker.is_alive()]
        if stuck:
            # Every state commit is crash-safe, so leaving a stuck network read behind loses
            # nothing; the next start recovers.
            log.warning("exiting while still busy: %s", ", ".join(stuck))
        log.info("syncd stopped")


def run_daemon(settings: Settings, *, config_path: Path | None, debug: bool = False) -> int:
    del debug
    return Daemon(settings, config_path).run()
