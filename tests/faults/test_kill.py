"""kill -9 at random moments, each followed by recovery and an exact comparison of both sides.

The crash suite (tests/crash) already kills `syncd sync` during an initial IMAP sync (6 kills),
at chosen checkpoints of an incremental one (SYNCD_CRASH_AT, 10 kills) and during a POP3
download (6 kills). This adds what it does not cover:

- `syncd sync` killed during an incremental sync with changes on both sides;
- `syncd run` (the daemon) killed during an initial sync, during incremental syncs with
  changes on both sides arriving while it runs, and during a POP3 download.

The moments are random; the seed is printed (``SYNCD_FAULT_SEED=<n>`` replays a run) and
``SYNCD_FAULT_KILLS=<n>`` changes the number of kills of each test.

syncd talks to Dovecot through a proxy (tests/support/tcp_proxy.py) that adds latency or limits
the bandwidth, and every kill comes within the time the work left cannot take less than on
that line (``least_time``): so each kill lands while the work under test is going on, on a
fast machine as on a slow one, and the moments still spread over the whole sync.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.crash.crash_support import server_folder
from tests.faults.faultlib import (
    SECRETS,
    compare,
    count_files,
    in_sync,
    kill9,
    killed,
    lf,
    make_account,
    run_syncd,
    secret_user,
    seed_for,
    stray_files,
    syncd_cmd,
)
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import (
    REPO,
    Account,
    DownloadFloor,
    local_files,
    wait_for_lock,
)
from tests.support.tcp_proxy import TcpProxy

KILLS = int(os.environ.get("SYNCD_FAULT_KILLS", "0") or 0)
# One-way latencies: the incremental tests' floor is their uploads, one round trip each.
LATENCY_SYNC = 0.010
LATENCY_DAEMON = 0.025
# Bandwidths: the initial downloads' floor is their bytes (~2.1 MB IMAP, ~1.5 MB POP3).
RATE_IMAP = 1_500_000
RATE_POP3 = 1_000_000


def kills(default: int) -> int:
    return KILLS or default


def letters(imap_flags: str) -> str:
    table = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R"}
    return "".join(sorted(table[f] for f in imap_flags.split() if f))


def subject_of(body: bytes) -> str:
    return next(line for line in body.split(b"\n") if line.startswith(b"Subject:")).decode()


class Model:
    """What a folder must hold once everything is synced: subject -> (LF body, flags)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, str]] = {}

    def add(self, body: bytes, flags: str) -> None:
        body = lf(body)
        self.items[subject_of(body)] = (body, "".join(sorted(flags)))

    def flags(self, subject: str, flags: str) -> None:
        body, _ = self.items[subject]
        self.items[subject] = (body, "".join(sorted(flags)))

    def remove(self, subject: str) -> None:
        del self.items[subject]

    def counter(self) -> Counter[tuple[bytes, str]]:
        return Counter(self.items.values())


def local_by_subject(folder_dir: Path) -> dict[str, Path]:
    out = {}
    for _, path in local_files(folder_dir):
        try:
            with open(path, "rb") as handle:
                head = handle.read(2048)
        except FileNotFoundError:
            # A running daemon renamed it (flags from an earlier round): a message changed
            # once already, which no later change picks.
            continue
        out[subject_of(head)] = path
    return out


def rename_flags(path: Path, flags: str) -> None:
    base = path.name.split(":2,", 1)[0]
    os.rename(path, path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}")


_seq = 0


def new_local(folder_dir: Path, body: bytes, flags: str) -> None:
    """As a MUA saves a message: tmp/, then rename into cur/ (or new/)."""
    global _seq
    _seq += 1
    key = f"{int(time.time())}.M{_seq}P{os.getpid()}.faults"
    tmp = folder_dir / "tmp" / key
    tmp.write_bytes(lf(body))
    os.rename(tmp, folder_dir / ("cur" if flags else "new") /
              (f"{key}:2,{flags}" if flags else key))


