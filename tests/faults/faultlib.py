"""Shared by the fault suite (not a test module): the suite's figures, accounts whose password
is watched for leaks, exact expectations and subprocess helpers.

The scripted hostile servers live in ``tests/faults/hostile.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dovecot import Dovecot, User
from tests.support.syncd_env import (
    REPO,
    Account,
    local_state,
    server_state,
    write_config,
)

# --------------------------------------------------------------------------------------------
# figures: what the suite did, collected per session and printed/written at the end


@dataclass
class Figures:
    faults: Counter[str] = field(default_factory=Counter)  # kind -> faults injected
    kills: int = 0  # kill -9 of a real syncd process (sync or run), survived
    messages_checked: int = 0  # messages compared byte for byte on both sides
    lost: int = 0
    duplicated: int = 0
    seeds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"faults_injected": sum(self.faults.values()) + self.kills,
                "faults_by_kind": dict(sorted(self.faults.items())),
                "kills_survived": self.kills, "messages_checked": self.messages_checked,
                "lost": self.lost, "duplicated": self.duplicated, "seeds": self.seeds}


FIGURES = Figures()


def fault(kind: str, n: int = 1) -> None:
    FIGURES.faults[kind] += n


def killed(n: int = 1) -> None:
    FIGURES.kills += n


def seed_for(name: str, env: str = "SYNCD_FAULT_SEED") -> int:
    """A random seed, printed, or the one given in the environment (to replay a failure)."""
    value = os.environ.get(env)
    seed = int(value) if value else secrets.randbits(32)
    FIGURES.seeds[name] = seed
    print(f"\n{name}: {env}={seed}")
    return seed


# --------------------------------------------------------------------------------------------
# exact comparisons, counted


def compare(want: Counter, got: Counter, what: str) -> int:
    """want == got as multisets of (body, flags); duplicates and losses counted and reported.
    Returns the number of messages compared."""
    lost = sum((want - got).values())
    # A message present more often than wanted (or present twice at all) is a duplicate.
    dup = sum(max(0, n - want.get(k, 0)) for k, n in got.items() if n > 1)
    FIGURES.lost += lost
    FIGURES.duplicated += dup
    if want != got:
        raise AssertionError(f"{what}: {lost} lost, {dup} duplicated, "
                             f"missing {_short(want - got)}, unexpected {_short(got - want)}")
    FIGURES.messages_checked += sum(want.values())
    return sum(want.values())


def _short(items: Counter) -> list[tuple[str, str]]:
    out = []
    for body, flags in list(items)[:6]:
        subject = next((line for line in body.split(b"\n") if line.startswith(b"Subject:")),
                       body[:40])
        out.append((subject.decode(errors="replace"), flags))
    return out


def in_sync(dovecot: Dovecot, user: User, account: Account, folder: str,
            want: Counter | None = None, *, local_dir: Path | None = None) -> int:
    """Both sides exactly equal (bytes, flags, no duplicates on either side) and, if given,
    equal to ``want``. Counted in the figures."""
    server = server_state(dovecot, user, folder)
    local = local_state(local_dir or account.folder_dir(folder))
    dup = sum(n - 1 for n in server.values() if n > 1) + sum(n - 1 for n in local.values()
                                                             if n > 1)
    FIGURES.duplicated += dup
    assert dup == 0, f"{folder}: duplicates (server {+server - Counter(set(server))}, " \
                     f"local {+local - Counter(set(local))})"
    if want is not None:
        compare(want, server, f"{folder} on the server")
    compare(server, local, f"{folder}: local vs server")
    return sum(server.values())


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def stray_files(maildir: Path) -> list[Path]:
    """Anything in tmp/ of any folder (a delivery left half done)."""
    return sorted(p for p in maildir.rglob("*") if p.parent.name == "tmp" and p.is_file())


# --------------------------------------------------------------------------------------------
# accounts with a watched password


class Secrets:
    """Passwords the suite hands to syncd: none of them may show up in any artefact."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.allowed: set[Path] = set()  # files that legitimately hold one (the secret file)

    def new(self) -> str:
        # Distinctive, and with the characters LOGIN has to quote (a trace that only redacts
        # the plain spelling would show the escaped one).
        value = f'Pw"{secrets.token_hex(6)}\\q {secrets.token_hex(4)}'
        self.values.add(value)
        return value

    def forms(self) -> list[str]:
        out: set[str] = set()
        for value in self.values:
            quoted = value.replace("\\", "\\\\").replace('"', '\\"')
            out |= {value, quoted, repr(value)[1:-1]}
            for user_part in ("", "u"):
                out.add(base64.b64encode(f"\0{user_part}\0{value}".encode()).decode())
            out.add(base64.b64encode(value.encode()).decode())
            # the distinctive random parts alone (a partly redacted or re-quoted leak)
            out |= set(re.findall(r"[0-9a-f]{12}", value))
        return sorted(out)

    def scan(self, root: Path, texts: Iterable[str] = ()) -> int:
        """Assert no form of any watched password is in a file under root or in texts;
        returns how many files were scanned."""
        forms = self.forms()
        scanned = 0
        for text in texts:
            for form in forms:
                assert form not in text, f"a password ({form!r}) leaked into output:\n" \
                                         f"{text[-1500:]}"
        if not root.exists():
            return 0
        for path in root.rglob("*"):
            if path in self.allowed or not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            scanned += 1
            for form in forms:
                assert form.encode() not in data, f"a password ({form!r}) leaked into {path}"
        return scanned


