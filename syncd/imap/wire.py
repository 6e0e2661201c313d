"""The only module that reaches into imaplib's and imapclient's internals.

imapclient's API answers one command at a time and parses every byte in Python; syncd needs
more than that API gives: commands written without waiting (pipelining, NAMESPACE ahead of
LIST), UID FETCH with a UID-set string and its raw response (parsed by regex, most of an
initial sync's CPU otherwise), LIST with RETURN options, a SELECT whose reply came through a
pipeline, IDLE read without imapclient's idle_check (its issue 519), limits on what a server
may make us hold, and a connection opened before imapclient was imported. Each of those
reaches a private name of imaplib (``_simple_command``, ``untagged_responses``, ...) or of
imapclient (``_imap``, ``_proc_folder_list``, ...). They are all here, each behind a function
that says why it is needed, and each has a test of its own in tests/unit/test_imap_wire.py
against the installed imapclient and imaplib: a release that renames or changes one fails that
one focused test, not the sync suite. The declared bound is in pyproject.toml.

Importing this module must stay cheap: the no-change path (syncd/imap/probe.py) imports it
before anything else of IMAP; imapclient is imported inside the functions that need it.
"""

from __future__ import annotations

import functools
import imaplib
import logging
import os
import socket
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from imapclient import IMAPClient

# The --debug protocol trace: the logger (and level) imapclient uses for imaplib's own lines.
TRACE = logging.getLogger("imapclient.imaplib")
#: imaplib's debug level from which it traces every line (imaplib's _mesg is called).
TRACE_LEVEL = 4


# --- imapclient's module set-up -------------------------------------------------------------
def spare_version_lookup() -> None:
    """imapclient/version.py (4.x) asks importlib.metadata for imapclient's version when
    imported, which imports importlib.metadata (email, zipfile, csv, ...) and scans every
    distribution on sys.path: 40-50 ms, a seventh of a no-change `syncd sync`. The module is
    provided here with the same value, read from the name of imapclient's .dist-info
    directory; where that is not found (an unusual install), imapclient looks its version up
    as usual. Call before the first import of imapclient."""
    if "imapclient.version" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("imapclient")
    if spec is None or not spec.submodule_search_locations:
        return
    site = os.path.dirname(next(iter(spec.submodule_search_locations)))
    try:
        names = os.listdir(site)
    except OSError:
        return
    found = [n[len("imapclient-"):-len(".dist-info")] for n in names
             if n.lower().startswith("imapclient-") and n.endswith(".dist-info")]
    if len(found) != 1:
        return
    version = found[0]
    try:
        major, minor, micro = (int(part) for part in version.split("."))
    except ValueError:
        return
    if major < 4:
        # 3.x's version.py is plain constants (no metadata lookup), and its __init__ imports
        # more of them (author): a stand-in would break the import.
        return
    module = types.ModuleType("imapclient.version")
    module.version = version  # type: ignore[attr-defined]
    module.version_info = (major, minor, micro, "final")  # type: ignore[attr-defined]
    sys.modules["imapclient.version"] = module


# --- imaplib on a connection opened ahead ---------------------------------------------------
class IMAP4OnSocket(imaplib.IMAP4):
    """imaplib on a connection that is already open (net.dial_ahead): it reads the greeting
    from it as from one it opened itself. imaplib has no public way to be handed a socket;
    _create_socket is the hook its own IMAP4_SSL uses. Under --debug the conversation,
    greeting included, goes to the protocol trace with LOGIN's arguments cut (imaplib's
    _mesg prints to stderr otherwise)."""

    def __init__(self, host: str, port: int, sock: socket.socket) -> None:
        self._given = sock
        super().__init__(host, port)

    def open(self, host: str = "", port: int = imaplib.IMAP4_PORT,
             timeout: float | None = None) -> None:
        if TRACE.isEnabledFor(logging.DEBUG):
            self.debug = 5  # before the greeting is read
        super().open(host, port, timeout)

    def _mesg(self, s: str, secs: float | None = None) -> None:
        if s.startswith(">"):
            for command in ("LOGIN", "AUTHENTICATE"):
                if command in s:
                    s = f"{s.split(command)[0]}{command} **REDACTED**"
                    break
        TRACE.debug(s)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return self._given

    def _get_capabilities(self) -> None:
        # imaplib asks CAPABILITY after every greeting; most servers announce them in it
        # (RFC 3501 7.1): one round trip less per connection.
        announced = self.untagged_responses.pop("CAPABILITY", None)
        if announced and isinstance(announced[-1], bytes):
            self.capabilities = tuple(announced[-1].decode("ascii", "replace").upper().split())
            return
        super()._get_capabilities()


