"""POP3 crash tests against the real Dovecot.

1. An injected crash at every checkpoint of a POP3 sync (``syncd.faults``: between every
   delivery, directory fsync, state commit, DELE and QUIT), each followed by a normal sync:
   the Maildir then holds exactly the server's original messages, each once, the server is
   empty, and a further sync changes nothing. Small groups (3 messages per group commit) so
   that crashes land between group commits too; a leave_on_server + delete_after scenario
   covers the "only DELE, never deliver again" path.
2. kill -9 of a real ``syncd sync`` process at random moments of a 2000-message download,
   several times in a row, then a final sync: exactly the server's messages locally, once
   each (bodies compared). The random seed is printed (``SYNCD_KILL_SEED=<n>`` replays it).
   The download goes through a bandwidth-limited proxy, and no kill comes later than the
   rest of it can take there: every kill lands while the sync is at work, on any machine.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import faults
from syncd.config.load import load_config
from syncd.faults import InjectedCrash
from syncd.outcome.results import AccountResult
from syncd.pop3 import fetch as pop3sync
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import DownloadFloor
from tests.support.tcp_proxy import TcpProxy

NAME = "isp"
REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, dovecot: Dovecot, user: User, *, port: int | None = None,
                 **options: object) -> Path:
    """A config with one POP3S account; ``port`` replaces Dovecot's (a proxy)."""
    extra = "".join(f"    {key}: {value}\n" for key, value in options.items())
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
general:
  maildir_root: {tmp_path}/Mail
  state_dir: {tmp_path}/state
