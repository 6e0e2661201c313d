"""Convergence soak (issue 16): `syncd run` with three accounts while, with a fixed random
seed, another IMAP client appends, flags and expunges on the server and a mutt-like process
renames, deletes and delivers files locally, new folders appear on both sides and SIGHUP
restarts an account. Then activity stops and both sides must converge within a bound: every
message created and not deleted exists exactly once on each side, with the flags last set.

Every message has one owner side, the only side that changes or deletes it after creation
(so the expected end state is exact, not a matter of conflict policy): seeded and server
appended messages belong to the server client, locally delivered ones to the mail client.

It runs twice: ``direct`` (straight to Dovecot over TLS) and ``faults``: every account behind
the fault proxy (tests/support/tcp_proxy.py) with a one-way latency, two accounts over TLS and
one in plaintext with every server line split in two segments, and, every few seconds during
the activity, a fault drawn from the same seed: one connection reset, every connection of a
proxy reset (a network blip), the next connection reset in the middle of what the server sends,
or new connections refused for a second. The faults stop with the activity; the latency and the
split lines stay.

Under both, the daemon's resources are sampled from /proc every half second: its RSS must stay
flat (the last third of the activity at most max(+15 %, +10 MB) over the first third's peak,
the first sync being the warm-up), its thread count back where it was (but for what new folders
need), and, once converged and left alone, its CPU over 10 s under 1 %.

SYNCD_SOAK_SECONDS (activity, default 12) and SYNCD_SOAK_SEED (default 16) make it longer or
different: `make soak` runs it for minutes. SYNCD_SOAK_REPORT=<file> writes the figures as JSON.
"""

from __future__ import annotations

import contextlib
import email.parser
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.dovecot import Dovecot, HarnessError, ServerMessage, User, make_message
from tests.support.syncd_env import IMAP_TO_LETTER, Account, assert_folder_in_sync, local_files
from tests.support.tcp_proxy import TcpProxy
from tests.system.conftest import StartDaemon
from tests.system.test_daemon import account_yaml, stop_ok, write_accounts

SECONDS = float(os.environ.get("SYNCD_SOAK_SECONDS", "12"))
SEED = int(os.environ.get("SYNCD_SOAK_SEED", "16"))
CONVERGE_LIMIT = 40.0  # after activity stops; IDLE and the watcher need ~1 s, a poll 5 s
REPORT = os.environ.get("SYNCD_SOAK_REPORT")
BOX_CAP = 400  # messages per account, after which deletions keep pace with additions
LATENCY = 0.01  # one way, through the fault proxy
SPLIT_DELAY = 0.002  # between the two halves of every line, on the plaintext account
FAULT_EVERY = (3.0, 8.0)  # seconds between two faults, drawn uniformly
RSS_SLACK = (0.15, 10 * 1024)  # the last third's peak over the first's: max(15 %, 10 MB)
THREAD_SLACK = 2
IDLE_SETTLE, IDLE_WINDOW, IDLE_CPU_LIMIT = 3.0, 10.0, 0.01
ACCOUNTS = ("alpha", "beta", "gamma")
LETTERS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered"}
_HEADERS = email.parser.BytesHeaderParser()

pytestmark = pytest.mark.slow


@dataclass
class Box:
    """The expected state of one account: folder -> Message-ID -> (owner, flag letters)."""

    account: Account
    user: User
    folders: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    # The side that made a folder during the soak adds messages to it; the other side may
    # not have it yet. The seeded folders are everyone's.
    made_by: dict[str, str] = field(default_factory=dict)

    def folders_of(self, side: str) -> list[str]:
        return sorted(f for f in self.folders if self.made_by.get(f, side) == side)

    def owned(self, owner: str) -> list[tuple[str, str]]:
        return sorted((folder, mid) for folder, msgs in self.folders.items()
                      for mid, (who, _) in msgs.items() if who == owner)


def mid_of(path: Path) -> str:
    return str(_HEADERS.parsebytes(path.read_bytes())["Message-ID"]).strip()


def local_view(folder_dir: Path) -> Counter[tuple[str, str]]:
    return Counter((mid_of(p), "".join(sorted(f for f in flags if f in LETTERS)))
                   for flags, p in local_files(folder_dir))


