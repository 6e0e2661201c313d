"""What the scale bench reads of a running daemon and its state: /proc figures of the whole
process (every thread), the status file, and the per-account SQLite state files.

Wake-ups are counted as voluntary context switches summed over every thread of the daemon
(/proc/PID/task/*/status): each one is a thread that blocked and was woken again. A thread
that ended takes its count with it, so a window in which threads come and go undercounts a
little; an idle daemon's threads are long-lived.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import measure


@dataclass
class Sample:
    t: float  # seconds since the phase began
    rss_mb: float  # VmRSS of the daemon and of the other programs it runs (tree_rss_kb)
    hwm_mb: float  # VmHWM of the daemon process (its peak since exec)
    cpu_s: float  # utime + stime of the tree, cumulative
    wakeups: int  # voluntary context switches over every thread, cumulative
    involuntary: int  # nonvoluntary context switches, cumulative
    threads: int
    fds: int

    def as_dict(self) -> dict:
        return asdict(self)


def _status_fields(path: str, keys: tuple[bytes, ...]) -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for line in f:
            key = line.split(b":", 1)[0]
            if key in keys:
                found[key] = int(line.split()[1])
    return found


def context_switches(pid: int) -> tuple[int, int, int]:
    """(voluntary, nonvoluntary, threads) summed over every thread of ``pid``."""
    vol = invol = threads = 0
    keys = (b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0, 0
    for tid in tids:
        fields = _status_fields(f"/proc/{pid}/task/{tid}/status", keys)
        if fields:
            threads += 1
            vol += fields.get(keys[0], 0)
            invol += fields.get(keys[1], 0)
    return vol, invol, threads


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def tree_rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` plus that of each descendant running another program. A child that
    has not called exec yet (the daemon forks one for each `password_command`; Python
    vforks) shows its parent's memory as its own: counting it doubled the daemon's RSS."""
    exe = _exe(pid)
    total = measure._rss_kb(pid)
    for child in measure.tree(pid)[1:]:
        if _exe(child) != exe:
            total += measure._rss_kb(child)
    return total


def sample(pid: int, t0: float) -> Sample:
    vol, invol, threads = context_switches(pid)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    hwm = _status_fields(f"/proc/{pid}/status", (b"VmHWM",)).get(b"VmHWM", 0)
    return Sample(t=round(time.monotonic() - t0, 2),
                  rss_mb=round(tree_rss_kb(pid) / 1024, 2),
                  hwm_mb=round(hwm / 1024, 2),
                  cpu_s=measure.cpu_seconds(measure.tree(pid)),
                  wakeups=vol, involuntary=invol, threads=threads, fds=fds)


def last_syncs(state_dir: Path) -> dict[str, float]:
    """account -> the time its latest sync in the daemon ended (syncd's status file)."""
    try:
        accounts = json.loads((state_dir / "status.json").read_text())["accounts"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: float(entry.get("last_sync") or 0.0) for name, entry in accounts.items()
            if entry.get("daemon")}


def state_files(state_dir: Path, account: str) -> list[Path]:
    """An account's state: its SQLite database and the database's WAL and shared memory."""
    base = state_dir / f"{account}.sqlite3"
    return [p for p in (base, base.with_name(base.name + "-wal"),
                        base.with_name(base.name + "-shm")) if p.exists()]


def state_bytes(state_dir: Path, account: str) -> int:
    total = 0
    for path in state_files(state_dir, account):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def state_messages(state_dir: Path, account: str) -> int | None:
    """Messages the account's state records (read-only; None while it cannot be read)."""
    path = state_dir / f"{account}.sqlite3"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT count(*) FROM message").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def state_halved(path: Path, workdir: Path) -> dict[str, int]:
    """How the state's size follows its message count: a copy of an account's database
    (the daemon has stopped: no WAL), vacuumed whole and again with every second message
    row deleted. Linear growth: the bytes the deleted half took, per message, are about the
    bytes per message of the whole."""
    copy = workdir / "state-halved.sqlite3"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # sizes in the file itself, not a WAL
        total = int(conn.execute("SELECT count(*) FROM message").fetchone()[0])
        conn.execute("VACUUM")
        full = copy.stat().st_size
        conn.execute("DELETE FROM message WHERE uid % 2 = 0")
        kept = int(conn.execute("SELECT count(*) FROM message").fetchone()[0])
        conn.execute("VACUUM")
        half = copy.stat().st_size
    finally:
        conn.close()
        copy.unlink()
    return {"messages": total, "bytes": full, "kept": kept, "kept_bytes": half}


def local_messages(maildir: Path) -> int:
    """Message files under the cur/ and new/ directories of an account's Maildir."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(maildir):
        if os.path.basename(dirpath) in ("cur", "new"):
            count += sum(1 for name in filenames if not name.startswith("."))
            dirnames[:] = []
        else:
            dirnames[:] = [d for d in dirnames if d != "tmp"]
    return count
