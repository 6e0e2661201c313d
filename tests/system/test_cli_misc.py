"""The other commands against the real Dovecot: `password set` with a keyring, `status`,
`run` (not implemented yet), and logging (terminal vs journal, --debug protocol traces).

Every test here goes through the ``leakcheck`` fixture: the account's password must not appear
in anything a test saw (stdout, stderr, log output, captured file descriptors) nor in any
file syncd wrote (state, status, maildir).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import pty
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keyring
import keyring.backend
import pytest

from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import REPO, Account, run_cli, write_config

# A journald priority prefix (sd-daemon(3)).
PRIORITY = re.compile(r"^<([0-7])>")
# What a timestamp at the start of a log line looks like ("05:09:24 ", "2024-01-01 ...").
TIMESTAMP = re.compile(r"^(<[0-7]>)?\s*(\d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2})")


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[service, username] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


# --------------------------------------------------------------------------------------------
# the leak check


@dataclass
class LeakCheck:
    tmp_path: Path
    passwords: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)
    allowed_files: set[Path] = field(default_factory=set)

    def watch(self, password: str) -> None:
        self.passwords.add(password)

    def record(self, *texts: str) -> None:
        self.outputs.extend(texts)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        rc, out, err = run_cli(*argv)
        self.record(out, err)
        return rc, out, err

    def forms(self, password: str) -> list[str]:
        """The password and the spellings a protocol trace could carry it in."""
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        forms = {password, quoted, repr(password)[1:-1]}
        for user_part in ("", "u"):
            raw = f"\0{user_part}\0{password}".encode()
            forms.add(base64.b64encode(raw).decode())
        forms.add(base64.b64encode(password.encode()).decode())
        return sorted(forms)

    def assert_clean(self, captured: str) -> None:
        assert self.passwords, "the test never told leakcheck which password to look for"
        texts = [*self.outputs, captured]
        files = [p for p in self.tmp_path.rglob("*")
                 if p.is_file() and p not in self.allowed_files]
        for password in self.passwords:
            for form in self.forms(password):
                for text in texts:
                    assert form not in text, f"password ({form!r}) in output:\n{text[-2000:]}"
                raw = form.encode()
                for path in files:
                    assert raw not in path.read_bytes(), f"password ({form!r}) in {path}"


@pytest.fixture(autouse=True)
def leakcheck(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[LeakCheck]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_keyring = keyring.get_keyring()
    check = LeakCheck(tmp_path)
    try:
        yield check
        captured = capfd.readouterr()
        check.assert_clean(captured.out + captured.err)
    finally:
        keyring.set_keyring(saved_keyring)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def _password() -> str:
    # Quote, backslash and space: the characters IMAP LOGIN has to quote or escape, so a trace
    # that only redacts the plain spelling would show the escaped one.
    return f'Pw"q\\b s{secrets.token_hex(6)}'


@pytest.fixture
def pw_user(dovecot: Dovecot, leakcheck: LeakCheck) -> User:
    user = dovecot.add_user(password=_password())
    leakcheck.watch(user.password)
    return user


@pytest.fixture
def account(tmp_path: Path, dovecot: Dovecot, pw_user: User, leakcheck: LeakCheck) -> Account:
    """An IMAP account whose password comes from a file (so the config itself is clean)."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(pw_user.password + "\n")
    leakcheck.allowed_files.add(secret_file)
    acc = write_config(tmp_path, dovecot, pw_user)
    text = acc.config.read_text()
    old = f'password_command: "printf {pw_user.password}"'
    assert old in text
    acc.config.write_text(text.replace(old, f"password_command: cat {secret_file}"))
    return acc


def _without_password_command(acc: Account) -> None:
    text = acc.config.read_text()
    acc.config.write_text(re.sub(r"(?m)^    password_command: .*\n", "", text))


def _syncd(argv: list[str], *, stderr: int | io.IOBase, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *argv], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, env=env, cwd=REPO, timeout=timeout,
                          check=False)


# --------------------------------------------------------------------------------------------
# password set + keyring