def server_messages(dc: Dovecot, user: User, folder: str) -> dict[int, ServerMessage]:
    """dc.messages, again if syncd's own STORE on the folder came in between as an unsolicited
    FETCH (the harness takes a FETCH without UID for a broken reply)."""
    for attempt in range(5):
        try:
            return dc.messages(user, folder, bodies=False)
        except HarnessError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def server_view(dc: Dovecot, user: User, folder: str) -> Counter[tuple[str, str]]:
    return Counter((m.message_id or "", "".join(sorted(
        IMAP_TO_LETTER[f.lower()] for f in m.flags if IMAP_TO_LETTER.get(f.lower()) in LETTERS)))
        for m in server_messages(dc, user, folder).values())


class Driver:
    """The random activity on both sides; counts what it did."""

    def __init__(self, dc: Dovecot, boxes: dict[str, Box], rng: random.Random) -> None:
        self.dc = dc
        self.boxes = boxes
        self.rng = rng
        self.serial = 1000
        self.ops: Counter[str] = Counter()

    def _flags(self) -> str:
        return "".join(sorted(self.rng.sample(sorted(LETTERS), self.rng.randint(0, 2))))

    def step(self) -> None:
        box = self.boxes[self.rng.choice(sorted(self.boxes))]
        # Past BOX_CAP messages an account stops growing (as many deletions as additions):
        # a long soak measures the daemon on a mailbox of steady size, so that a growing RSS
        # means a leak, not more mail.
        gone = 3 if sum(map(len, box.folders.values())) >= BOX_CAP else 1
        op = self.rng.choices(
            ["append", "server_flags", "expunge", "deliver", "rename", "delete"],
            weights=[3, 3, gone, 3, 3, gone])[0]
        getattr(self, op)(box)

    # --- the server side (another IMAP client) ----------------------------------------------
    def append(self, box: Box, folder: str | None = None) -> None:
        folder = folder or self.rng.choice(box.folders_of("server"))
        self.serial += 1
        mid = f"<soak{self.serial}.{SEED}@server.test>"
        flags = self._flags()
        self.dc.append(box.user, folder, make_message(self.serial, folder=folder,
                                                      message_id=mid),
                       flags=[LETTERS[f] for f in flags])
        box.folders[folder][mid] = ("server", flags)
        self.ops["server append"] += 1

    def _server_uid(self, box: Box, folder: str, mid: str) -> int | None:
        for uid, m in server_messages(self.dc, box.user, folder).items():
            if m.message_id == mid:
                return uid
        return None

    def server_flags(self, box: Box) -> None:
        owned = box.owned("server")
        if not owned:
            return
        folder, mid = self.rng.choice(owned)
        uid = self._server_uid(box, folder, mid)
        assert uid is not None, f"{mid} vanished from the server"
        flags = self._flags()
        self.dc.set_flags(box.user, folder, uid, [LETTERS[f] for f in flags])
        box.folders[folder][mid] = ("server", flags)
        self.ops["server flags"] += 1

    def expunge(self, box: Box) -> None:
        owned = box.owned("server")
        if not owned:
            return
        folder, mid = self.rng.choice(owned)
        uid = self._server_uid(box, folder, mid)
        assert uid is not None, f"{mid} vanished from the server"
        self.dc.expunge(box.user, folder, uid)
        del box.folders[folder][mid]
        self.ops["server expunge"] += 1

    # --- the local side (mutt) ----------------------------------------------------------------
    def deliver(self, box: Box, folder: str | None = None) -> None:
        folder = folder or self.rng.choice(box.folders_of("local"))
        self.serial += 1
        mid = f"<soak{self.serial}.{SEED}@local.test>"
        flags = self._flags()
        directory = box.account.folder_dir(folder)
        data = make_message(self.serial, folder=folder, message_id=mid).replace(b"\r\n", b"\n")
        name = f"{time.time_ns()}.S{self.serial}.soak"
        (directory / "tmp" / name).write_bytes(data)
        os.rename(directory / "tmp" / name, directory / "cur" / f"{name}:2,{flags}")
        box.folders[folder][mid] = ("local", flags)
        self.ops["local delivery"] += 1

    def _local_path(self, box: Box, folder: str, mid: str) -> Path | None:
        for _, path in local_files(box.account.folder_dir(folder)):
            try:
                if mid_of(path) == mid:
                    return path
            except FileNotFoundError:
                continue
        return None

    def rename(self, box: Box) -> None:
        owned = box.owned("local")
        if not owned:
            return
        folder, mid = self.rng.choice(owned)
        path = self._local_path(box, folder, mid)
        assert path is not None, f"{mid} vanished locally"
        flags = self._flags()
        key = path.name.partition(":2,")[0]
        os.rename(path, path.parent.parent / "cur" / f"{key}:2,{flags}")
        box.folders[folder][mid] = ("local", flags)
        self.ops["local rename"] += 1

    def delete(self, box: Box) -> None:
        owned = box.owned("local")
        if not owned:
            return
        folder, mid = self.rng.choice(owned)
        path = self._local_path(box, folder, mid)
        assert path is not None, f"{mid} vanished locally"
        os.unlink(path)
        del box.folders[folder][mid]
        self.ops["local delete"] += 1

    # --- folders ------------------------------------------------------------------------------
    def new_server_folder(self, box: Box, name: str) -> None:
        self.dc.create_folder(box.user, name)
        box.folders[name] = {}
        box.made_by[name] = "server"
        self.append(box, name)
        self.ops["server folder"] += 1

    def new_local_folder(self, box: Box, name: str) -> None:
        directory = box.account.folder_dir(name)
        for sub in ("tmp", "new", "cur"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        box.folders[name] = {}
        box.made_by[name] = "local"
        self.deliver(box, name)
        self.ops["local folder"] += 1


def differences(dc: Dovecot, boxes: dict[str, Box]) -> list[str]:
    """What still differs from the expected state (empty once converged)."""
    problems = []
    for name, box in boxes.items():
        for folder, msgs in box.folders.items():
            want = Counter((mid, flags) for mid, (_, flags) in msgs.items())
            try:
                server = server_view(dc, box.user, folder)
            except Exception as exc:  # the folder may not exist on the server yet
                problems.append(f"{name}/{folder}: server: {exc}")
                continue
            local = local_view(box.account.folder_dir(folder))
            for side, got in (("server", server), ("local", local)):
                if got != want:
                    problems.append(f"{name}/{folder} {side}: missing {sorted(want - got)}, "
                                    f"unexpected {sorted(got - want)}")
    return problems


def threads_of(pid: int) -> int:
    return proc_status(pid)[1]


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in kB, threads) of a live process."""
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (not its children: the hooks)."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rpartition(")")[2].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """(seconds since start, RSS kB, threads) of the daemon every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError, KeyError):
                rss, threads = proc_status(self.pid)
                self.samples.append((time.monotonic() - self._t0, rss, threads))
            self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, int, int]]:
        self._halt.set()
        self.join(5)
        return list(self.samples)


