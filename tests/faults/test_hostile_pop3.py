"""Hostile POP3 servers (scripted, over verified TLS): garbage and over-long replies, a server
that never answers, a message that never ends. syncd reports an error naming the account,
deletes nothing it has not stored, leaves nothing half-written, and its memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.faultlib import SECRETS, fault, make_account, run_syncd, stray_files, tree
from tests.faults.hostile import Conn, Pop3Server
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import local_files

RSS_LIMIT_KIB = 120 * 1024


def _reply(text: bytes) -> Callable[[Conn, str, str], bool]:
    def handler(conn: Conn, tag: str, args: str) -> bool:
        conn.send(text)
        return True
    return handler


def _endless_body(conn: Conn, tag: str, args: str) -> bool:
    conn.send(b"+OK\r\n")
    conn.stream(200 * 1024 * 1024, byte=b"y")
    conn.close()
    return True


def _hang(conn: Conn, tag: str, args: str) -> bool:
    conn.hang()
    return True


CASES = {
    "garbage status line": ("STAT", _reply(b"\x00\xffgarbage\r\n")),
    "over-long status line": ("UIDL", _reply(b"+OK " + b"z" * 3_000_000 + b"\r\n")),
    "garbage UIDL listing": ("UIDL", _reply(b"+OK\r\n1\r\nzz top\r\n\x01\r\n.\r\n")),
    "LIST with absurd sizes": ("LIST", _reply(b"+OK\r\n1 99999999999999999999\r\n.\r\n")),
    "a message that never ends": ("RETR", _endless_body),
    "silent after the greeting": ("CAPA", _hang),
    "silent at RETR": ("RETR", _hang),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_pop3(case: str, dovecot: Dovecot, tmp_path: Path) -> None:
    key, handler = CASES[case]
    messages = [make_message(i, subject=f"pop {i}") for i in range(3)]
    with Pop3Server(dovecot.cert_file, dovecot.key_file, messages) as server:
        server.overrides[key] = handler
        user = User("victim", SECRETS.new(), tmp_path / "h", tmp_path / "h")
        account = make_account(tmp_path, dovecot, user, port=server.port, protocol="pop3",
                               timeout="2s", name="victim")
        before = tree(tmp_path, skip=[tmp_path / "Mail", account.state_dir])
        fault("hostile POP3")
        rc, out, err, peak = run_syncd(account.config, "sync", timeout=60)
        text = out + err
        print(f"{case}: exit {rc}, peak RSS {peak // 1024} MB: {text.strip()[:300]}")
        assert "Traceback" not in text and "internal error" not in text, text
        assert peak < RSS_LIMIT_KIB, f"peak RSS {peak // 1024} MB"
        assert tree(tmp_path, skip=[tmp_path / "Mail", account.state_dir]) == before
        if account.maildir.exists():
            assert not stray_files(account.maildir)
        stored = {p.read_bytes() for _, p in local_files(account.maildir / "INBOX")} \
            if (account.maildir / "INBOX").exists() else set()
        # Deleted on the server only what is stored locally.
        for body in server.quit_deleted:
            assert body.replace(b"\r\n", b"\n") in stored
        if rc == 0:
            assert stored == {m.replace(b"\r\n", b"\n") for m in messages}
        else:
            assert rc == 1 and "victim:" in text, text