@functools.cache
def client_on_socket() -> type[IMAPClient]:
    """IMAPClient on a connection that is already open: imapclient takes no socket, but
    builds its imaplib object in _create_IMAP4, which this overrides."""
    from imapclient import IMAPClient

    class ClientOnSocket(IMAPClient):
        def __init__(self, *args: Any, sock: socket.socket, **kwargs: Any) -> None:
            self._given = sock
            super().__init__(*args, **kwargs)

        def _create_IMAP4(self) -> imaplib.IMAP4:
            return IMAP4OnSocket(self.host, self.port, self._given)

    return ClientOnSocket


# --- imapclient's private parts -------------------------------------------------------------
def imaplib_of(client: IMAPClient) -> imaplib.IMAP4:
    """The imaplib connection under an IMAPClient: everything below works on it."""
    return client._imap


def forget_capabilities(client: IMAPClient) -> None:
    """Make imapclient ask CAPABILITY again: its cache survives STARTTLS and LOGIN, after
    which servers announce other capabilities (RFC 3501 6.2.1, 6.2.3)."""
    client._cached_capabilities = None


def parse_folder_list(client: IMAPClient, raw: list) -> list[tuple]:
    """imapclient's (flags, delimiter, name) tuples from raw LIST responses: its list_folders()
    cannot send LIST with RETURN options (LIST-STATUS), so the reply is read here."""
    return client._proc_folder_list(raw)


def folder_argument(client: IMAPClient, name: str) -> bytes:
    """A folder name as imapclient would send it (modified UTF-7, quoted), for a SELECT
    written on a pipeline."""
    return client._normalise_folder(name)


def parse_select(client: IMAPClient, untagged: dict[str, list]) -> dict[bytes, Any]:
    """imapclient's parsed SELECT response from the untagged responses of a SELECT that went
    through a pipeline (select_folder() would send its own)."""
    return client._process_select_response(untagged)


def append_arguments(client: IMAPClient, folder: str, flags: Sequence[str],
                     internaldate: Any) -> tuple[bytes, str, str | None]:
    """APPEND's mailbox, flag list and date as imapclient's append() writes them, for an
    APPEND whose literal is streamed (append_streamed): append() takes only bytes."""
    from imapclient.datetime_util import datetime_to_INTERNALDATE
    from imapclient.imapclient import seq_to_parenstr

    date = f'"{datetime_to_INTERNALDATE(internaldate)}"' if internaldate else None
    return client._normalise_folder(folder), seq_to_parenstr(flags), date


def uid_fetch(client: IMAPClient, *args: str) -> list:
    """``UID FETCH <args>`` and imaplib's raw FETCH response data. imapclient's fetch() takes
    only explicit UID lists (no "1:*"), no raw strings as items, and parses every byte of the
    reply in Python; syncd parses the flat responses it asks for with regexes."""
    return uid_fetch_reply(client, send_uid_fetch(client, *args))


def send_uid_fetch(client: IMAPClient, *args: str) -> bytes:
    """Write ``UID FETCH <args>`` the imaplib way without reading the reply (several in
    flight: the body pipeline); its tag for uid_fetch_reply."""
    return client._imap._command("UID", "FETCH", *args)


def uid_fetch_reply(client: IMAPClient, tag: bytes) -> list:
    """Read up to the tagged reply of a UID FETCH sent earlier: its raw FETCH data, or
    imapclient's error for a NO (imaplib's for a BAD)."""
    imap = client._imap
    typ, data = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    return data


