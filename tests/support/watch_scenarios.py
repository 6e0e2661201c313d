"""Scenarios for syncd.service.watch that must hold under every watchdog release syncd allows.

Run in-process by tests/unit/test_watch.py with the installed watchdog, and as
``python -m tests.support.watch_scenarios NAME`` with an older watchdog first on PYTHONPATH
(tests/support/oldest.py). Each scenario raises AssertionError on failure; as a script it
prints "ok <watchdog version>" and exits 0, or prints the failure and exits 1. A scenario that
hangs is a failure too: the caller's timeout ends it.

The older releases run with the watchdog backend (the one they are about); in-process, every
scenario runs with the inotify backend too (Linux: one descriptor and thread, issue 21).

This module must not import pytest.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HANG = 10.0  # seconds: far more than any step needs, so only a deadlock gets there
#: the watcher's backend the scenarios run with (run()'s argument): "watchdog" or "inotify"
BACKEND = "watchdog"


def _watcher(*args: object, **kwargs: object) -> object:
    from syncd.service.watch import MaildirWatcher

    return MaildirWatcher(*args, backend=BACKEND, **kwargs)  # type: ignore[arg-type]


def _folder(root: Path, name: str) -> str:
    for sub in ("cur", "new", "tmp"):
        (root / name / sub).mkdir(parents=True, exist_ok=True)
    return str(root / name)


def _wait(predicate: Callable[[], object], what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _stop(watcher: object) -> None:
    """Stop the observer without hanging the scenario: a deadlocked observer never stops
    (the failure is reported by then)."""
    def stop() -> None:
        watcher.stop()  # type: ignore[attr-defined]
        watcher.join(HANG)  # type: ignore[attr-defined]

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    thread.join(HANG)


def set_account_during_dispatch(root: Path) -> None:
    """set_account() while watchdog's dispatcher thread is inside our handler. watchdog <= 6
    holds its observer lock during dispatch and takes it again in schedule(): a watcher that
    held its own lock around schedule() while the handler waited for that lock deadlocked
    (issue 16, item 1). Deterministic: the first event's callback holds the dispatcher until
    set_account() is under way, and a second event is queued behind it."""
    in_handler = threading.Event()
    setting = threading.Event()
    seen: list[tuple[str, str]] = []

    def on_change(account: str, folder: str) -> None:
        seen.append((account, folder))
        if not in_handler.is_set():
            in_handler.set()
            setting.wait(HANG)
            time.sleep(0.2)  # set_account is now inside (or past) its critical section

    watcher = _watcher(on_change)
    watcher.start()
    try:
        watcher.set_account("a", {"INBOX": _folder(root, "INBOX")})
        time.sleep(0.2)  # inotify watches are live
        for i in range(2):
            (root / "INBOX" / "new" / f"m{i}").write_bytes(b"x")
        _wait(in_handler.is_set, "the first event to reach the handler")
        more = {f"F{i}": _folder(root, f"F{i}") for i in range(20)}
        done = threading.Event()

        def grow() -> None:
            watcher.set_account("a", {"INBOX": str(root / "INBOX"), **more})
            done.set()

        thread = threading.Thread(target=grow, daemon=True)
        setting.set()
        thread.start()
        if not done.wait(HANG):
            raise AssertionError("set_account() deadlocked with the dispatcher thread")
        # And the new folders are watched: a change in one reaches on_change.
        (root / "F7" / "new" / "m").write_bytes(b"x")
        _wait(lambda: ("a", "F7") in seen, "an event from a folder added meanwhile")
    finally:
        _stop(watcher)


def churn(root: Path) -> None:
    """Several accounts add and drop folders from their own threads while files change in
    every folder: nothing hangs, and every folder still watched at the end reports events."""
    seen: set[tuple[str, str]] = set()
    watcher = _watcher(lambda account, folder: seen.add((account, folder)))
    watcher.start()
    stop = threading.Event()
    names = [f"F{i}" for i in range(12)]
    for account in ("a", "b"):
        for name in names:
            _folder(root / account, name)

    def writer() -> None:
        n = 0
        while not stop.is_set():
            for account in ("a", "b"):
                for name in names[:6]:
                    path = root / account / name / "new" / f"w{n % 5}"
                    path.write_bytes(b"x")
            n += 1
            time.sleep(0.002)

    def account_loop(account: str) -> None:
        for round_ in range(15):
            count = 3 + (round_ * 5) % len(names)
            watcher.set_account(account, {n: str(root / account / n) for n in names[:count]})

    try:
        threads = [threading.Thread(target=writer, daemon=True)]
        threads += [threading.Thread(target=account_loop, args=(a,), daemon=True)
                    for a in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads[1:]:
            thread.join(HANG * 3)
            if thread.is_alive():
                raise AssertionError("set_account() hung under concurrent events")
        stop.set()
        threads[0].join(HANG)
        for account in ("a", "b"):
            watcher.set_account(account, {n: str(root / account / n) for n in names})
        seen.clear()
        time.sleep(0.2)
        for account in ("a", "b"):
            (root / account / names[-1] / "new" / "last").write_bytes(b"x")
        _wait(lambda: {("a", names[-1]), ("b", names[-1])} <= seen,
              "events from both accounts' last folder")
        watcher.remove_account("a")
        time.sleep(0.2)
        seen.clear()
        (root / "a" / names[0] / "new" / "gone").write_bytes(b"x")
        (root / "b" / names[0] / "new" / "here").write_bytes(b"x")
        _wait(lambda: ("b", names[0]) in seen, "an event of the account still watched")
        time.sleep(0.3)
        assert ("a", names[0]) not in seen, "a removed account still gets events"
    finally:
        stop.set()
        _stop(watcher)


def heartbeat(root: Path) -> None:
    """probe() proves the dispatcher thread alive: its heartbeat moves."""
    watcher = _watcher(lambda account, folder: None, canary_dir=root / "canary")
    watcher.start()
    try:
        before = watcher.heartbeat.last
        time.sleep(0.05)
        watcher.probe()
        _wait(lambda: watcher.heartbeat.last > before, "the canary event")
    finally:
        _stop(watcher)


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "set_account_during_dispatch": set_account_during_dispatch,
    "churn": churn,
    "heartbeat": heartbeat,
}


def run(name: str, backend: str = "watchdog") -> None:
    global BACKEND
    BACKEND = backend
    with tempfile.TemporaryDirectory(prefix=f"syncd-watch-{name}-") as tmp:
        SCENARIOS[name](Path(tmp))


def main(argv: list[str]) -> int:
    import watchdog.version

    try:
        for name in argv or list(SCENARIOS):
            run(name)
    except AssertionError as exc:
        print(f"FAIL {exc}", flush=True)
        sys.stdout.flush()
        os._exit(1)  # deadlocked threads must not hold the exit
    print(f"ok watchdog {watchdog.version.VERSION_STRING}", flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
