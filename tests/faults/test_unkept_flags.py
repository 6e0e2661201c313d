"""Flags the server cannot keep (issue 15 defect 4), against scripted
servers that fail the way real ones do (tests/faults/limited.py): mailutils refuses any keyword
with BAD, pymap drops them silently, mailutils with Maildir ignores APPEND's flags, and a
PERMANENTFLAGS without ``\\*`` allows no keyword at all.

Whatever the server does: the local file keeps its P (``$Forwarded``) flag, the folder syncs
without error, and the next sync is idempotent (nothing pushed again, nothing reverted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.faultlib import SECRETS, make_account
from tests.faults.hostile import Msg
from tests.faults.limited import LimitedImapServer
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, flags_by_subject, local_files, synced_ok


@pytest.fixture
def limited(dovecot: Dovecot) -> Iterator[Callable[..., LimitedImapServer]]:
    made: list[LimitedImapServer] = []

    def make(**kwargs: object) -> LimitedImapServer:
        folders = {"INBOX": [Msg(uid, make_message(uid), "\\Seen") for uid in (1, 2)]}
        server = LimitedImapServer(dovecot.cert_file, dovecot.key_file, folders,
                                   **kwargs)  # type: ignore[arg-type]
        made.append(server.__enter__())
        return server

    yield make
    for server in made:
        server.__exit__(None, None, None)
        assert not server.errors, server.errors


def account_for(tmp_path: Path, dovecot: Dovecot, server: LimitedImapServer) -> Account:
    user = User(name="victim", password=SECRETS.new(), home=tmp_path / "nohome",
                maildir=tmp_path / "nohome")
    return make_account(tmp_path, dovecot, user, port=server.port, timeout="5s",
                        name="victim")


def local_flags(account: Account) -> dict[bytes, str]:
    """Subject line -> local flags."""
    return flags_by_subject(account.folder_dir("INBOX"))


def forward_locally(account: Account, uid: int) -> None:
    """mutt marks message ``uid`` forwarded (P), and saves a new forwarded message."""
    [path] = [p for _, p in local_files(account.folder_dir("INBOX"))
              if f"test message {uid} ".encode() in p.read_bytes()]
    base = path.name.split(":2,", 1)[0]
    os.rename(path, path.parent.parent / "cur" / f"{base}:2,PS")
    new = account.folder_dir("INBOX") / "cur" / "1700000000.M1P1.mutt:2,PS"
    new.write_bytes(make_message(77, subject="forwarded copy").replace(b"\r\n", b"\n"))


def server_flags(server: LimitedImapServer) -> dict[int, str]:
    return {m.uid: m.flags for m in server.folders["INBOX"]}


SCENARIOS = {
    # GNU mailutils imap4d: "BAD UID STORE Unrecognized flag" for any keyword, APPEND too.
    "refuses": {"refuse_keywords": True},
    # pymap: keywords accepted and dropped; mailutils with Maildir: APPEND flags ignored.
    "drops": {"drop_keywords": True, "append_ignores_flags": True},
    # PERMANENTFLAGS without \*: no new keyword may be stored (and this one would BAD them).
    "permanentflags": {"refuse_keywords": True,
                       "permanentflags": "\\Answered \\Flagged \\Deleted \\Seen \\Draft"},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_flag_the_server_cannot_keep_stays_local(limited: Callable[..., LimitedImapServer],
                                                dovecot: Dovecot, tmp_path: Path,
                                                scenario: str) -> None:
    server = limited(**SCENARIOS[scenario])
    account = account_for(tmp_path, dovecot, server)
    synced_ok(account)
    forward_locally(account, 1)

    out = synced_ok(account)
    assert "+1 up" in out, out
    flags = server_flags(server)
    assert len(flags) == 3
    # \Seen arrived (with the APPEND or, where APPEND drops flags, by a STORE after it).
    assert all(f.split() == ["\\Seen"] for f in flags.values()), flags
    wanted = {b"Subject: Test message 1 in INBOX": "PS",
              b"Subject: Test message 2 in INBOX": "S", b"Subject: forwarded copy": "PS"}
    assert local_flags(account) == wanted
    if scenario == "permanentflags":
        assert server.refused == [], "a keyword sent although PERMANENTFLAGS has no \\*"

    # Idempotent: the next syncs push nothing again and revert nothing.
    changes, refused = len(server.changes), len(server.refused)
    for _ in range(2):
        out = synced_ok(account)
        assert "+0 down +0 up -0 ~0 flags" in out, out
    assert server.changes[changes:] == [], server.changes[changes:]
    assert len(server.refused) == refused
    assert local_flags(account) == wanted

    # Flags the server does keep still sync both ways.
    server.folders["INBOX"][1].flags = "\\Seen \\Flagged"
    synced_ok(account)
    assert local_flags(account) == {
        **wanted, b"Subject: Test message 2 in INBOX": "FS"}