def both_sides_changes(dovecot: Dovecot, user, account: Account, folder: str, model: Model,
                       rng: random.Random, untouched: list[str], tag: str, *,
                       server_new: int, server_flags: int, server_gone: int, local_new: int,
                       local_flags: int, local_gone: int) -> None:
    """Changes on both sides, every message touched at most once over the whole test (so the
    intended result does not depend on when a sync ran)."""
    rng.shuffle(untouched)

    def take(n: int) -> list[str]:
        picked = untouched[:n]
        del untouched[:n]
        return picked

    folder_dir = account.folder_dir(folder)
    local = local_by_subject(folder_dir)
    uids = {m.message_id: uid for uid, m in dovecot.messages(user, folder, bodies=False).items()}
    mids = {s: _mid(model.items[s][0]) for s in model.items}
    flag_subjects, gone_subjects = take(server_flags), take(server_gone)
    with server_folder(dovecot, user, folder) as server:
        for i in range(server_new):
            body = make_message(100_000 + len(model.items) + i, folder=folder,
                                subject=f"server new {tag} {i}")
            server.append(body, "\\Seen" if i % 2 else "")
            model.add(body, "S" if i % 2 else "")
        if flag_subjects:
            server.store([uids[mids[s]] for s in flag_subjects], "+FLAGS.SILENT", "\\Flagged")
            for s in flag_subjects:
                model.flags(s, model.items[s][1] + "F")
        if gone_subjects:
            server.expunge([uids[mids[s]] for s in gone_subjects])
            for s in gone_subjects:
                model.remove(s)
    for s in take(local_flags):
        rename_flags(local[s], model.items[s][1] + "R")
        model.flags(s, model.items[s][1] + "R")
    for s in take(local_gone):
        local[s].unlink()
        model.remove(s)
    for i in range(local_new):
        body = make_message(200_000 + len(model.items) + i, folder=folder,
                            subject=f"local new {tag} {i}")
        new_local(folder_dir, body, "S" if i % 3 == 0 else "")
        model.add(body, "S" if i % 3 == 0 else "")


def _mid(body: bytes) -> str:
    for line in body.split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


def uploads_left(dovecot: Dovecot, user, models: dict[str, Model]) -> int:
    """The most messages one folder still has to upload (the intended ones the server does
    not have). syncd sends a folder's APPENDs one at a time, each waiting for its reply, so a
    sync has at least that many round trips left (folders may go side by side)."""
    most = 0
    for folder, model in models.items():
        on_server = {m.message_id for m in dovecot.messages(user, folder, bodies=False).values()}
        most = max(most, sum(_mid(body) not in on_server for body, _ in model.items.values()))
    return most


def synced_already(d: DaemonProcess) -> bool:
    """The daemon logged the summary of a finished sync that changed something."""
    return re.search(r"test: \+\d+ down", d.log()) is not None


def kill_daemon_within(d: DaemonProcess, rng: random.Random, window: float) -> str:
    """SIGKILL the daemon at a random moment within ``window`` seconds from now; returns
    "moment/window" for the test's printout."""
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    assert d.alive(), d.log()[-2000:]
    d.signal(signal.SIGKILL)
    d.wait(30)
    killed()
    return f"{delay:.2f}/{window:.2f}s"


def seeded(dovecot: Dovecot, user, folder: str, n: int, model: Model, *,
           size_every: int = 0) -> None:
    items = []
    for i in range(n):
        size = 30_000 if size_every and i % size_every == 0 else None
        body = make_message(i, folder=folder, size=size, subject=f"{folder} seeded {i}")
        flags = "S" if i % 3 else ""
        items.append((body, flags))
        model.add(body, flags)
    dovecot.seed(user, folder, items)


def final_sync_and_compare(dovecot: Dovecot, user, account: Account,
                           models: dict[str, Model], replay: str) -> int:
    rc, out, err, _ = run_syncd(account.config, "sync", timeout=180)
    assert rc == 0, f"the final sync failed {replay}: {out}{err}"
    checked = 0
    for folder, model in models.items():
        checked += in_sync(dovecot, user, account, folder, model.counter())
    assert not stray_files(account.maildir), f"tmp/ not empty {replay}"
    rc, out, err, _ = run_syncd(account.config, "sync", timeout=120)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in out, f"not idempotent {replay}: {out}"
    return checked


# --------------------------------------------------------------------------------------------