def rss_flat(samples: list[tuple[float, int, int]]) -> tuple[int, int, int]:
    """(first third's peak, last third's peak, allowed peak) of the activity's RSS in kB."""
    third = max(1, len(samples) // 3)
    first = max(rss for _, rss, _ in samples[:third])
    last = max(rss for _, rss, _ in samples[-third:])
    return first, last, first + max(int(first * RSS_SLACK[0]), RSS_SLACK[1])


class Faults(threading.Thread):
    """Network faults on the proxies, one every FAULT_EVERY seconds, drawn from `rng`."""

    KINDS = ("reset one connection", "reset every connection", "reset mid-response",
             "refuse connections 1 s")

    def __init__(self, proxies: list[TcpProxy], rng: random.Random) -> None:
        super().__init__(daemon=True, name="soak-faults")
        self.proxies = proxies
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.rng.uniform(*FAULT_EVERY)):
            proxy = self.rng.choice(self.proxies)
            kind = self.rng.choice(self.KINDS)
            if kind == "reset one connection":
                links = proxy.links()
                if not links or not proxy.drop(self.rng.choice(links)):
                    continue
            elif kind == "reset every connection":
                if not proxy.drop_all():
                    continue
            elif kind == "reset mid-response":
                # One open connection is reset in the middle of what the server sends it
                # next (a FETCH, a LIST, an IDLE notification), 50 bytes to 4 kB into it.
                links = proxy.links()
                if not links:
                    continue
                link = self.rng.choice(links)
                proxy.cut_links = {link.number}
                proxy.cut_after = link.bytes_down + self.rng.randint(50, 4000)
            else:
                proxy.refusing = True
                self._halt.wait(1.0)
                proxy.refusing = False
            self.counts[kind] += 1

    def stop(self) -> Counter[str]:
        self._halt.set()
        self.join(5)
        for proxy in self.proxies:
            proxy.refusing = False
            proxy.cut_after = None
        return self.counts


