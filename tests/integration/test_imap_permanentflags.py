"""Flags the server cannot keep, against a real Dovecot whose ACL withholds the "w" right: its
SELECT says PERMANENTFLAGS (\\Deleted \\Seen) (no ``\\*``: no keyword), and it accepts
\\Flagged, \\Answered and $Forwarded in STORE and APPEND and silently keeps none of them.
Those letters stay on the local side only: never reverted, never pushed again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, make_message, running
from tests.support.syncd_env import Account, flags_by_subject, local_files, synced_ok, write_config


@pytest.fixture(scope="module")
def acl_dovecot(dovecot_workroot: Path) -> Iterator[Dovecot]:
    root = dovecot_workroot / "dovecot-acl"
    root.mkdir(mode=0o755)
    acl = root / "global-acl"
    acl.write_text("* owner lrsteikxa\n")  # every right but "w" (flags other than \Seen/\Deleted)
    acl.chmod(0o644)
    extra = (f"mail_plugins = $mail_plugins acl\nprotocol imap {{\n"
             f"  mail_plugins = $mail_plugins imap_acl\n}}\nplugin {{\n  acl = vfile:{acl}\n}}\n")
    with running(Dovecot(root / "dc", extra_conf=extra)) as dc:
        yield dc


def local_flags(account: Account) -> dict[bytes, str]:
    """Subject line -> local flags."""
    return flags_by_subject(account.folder_dir("INBOX"))


def test_permanentflags_without_keywords(acl_dovecot: Dovecot, tmp_path: Path) -> None:
    dc = acl_dovecot
    user = dc.add_user()
    dc.seed(user, "INBOX", [(make_message(n), "S") for n in (1, 2)])
    account = write_config(tmp_path, dc, user)
    synced_ok(account)

    inbox = account.folder_dir("INBOX")
    [path] = [p for _, p in local_files(inbox) if b"Test message 1 " in p.read_bytes()]
    os.rename(path, inbox / "cur" / (path.name.split(":2,")[0] + ":2,FPS"))
    (inbox / "cur" / "1700000000.M1P1.mutt:2,PRS").write_bytes(
        make_message(77, subject="forwarded copy").replace(b"\r\n", b"\n"))

    out = synced_ok(account)
    assert "+1 up" in out, out
    server = {m.body.split(b"Subject: ")[1].split(b"\r\n")[0]:
              {f for f in m.flags if f != "\\Recent"}
              for m in dc.messages(user, "INBOX").values()}
    assert server == {b"Test message 1 in INBOX": {"\\Seen"},
                      b"Test message 2 in INBOX": {"\\Seen"},
                      b"forwarded copy": {"\\Seen"}}, server
    wanted = {b"Subject: Test message 1 in INBOX": "FPS",
              b"Subject: Test message 2 in INBOX": "S", b"Subject: forwarded copy": "PRS"}
    assert local_flags(account) == wanted
    for _ in range(2):
        out = synced_ok(account)
        assert "+0 down +0 up -0 ~0 flags" in out, out
        assert local_flags(account) == wanted

    # \Seen, which the folder keeps, still syncs both ways.
    [uid2] = [m.uid for m in dc.messages(user, "INBOX").values()
              if b"Test message 2 " in m.body]
    dc.remove_flags(user, "INBOX", uid2, ["\\Seen"])
    synced_ok(account)
    assert local_flags(account) == {**wanted, b"Subject: Test message 2 in INBOX": ""}
