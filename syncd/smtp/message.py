"""What `syncd send` reads from a message and changes in it.

The message is kept as the user's mail client wrote it: syncd only removes ``Bcc:`` (it must
never be transmitted) and adds ``Message-ID:`` and ``Date:`` when they are absent (the
exactly-once check looks for the Message-ID in the Sent folder). Header values are read with
the standard library's address parser; the bytes of every other header stay as they were.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = ["BadMessage", "Prepared", "prepare"]

_BLANK = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


class BadMessage(Exception):
    """The input is not a message syncd can send (EX_DATAERR)."""


@dataclass(frozen=True)
class Prepared:
    data: bytes  # what is queued and transmitted
    from_address: str | None  # the first address of From:
    header_recipients: list[str]  # To, Cc, Bcc (for -t)
    subject: str
    message_id: str


def prepare(raw: bytes, *, domain: str = "syncd.invalid") -> Prepared:
    """Split off the header, read it, drop Bcc, add Message-ID and Date if missing."""
    head, sep, body = _split(raw)
    lines = _header_lines(head)
    if not lines:
        raise BadMessage("the message has no header (it must start with lines like "
                         "'From: ...' and 'To: ...')")
    parsed = BytesHeaderParser(policy=compat32).parsebytes(b"".join(lines) + b"\n")
    newline = b"\r\n" if lines[0].endswith(b"\r\n") else b"\n"
    kept = [line for line in lines if _name(line) != b"bcc"]
    message_id = (parsed.get("Message-ID") or "").strip()
    added = []
    if not message_id:
        message_id = email.utils.make_msgid(domain=_msgid_domain(parsed, domain))
        added.append(b"Message-ID: " + message_id.encode() + newline)
    if not parsed.get("Date"):
        added.append(b"Date: " + email.utils.formatdate(localtime=True).encode() + newline)
    data = b"".join(kept + added) + sep + body
    return Prepared(data=data, from_address=_first_address(parsed.get_all("From", [])),
                    header_recipients=_addresses(parsed, ("To", "Cc", "Bcc")),
                    subject=_decoded(parsed.get("Subject", "")), message_id=message_id)


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block with its last line end, the blank line, the body)."""
    if raw.startswith((b"\n", b"\r\n")):
        raise BadMessage("the message has no header (it starts with an empty line)")
    match = _BLANK.search(raw)
    if match is None:  # a header only, no body
        head = raw if raw.endswith(b"\n") else raw + b"\n"
        return head, b"", b""
    end = match.start() + (2 if raw[match.start():match.start() + 2] == b"\r\n" else 1)
    return raw[:end], raw[end:match.end()], raw[match.end():]


def _header_lines(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in its line end."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD.match(line):
            fields.append(line)
        elif line.startswith(b"From ") and not fields:
            continue  # an mbox "From " line: not part of the message
        else:
            raise BadMessage(f"not a mail header line: {line[:60]!r}")
    return fields


def _name(line: bytes) -> bytes:
    match = _FIELD.match(line)
    return match.group(1).lower() if match else b""


def _addresses(parsed: object, names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        values += [str(v) for v in parsed.get_all(name, [])]  # type: ignore[attr-defined]
    found = [addr for _name, addr in email.utils.getaddresses(values) if "@" in addr]
    return list(dict.fromkeys(found))


def _first_address(values: list[object]) -> str | None:
    pairs = email.utils.getaddresses([str(v) for v in values])
    return next((addr for _name, addr in pairs if "@" in addr), None)


def _msgid_domain(parsed: object, default: str) -> str:
    # The sender's domain, as mail clients do: it says nothing about this machine.
    sender = _first_address(parsed.get_all("From", []))  # type: ignore[attr-defined]
    return sender.rpartition("@")[2] if sender else default


def _decoded(value: object) -> str:
    try:
        return str(make_header(decode_header(str(value)))).strip()
    except (ValueError, LookupError):
        return str(value).strip()