def plaintext(block: str) -> str:
    """An account_yaml block made to speak plaintext IMAP (for the split lines)."""
    block = re.sub(r"(?m)^    tls: implicit$", "    tls: none", block)
    return block + "    allow_insecure: true\n"


@pytest.mark.parametrize("faulted", [False, True], ids=["direct", "faults"])
def test_the_daemon_converges_under_load(dovecot: Dovecot, tmp_path: Path,
                                         daemons: StartDaemon, faulted: bool) -> None:
    rng = random.Random(SEED)
    users = {name: dovecot.add_user() for name in ACCOUNTS}
    hook_log, hook_lock = tmp_path / "hook.log", tmp_path / "hook.running"
    hook = (f"mkdir {hook_lock} 2>/dev/null || echo OVERLAP >> {hook_log}; "
            f"echo $SYNCD_ACCOUNT >> {hook_log}; sleep 0.05; rmdir {hook_lock}")
    extra = "    poll_interval: 5s\n    idle: [INBOX, Work]\n"
    with contextlib.ExitStack() as stack:
        proxies: list[TcpProxy] = []
        blocks = {}
        for name, user in users.items():
            if not faulted:
                blocks[name] = account_yaml(name, dovecot, user, extra=extra)
            elif name == "beta":  # plaintext: the proxy sees lines and splits them
                proxy = stack.enter_context(TcpProxy(dovecot.imap_port, delay=LATENCY))
                proxy.split_lines = SPLIT_DELAY
                proxies.append(proxy)
                blocks[name] = plaintext(account_yaml(name, dovecot, user, port=proxy.port,
                                                      extra=extra))
            else:
                proxy = stack.enter_context(TcpProxy(dovecot.imaps_port, delay=LATENCY))
                proxies.append(proxy)
                blocks[name] = account_yaml(name, dovecot, user, port=proxy.port, extra=extra)
        _soak(dovecot, tmp_path, daemons, rng, users, proxies,
              write_accounts(tmp_path, {name: (dovecot, user, blocks[name])
                                        for name, user in users.items()},
                             general_extra=f"  on_new_mail: '{hook}'\n"),
              hook_log)