accounts:
  {NAME}:
    protocol: pop3
    host: 127.0.0.1
    port: {port or dovecot.pop3s_port}
    tls: implicit
    tls_ca_file: {dovecot.ca_file}
    username: {user.name}
    password_command: "printf {user.password}"
{extra}""")
    return config


def run(config: Path, **kwargs: object) -> AccountResult:
    settings = load_config(config)
    return pop3sync.sync_pop3_account(settings, settings.accounts[NAME], **kwargs)  # type: ignore[arg-type]


def local_bodies(tmp_path: Path) -> Counter[bytes]:
    folder = tmp_path / "Mail" / NAME / "INBOX"
    bodies: Counter[bytes] = Counter()
    for sub in ("new", "cur"):
        if (folder / sub).is_dir():
            bodies.update(p.read_bytes() for p in (folder / sub).iterdir())
    return bodies


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def server_bodies(dovecot: Dovecot, user: User) -> Counter[bytes]:
    return Counter(lf(m.body) for m in dovecot.messages(user, "INBOX").values())


def describe(got: Counter[bytes], want: Counter[bytes]) -> str:
    def subject(body: bytes) -> str:
        return next((line.decode() for line in body.split(b"\n")
                     if line.startswith(b"Subject:")), "?")

    extra = [(subject(b), n) for b, n in (got - want).items()]
    missing = [subject(b) for b in want - got]
    return f"unexpected (or duplicated) {extra}, missing {missing}"


# --------------------------------------------------------------------------------------------
# 1. injected crashes


MESSAGES = 8
T0 = 1_800_000_000.0
DAY = 86400.0


def _scenario_plain(dovecot: Dovecot, user: User, tmp_path: Path) -> tuple[Path, list[bytes]]:
    messages = [make_message(i, subject=f"plain {i}") for i in range(MESSAGES)]
    dovecot.seed(user, "INBOX", messages)
    return write_config(tmp_path, dovecot, user), messages


def _scenario_delete_after(dovecot: Dovecot, user: User,
                           tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Half the messages were downloaded 20 days ago (and must be deleted now, never
    delivered again), half are new (downloaded now, kept)."""
    old = [make_message(i, subject=f"old {i}") for i in range(MESSAGES // 2)]
    dovecot.seed(user, "INBOX", old)
    config = write_config(tmp_path, dovecot, user, leave_on_server="true", delete_after="14d")
    assert run(config, clock=lambda: T0 - 20 * DAY).ok
    new = [make_message(100 + i, subject=f"new {i}") for i in range(MESSAGES // 2)]
    dovecot.seed(user, "INBOX", new)
    return config, old + new


SCENARIOS = {
    "plain": (_scenario_plain, lambda msgs: Counter()),
    "delete_after": (_scenario_delete_after,
                     lambda msgs: Counter(lf(m) for m in msgs if b"Subject: new" in m)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_injected_crash_at_every_checkpoint(dovecot: Dovecot, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            scenario: str) -> None:
    prepare, server_after = SCENARIOS[scenario]
    monkeypatch.setattr(pop3sync, "GROUP_COUNT", 3)

    # The reference run: how many checkpoints does an uninterrupted sync pass?
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    user = dovecot.add_user()
    config, messages = prepare(dovecot, user, ref_dir)
    faults.arm(None, record=True)
    try:
        assert run(config, clock=lambda: T0).ok
        trace = list(faults.trace or [])
    finally:
        faults.arm(None)
    want_local = Counter(lf(m) for m in messages)
    assert local_bodies(ref_dir) == want_local
    assert server_bodies(dovecot, user) == server_after(messages)
    assert "pop3.recorded" in trace and "pop3.quit" in trace, trace

    for n in range(1, len(trace) + 1):
        workdir = tmp_path / f"crash-{n}"
        workdir.mkdir()
        user = dovecot.add_user()
        config, messages = prepare(dovecot, user, workdir)
        faults.arm(n)
        try:
            with pytest.raises(InjectedCrash):
                run(config, clock=lambda: T0)
        finally:
            faults.arm(None)
        where = f"crash at checkpoint {n} ({trace[n - 1]})"
        partial = local_bodies(workdir)
        assert all(c == 1 for c in partial.values()), f"{where}: duplicates before resuming"

        resumed = run(config, clock=lambda: T0)
        assert resumed.ok, f"{where}: {resumed.summary()}"
        got = local_bodies(workdir)
        assert got == want_local, f"{where}: {describe(got, want_local)}"
        assert server_bodies(dovecot, user) == server_after(messages), where
        quiet = run(config, clock=lambda: T0)
        assert quiet.ok and quiet.folders[0].downloaded == 0, f"{where}: {quiet.summary()}"
        assert quiet.folders[0].deleted_remote == 0, f"{where}: {quiet.summary()}"
        assert local_bodies(workdir) == want_local, where


# --------------------------------------------------------------------------------------------
# 2. kill -9 of a real process


KILL_MESSAGES = 2000
KILLS = 6
RATE = 1_000_000  # bytes/s: the ~0.7 MB to download take at least 0.7 s


def _delivered(tmp_path: Path) -> int:
    new = tmp_path / "Mail" / NAME / "INBOX" / "new"
    try:
        return len(os.listdir(new))
    except FileNotFoundError:
        return 0


@pytest.fixture
def slow_line(dovecot: Dovecot) -> Iterator[TcpProxy]:
    with TcpProxy(dovecot.pop3s_port, rate=RATE) as proxy:
        yield proxy


@pytest.mark.slow
def test_kill_9_mid_download_then_rerun(dovecot: Dovecot, user: User, tmp_path: Path,
                                        slow_line: TcpProxy) -> None:
    seed = int(os.environ.get("SYNCD_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nkill -9 test: SYNCD_KILL_SEED={seed}")
    rng = random.Random(seed)
    messages = [make_message(i, subject=f"kill {i}") for i in range(KILL_MESSAGES)]
    dovecot.seed(user, "INBOX", messages)
    config = write_config(tmp_path, dovecot, user, port=slow_line.port)
    inbox = tmp_path / "Mail" / NAME / "INBOX"
    command = [sys.executable, "-m", "syncd", "--config", str(config), "sync", NAME]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    killed_mid_run = 0
    for attempt in range(KILLS):
        before = _delivered(tmp_path)
        floor = DownloadFloor(slow_line, {inbox: messages})
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        # Kill when a random number of the remaining messages has landed (the download is
        # too fast for a timer to hit it reliably): mid-RETR, mid-fsync, mid-commit,
        # mid-DELE... Now and then a little later, though never past the download.
        remaining = KILL_MESSAGES - before
        target = before + rng.randint(1, max(1, remaining - 1))
        deadline = time.monotonic() + 30
        while (proc.poll() is None and _delivered(tmp_path) < target
               and time.monotonic() < deadline):
            time.sleep(0.001)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, min(0.3, floor.seconds_left())))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        out, _ = proc.communicate(timeout=60)
        after = _delivered(tmp_path)
        print(f"  run {attempt + 1}: rc {proc.returncode}, {after - before} new file(s) "
              f"({after} local, {dovecot.count(user, 'INBOX')} on the server)")
        if proc.returncode not in (-signal.SIGKILL, 0):
            pytest.fail(f"syncd failed on its own (rc {proc.returncode}): {out.decode()}")
        assert all(c == 1 for c in local_bodies(tmp_path).values()), \
            f"duplicates after kill {attempt + 1} (seed {seed})"
    assert killed_mid_run >= 1, "every run finished before it could be killed"
    slow_line.rate = None  # the checks need no slow line

    final = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    want = Counter(lf(m) for m in messages)
    got = local_bodies(tmp_path)
    assert got == want, f"seed {seed}: {describe(got, want)}"
    assert dovecot.count(user, "INBOX") == 0
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "+0 down" in again.stdout, again.stdout + again.stderr
