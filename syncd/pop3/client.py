"""Thin POP3 adapter on poplib: implicit TLS or STLS with verified certificates, USER/PASS,
AUTH PLAIN (and a SASL hook for other mechanisms, e.g. XOAUTH2 later), STAT, UIDL, LIST,
pipelined RETR/DELE, QUIT. No sync decisions here: ``syncd.pop3.fetch`` makes them.

Why not poplib's own ``retr``: it reads the whole message into a list of lines (memory grows
with the message) and waits for each reply before the next command (one round trip per
message). Here poplib only connects, secures and logs in; afterwards commands go through a
:class:`Pipeline` that, when the server offers PIPELINING (RFC 2449), keeps a window of
commands in flight and reads the replies as they stream in, and a multi-line reader that
un-dot-stuffs the body chunk by chunk into whatever consumes it, so memory stays flat however
big the message is. Without PIPELINING the same code sends one command at a time.

Connection problems after login are raised as :class:`Pop3ConnectionLost` (an
``AccountError``), malformed replies as :class:`Pop3ProtocolError`, so that callers can tell
them apart from local I/O errors (``OSError``: a full disk is not the server's fault).
"""

from __future__ import annotations

import base64
import contextlib
import poplib
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from syncd.errors import AccountError
from syncd.net import connect_failed, describe_connect_error, tls_context

if TYPE_CHECKING:
    from syncd.auth.oauth import OAuthSasl
    from syncd.config.load import AccountSettings

T = TypeVar("T")

#: A status line longer than this is not a status line (RFC 2449 allows 512 octets; leave room
#: for chatty servers, but never buffer an unbounded "line" from a broken peer).
MAX_STATUS_LINE = 8192
#: Commands kept in flight with PIPELINING. Each command is ~12 bytes, so even a full window
#: (~3 kB) is far below any socket buffer: sending can never block on a server that is itself
#: blocked writing replies we have not read yet (the deadlock RFC 2449 section 6.6 warns
#: about). It has to cover a round trip's worth of replies: on a 20 ms link, 64 left the pipe
#: empty while a group commit ran (2000 messages: 6.2 s; with 256: 4.0 s; no latency: 2.3 s).
DEFAULT_WINDOW = 256
# A UIDL is 1-70 characters in 0x21-0x7E (RFC 1939 section 7).
_UIDL_RE = re.compile(rb"^\s*(\d+)\s+([\x21-\x7e]{1,70})\s*$")
_LIST_RE = re.compile(rb"^\s*(\d+)\s+(\d+)")
_LF = 0x0A
_CR = 0x0D
_DOT_BYTE = 0x2E


class Pop3ProtocolError(AccountError):
    """The server said something that is not POP3 (or not what the command allows)."""

    def __init__(self, account: str, message: str) -> None:
        super().__init__(account, message, cause="protocol")


class Pop3ConnectionLost(AccountError):
    """The connection broke (reset, closed, timed out, TLS error) after login."""

    def __init__(self, account: str, message: str, *, cause: str = "network") -> None:
        super().__init__(account, message, cause=cause)


class Pop3CommandFailed(AccountError):
    """A single-reply command got -ERR where the caller cannot carry on (e.g. LIST)."""

    def __init__(self, account: str, message: str) -> None:
        super().__init__(account, message, cause="protocol")


