"""The on_new_mail hook: a user command run after new mail lands (e.g. `notmuch new`)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.results import AccountResult

log = logging.getLogger("syncd.hooks")

SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}\n")
HOOK_TIMEOUT = 120.0


def hook_argv(command: str) -> list[str]:
    """Run without a shell unless the command needs one (pipes, redirections, variables)."""
    if any(ch in SHELL_CHARS for ch in command):
        return ["/bin/sh", "-c", command]
    return shlex.split(command)


def run_new_mail_hook(command: str, account: str, folder: str, count: int, *,
                      wait: bool = True, timeout: float = HOOK_TIMEOUT) -> threading.Thread:
    """Run the hook in a thread (never blocking a sync for longer than asked), with
    SYNCD_ACCOUNT, SYNCD_FOLDER, SYNCD_COUNT in its environment; killed after `timeout`."""
    env = dict(os.environ, SYNCD_ACCOUNT=account, SYNCD_FOLDER=folder, SYNCD_COUNT=str(count))

    def target() -> None:
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

    thread = threading.Thread(target=target, name=f"hook-{account}", daemon=True)
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
