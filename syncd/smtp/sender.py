"""The daemon's sending thread: one for every account's outbox.

It looks at the queue directories once a second (a stat of each ``new/``: mutt's `syncd send`
renames a message there, which changes the directory's mtime), so a message written while
the daemon runs goes out within a second when the server is reachable. Messages that could
not go wait for their backoff (``next_attempt`` in their record); ``reachable(account)`` (an
IMAP sync of the account just succeeded, e.g. after a wake-up or the network coming back)
makes those that waited for the network due at once. The daemon wires it with three calls:
``start``, ``reachable`` and ``stop``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.errors import SyncdError
from syncd.smtp import queue_dir

if TYPE_CHECKING:
    from syncd.config.settings import AccountSettings, Settings

__all__ = ["OutboxSender"]

log = logging.getLogger("syncd.outbox")

TICK = 1.0


class OutboxSender(threading.Thread):
    def __init__(self, settings: Callable[[], Settings]) -> None:
        super().__init__(name="outbox", daemon=True)
        self._settings = settings  # read at every tick: a SIGHUP reload is seen at once
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._seen: dict[str, int] = {}  # account -> mtime_ns of new/ when last looked at
        self._due: dict[str, float] = {}  # account -> earliest next attempt (wall clock)

    def reachable(self, account: str) -> None:
        """The account's server answered: what waits for the network may go now."""
        if self._due.get(account) is None:
            return
        from syncd.smtp.queue import Outbox

        try:
            settings = self._settings()
            state_dir = settings.accounts[account].state_dir
            outbox = Outbox.of(state_dir, account)
            for record in outbox.records():
                if record.state != "failed" and record.next_attempt > time.time():
                    record.next_attempt = 0.0
                    outbox.write_record(record)
        except (KeyError, OSError, SyncdError):
            return
        self._due[account] = 0.0
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for account in list(self._settings().accounts.values()):
                if self._stop_event.is_set():
                    break
                if account.smtp is not None and self._wants(account):
                    self._flush(account)
            self._wake.wait(TICK)
            self._wake.clear()

    def _wants(self, account: AccountSettings) -> bool:
        try:
            mtime = os.stat(queue_dir(account.state_dir, account.name) / "new").st_mtime_ns
        except OSError:
            return False
        changed = self._seen.get(account.name) != mtime
        self._seen[account.name] = mtime
        due = self._due.get(account.name)
        return changed or (due is not None and due <= time.time())

    def _flush(self, account: AccountSettings) -> None:
        from syncd.smtp.flush import flush_account
        from syncd.smtp.queue import Outbox, OutboxBusy

        try:
            report = flush_account(account, due_only=True)
        except OutboxBusy:
            self._due[account.name] = time.time() + TICK  # `syncd outbox flush` has it
            return
        except (SyncdError, OSError) as exc:
            log.error("%s: outbox: %s", account.name, exc)
            self._due[account.name] = time.time() + 60.0
            return
        if report.sent or report.failed or report.error:
            log.info("%s", report.summary())
        waiting = [r.next_attempt for r in Outbox.of(account.state_dir, account.name).records()
                   if r.state != "failed"]
        self._due[account.name] = min(waiting) if waiting else None  # type: ignore[assignment]
