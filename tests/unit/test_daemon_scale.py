"""Issue 21, one daemon for many accounts: its memory follows the syncs under way, not the
number of accounts (sync slots), and what a sync freed goes back to the kernel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from syncd.outcome.results import AccountResult
from syncd.service import inotify
from syncd.service.watch import MaildirWatcher
from syncd.service.worker import AccountWorker, SyncSlots
from syncd.store.state import StateStore


class CountingWorker(AccountWorker):
    """A real worker thread whose sync only records how many syncs run beside it."""

    def __init__(self, name: str, slots: SyncSlots, meter: dict[str, int],
                 lock: threading.Lock) -> None:
        account = SimpleNamespace(name=name, protocol="imap")
        super().__init__(SimpleNamespace(), account, slots=slots)  # type: ignore[arg-type]
        self.meter, self.lock = meter, lock
        self.ran = threading.Event()

    def _make_runner(self):  # type: ignore[override]
        def run(_folders: frozenset[str] | None) -> AccountResult:
            with self.lock:
                self.meter["now"] += 1
                self.meter["max"] = max(self.meter["max"], self.meter["now"])
            time.sleep(0.15)
            with self.lock:
                self.meter["now"] -= 1
            self.ran.set()
            return AccountResult(self.account.name)

        return run


def test_at_most_the_slots_sync_at_once_and_every_account_gets_its_turn() -> None:
    slots = SyncSlots(2)
    meter, lock = {"now": 0, "max": 0}, threading.Lock()
    workers = [CountingWorker(f"a{k}", slots, meter, lock) for k in range(6)]
    for w in workers:
        w.start()
        w.request(None, "startup")
    try:
        for w in workers:
            assert w.ran.wait(5), f"{w.account.name} never synced"
        assert meter["max"] == 2
        assert slots.busy == 0
    finally:
        for w in workers:
            w.stop()
        for w in workers:
            w.join(3)


def test_a_worker_stopped_while_waiting_for_a_slot_ends_without_syncing() -> None:
    slots = SyncSlots(1)
    held = threading.Event()
    assert slots.acquire(held)  # every slot taken, as by a long first sync elsewhere
    meter, lock = {"now": 0, "max": 0}, threading.Lock()
    worker = CountingWorker("waiting", slots, meter, lock)
    worker.start()
    worker.request(None, "startup")
    time.sleep(0.2)
    assert worker.heartbeat.idle and worker.heartbeat.doing == "waiting for a sync slot"
    worker.stop()
    worker.join(3)
    assert not worker.is_alive() and not worker.ran.is_set()
    slots.release()
    assert slots.busy == 0


_TRIM_PROBE = """
import sys
from syncd.heap import release_free_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

blocks = [bytes(2000) + bytes([i % 256]) for i in range(60_000)]  # ~120 MB of heap chunks
keep = blocks[::64]  # a few live chunks all over the heap: free() alone returns nothing
del blocks
before = rss_mb()
release_free_memory()
print(before - rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_gives_a_fragmented_heap_back() -> None:
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert float(out.stdout) > 50, out.stdout  # of ~120 MB freed, most goes back


def test_shrink_memory_leaves_the_state_and_a_transaction_alone(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite3") as state:
        folder = state.ensure_folder("INBOX", str(tmp_path / "INBOX"))
        state.shrink_memory()
        with state.transaction():
            state.set_cursors(folder.id, uidvalidity=7, uidnext=9, highestmodseq=None,
                             last_sync=None)
            state.shrink_memory()  # inside a transaction: nothing happens, nothing commits
        got = state.folder("INBOX")
        assert got is not None and (got.uidvalidity, got.uidnext) == (7, 9)


@pytest.mark.skipif(not inotify.available(), reason="Linux only")
def test_a_thousand_watched_directories_cost_one_thread(tmp_path: Path) -> None:
    """watchdog ran a thread per watched directory: 20 accounts x 6 folders x (cur, new)
    were 240 threads. The inotify backend watches them all from one."""
    seen: list[tuple[str, str]] = []
    threads_before = threading.active_count()
    watcher = MaildirWatcher(lambda account, folder: seen.append((account, folder)),
                             canary_dir=tmp_path / "canary")
    watcher.start()
    try:
        for k in range(10):
            folders = {}
            for f in range(50):
                path = tmp_path / f"acct{k}" / f"F{f}"
                for sub in ("cur", "new", "tmp"):
                    (path / sub).mkdir(parents=True)
                folders[f"F{f}"] = str(path)
            watcher.set_account(f"acct{k}", folders)
        assert threading.active_count() == threads_before + 1
        (tmp_path / "acct9" / "F49" / "new" / "1.msg").write_bytes(b"x")
        deadline = time.monotonic() + 5
        while ("acct9", "F49") not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("acct9", "F49") in seen
        # A dropped account's folders say nothing any more; a removed directory is no error.
        watcher.remove_account("acct9")
        shutil.rmtree(tmp_path / "acct8" / "F0")
        seen.clear()
        (tmp_path / "acct9" / "F48" / "cur").rename(tmp_path / "acct9" / "F48" / "old")
        (tmp_path / "acct7" / "F1" / "cur" / "2.msg").write_bytes(b"y")
        deadline = time.monotonic() + 5
        while ("acct7", "F1") not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(seen) == {("acct7", "F1")}  # created, then closed: the worker coalesces
    finally:
        watcher.stop()
        watcher.join(3)
    assert threading.active_count() == threads_before
