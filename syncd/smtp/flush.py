"""Sending one account's queue, exactly once.

For each message, over one SMTP connection for the whole queue:

    MAIL FROM, RCPT TO  -> record "sending" (fsynced) -> DATA -> final 250 -> record "sent"

(MAIL FROM and the RCPT TOs go in one write where the server offers PIPELINING.)

A refusal before DATA leaves the message queued (4xx, retried with backoff) or parks it as
failed (5xx). Between "sending" and "sent" the outcome is unknown (a crash, a timeout, a
connection dropped after the message went out): the next flush looks for the Message-ID in
the account's Sent folder over IMAP (providers that file sent mail themselves put it there).
Found: it was sent. Not found: it is sent again, once, and reported as a possible duplicate.

After "sent", ``save_sent`` APPENDs the message to the Sent folder with \\Seen (unless it is
already there: a crash between APPEND and the record must not file it twice), and the
message leaves the queue. The normal sync then brings that copy down once.

``checkpoint`` marks every step for the crash tests (syncd.faults).
"""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.config import presets
from syncd.errors import AccountError
from syncd.faults import checkpoint
from syncd.smtp.client import Permanent, SmtpFailure, Transient, refusal, reply_text
from syncd.smtp.queue import Outbox, Record

if TYPE_CHECKING:
    from syncd.config.settings import AccountSettings
    from syncd.imap.client import ImapSession

__all__ = ["BACKOFF_CAP", "FlushReport", "flush_account", "retry_delay"]

log = logging.getLogger("syncd.outbox")

BACKOFF_START = 2.0
BACKOFF_CAP = 300.0  # as the IMAP worker's: a message waits at most 5 minutes for a retry


class ConnectionLost(Transient):
    """The connection failed: the rest of the queue waits too."""


@dataclass
class FlushReport:
    account: str
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    error: str | None = None
    error_cause: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed and not self.deferred

    def summary(self) -> str:
        parts = [f"{len(self.sent)} sent"]
        if self.deferred:
            parts.append(f"{len(self.deferred)} still queued")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} possibly sent twice")
        text = f"{self.account}: outbox: {', '.join(parts)}"
        return text + (f" ({self.error})" if self.error else "")


def retry_delay(attempts: int) -> float:
    """2, 4, 8, ... 300 s after the n-th failed attempt."""
    return min(BACKOFF_CAP, BACKOFF_START * 2 ** max(0, attempts - 1))


def flush_account(account: AccountSettings, *, wait: float = 0.0, due_only: bool = False,
                  password: Callable[[], str] | None = None) -> FlushReport:
    """Send what the account's queue holds (``due_only``: what is due by its backoff)."""
    outbox = Outbox.of(account.state_dir, account.name)
    if not outbox.ids():
        return FlushReport(account.name)
    with outbox.locked(wait):
        flusher = _Flusher(account, outbox, password or _password(account))
        try:
            flusher.run(due_only)
        finally:
            flusher.close()
        return flusher.report


def _password(account: AccountSettings, smtp: bool = False) -> Callable[[], str]:
    known: list[str] = []

    def password() -> str:
        if not known:
            from syncd.auth.secrets import get_password

            command = account.smtp.password_command if smtp and account.smtp else None
            known.append(get_password(account._replace(password_command=command)
                                      if command else account))
        return known[0]

    return password


