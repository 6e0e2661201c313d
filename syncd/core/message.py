"""What identifies a message's content, for pairing a server message with a local file that
the state does not know (lost state, a UIDVALIDITY change, a Maildir another tool kept).

Pure functions over bytes; the Maildir and IMAP adapters both parse with these, so the two
sides of a comparison can never disagree on what a Message-ID or a body is.

Copies of one message differ in ways that are not the message:
- line ends: a Maildir file has LF, the server sends CRLF, and some servers (pymap) store LF
  and size the message that way;
- headers a tool or a server adds: mbsync's ``X-TUID`` in the files it writes, mbox servers'
  ``X-IMAPbase``/``X-UID``/``Status`` (mailutils), POP3 servers' ``X-UIDL``, mutt's
  ``X-Status``/``X-Keywords``, ``Content-Length``/``Lines`` of mbox writers.
So the cheap identity (Message-ID + size) counts the size without those headers
(``trace_bytes``), and the confirming identity is a digest of the body (after the header
block) with line ends normalised (``body_digest``).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = [
    "IGNORED_FIELDS",
    "HeaderIdentity",
    "body_digest",
    "body_start",
    "content_digest",
    "content_digest_stream",
    "header_fields",
    "header_identity",
    "parse_message_id",
    "trace_bytes",
]

# Header fields that tools and servers add to or rewrite in a stored copy. Lower case.
IGNORED_FIELDS = frozenset({
    "x-tuid",  # mbsync, in every file it syncs
    "x-uid", "x-imapbase", "status", "x-status", "x-keywords",  # mbox stores (mailutils, mutt)
    "x-uidl",  # POP3 servers and fetchers
    "content-length", "lines",  # mbox writers
})

# The fields that, with the body, tell two messages without a Message-ID apart (two cron mails
# with the same text are still two messages). Servers store these verbatim.
_STABLE_FIELDS = ("date", "from", "to", "cc", "subject")

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_ANGLE_ADDR = re.compile(r"<[^<>]*>")
_WSP = re.compile(rb"[ \t\r\n]+")


class HeaderIdentity(NamedTuple):
    """What a header block says about pairing: its Message-ID and how many bytes (counted with
    CRLF line ends, as RFC822.SIZE is) its ignored fields take."""

    message_id: str | None
    trace_bytes: int


def body_start(message: bytes) -> int:
    """Offset where the body begins: just past the first empty line (LF, CRLF or a mix).
    A message without an empty line is all header (its body is empty, as IMAP BODY[TEXT])."""
    if message.startswith(b"\n"):
        return 1
    if message.startswith(b"\r\n"):
        return 2
    match = _BLANK_LINE.search(message)
    return match.end() if match else len(message)


def header_fields(header: bytes) -> Iterator[tuple[str, bytes, int]]:
    """(lower-case name, unfolded raw value, length with CRLF line ends) of each field, in order,
    up to the first empty line; continuation lines (leading space or tab) belong to the field
    above. Lines that are neither a field nor a continuation (garbage, an mbox "From " line)
    are skipped."""
    name: str | None = None
    value: list[bytes] = []
    length = 0
    for line in header.split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            break  # end of the header block; what follows is body
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
                length += len(line) + 2
            continue
        if name is not None:
            yield name, b" ".join(value), length
            name = None
        field, colon, rest = line.partition(b":")
        if colon and field.strip() and b" " not in field.strip():
            name = field.strip().decode("ascii", "replace").lower()
            value = [rest]
            length = len(line) + 2
    if name is not None:
        yield name, b" ".join(value), length


def _message_id_value(raw: bytes) -> str | None:
    text = raw.decode("utf-8", "replace").strip()
    # "<id@host> (comment)" and a folded "<id@\n host>" both mean <id@host>.
    match = _ANGLE_ADDR.search(text)
    if match:
        return "".join(match.group(0).split())
    return text or None


def header_identity(header: bytes) -> HeaderIdentity:
    """The first Message-ID and the ignored fields' bytes of a header block (a whole message,
    its header, or an IMAP HEADER.FIELDS subset: all parse the same way)."""
    message_id: str | None = None
    seen_id = False
    trace = 0
    for name, value, length in header_fields(header):
        if name == "message-id" and not seen_id:
            seen_id = True
            message_id = _message_id_value(value)
        elif name in IGNORED_FIELDS:
            trace += length
    return HeaderIdentity(message_id, trace)


def parse_message_id(header: bytes) -> str | None:
    """The first Message-ID field of a header block: name in any case, folded lines joined,
    the ``<...>`` part if there is one (whitespace inside removed), else the bare value; None
    if there is none. Never a Message-ID from the body (parsing stops at the empty line)."""
    return header_identity(header).message_id


def trace_bytes(header: bytes) -> int:
    """Bytes (CRLF line ends) of the ignored fields in a header block."""
    return header_identity(header).trace_bytes


def _normalised_body(body: bytes) -> bytes:
    # CRLF and LF are the same line end; a final line end (or an empty line an mbox store
    # adds after the message) is not content.
    return body.replace(b"\r\n", b"\n").rstrip(b"\n")


def body_digest(body: bytes) -> str:
    """Digest of a message body (what follows the header block; IMAP BODY[TEXT]) that is the
    same whatever line ends the copy uses."""
    return hashlib.blake2b(_normalised_body(body), digest_size=16).hexdigest()


def content_digest(message: bytes) -> str:
    """Digest of a whole message that survives line ends and added headers: the body (as
    ``body_digest``) and the Date/From/To/Cc/Subject fields, whitespace collapsed. For
    messages without a Message-ID, where the body alone would pair two different messages
    that say the same thing."""
    start = body_start(message)
    digest = _header_digest(message[:start])
    digest.update(_normalised_body(message[start:]))
    return digest.hexdigest()


def _header_digest(header: bytes) -> Any:
    """content_digest's hash, fed the stable fields of the header block."""
    stable: dict[str, list[bytes]] = {}
    for name, value, _length in header_fields(header):
        if name in _STABLE_FIELDS:
            stable.setdefault(name, []).append(_WSP.sub(b" ", value).strip())
    digest = hashlib.blake2b(digest_size=16)
    for name in _STABLE_FIELDS:
        for value in stable.get(name, ()):
            digest.update(name.encode() + b":" + value + b"\n")
    digest.update(b"\n")
    return digest


