"""The outbox without a network: sendmail's command line, what `syncd send` does to a message,
choosing the account, the durable queue, and the config keys."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from syncd.config.load import parse_config
from syncd.config.presets import saves_sent
from syncd.smtp import has_mail
from syncd.smtp.flush import retry_delay
from syncd.smtp.message import BadMessage, prepare
from syncd.smtp.queue import Outbox, Record
from syncd.smtp.sendmail import (
    EX_DATAERR,
    EX_USAGE,
    SendmailError,
    choose_account,
    parse_args,
    read_message,
    send_command,
)

MESSAGE = (b"From: Me <me@example.org>\nTo: a@example.net, B <b@example.net>\n"
           b"Cc: c@example.net\nBcc: hidden@example.net,\n secret@example.net\n"
           b"Subject: =?utf-8?q?caf=C3=A9?=\n\nbody\n.\nmore\n")


def config(tmp_path: Path, extra: str = "") -> str:
    return f"""
general: {{state_dir: {tmp_path}/state, maildir_root: {tmp_path}/Mail}}
accounts:
  work:
    protocol: imap
    host: imap.example.org
    username: me@example.org
    smtp: {{host: smtp.example.org}}
  other:
    protocol: imap
    host: imap.example.com
    username: u
    from: ["*@example.com", "boss@example.org"]
    smtp: {{host: smtp.example.com, port: 587}}
{extra}"""


# --- the command line ------------------------------------------------------------------------
def test_mutt_calling_convention() -> None:
    request = parse_args(["-oem", "-oi", "-B8BITMIME", "-f", "me@example.org", "-N", "never",
                          "--", "a@x.org", "b@y.org,c@z.org"])
    assert request.ignore_dots and not request.read_recipients
    assert request.sender == "me@example.org"
    assert request.recipients == ["a@x.org", "b@y.org", "c@z.org"]


def test_attached_values_account_and_t() -> None:
    request = parse_args(["-t", "-i", "-fme@x.org", "-FMe Myself", "--account=work"])
    assert (request.read_recipients, request.ignore_dots, request.sender, request.full_name,
            request.account, request.recipients) == (True, True, "me@x.org", "Me Myself",
                                                     "work", [])
    assert parse_args(["--account", "other", "x@y.org"]).account == "other"


@pytest.mark.parametrize("argv", [["-q"], ["--bogus"], ["-f"], ["--accountx"]])
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SendmailError) as info:
        parse_args(argv)
    assert info.value.exit_code == EX_USAGE


def test_lone_dot_ends_input_without_i() -> None:
    assert read_message(io.BytesIO(MESSAGE), ignore_dots=False).endswith(b"body\n")
    assert read_message(io.BytesIO(MESSAGE), ignore_dots=True) == MESSAGE


# --- the message -----------------------------------------------------------------------------
def test_prepare_drops_bcc_and_adds_message_id_and_date() -> None:
    prepared = prepare(MESSAGE)
    assert b"Bcc" not in prepared.data and b"secret@" not in prepared.data
    assert prepared.header_recipients == ["a@example.net", "b@example.net", "c@example.net",
                                          "hidden@example.net", "secret@example.net"]
    assert prepared.from_address == "me@example.org"
    assert prepared.subject == "café"
    assert prepared.message_id.endswith("@example.org>")
    assert f"Message-ID: {prepared.message_id}\n".encode() in prepared.data
    assert b"\nDate: " in prepared.data
    assert prepared.data.endswith(b"\n\nbody\n.\nmore\n")


def test_prepare_keeps_what_is_there() -> None:
    raw = (b"From: me@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <fixed@example.org>\r\nTo: a@example.net\r\n\r\nhello\r\n")
    prepared = prepare(raw)
    assert prepared.data == raw
    assert prepared.message_id == "<fixed@example.org>"


@pytest.mark.parametrize("raw", [b"\nno header", b"just some text\nwithout headers\n",
                                 b"From: x@y.org\nnot a header line\n\nbody"])
def test_prepare_refuses_what_is_not_a_message(raw: bytes) -> None:
    with pytest.raises(BadMessage):
        prepare(raw)


# --- choosing the account --------------------------------------------------------------------
def test_account_by_from(tmp_path: Path) -> None:
    settings = parse_config(config(tmp_path))
    assert choose_account(settings, "ME@example.org", None).name == "work"
    assert choose_account(settings, "boss@example.org", None).name == "other"  # exact first
    assert choose_account(settings, "x@example.com", None).name == "other"
    assert choose_account(settings, "x@elsewhere.org", "work").name == "work"
    for sender, named, code in (("x@elsewhere.org", None, EX_DATAERR), (None, None, EX_DATAERR),
                                ("me@example.org", "nope", EX_USAGE)):
        with pytest.raises(SendmailError) as info:
            choose_account(settings, sender, named)
        assert info.value.exit_code == code


def test_send_command_queues_durably_and_refuses_bad_input(tmp_path: Path) -> None:
    settings = parse_config(config(tmp_path))
    assert send_command(settings, ["-oi", "-t"], io.BytesIO(MESSAGE)) == 0
    box = Outbox.of(tmp_path / "state", "work")
    (record,) = box.records()
    assert record.state == "queued" and record.sender == "me@example.org"
    assert "secret@example.net" in record.recipients
    assert b"Bcc" not in box.message(record.id)
    assert os.stat(box.message_path(record.id)).st_mode & 0o777 == 0o600
    assert has_mail(tmp_path / "state", "work")
    for argv, raw, code in ((["-oi"], MESSAGE, EX_USAGE),  # no recipients
                            (["-oi", "x@y.org"], b"", EX_DATAERR),
                            (["-oi", "x@y.org"], b"From: x@nowhere.org\n\nhi\n", EX_DATAERR)):
        with pytest.raises(SendmailError) as info:
            send_command(settings, argv, io.BytesIO(raw))
        assert info.value.exit_code == code
    assert len(box.ids()) == 1  # nothing else queued


# --- the queue ---------------------------------------------------------------------------
def test_queue_records_and_removal(tmp_path: Path) -> None:
    box = Outbox.of(tmp_path, "a")
    first = box.enqueue(b"one", Record("", "a", "s@x", ["r@y"], 1.0))
    second = box.enqueue(b"two", Record("", "a", "s@x", ["r@y"], 2.0))
    assert box.ids() == [first.id, second.id]
    first.state, first.attempts = "failed", 3
    box.write_record(first)
    assert box.record(first.id).state == "failed"
    box.remove(first.id)
    assert box.ids() == [second.id] and not box.record_path(first.id).exists()
    # A record whose message never arrived (an enqueue killed in between) is debris.
    orphan = box.record_path("0000000000000-dead00")
    orphan.write_text(json.dumps({"id": "x"}))
    os.utime(orphan, (1, 1))
    assert box.ids() == [second.id] and not orphan.exists()


def test_lock_is_exclusive(tmp_path: Path) -> None:
    from syncd.smtp.queue import OutboxBusy

    box = Outbox.of(tmp_path, "a")
    with box.locked(), pytest.raises(OutboxBusy), Outbox.of(tmp_path, "a").locked():
        pass


# --- settings --------------------------------------------------------------------------------
def test_save_sent_auto_and_backoff(tmp_path: Path) -> None:
    settings = parse_config(config(tmp_path, """
  gmail:
    provider: gmail
    username: me@gmail.com
    auth: password
  pop:
    protocol: pop3
    host: pop.example.org
    username: u
    smtp_host: smtp.example.org
