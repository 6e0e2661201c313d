"""on_new_mail hooks run one at a time (notmuch's database lock), and the daemon's runs that
pile up coalesce (issue 16, item 5)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from syncd.outcome.results import AccountResult, FolderResult
from syncd.service.hooks import HookRunner, run_new_mail_hooks
from tests.support.daemon import wait_until


def overlap_detecting_hook(tmp_path: Path, seconds: float = 0.2) -> tuple[str, Path]:
    """A hook that notices when another run of it is under way (mkdir is atomic), as
    `notmuch new` notices its database locked; it logs account, folder and count."""
    log = tmp_path / "hook.log"
    lock = tmp_path / "hook.running"
    command = (f'mkdir {lock} 2>/dev/null || echo OVERLAP >> {log}; '
               f'echo "$SYNCD_ACCOUNT $SYNCD_FOLDER $SYNCD_COUNT" >> {log}; '
               f'sleep {seconds}; rmdir {lock} 2>/dev/null; true')
    return command, log


def mail(account: str, *folders: tuple[str, int]) -> AccountResult:
    return AccountResult(account, [FolderResult(name, downloaded=n, new_mail=n)
                                   for name, n in folders])


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_hooks_of_several_accounts_never_overlap(tmp_path: Path) -> None:
    """`syncd sync` of several accounts runs their hooks from several threads."""
    command, log = overlap_detecting_hook(tmp_path)
    threads = [threading.Thread(target=run_new_mail_hooks,
                                args=(command, mail(f"acct{i}", ("INBOX", 1))),
                                kwargs={"wait": True}) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert "OVERLAP" not in lines(log), lines(log)
    assert sorted(lines(log)) == [f"acct{i} INBOX 1" for i in range(4)]


def test_the_daemon_runs_hooks_one_at_a_time_and_coalesces(tmp_path: Path) -> None:
    command, log = overlap_detecting_hook(tmp_path, seconds=0.4)
    runner = HookRunner()
    try:
        runner.submit(command, mail("a", ("INBOX", 1)))
        wait_until(lambda: lines(log), 10, message="the first hook run")
        # While that one runs, a burst from three accounts (and one account twice).
        runner.submit(command, mail("b", ("INBOX", 2)))
        runner.submit(command, mail("a", ("INBOX", 3), ("Lists", 1)))
        runner.submit(command, mail("c", ("INBOX", 1)))
        runner.submit(command, mail("a", ("INBOX", 4)))
        runner.submit(command, mail("a", ("Sent", 0)))  # no new mail: no run
        wait_until(lambda: len(lines(log)) >= 5, 20, message=lambda: f"{lines(log)}")
        time.sleep(0.6)
        got = lines(log)
        assert "OVERLAP" not in got, got
        # One run per account and folder, in the order the mail came, counts summed.
        assert got == ["a INBOX 1", "b INBOX 2", "a INBOX 7", "a Lists 1", "c INBOX 1"], got
        assert runner.runs == 5
    finally:
        runner.stop(5)


def test_stopping_drops_what_is_queued(tmp_path: Path) -> None:
    command, log = overlap_detecting_hook(tmp_path, seconds=0.5)
    runner = HookRunner()
    runner.submit(command, mail("a", ("INBOX", 1)))
    wait_until(lambda: lines(log), 10)
    runner.submit(command, mail("b", ("INBOX", 1)))
    runner.stop(5)
    runner.submit(command, mail("c", ("INBOX", 1)))  # after stop: ignored
    time.sleep(0.3)
    assert lines(log) == ["a INBOX 1"]