SECRETS = Secrets()


def secret_user(dovecot: Dovecot) -> User:
    return dovecot.add_user(password=SECRETS.new())


def make_account(tmp_path: Path, dovecot: Dovecot, user: User, *, port: int | None = None,
                 extra: str = "", protocol: str = "imap", layout: str = "verbatim",
                 general_extra: str = "", timeout: str | None = None,
                 name: str = "test") -> Account:
    """write_config, but the password comes from a 0600 file (the config never holds it), the
    config is 0600, and a proxy port or a timeout may replace the defaults."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(user.password + "\n")
    secret_file.chmod(0o600)
    SECRETS.allowed.add(secret_file)
    if timeout is not None:
        extra = f"    timeout: {timeout}\n{extra}"
    account = write_config(tmp_path, dovecot, user, extra=extra, protocol=protocol,
                           layout=layout, general_extra=general_extra, name=name, port=port)
    text = account.config.read_text()
    text = re.sub(r'(?m)^    password_command: .*$', f"    password_command: cat {secret_file}",
                  text)
    account.config.write_text(text)
    account.config.chmod(0o600)
    return account


# --------------------------------------------------------------------------------------------
# processes


def syncd_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "syncd", "--config", str(config), *args]


def run_syncd(config: Path, *args: str, timeout: float = 120,
              env: Mapping[str, str] | None = None) -> tuple[int, str, str, int]:
    """`syncd --config CONFIG ARGS` as a subprocess: (exit code, stdout, stderr, peak RSS in
    KiB).

    The peak is the process's VmHWM, sampled while it runs. Not wait4's ru_maxrss: Linux
    carries the forking process's high-water mark across fork and exec into it, so a pytest
    that had grown to 120 MB (after the daemon tests) made every child "peak" at 120 MB."""
    proc = subprocess.Popen(syncd_cmd(config, *args), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []

    def pump(stream, sink: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            sink.append(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_chunks), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    status = None
    peak = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, ValueError):  # exiting, or a zombie
            peak = max(peak, rss_kib(proc.pid)[1])
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pid, status = os.waitpid(proc.pid, 0)
        for t in threads:
            t.join(5)
        raise AssertionError(f"syncd {' '.join(args)} did not finish within {timeout} s: "
                             f"{b''.join(out_chunks + err_chunks).decode(errors='replace')}")
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join(5)
    return (proc.returncode, b"".join(out_chunks).decode(errors="replace"),
            b"".join(err_chunks).decode(errors="replace"), peak)


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL by PID; True if it was still running (a kill that landed)."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return proc.returncode == -signal.SIGKILL


def count_files(folder_dir: Path) -> int:
    n = 0
    for sub in ("cur", "new"):
        with contextlib.suppress(FileNotFoundError):
            n += sum(1 for name in os.listdir(folder_dir / sub) if not name.startswith("."))
    return n


def tree(root: Path, *, skip: Iterable[Path] = ()) -> dict[str, tuple[int, int]]:
    """Every path under root (relative) -> (mode, size): to prove nothing was written
    outside the directories syncd may write to."""
    skipped = [p.resolve() for p in skip]
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).resolve()
        if any(here == s or s in here.parents for s in skipped):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.resolve() in skipped:
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[str(path.relative_to(root))] = (st.st_mode, 0 if name in dirnames else st.st_size)
    return out


def write_summary(path: Path, figures: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
