"""Thin IMAP adapter on imapclient: connect (TLS verified, STARTTLS or implicit), log in,
capabilities, folder list and status, batched UID FETCH (CHANGEDSINCE/VANISHED), UID STORE,
APPEND (APPENDUID), UID EXPUNGE / MOVE. No sync decisions here.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import re
import ssl
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from syncd.core import flags as flagmap
from syncd.core.flags import Flags
from syncd.core.folders import Namespace, personal_namespace
from syncd.core.message import IGNORED_FIELDS, header_identity
from syncd.core.model import FolderStatus, RemoteFolder
from syncd.errors import AccountError, FolderError, login_refused
from syncd.imap import wire
from syncd.imap.refusals import MAX_REFUSALS_IN_A_ROW, is_refusal
from syncd.net import connect_failed, take_dialed, tls_context

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from syncd.auth.oauth import OAuthSasl, TokenProvider
    from syncd.config.load import AccountSettings

log = logging.getLogger("syncd.imap")


# Before imapclient is first imported (see wire.spare_version_lookup).
wire.spare_version_lookup()

# Capabilities worth reporting, in the order `syncd check` prints them.
INTERESTING_CAPABILITIES = (
    "IDLE", "CONDSTORE", "QRESYNC", "UIDPLUS", "MOVE", "NOTIFY", "COMPRESS=DEFLATE",
    "LIST-STATUS", "LITERAL+", "SPECIAL-USE",
)

# Bound each UID FETCH of bodies by count and by bytes so memory stays flat however large the
# folder is (imaplib holds one response in memory).
FETCH_BATCH_COUNT = 500
FETCH_BATCH_BYTES = 2 * 1024 * 1024
#: Body FETCH batches in flight on one connection: each next batch's command is written before
#: the previous reply is read, so the link never idles for a round trip between batches. One
#: at a time held a 100 ms link to ~2 MiB per round trip (issue 21); three, to ~6 MiB, which
#: a single connection's last folder still felt (20k corpus at 100 ms: 12.2 s with 3, 10.8 s
#: with 8). Unread replies wait in the socket buffers, so memory stays one batch.
FETCH_PIPELINE_DEPTH = 8
# Flag/metadata fetches and STOREs: how many UIDs go into one command line.
UID_SET_CHUNK = 5000
#: A body literal above this goes to disk as it arrives (fetch_bodies' spool), never whole
#: into memory; smaller ones keep the fast in-memory path (most mail).
SPOOL_LITERAL_MIN = 1024 * 1024
#: A message above this goes up by a streamed APPEND (wire.append_streamed).
STREAM_APPEND_MIN = 1024 * 1024


class SpooledLiteral(Protocol):
    """A body literal written to disk as it arrived (syncd.store.maildir.Written)."""

    server_bytes: int

    def discard(self) -> None: ...


class LiteralSink(Protocol):
    """Where one big literal is written chunk by chunk (syncd.store.maildir.TmpWriter)."""

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> SpooledLiteral: ...

    def abort(self) -> None: ...


#: A fetched body: its bytes, or the file it was spooled to.
FetchedBody = bytes | SpooledLiteral


class AppendSource(NamedTuple):
    """A message to APPEND without holding it: ``size`` bytes on the wire, and a function
    that yields them from the start each time it is called (a refused keyword means a second
    APPEND)."""

    size: int
    chunks: Callable[[], Iterator[bytes]]


class SelectInfo(NamedTuple):
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    # The letters the folder keeps (PERMANENTFLAGS; all of them when the server sent none).
    storable: Flags = flagmap.ALL_LETTERS


class ExpungeRequest(NamedTuple):
    """What send_expunge wrote on a pipeline; finish_expunge reads the replies."""

    uids: frozenset[int]
    stores: tuple[int, ...]  # reply indexes of the UID STOREs of \Deleted
    expunges: tuple[int, ...]  # reply indexes of the UID EXPUNGEs (UIDPLUS)
    search: int | None  # reply index of the UID SEARCH DELETED (no UIDPLUS)


class ExpungeOutcome(NamedTuple):
    """``expunged``: gone from the server. ``deferred``: marked \\Deleted but left in place,
    because other messages were marked \\Deleted too and only a plain EXPUNGE was possible
    (``others`` are those UIDs). A refused STORE/EXPUNGE puts a UID in neither."""

    expunged: frozenset[int] = frozenset()
    deferred: frozenset[int] = frozenset()
    others: frozenset[int] = frozenset()


class FlagChanges(NamedTuple):
    """Result of a flag fetch: UID -> flags for every message reported, plus the UIDs the server
    reported as VANISHED (QRESYNC) — only meaningful for CHANGEDSINCE fetches."""

    flags: dict[int, Flags]
    vanished: frozenset[int]


class MessageMeta(NamedTuple):
    """What pairing needs of a server message the state does not know."""

    size: int  # RFC822.SIZE
    message_id: str | None
    # Of ``size``: fields a server or tool adds (X-UID, Status, X-UIDL...; see
    # syncd.core.message), so that a copy with them still pairs by size.
    trace_bytes: int = 0


# The header fields fetched for pairing: the Message-ID and the ones whose bytes do not count.
_PAIRING_FIELDS = ("BODY.PEEK[HEADER.FIELDS (MESSAGE-ID "
                   + " ".join(sorted(name.upper() for name in IGNORED_FIELDS)) + ")]")


class SelectChanges(NamedTuple):
    """What a pipelined SELECT brought besides the folder's numbers (see select_with_changes):
    None where the server refused or answered in a shape we do not parse; the caller then
    asks again the ordinary way."""

    changes: FlagChanges | None
    #: UID -> MessageMeta of the messages from the old UIDNEXT on.
    meta: dict[int, MessageMeta] | None
    #: ``changes`` is set and holds every message's flags (select_initial), not only what
    #: changed since a modseq: only then may it stand for UID FETCH 1:* FLAGS.
    complete: bool = False


class Reply(NamedTuple):
    """The tagged reply to one pipelined command, with every untagged response read after the
    previous reply and before this one (see Pipeline for why that is not "its own data")."""

    command: str
    status: str  # OK, NO or BAD
    text: str
    untagged: dict[str, list]

    @property
    def ok(self) -> bool:
        return self.status == "OK"


_BODY_LITERAL = re.compile(rb"BODY\[\] \{\d+\}")
_TEXT_LITERAL = re.compile(rb"BODY\[TEXT\] \{\d+\}")
_TEXT_EMPTY = re.compile(rb'BODY\[TEXT\] (?:""|NIL)')
_UID_ITEM = re.compile(rb"[( ]UID (\d+)")
_INTERNALDATE_ITEM = re.compile(rb'INTERNALDATE "([^"]+)"')
_FLAGS_ITEM = re.compile(rb"FLAGS \(([^)]*)\)")
_SIZE_ITEM = re.compile(rb"RFC822\.SIZE (\d+)")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)
_COPYUID = re.compile(rb"\[COPYUID (\d+) (\S+) (\S+)\]", re.IGNORECASE)


_INTERNALDATE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {name: number for number, name in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
     b"dec"), start=1)}
_ZONES: dict[int, dt.timezone] = {}


def parse_internaldate(text: bytes) -> dt.datetime | None:
    """An INTERNALDATE ("17-Jul-1996 02:44:25 -0700") as an aware datetime; None if it is not
    a valid one. The RFC 3501 form is matched directly: imapclient's general date parser cost
    ~50 us a message. Anything else goes to that parser."""
    match = _INTERNALDATE.fullmatch(text)
    month = _MONTHS.get(match.group(2).lower()) if match is not None else None
    if match is None or month is None:
        from imapclient.datetime_util import parse_to_datetime

        try:
            return parse_to_datetime(text)
        except ValueError:
            return None
    day, _, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    offset = (int(zone_h) * 60 + int(zone_m)) * (-1 if sign == b"-" else 1)
    zone = _ZONES.get(offset)
    if zone is None:
        zone = _ZONES.setdefault(offset, dt.timezone(dt.timedelta(minutes=offset)))
    try:
        return dt.datetime(int(year), month, int(day), int(hour), int(minute), int(second),
                           tzinfo=zone)
    except ValueError:
        return None  # 31-Feb, hour 25, ...


def parse_uid_set(text: str | bytes) -> set[int]:
    """'1:3,7' -> {1, 2, 3, 7} (ranges in either order)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    result: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            low, high = (int(x) for x in part.split(":", 1))
            if low > high:
                low, high = high, low
            result.update(range(low, high + 1))
        else:
            result.add(int(part))
    return result


