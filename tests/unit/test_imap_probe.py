"""The no-change check's reading of LIST and STATUS replies (syncd/imap/probe.py):
the same names as imapclient gives the engine, and "cannot tell" (None) for anything else."""

from __future__ import annotations

import pytest
from imapclient.imap_utf7 import decode as imapclient_decode
from imapclient.imap_utf7 import encode as imapclient_encode

from syncd.core.model import FolderStatus, RemoteFolder
from syncd.imap.probe import _parse_list, _parse_statuses, decode_folder_name

NAMES = ["INBOX", "Sent Items", "Überweisungen", "Entwürfe/2024", "a&b", "&", "日本語",
         "Lists/python", "emoji 📬 box", "[Gmail]/All Mail", "~peter/mail/台北/日本語",
         "x&-y", "trailing&"]


@pytest.mark.parametrize("name", NAMES)
def test_folder_names_decode_as_imapclient_decodes_them(name: str) -> None:
    encoded = imapclient_encode(name)
    assert decode_folder_name(encoded) == imapclient_decode(encoded) == name


@pytest.mark.parametrize("raw", [b"&Jjo", b"&Jjo!-", b"\xc3\x9cber", b"tab\there", b"&AGE-x&="])
def test_invalid_modified_utf7_cannot_tell(raw: bytes) -> None:
    assert decode_folder_name(raw) is None


def test_list_lines() -> None:
    lines = [b'(\\HasNoChildren) "/" INBOX',
             b'(\\HasChildren \\Noselect) "/" "Lists"',
             b'(\\HasNoChildren) "/" "Lists/python"',
             b'(\\NonExistent) "." "Gone"',
             b'() NIL "&ANw-berweisungen"',
             b'(\\Sent) "/" "say \\"hi\\" \\\\ there"']
    assert _parse_list(lines) == [
        RemoteFolder("INBOX", "/", False, None),
        RemoteFolder("Lists", "/", True, None),
        RemoteFolder("Lists/python", "/", False, None),
        RemoteFolder("Gone", ".", True, None),
        RemoteFolder("Überweisungen", None, False, None),
        RemoteFolder('say "hi" \\ there', "/", False, None),
    ]


@pytest.mark.parametrize("line", [
    (b'(\\HasNoChildren) "/" {5}', b"INBOX"),  # a literal: the engine reads those
    b'(\\HasNoChildren "/" INBOX',  # unbalanced
    b'(\\HasNoChildren) "/"',  # no name
    b'\\HasNoChildren "/" INBOX',  # no flag list
    b'(\\HasNoChildren) "/" "unterminated',
    b'(\\HasNoChildren) "/" "&Jjo"',  # broken modified UTF-7
])
def test_list_lines_it_cannot_read(line: object) -> None:
    assert _parse_list([b'(\\HasNoChildren) "/" "Sent"', line]) is None


def test_status_lines() -> None:
    lines = [b'"INBOX" (MESSAGES 6 UIDNEXT 7 UIDVALIDITY 1700000000 HIGHESTMODSEQ 12)',
             b'Archive (UIDNEXT 1 MESSAGES 0 UIDVALIDITY 3)',
             b'"&ANw-berweisungen" (messages 2 uidnext 3 uidvalidity 4 highestmodseq 5)']
    assert _parse_statuses(lines) == {
        "INBOX": FolderStatus(1700000000, 7, 6, 12),
        "Archive": FolderStatus(3, 1, 0, None),
        "Überweisungen": FolderStatus(4, 3, 2, 5),
    }


@pytest.mark.parametrize("line", [
    (b"{5}", b"INBOX"),
    b'"INBOX" (MESSAGES six)',
    b'"INBOX" (MESSAGES)',
    b'"INBOX" MESSAGES 6',
    b'"INBOX" (MESSAGES -1)',
    b'"INBOX" (MESSAGES 6) extra',
])
def test_status_lines_it_cannot_read(line: object) -> None:
    assert _parse_statuses([line]) is None
