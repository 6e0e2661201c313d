"""`syncd send`: sendmail's command line, mutt's calling convention.

mutt and neomutt run ``$sendmail [-B8BITMIME] [-f ADDR] [-N DSN] [-R RET] -- RCPT...`` with
the message on stdin; mutt's default $sendmail adds ``-oem -oi``. This parser takes what
sendmail takes in that role (``-t -i -oi -o* -f -r -F -B -N -R -v --``) plus ``--account``,
and refuses anything else (EX_USAGE), so a typo never queues a message to the wrong place.

Exit statuses are sendmail's (sysexits.h): 0 queued (fsynced), 64 bad usage or no
recipients, 65 a message syncd cannot send or no account for its sender, 74 the queue could
not be written.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from syncd.errors import SyncdError

if TYPE_CHECKING:
    from syncd.config.settings import AccountSettings, Settings

__all__ = ["EX_DATAERR", "EX_IOERR", "EX_USAGE", "SendRequest", "SendmailError",
           "choose_account", "parse_args", "read_message", "send_command"]

log = logging.getLogger("syncd.outbox")

EX_USAGE = 64
EX_DATAERR = 65
EX_IOERR = 74

USAGE = ("usage: syncd send [-t] [-i] [-oi] [-f ADDR] [-F NAME] [--account NAME] "
         "[--] [RCPT ...] < message")


class SendmailError(SyncdError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class SendRequest:
    read_recipients: bool = False  # -t
    ignore_dots: bool = False  # -i, -oi
    sender: str | None = None  # -f, -r
    full_name: str | None = None  # -F (accepted; the From header is the client's)
    account: str | None = None
    recipients: list[str] = field(default_factory=list)
    help: bool = False


# Options that take a value: attached (-fADDR) or as the next word (-f ADDR).
_VALUED = {"-f": "sender", "-r": "sender", "-F": "full_name", "-B": None, "-N": None,
           "-R": None, "-X": None}


def parse_args(argv: Sequence[str]) -> SendRequest:
    """sendmail's options up to the first recipient or ``--``. Raises SendmailError(64)."""
    request = SendRequest()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            i -= 1
            break
        if word in ("-h", "--help"):
            request.help = True
        elif word == "-t":
            request.read_recipients = True
        elif word in ("-i", "-oi"):
            request.ignore_dots = True
        elif word.startswith("--account"):
            value, i = _value(word, "--account", words, i, sep="=")
            request.account = value
        elif word.startswith("-o") or word in ("-v", "-Am", "-Ac", "-bm"):
            continue  # -oem, -odb, -v...: sendmail's delivery options mean nothing here
        elif word[:2] in _VALUED:
            value, i = _value(word, word[:2], words, i)
            target = _VALUED[word[:2]]
            if target is not None:
                setattr(request, target, value)
        else:
            raise SendmailError(f"syncd send: unknown option {word!r}\n{USAGE}", EX_USAGE)
    request.recipients = [r for word in words[i:] for r in word.split(",") if r.strip()]
    request.recipients = [r.strip() for r in request.recipients]
    return request


def _value(word: str, option: str, words: list[str], i: int, sep: str = "") -> tuple[str, int]:
    attached = word[len(option):]
    if attached:
        if sep and not attached.startswith(sep):
            raise SendmailError(f"syncd send: unknown option {word!r}\n{USAGE}", EX_USAGE)
        return attached[len(sep):], i
    if i >= len(words):
        raise SendmailError(f"syncd send: option {option} needs a value\n{USAGE}", EX_USAGE)
    return words[i], i + 1


def read_message(stream: BinaryIO, *, ignore_dots: bool) -> bytes:
    """The message on stdin: to end of input, or (sendmail's rule without -i/-oi) to a line
    holding a single dot."""
    try:
        if ignore_dots:
            return stream.read()
        lines = []
        for line in stream:
            if line.rstrip(b"\r\n") == b".":
                break
            lines.append(line)
        return b"".join(lines)
    except OSError as exc:
        raise SendmailError(f"syncd send: cannot read the message: {exc.strerror or exc}",
                            EX_DATAERR) from None


def choose_account(settings: Settings, sender: str | None, named: str | None
                   ) -> AccountSettings:
    """``--account``, else the account whose ``from`` matches the sender: an exact address
    before a pattern, then config order."""
    if named is not None:
        if named not in settings.accounts:
            known = ", ".join(settings.accounts) or "none"
            raise SendmailError(f"syncd send: unknown account {named!r} (configured: {known})",
                                EX_USAGE)
        return settings.accounts[named]
    if not sender:
        raise SendmailError("syncd send: the message has no From address and no -f was given; "
                            "nothing queued", EX_DATAERR)
    address = sender.lower()
    exact = [a for a in settings.accounts.values()
             if any(p.lower() == address for p in a.from_addresses)]
    matched = exact or [a for a in settings.accounts.values()
                        if any(fnmatch.fnmatchcase(address, p.lower())
                               for p in a.from_addresses)]
    if not matched:
        raise SendmailError(
            f"syncd send: no account sends as {sender!r} (set `from:` on an account, or pass "
            f"--account NAME); nothing queued", EX_DATAERR)
    return matched[0]


def send_command(settings: Settings, argv: Sequence[str], stdin: BinaryIO) -> int:
    """The whole of `syncd send`: parse, read, check, queue durably; send at once only with
    ``send_now: true``. Raises SendmailError with the sysexits status."""
    from syncd.smtp.message import BadMessage, prepare
    from syncd.smtp.queue import Outbox, Record

    request = parse_args(argv)
    raw = read_message(stdin, ignore_dots=request.ignore_dots)
    if not raw.strip():
        raise SendmailError("syncd send: the message is empty; nothing queued", EX_DATAERR)
    try:
        prepared = prepare(raw)
    except BadMessage as exc:
        raise SendmailError(f"syncd send: {exc}; nothing queued", EX_DATAERR) from None
    sender = request.sender or prepared.from_address
    account = choose_account(settings, sender, request.account)
    recipients = list(request.recipients)
    if request.read_recipients:
        recipients += prepared.header_recipients
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise SendmailError("syncd send: no recipients (give them as arguments, or -t to read "
                            "To, Cc and Bcc); nothing queued", EX_USAGE)
    if account.smtp is None:
        raise SendmailError(f"syncd send: account {account.name!r} has no SMTP server (set "
                            f"smtp: {{host: ...}} on it); nothing queued", EX_DATAERR)
    record = Record(id="", account=account.name, sender=sender or account.username,
                    recipients=recipients, created=_now(), subject=prepared.subject,
                    message_id=prepared.message_id)
    try:
        record = Outbox.of(account.state_dir, account.name).enqueue(prepared.data, record)
    except OSError as exc:
        raise SendmailError(f"syncd send: {account.name}: cannot write the outbox: "
                            f"{exc.strerror or exc}; nothing queued", EX_IOERR) from None
    log.info("%s: queued %s to %s", account.name, record.id, ", ".join(recipients))
    if account.send_now:
        _send_now(account)
    return 0


def _send_now(account: AccountSettings) -> None:
    # Queued already: a failure here only means the daemon or the next sync sends it.
    from syncd.smtp.flush import flush_account

    try:
        flush_account(account, wait=5.0)
    except SyncdError as exc:
        log.warning("%s: not sent yet (it stays queued): %s", account.name, exc)


def _now() -> float:
    import time

    return time.time()