class SaslMechanism(Protocol):
    """A SASL mechanism with an initial response (RFC 5034). OAuth2 (XOAUTH2/OAUTHBEARER)
    plugs in here later: ``name`` is the mechanism, ``initial_response`` the raw (not yet
    base64) client response, computed when it is needed so a token is fetched late."""

    name: str

    def initial_response(self, username: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PlainMechanism:
    """AUTH PLAIN with the password from ``password`` (called once, after TLS is up)."""

    password: Callable[[], str]
    name: str = "PLAIN"

    def initial_response(self, username: str) -> bytes:
        return f"\0{username}\0{self.password()}".encode()


@dataclass(frozen=True, slots=True)
class ListedMessage:
    """One message of the session's listing. ``uidl`` is None when the server has no UIDL."""

    number: int
    uidl: str | None
    size: int


@dataclass(slots=True)
class Reply(Generic[T]):
    """One reply of a pipelined command. For a multi-line command that succeeded, ``body``
    yields the un-dot-stuffed data (server bytes, CRLF kept) and must be consumed before the
    next reply is asked for (the pipeline drains it otherwise)."""

    tag: T
    ok: bool
    text: str
    body: Iterator[bytes] | None = None

    def write_to(self, sink: Callable[[bytes], object]) -> int:
        """Stream the body into ``sink`` chunk by chunk (nothing is held); returns the
        number of bytes written. A reply without a body writes nothing."""
        total = 0
        for chunk in self.body or ():
            sink(chunk)
            total += len(chunk)
        return total


class Pop3Session:
    """One authenticated POP3 connection for one account."""

    def __init__(self, account: AccountSettings, client: poplib.POP3,
                 capabilities: dict[str, list[str]]) -> None:
        self.account = account
        self.client = client
        self.capabilities = capabilities

    @classmethod
    def connect(cls, account: AccountSettings, password: Callable[[], str], *,
                sasl: SaslMechanism | None = None) -> Pop3Session:
        """Connect, secure (implicit TLS or STLS; never a silent fallback to plaintext) and
        log in: ``sasl`` if given, else AUTH PLAIN when offered, else USER/PASS. The password
        is asked for only once the channel is secure."""
        name = account.name
        context = tls_context(name, account.tls_ca_file)
        try:
            if account.tls == "implicit":
                client: poplib.POP3 = poplib.POP3_SSL(account.host, account.port,
                                                      context=context, timeout=account.timeout)
            else:
                client = poplib.POP3(account.host, account.port, timeout=account.timeout)
        except Exception as exc:
            raise connect_failed(account, exc) from None
        try:
            capabilities = _capabilities(client)
            if account.tls == "starttls":
                if "STLS" not in capabilities:
                    raise AccountError(
                        name, f"{account.host}:{account.port} does not offer STLS; refusing to "
                        "continue in plaintext (use tls: implicit, or a server that offers STLS)",
                        cause="tls")
                client.stls(context)
                # RFC 2595: capabilities learned before TLS are void (they could be forged).
                capabilities = _capabilities(client)
            _log_in(client, account, password, sasl,
                    [m.upper() for m in capabilities.get("SASL", [])])
            # Capabilities may change after login (RFC 2449 section 5); ask again.
            return cls(account, client, _capabilities(client) or capabilities)
        except AccountError:
            _close_quietly(client)
            raise
        except poplib.error_proto as exc:
            _close_quietly(client)
            raise AccountError(name, f"{account.host}: {_text(exc)}", cause="protocol") from None
        except Exception as exc:
            _close_quietly(client)
            raise connect_failed(account, exc) from None

    # -- simple commands (poplib) -----------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    def stat(self) -> tuple[int, int]:
        count, size = self.client.stat()
        return count, size

    def has_uidl(self) -> bool:
        if "UIDL" in self.capabilities:
            return True
        try:
            self.client.uidl()
        except poplib.error_proto:
            return False
        return True

    def quit(self) -> None:
        """QUIT: the server commits the DELEs of this session (RFC 1939 UPDATE state). An -ERR
        here means it did not; raised as Pop3CommandFailed."""
        try:
            self.client.quit()
        except poplib.error_proto as exc:
            raise Pop3CommandFailed(
                self.account.name, f"{self.account.host} did not confirm QUIT ({_text(exc)}): "
                "deletions of this session were not committed") from None
        except (OSError, EOFError) as exc:
            raise self._lost(exc, "QUIT") from None

    def close(self) -> None:
        _close_quietly(self.client)

    # -- streaming / pipelined commands ----------------------------------------------------

    def pipeline(self, window: int | None = None) -> Pipeline[T]:
        """A command pipeline: ``window`` commands in flight when the server offers
        PIPELINING (default DEFAULT_WINDOW), exactly one otherwise."""
        if not self.pipelining:
            window = 1
        return Pipeline(self, window or DEFAULT_WINDOW)

    def listing(self) -> list[ListedMessage]:
        """Every message of the maildrop: number, UIDL (None if the server has no UIDL) and
        size, from UIDL and LIST (sent together with PIPELINING). Messages are ordered by
        number. A LIST failure is fatal; a UIDL failure only means "no UIDL"."""
        pipe: Pipeline[str] = self.pipeline()
        pipe.submit("UIDL", multiline=True, tag="UIDL")
        pipe.submit("LIST", multiline=True, tag="LIST")
        uidls: dict[int, str] | None = None
        sizes: dict[int, int] = {}
        while pipe:
            reply = pipe.next_reply()
            if reply.tag == "UIDL":
                if reply.ok and reply.body is not None:
                    uidls = {}
                    for line in _lines(reply.body):
                        match = _UIDL_RE.match(line)
                        if match is None:
                            raise Pop3ProtocolError(
                                self.account.name, f"{self.account.host}: malformed UIDL "
                                f"line {line[:80]!r}")
                        uidls[int(match.group(1))] = match.group(2).decode("ascii")
            else:
                if not reply.ok or reply.body is None:
                    raise Pop3CommandFailed(self.account.name,
                                            f"{self.account.host}: LIST failed: {reply.text}")
                for line in _lines(reply.body):
                    match = _LIST_RE.match(line)
                    if match is None:
                        raise Pop3ProtocolError(
                            self.account.name,
                            f"{self.account.host}: malformed LIST line {line[:80]!r}")
                    sizes[int(match.group(1))] = int(match.group(2))
        numbers = sorted(set(sizes) | set(uidls or ()))
        return [ListedMessage(n, uidls.get(n) if uidls is not None else None, sizes.get(n, 0))
                for n in numbers]

    # -- low level, used by Pipeline ---------------------------------------------------------

    def _send(self, lines: Iterable[str]) -> None:
        data = b"".join(line.encode("ascii") + b"\r\n" for line in lines)
        try:
            self.client.sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc, "sending commands") from None

    def _read_status(self, command: str) -> tuple[bool, str]:
        try:
            line = self.client.file.readline(MAX_STATUS_LINE + 1)
        except OSError as exc:
            raise self._lost(exc, command) from None
        if not line:
            raise Pop3ConnectionLost(
                self.account.name, f"{self.account.host} closed the connection (during "
                f"{command})")
        if len(line) > MAX_STATUS_LINE:
            raise Pop3ProtocolError(self.account.name,
                                    f"{self.account.host}: reply to {command} too long")
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if text.startswith("+OK"):
            return True, text[3:].strip()
        if text.startswith("-ERR"):
            return False, text[4:].strip()
        raise Pop3ProtocolError(self.account.name,
                                f"{self.account.host}: unexpected reply to {command}: "
                                f"{text[:80]!r}")

    def _body(self, command: str) -> Iterator[bytes]:
        """Yield the data of a multi-line reply in chunks, un-dot-stuffed, up to and not
        including the terminating ".CRLF" (which is consumed). Bytes after the terminator (the
        next pipelined reply) stay in poplib's buffer: we only ever ``peek`` and then ``read``
        exactly what belongs to this reply, so poplib's own calls (QUIT) keep working.

        The scanner is a small state machine over line starts, so a "." or ".\\r" split across
        two reads is handled without holding more than the current chunk."""
        reader = self.client.file
        state = _BOL
        while True:
            try:
                chunk = reader.peek(1 << 16)
            except OSError as exc:
                raise self._lost(exc, command) from None
            if not chunk:
                raise Pop3ConnectionLost(
                    self.account.name, f"{self.account.host} closed the connection in the "
                    f"middle of {command}")
            out, state, used, done = _scan(chunk, state)
            try:
                reader.read(used)  # consume exactly what was scanned (already buffered)
            except OSError as exc:  # pragma: no cover - the bytes are in the buffer
                raise self._lost(exc, command) from None
            if out:
                yield out
            if done:
                return

    def _lost(self, exc: BaseException, during: str) -> Pop3ConnectionLost:
        cause, message = describe_connect_error(exc, self.account.host, self.account.port)
        return Pop3ConnectionLost(self.account.name, f"{message} (during {during})",
                                  cause=cause)


