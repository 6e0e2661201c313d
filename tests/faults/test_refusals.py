"""A server that refuses one message or one folder (issue 15, defect 2): Exchange refuses the
APPEND of a message with a line over ~9,900 bytes (`BAD Command Error. 10`), a server may
refuse STATUS and SELECT of a folder it lists. That message, or that folder, is the error:
named with the account, the folder and the message; everything else still syncs; the refused
message stays local and is tried again at the next sync.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.hostile import Conn, ImapServer, Msg, _unquote_mailbox
from tests.faults.test_hostile_imap import account_for, msgs
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import local_files, run_cli

EXCHANGE_LINE_LIMIT = 9_900


@pytest.fixture
def imap_server(dovecot: Dovecot) -> Iterator[Callable[..., ImapServer]]:
    made: list[ImapServer] = []

    def make(folders: dict[str, list[Msg]] | None = None, **kwargs: object) -> ImapServer:
        server = ImapServer(dovecot.cert_file, dovecot.key_file, folders, **kwargs)  # type: ignore[arg-type]
        made.append(server.__enter__())
        return server

    yield make
    for server in made:
        server.__exit__(None, None, None)
        assert not server.errors, server.errors


class ExchangeAppend:
    """APPEND that stores the message (with a UID and APPENDUID), except one with a line
    longer than Exchange takes, which gets Exchange's reply."""

    def __init__(self, server: ImapServer) -> None:
        self.server = server
        self.refused = 0
        self.limit: int | None = EXCHANGE_LINE_LIMIT

    def __call__(self, conn: Conn, tag: str, args: str) -> bool:
        name, rest = _unquote_mailbox(args)
        data = self.server._last_literal  # type: ignore[attr-defined]
        if self.limit is not None and max(len(line) for line in data.split(b"\r\n")) \
                > self.limit:
            self.refused += 1
            conn.line(f"{tag} BAD Command Error. 10")
            return True
        flags = re.match(r"\s*\(([^)]*)\)", rest)
        folder = self.server.folders[name]
        uid = max((m.uid for m in folder), default=0) + 1
        folder.append(Msg(uid, data, flags.group(1) if flags else ""))
        self.server.ok(conn, tag, f"[APPENDUID {self.server.uidvalidity} {uid}] appended")
        return True


def long_line_message() -> bytes:
    body = "x" * 12_000
    return make_message(50, folder="Sent", subject="A line too long for Exchange", body=body)


def write_local(folder: Path, name: str, message: bytes) -> None:
    (folder / "cur" / f"{name}:2,S").write_bytes(message.replace(b"\r\n", b"\n"))


def test_a_refused_append_names_the_message_and_the_others_go_up(
        tmp_path: Path, dovecot: Dovecot, imap_server: Callable[..., ImapServer]) -> None:
    server = imap_server({"INBOX": msgs("INBOX", 2), "Sent": []})
    append = ExchangeAppend(server)
    server.overrides["APPEND"] = append
    account = account_for(tmp_path, dovecot, server)
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    sent = account.maildir / "Sent"
    write_local(sent, "1700000001.M1P1.host", make_message(1, folder="Sent"))
    write_local(sent, "1700000002.M2P2.host", long_line_message())
    write_local(sent, "1700000003.M3P3.host", make_message(3, folder="Sent"))

    rc, out, err = run_cli("--config", str(account.config), "sync")
    text = out + err
    print(text)
    assert rc == 1, text
    assert "victim" in text and "Sent" in text, text
    assert "1700000002.M2P2.host" in text, text
    assert "A line too long for Exchange" in text, text
    assert "BAD Command Error. 10" in text, text
    assert append.refused == 1
    # The two others went up, once; the refused one is still here.
    assert sorted(m.uid for m in server.folders["Sent"]) == [1, 2]
    assert len(local_files(sent)) == 3
    assert len(local_files(account.maildir / "INBOX")) == 2

    # Tried again at the next sync (not skipped as "nothing changed"), nothing doubled.
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 1, out + err
    assert append.refused == 2
    assert len(server.folders["Sent"]) == 2
    assert "1700000002.M2P2.host" in out + err

    rc, status, err = run_cli("--config", str(account.config), "status", "--json")
    assert "1700000002.M2P2.host" in status, status

    # The server takes it once it can: up once, and then all is quiet.
    append.limit = None
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    assert "+1 up" in out, out
    assert len(server.folders["Sent"]) == 3
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0 and "+0 down +0 up" in out, out + err
    assert len(server.folders["Sent"]) == 3 and len(local_files(sent)) == 3


def test_a_folder_the_server_refuses_leaves_the_others_syncing(
        tmp_path: Path, dovecot: Dovecot, imap_server: Callable[..., ImapServer]) -> None:
    server = imap_server({"INBOX": msgs("INBOX", 2), "Broken": msgs("Broken", 1),
                          "Other": msgs("Other", 3)})

    def refuse_broken(conn: Conn, tag: str, args: str) -> bool:
        name, _ = _unquote_mailbox(args)
        if name != "Broken":
            return False  # the server's usual answer
        conn.line(f"{tag} NO [NOPERM] Permission denied")
        return True

    server.overrides["STATUS"] = refuse_broken
    server.overrides["SELECT"] = refuse_broken
    account = account_for(tmp_path, dovecot, server)
    rc, out, err = run_cli("--config", str(account.config), "sync")
    text = out + err
    assert rc == 1, text
    assert "Broken" in text and "Permission denied" in text, text
    assert len(local_files(account.maildir / "INBOX")) == 2
    assert len(local_files(account.maildir / "Other")) == 3

    server.overrides.clear()
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    assert len(local_files(account.maildir / "Broken")) == 1


def test_a_refused_store_is_that_folders_error(
        tmp_path: Path, dovecot: Dovecot, imap_server: Callable[..., ImapServer]) -> None:
    """A STORE the server refuses outright (not a keyword it cannot keep: that one stays
    local-only, tests/faults/test_unkept_flags.py). The folder reports it; the other folders
    still sync."""
    server = imap_server({"INBOX": msgs("INBOX", 1), "Other": msgs("Other", 1)})
    account = account_for(tmp_path, dovecot, server)
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    [(_, path)] = local_files(account.maildir / "INBOX")
    path.rename(path.parent.parent / "cur" / (path.name.split(":2,")[0] + ":2,S"))
    server.folders["Other"].append(Msg(2, make_message(2, folder="Other")))

    def refuse(conn: Conn, tag: str, args: str) -> bool:
        conn.line(f"{tag} NO [NOPERM] Permission denied")
        return True

    server.overrides["UID STORE"] = refuse
    rc, out, err = run_cli("--config", str(account.config), "sync")
    text = out + err
    assert rc == 1, text
    assert "INBOX" in text and "Permission denied" in text, text
    assert len(local_files(account.maildir / "Other")) == 2
