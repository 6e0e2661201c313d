"""A light look at an IMAP account: log in and list every folder with its STATUS in one
`LIST "" "*" RETURN (STATUS (...))` (RFC 5819), on the standard library's imaplib.

This is what `syncd sync` asks first (see syncd/imap/nochange.py): most syncs find nothing to do,
and answering that must not cost importing imapclient and the engine, which are most of a
no-change sync's time. Anything this module does not understand (no LIST-STATUS or CONDSTORE,
a literal, an odd reply) makes it answer "cannot tell" (None), and the full sync, on
imapclient, takes over. Only the replies to its own two commands are parsed here.
"""

from __future__ import annotations

import binascii
import contextlib
import imaplib
import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.folders import Namespace, personal_namespace
from syncd.core.model import FolderStatus, RemoteFolder
from syncd.errors import AccountError, login_refused
from syncd.imap import wire
from syncd.imap.wire import IMAP4OnSocket

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings

STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")


class Listing(NamedTuple):
    """Every folder and its STATUS, from a server with CONDSTORE (HIGHESTMODSEQ included):
    without it there is no listing, as the status shortcut cannot apply."""

    folders: list[RemoteFolder]
    statuses: dict[str, FolderStatus]
    # The personal namespace (NAMESPACE, asked in the same round trip as the LIST).
    namespace: Namespace = Namespace()


def logout_quietly(imap: imaplib.IMAP4) -> None:
    """LOGOUT without waiting for the server's BYE (nothing in it matters to us, and waiting
    costs a round trip), then close."""
    try:
        if getattr(imap, "state", None) in ("AUTH", "SELECTED", "NONAUTH"):
            wire.write_command(imap, b"LOGOUT")
    except Exception:
        pass
    with contextlib.suppress(Exception):
        imap.shutdown()


def probe(account: AccountSettings, sock: socket.socket,
          password: Callable[[], str]) -> Listing | None:
    """Log in on ``sock`` (connected, TLS done) and list every folder with its STATUS; the
    connection is closed afterwards in every case. None when the server or its replies do not
    allow the light path. Raises AccountError where the full path would fail the same way
    (the connection broke, the login was refused), so a refused login is not tried twice."""
    from syncd.net import connect_failed

    try:
        imap = IMAP4OnSocket(account.host, account.port, sock)
    except imaplib.IMAP4.error:
        sock.close()
        return None  # a BYE greeting or a garbled one: the full path says what it was
    except Exception as exc:
        sock.close()
        raise connect_failed(account, exc) from None
    try:
        return _login_and_list(account, imap, password)
    except AccountError:
        raise
    except imaplib.IMAP4.error:
        return None  # a refusal, a hang-up or a garbled reply: the full path reports it
    except OSError as exc:
        raise connect_failed(account, exc) from None
    except Exception:
        return None  # e.g. a password imaplib cannot send; the full path says what it is
    finally:
        logout_quietly(imap)


def _login_and_list(account: AccountSettings, imap: imaplib.IMAP4,
                    password: Callable[[], str]) -> Listing | None:
    if wire.state_of(imap) != "NONAUTH" or "LOGINDISABLED" in imap.capabilities:
        return None  # PREAUTH or no LOGIN: the full path knows what to do or say
    secret = password()
    try:
        imap.login(account.username, secret)
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        _raise_if_throttled(account, str(exc))  # Gmail's [ALERT] limits are no wrong password
        raise login_refused(account) from None
    # Most servers put the new capabilities in the login's OK; otherwise ask (Exchange).
    caps_reply = imap.response("CAPABILITY")[1]
    if not caps_reply or caps_reply[0] is None:
        typ, caps_reply = imap.capability()
        if typ != "OK":
            _raise_if_throttled(account, *caps_reply)
            return None
    words = b" ".join(c for c in caps_reply if isinstance(c, bytes)).upper().split()
    capabilities = {w.decode("ascii", "replace") for w in words}
    if "LIST-STATUS" not in capabilities or not {"CONDSTORE", "QRESYNC"} & capabilities:
        return None  # without both, the status shortcut never applies anyway
    # NAMESPACE is written ahead of the LIST, without waiting: imaplib files its tagged reply
    # while it reads the LIST's, so both cost one round trip.
    namespace_tag = (wire.write_command(imap, b"NAMESPACE") if "NAMESPACE" in capabilities
                     else None)
    # imaplib sends its arguments as they are: the pattern carries the RETURN options.
    typ, lines = imap.list('""', f'"*" RETURN (STATUS ({" ".join(STATUS_ITEMS)}))')
    if typ != "OK":
        _raise_if_throttled(account, *lines)
        return None
    folders = _parse_list(lines)
    statuses = _parse_statuses(imap.response("STATUS")[1])
    if folders is None or statuses is None:
        return None
    namespace = Namespace()
    if namespace_tag is not None:
        typ, _ = wire.tagged_reply(imap, namespace_tag)
        parsed = _parse_namespace(imap.response("NAMESPACE")[1]) if typ == "OK" else None
        if parsed is None:
            return None  # a reply we do not read: the full path asks again and knows
        namespace = parsed
    return Listing(folders, statuses, namespace)