def format_uid_set(uids: Iterable[int]) -> str:
    """{1,2,3,7} -> '1:3,7': compact command lines for large sets."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _oauth2_login(client: IMAPClient, account: AccountSettings,
                  tokens: TokenProvider | None) -> str:
    """AUTHENTICATE with an OAuth2 access token; refreshed and retried once if rejected.
    Returns the mechanism used."""
    from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

    from syncd.auth.oauth import SaslRejected, choose_mechanism, login_with_oauth2

    advertised = [c.decode("ascii", "replace")[5:] for c in client.capabilities()
                  if c.upper().startswith(b"AUTH=")]
    mechanism = choose_mechanism(advertised)

    def authenticate(sasl: OAuthSasl) -> None:
        try:
            client.sasl_login(mechanism, sasl.imap_callback(account.username))
        except IMAPClientError as exc:
            if isinstance(exc, IMAPClientAbortError) or isinstance(exc.__context__,
                                                                   IMAPClientAbortError):
                # The connection broke: not a verdict on the token (mapped to "network").
                raise ConnectionError("the connection broke during AUTHENTICATE") from None
            raise SaslRejected(str(exc)) from None

    login_with_oauth2(account, mechanism, account.host, account.port, authenticate, tokens)
    return mechanism


def _starttls(client: IMAPClient, account: AccountSettings, context: ssl.SSLContext) -> None:
    """STARTTLS before anything else is sent; every way it cannot happen is an AccountError,
    never a fall-back to plaintext."""
    from imapclient.exceptions import IMAPClientError

    name = account.name
    if not client.has_capability("STARTTLS"):
        raise AccountError(
            name, f"{account.host}:{account.port} does not offer STARTTLS; refusing "
            "to continue in plaintext (use tls: implicit, or a server that offers "
            "STARTTLS)", cause="tls")
    if wire.state_of(wire.imaplib_of(client)) != "NONAUTH":
        # A PREAUTH greeting: the session is already authenticated, in plaintext.
        raise AccountError(
            name, f"{account.host}:{account.port} greeted with PREAUTH (an "
            "unencrypted, already authenticated session); refusing to continue "
            "without TLS", cause="tls")
    try:
        client.starttls(context)
    except IMAPClientError as exc:
        # The server announced STARTTLS and then refused it (NO/BAD): never fall back to
        # plaintext. TLS handshake failures are ssl errors, mapped by the caller.
        raise AccountError(
            name, f"{account.host}:{account.port} refused STARTTLS ({exc}); "
            "refusing to continue in plaintext", cause="tls") from None
    # Capabilities may change after STARTTLS (RFC 3501 6.2.1): forget the cache.
    wire.forget_capabilities(client)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ImapSession:
    """One authenticated IMAP connection for one account."""

    def __init__(self, account: AccountSettings, client: IMAPClient) -> None:
        self.account = account
        self.client = client
        _quiet_imaplib(client)
        self.guard = ReplyGuard.install(client)
        self.guard.where = lambda: account.host
        self.capabilities: frozenset[str] = frozenset(
            c.decode("ascii", "replace").upper() for c in client.capabilities()
        )
        self.selected: str | None = None
        self._selected_uidnext: int | None = None  # UIDNEXT of the last SELECT
        self.auth_mechanism = "LOGIN"  # or the SASL mechanism used (OAUTHBEARER, XOAUTH2)
        # ENABLE waits for the first command that needs it (SELECT, NOTIFY): a sync with
        # nothing to do never selects, and at 20 ms RTT each round trip is 10% of its time.
        # STATUS (HIGHESTMODSEQ) needs only the capability (RFC 7162 3.1.2).
        self.qresync = False
        self.condstore = bool({"CONDSTORE", "QRESYNC"} & self.capabilities)
        self._enabled = False
        # STATUS of every folder from the LIST that listed them (LIST-STATUS), for the
        # status_all() right after it: (imaplib tag counter then, the statuses).
        self._listed_statuses: tuple[int, dict[str, FolderStatus]] | None = None
        # The personal namespace (RFC 2342), asked once per connection together with the
        # first LIST (see list_folders); None until then.
        self._namespace: Namespace | None = None

    # --- connection -----------------------------------------------------------------------
    @classmethod
    def connect(cls, account: AccountSettings, password: Callable[[], str], *,
                tokens: TokenProvider | None = None) -> ImapSession:
        """Connect, secure and log in. Every failure is an AccountError naming the account and
        the cause; no plaintext LOGIN is ever sent on an unverified or unencrypted connection
        unless the config says `tls: none` with `allow_insecure: true`.

        With `auth: oauth2` the login is SASL OAUTHBEARER or XOAUTH2 (whichever the server
        advertises) with an access token from ``tokens`` (default: the account's shared
        TokenProvider); ``password`` is then not called."""
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError

        name = account.name
        _refuse_while_paused(account)
        context = tls_context(name, account.tls_ca_file)
        try:
            sock = take_dialed(account)
            client_class = IMAPClient if sock is None else wire.client_on_socket()
            client = client_class(account.host, port=account.port,
                                  ssl=account.tls == "implicit", ssl_context=context,
                                  timeout=account.timeout,
                                  **({} if sock is None else {"sock": sock}))
        except Exception as exc:
            raise connect_failed(account, exc) from None
        _quiet_imaplib(client)
        guard = ReplyGuard.install(client)  # hostile-server limits (fault suite): see ReplyGuard
        guard.account = name  # throttling replies pause the account (syncd/config/providers.py)
        try:
            if account.tls == "starttls":
                _starttls(client, account, context)
            mechanism = _log_in(client, account, password, tokens, guard)
            # Never the pre-login list: servers add capabilities after LOGIN (RFC 3501 6.2.3),
            # and some (Exchange) put none in the OK of LOGIN. imapclient then asks CAPABILITY
            # (see ImapSession.__init__) unless the login reply carried a [CAPABILITY ...].
            wire.forget_capabilities(client)
            session = cls(account, client)
            session.auth_mechanism = mechanism
            return session
        except AccountError:
            _close_quietly(client)
            raise
        except IMAPClientError as exc:
            _close_quietly(client)
            raise AccountError(name, f"{account.host}: {exc}", cause="protocol") from None
        except Exception as exc:
            _close_quietly(client)
            raise connect_failed(account, exc) from None

    def _enable_extensions(self) -> None:
        # ENABLE QRESYNC makes SELECT report HIGHESTMODSEQ and EXPUNGEs arrive as VANISHED;
        # CONDSTORE alone still gives cheap CHANGEDSINCE flag fetches.
        if self._enabled:
            return
        self._enabled = True
        if "ENABLE" not in self.capabilities:
            self.condstore = "CONDSTORE" in self.capabilities
            return
        wanted = [c for c in ("QRESYNC", "CONDSTORE") if c in self.capabilities]
        if not wanted:
            return
        enabled = {c.decode().upper() if isinstance(c, bytes) else c.upper()
                   for c in self.client.enable(*wanted)}
        self.qresync = "QRESYNC" in enabled
        self.condstore = self.qresync or "CONDSTORE" in enabled

    def notify_every_folder(self) -> None:
        """NOTIFY (RFC 5465): report new mail, expunges and flag changes of every personal
        folder on this connection, as STATUS responses (nothing should be selected)."""
        import imaplib

        imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))
        self._enable_extensions()  # STATUS responses then carry HIGHESTMODSEQ
        typ, data = wire.simple_command(wire.imaplib_of(self.client), "NOTIFY",
                                        "SET (personal (MessageNew MessageExpunge FlagChange))")
        if typ != "OK":
            raise AccountError(self.account.name, f"NOTIFY refused: {data}", cause="protocol")

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    def close(self) -> None:
        _close_quietly(self.client)

    def noop(self) -> None:
        self.client.noop()

    # --- folders --------------------------------------------------------------------------
    def list_folders(self) -> list[RemoteFolder]:
        """Every folder. With LIST-STATUS the same round trip also brings each folder's STATUS,
        kept for the status_all() that follows (a no-change sync is then one LIST in all).
        The first listing of a connection also brings the personal namespace: NAMESPACE is
        written ahead of the LIST and answered in the same round trip."""
        self._listed_statuses = None
        namespace_tag = self._send_namespace() if self._namespace is None else None
        listing = None
        if "LIST-STATUS" in self.capabilities:
            listing = self._list_with_status()
        if listing is None:
            listing = self.client.list_folders()
        if namespace_tag is not None:
            self._namespace = self._take_namespace(namespace_tag)
        result = []
        special = "SPECIAL-USE" in self.capabilities
        for raw_flags, delimiter, name in listing:
            flag_set = {f.decode("ascii", "replace") if isinstance(f, bytes) else f
                        for f in raw_flags}
            lowered = {f.lower() for f in flag_set}
            use = None
            if special:
                for flag in flag_set:
                    if flag.lower() in ("\\sent", "\\trash", "\\drafts", "\\junk",
                                        "\\archive", "\\all", "\\flagged"):
                        use = flag
            delim = delimiter.decode("ascii", "replace") if isinstance(delimiter, bytes) \
                else delimiter
            result.append(RemoteFolder(
                name=str(name), delimiter=delim or None,
                noselect="\\noselect" in lowered or "\\nonexistent" in lowered,
                special_use=use))
        return result

    def personal_namespace(self) -> Namespace:
        """The personal namespace: prefix and delimiter under which new folders are created.
        Known after the first list_folders() (no round trip of its own); asked now otherwise.
        A server without NAMESPACE (or with no personal namespace) has no prefix."""
        if self._namespace is None:
            tag = self._send_namespace()
            self._namespace = self._take_namespace(tag) if tag is not None else Namespace()
        return self._namespace

    def _send_namespace(self) -> bytes | None:
        """Write NAMESPACE without waiting for its reply: imaplib files the tagged reply
        under its tag while it reads the next command's (the LIST), and _take_namespace picks
        both up. None if the server does not offer NAMESPACE."""
        if "NAMESPACE" not in self.capabilities:
            return None
        return wire.write_command(wire.imaplib_of(self.client), b"NAMESPACE")

    def _take_namespace(self, tag: bytes) -> Namespace:
        imap = wire.imaplib_of(self.client)
        typ, _ = wire.tagged_reply(imap, tag)
        raw = wire.take_untagged(imap, "NAMESPACE")
        if typ != "OK" or not raw:
            return Namespace()  # refused: behave as a server without NAMESPACE
        return parse_namespace(raw)  # a list: a prefix may come as a literal

    def _status_items(self) -> list[str]:
        return ["MESSAGES", "UIDNEXT", "UIDVALIDITY", *(["HIGHESTMODSEQ"] if self.condstore
                                                       else [])]

    def _list_with_status(self) -> list[tuple] | None:
        """LIST "" "*" RETURN (STATUS (...)): the folders as imapclient's list_folders() gives
        them, with the statuses kept in _listed_statuses; None if the reply is not usable."""
        if self.selected is not None:
            return None  # STATUS of the selected folder would lag (see status_all)
        reply = self._list_status(special_use="SPECIAL-USE" in self.capabilities)
        if reply is None:
            return None
        raw_list, statuses = reply
        try:
            listing = wire.parse_folder_list(self.client, raw_list)
        except Exception:
            return None  # extended data we do not parse: the plain LIST will do
        if not all(isinstance(flags, tuple) and isinstance(name, str)
                   for flags, _delimiter, name in listing):
            return None
        self._listed_statuses = (wire.tag_count(wire.imaplib_of(self.client)), statuses)
        return listing

    def status_all(self, names: Sequence[str]) -> dict[str, FolderStatus]:
        """Status of many folders. With LIST-STATUS this is one round trip for all of them, or
        none right after list_folders()."""
        listed, self._listed_statuses = self._listed_statuses, None
        if listed is not None and listed[0] == wire.tag_count(wire.imaplib_of(self.client)) \
                and self.selected is None:
            # No command since the LIST: its statuses are as fresh as a new STATUS would be.
            statuses = dict(listed[1])
        else:
            if self.selected is not None:
                # STATUS of the selected mailbox reports this session's view, which lags until
                # the session syncs it (RFC 3501 6.3.10): leave the mailbox first (never CLOSE,
                # which would expunge \Deleted messages).
                if "UNSELECT" in self.capabilities:
                    self.client.unselect_folder()
                else:
                    self.client.noop()
                self.selected = None
            reply = self._list_status() if "LIST-STATUS" in self.capabilities else None
            statuses = reply[1] if reply is not None else {}
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

        for name in [n for n in names if n not in statuses]:
            try:
                raw = self.client.folder_status(name, self._status_items())
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                # A folder the server lists but refuses STATUS for (permissions, a folder
                # being deleted): no status, so its sync SELECTs it and reports what the
                # server says there, as that folder's error. The others go on.
                log.debug("%s: STATUS %r refused: %s", self.account.name, name, exc)
                continue
            statuses[name] = _status_from(raw)
        return {name: statuses[name] for name in names if name in statuses}

    def _list_status(self, *, special_use: bool = False
                     ) -> tuple[list, dict[str, FolderStatus]] | None:
        """One LIST "" "*" RETURN (STATUS (...)): the raw LIST responses and every folder's
        STATUS, or None if the server refused it."""
        imap = wire.imaplib_of(self.client)
        returns = (["SPECIAL-USE"] if special_use else []) + [
            f"STATUS ({' '.join(self._status_items())})"]
        typ, _ = wire.simple_command(imap, "LIST", '""', '"*"', f"RETURN ({' '.join(returns)})")
        if typ != "OK":
            return None
        raw_list = wire.untagged(imap, "LIST")
        return raw_list, self._parse_statuses(imap)

    @staticmethod
    def _parse_statuses(imap: Any) -> dict[str, FolderStatus]:
        from imapclient.imap_utf7 import decode as decode_utf7

        raw_statuses = wire.untagged(imap, "STATUS")
        result: dict[str, FolderStatus] = {}
        for raw in raw_statuses:
            if raw is None:
                continue
            parsed = wire.parse_response([raw])
            if len(parsed) < 2:
                continue
            name = parsed[0]
            name = decode_utf7(name) if isinstance(name, bytes) else str(name)
            result[name] = _status_from(dict(_pairs(parsed[-1])))
        return result

    def create_folder(self, name: str) -> None:
        """CREATE; a refusal is that folder's FolderError (with the server's words), unless
        the folder exists after all."""
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

        try:
            self.client.create_folder(name)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            # Another client (or our own earlier, interrupted run) may have created it.
            if not any(f.name == name for f in self.list_folders()):
                raise FolderError(self.account.name, name,
                                  f"cannot create the folder on the server: "
                                  f"{refusal_text(exc)}") from None

    def select(self, name: str, *, readonly: bool = False) -> SelectInfo:
        """SELECT (EXAMINE with ``readonly``: `syncd check` looks without touching)."""
        from imapclient.exceptions import ProtocolError

        self._enable_extensions()
        try:
            response = self.client.select_folder(name, readonly=readonly)
        except (ValueError, TypeError):  # imapclient's int() of a garbage number
            raise ProtocolError(f"SELECT {name!r}: garbage in the reply") from None
        self.selected = name
        wire.take_untagged(wire.imaplib_of(self.client), "VANISHED")
        info = _select_info(name, response)
        self._selected_uidnext = info.uidnext
        return info

    def select_with_changes(self, name: str, changedsince: int, new_from: int | None
                            ) -> tuple[SelectInfo, SelectChanges]:
        """SELECT, the flags changed since a modseq (with VANISHED under QRESYNC) and the size
        and Message-ID of the UIDs from ``new_from`` on (None: not asked, meta is None),
        pipelined: one round trip where select() + fetch_flags() + fetch_meta() take three.
        The fetches are sent before the SELECT's reply is known; the caller decides from the
        SelectInfo whether their answers apply (same UIDVALIDITY), exactly as it would before
        asking for them."""
        self._enable_extensions()  # before the SELECT (VANISHED needs QRESYNC enabled)
        modifiers = f"(CHANGEDSINCE {changedsince}{' VANISHED' if self.qresync else ''})"
        # The SELECT's UIDNEXT is not known yet: the largest UID bounds every one we know.
        fetches: list[tuple[str | bytes, ...]] = [
            ("UID", "FETCH", _vanished_range(None) if self.qresync else "1:*", "(UID FLAGS)",
             modifiers)]
        if new_from is not None:
            fetches.append(("UID", "FETCH", f"{new_from}:*",
                            f"(UID RFC822.SIZE {_PAIRING_FIELDS})"))
        info, (flags_reply, *rest) = self._select_pipelined(name, fetches)
        return info, _select_changes(flags_reply, rest[0] if rest else None, self.qresync)

    def select_initial(self, name: str, *, sizes: bool) -> tuple[SelectInfo, SelectChanges]:
        """SELECT and every message's flags (with ``sizes``, their RFC822.SIZE too: what a
        first sync into a folder with nothing to pair needs of each), pipelined: a folder's
        first sync has its whole view after one round trip where select() + fetch_flags() +
        fetch_meta() take three (issue 21: on a 100 ms link, 0.2 s a folder). Changes or meta
        are None when the server refuses the FETCH (an empty folder's 1:* on some servers):
        the caller then asks as it would have."""
        self._enable_extensions()
        items = "(UID FLAGS RFC822.SIZE)" if sizes else "(UID FLAGS)"
        info, (reply,) = self._select_pipelined(name, [("UID", "FETCH", "1:*", items)])
        got = _select_changes(reply, reply if sizes else None, qresync=False)
        # Trusted only when it names as many messages as the SELECT counted: a server that
        # left FLAGS or sizes out of some records (or a message that came or went between the
        # two) makes the caller ask the ordinary way instead of taking the folder for smaller.
        flags = got.changes.flags if got.changes is not None else None
        if flags is None or len(flags) != info.exists:
            return info, SelectChanges(None, None)
        meta = got.meta if got.meta is not None and got.meta.keys() == flags.keys() else None
        return info, SelectChanges(got.changes, meta, complete=True)

    def select_searching(self, name: str, since: dt.date | None
                         ) -> tuple[SelectInfo, set[int] | None]:
        """SELECT with one UID SEARCH sent behind it before its reply: SINCE ``since`` (an age
        window's first sync, whose window is all it needs) or, with None, ALL (every UID of a
        windowed folder, to tell what left the window from what was expunged): one round trip
        where select() and the search take two (issue 18: 0.1 s a folder at 100 ms). One
        search only: plain SEARCH responses carry no tag, and two pipelined ones could not be
        told apart. The UIDs are None when the server refused the SEARCH or answered in a shape
        we do not read: the caller then asks the ordinary way."""
        from imapclient.datetime_util import format_criteria_date

        self._enable_extensions()
        criteria = ("SINCE", format_criteria_date(since)) if since is not None else ("ALL",)
        info, (reply,) = self._select_pipelined(name, [("UID", "SEARCH", *criteria)])
        uids = _searched(reply)
        if since is None and uids is not None and len(uids) != info.exists:
            # Every UID must be as many as the SELECT counted: a reply cut short (or a message
            # that came or went in between) would pass folders' messages for expunged. Asked
            # again the ordinary way, as select_initial does.
            return info, None
        return info, uids

    def _select_pipelined(self, name: str, commands: list[tuple[str | bytes, ...]]
                          ) -> tuple[SelectInfo, list[Reply]]:
        """SELECT ``name`` with these commands (their words: UID FETCH or UID SEARCH of the
        folder) sent behind it before its reply; the SelectInfo and the commands' replies. A
        refused SELECT raises (the commands then failed too: no folder selected)."""
        from imapclient.exceptions import ProtocolError

        imap = wire.imaplib_of(self.client)
        # As imaplib's select(): the old mailbox's responses must not pass for the new one's.
        wire.swap_untagged(imap)
        pipe = Pipeline(self)
        pipe.send("SELECT", wire.folder_argument(self.client, name))
        for words in commands:
            pipe.send(*words)
        selected, *replies = pipe.replies()
        wire.set_selected(imap, selected.ok)
        if not selected.ok:
            self.selected = None
            raise_refused([selected])
        self.selected = name
        try:
            response = wire.parse_select(self.client, selected.untagged)
        except (ValueError, TypeError, IndexError):
            raise ProtocolError(f"SELECT {name!r}: garbage in the reply") from None
        info = _select_info(name, response)
        self._selected_uidnext = info.uidnext
        return info, replies

    def pipeline(self) -> Pipeline:
        return Pipeline(self)

    def send_store(self, pipe: Pipeline, uids: Sequence[int], add: Flags,
                   remove: Flags) -> list[int]:
        """UID STORE +FLAGS/-FLAGS on a pipeline: the commands are written, not yet answered;
        returns their indexes in pipe.replies()."""
        sent = []
        for chunk in _chunks(sorted(uids), UID_SET_CHUNK):
            uid_set = format_uid_set(chunk)
            for sign, flags in (("+", add), ("-", remove)):
                if flags:
                    sent.append(pipe.send("UID", "STORE", uid_set, f"{sign}FLAGS.SILENT",
                                          f"({' '.join(flagmap.to_imap(flags))})"))
        return sent

    def send_expunge(self, pipe: Pipeline, uids: Sequence[int]) -> ExpungeRequest:
        """The first half of expunging exactly these UIDs, on a pipeline: \\Deleted on them,
        then UID EXPUNGE of them (UIDPLUS), or else UID SEARCH DELETED, which finish_expunge
        needs to decide whether a plain EXPUNGE would remove anything else."""
        stores: list[int] = []
        expunges: list[int] = []
        for chunk in _chunks(sorted(uids), UID_SET_CHUNK):
            uid_set = format_uid_set(chunk)
            stores.append(pipe.send("UID", "STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)"))
            if uids and "UIDPLUS" in self.capabilities:
                expunges.append(pipe.send("UID", "EXPUNGE", uid_set))
        search = None
        if uids and "UIDPLUS" not in self.capabilities:
            search = pipe.send("UID", "SEARCH", "DELETED")
        return ExpungeRequest(frozenset(uids), tuple(stores), tuple(expunges), search)

    def _still_there(self, uids: frozenset[int], replies: Sequence[Reply]) -> frozenset[int]:
        """Which of ``uids`` an OK'd UID EXPUNGE left in place. The OK does not promise that
        every one went: Dovecot keeps a message whose file another session renamed at that
        instant (a flag change), and syncd would then forget a message the server still has.
        Under QRESYNC the expunge's own VANISHED responses say what went (what they do not
        name counts as still there: the next sync asks again); otherwise one UID SEARCH,
        after the expunge's reply (pipelined with it, Dovecot ran the SEARCH first)."""
        if self.qresync:
            vanished = _vanished_from([line for reply in replies
                                       for line in reply.untagged.get("VANISHED", [])])
            return uids - vanished
        pipe = self.pipeline()
        for chunk in _chunks(sorted(uids), UID_SET_CHUNK):
            pipe.send("UID", "SEARCH", "UID", format_uid_set(chunk))
        found = pipe.replies()
        if not all(reply.ok for reply in found):
            return uids  # unknown: the rows stay, the next sync expunges again
        return frozenset(_search_uids(found) & uids)

    def finish_expunge(self, request: ExpungeRequest, replies: Sequence[Reply]
                       ) -> ExpungeOutcome:
        """The second half (see send_expunge). Without UIDPLUS a plain EXPUNGE removes every
        message marked \\Deleted: one that another client marked, or one that mutt only marked
        T (which syncd pushes as \\Deleted, and which the user can still undelete). So it is
        sent only when the folder's \\Deleted set, searched just now, is ours alone; otherwise
        ours stay marked and the caller retries at a later sync. (Between the SEARCH and the
        EXPUNGE another client could still mark one: one round trip, the least without
        UIDPLUS.)"""
        if not request.uids or not all(replies[i].ok for i in request.stores):
            return ExpungeOutcome()
        if request.search is None:
            if not all(replies[i].ok for i in request.expunges):
                return ExpungeOutcome()
            left = self._still_there(request.uids, replies)
            if left:
                log.info("%s: %d message(s) still there after UID EXPUNGE; retried at the "
                         "next sync", self.account.name, len(left))
            return ExpungeOutcome(expunged=request.uids - left)
        if not replies[request.search].ok:
            return ExpungeOutcome(deferred=request.uids)
        marked = _search_uids(replies)
        others = frozenset(marked - request.uids)
        if others:
            log.info("%s: %d message(s) marked \\Deleted by someone else; the expunge of %d "
                     "deleted locally waits for a later sync (no UIDPLUS)", self.account.name,
                     len(others), len(request.uids))
            return ExpungeOutcome(deferred=request.uids, others=others)
        pipe = self.pipeline()
        pipe.send("EXPUNGE")
        [reply] = pipe.replies()
        if not reply.ok:
            return ExpungeOutcome(deferred=request.uids)
        return ExpungeOutcome(expunged=request.uids)

    def send_fetch_flags(self, pipe: Pipeline, uids: Sequence[int]) -> list[int]:
        """UID FETCH (UID FLAGS) of these UIDs on a pipeline (read back with flags_in)."""
        return [pipe.send("UID", "FETCH", format_uid_set(chunk), "(UID FLAGS)")
                for chunk in _chunks(sorted(uids), UID_SET_CHUNK)]

    # --- fetches --------------------------------------------------------------------------
    def _fetch(self, uid_set: str, items: Sequence[str],
               modifiers: Sequence[str] | None = None) -> dict[int, dict[bytes, object]]:
        """UID FETCH with a UID-set string ("1:*", "3:9,12"); imapclient's fetch() only takes
        explicit UID lists. Responses are keyed by UID."""
        data = wire.uid_fetch(self.client, uid_set, wire.parenthesised(items),
                              *([wire.parenthesised(modifiers)] if modifiers else []))
        return wire.parse_fetch(self.client, data)

    def fetch_flags(self, changedsince: int | None = None) -> FlagChanges:
        """Flags of every message (UID FETCH 1:* FLAGS), or only of those changed since a
        modseq (plus VANISHED UIDs when QRESYNC is on)."""
        modifiers = None
        uid_set = "1:*"
        if changedsince is not None:
            modifiers = [f"CHANGEDSINCE {changedsince}"]
            if self.qresync:
                modifiers.append("VANISHED")
                uid_set = _vanished_range(self._selected_uidnext)
        records = self._fetch_records(
            uid_set, "(UID FLAGS)", f"({' '.join(modifiers)})" if modifiers else None)
        flags = _flags_from(records)
        if flags is None:
            response = self._fetch(uid_set, ["FLAGS"], modifiers)
            flags = {uid: flagmap.from_imap(data.get(b"FLAGS", ()))
                     for uid, data in response.items() if b"FLAGS" in data}
        vanished = (self._take_vanished() if changedsince is not None and self.qresync
                    else frozenset())
        return FlagChanges(flags=flags, vanished=vanished)

    def fetch_flags_of(self, uids: Iterable[int]) -> dict[int, Flags]:
        """UID -> flags of just these messages of the selected folder (a window's, a
        placeholder's original), in chunks; those the server no longer has are absent, and so
        are unsolicited updates of other UIDs."""
        wanted = set(uids)
        flags: dict[int, Flags] = {}
        for chunk in _chunks(sorted(wanted), UID_SET_CHUNK):
            uid_set = format_uid_set(chunk)
            found = _flags_from(self._fetch_records(uid_set, "(UID FLAGS)"))
            if found is None:
                found = {uid: flagmap.from_imap(data.get(b"FLAGS", ()))
                         for uid, data in self._fetch(uid_set, ["FLAGS"]).items()
                         if b"FLAGS" in data}
            flags.update((uid, f) for uid, f in found.items() if uid in wanted)
        return flags

    def fetch_flags_and_sizes(self, uids: Iterable[int]
                              ) -> tuple[dict[int, Flags], dict[int, MessageMeta]]:
        """Flags and RFC822.SIZE of just these messages in one UID FETCH per chunk (a
        window's new messages on a first sync: fetch_flags_of() + fetch_meta(message_ids=
        False) in one round trip). Those the server no longer has are absent; a reply of a
        shape we do not read is asked again the two ordinary ways."""
        wanted = set(uids)
        flags: dict[int, Flags] = {}
        meta: dict[int, MessageMeta] = {}
        for chunk in _chunks(sorted(wanted), UID_SET_CHUNK):
            records = self._fetch_records(format_uid_set(chunk), "(UID FLAGS RFC822.SIZE)")
            found_flags = _flags_from(records)
            found_meta = _meta_from(records)
            if found_flags is None or found_meta is None \
                    or found_meta.keys() != found_flags.keys():
                found_flags = self.fetch_flags_of(chunk)
                found_meta = self.fetch_meta(chunk, message_ids=False)
            flags.update((uid, f) for uid, f in found_flags.items() if uid in wanted)
            meta.update((uid, m) for uid, m in found_meta.items() if uid in wanted)
        return flags, meta

    def _take_vanished(self) -> frozenset[int]:
        return _vanished_from(wire.take_untagged(wire.imaplib_of(self.client), "VANISHED") or [])

    def search_since(self, day: dt.date) -> set[int]:
        """The UIDs whose INTERNALDATE is on or after ``day`` (UID SEARCH SINCE): a window's
        messages, without fetching anything of the others."""
        return set(self.client.search(["SINCE", day]))

    def search_all_uids(self) -> set[int]:
        """Every UID in the selected folder (expunge detection without QRESYNC)."""
        return set(self.client.search("ALL"))

    def fetch_meta(self, uids: Iterable[int], *, message_ids: bool = True
                   ) -> dict[int, MessageMeta]:
        """UID -> MessageMeta for pairing. ``message_ids=False``: sizes only (no Message-ID,
        no trace bytes), when there is nothing local to pair with: the server then need not
        parse every header (an initial sync into an empty Maildir)."""
        result: dict[int, MessageMeta] = {}
        ordered = sorted(uids)
        header = f" {_PAIRING_FIELDS}" if message_ids else ""
        for chunk in _chunks(ordered, UID_SET_CHUNK):
            records = self._fetch_records(
                format_uid_set(chunk), f"(UID RFC822.SIZE{header})")
            fast: dict[int, MessageMeta] = {}
            for text, literal in records or ():
                uid = _UID_ITEM.search(text)
                size = _SIZE_ITEM.search(text)
                if uid is None or size is None:
                    fast = {}
                    records = None
                    break
                fast[int(uid.group(1))] = MessageMeta(int(size.group(1)),
                                                      *header_identity(literal or b""))
            if records is not None:
                result.update(fast)
                continue
            response = self._fetch(
                format_uid_set(chunk),
                ["RFC822.SIZE", *([_PAIRING_FIELDS] if message_ids else [])])
            for uid, data in response.items():
                fields = b""
                for key, value in data.items():
                    if key.startswith(b"BODY[HEADER.FIELDS") and isinstance(value, bytes):
                        fields = value
                size = int(data.get(b"RFC822.SIZE", 0))  # type: ignore[call-overload]
                result[uid] = MessageMeta(size, *header_identity(fields))
        return result

    def fetch_subjects(self, uids: Sequence[int]) -> dict[int, str]:
        """UID -> Subject (decoded, one line) of a few messages, to name them in an error;
        those whose header the server will not give either are absent."""
        from syncd.imap.refusals import subject_of

        subjects: dict[int, str] = {}
        for uid in uids:  # one by one: the server may refuse some of these too
            try:
                response = self._fetch(str(uid), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                continue
            for key, value in response.get(uid, {}).items():
                if key.startswith(b"BODY[HEADER.FIELDS") and isinstance(value, bytes):
                    subject = subject_of(value.replace(b"\r\n", b"\n"))
                    if subject:
                        subjects[uid] = subject
        return subjects

    def fetch_bodies(self, wanted: Sequence[tuple[int, int | None]],
                     refused: Callable[[int, str], None] | None = None,
                     spool: Callable[[], LiteralSink] | None = None
                     ) -> Generator[tuple[int, FetchedBody, dt.datetime | None], None, None]:
        """Yield (uid, raw bytes, internaldate) for (uid, size-if-known) pairs, in batches
        bounded by count and bytes, several in flight (see _fetch_bodies_pipelined). Messages
        the server no longer has are silently absent.
        With ``refused``, a batch the server refuses is split down to the messages it will
        not send, each handed to ``refused(uid, server's words)``; the others arrive.
        With ``spool``, a body above SPOOL_LITERAL_MIN is written to a sink it opens as the
        literal arrives and comes as that sink's SpooledLiteral instead of bytes: memory stays
        O(chunk) however big the message (the caller owns, and must deliver or discard, it)."""
        batches = _cut_batches(wanted)
        if len(batches) < 2:
            for batch in self._literal_batches(wanted):
                yield from self._fetch_batch_or_split(batch, refused, spool)
            return
        largest: int | None = 0
        for _, top, _ in batches:
            largest = None if top is None or largest is None else max(largest, top)
        in_flight = max(sum(b[2] for b in batches[k:k + FETCH_PIPELINE_DEPTH])
                        for k in range(len(batches)))
        with self.guard.expecting(largest, in_flight):
            yield from self._fetch_bodies_pipelined([b[0] for b in batches], refused, spool)

    def _fetch_batch_or_split(self, uids: list[int], refused: Callable[[int, str], None] | None,
                              spool: Callable[[], LiteralSink] | None
                              ) -> Iterator[tuple[int, FetchedBody, dt.datetime | None]]:
        if refused is None:
            yield from self._fetch_body_batch(uids, spool)
        else:
            yield from self._fetch_body_batch_split(uids, refused, _RefusalRun(), spool)

    def _fetch_bodies_pipelined(self, batches: list[list[int]],
                                refused: Callable[[int, str], None] | None,
                                spool: Callable[[], LiteralSink] | None
                                ) -> Iterator[tuple[int, FetchedBody, dt.datetime | None]]:
        """Up to FETCH_PIPELINE_DEPTH batches in flight. Bodies are matched by UID, so a
        server that interleaves the replies (RFC 3501 5.5) loses nothing. A reply syncd's
        parser cannot read sends the rest through the sequential path; a refused batch (with
        ``refused``) is split alone after the ones in flight are read, then the pipeline goes
        on; whatever happens, the replies still coming are read before this returns (the
        session stays in step), and spooled bodies nobody took are discarded."""
        todo = collections.deque(batches)
        sent: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        early: dict[int, tuple[FetchedBody, dt.datetime | None]] = {}
        try:
            while todo or sent:
                while todo and len(sent) < FETCH_PIPELINE_DEPTH:
                    uids = todo.popleft()
                    sent.append((wire.send_uid_fetch(self.client, format_uid_set(uids),
                                                     "(UID INTERNALDATE BODY.PEEK[])"), uids))
                tag, uids = sent.popleft()
                try:
                    with self.guard.spooling(spool):
                        data = wire.uid_fetch_reply(self.client, tag)
                except Exception as exc:
                    if refused is None or not is_refusal(exc):
                        raise
                    # Asked again, in order, after this batch is split.
                    todo.extendleft(reversed([u for _, u in sent]))
                    self._drain_fetches(sent, spool)
                    run, middle = _RefusalRun(), len(uids) // 2  # known refused: halved at once
                    for half in ([uids[:middle], uids[middle:]] if middle else [uids]):
                        yield from self._fetch_body_batch_split(half, refused, run, spool)
                    continue
                got = _bodies_from(_records(data))
                _discard_spooled(data, keep=set() if got is None else
                                 {id(body) for body, _ in got.values()})
                if got is None:
                    rest = [uids, *(u for _, u in sent), *todo]
                    self._drain_fetches(sent, spool)
                    todo.clear()
                    for batch in rest:
                        yield from self._fetch_batch_or_split(batch, refused, spool)
                    return
                early.update(got)
                for uid in uids:
                    item = early.pop(uid, None)
                    if item is not None:
                        yield uid, item[0], item[1]
        finally:
            self._drain_fetches(sent, spool)
            for body, _ in early.values():
                if not isinstance(body, bytes):
                    body.discard()

    def _drain_fetches(self, sent: collections.deque[tuple[bytes, list[int]]],
                       spool: Callable[[], LiteralSink] | None) -> None:
        """Read and drop the replies of FETCH commands still in flight (their spooled bodies
        too)."""
        imap = wire.imaplib_of(self.client)
        while sent:
            tag, _ = sent.popleft()
            try:
                with self.guard.spooling(spool):
                    data = wire.uid_fetch_reply(self.client, tag)
            except imap.abort:
                raise
            except Exception:  # a refused batch: nothing of it is used
                log.debug("a pipelined FETCH was refused while draining", exc_info=True)
                continue
            _discard_spooled(data, keep=set())

    def _fetch_body_batch_split(self, uids: list[int], refused: Callable[[int, str], None],
                                run: _RefusalRun, spool: Callable[[], LiteralSink] | None
                                ) -> Iterator[tuple[int, FetchedBody, dt.datetime | None]]:
        """Exchange refuses a whole UID FETCH when one message in it cannot be converted to
        RFC 822 (a calendar or contact item, a damaged item): "NO The requested message could
        not be converted to an RFC-822 compatible format". The batch is asked again in halves,
        down to the messages refused alone, so one bad item costs a few commands, not the
        folder. Refusals of every message alone in a row mean the folder itself is refused:
        the first such refusal is raised (the folder's error)."""
        try:
            bodies = list(self._fetch_body_batch(uids, spool))
        except Exception as exc:
            if not is_refusal(exc):
                raise
            if len(uids) > 1:
                middle = len(uids) // 2
                yield from self._fetch_body_batch_split(uids[:middle], refused, run, spool)
                yield from self._fetch_body_batch_split(uids[middle:], refused, run, spool)
                return
            run.refused(exc)
            refused(uids[0], refusal_text(exc))
            return
        if bodies:
            run.accepted()
        yield from bodies

    def fetch_texts(self, wanted: Sequence[tuple[int, int | None]]
                    ) -> Iterator[tuple[int, bytes]]:
        """Yield (uid, BODY[TEXT]) for (uid, size-if-known) pairs: the body without the header
        block, to confirm a pairing by content (syncd.core.message.body_digest) where sizes
        disagree. Batched like fetch_bodies; messages no longer there are absent."""
        for batch in self._literal_batches(wanted):
            yield from self._fetch_text_batch(batch)

    def _literal_batches(self, wanted: Sequence[tuple[int, int | None]]
                         ) -> Iterator[list[int]]:
        """UID batches bounded by count and announced bytes, each handed out while the reply
        guard expects literals of its size (so that memory stays flat however big the folder
        is, and a hostile server cannot announce more than the batch holds)."""
        for batch, largest, batch_bytes in _cut_batches(wanted):
            with self.guard.expecting(largest, batch_bytes):
                yield batch

    def _fetch_text_batch(self, uids: list[int]) -> Iterator[tuple[int, bytes]]:
        uid_set = format_uid_set(uids)
        records = self._fetch_records(uid_set, "(UID BODY.PEEK[TEXT])")
        texts: dict[int, bytes] = {}
        for text, literal in records or ():
            uid = _UID_ITEM.search(text)
            if uid is None:
                texts, records = {}, None
                break
            if literal is not None and _TEXT_LITERAL.search(text):
                texts[int(uid.group(1))] = literal
            elif _TEXT_EMPTY.search(text):
                texts[int(uid.group(1))] = b""
            # else: an unsolicited FETCH (another client's flag change)
        if records is None:
            response = self._fetch(uid_set, ["BODY.PEEK[TEXT]"])
            texts = {uid: data[b"BODY[TEXT]"] for uid, data in response.items()
                     if isinstance(data.get(b"BODY[TEXT]"), bytes)}
        for uid in uids:
            if uid in texts:
                yield uid, texts.pop(uid)

    def _fetch_body_batch(self, uids: list[int], spool: Callable[[], LiteralSink] | None
                          ) -> Iterator[tuple[int, FetchedBody, dt.datetime | None]]:
        with self.guard.spooling(spool):
            fast = self._fetch_bodies_fast(format_uid_set(uids))
        if fast is not None:
            for uid in uids:
                item = fast.pop(uid, None)
                if item is not None:
                    yield uid, item[0], item[1]
            return
        # A shape the regexes do not read: imapclient's parser, which takes bytes only (the
        # whole message in memory, for such a server).
        response = self._fetch(format_uid_set(uids), ["BODY.PEEK[]", "INTERNALDATE"])
        for uid in uids:
            data = response.pop(uid, None)
            if data is None:
                continue
            body = data.get(b"BODY[]")
            if body is None:
                continue
            yield uid, body, data.get(b"INTERNALDATE")

    def _fetch_records(self, uid_set: str, items: str, modifiers: str | None = None
                       ) -> list[tuple[bytes, bytes | None]] | None:
        """UID FETCH read straight from imaplib's response list as (text, literal) per message,
        the text being everything outside the one literal. imapclient's general parser
        tokenizes every response byte by byte in Python, which was most of the CPU of an
        initial sync; regexes over the short texts do the same for the flat responses syncd
        asks for. None when a response has a shape we do not expect (the caller then uses the
        general parser)."""
        return _records(wire.uid_fetch(self.client, uid_set, items,
                                       *([modifiers] if modifiers else [])))

    def _fetch_bodies_fast(self, uid_set: str
                           ) -> dict[int, tuple[FetchedBody, dt.datetime | None]] | None:
        """None for a reply of a shape we do not read (the caller asks again through
        imapclient); a literal spooled to disk that is not handed out is discarded."""
        data = wire.uid_fetch(self.client, uid_set, "(UID INTERNALDATE BODY.PEEK[])")
        result = _bodies_from(_records(data))
        _discard_spooled(data, keep=set() if result is None else
                         {id(body) for body, _ in result.values()})
        return result

    # --- changes --------------------------------------------------------------------------
    def append(self, folder: str, data: bytes | AppendSource, flags: Flags,
               internaldate: dt.datetime | None) -> int | None:
        """APPEND; returns the new UID when the server reports APPENDUID (UIDPLUS). ``data``
        is the message, or an AppendSource (a big one) streamed with wire.append_streamed.

        Without UIDPLUS the UID is found afterwards by a SEARCH in the folder selected anew,
        so the folder is left first (UNSELECT, never CLOSE): GNU mailutils acknowledges a
        second APPEND into its selected, formerly empty mbox and then loses it."""
        if "UIDPLUS" not in self.capabilities and self.selected == folder \
                and "UNSELECT" in self.capabilities:
            self.client.unselect_folder()
            self.selected = None
        if isinstance(data, AppendSource):
            response = self._append_streamed(folder, data, flags, internaldate)
        else:
            response = self.client.append(folder, data, flagmap.to_imap(flags), internaldate)
        match = _APPENDUID.search(response if isinstance(response, bytes)
                                  else str(response).encode())
        return int(match.group(2)) if match else None

    def _append_streamed(self, folder: str, source: AppendSource, flags: Flags,
                         internaldate: dt.datetime | None) -> object:
        """APPEND with the literal sent in chunks; the same arguments imapclient's append()
        sends, the same error (IMAPClientError) on NO/BAD."""
        from imapclient.exceptions import IMAPClientError

        args = wire.append_arguments(self.client, folder, flagmap.to_imap(flags), internaldate)
        typ, data = wire.append_streamed(wire.imaplib_of(self.client), args, source.size,
                                         source.chunks(), nonsync="LITERAL+" in self.capabilities)
        if typ != "OK":
            text = data[0].decode("utf-8", "replace") if isinstance(data[0], bytes) else data[0]
            raise IMAPClientError(f"append failed: {text}")
        return data[0]

    def fetch_headers(self, uids: Sequence[int]
                      ) -> dict[int, tuple[bytes, int, dt.datetime | None]]:
        """UID -> (header block, RFC822.SIZE, INTERNALDATE) of the selected folder's messages
        (BODY.PEEK[HEADER]: a placeholder's makings, without the body). Messages no longer
        there are absent."""
        found: dict[int, tuple[bytes, int, dt.datetime | None]] = {}
        for chunk in _chunks(sorted(uids), UID_SET_CHUNK):
            response = self._fetch(format_uid_set(chunk),
                                   ["RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER]"])
            for uid, data in response.items():
                header = data.get(b"BODY[HEADER]")
                if not isinstance(header, bytes):
                    continue
                size = int(data.get(b"RFC822.SIZE", 0))  # type: ignore[call-overload]
                date = data.get(b"INTERNALDATE")
                found[uid] = (header, size, date if isinstance(date, dt.datetime) else None)
        return found

    def copy_message(self, uid: int, target: str) -> tuple[int, int] | None:
        """UID COPY one message of the selected folder into ``target``: (UIDVALIDITY, UID) of
        the copy when the server says (COPYUID, UIDPLUS), else None."""
        imap = wire.imaplib_of(self.client)
        # imaplib's uid() answers with the untagged responses only; COPYUID is in the tagged.
        typ, data = wire.simple_command(imap, "UID", "COPY", str(uid),
                                        wire.folder_argument(self.client, target))
        if typ != "OK":
            from imapclient.exceptions import IMAPClientError

            raise IMAPClientError(f"UID COPY to {target!r} refused: {data!r}")
        wire.take_untagged(imap, "VANISHED")
        response = b" ".join(d for d in data if isinstance(d, bytes))
        match = _COPYUID.search(response)
        if match is None or "," in match.group(3).decode() or ":" in match.group(3).decode():
            return None
        return int(match.group(1)), int(match.group(3))

    def replace_flags(self, uid: int, flags: Flags) -> None:
        """UID STORE FLAGS.SILENT: the selected folder's message ``uid`` gets exactly
        ``flags`` (a copy made with the original's flags takes the local file's)."""
        self.client.set_flags([uid], flagmap.to_imap(flags), silent=True)

    def search_message_id(self, message_id: str) -> list[int]:
        return list(self.client.search(["HEADER", "Message-ID", message_id]))

    def expunge(self, uids: Sequence[int]) -> ExpungeOutcome:
        """Expunge exactly these UIDs, and never another message (see finish_expunge)."""
        if not uids:
            return ExpungeOutcome()
        pipe = self.pipeline()
        request = self.send_expunge(pipe, uids)
        outcome = self.finish_expunge(request, pipe.replies())
        wire.take_untagged(wire.imaplib_of(self.client), "VANISHED")
        return outcome

    def move(self, uids: Sequence[int], target: str) -> bool:
        """MOVE these UIDs to ``target``: True. Without MOVE they are only COPYd (False): the
        caller expunges them from this folder, under the rule of finish_expunge, and must
        remember that they are copied already."""
        if not uids:
            return True
        moving = "MOVE" in self.capabilities
        for chunk in _chunks(sorted(uids), UID_SET_CHUNK):
            uid_set = format_uid_set(chunk)
            if moving:
                self.client.move(uid_set, target)
            else:
                self.client.copy(uid_set, target)
        wire.take_untagged(wire.imaplib_of(self.client), "VANISHED")
        return moving


def parse_namespace(raw: object) -> Namespace:
    """The personal namespace from a NAMESPACE response's data (``(("INBOX." ".")) NIL NIL``):
    its first entry, which RFC 2342 makes the default for new folders. Anything we cannot
    read is "no prefix", which is how syncd behaved before it asked."""
    from imapclient.imap_utf7 import decode as decode_utf7

    try:
        parsed = wire.parse_response([raw] if not isinstance(raw, list) else raw)
        personal = parsed[0] if parsed else None
        if not personal or not isinstance(personal, tuple) or not isinstance(personal[0],
                                                                                tuple):
            return Namespace()
        prefix, delimiter = personal[0][0], personal[0][1]
        prefix_text = decode_utf7(prefix) if isinstance(prefix, bytes) else str(prefix)
        delim = delimiter.decode("ascii", "replace") if isinstance(delimiter, bytes) \
            else delimiter
    except Exception:
        return Namespace()
    return personal_namespace(prefix_text, delim if isinstance(delim, str) and delim else None)


_IMAPLIB_ERROR = re.compile(r"^[A-Z ]+ command error: (?:NO|BAD) \[b?['\"](.*)['\"]\]$", re.S)
_IMAPCLIENT_NO = re.compile(r"^[a-z_ ]+ failed: (.*)$", re.S)


class _RefusalRun:
    """Single-message FETCH refusals in a row within one batch (see
    _fetch_body_batch_split): past MAX_REFUSALS_IN_A_ROW the folder, not a message, is
    refused, and the first refusal is raised."""

    def __init__(self) -> None:
        self.in_a_row = 0
        self.first: BaseException | None = None

    def refused(self, exc: BaseException) -> None:
        self.first = self.first or exc
        self.in_a_row += 1
        if self.in_a_row >= MAX_REFUSALS_IN_A_ROW:
            raise self.first

    def accepted(self) -> None:
        self.in_a_row = 0
        self.first = None


def refusal_text(exc: BaseException) -> str:
    """The server's own words from an imaplib/imapclient refusal ("APPEND command error: BAD
    [b'Command Error. 10']" -> "BAD Command Error. 10"; "create failed: [CANNOT] ..." -> "NO
    [CANNOT] ...")."""
    text = str(exc)
    match = _IMAPLIB_ERROR.match(text)
    if match is not None:
        return f"{'BAD' if ': BAD ' in text else 'NO'} {match.group(1)}"
    match = _IMAPCLIENT_NO.match(text)  # imapclient's words for a NO
    return f"NO {match.group(1)}" if match is not None else text


#: The largest UID there can be (RFC 3501 nz-number, 32 bits).
MAX_UID = 4294967295


def _vanished_range(uidnext: int | None) -> str:
    """The UID set of a CHANGEDSINCE ... VANISHED fetch: an explicit upper bound, never "*".
    Cyrus resolves "1:*" to the highest UID still present, and an expunged message above it is
    then never reported VANISHED (its local copy would stay); "1:<UIDNEXT-1>" covers every UID
    the folder ever gave out."""
    if uidnext is None or uidnext <= 1:
        return f"1:{MAX_UID}" if uidnext is None else "1:*"
    return f"1:{min(uidnext - 1, MAX_UID)}"


def _select_info(name: str, response: dict) -> SelectInfo:
    """SelectInfo from imapclient's parsed SELECT response."""
    from imapclient.exceptions import ProtocolError

    modseq = response.get(b"HIGHESTMODSEQ")
    if b"NOMODSEQ" in response:
        modseq = None
    try:
        return SelectInfo(
            uidvalidity=_positive(response[b"UIDVALIDITY"]),
            uidnext=_positive(response[b"UIDNEXT"]) if b"UIDNEXT" in response else None,
            exists=_positive(response.get(b"EXISTS", 0), zero=True),
            highestmodseq=_positive(modseq) if modseq is not None else None,
            storable=flagmap.storable(response.get(b"PERMANENTFLAGS")),
        )
    except (KeyError, ValueError, TypeError):
        # A SELECT reply without a usable UIDVALIDITY (or with garbage numbers) gives
        # nothing to sync against: a folder error, not a crash (fault suite, hostile
        # servers).
        raise ProtocolError(f"SELECT {name!r}: no valid UIDVALIDITY/UIDNEXT/EXISTS in the "
                            "reply") from None


def _cut_batches(wanted: Sequence[tuple[int, int | None]]
                 ) -> list[tuple[list[int], int | None, int]]:
    """(uids, largest announced size or None if one is unknown, announced bytes) per FETCH
    batch, bounded by FETCH_BATCH_COUNT and FETCH_BATCH_BYTES."""
    batches: list[tuple[list[int], int | None, int]] = []
    batch: list[int] = []
    batch_bytes = 0
    largest: int | None = 0
    for uid, size in wanted:
        batch.append(uid)
        batch_bytes += size or 0
        largest = None if size is None or largest is None else max(largest, size)
        if len(batch) >= FETCH_BATCH_COUNT or batch_bytes >= FETCH_BATCH_BYTES:
            batches.append((batch, largest, batch_bytes))
            batch, batch_bytes, largest = [], 0, 0
    if batch:
        batches.append((batch, largest, batch_bytes))
    return batches


def _bodies_from(records: list[tuple[bytes, Any]] | None
                 ) -> dict[int, tuple[FetchedBody, dt.datetime | None]] | None:
    """UID -> (body, INTERNALDATE) from (UID INTERNALDATE BODY[]) records; None if one has
    no UID (a shape the general parser must read)."""
    if records is None:
        return None
    result: dict[int, tuple[FetchedBody, dt.datetime | None]] = {}
    for text, literal in records:
        uid = _UID_ITEM.search(text)
        if uid is None:
            return None
        if literal is None or not _BODY_LITERAL.search(text):
            continue  # an unsolicited FETCH (flags of another client's change)
        date = _INTERNALDATE_ITEM.search(text)
        internaldate = parse_internaldate(date.group(1)) if date is not None else None
        result[int(uid.group(1))] = (literal, internaldate)
    return result


def _records(data: Sequence[object]) -> list[tuple[bytes, bytes | None]] | None:
    """imaplib's FETCH response list as (text, literal) per message, the text being everything
    outside the one literal; None for a shape we did not ask for (two literals, ...)."""
    records: list[tuple[bytes, bytes | None]] = []
    pending: tuple[bytes, bytes] | None = None
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            if pending is not None:
                return None  # two literals in one response: not a shape we asked for
            pending = (item[0], item[1])
        elif isinstance(item, bytes):
            if pending is not None:
                records.append((pending[0] + b" " + item, pending[1]))
                pending = None
            else:
                records.append((item, None))
        elif item is None:
            continue
        else:
            return None
    if pending is not None:
        records.append((pending[0], pending[1]))
    return records


def _discard_spooled(data: Sequence[object], keep: set[int]) -> None:
    """Remove the files of spooled literals in a FETCH reply that nobody will deliver (an
    unsolicited response's, or all of them when the reply is read again another way)."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], bytes) \
                and hasattr(item[1], "discard") and id(item[1]) not in keep:
            item[1].discard()


def _flags_from(records: list[tuple[bytes, bytes | None]] | None) -> dict[int, Flags] | None:
    """UID -> flags from (UID FLAGS) records; None if one lacks either."""
    if records is None:
        return None
    flags: dict[int, Flags] = {}
    for text, _literal in records:
        uid = _UID_ITEM.search(text)
        found = _FLAGS_ITEM.search(text)
        if uid is None or found is None:
            return None
        flags[int(uid.group(1))] = flagmap.from_imap(found.group(1).split())
    return flags


def _meta_from(records: list[tuple[bytes, bytes | None]] | None
               ) -> dict[int, MessageMeta] | None:
    """UID -> MessageMeta from (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)]) records. A
    record without a size is an unsolicited flag update (another client), not an answer:
    skipped."""
    if records is None:
        return None
    meta: dict[int, MessageMeta] = {}
    for text, literal in records:
        uid = _UID_ITEM.search(text)
        size = _SIZE_ITEM.search(text)
        if size is None:
            continue
        if uid is None:
            return None
        meta[int(uid.group(1))] = MessageMeta(int(size.group(1)),
                                              *header_identity(literal or b""))
    return meta


def _select_changes(flags_reply: Reply, meta_reply: Reply | None, qresync: bool
                    ) -> SelectChanges:
    """What pipelined FETCHes behind a SELECT brought: the flags (and VANISHED), the meta.
    The server may run two fetches at once and interleave their responses (RFC 3501 5.5;
    Dovecot does): records are told apart by what they hold, not by which tagged reply they
    came before. A flags record that came unasked (another client's change) is the message's
    present flags all the same."""
    replies = [flags_reply] if meta_reply is None or meta_reply is flags_reply \
        else [flags_reply, meta_reply]
    fetched = [item for reply in replies for item in reply.untagged.get("FETCH", [])]
    records = _records(fetched)
    changes = None
    if flags_reply.ok:
        flags = _flags_from([r for r in records if _FLAGS_ITEM.search(r[0])]) \
            if records is not None else None
        if flags is not None:
            vanished = [line for reply in replies
                        for line in reply.untagged.get("VANISHED", [])]
            changes = FlagChanges(flags, _vanished_from(vanished) if qresync
                                  else frozenset())
    meta = _meta_from(records) if meta_reply is not None and meta_reply.ok else None
    return SelectChanges(changes, meta)


def _searched(reply: Reply) -> set[int] | None:
    """The UIDs a pipelined UID SEARCH answered; None if it was refused or its data hold
    anything but numbers (the caller then searches the ordinary way). No SEARCH response at
    all is an empty result, as imapclient takes it."""
    if not reply.ok:
        return None
    uids: set[int] = set()
    for line in reply.untagged.get("SEARCH", []):
        if not isinstance(line, bytes):
            return None
        words = line.split()
        if not all(word.isdigit() for word in words):
            return None
        uids.update(int(word) for word in words)
    return uids


def _search_uids(replies: Sequence[Reply]) -> set[int]:
    """The UIDs of the (one) UID SEARCH in a batch of pipelined replies."""
    uids: set[int] = set()
    for reply in replies:
        for line in reply.untagged.get("SEARCH", []):
            text = line.decode("ascii", "replace") if isinstance(line, bytes) else str(line)
            uids.update(int(word) for word in text.split() if word.isdigit())
    return uids


def flags_in(replies: Sequence[Reply]) -> dict[int, Flags]:
    """UID -> flags from every FETCH response (with UID and FLAGS) in a batch of pipelined
    replies; other FETCH responses (no UID: another client's change) are skipped."""
    flags: dict[int, Flags] = {}
    for text, _literal in _records([item for reply in replies
                                    for item in reply.untagged.get("FETCH", [])]) or ():
        uid = _UID_ITEM.search(text)
        found = _FLAGS_ITEM.search(text)
        if uid is not None and found is not None:
            flags[int(uid.group(1))] = flagmap.from_imap(found.group(1).split())
    return flags


def _vanished_from(raw: Sequence[object]) -> frozenset[int]:
    """UIDs of VANISHED responses ("(EARLIER) 3:5,9" or "3:5,9")."""
    uids: set[int] = set()
    for line in raw:
        text = line.decode("ascii", "replace") if isinstance(line, bytes) else str(line)
        text = text.strip()
        if text.upper().startswith("(EARLIER)"):
            text = text[len("(EARLIER)"):].strip()
        uids |= parse_uid_set(text)
    return frozenset(uids)


class Pipeline:
    """IMAP pipelining (RFC 3501 5.5): commands written back to back, then their tagged
    replies read in order, so a batch costs one round trip instead of one per command.
    imaplib waits for each reply before the next command; this writes the command lines
    itself and reads with imaplib's own reader, so the connection stays usable afterwards.

    Only for commands that need no continuation from the server (no literals). Tagged replies
    come in command order, and each Reply carries the untagged responses read before it; but a
    server may run commands that do not conflict at once and interleave their data (RFC 3501
    5.5; Dovecot does), so callers tell data apart by content, never by position. Every reply
    is read even when one fails: the caller gets them all and decides; a connection that
    breaks raises imaplib's abort."""

    def __init__(self, session: ImapSession) -> None:
        self._session = session
        self._imap = wire.imaplib_of(session.client)
        self._sent: list[tuple[bytes, str]] = []  # (tag, command name) in order

    def send(self, *words: str | bytes) -> int:
        """Write one command now; returns its index in replies()."""
        imap = self._imap
        wire.check_bye(imap)
        parts = [w if isinstance(w, bytes) else w.encode("ascii") for w in words]
        tag = wire.write_command(imap, *parts)
        name = " ".join(p.decode("ascii", "replace") for p in parts[:2]) \
            if parts[:1] == [b"UID"] else parts[0].decode("ascii", "replace")
        self._sent.append((tag, name))
        return len(self._sent) - 1

    def replies(self) -> list[Reply]:
        imap = self._imap
        result: list[Reply] = []
        for tag, name in self._sent:
            try:
                status, data = wire.tagged_reply(imap, tag)
            except imap.abort:
                raise
            except imap.error as exc:
                # Unparseable mid-batch: the rest of the stream cannot be trusted.
                raise imap.abort(f"{name}: {exc}; connection dropped") from None
            untagged = wire.swap_untagged(imap)
            bye = untagged.pop("BYE", None)
            if bye is not None:
                wire.swap_untagged(imap, {"BYE": bye})  # reported by the next command
            text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
            result.append(Reply(name, status, text, untagged))
        self._sent = []
        return result


def raise_refused(replies: Sequence[Reply]) -> None:
    """The first refused command of a batch as imapclient's error (a folder error)."""
    from imapclient.exceptions import IMAPClientError

    for reply in replies:
        if not reply.ok:
            raise IMAPClientError(f"{reply.command} failed: {reply.status} {reply.text}")


# Limits on what a server may make us hold (fault suite, hostile servers). imaplib reads a
# literal of whatever size the server announces in one allocation, keeps every untagged line
# until someone pops it, and reports an over-long line as a plain error after which the
# connection is out of step. Each of these let a broken or hostile server exhaust memory or
# desynchronise the session.
#: A literal outside a body fetch (a header field, a folder name) is small.
LITERAL_LIMIT = 1024 * 1024
#: No message literal is ever accepted above this, whatever RFC822.SIZE says.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
#: Bytes of one command's reply (lines and literals) beyond what its literals may take: the
#: flags of a million messages are ~50 MB.
REPLY_LIMIT = 96 * 1024 * 1024
#: Unsolicited status responses (OK, NO, EXISTS, ...) kept per kind; older ones are dropped.
UNTAGGED_KEEP = 256
_KEEP_ALL = frozenset({"FETCH", "VANISHED", "SEARCH", "ESEARCH", "LIST", "LSUB", "STATUS",
                       "ENABLED", "NAMESPACE", "ID", "SORT", "THREAD"})
_READ_CHUNK = 1024 * 1024


class ReplyGuard:
    """Bounds what one IMAP connection reads: each literal (to LITERAL_LIMIT, or during a body
    fetch to about what RFC822.SIZE announced), the bytes of each reply, and the unsolicited
    responses kept. A reply over a limit ends the connection (imaplib's abort: the session is
    dropped and made anew), never a half-read stream that later replies would be parsed from.
    """

    def __init__(self, imap: Any) -> None:
        self.imap = imap
        self.literal_limit = LITERAL_LIMIT
        self.reply_limit = REPLY_LIMIT
        self.received = 0  # bytes since the last command was sent
        self.where: Callable[[], str] = lambda: "the server"
        #: The account whose pause a throttling reply sets (syncd/config/providers.py); None: none.
        self.account: str | None = None
        self.throttled: object | None = None  # the last providers.Throttle seen
        # Where literals above SPOOL_LITERAL_MIN go while a body fetch runs (see spooling).
        self._spool: Callable[[], LiteralSink] | None = None
        self._spooled: list[SpooledLiteral] = []
        # imaplib's own methods, which the guard's call once they have checked.
        self._own = wire.hook_io(imap, wire.ImapIO(self.read, self.readline, self.send,
                                                   self.append_untagged))

    @classmethod
    def install(cls, client: IMAPClient) -> ReplyGuard:
        """The connection's guard, put in place on its first call (one per connection)."""
        imap = wire.imaplib_of(client)
        guard = getattr(imap, "_syncd_guard", None)
        if guard is None:
            guard = cls(imap)
            imap._syncd_guard = guard  # type: ignore[attr-defined]
        return guard

    @contextlib.contextmanager
    def expecting(self, largest: int | None, total: int) -> Iterator[None]:
        """Literals of messages whose largest announced size is ``largest`` (None: unknown)."""
        saved = self.literal_limit, self.reply_limit
        limit = MAX_MESSAGE_BYTES if largest is None \
            else min(MAX_MESSAGE_BYTES, 2 * largest + LITERAL_LIMIT)
        self.literal_limit = max(self.literal_limit, limit)
        self.reply_limit = REPLY_LIMIT + 2 * max(total, limit)
        try:
            yield
        finally:
            self.literal_limit, self.reply_limit = saved

    @contextlib.contextmanager
    def spooling(self, spool: Callable[[], LiteralSink] | None) -> Iterator[None]:
        """Literals above SPOOL_LITERAL_MIN go into sinks ``spool`` opens, as they arrive.
        If the command fails, the literals it spooled are discarded (nobody got them)."""
        saved = self._spool, self._spooled
        self._spool, self._spooled = spool, []
        try:
            yield
        except BaseException:
            for written in self._spooled:
                written.discard()
            raise
        finally:
            self._spool, self._spooled = saved

    def _abort(self, message: str) -> BaseException:
        return self.imap.abort(f"{self.where()}: {message}; connection dropped")

    def _count(self, n: int) -> None:
        self.received += n
        if self.received > self.reply_limit:
            raise self._abort(f"more than {self.reply_limit} bytes in reply to one command")

    def send(self, data: bytes) -> None:
        self.received = 0
        self._own.send(data)

    def readline(self) -> bytes:
        try:
            line = self._own.readline()
        except self.imap.abort:
            raise
        except self.imap.error as exc:  # "got more than 1000000 bytes": mid-line, out of step
            raise self._abort(f"over-long line from the server ({exc})") from None
        self._count(len(line))
        # Status lines only (tagged, "* NO/OK/BAD/BYE"): FETCH lines cost one slice each.
        if self.account is not None and (line[:1] != b"*" or line[2:3] in b"NOB"):
            self._look_for_throttle(line)
        return line

    def _look_for_throttle(self, line: bytes) -> None:
        from syncd.config.providers import PAUSES, describe_pause, throttle_from

        # Only a status response speaks for the server ("<tag>|* NO|BAD|BYE|OK ..."): not a
        # literal's trailer, whatever words a message or folder name holds.
        words = line.split(b" ", 2)
        if len(words) < 3 or words[1].upper() not in (b"NO", b"BAD", b"BYE", b"OK"):
            return
        throttle = throttle_from(line)
        if throttle is None or self.account is None:
            return
        self.throttled = throttle
        pause = PAUSES.note(self.account, throttle)
        log.warning("%s: %s", self.account, describe_pause(pause))

    def read(self, size: int) -> bytes:
        if size > self.literal_limit:
            raise self._abort(f"the server announced a literal of {size} bytes, more than the "
                              f"{self.literal_limit} expected")
        self._count(size)
        if size <= _READ_CHUNK:
            return self._own.read(size)
        if self._spool is not None and size > SPOOL_LITERAL_MIN:
            return self._read_into(self._spool(), size)  # type: ignore[return-value]
        # In pieces, so that memory follows what actually arrives, not what was announced.
        parts = []
        remaining = size
        while remaining:
            part = self._own.read(min(remaining, _READ_CHUNK))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)

    def _read_into(self, sink: LiteralSink, size: int) -> SpooledLiteral:
        """A literal of ``size`` bytes read in chunks into ``sink``; imaplib files what this
        returns in place of the literal's bytes (wire.hook_io). A connection that ends early
        or a sink that cannot write (disk full) leaves the reply half read: the connection is
        dropped (imaplib's abort), the sink's file removed."""
        remaining = size
        try:
            while remaining:
                part = self._own.read(min(remaining, _READ_CHUNK))
                if not part:
                    raise self._abort(f"the connection ended {size - remaining} bytes into a "
                                      f"literal of {size}")
                self._on_disk(sink.write, part)
                remaining -= len(part)
            written = self._on_disk(sink.finish)
        except BaseException:
            sink.abort()
            raise
        self._spooled.append(written)
        return written

    def _on_disk(self, step: Callable[..., Any], *args: Any) -> Any:
        """A sink's step; a local error (disk full) mid-reply ends the connection too, which
        a folder-level OSError would leave half read for the next folder."""
        try:
            return step(*args)
        except OSError as exc:
            raise self._abort(f"cannot write the message to disk ({exc})") from None

    def append_untagged(self, typ: str, dat: object) -> None:
        kept = wire.kept_untagged(self.imap, typ)
        if kept is not None and typ not in _KEEP_ALL and len(kept) >= 2 * UNTAGGED_KEEP:
            del kept[:-UNTAGGED_KEEP]  # nobody reads old EXISTS/OK/ALERT lines
        self._own.append_untagged(typ, dat)


def _log_in(client: IMAPClient, account: AccountSettings, password: Callable[[], str],
            tokens: TokenProvider | None, guard: ReplyGuard) -> str:
    """LOGIN, or SASL with an OAuth2 token (auth: oauth2); the mechanism used. A refusal is
    the account's AccountError; a throttling reply pauses the account instead."""
    from imapclient.exceptions import LoginError

    if account.auth == "oauth2":
        return _oauth2_login(client, account, tokens)
    secret = password()
    try:
        client.login(account.username, secret)
    except LoginError:
        if guard.throttled is not None:  # "NO Request is throttled", not a refusal
            _refuse_while_paused(account)
        raise login_refused(account) from None
    return "LOGIN"


def _refuse_while_paused(account: AccountSettings) -> None:
    """No connection while a throttling reply's pause lasts (syncd/config/providers.py): whichever
    thread tries (the worker, an IDLE watcher) waits instead of hammering the server."""
    from syncd.config.providers import PAUSES, describe_pause

    pause = PAUSES.get(account.name)
    if pause is not None:
        raise AccountError(account.name, f"{account.host}: {describe_pause(pause)}",
                           cause="throttled")


def _quiet_imaplib(client: IMAPClient) -> None:
    """imapclient turns imaplib's debug level up to 5, and imaplib then formats the repr of
    every response, message bodies included, before the logger can drop it: a third of the CPU
    of an initial sync. Keep that only when protocol traces are actually wanted (--debug)."""
    wire.set_trace(wire.imaplib_of(client), wire.TRACE.isEnabledFor(logging.DEBUG))


def _positive(value: object, *, zero: bool = False) -> int:
    """A number from a server reply; ValueError unless it is one (and > 0 unless zero)."""
    number = int(value)  # type: ignore[call-overload]
    if number < 0 or (number == 0 and not zero):
        raise ValueError(f"not a valid number: {value!r}")
    return number


def _pairs(items: Sequence[object]) -> Iterator[tuple[object, object]]:
    it = iter(items)
    return zip(it, it, strict=False)


def _status_from(raw: dict) -> FolderStatus:
    def get(key: str) -> int | None:
        value = raw.get(key.encode()) if key.encode() in raw else raw.get(key)
        try:
            return int(value) if value is not None else None
        except (ValueError, TypeError):
            return None  # garbage from a broken server: STATUS is only a hint (fault suite)

    return FolderStatus(uidvalidity=get("UIDVALIDITY"), uidnext=get("UIDNEXT"),
                        messages=get("MESSAGES"), highestmodseq=get("HIGHESTMODSEQ"))


def _close_quietly(client: IMAPClient) -> None:
    from syncd.imap.probe import logout_quietly

    logout_quietly(wire.imaplib_of(client))