"""))
    assert saves_sent(settings.accounts["work"])
    assert not saves_sent(settings.accounts["gmail"])  # Gmail files sent mail itself
    assert not saves_sent(settings.accounts["pop"])
    gmail = settings.accounts["gmail"]
    assert gmail.smtp is not None and (gmail.smtp.host, gmail.smtp.port, gmail.smtp.tls) == (
        "smtp.gmail.com", 465, "implicit")
    assert settings.accounts["other"].smtp.tls == "starttls"  # port 587
    assert [retry_delay(n) for n in (1, 2, 3, 20)] == [2.0, 4.0, 8.0, 300.0]


class PipeliningConnection:
    """What _Flusher._envelope uses of an smtplib.SMTP that offers PIPELINING: one write of
    the whole envelope, then the scripted replies in order."""

    def __init__(self, replies: list[tuple[int, bytes]]) -> None:
        self.replies = replies
        self.writes: list[str] = []
        self.resets = 0

    def has_extn(self, name: str) -> bool:
        return name.lower() == "pipelining"

    def send(self, text: str) -> None:
        self.writes.append(text)

    def getreply(self) -> tuple[int, bytes]:
        return self.replies.pop(0)

    def rset(self) -> tuple[int, bytes]:
        self.resets += 1
        return 250, b"OK"


def envelope_through(conn: PipeliningConnection, recipients: list[str]) -> None:
    from syncd.smtp.flush import _Flusher

    flusher = object.__new__(_Flusher)  # only the envelope is under test
    flusher.account = type("A", (), {"name": "work"})()  # type: ignore[assignment]
    flusher.smtp = None
    record = Record(id="x", account="work", sender="me@example.org", recipients=recipients,
                    created=0.0)
    flusher._envelope(conn, record, b"Subject: hi\r\n\r\nbody\r\n")  # type: ignore[arg-type]


def test_pipelined_envelope_is_one_write_and_a_refused_recipient_is_skipped() -> None:
    conn = PipeliningConnection([(250, b"OK"), (550, b"no such user"), (250, b"OK")])
    envelope_through(conn, ["gone@example.net", "you@example.net"])
    assert conn.writes == ["mail FROM:<me@example.org>\r\nrcpt TO:<gone@example.net>\r\n"
                           "rcpt TO:<you@example.net>\r\n"]
    assert conn.replies == [] and conn.resets == 0


@pytest.mark.parametrize(("replies", "verdict"), [
    ([(451, b"later"), (503, b"need MAIL"), (503, b"need MAIL")], "Transient"),
    ([(250, b"OK"), (550, b"no"), (450, b"busy")], "Permanent"),  # a 5xx wins
    ([(250, b"OK"), (550, b"no"), (551, b"no")], "Permanent"),
])
def test_pipelined_refusals_read_every_reply_then_reset(
        replies: list[tuple[int, bytes]], verdict: str) -> None:
    from syncd.smtp import client

    conn = PipeliningConnection(replies)
    with pytest.raises(getattr(client, verdict)):
        envelope_through(conn, ["a@example.net", "b@example.net"])
    assert conn.replies == [] and conn.resets == 1  # the stream stays in step