class _Flusher:
    def __init__(self, account: AccountSettings, outbox: Outbox,
                 password: Callable[[], str]) -> None:
        self.account = account
        self.outbox = outbox
        self.imap_password = password
        self.smtp_password = (_password(account, smtp=True)
                              if account.smtp and account.smtp.password_command else password)
        self.report = FlushReport(account.name)
        self.smtp: smtplib.SMTP | None = None
        self.imap: ImapSession | None = None
        self._sent_folder: str | None = None
        self._sent_exists = False

    def run(self, due_only: bool) -> None:
        now = time.time()
        records = [r for r in self.outbox.records() if r.state != "failed"
                   and (not due_only or r.next_attempt <= now)]
        for record in records:
            try:
                self._one(record)
            except (ConnectionLost, AccountError) as exc:
                # The server is out of reach (or refuses us): the rest waits as well.
                self._defer(record, exc)
                for rest in records[records.index(record) + 1:]:
                    # Not tried: they wait as long as the one that was.
                    self._defer(rest, exc, until=record.next_attempt)
                self.report.error = str(exc).removeprefix(f"{self.account.name}: ")
                self.report.error_cause = getattr(exc, "cause", "network")
                return
            except Transient as exc:
                self._defer(record, exc)
            except Permanent as exc:
                self._fail(record, exc)

    def _one(self, record: Record) -> None:
        if record.state == "sending":
            self._settle(record)
        if record.state == "queued":
            self._send(record)
        if record.state == "sent":
            self._file_copy(record)
            self.outbox.remove(record.id)
            checkpoint("outbox.removed")
            self.report.sent.append(record.id)
            log.info("%s: sent %s (%s) to %s%s", self.account.name, record.id,
                     record.message_id, ", ".join(record.recipients),
                     " (possibly twice: an earlier attempt's outcome was unknown)"
                     if record.possible_duplicate else "")

    # --- the unknown outcome ---------------------------------------------------------------
    def _settle(self, record: Record) -> None:
        """An earlier attempt got as far as DATA and no further that we know of."""
        found = self._in_sent(record.message_id)
        if found:
            log.info("%s: %s was sent by an earlier attempt (found in %s)", self.account.name,
                     record.id, self._sent_folder)
            record.state, record.saved = "sent", True
        else:
            where = (f"not in {self._sent_folder}" if found is not None
                     else "no Sent folder to look in")
            log.warning("%s: the outcome of sending %s (%s) is unknown and it is %s: sending "
                        "it again; the recipients may get it twice", self.account.name,
                        record.id, record.message_id, where)
            record.state, record.possible_duplicate = "queued", True
            self.report.duplicates.append(record.id)
        self.outbox.write_record(record)
        checkpoint("outbox.settled")

    # --- SMTP ------------------------------------------------------------------------------
    def _connection(self) -> smtplib.SMTP:
        if self.smtp is None:
            from syncd.smtp.client import connect

            try:
                self.smtp = connect(self.account, self.smtp_password)
            except Transient as exc:  # unreachable, or a 4xx greeting: nothing goes now
                raise ConnectionLost(str(exc)) from None
        return self.smtp

    def _send(self, record: Record) -> None:
        data = _crlf(self.outbox.message(record.id))
        record.attempts += 1  # before connecting: an unreachable server backs off too
        conn = self._connection()
        try:
            self._envelope(conn, record, data)
            record.state = "sending"
            self.outbox.write_record(record)
            checkpoint("outbox.before-data")
            code, reply = conn.data(data)
        except smtplib.SMTPDataError as exc:  # DATA refused before the message went out
            self._reset(conn)
            record.state = "queued"
            raise refusal(exc.smtp_code, exc.smtp_error, "DATA") from None
        except (OSError, smtplib.SMTPException) as exc:
            self.smtp = None
            raise ConnectionLost(_lost(exc, record.state == "sending")) from None
        checkpoint("outbox.after-data")
        if code != 250:
            record.state = "queued"
            raise refusal(code, reply, "end of DATA")
        record.state, record.last_error = "sent", None
        self.outbox.write_record(record)
        checkpoint("outbox.sent")

    def _envelope(self, conn: smtplib.SMTP, record: Record, data: bytes) -> None:
        """MAIL FROM and RCPT TO; raises the verdict when no recipient is accepted."""
        options = ["BODY=8BITMIME"] if conn.has_extn("8bitmime") and _eight_bit(data) else []
        if conn.has_extn("smtputf8") and not (record.sender + "".join(record.recipients)
                                              ).isascii():
            options.append("SMTPUTF8")
        if conn.has_extn("pipelining") and "SMTPUTF8" not in options:
            (code, reply), replies = _pipelined_envelope(conn, record.sender, options,
                                                         record.recipients)
        else:
            code, reply = conn.mail(record.sender, options)
            replies = [conn.rcpt(rcpt) for rcpt in record.recipients] if code == 250 else []
        if code != 250:
            self._reset(conn)
            raise refusal(code, reply, f"MAIL FROM {record.sender}")
        refused: list[tuple[str, int, bytes]] = []
        for rcpt, (code, reply) in zip(record.recipients, replies, strict=True):
            if code not in (250, 251):
                refused.append((rcpt, code, reply))
        if len(refused) == len(record.recipients):
            self._reset(conn)
            worst = min(refused, key=lambda item: item[1] < 500)  # a 5xx wins over a 4xx
            raise refusal(worst[1], worst[2], f"RCPT TO {worst[0]}")
        for rcpt, code, reply in refused:
            log.warning("%s: %s: the server refused recipient %s (%s); sending to the others",
                        self.account.name, record.id, rcpt, reply_text(code, reply))

    def _reset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            self.smtp = None

    # --- IMAP: the Sent folder ---------------------------------------------------------------
    def _session(self) -> ImapSession:
        if self.imap is None:
            from syncd.imap.client import ImapSession

            self.imap = ImapSession.connect(self.account, self.imap_password)
        return self.imap

    def _in_sent(self, message_id: str) -> bool | None:
        """Whether the Sent folder holds the message; None when there is no folder to look
        in (a POP3 account, no Sent folder)."""
        if self.account.protocol != "imap" or not message_id:
            return None
        folder = self._find_sent_folder()
        if folder is None:
            return None
        if not self._sent_exists:
            return False
        try:
            session = self._session()
            session.select(folder)
            return bool(session.search_message_id(message_id))
        except AccountError:
            raise
        except Exception as exc:  # imapclient errors, the connection
            self.imap = None
            raise ConnectionLost(f"cannot look in {folder} for {message_id}: {exc}") from None

    def _find_sent_folder(self, create: bool = False) -> str | None:
        """``sent_folder``, else the server's \\Sent folder, else a well-known name; with
        ``create``, "Sent" (in the personal namespace) is made where none exists."""
        try:
            if self._sent_folder is None:
                session = self._session()
                listed = {f.name for f in session.list_folders() if not f.noselect}
                self._sent_folder = self.account.sent_folder or _special_sent(session)
                self._sent_exists = self._sent_folder in listed
            if self._sent_folder is None and create:
                self._sent_folder = self._session().personal_namespace().prefix + "Sent"
            if create and not self._sent_exists:
                assert self._sent_folder is not None
                self._session().create_folder(self._sent_folder)
                self._sent_exists = True
        except AccountError:
            raise
        except Exception as exc:
            self.imap = None
            raise ConnectionLost(f"cannot find or create the Sent folder: {exc}") from None
        return self._sent_folder

    def _file_copy(self, record: Record) -> None:
        if record.saved or not presets.saves_sent(self.account):
            return
        folder = self._find_sent_folder(create=True)
        assert folder is not None
        if not self._in_sent(record.message_id):
            data = _crlf(self.outbox.message(record.id))
            try:
                self._session().append(folder, data, "S", None)
            except AccountError:
                raise
            except Exception as exc:
                self.imap = None
                raise ConnectionLost(f"cannot save the copy in {folder}: {exc}") from None
            checkpoint("outbox.appended")
        record.saved = True
        self.outbox.write_record(record)

    # --- outcomes --------------------------------------------------------------------------
    def _defer(self, record: Record, exc: BaseException, *, until: float | None = None) -> None:
        record.last_error = str(exc).removeprefix(f"{self.account.name}: ")
        record.next_attempt = until if until is not None \
            else time.time() + retry_delay(max(1, record.attempts))
        self.outbox.write_record(record)
        self.report.deferred.append(record.id)
        if until is None:
            log.warning("%s: %s not sent yet (%s); retry in %.0f s", self.account.name,
                        record.id, record.last_error, record.next_attempt - time.time())

    def _fail(self, record: Record, exc: SmtpFailure) -> None:
        record.state, record.last_error = "failed", str(exc)
        self.outbox.write_record(record)
        self.report.failed.append(record.id)
        log.error("%s: sending %s (%s) to %s failed: %s; it stays in the outbox (syncd outbox "
                  "retry %s, or drop it)", self.account.name, record.id, record.subject,
                  ", ".join(record.recipients), record.last_error, record.id)

    def close(self) -> None:
        if self.smtp is not None:
            from syncd.smtp.client import quit_quietly

            quit_quietly(self.smtp)
        if self.imap is not None:
            with contextlib.suppress(Exception):
                self.imap.client.logout()
            self.imap.close()


