"""Re-pairing copies that differ in line ends or added header fields (issue 15, defect 5).

After lost state, a UIDVALIDITY change, or on a Maildir another tool kept, a server message and
a local file are the same message although their bytes differ: mbsync writes ``X-TUID:`` into
every file, mbox servers add ``X-UID``/``Status``, POP3 servers ``X-UIDL``, filters add their
own fields. Each must pair (no transfer, no duplicate, flags merged); two different messages
under one Message-ID must not. Against the real Dovecot.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from syncd.imap.client import ImapSession
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, local_files, synced_ok, write_config

# What tools and servers add; a test strips them to compare the two sides' mail.
ADDED = re.compile(rb"^(x-tuid|x-uid|x-imapbase|status|x-status|x-uidl|x-spam-score|"
                   rb"x-spam-flag):", re.IGNORECASE)


def with_fields(message: bytes, fields: bytes) -> bytes:
    """``message`` (CRLF) with header ``fields`` (CRLF lines) at the end of its header."""
    end = message.index(b"\r\n\r\n") + 2
    return message[:end] + fields + message[end:]


def mbsync_file(folder_dir: Path, n: int, message: bytes, flags: str) -> Path:
    """A file as mbsync leaves it: LF line ends, an X-TUID field, its own name."""
    data = with_fields(message, b"X-TUID: %s\r\n" % f"Tu{n:010d}".encode())
    (folder_dir / "cur").mkdir(parents=True, exist_ok=True)
    for sub in ("new", "tmp"):
        (folder_dir / sub).mkdir(exist_ok=True)
    path = folder_dir / "cur" / f"1700000000.{n}_{n}.laptop,U={n}:2,{flags}"
    path.write_bytes(data.replace(b"\r\n", b"\n"))
    return path


def plain_file(folder_dir: Path, n: int, message: bytes, flags: str) -> Path:
    for sub in ("cur", "new", "tmp"):
        (folder_dir / sub).mkdir(parents=True, exist_ok=True)
    path = folder_dir / "cur" / f"1700000000.{n}.laptop:2,{flags}"
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    return path


def content(data: bytes) -> bytes:
    """The message without the fields tools and servers add, with LF line ends."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    kept = [line for line in head.split(b"\n") if not ADDED.match(line)]
    return b"\n".join(kept) + sep + body


def letters(flags: frozenset[str]) -> str:
    names = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T",
             "\\draft": "D", "$forwarded": "P"}
    return "".join(sorted(names[f.lower()] for f in flags if f.lower() in names))


def server_mail(dovecot: Dovecot, user: User, folder: str) -> Counter[tuple[bytes, str]]:
    return Counter((content(m.body), letters(m.flags))
                   for m in dovecot.messages(user, folder).values())


def local_mail(account: Account, folder: str) -> Counter[tuple[bytes, str]]:
    return Counter((content(path.read_bytes()), flags)
                   for flags, path in local_files(account.folder_dir(folder)))


def assert_same_mail(dovecot: Dovecot, user: User, account: Account, folder: str,
                     count: int) -> None:
    """The same messages on both sides (added fields aside), once each, with equal flags."""
    server = server_mail(dovecot, user, folder)
    local = local_mail(account, folder)
    assert sum(server.values()) == sum(local.values()) == count, (server, local)
    assert all(n == 1 for n in server.values()), "duplicates on the server"
    assert all(n == 1 for n in local.values()), "duplicates locally"
    assert server == local