# Scanner states: at the beginning of a line; in a line; after a leading "."; after ".\r".
_BOL, _TEXT, _AFTER_DOT, _AFTER_DOT_CR = range(4)


def _scan(chunk: bytes, state: int) -> tuple[bytes, int, int, bool]:
    """Scan one chunk of a multi-line reply. Returns (data to emit, new state, bytes used,
    terminator seen). Only line starts need attention, so the common case is one ``find`` of
    "\\n." per chunk, not a loop per line."""
    pieces: list[bytes] = []
    i = 0
    n = len(chunk)
    while i < n:
        if state == _BOL:
            if chunk[i] == _DOT_BYTE:
                state = _AFTER_DOT
                i += 1
                continue
            state = _TEXT
        elif state == _AFTER_DOT:
            byte = chunk[i]
            if byte == _LF:  # ".\n": a lenient terminator (some servers send bare LFs)
                return b"".join(pieces), _BOL, i + 1, True
            if byte == _CR:
                state = _AFTER_DOT_CR
                i += 1
                continue
            state = _TEXT  # a stuffed dot: dropped, the line goes on with this byte
        elif state == _AFTER_DOT_CR:
            if chunk[i] == _LF:
                return b"".join(pieces), _BOL, i + 1, True
            pieces.append(b"\r")  # ".\r" + something else: the dot was stuffing
            state = _TEXT
        # In a line: copy up to the next line that starts with a dot (the only place where
        # anything needs changing), or to the end of the chunk.
        j = chunk.find(b"\n.", i)
        if j < 0:
            pieces.append(chunk[i:])
            state = _BOL if chunk[n - 1] == _LF else _TEXT
            return b"".join(pieces), state, n, False
        pieces.append(chunk[i:j + 1])
        i = j + 1
        state = _BOL
    return b"".join(pieces), state, n, False