def parenthesised(items: Sequence[str]) -> str:
    """FETCH items or modifiers as imapclient writes them: "(A B)", upper case."""
    from imapclient.imapclient import seq_to_parenstr_upper

    return seq_to_parenstr_upper(items)


def parse_response(data: list) -> tuple:
    """imapclient's parser for one response's data (STATUS, NAMESPACE, IDLE lines): not in
    its documented API, but the same parser its own commands use."""
    from imapclient.response_parser import parse_response as parse

    return parse(data)


def parse_fetch(client: IMAPClient, data: list) -> dict[int, dict[bytes, Any]]:
    """imapclient's parsed FETCH response, keyed by UID: the fallback when a reply has a
    shape syncd's regexes do not expect."""
    from imapclient.response_parser import parse_fetch_response

    return parse_fetch_response(data, client.normalise_times, True)


# --- imaplib: more than one command at a time -----------------------------------------------
def trace(imap: imaplib.IMAP4, text: str) -> None:
    """A line in the --debug protocol trace, as imaplib traces its own commands."""
    if getattr(imap, "debug", 0) >= TRACE_LEVEL:
        imap._mesg(text)


def set_trace(imap: imaplib.IMAP4, on: bool) -> None:
    """imapclient turns imaplib's debug level up to 5, and imaplib then formats the repr of
    every response, bodies included, before the logger can drop it: a third of the CPU of an
    initial sync. On only when the trace is wanted."""
    imap.debug = 5 if on else 0


def write_command(imap: imaplib.IMAP4, *words: bytes) -> bytes:
    """Write one command line without waiting for its reply (imaplib only writes a command
    when it then waits): pipelining, NAMESPACE ahead of LIST, LOGOUT without waiting for the
    BYE. Returns its tag, under which imaplib files the tagged reply once it reads it."""
    tag: bytes = imap._new_tag()
    line = b" ".join([tag, *words])
    trace(imap, f"> {line!r}")
    imap.send(line + b"\r\n")
    return tag


def append_streamed(imap: imaplib.IMAP4, args: Sequence[str | bytes | None], size: int,
                    chunks: Iterable[bytes], *, nonsync: bool) -> tuple[str, list]:
    """APPEND <args> with a literal of exactly ``size`` bytes sent from ``chunks``: imaplib's
    append() takes the message as one bytes object (and copies it for its CRLF mapping), two
    copies of a 200 MB attachment. With ``nonsync`` (the server offers LITERAL+, RFC 7888)
    the literal follows the command line at once ({n+}); otherwise it waits for the server's
    continuation, and a refusal before it ("NO too big") ends the command with nothing sent.
    Returns (status, data) of the tagged reply, as imaplib's commands do. A stream that does
    not give ``size`` bytes leaves the server waiting for the rest: the connection is
    dropped (imaplib's abort)."""
    tag = imap._command("APPEND", *args, f"{{{size}{'+' if nonsync else ''}}}")
    if not nonsync:
        while imap._get_response() is not None:  # None: the continuation ("+ go ahead")
            if imap.tagged_commands[tag]:
                return imap._command_complete("APPEND", tag)
    sent = 0
    try:
        for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                break
            imap.send(chunk)
        if sent == size:
            imap.send(b"\r\n")
    except OSError as exc:
        raise imap.abort(f"socket error: {exc}") from None
    if sent != size:
        imap.shutdown()
        raise imap.abort(f"APPEND: the message changed while it was sent ({size} bytes "
                         f"announced, {sent if sent < size else 'more'} read)")
    return imap._command_complete("APPEND", tag)


def check_bye(imap: imaplib.IMAP4) -> None:
    """Raise imaplib's abort if the server said BYE, as imaplib does before each command."""
    imap._check_bye()


