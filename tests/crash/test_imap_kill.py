"""Crash tests with a real process: kill -9 of `python -m syncd --config ... sync`.

1. A 2000-message initial sync over three folders (plus a few local messages to upload) is
   killed with SIGKILL at random moments, several times, each time followed by another run;
   finally a clean sync must leave both sides exactly equal to the intended result (every
   seeded and every local message once, byte for byte, with its flags), nothing in tmp/, and a
   second sync must change nothing.

   The moments are random but replayable: the seed is printed (shown with -s or on failure)
   and ``SYNCD_KILL_SEED=<seed>`` replays a run; ``SYNCD_KILLS=<n>`` changes the number of
   kills (default 6). The sync goes through a bandwidth-limited proxy, and every kill comes
   before the messages still to download can have passed it: on any machine, each kill lands
   while the sync is at work.

2. ``SYNCD_CRASH_AT=n`` (the process SIGKILLs itself at the n-th checkpoint, so no ``finally``
   runs) at chosen checkpoints of an incremental sync with changes on both sides: the resumed
   result must equal the uninterrupted one.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import faults
from tests.crash.crash_support import (
    SCENARIOS,
    Template,
    assert_quiet,
    contents,
    describe_difference,
    stray_tmp,
    synced_ok,
    write_local,
)
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import (
    REPO,
    Account,
    DownloadFloor,
    assert_folder_in_sync,
    local_files,
    server_state,
    wait_for_lock,
    write_config,
)
from tests.support.tcp_proxy import TcpProxy

KILL_FOLDERS = {"INBOX": 1000, "Archive": 600, "Lists/python": 400}
KILLS = int(os.environ.get("SYNCD_KILLS", "6"))
RATE = 1_000_000  # bytes/s: the ~1.65 MB to download take at least 1.6 s
SEED_FLAGS = ["", "S", "ST", "FS", "RS", "", "S", "D", "PS", "S"]


@pytest.fixture(autouse=True)
def _no_armed_fault():
    # (TLS contexts need no caching here: syncd.net.ssl_context_for shares them.)
    faults.arm(None)
    yield
    faults.arm(None)


def start_sync(account: Account, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "syncd", "--config", str(account.config),
                             "sync"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.fixture
def slow_line(dovecot: Dovecot) -> Iterator[TcpProxy]:
    with TcpProxy(dovecot.imaps_port, rate=RATE) as proxy:
        yield proxy


def local_count(account: Account) -> int:
    return sum(len(local_files(account.folder_dir(folder))) for folder in KILL_FOLDERS)


def local_duplicates(account: Account) -> list[str]:
    """Messages present more than once in a local folder (never allowed, even mid-way)."""
    found = []
    for folder in KILL_FOLDERS:
        bodies = Counter(p.read_bytes() for _, p in local_files(account.folder_dir(folder)))
        found += [f"{folder}: {body[:80]!r}" for body, n in bodies.items() if n > 1]
    return found


def test_kill_during_initial_sync(dovecot: Dovecot, tmp_path: Path,
                                  slow_line: TcpProxy) -> None:
    seed = int(os.environ.get("SYNCD_KILL_SEED") or secrets.randbits(32))
    print(f"\nkill test: SYNCD_KILL_SEED={seed} SYNCD_KILLS={KILLS}")
    rng = random.Random(seed)
    replay = f"(replay with SYNCD_KILL_SEED={seed})"

    user = dovecot.add_user()
    expected: dict[str, Counter[tuple[bytes, str]]] = {}
    seeded: dict[str, list[bytes]] = {}
    for folder, count in KILL_FOLDERS.items():
        items = []
        for i in range(count):
            # Mostly small messages, some larger ones, every flag letter.
            size = 40_000 + i if i % 97 == 0 else None
            items.append((make_message(i, folder=folder, size=size),
                          SEED_FLAGS[i % len(SEED_FLAGS)]))
        dovecot.seed(user, folder, items)
        seeded[folder] = [body for body, _ in items]
        expected[folder] = Counter((body.replace(b"\r\n", b"\n"), flags)
                                   for body, flags in items)
    account = write_config(tmp_path, dovecot, user, port=slow_line.port)
    # Local mail written before the first sync (mutt's Sent): uploaded, with and without a
    # Message-ID, one of them the same message as one on the server (paired, not doubled).
    local_new = [("INBOX", make_message(5000, folder="INBOX"), "S"),
                 ("INBOX", b"From: a@example.test\r\nSubject: no id\r\n\r\nlocal only\r\n", ""),
                 ("Archive", make_message(7, folder="Archive"), "S")]
    for folder, body, flags in local_new:
        write_local(account, folder, body, flags)
        expected[folder][(body.replace(b"\r\n", b"\n"), flags)] = 1
    # The Archive one is the server's message 7 (flags D): one message, with both sides' flags.
    paired = make_message(7, folder="Archive").replace(b"\r\n", b"\n")
    del expected["Archive"][(paired, "D")], expected["Archive"][(paired, "S")]
    expected["Archive"][(paired, "DS")] = 1
    total = sum(sum(c.values()) for c in expected.values())

    landed: list[str] = []
    finished = False  # the sync completed before the next kill could land
    while len(landed) < KILLS and not finished:
        before = local_count(account) if account.maildir.exists() else 0
        floor = DownloadFloor(slow_line, {account.folder_dir(folder): bodies
                                          for folder, bodies in seeded.items()})
        proc = start_sync(account)
        started = time.monotonic()
        if rng.random() < 0.5:
            # A moment measured from when the process holds the account lock (the Python
            # start-up is not interesting): login, recovery, listing, planning, the first
            # groups of a folder...
            wait_for_lock(proc, account)
            window = floor.seconds_left()
            delay = rng.uniform(0.0, window)
            moment = f"{delay:.3f} s (of {window:.3f}) after taking the lock"
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
        else:
            # ... or once some more messages have landed, plus a little: anywhere between two
            # group commits (fetching, staging, linking, committing).
            # (bounded so that the remaining kills still find work to interrupt)
            remaining = total - before
            more = rng.randint(1, max(1, remaining // (KILLS - len(landed) + 1)))
            while proc.poll() is None and (
                    not account.maildir.exists() or local_count(account) < before + more):
                if time.monotonic() - started > 60:
                    break
                time.sleep(0.005)
            jitter = rng.uniform(0.0, min(0.15, floor.seconds_left()))
            moment = f"{more} more messages + {jitter:.3f} s"
            time.sleep(jitter)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            landed.append(f"{moment} ({before} -> {local_count(account)} local files)")
        else:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"an interrupted sync's successor failed {replay}: " \
                f"{out}{err}"
            finished = True
            continue
        duplicates = local_duplicates(account)
        assert not duplicates, f"after kill {len(landed)} ({moment}) {replay}: {duplicates}"
    print("kills:\n  " + "\n  ".join(landed))
    assert len(landed) >= min(KILLS, 3), (
        f"only {len(landed)} kills landed before the sync completed {replay}: {landed}")

    # A clean run finishes the job; then both sides are exactly the intended result.
    slow_line.rate = None  # the checks need no slow line
    proc = start_sync(account)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"the final sync failed {replay}: {out}{err}"
    compared = 0
    for folder, want in expected.items():
        compared += assert_folder_in_sync(dovecot, user, account, folder)
        got = server_state(dovecot, user, folder)
        assert got == want, (f"{folder} after {len(landed)} kills {replay}: "
                             f"{describe_difference({folder: got}, {folder: want})}")
    assert compared == total
    assert not stray_tmp(account), f"files left in tmp/ {replay}: {stray_tmp(account)[:5]}"
    assert_quiet(dovecot, user, account)
    print(f"{len(landed)} kills survived, {compared} messages compared on both sides")


# --------------------------------------------------------------------------------------------
# SYNCD_CRASH_AT: the process kills itself at a chosen checkpoint of an incremental sync.

CHOSEN = ["local-flags.rename", "local-flags.commit", "push-flags.store",
          "delete-local.remove", "delete-remote.expunge", "remote-changes.commit",
          "download.intents",
          "download.publish", "download.commit", "upload.intent", "upload.append",
          "folder.cursors"]


_mixed: dict[str, tuple[Template, list[str], dict]] = {}


def mixed_reference(dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory
                    ) -> tuple[Template, list[str], dict]:
    """The "mixed" scenario of the injected crash tests (every operation on both sides of two
    folders), prepared once; the trace and the result of its uninterrupted run (in-process,
    the same code and the same group sizes as the subprocess)."""
    if "mixed" not in _mixed:
        local = tmp_path_factory.mktemp("kill-template")
        tpl = Template(SCENARIOS["mixed"].prepare(dovecot, dovecot.add_user(), local), local)
        user, account = tpl.instantiate(dovecot, tmp_path_factory.mktemp("kill-reference"))
        faults.arm(None, record=True)
        try:
            synced_ok(account)
            trace = list(faults.trace or [])
        finally:
            faults.arm(None)
        result = contents(dovecot, user, account)
        assert_quiet(dovecot, user, account)
        _mixed["mixed"] = (tpl, trace, result)
    return _mixed["mixed"]


@pytest.mark.parametrize("step", CHOSEN)
def test_crash_at_env_kills_the_process(step: str, dovecot: Dovecot, tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    tpl, trace, want = mixed_reference(dovecot, tmp_path_factory)
    assert step in trace, f"the scenario never reaches {step}: {trace}"
    n = trace.index(step) + 1
    user, account = tpl.instantiate(dovecot, tmp_path)

    proc = start_sync(account, {"SYNCD_CRASH_AT": str(n)})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (
        f"SYNCD_CRASH_AT={n} ({step}) did not kill the process: {proc.returncode} {out}{err}")

    out = synced_ok(account)
    got = contents(dovecot, user, account)
    assert got == want, (f"killed at checkpoint {n} ({step}), then a sync ({out.strip()}): "
                         f"{describe_difference(got, want)}")
    assert not stray_tmp(account), f"files left in tmp/: {stray_tmp(account)}"
    assert_quiet(dovecot, user, account)