def _body_start_from(head: bytes | bytearray, start: int) -> int | None:
    """body_start of a message whose first bytes are ``head``, searching from ``start``;
    None while more bytes could change the answer."""
    if head.startswith(b"\n"):
        return 1
    if head.startswith(b"\r\n"):
        return 2
    if head == b"\r":
        return None
    match = _BLANK_LINE.search(head, start)
    return match.end() if match else None


def content_digest_stream(chunks: Iterable[bytes]) -> str:
    """content_digest of the message the chunks make up, holding only its header block and
    one chunk (a 200 MB attachment is never in memory whole)."""
    it = iter(chunks)
    head = bytearray()
    start: int | None = None
    for chunk in it:
        searched = max(0, len(head) - 3)  # the empty line may straddle two chunks
        head += chunk
        start = _body_start_from(head, searched)
        if start is not None:
            break
    if start is None:  # all header: nothing to stream
        return content_digest(bytes(head))
    digest = _header_digest(bytes(head[:start]))
    pending_cr = False
    held = 0  # line ends not yet hashed: only content after them says they are not final
    for chunk in itertools.chain((bytes(head[start:]),), it):
        if pending_cr:
            chunk = b"\r" + chunk
        pending_cr = chunk.endswith(b"\r")
        text = chunk[:-1] if pending_cr else chunk
        text = text.replace(b"\r\n", b"\n")
        kept = text.rstrip(b"\n")
        if kept:
            digest.update(b"\n" * held)
            digest.update(kept)
            held = len(text) - len(kept)
        else:
            held += len(text)
    if pending_cr:
        digest.update(b"\n" * held + b"\r")
    return digest.hexdigest()