def _soak(dovecot: Dovecot, tmp_path: Path, daemons: StartDaemon, rng: random.Random,
          users: dict[str, User], proxies: list[TcpProxy], accounts: dict[str, Account],
          hook_log: Path) -> None:
    boxes: dict[str, Box] = {}
    for name, user in users.items():
        box = boxes[name] = Box(accounts[name], user, {"INBOX": {}, "Work": {}})
        for folder, n in (("INBOX", 8), ("Work", 4)):
            seeded = [make_message(i, folder=folder, message_id=f"<seed{i}.{folder}.{name}@x>")
                      for i in range(n)]
            dovecot.seed(user, folder, seeded)
            for i in range(n):
                box.folders[folder][f"<seed{i}.{folder}.{name}@x>"] = ("server", "")

    with NotifySocket(tmp_path / "notify.sock") as sock:
        d = daemons(accounts["alpha"].config,
                    env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "10000000"})
        wait_until(lambda: not differences(dovecot, boxes), 60,
                   message=lambda: f"the first sync: {differences(dovecot, boxes)}\n"
                   f"{d.log()[-3000:]}")
        time.sleep(1.0)  # the IDLE watchers and the filesystem watcher settle
        rss_before, threads_before = proc_status(d.pid)
        sampler = Sampler(d.pid)
        sampler.start()
        faults = Faults(proxies, random.Random(SEED + 1)) if proxies else None
        if faults:
            faults.start()
        driver = Driver(dovecot, boxes, rng)
        started = time.monotonic()
        events = {SECONDS * 0.25: "server folder", SECONDS * 0.4: "sighup",
                  SECONDS * 0.6: "local folder"}
        try:
            while time.monotonic() - started < SECONDS:
                elapsed = time.monotonic() - started
                for at, what in sorted(events.items()):
                    if elapsed >= at:
                        del events[at]
                        box = boxes[rng.choice(ACCOUNTS)]
                        if what == "server folder":
                            driver.new_server_folder(box, f"Remote{int(at)}")
                        elif what == "local folder":
                            driver.new_local_folder(box, f"Local{int(at)}")
                        else:
                            _reload_one(accounts["beta"], d)
                            driver.ops["SIGHUP"] += 1
                driver.step()
                time.sleep(rng.uniform(0.0, 0.08))
        finally:
            fault_counts = faults.stop() if faults else Counter()
        activity = sampler.stop()
        stopped = time.monotonic()
        wait_until(lambda: not differences(dovecot, boxes), CONVERGE_LIMIT, interval=0.25,
                   message=lambda: f"convergence: {differences(dovecot, boxes)}\n"
                   f"{d.log()[-4000:]}")
        converged = time.monotonic() - stopped

        # Idle: nothing changes anywhere (not even a read of the maildir, which the watcher
        # could see); after the debounce and an echo or two, the daemon only polls.
        time.sleep(IDLE_SETTLE)
        cpu_start, wall_start = cpu_seconds(d.pid), time.monotonic()
        time.sleep(IDLE_WINDOW)
        idle_cpu = (cpu_seconds(d.pid) - cpu_start) / (time.monotonic() - wall_start)
        rss_after, threads_after = proc_status(d.pid)

        first_peak, last_peak, allowed_peak = rss_flat(activity)
        # Flat but for what the new folders may need: watchdog (off Linux) runs one emitter
        # thread per watched directory (cur/ and new/; on Linux one inotify thread watches
        # them all), and the hook thread starts with the first mail.
        allowed_threads = (threads_before + THREAD_SLACK
                           + 2 * (driver.ops["server folder"] + driver.ops["local folder"]))
        figures = {
            "seed": SEED, "seconds": SECONDS, "faults": bool(proxies),
            "operations": dict(driver.ops), "fault counts": dict(fault_counts),
            "proxy": {"connections": sum(p.accepted for p in proxies),
                      "refused": sum(p.refused for p in proxies),
                      "cut mid-response": sum(p.cuts for p in proxies),
                      "lines split": sum(p.splits for p in proxies)},
            "converged after s": round(converged, 2),
            "rss kB": {"after first sync": rss_before, "first third peak": first_peak,
                       "last third peak": last_peak, "allowed": allowed_peak,
                       "max": max(r for _, r, _ in activity), "idle": rss_after},
            "threads": {"after first sync": threads_before,
                        "max": max(t for _, _, t in activity), "idle": threads_after,
                        "allowed": allowed_threads},
            "idle cpu %": round(100 * idle_cpu, 3),
            "samples": len(activity),
        }
        print(f"\nsoak seed {SEED}, {SECONDS:.0f} s of activity"
              f"{' through the fault proxy' if proxies else ''}: {dict(driver.ops)}; "
              f"faults {dict(fault_counts)}, proxy {figures['proxy']}; "
              f"converged {converged:.1f} s after the activity stopped; "
              f"RSS {figures['rss kB']} kB; threads {figures['threads']}; "
              f"idle CPU {100 * idle_cpu:.2f} %")
        if REPORT:
            Path(REPORT).write_text(json.dumps(figures, indent=2) + "\n")

        # Exact: the same bytes and flags on both sides, nothing twice.
        for box in boxes.values():
            for folder in box.folders:
                assert_folder_in_sync(dovecot, box.user, box.account, folder)
        # The daemon stayed healthy all along.
        log = d.log()
        assert d.alive()
        for bad in ("Traceback", "internal error", "STUCK", "not telling systemd"):
            assert bad not in log, f"{bad!r} in the daemon log:\n{log[-4000:]}"
        assert "OVERLAP" not in (hook_log.read_text() if hook_log.exists() else ""), \
            "two on_new_mail hooks ran at once"
        last_ping = max(sock.times("WATCHDOG=1"))
        assert time.monotonic() - last_ping < 6.0, "the watchdog pings stopped"
        if proxies and 2 * FAULT_EVERY[1] <= SECONDS:
            assert sum(fault_counts.values()) >= 1, "no fault was injected"
        # Flat resources.
        assert last_peak <= allowed_peak, \
            f"RSS grew: first third's peak {first_peak} kB, last third's {last_peak} kB"
        assert threads_after <= allowed_threads, \
            f"threads grew from {threads_before} to {threads_after} (allowed {allowed_threads})"
        assert idle_cpu < IDLE_CPU_LIMIT, f"idle CPU {100 * idle_cpu:.2f} % over {IDLE_WINDOW} s"
        stop_ok(d)


def _reload_one(account: Account, d: DaemonProcess) -> None:
    """Change one account (a second connection) and SIGHUP: its worker is replaced mid-activity."""
    text = account.config.read_text()
    account.config.write_text(text.replace(f"  {account.name}:\n", f"  {account.name}:\n"
                                           "    connections: 2\n", 1))
    d.signal(signal.SIGHUP)
