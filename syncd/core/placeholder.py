"""Placeholders for messages bigger than ``max_size`` (README, "Partial mirrors"): what one
looks like and how one is recognised. Pure functions over bytes.

A placeholder is a valid RFC 5322 message: the original's header fields (its MIME fields
renamed, since the body is now plain text), ``X-Syncd-Placeholder: <size in bytes>``,
``X-Syncd-Original: <uidvalidity> <uid> <folder>`` (where the full message is on the server,
the folder percent-encoded), and a short text body saying how to get the full message. The
two fields travel with the file when a mail reader copies or moves it, so a placeholder is
recognised (and never uploaded as a message) even where the state does not know it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from syncd.core.message import header_fields

__all__ = ["ORIGIN_FIELD", "PLACEHOLDER_FIELD", "Original", "build_placeholder",
           "placeholder_of"]

PLACEHOLDER_FIELD = "X-Syncd-Placeholder"
ORIGIN_FIELD = "X-Syncd-Original"
# The original's MIME fields would describe a body the placeholder does not have (a multipart
# boundary that never comes): kept under this prefix, for the curious.
_RENAMED = frozenset({"content-type", "content-transfer-encoding", "content-disposition",
                      "mime-version"})
_RENAMED_PREFIX = b"X-Syncd-Original-"
_OURS = frozenset({PLACEHOLDER_FIELD.lower(), ORIGIN_FIELD.lower()})

_BODY = """\
This message is a placeholder: the original is {size:,} bytes, more than max_size,
and stays on the server (folder {folder}).

To replace this placeholder with the full message, run

    syncd fetch FILE

with FILE the path of this message's file in the Maildir. With `fetch_flagged: true`
in the config, flagging it (F, "important") is enough: the next sync fetches it.
"""


class Original(NamedTuple):
    """What a placeholder says about itself: the full message's size, and where it was on the
    server when the placeholder was made (None when the field is absent or garbled)."""

    size: int
    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None


_SAFE = re.compile(rb"[A-Za-z0-9/.\-_+&,]")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")


def _quote(folder: str) -> str:
    """Percent-encoding of everything but a few plain characters (UTF-8 bytes)."""
    return "".join(chr(byte) if _SAFE.fullmatch(bytes([byte])) else f"%{byte:02X}"
                   for byte in folder.encode("utf-8"))


def _unquote(text: str) -> str:
    raw = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def _origin_value(folder: str, uidvalidity: int, uid: int) -> str:
    return f"{uidvalidity} {uid} {_quote(folder)}"


def build_placeholder(header: bytes, size: int, *, folder: str, uidvalidity: int,
                      uid: int) -> bytes:
    """The placeholder for a message of ``size`` bytes whose header block is ``header`` (as
    BODY.PEEK[HEADER] returns it, any line ends). LF line ends, as a Maildir file has."""
    lines: list[bytes] = []
    for line in _field_lines(header):
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        if name in _OURS:
            continue
        if name in _RENAMED:
            line = _RENAMED_PREFIX + line.lstrip()
        lines.append(line)
    lines.append(f"{PLACEHOLDER_FIELD}: {size}".encode())
    lines.append(f"{ORIGIN_FIELD}: {_origin_value(folder, uidvalidity, uid)}".encode())
    lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii",
              b"Content-Transfer-Encoding: 7bit"]
    body = _BODY.format(size=size, folder=folder.encode("ascii", "replace").decode())
    return b"\n".join(lines) + b"\n\n" + body.encode("ascii", "replace")


def _field_lines(header: bytes) -> list[bytes]:
    """The header block's fields, each with its continuation lines joined by LF; the blank
    line and whatever follows it dropped."""
    fields: list[bytes] = []
    for line in header.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        elif b":" in line:
            fields.append(line)
        # else: garbage that is no field (an mbox "From " line): not carried over
    return fields


def placeholder_of(header: bytes) -> Original | None:
    """The placeholder fields of a header block, or None when it is no placeholder."""
    size: int | None = None
    origin: str | None = None
    for name, value, _length in header_fields(header):
        if name == PLACEHOLDER_FIELD.lower() and size is None:
            text = value.strip()
            size = int(text) if text.isdigit() else None
        elif name == ORIGIN_FIELD.lower() and origin is None:
            origin = value.decode("ascii", "replace").strip()
    if size is None:
        return None
    parts = (origin or "").split(" ", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return Original(size, _unquote(parts[2]), int(parts[0]), int(parts[1]))
    return Original(size)
