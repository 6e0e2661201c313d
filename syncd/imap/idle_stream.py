"""IDLE (RFC 2177) on an imapclient connection, read correctly.

imapclient's ``idle_check`` puts the socket in non-blocking mode and reads lines with imaplib's
``_get_line``: a response line that arrives in two TCP segments (or two TLS records) is read
half, and imaplib then fails with "unterminated line" and the half is lost (imapclient issue
519): the connection has to be dropped. It also ignores literals (a ``* STATUS {5}`` or a
``FETCH`` with a literal desynchronises it), and ``idle()`` refuses an untagged response
before the ``+`` (which RFC 2177 allows).

Here the socket is only ever *polled* without blocking: a response is read once its first byte
is there, and then read whole (lines and literals) through imaplib's own buffered reader, in
blocking mode with the connection's read timeout, exactly like any other reply. The reads go
through ``ReplyGuard`` (syncd/imap/client.py), so its limits (line length, literal size, bytes per
command) hold during IDLE too. A response that stops in the middle for longer than the read
timeout is a dead connection (socket timeout), never a half line taken for a whole one.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from syncd.imap import wire

if TYPE_CHECKING:
    from imapclient import IMAPClient

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}$")
# A readable socket that yields nothing decrypted (a TLS record still incomplete, a TLS 1.3
# ticket): wait this long before polling again, so that such a case cannot spin.
_NOTHING_YET = 0.005

Response = tuple[Any, ...]


class IdleStream:
    """The IDLE command on one connection: ``start()``, then ``check(timeout)`` as often as
    wanted, then ``done()``. Responses are parsed as imapclient's ``idle_check`` returns them
    (``(b'OK', b'Still here')``, ``(3, b'EXISTS')``, ``(b'STATUS', b'Lists', (...))``).
    No other command may be sent in between."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        self.imap = wire.imaplib_of(client)
        self.tag: bytes | None = None
        #: The tagged reply to IDLE once it came: (status, text). Set when the server ends
        #: IDLE by itself (then done() sends no DONE) or after done().
        self.ended: tuple[str, bytes] | None = None

    # --- the three steps ----------------------------------------------------------------
    def start(self) -> list[Response]:
        """Send IDLE and wait for the server's ``+``; returns the untagged responses that came
        before it (changes, for the caller to act on)."""
        from imapclient.exceptions import CapabilityError

        if not self.client.has_capability("IDLE"):
            raise CapabilityError("Server does not support IDLE capability")
        self.ended = None
        self.tag = wire.start_command(self.imap, "IDLE")
        early: list[Response] = []
        while True:
            kind, response = self._read_response()
            if kind == "continuation":
                return early
            if kind == "tagged":
                self._raise_unless_ok()
                # An OK before any "+" is not IDLE mode: nothing to end with DONE.
                return early
            early.append(response)

    def check(self, timeout: float, *, wake: int | None = None) -> list[Response]:
        """Wait at most ``timeout`` seconds for responses; return every one that has begun
        arriving by then, each read whole. [] when none came. After the server ended IDLE
        by itself (``ended``), returns [] at once. ``wake``: a file descriptor whose becoming
        readable ends the wait early (the caller's stop signal; it drains it), so that an
        idle caller can wait for long without waking up to look at a stop flag."""
        if self.ended is not None or not self._wait(timeout, wake):
            return []
        # Whatever is here already, but not forever: a server that streams responses
        # without a pause must not keep the caller from its stop flag.
        until = time.monotonic() + max(timeout, 0.1)
        responses: list[Response] = []
        while True:
            kind, response = self._read_response()
            if kind == "untagged":
                responses.append(response)
            elif kind == "tagged":
                break  # the server ended IDLE (e.g. after its own time limit)
            if time.monotonic() > until or not self._buffered():
                break
        return responses

    def done(self) -> list[Response]:
        """Send DONE (unless the server ended IDLE already) and read up to the tagged reply;
        returns the responses that arrived meanwhile (events that must not be lost)."""
        late: list[Response] = []
        if self.ended is None:
            self.imap.send(b"DONE\r\n")
            wire.trace(self.imap, "> b'DONE'")
            while self.ended is None:
                kind, response = self._read_response()
                if kind == "untagged":
                    late.append(response)
        self._raise_unless_ok()
        return late

    # --- reading ------------------------------------------------------------------------
    def _sock(self) -> socket.socket:
        return self.imap.socket()

    def _buffered(self) -> bool:
        """True when the first byte of a response is here: in imaplib's buffer, or decrypted
        and waiting in the TLS layer, or on the socket (read without blocking)."""
        sock = self._sock()
        saved = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(wire.reader(self.imap).peek(1))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return False
        finally:
            sock.settimeout(saved)

    def _wait(self, timeout: float, wake: int | None = None) -> bool:
        """Wait until a response has begun arriving (True) or ``timeout`` passed or ``wake``
        became readable (False). Raises ConnectionError when the server closed the
        connection."""
        deadline = time.monotonic() + max(0.0, timeout)
        poller = select.poll()
        poller.register(self._sock(), select.POLLIN)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        while True:
            if self._buffered():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready = poller.poll(remaining * 1000)
            if not ready or any(fd == wake for fd, _ in ready):
                return False
            if self._buffered():
                return True
            if _peer_closed(self._sock()):
                raise ConnectionError("the server closed the connection")
            # Readable, yet nothing to read: part of a TLS record, or a record that carries
            # no data. Wait for the rest.
            time.sleep(min(_NOTHING_YET, max(0.0, deadline - time.monotonic())))

    def _line(self) -> bytes:
        """One line without its CRLF, read whole (blocking, with the read timeout)."""
        line = self.imap.readline()  # ReplyGuard's: bounded length, bytes counted
        if not line:
            raise self.imap.abort("socket error: EOF")
        if not line.endswith(b"\r\n"):
            raise self.imap.abort(f"socket error: unterminated line: {line[:80]!r}")
        wire.trace(self.imap, f"< {line!r}")
        return line[:-2]

    def _read_response(self) -> tuple[str, Response | None]:
        """One whole response: ("untagged", parsed), ("continuation", None) or
        ("tagged", None) for the reply to IDLE (recorded in ``ended``)."""
        line = self._line()
        if line.startswith(b"+"):
            return "continuation", None
        if not line.startswith(b"* "):
            tag, _, rest = line.partition(b" ")
            if tag != self.tag:
                raise self.imap.abort(f"unexpected tagged response: {line[:80]!r}")
            status, _, text = rest.partition(b" ")
            self.ended = (status.decode("ascii", "replace").upper(), text)
            wire.forget_tag(self.imap, tag)
            return "tagged", None
        parts: list[bytes | tuple[bytes, bytes]] = []
        while (match := _LITERAL_AT_END.search(line)) is not None:
            size = int(match.group(1))
            data = self.imap.read(size)  # ReplyGuard's: bounded size
            if len(data) != size:
                raise self.imap.abort("socket error: EOF in a literal")
            parts.append((line, data))
            line = self._line()
        parts.append(line)
        return "untagged", _parse(parts)

    def _raise_unless_ok(self) -> None:
        from imapclient.exceptions import IMAPClientError

        assert self.ended is not None
        status, text = self.ended
        if status != "OK":
            raise IMAPClientError(
                f"IDLE failed: {status} {text.decode('utf-8', 'replace')}".rstrip())


def _parse(parts: list[bytes | tuple[bytes, bytes]]) -> Response:
    """An untagged response (its "* " included in the first part) as imapclient parses one.
    What imapclient cannot parse is returned raw: (b"?", line) counts as a change."""
    from imapclient.exceptions import ProtocolError

    first = parts[0]
    head = (first[0] if isinstance(first, tuple) else first)[2:]
    parts = [(head, first[1]) if isinstance(first, tuple) else head, *parts[1:]]
    if len(parts) == 1 and head.startswith((b"OK ", b"NO ", b"BAD ", b"BYE ")):
        return tuple(head.split(b" ", 1))
    try:
        return tuple(wire.parse_response(parts))
    except (ProtocolError, ValueError, IndexError):
        return (b"?", head)


def _peer_closed(sock: socket.socket) -> bool:
    """True when the TCP connection beneath (TLS or not) is at EOF or reset."""
    try:
        data = socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True
    return data == b""