def test_kill_sync_during_incremental_changes_on_both_sides(dovecot: Dovecot,
                                                            tmp_path: Path) -> None:
    seed = seed_for("kill sync (incremental)")
    rng = random.Random(seed)
    replay = f"(replay: SYNCD_FAULT_SEED={seed})"
    user = secret_user(dovecot)
    models = {"INBOX": Model(), "Work": Model()}
    seeded(dovecot, user, "INBOX", 1200, models["INBOX"], size_every=50)
    seeded(dovecot, user, "Work", 300, models["Work"])
    with TcpProxy(dovecot.imaps_port, delay=LATENCY_SYNC) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port)
        rc, out, err, _ = run_syncd(account.config, "sync")
        assert rc == 0, out + err
        for folder, model in models.items():
            untouched = sorted(model.items)
            n = 4 if folder == "INBOX" else 1
            both_sides_changes(dovecot, user, account, folder, model, rng, untouched, "k",
                               server_new=150 * n, server_flags=100 * n, server_gone=40 * n,
                               local_new=25 * n, local_flags=100 * n, local_gone=20 * n)
        landed = []
        for _attempt in range(kills(8)):
            # The uploads come last, a round trip each: until they can be through, the sync is
            # at work, in whichever phase (downloads, flags, deletions, uploads, state).
            window = proxy.least_time(round_trips=uploads_left(dovecot, user, models))
            proc = subprocess.Popen(syncd_cmd(account.config, "sync"), cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_lock(proc, account)
            delay = rng.uniform(0.0, window)
            time.sleep(delay)
            if kill9(proc):
                killed()
                landed.append(f"{delay:.2f}/{window:.2f}s")
            else:
                assert proc.returncode == 0, f"a resumed sync failed {replay}"
                break
        print(f"{len(landed)} kills of syncd sync at [moment/window]: {landed}")
        assert len(landed) >= 3, f"the sync finished before enough kills landed {replay}"
        proxy.delay = 0.0  # the checks need no slow line
        final_sync_and_compare(dovecot, user, account, models, replay)


def test_kill_daemon_during_initial_sync(dovecot: Dovecot, tmp_path: Path) -> None:
    seed = seed_for("kill run (initial)")
    rng = random.Random(seed)
    replay = f"(replay: SYNCD_FAULT_SEED={seed})"
    user = secret_user(dovecot)
    models = {"INBOX": Model(), "Lists/python": Model()}
    seeded(dovecot, user, "INBOX", 1800, models["INBOX"], size_every=40)
    seeded(dovecot, user, "Lists/python", 400, models["Lists/python"])
    server = {folder: [body for body, _ in model.items.values()]
              for folder, model in models.items()}
    total = sum(len(m.items) for m in models.values())
    with TcpProxy(dovecot.imaps_port, rate=RATE_IMAP) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port)
        # Mail written locally before the first sync (uploaded, never doubled).
        inbox = account.folder_dir("INBOX")
        for sub in ("cur", "new", "tmp"):
            (inbox / sub).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            body = make_message(9000 + i, subject=f"written before the first sync {i}")
            new_local(inbox, body, "S")
            models["INBOX"].add(body, "S")
        folders = [account.folder_dir(f) for f in models]

        def local() -> int:
            return sum(count_files(f) for f in folders)

        landed = []
        for round_ in range(kills(7)):
            floor = DownloadFloor(proxy, {account.folder_dir(f): bodies
                                          for f, bodies in server.items()})
            d = DaemonProcess(account.config, log_path=tmp_path / f"daemon-{round_}.log")
            d.start()
            before = local()
            # Once the download has started (or moved on), a random moment before it can
            # have ended; within a share of what is left, so that the later kills still find
            # downloading to interrupt.
            wait_until(lambda d=d, before=before: local() > before or local() >= total + 5
                       or not d.alive(), 30, interval=0.005)
            moment = kill_daemon_within(d, rng, floor.seconds_left() / (kills(7) - round_))
            landed.append(f"{moment} at {local()}/{total + 5} local")
            assert not synced_already(d), f"kill {round_ + 1} came after the sync {replay}"
            dupes = [b for b, n in Counter(p.read_bytes() for _, p in local_files(inbox)).items()
                     if n > 1]
            assert not dupes, f"duplicates after kill {round_ + 1} {replay}"
        print(f"{len(landed)} kills of syncd run at [moment/window]: {landed}")
        proxy.rate = None  # the checks need no slow line
        final_sync_and_compare(dovecot, user, account, models, replay)