def _special_sent(session: ImapSession) -> str | None:
    from syncd.config.mutt import ROLES

    folders = [f for f in session.list_folders() if not f.noselect]
    for folder in folders:
        if (folder.special_use or "").lower() == "\\sent":
            return folder.name
    by_name = {f.name.lower(): f.name for f in folders}
    return next((by_name[n] for n in ROLES["record"][1] if n in by_name), None)


def _pipelined_envelope(conn: smtplib.SMTP, sender: str, options: list[str],
                        recipients: list[str]
                        ) -> tuple[tuple[int, bytes], list[tuple[int, bytes]]]:
    """MAIL FROM and every RCPT TO in one write, then their replies in order (RFC 2920
    PIPELINING): one round trip where smtplib takes one per command. DATA is not in the
    group: "sending" is recorded between the envelope and DATA (exactly once). The commands
    are smtplib's own (mail(), rcpt()); with SMTPUTF8 smtplib changes its encoding, so that
    case takes the plain path. Returns (MAIL's reply, each RCPT's reply)."""
    extra = " " + " ".join(options) if options else ""
    commands = [f"mail FROM:{smtplib.quoteaddr(sender)}{extra}",
                *(f"rcpt TO:{smtplib.quoteaddr(rcpt)}" for rcpt in recipients)]
    conn.send("".join(f"{command}\r\n" for command in commands))
    replies = [conn.getreply() for _ in commands]
    return replies[0], replies[1:]


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def _eight_bit(data: bytes) -> bool:
    return not data.isascii()


def _lost(exc: BaseException, in_data: bool) -> str:
    what = str(exc) or type(exc).__name__
    if in_data:
        return (f"the connection failed during DATA ({what}); whether the server took the "
                f"message is unknown: the Sent folder decides before it is sent again")
    return f"the SMTP connection failed ({what})"