def test_password_set_then_check_uses_the_keyring(
        tmp_path: Path, account: Account, pw_user: User, leakcheck: LeakCheck,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    _without_password_command(account)
    config = str(account.config)

    # Before: no password anywhere -> check says how to fix it (exit 1, cause secret).
    rc, out, err = leakcheck.cli("--config", config, "check")
    assert rc == 1, out + err
    assert re.search(r"^test: FAILED \(secret\):.*syncd password set test", out, re.M), out

    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return pw_user.password

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    rc, out, err = leakcheck.cli("--config", config, "password", "set", "test")
    assert rc == 0, out + err
    assert len(prompts) == 1 and "test" in prompts[0]  # prompted (without echo) once
    assert backend.store == {("syncd", "test"): pw_user.password}
    assert "stored" in out

    rc, out, err = leakcheck.cli("--config", config, "check")
    assert rc == 0, out + err
    assert re.search(rf"^test: OK .*logged in as {pw_user.name}$", out, re.M), out

    # And through the whole stack with protocol traces on: still no password in the output.
    rc, out, err = leakcheck.cli("--debug", "--config", config, "check")
    assert rc == 0, out + err
    assert "LOGIN" in err


def test_password_set_refuses_an_empty_password(
        account: Account, leakcheck: LeakCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    monkeypatch.setattr("getpass.getpass", lambda prompt="", stream=None: "")
    rc, out, err = leakcheck.cli("--config", str(account.config), "password", "set", "test")
    assert rc == 2, out + err
    assert "empty" in err
    assert backend.store == {}


def test_password_set_for_an_unconfigured_account_warns(
        account: Account, pw_user: User, leakcheck: LeakCheck,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    monkeypatch.setattr("getpass.getpass", lambda prompt="", stream=None: pw_user.password)
    rc, out, err = leakcheck.cli("--config", str(account.config), "password", "set", "other")
    assert rc == 0, out + err
    assert "warning" in err and "other" in err
    assert backend.store == {("syncd", "other"): pw_user.password}


# --------------------------------------------------------------------------------------------
# status


def test_status_after_sync(account: Account, dovecot: Dovecot, pw_user: User,
                           leakcheck: LeakCheck) -> None:
    config = str(account.config)
    # Before any sync: status works and knows the account, with nothing synced yet.
    rc, out, err = leakcheck.cli("--config", config, "status", "--json")
    assert rc == 0, out + err
    before = json.loads(out)
    assert before["accounts"]["test"]["last_sync"] is None

    dovecot.seed(pw_user, "INBOX", [(make_message(1), "S"), make_message(2), make_message(3)])
    dovecot.seed(pw_user, "Work/Projects", [make_message(4, folder="Work/Projects")])
    rc, out, err = leakcheck.cli("--config", config, "sync")
    assert rc == 0, out + err

    rc, out, err = leakcheck.cli("--config", config, "status", "--json")
    assert rc == 0, out + err
    data = json.loads(out)
    test = data["accounts"]["test"]
    assert isinstance(test["last_sync"], int | float) and test["last_sync"] > 0
    assert test["error"] is None
    assert set(test["folders"]) == {"INBOX", "Work/Projects"}
    inbox = test["folders"]["INBOX"]
    assert inbox["messages"] == 3 and inbox["unread"] == 2
    assert inbox["pending"] == {"new": 0, "flags": 0, "deleted": 0}
    assert isinstance(inbox["last_sync"], int | float) and inbox["last_sync"] > 0
    projects = test["folders"]["Work/Projects"]
    assert projects["messages"] == 1 and projects["unread"] == 1

    # Local changes not yet synced show as pending: mark one read, delete one, add one.
    inbox_dir = account.folder_dir("INBOX")
    unread = sorted(p for sub in ("new", "cur") for p in (inbox_dir / sub).iterdir()
                    if not p.name.endswith("S"))
    assert len(unread) == 2
    unread[0].rename(inbox_dir / "cur" / (unread[0].name.split(":2,")[0] + ":2,S"))
    unread[1].unlink()
    (inbox_dir / "new" / "1700000000.local1.host").write_bytes(make_message(9))

    rc, out, err = leakcheck.cli("--config", config, "status", "--json")
    assert rc == 0, out + err
    inbox = json.loads(out)["accounts"]["test"]["folders"]["INBOX"]
    assert inbox["pending"] == {"new": 1, "flags": 1, "deleted": 1}
    assert inbox["messages"] == 3 and inbox["unread"] == 1

    # The table names the account, the folders and the counts.
    rc, out, err = leakcheck.cli("--config", config, "status")
    assert rc == 0, out + err
    assert "test" in out and "INBOX" in out and "Work/Projects" in out
    assert "1/3" in out and "1/1" in out


# --------------------------------------------------------------------------------------------
# logging


def test_journal_lines_have_priorities_and_no_timestamps(
        tmp_path: Path, account: Account, leakcheck: LeakCheck) -> None:
    log_file = tmp_path / "journal.txt"
    with open(log_file, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        ok = _syncd(["--debug", "--config", str(account.config), "check"], stderr=fh, env=env)
        # An error too: it must reach the journal as an error, not as plain info.
        bad = _syncd(["--config", str(account.config), "check", "nosuch"], stderr=fh, env=env)
    text = log_file.read_text()
    leakcheck.record(ok.stdout, bad.stdout, text)
    assert ok.returncode == 0, ok.stdout + text
    assert bad.returncode == 2

    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) > 10, text
    for line in lines:
        assert PRIORITY.match(line), f"no priority prefix: {line!r}"
        assert not TIMESTAMP.match(line), f"timestamp under the journal: {line!r}"
    debug = [ln for ln in lines if ln.startswith("<7>")]
    assert any("LOGIN" in ln for ln in debug), "no protocol trace at debug priority"
    assert any(ln.startswith("<3>") and "nosuch" in ln for ln in lines), lines[-3:]


def _run_on_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run syncd with stderr on a pseudo-terminal; return (exit status, what it wrote)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            chunks.append(data)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "syncd", *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=REPO)
        os.close(slave)
        slave = -1
        rc = proc.wait(timeout=120)
        thread.join(10)
    finally:
        if slave >= 0:
            os.close(slave)
        with contextlib.suppress(OSError):
            os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.mark.parametrize("inherited_journal_stream", [False, True])
def test_terminal_lines_have_timestamps(
        tmp_path: Path, account: Account, leakcheck: LeakCheck,
        inherited_journal_stream: bool) -> None:
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    if inherited_journal_stream:
        # A shell started from a systemd service inherits JOURNAL_STREAM, but its stderr is
        # not the journal: the variable must be checked against stderr itself.
        other = tmp_path / "not-stderr"
        other.write_text("")
        st = os.stat(other)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    rc, text = _run_on_pty(["--debug", "--config", str(account.config), "check"], env)
    leakcheck.record(text)
    assert rc == 0, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    log_lines = [ln for ln in lines if not ln.startswith(("\t", " "))]
    assert len(log_lines) > 10, text
    for line in log_lines:
        assert re.match(r"^\d{2}:\d{2}:\d{2} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s", line), \
            f"not a timestamped log line: {line!r}"
        assert not PRIORITY.match(line)
    assert any("LOGIN" in ln for ln in log_lines)


def test_debug_shows_protocol_traces_without_the_password(
        account: Account, dovecot: Dovecot, pw_user: User, leakcheck: LeakCheck) -> None:
    config = str(account.config)
    dovecot.seed(pw_user, "INBOX", [make_message(1)])

    rc, out, err = leakcheck.cli("--config", config, "check")
    assert rc == 0, out + err
    assert "LOGIN" not in err and "> b'" not in err, "protocol traces without --debug"

    for command in ("check", "sync"):
        rc, out, err = leakcheck.cli("--debug", "--config", config, command)
        assert rc == 0, out + err
        # Both directions of the conversation are traced, the login included (redacted).
        assert re.search(r"> b'\w+ LOGIN ", err), err[:2000]
        # The capabilities, from the greeting or asked for.
        assert re.search(r"< b'\* (OK \[)?CAPABILITY ", err), err[:2000]
        assert re.search(r'> b\'\w+ LIST ""', err), err[:2000]
        assert pw_user.name in err  # the user name is not a secret; shows the LOGIN line


def test_debug_on_a_failure_shows_no_password(
        tmp_path: Path, account: Account, pw_user: User, leakcheck: LeakCheck) -> None:
    """A wrong password with --debug: the traceback path and the server's reply are traced,
    and neither the right nor the wrong password shows up."""
    wrong = _password()
    leakcheck.watch(wrong)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(wrong + "\n")
    for command in ("check", "sync"):
        rc, out, err = leakcheck.cli("--debug", "--config", str(account.config), command)
        assert rc == 1, out + err
        assert "wrong username or password" in out, out
        assert re.search(r"> b'\w+ LOGIN ", err), err[:2000]