def test_kill_daemon_during_incremental_changes(dovecot: Dovecot, tmp_path: Path) -> None:
    seed = seed_for("kill run (incremental)")
    rng = random.Random(seed)
    replay = f"(replay: SYNCD_FAULT_SEED={seed})"
    user = secret_user(dovecot)
    model = Model()
    seeded(dovecot, user, "INBOX", 900, model)
    with TcpProxy(dovecot.imaps_port, delay=LATENCY_DAEMON) as proxy:
        account = make_account(tmp_path, dovecot, user, port=proxy.port,
                               extra="    poll_interval: 5s\n")
        rc, out, err, _ = run_syncd(account.config, "sync")
        assert rc == 0, out + err
        untouched = sorted(model.items)
        landed = []
        for round_ in range(kills(8)):
            d = DaemonProcess(account.config, log_path=tmp_path / f"daemon-{round_}.log")
            d.start()
            d.wait_for_log("syncd running", 20)
            time.sleep(rng.uniform(0.3, 1.0))  # its startup sync is under way or done
            both_sides_changes(dovecot, user, account, "INBOX", model, rng, untouched,
                               f"r{round_}", server_new=40, server_flags=30, server_gone=10,
                               local_new=15, local_flags=30, local_gone=8)
            # The daemon reacts (IDLE, the watcher) meanwhile; it cannot have uploaded the new
            # local mail within the round trips that takes.
            window = proxy.least_time(round_trips=uploads_left(dovecot, user,
                                                               {"INBOX": model}))
            landed.append(kill_daemon_within(d, rng, window))
            assert "Traceback" not in d.log(), d.log()[-3000:]
            assert uploads_left(dovecot, user, {"INBOX": model}), \
                f"kill {round_ + 1} came after the daemon had synced the changes {replay}"
        print(f"{len(landed)} kills of syncd run after changes on both sides "
              f"[moment/window]: {landed}")
        proxy.delay = 0.0  # the checks need no slow line
        final_sync_and_compare(dovecot, user, account, {"INBOX": model}, replay)


def test_kill_daemon_during_pop3_download(dovecot: Dovecot, tmp_path: Path) -> None:
    seed = seed_for("kill run (POP3)")
    rng = random.Random(seed)
    replay = f"(replay: SYNCD_FAULT_SEED={seed})"
    user = secret_user(dovecot)
    messages = [make_message(i, subject=f"pop3 kill {i}", size=20_000 if i % 50 == 0 else None)
                for i in range(2000)]
    dovecot.seed(user, "INBOX", messages)
    with TcpProxy(dovecot.pop3s_port, rate=RATE_POP3) as proxy:
        account = make_account(tmp_path, dovecot, user, protocol="pop3", port=proxy.port,
                               extra="    poll_interval: 5s\n")
        inbox = account.maildir / "INBOX"
        landed = []
        for round_ in range(kills(7)):
            floor = DownloadFloor(proxy, {inbox: messages})
            d = DaemonProcess(account.config, log_path=tmp_path / f"daemon-{round_}.log")
            d.start()
            before = count_files(inbox)
            # As in the IMAP test: before the download can have ended, leaving work for the
            # later kills.
            wait_until(lambda d=d, before=before: count_files(inbox) > before
                       or not d.alive() or dovecot.count(user, "INBOX") == 0, 30,
                       interval=0.005)
            moment = kill_daemon_within(d, rng, floor.seconds_left() / (kills(7) - round_))
            landed.append(f"{moment} at {count_files(inbox)} local, "
                          f"{dovecot.count(user, 'INBOX')} on the server")
            assert not synced_already(d), f"kill {round_ + 1} came after the sync {replay}"
            bodies = Counter(p.read_bytes() for _, p in local_files(inbox))
            assert all(n == 1 for n in bodies.values()), f"duplicates after kill {replay}"
        print(f"{len(landed)} kills of syncd run (POP3) [moment/window]: " + "; ".join(landed))
        proxy.rate = None  # the checks need no slow line
        rc, out, err, _ = run_syncd(account.config, "sync", timeout=180)
    assert rc == 0, f"{replay}: {out}{err}"
    got = Counter((p.read_bytes(), "") for _, p in local_files(inbox))
    compare(Counter((lf(m), "") for m in messages), got, f"POP3 INBOX after kills {replay}")
    assert dovecot.count(user, "INBOX") == 0
    assert not stray_files(account.maildir)
    assert SECRETS.values
