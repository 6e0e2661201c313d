"""How many commands a sync sends: a no-change sync is LOGIN, one LIST that returns every
folder's STATUS (with NAMESPACE pipelined ahead of it), and a LOGOUT it does not wait for;
ENABLE only comes before a SELECT. At 20 ms RTT each round trip saved is ~10% of a no-change
sync (issue 6)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from syncd.config.load import load_config
from syncd.imap import wire
from syncd.imap.client import ImapSession
from tests.support.dovecot import PLAIN_IMAP_CAPABILITY, Dovecot, User, make_message
from tests.support.syncd_env import run_subprocess, write_config

_SENT = re.compile(r"> b'[A-Z]+\d+ ([A-Z]+)(?: ([^\r']*))?")


def commands(config: Path) -> list[str]:
    """The IMAP commands of one `syncd --debug sync`, in order (first word and arguments)."""
    out = run_subprocess("--debug", "--config", str(config), "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    return [f"{m.group(1)} {m.group(2) or ''}".strip()
            for m in map(_SENT.search, out.stderr.splitlines()) if m]


def test_no_change_sync_is_login_and_one_list(dovecot: Dovecot, user: User,
                                              tmp_path: Path) -> None:
    dovecot.create_folder(user, "Archive")
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(5)])
    dovecot.seed(user, "Archive", [make_message(i) for i in range(5, 8)])
    account = write_config(tmp_path, dovecot, user)
    first = commands(account.config)
    assert "ENABLE QRESYNC CONDSTORE" in first
    assert first.index("ENABLE QRESYNC CONDSTORE") < next(
        i for i, c in enumerate(first) if c.startswith("SELECT"))
    mark = dovecot.log_mark()
    again = commands(account.config)
    # NAMESPACE (the personal prefix, for folder patterns and places) is written ahead of the
    # LIST without waiting for its reply: both are one round trip.
    assert [c.split(" ", 1)[0] for c in again] == ["LOGIN", "NAMESPACE", "LIST", "LOGOUT"], \
        again
    assert "RETURN" in again[2] and "STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)" \
        in again[2]
    # The LOGOUT is not waited for; the server still sees a clean logout.
    deadline = time.monotonic() + 5
    while "Logged out" not in dovecot.log_text(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Logged out" in dovecot.log_text(mark), dovecot.log_text(mark)
    # A server change is still seen through that one LIST.
    dovecot.seed(user, "Archive", [make_message(9)])
    changed = commands(account.config)
    assert 'SELECT "Archive"' in changed and 'SELECT "INBOX"' not in changed, changed


def test_listed_statuses_are_used_only_right_after_the_list(dovecot: Dovecot, user: User,
                                                            tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    settings = load_config(write_config(tmp_path, dovecot, user).config)
    account = next(iter(settings.accounts.values()))
    session = ImapSession.connect(account, lambda: user.password)
    try:
        assert [f.name for f in session.list_folders()] == ["INBOX"]
        tag = wire.tag_count(wire.imaplib_of(session.client))
        assert session.status_all(["INBOX"])["INBOX"].messages == 3
        assert wire.tag_count(wire.imaplib_of(session.client)) == tag, "status_all() sent a command"
        # Anything in between (here a new message and a NOOP) makes status_all() ask again.
        dovecot.seed(user, "INBOX", [make_message(3)])
        session.list_folders()
        session.noop()
        assert session.status_all(["INBOX"])["INBOX"].messages == 4
        # ...as does a second status_all() after one LIST.
        session.list_folders()
        session.status_all(["INBOX"])
        dovecot.seed(user, "INBOX", [make_message(4)])
        assert session.status_all(["INBOX"])["INBOX"].messages == 5
    finally:
        session.close()


def test_without_condstore(dovecot_plain_imap: Dovecot, tmp_path: Path) -> None:
    """A server without ENABLE and CONDSTORE: no ENABLE, no HIGHESTMODSEQ asked for, and
    every folder looked at (only HIGHESTMODSEQ could tell that no flag changed)."""
    dc = dovecot_plain_imap
    assert "CONDSTORE" not in PLAIN_IMAP_CAPABILITY and "ENABLE" not in PLAIN_IMAP_CAPABILITY
    user = dc.add_user()
    dc.seed(user, "INBOX", [make_message(i) for i in range(4)])
    account = write_config(tmp_path, dc, user)
    commands(account.config)
    again = commands(account.config)
    assert "ENABLE" not in " ".join(again) and "HIGHESTMODSEQ" not in " ".join(again)
    assert 'LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY))' in again, again
    assert 'SELECT "INBOX"' in again, again


def test_no_change_sync_imports_neither_validation_nor_planner(dovecot: Dovecot, user: User,
                                                               tmp_path: Path) -> None:
    """Start-up is most of a no-change sync: it must not pay for pydantic, PyYAML (the config
    cache), the engine, imapclient and dataclasses (the no-change check answers), the planner
    (nothing to plan), importlib.metadata (imapclient's version lookup), ctypes
    (renameat2/syncfs: nothing is delivered), shutil (argparse's terminal width) or a thread
    pool (one account)."""
    import subprocess
    import sys

    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    commands(account.config)  # the first sync validates the config and fills the cache
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "syncd", "--config",
                          str(account.config), "sync"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "syncd.imap.nochange" in imported  # the measurement sees our imports at all
    # Nothing to do: the no-change check answers without the engine and imapclient.
    unwanted = {"pydantic", "yaml", "syncd.config.load", "syncd.core.plan", "syncd.core.actions",
                "syncd.config.presets", "rich", "importlib.metadata", "ctypes", "shutil",
                "syncd.imap.account", "imapclient", "dataclasses", "concurrent.futures"}
    assert not imported & unwanted, sorted(imported & unwanted)