@pytest.fixture
def text_fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The UIDs of each BODY[TEXT] fetch (the digest path)."""
    calls: list[list[int]] = []
    original = ImapSession.fetch_texts

    def recording(self: ImapSession, wanted):  # type: ignore[no-untyped-def]
        wanted = list(wanted)
        calls.append([uid for uid, _size in wanted])
        return original(self, wanted)

    monkeypatch.setattr(ImapSession, "fetch_texts", recording)
    return calls


def test_mbsync_maildir_pairs_without_transfer(dovecot: Dovecot, user: User, tmp_path: Path,
                                               text_fetches: list[list[int]]) -> None:
    """(a) A Maildir mbsync kept (X-TUID in every file), the same mail on the server, no
    syncd state: nothing moves, nothing doubles, flags merge, the files stay as they are."""
    messages = [make_message(i) for i in range(12)]
    server_flags = ["S" if i % 2 else "" for i in range(12)]
    local_flags = ["F" if i % 3 == 0 else ("S" if i % 2 else "") for i in range(12)]
    dovecot.seed(user, "INBOX", list(zip(messages, server_flags, strict=True)))
    account = write_config(tmp_path, dovecot, user)
    inbox = account.folder_dir("INBOX")
    paths = [mbsync_file(inbox, i, m, f)
             for i, (m, f) in enumerate(zip(messages, local_flags, strict=True))]
    inodes = sorted(p.stat().st_ino for p in paths)

    out = synced_ok(account)

    assert "+0 down +0 up" in out, out
    assert_same_mail(dovecot, user, account, "INBOX", 12)
    assert sorted(p.stat().st_ino for _, p in local_files(inbox)) == inodes  # not rewritten
    flags = {content(p.read_bytes()): f for f, p in local_files(inbox)}
    for i, message in enumerate(messages):  # the union of both sides
        expected = "".join(sorted(set(server_flags[i]) | set(local_flags[i])))
        assert flags[content(message)] == expected
    assert text_fetches == []  # X-TUID is a trace field: sizes settle it, no body is fetched
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)


@pytest.mark.parametrize(("fields", "digested"), [
    (b"X-UID: 7\r\nStatus: RO\r\n", False),  # an mbox server's (mailutils): a trace field
    (b"X-Spam-Score: 0.0\r\nX-Spam-Flag: NO\r\n", True),  # a filter's: bodies decide
], ids=["trace", "other"])
def test_lost_state_pairs_server_copies_with_added_headers(
        dovecot: Dovecot, user: User, tmp_path: Path, text_fetches: list[list[int]],
        fields: bytes, digested: bool) -> None:
    """(b) The state is lost and the server's copies carry fields the local files lack; one
    message has no Message-ID and a POP3 server's X-UIDL: every one pairs, both ways."""
    messages = [make_message(i) for i in range(5)]
    no_id = make_message(5, message_id="")
    account = write_config(tmp_path, dovecot, user)
    inbox = account.folder_dir("INBOX")
    uids = [dovecot.append(user, "INBOX", with_fields(m, fields), ["\\Seen"] if i % 2 else [])
            for i, m in enumerate(messages)]
    dovecot.append(user, "INBOX", with_fields(no_id, b"X-UIDL: 0000abcd\r\n"))
    for i, message in enumerate([*messages, no_id]):
        plain_file(inbox, i, message, "F" if i == 0 else "")

    out = synced_ok(account)

    assert "+0 down +0 up" in out, out
    assert_same_mail(dovecot, user, account, "INBOX", 6)
    assert server_mail(dovecot, user, "INBOX")[(content(messages[0]), "F")] == 1
    # Bodies are fetched only where the sizes could not settle it, and only those.
    assert [sorted(c) for c in text_fetches] == ([sorted(uids)] if digested else [])
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)


@pytest.mark.parametrize("fields", [b"X-UID: 12\r\nStatus: O\r\nX-Status: A\r\n",
                                    b"X-Spam-Score: 1.5\r\n"], ids=["trace", "other"])
def test_uidvalidity_change_to_a_server_that_adds_headers(
        dovecot: Dovecot, user: User, tmp_path: Path, fields: bytes) -> None:
    """(c) The folder moves to a server that stores every message with added fields (a new
    UIDVALIDITY): the re-pairing transfers nothing and keeps the local files."""
    messages = [make_message(i) for i in range(8)]
    dovecot.seed(user, "INBOX", [(m, "S") for m in messages])
    account = write_config(tmp_path, dovecot, user)
    synced_ok(account)
    inbox = account.folder_dir("INBOX")
    inodes = sorted(p.stat().st_ino for _, p in local_files(inbox))
    old = dovecot.uidvalidity(user, "INBOX")
    # The migration: same mail, each copy with the new server's fields, new UIDs.
    dovecot.expunge(user, "INBOX", dovecot.uids(user, "INBOX"))
    for message in messages:
        dovecot.append(user, "INBOX", with_fields(message, fields), ["\\Seen"])
    dovecot.set_uidvalidity(user, "INBOX", old + 1000)

    out = synced_ok(account)

    assert "+0 down +0 up" in out, out
    assert sorted(p.stat().st_ino for _, p in local_files(inbox)) == inodes
    assert_same_mail(dovecot, user, account, "INBOX", 8)
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)


def test_different_messages_sharing_a_message_id_are_not_merged(
        dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """(d) Under one Message-ID: the server has one message; locally there is its copy (with
    X-TUID) and a different message (an edited draft). The copy pairs; the other is uploaded,
    and the server's is never taken for it."""
    shared = "<draft-1@syncd.test>"
    first = make_message(1, message_id=shared, body="First version of the draft.\n")
    edited = make_message(1, message_id=shared,
                          body="Second version of the draft, quite a bit longer now.\n")
    other = make_message(2, message_id="<draft-2@syncd.test>", body="Server side.\n")
    local_only = make_message(2, message_id="<draft-2@syncd.test>",
                              body="Local side, not the same text.\n")
    dovecot.seed(user, "Drafts", [(first, "D"), (other, "D")])
    account = write_config(tmp_path, dovecot, user)
    drafts = account.folder_dir("Drafts")
    mbsync_file(drafts, 1, first, "DS")
    mbsync_file(drafts, 2, edited, "D")
    plain_file(drafts, 3, local_only, "D")

    out = synced_ok(account)

    assert "+1 down +2 up" in out, out
    assert_same_mail(dovecot, user, account, "Drafts", 4)
    server = {content(m.body) for m in dovecot.messages(user, "Drafts").values()}
    assert {content(m) for m in (first, edited, other, local_only)} <= server
    assert "+0 down +0 up -0 ~0 flags" in synced_ok(account)
