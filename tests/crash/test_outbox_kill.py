"""kill -9 of a real `syncd outbox flush` at every step of sending (``syncd.faults``
checkpoints with ``SYNCD_CRASH_AT=n``: the process SIGKILLs itself there), then a normal
flush. The queue never loses a message, and a message the server recorded is never sent
twice when the Sent folder can tell (a provider that files sent mail itself). Where syncd
files the copy itself, the one step that cannot be settled (after the server's 250, before
the record says "sent") resends once and reports a possible duplicate (README,
"Sending mail").
"""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User
from tests.support.smtp_server import SmtpServer
from tests.support.syncd_env import REPO, Account, run_cli, write_config

# Per message: before-data, after-data, sent, [appended,] removed.
PROVIDER_FILES_STEPS = 4
SYNCD_FILES_STEPS = 5


@pytest.fixture
def smtp(dovecot: Dovecot) -> Iterator[SmtpServer]:
    dovecot.ensure_certs()
    with SmtpServer(dovecot.cert_file, dovecot.key_file) as server:
        yield server


def configure(tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer,
              save_sent: str) -> Account:
    extra = (f"    from: [me@example.org]\n"
             f"    smtp: {{host: 127.0.0.1, port: {smtp.port}, username: {smtp.user}, "
             f"password_command: \"printf {smtp.password}\"}}\n"
             f"    save_sent: {save_sent}\n    sent_folder: Sent\n")
    return write_config(tmp_path, dovecot, user, extra=extra)


def queue(account: Account, count: int) -> None:
    for i in range(count):
        message = f"From: me@example.org\nTo: you@example.net\nSubject: m{i}\n\nbody {i}\n"
        done = subprocess.run([sys.executable, "-m", "syncd", "--config", str(account.config),
                               "send", "-oi", "-t"], input=message.encode(),
                              capture_output=True, cwd=REPO, timeout=60)
        assert done.returncode == 0, done.stderr


def killed_flush(account: Account, at: int) -> None:
    env = {**os.environ, "SYNCD_CRASH_AT": str(at)}
    done = subprocess.run([sys.executable, "-m", "syncd", "--config", str(account.config),
                           "outbox", "flush"], capture_output=True, cwd=REPO, timeout=120,
                          env=env)
    assert done.returncode == -signal.SIGKILL, (at, done.returncode, done.stderr[-2000:])


def delivered(smtp: SmtpServer) -> Counter[str]:
    return Counter(email.message_from_bytes(m.data)["Subject"] for m in smtp.messages())


def outbox_ids(account: Account) -> list[str]:
    root = account.state_dir / "outbox" / account.name / "new"
    return sorted(os.listdir(root)) if root.exists() else []


@pytest.mark.parametrize("at", range(1, 2 * PROVIDER_FILES_STEPS + 1))
def test_kill_at_every_step_provider_files_sent(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer, at: int) -> None:
    dovecot.create_folder(user, "Sent")
    smtp.file_sent = lambda data: dovecot.append(user, "Sent", data, ["\\Seen"])
    account = configure(tmp_path, dovecot, user, smtp, save_sent="never")
    queue(account, 2)
    killed_flush(account, at)
    assert len(outbox_ids(account)) + sum(delivered(smtp).values()) >= 2  # nothing lost
    rc, out, err = run_cli("--config", str(account.config), "outbox", "flush")
    assert rc == 0, out + err
    assert delivered(smtp) == Counter({"m0": 1, "m1": 1}), (at, out)
    assert outbox_ids(account) == []
    assert dovecot.count(user, "Sent") == 2


@pytest.mark.parametrize("at", range(1, SYNCD_FILES_STEPS + 1))
def test_kill_at_every_step_syncd_files_sent(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer, at: int) -> None:
    account = configure(tmp_path, dovecot, user, smtp, save_sent="always")
    queue(account, 1)
    killed_flush(account, at)
    rc, out, err = run_cli("--config", str(account.config), "outbox", "flush")
    assert rc == 0, out + err
    # Step 2 is after the server's 250 and before "sent" is recorded: not in Sent yet (syncd
    # files it only afterwards), so it is sent again and reported.
    assert delivered(smtp) == Counter({"m0": 2 if at == 2 else 1}), (at, out)
    assert ("possibly sent twice" in out) == (at in (1, 2)), out
    assert outbox_ids(account) == []
    assert dovecot.count(user, "Sent") == 1  # the copy is filed once, whatever the step
