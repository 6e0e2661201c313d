"""syncd.core.message: the one Message-ID parser, trace fields, and content digests that
survive line ends and added headers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.core.message import (
    body_digest,
    body_start,
    content_digest,
    content_digest_stream,
    header_identity,
    parse_message_id,
    trace_bytes,
)
from syncd.store.maildir import lf_to_crlf


@pytest.mark.parametrize(("header", "expected"), [
    (b"Message-ID: <a@b>\n\nbody\n", "<a@b>"),
    (b"message-id:<a@b>\n\n", "<a@b>"),
    (b"MESSAGE-ID: <a@b>\r\n\r\n", "<a@b>"),
    (b"Message-ID : <obsolete-space@b>\r\n\r\n", "<obsolete-space@b>"),
    (b"Subject: x\nMessage-Id:\n <folded@example.com>\nTo: y\n\n", "<folded@example.com>"),
    (b"Message-ID:\r\n\t<crlf-folded@example.com>\r\nTo: y\r\n\r\n", "<crlf-folded@example.com>"),
    (b"Message-ID: <split@\r\n example.com>\r\n\r\n", "<split@example.com>"),
    (b"Message-ID: <first@x> (comment)\nMessage-ID: <second@x>\n\n", "<first@x>"),
    (b"Message-ID:   <padded@x>   \r\n\r\n", "<padded@x>"),
    (b"Subject: none\n\nMessage-ID: <in-body@x>\n", None),
    (b"Subject: mixed\r\n\nMessage-ID: <after-mixed-blank@x>\n", None),
    (b"Subject: mixed\n\r\nMessage-ID: <after-mixed-blank@x>\n", None),
    (b"\nMessage-ID: <no-header@x>\n", None),
    (b"\r\nMessage-ID: <no-header@x>\r\n", None),
    (b"Message-ID: bare-id-without-brackets\n\n", "bare-id-without-brackets"),
    (b"Message-ID:   \n\n", None),
    (b"Resent-Message-ID: <resent@x>\n\n", None),
    (b"X-Message-ID-Note: <not-it@x>\n\n", None),
    (b"From someone@x Thu Jan  1 00:00:00 1970\nMessage-ID: <after-mbox-line@x>\n\n",
     "<after-mbox-line@x>"),
    (b"", None),
    (b"Message-ID: <only-header@x>", "<only-header@x>"),
    # IMAP's BODY[HEADER.FIELDS (MESSAGE-ID ...)] answer: the fields and an empty line.
    (b"Message-ID: <fields@x>\r\nX-UID: 7\r\n\r\n", "<fields@x>"),
])
def test_parse_message_id(header: bytes, expected: str | None) -> None:
    assert parse_message_id(header) == expected
    # The same message with other line ends has the same Message-ID.
    assert parse_message_id(lf_to_crlf(header)) == expected


def test_trace_bytes_are_counted_with_crlf() -> None:
    lf = b"Message-ID: <a@x>\nX-TUID: abc\nstatus: RO\nX-Keywords:\n $label1\n\nX-UID: 9\n"
    crlf = lf_to_crlf(lf)
    expected = len(b"X-TUID: abc\r\nstatus: RO\r\nX-Keywords:\r\n $label1\r\n")
    assert trace_bytes(lf) == trace_bytes(crlf) == expected  # not the X-UID in the body
    assert header_identity(crlf) == ("<a@x>", expected)
    assert trace_bytes(b"\r\n") == trace_bytes(b"") == 0


def test_body_start() -> None:
    assert body_start(b"A: b\n\nbody") == 6
    assert body_start(b"A: b\r\n\r\nbody") == 8
    assert body_start(b"A: b\r\n\nbody") == 7
    assert body_start(b"\nbody") == 1
    assert body_start(b"A: b\n") == 5  # all header: the body is empty, as IMAP BODY[TEXT]


MESSAGE = (b"Message-ID: <m@x>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nFrom: a@x\n"
           b"Subject: hello\n\nline one\n\nline three\n")


def test_body_digest_ignores_line_ends() -> None:
    body = MESSAGE[body_start(MESSAGE):]
    crlf = lf_to_crlf(MESSAGE)
    assert body_digest(body) == body_digest(crlf[body_start(crlf):])
    # An mbox store's trailing empty line is not content; a changed character is.
    assert body_digest(body) == body_digest(body + b"\n")
    assert body_digest(body) != body_digest(body.replace(b"three", b"thrice"))
    assert body_digest(body) != body_digest(body.replace(b"one\n\n", b"one\n"))


def test_content_digest_survives_added_headers_and_line_ends() -> None:
    mangled = lf_to_crlf(MESSAGE.replace(b"From: a@x\n", b"From: a@x\nX-UIDL: 17\nStatus: O\n"))
    assert content_digest(MESSAGE) == content_digest(mangled)
    refolded = MESSAGE.replace(b"Subject: hello", b"Subject:\n   hello")
    assert content_digest(MESSAGE) == content_digest(refolded)


@pytest.mark.parametrize("change", [
    (b"Date: Mon, 1 Jan 2024 10:00:00", b"Date: Mon, 1 Jan 2024 11:00:00"),  # same text, later
    (b"Subject: hello", b"Subject: hullo"),
    (b"line three", b"line 3"),
])
def test_content_digest_tells_different_messages_apart(change: tuple[bytes, bytes]) -> None:
    assert content_digest(MESSAGE) != content_digest(MESSAGE.replace(*change))


LINES = st.lists(st.sampled_from([b"text", b"", b" folded", b"From x", b"a: b", b"\r"]),
                 max_size=12)


@given(LINES, LINES)
def test_digests_are_the_same_for_lf_and_crlf_copies(head: list[bytes],
                                                       body: list[bytes]) -> None:
    message = b"Message-ID: <p@x>\n" + b"\n".join(head) + b"\n\n" + b"\n".join(body)
    crlf = lf_to_crlf(message)
    assert content_digest(message) == content_digest(crlf)
    assert header_identity(message) == header_identity(crlf)
    assert body_digest(message[body_start(message):]) == body_digest(crlf[body_start(crlf):])


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"From: x", b"Subject: y",
                                 b"\n\n", b" "]), max_size=16),
       st.lists(st.integers(min_value=0, max_value=60), max_size=5))
def test_content_digest_stream_matches_whole(parts: list[bytes], cuts: list[int]) -> None:
    whole = b"".join(parts)
    edges = [0, *sorted(min(c, len(whole)) for c in cuts), len(whole)]
    chunks = [whole[a:b] for a, b in itertools.pairwise(edges)]
    assert content_digest_stream(chunks) == content_digest(whole)