def start_command(imap: imaplib.IMAP4, name: str, *args: str) -> bytes:
    """Send a command the imaplib way (its checks, its tag bookkeeping) without reading the
    reply: IDLE, whose responses idle_stream.py reads itself. Returns the tag."""
    return imap._command(name, *args)


def forget_tag(imap: imaplib.IMAP4, tag: bytes) -> None:
    """Drop imaplib's record of a command whose tagged reply was read outside imaplib (IDLE),
    so nothing waits for it."""
    imap.tagged_commands.pop(tag, None)


def tagged_reply(imap: imaplib.IMAP4, tag: bytes) -> tuple[str, list]:
    """Read up to the tagged reply of a command written earlier (write_command): (status,
    data). Untagged responses read meanwhile are filed as usual."""
    return imap._get_tagged_response(tag)


def simple_command(imap: imaplib.IMAP4, name: str, *args: str) -> tuple[str, list]:
    """A command imaplib has no method for (NOTIFY) or whose arguments its method would
    quote (LIST with RETURN options): sent and answered, (status, data)."""
    return imap._simple_command(name, *args)


def untagged(imap: imaplib.IMAP4, name: str) -> list:
    """Every untagged ``name`` response filed so far (popped), as imaplib returns them after
    a command it sent: [None] when there was none."""
    return imap._untagged_response("OK", [None], name)[1]


def take_untagged(imap: imaplib.IMAP4, name: str) -> list | None:
    """Pop the untagged ``name`` responses filed so far (None if there are none): unsolicited
    VANISHED after a command must not be taken for the next one's."""
    return imap.untagged_responses.pop(name, None)


def kept_untagged(imap: imaplib.IMAP4, name: str) -> list | None:
    """The untagged ``name`` responses filed so far, left in place (ReplyGuard trims them)."""
    return imap.untagged_responses.get(name)


def swap_untagged(imap: imaplib.IMAP4, new: dict[str, list] | None = None
                  ) -> dict[str, list]:
    """Every untagged response filed so far, replaced by ``new`` (default: none): the
    responses of one pipelined reply, or a SELECT's fresh start (as imaplib's select())."""
    old = imap.untagged_responses
    imap.untagged_responses = {} if new is None else new
    return old


def tag_count(imap: imaplib.IMAP4) -> int:
    """How many commands imaplib has tagged: unchanged means nothing was sent since."""
    return imap.tagnum


def state_of(imap: imaplib.IMAP4) -> str:
    """imaplib's connection state: NONAUTH, AUTH, SELECTED or LOGOUT."""
    return imap.state


def set_selected(imap: imaplib.IMAP4, selected: bool) -> None:
    """imaplib's state after a SELECT it did not send itself (one on a pipeline): its
    command checks then allow (or refuse) commands of the selected state, read-write."""
    imap.state = "SELECTED" if selected else "AUTH"
    imap.is_readonly = False


def reader(imap: imaplib.IMAP4) -> Any:
    """imaplib's buffered reader: whether a response has begun arriving is whether it holds a
    byte (idle_stream.py peeks at it)."""
    return imap.file


class ImapIO(NamedTuple):
    """imaplib's own reading and writing methods of one connection."""

    read: Callable[[int], bytes]
    readline: Callable[[], bytes]
    send: Callable[[bytes], None]
    append_untagged: Callable[[str, object], None]


def hook_io(imap: imaplib.IMAP4, hooks: ImapIO) -> ImapIO:
    """Put ``hooks`` in place of imaplib's read, readline, send and _append_untagged on this
    connection (imaplib reads and files every response through them) and return imaplib's
    own, bound to it: ReplyGuard bounds what a server may make us hold."""
    cls = type(imap)
    own = ImapIO(cls.read.__get__(imap), cls.readline.__get__(imap), cls.send.__get__(imap),
                 cls._append_untagged.__get__(imap))
    imap.read = hooks.read  # type: ignore[method-assign]
    imap.readline = hooks.readline  # type: ignore[method-assign]
    imap.send = hooks.send  # type: ignore[method-assign]
    imap._append_untagged = hooks.append_untagged  # type: ignore[method-assign]
    return own