def _raise_if_throttled(account: AccountSettings, *texts: object) -> None:
    """A throttling reply (syncd/config/providers.py) pauses the account and is reported as such."""
    from syncd.config.providers import PAUSES, describe_pause, throttle_from

    for text in texts:
        if not isinstance(text, (bytes, str)):
            continue
        throttle = throttle_from(text)
        if throttle is not None:
            pause = PAUSES.note(account.name, throttle)
            raise AccountError(account.name, f"{account.host}: {describe_pause(pause)}",
                               cause="throttled")


# --- the two replies ------------------------------------------------------------------------
_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\\r\n]|\\["\\])*)"|([^\s()"{}]+))')


def _tokens(line: bytes) -> list[object] | None:
    """A reply line as nested lists of bytes (quoted strings unescaped; NIL stays b"NIL",
    quoted or not); None for anything else (literals, brackets, unbalanced parentheses)."""
    stack: list[list[object]] = [[]]
    pos = 0
    while pos < len(line):
        if line[pos:].isspace():
            break
        m = _TOKEN.match(line, pos)
        if m is None:
            return None
        pos = m.end()
        if m.group(1):
            stack.append([])
        elif m.group(2):
            if len(stack) == 1:
                return None
            done = stack.pop()
            stack[-1].append(done)
        elif m.group(3) is not None:
            stack[-1].append(QuotedString(re.sub(rb"\\(.)", rb"\1", m.group(3))))
        else:
            stack[-1].append(m.group(4))
    return stack[0] if len(stack) == 1 else None


class QuotedString(bytes):
    """A quoted string, as opposed to an atom (a quoted "NIL" is a name, not nothing)."""


def decode_folder_name(raw: bytes) -> str | None:
    """Modified UTF-7 (RFC 3501 5.1.3) to text; None if it is not valid."""
    out: list[str] = []
    pos = 0
    while pos < len(raw):
        amp = raw.find(b"&", pos)
        if amp < 0:
            amp = len(raw)
        plain = raw[pos:amp]
        if not plain.isascii() or any(b < 0x20 or b > 0x7E for b in plain):
            return None
        out.append(plain.decode("ascii"))
        if amp == len(raw):
            break
        end = raw.find(b"-", amp + 1)
        if end < 0:
            return None
        chunk = raw[amp + 1:end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(b",", b"/")
            try:
                out.append(binascii.a2b_base64(b64 + b"=" * (-len(b64) % 4), strict_mode=True)
                           .decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                return None
        pos = end + 1
    return "".join(out)


def _name(token: object) -> str | None:
    # As imapclient gives it (the engine's names, which the state holds): decoded, not
    # normalised (an "inbox" stays "inbox").
    return decode_folder_name(token) if isinstance(token, bytes) else None


def _parse_list(lines: list[object]) -> list[RemoteFolder] | None:
    """`* LIST (flags) delimiter name` lines."""
    folders = []
    for line in lines:
        if line is None:
            continue
        if not isinstance(line, bytes):
            return None  # a literal
        tokens = _tokens(line)
        if tokens is None or len(tokens) < 3 or not isinstance(tokens[0], list):
            return None
        flags = {f.lower() for f in tokens[0] if isinstance(f, bytes)}
        delimiter = tokens[1]
        if not isinstance(delimiter, bytes):
            return None
        if not isinstance(delimiter, QuotedString) and delimiter.upper() == b"NIL":
            delim = None
        else:
            delim = delimiter.decode("ascii", "replace") or None
        name = _name(tokens[2])
        if name is None:
            return None
        folders.append(RemoteFolder(
            name=name, delimiter=delim,
            noselect=b"\\noselect" in flags or b"\\nonexistent" in flags, special_use=None))
    return folders


def _parse_namespace(lines: list[object]) -> Namespace | None:
    """`* NAMESPACE (("INBOX." ".")) NIL NIL`: the first personal namespace, as the full path
    (adapters.imap.parse_namespace) reads it; None for anything else."""
    line = lines[-1] if lines else None
    if not isinstance(line, bytes):
        return None
    tokens = _tokens(line)
    if tokens is None or len(tokens) < 3:
        return None
    personal = tokens[0]
    if isinstance(personal, bytes):
        return Namespace() if personal.upper() == b"NIL" else None
    if not personal or not isinstance(personal[0], list) or len(personal[0]) < 2:
        return Namespace()
    prefix, delimiter = personal[0][0], personal[0][1]
    name = _name(prefix)
    if name is None or not isinstance(delimiter, bytes):
        return None
    delim = None if not isinstance(delimiter, QuotedString) and delimiter.upper() == b"NIL" \
        else delimiter.decode("ascii", "replace")
    return personal_namespace(name, delim or None)


def _parse_statuses(lines: list[object]) -> dict[str, FolderStatus] | None:
    """`* STATUS name (ITEM value ...)` lines."""
    statuses = {}
    for line in lines:
        if line is None:
            continue
        if not isinstance(line, bytes):
            return None
        tokens = _tokens(line)
        if tokens is None or len(tokens) != 2 or not isinstance(tokens[1], list):
            return None
        name = _name(tokens[0])
        items = tokens[1]
        if name is None or len(items) % 2:
            return None
        values: dict[str, int] = {}
        for key, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(key, bytes) or not isinstance(value, bytes) \
                    or not value.isdigit():
                return None
            values[key.decode("ascii", "replace").upper()] = int(value)
        statuses[name] = FolderStatus(
            uidvalidity=values.get("UIDVALIDITY"), uidnext=values.get("UIDNEXT"),
            messages=values.get("MESSAGES"), highestmodseq=values.get("HIGHESTMODSEQ"))
    return statuses