def _lines(body: Iterator[bytes]) -> Iterator[bytes]:
    """Split a (small) multi-line reply such as UIDL or LIST into lines without line ends.
    Only the tail of the last incomplete line is held between chunks."""
    tail = b""
    for chunk in body:
        data = tail + chunk
        parts = data.split(b"\n")
        tail = parts.pop()
        for part in parts:
            yield part.rstrip(b"\r")
    if tail.strip():
        yield tail.rstrip(b"\r")


@dataclass(slots=True)
class _Command(Generic[T]):
    line: str
    multiline: bool
    tag: T


class Pipeline(Generic[T]):
    """Commands with their replies, in order. ``submit`` queues; ``next_reply`` sends what the
    window allows and returns the next reply. With a window of 1 this is the classic
    one-command-at-a-time dialogue (servers without PIPELINING).

    Sending happens in bursts: the window is refilled once an eighth of it has drained, so a
    stream of small replies costs one write per burst, not one per command, while the pipe
    never runs dry.
    """

    def __init__(self, session: Pop3Session, window: int) -> None:
        self.session = session
        self.window = max(1, window)
        self._queued: deque[_Command[T]] = deque()
        self._in_flight: deque[_Command[T]] = deque()
        self._open_body: Iterator[bytes] | None = None

    def __len__(self) -> int:
        return len(self._queued) + len(self._in_flight)

    def __bool__(self) -> bool:
        return bool(self._queued or self._in_flight)

    def submit(self, line: str, *, multiline: bool, tag: T) -> None:
        self._queued.append(_Command(line, multiline, tag))

    def discard_queued(self, keep: Callable[[T], bool] | None = None) -> list[T]:
        """Drop commands not sent yet (all, or those for which ``keep`` is false); returns
        their tags. Commands in flight cannot be recalled: their replies still come."""
        dropped: list[T] = []
        kept: deque[_Command[T]] = deque()
        for command in self._queued:
            if keep is not None and keep(command.tag):
                kept.append(command)
            else:
                dropped.append(command.tag)
        self._queued = kept
        return dropped

    def next_reply(self) -> Reply[T]:
        self._drain_body()
        if not self._in_flight and not self._queued:
            raise IndexError("no command pending")
        if len(self._in_flight) <= self.window - max(1, self.window // 8) and self._queued:
            burst: list[str] = []
            while self._queued and len(self._in_flight) < self.window:
                command = self._queued.popleft()
                self._in_flight.append(command)
                burst.append(command.line)
            self.session._send(burst)
        command = self._in_flight.popleft()
        ok, text = self.session._read_status(command.line)
        body = None
        if ok and command.multiline:
            body = self._open_body = self.session._body(command.line)
        return Reply(command.tag, ok, text, body)

    def _drain_body(self) -> None:
        """The caller did not read the previous body to its end (it chose to skip the message
        or failed locally): read and drop the rest, or the next status line would be body."""
        body, self._open_body = self._open_body, None
        if body is not None:
            for _chunk in body:
                pass

    def drain(self) -> list[Reply[T]]:
        """Read every outstanding reply (bodies discarded); returns them in order."""
        replies = []
        while self:
            reply = self.next_reply()
            replies.append(reply)
        self._drain_body()
        return replies


def _authenticate(client: poplib.POP3, mechanism: SaslMechanism, username: str) -> None:
    """AUTH with an initial response (RFC 5034). A "+ challenge" instead of a verdict means
    the server rejects the response (XOAUTH2 sends its error details this way): answer with
    the empty response the mechanism expects, then the -ERR follows and is raised."""
    token = base64.b64encode(mechanism.initial_response(username)).decode("ascii")
    # poplib has no AUTH; "_putcmd" and "_getresp" are its documented-by-use internals.
    client._putcmd(f"AUTH {mechanism.name} {token}")
    reply = client._getresp()  # raises error_proto on -ERR
    if reply.startswith(b"+ ") or reply == b"+":
        client._putcmd("")
        client._getresp()


#: RFC 5034 section 4: an AUTH command line with its initial response is at most 255 octets;
#: longer responses (OAuth2 access tokens are often JWTs of a kilobyte or more) are sent after
#: the server's "+" continuation instead.
MAX_AUTH_LINE = 255


def _oauth2_login(client: poplib.POP3, account: AccountSettings,
                  mechanisms: list[str]) -> None:
    """AUTH XOAUTH2 / OAUTHBEARER (whichever the server lists) with an OAuth2 access token,
    refreshed and retried once if rejected. A rejection arrives as a "+" challenge carrying
    the error JSON, answered with the mechanism's error response, then -ERR."""
    from syncd.auth.oauth import SaslRejected, choose_mechanism, login_with_oauth2

    mechanism = choose_mechanism(mechanisms)

    def authenticate(sasl: OAuthSasl) -> None:
        response = base64.b64encode(sasl.initial_response(account.username)).decode("ascii")
        try:
            command = f"AUTH {mechanism} {response}"
            if len(command) + 2 <= MAX_AUTH_LINE:
                client._putcmd(command)
            else:
                client._putcmd(f"AUTH {mechanism}")
                if not _is_challenge(client._getresp()):
                    raise SaslRejected("the server did not ask for the response")
                client._putcmd(response)
            reply = client._getresp()  # raises error_proto on -ERR
            if _is_challenge(reply):
                with contextlib.suppress(ValueError):
                    sasl.record_challenge(base64.b64decode(reply[1:].strip(), validate=True))
                client._putcmd(base64.b64encode(sasl.error_response()).decode("ascii"))
                client._getresp()
        except poplib.error_proto as exc:
            raise SaslRejected(_text(exc)) from None

    login_with_oauth2(account, mechanism, account.host, account.port, authenticate)


def _is_challenge(reply: bytes) -> bool:
    return reply.startswith(b"+ ") or reply == b"+"  # "+OK" is a verdict, not a challenge


def _capabilities(client: poplib.POP3) -> dict[str, list[str]]:
    try:
        caps = client.capa()
    except poplib.error_proto:
        return {}
    return {name.upper(): args for name, args in caps.items()}


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _close_quietly(client: poplib.POP3) -> None:
    with contextlib.suppress(Exception):  # the connection may already be gone
        client.close()


__all__ = [
    "DEFAULT_WINDOW",
    "ListedMessage",
    "Pipeline",
    "PlainMechanism",
    "Pop3CommandFailed",
    "Pop3ConnectionLost",
    "Pop3ProtocolError",
    "Pop3Session",
    "Reply",
    "SaslMechanism",
]


def _log_in(client: poplib.POP3, account: AccountSettings, password: Callable[[], str],
            sasl: SaslMechanism | None, mechanisms: list[str]) -> None:
    """``sasl`` if given, else OAuth2 (auth: oauth2), else AUTH PLAIN when offered, else
    USER/PASS. A refusal is the account's AccountError (cause auth)."""
    try:
        if sasl is not None:
            _authenticate(client, sasl, account.username)
        elif getattr(account, "auth", "password") == "oauth2":
            # getattr: settings from before the auth key existed have no such field.
            _oauth2_login(client, account, mechanisms)
        elif "PLAIN" in mechanisms:
            _authenticate(client, PlainMechanism(password), account.username)
        else:
            client.user(account.username)
            client.pass_(password())
    except poplib.error_proto as exc:
        detail = _text(exc)
        if "[SYS/" in detail.upper() or "[IN-USE]" in detail.upper():
            # RFC 3206: not a credentials problem; say what the server said.
            raise AccountError(account.name, f"login as {account.username!r} on "
                               f"{account.host} refused: {detail}", cause="auth") from None
        raise AccountError(
            account.name, f"login as {account.username!r} on {account.host} failed: wrong "
            "username or password", cause="auth") from None
