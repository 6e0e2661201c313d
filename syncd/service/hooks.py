"""The on_new_mail hook: a user command run after new mail lands (e.g. `notmuch new`)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.outcome.results import AccountResult

log = logging.getLogger("syncd.service.hooks")

SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}\n")
HOOK_TIMEOUT = 120.0


def hook_argv(command: str) -> list[str]:
    """Run without a shell unless the command needs one (pipes, redirections, variables)."""
    if any(ch in SHELL_CHARS for ch in command):
        return ["/bin/sh", "-c", command]
    return shlex.split(command)


# One hook command at a time in this process: `notmuch new` of two accounts at once fight over
# notmuch's database lock, and one of them fails (issue 16).
_one_at_a_time = threading.Lock()


def _run_hook(command: str, account: str, folder: str, count: int, timeout: float) -> None:
    env = dict(os.environ, SYNCD_ACCOUNT=account, SYNCD_FOLDER=folder, SYNCD_COUNT=str(count))
    with _one_at_a_time:
        try:
            completed = subprocess.run(hook_argv(command), env=env, timeout=timeout,
                                       stdin=subprocess.DEVNULL, capture_output=True,
                                       check=False)
        except subprocess.TimeoutExpired:
            log.warning("on_new_mail hook timed out after %.0f s (%s/%s)", timeout, account,
                        folder)
            return
        except OSError as exc:
            log.warning("on_new_mail hook could not run: %s", exc)
            return
    if completed.returncode != 0:
        log.warning("on_new_mail hook exited with status %d (%s/%s)",
                    completed.returncode, account, folder)


def run_new_mail_hook(command: str, account: str, folder: str, count: int, *,
                      wait: bool = True, timeout: float = HOOK_TIMEOUT) -> threading.Thread:
    """Run the hook in a thread (never blocking a sync for longer than asked), with
    SYNCD_ACCOUNT, SYNCD_FOLDER, SYNCD_COUNT in its environment; killed after `timeout`.
    Hooks of this process run one at a time."""
    thread = threading.Thread(target=_run_hook, args=(command, account, folder, count, timeout),
                              name=f"hook-{account}", daemon=True)
    thread.start()
    if wait:
        thread.join(timeout + 5)
    return thread


def run_new_mail_hooks(command: str | None, result: AccountResult, *, wait: bool) -> None:
    """The hook once per folder that received unseen mail in this sync."""
    if not command:
        return
    for folder in result.folders:
        if folder.new_mail:
            run_new_mail_hook(command, result.account, folder.folder, folder.new_mail,
                              wait=wait)


class HookRunner:
    """The daemon's hooks: one thread runs them one at a time, in the order the mail came.
    Runs that pile up while one runs (a burst of IDLE events, several accounts at once)
    coalesce: one run per account and folder, SYNCD_COUNT the sum of what each announced."""

    def __init__(self, *, timeout: float = HOOK_TIMEOUT) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str, str], int] = {}  # insertion order = run order
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.runs = 0

    def submit(self, command: str | None, result: AccountResult) -> None:
        """Queue the hook for every folder of the result that got unseen mail; never waits."""
        if not command:
            return
        with self._cond:
            if self._stopping:
                return
            for folder in result.folders:
                if folder.new_mail:
                    key = (command, result.account, folder.folder)
                    self._pending[key] = self._pending.get(key, 0) + folder.new_mail
            if not self._pending:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hooks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _next(self) -> tuple[tuple[str, str, str], int] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            key = next(iter(self._pending))
            return key, self._pending.pop(key)

    def _run(self) -> None:
        while (item := self._next()) is not None:
            (command, account, folder), count = item
            _run_hook(command, account, folder, count, self.timeout)
            self.runs += 1

    def stop(self, timeout: float = 0.0) -> None:
        """Run nothing more (what is queued is dropped: the next new mail runs the hook and
        `notmuch new` catches up); wait up to `timeout` for a running hook."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
