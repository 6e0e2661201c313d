"""The outbox against a real SMTP server on loopback (aiosmtpd with STARTTLS or implicit TLS
and AUTH, tests/support/smtp_server.py) and the test Dovecot (the Sent folder): `syncd send`
queues without touching the network; `syncd outbox flush`, `syncd sync` and the daemon send
exactly once; 4xx waits, 5xx fails, `retry` and `drop`; an unknown outcome is settled by the
Sent folder."""

from __future__ import annotations

import email
import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, User
from tests.support.smtp_server import SmtpServer
from tests.support.syncd_env import REPO, Account, run_cli, write_config

MESSAGE = (b"From: Me <me@example.org>\nTo: You <you@example.net>\n"
           b"Bcc: hidden@example.net\nSubject: hello\n\nbody line\n.\nafter a lone dot\n")


@pytest.fixture
def smtp(dovecot: Dovecot) -> Iterator[SmtpServer]:
    dovecot.ensure_certs()
    with SmtpServer(dovecot.cert_file, dovecot.key_file) as server:
        yield server


def outbox_config(tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer, *,
                  save_sent: str = "always", ca_file: Path | None = None) -> Account:
    ca = f", tls_ca_file: {ca_file}" if ca_file else ""
    extra = (f"    from: [me@example.org]\n"
             f"    smtp: {{host: 127.0.0.1, port: {smtp.port}, tls: {smtp.tls}, "
             f"username: {smtp.user}, password_command: \"printf {smtp.password}\"{ca}}}\n"
             f"    save_sent: {save_sent}\n    sent_folder: Sent\n")
    return write_config(tmp_path, dovecot, user, extra=extra)


def send(account: Account, *args: str, data: bytes = MESSAGE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(account.config),
                           "send", *args], input=data, capture_output=True, cwd=REPO,
                          timeout=60)


def outbox(account: Account) -> list[dict]:
    rc, out, _err = run_cli("--config", str(account.config), "outbox", "--json")
    assert rc == 0
    return json.loads(out)["accounts"][account.name]


def flush(account: Account) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(account.config), "outbox", "flush")
    return rc, out + err


def file_into_sent(dovecot: Dovecot, user: User) -> None:
    """Play a provider that files what it sends in Sent (Gmail, Microsoft 365)."""
    dovecot.create_folder(user, "Sent")


def test_send_queues_offline_and_flush_sends_once_with_a_sent_copy(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp)
    done = send(account, "-oi", "-t")
    assert done.returncode == 0, done.stderr
    assert smtp.messages() == [] and smtp.logins == 0  # queued, no network
    (queued,) = outbox(account)
    assert queued["state"] == "queued" and queued["subject"] == "hello"

    rc, out = flush(account)
    assert rc == 0, out
    (got,) = smtp.messages()
    assert got.mail_from == "me@example.org"
    assert sorted(got.rcpt_tos) == ["hidden@example.net", "you@example.net"]
    assert b"Bcc" not in got.data and b"after a lone dot" in got.data
    assert outbox(account) == []
    (copy,) = dovecot.messages(user, "Sent").values()
    assert copy.message_id == queued["message_id"] and "\\Seen" in copy.flags

    # The copy comes down once through the normal sync, and goes nowhere else.
    for _ in range(2):
        rc, out, err = run_cli("--config", str(account.config), "sync")
        assert rc == 0, out + err
    assert len(list((account.folder_dir("Sent") / "cur").iterdir())) == 1
    assert dovecot.count(user, "Sent") == 1 and len(smtp.messages()) == 1


def test_lone_dot_without_i_ends_the_message(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
    assert send(account, "--", "you@example.net").returncode == 0
    assert flush(account)[0] == 0
    (got,) = smtp.messages()
    assert b"body line" in got.data and b"after a lone dot" not in got.data
    assert got.rcpt_tos == ["you@example.net"]


def test_bad_input_is_refused_and_nothing_is_queued(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp)
    no_rcpt = send(account, "-oi")
    assert no_rcpt.returncode == 64 and b"no recipients" in no_rcpt.stderr
    stranger = send(account, "-oi", "x@y.org",
                    data=MESSAGE.replace(b"me@example.org", b"who@else.org"))
    assert stranger.returncode == 65 and b"who@else.org" in stranger.stderr
    assert send(account, "-oi", "x@y.org", data=b"").returncode == 65
    assert send(account, "-q").returncode == 64
    assert outbox(account) == []


def test_implicit_tls_and_an_untrusted_certificate(
        tmp_path: Path, dovecot: Dovecot, user: User) -> None:
    dovecot.ensure_certs()
    with SmtpServer(dovecot.cert_file, dovecot.key_file, tls="implicit") as smtp:
        wrong = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never",
                              ca_file=dovecot.other_ca_file)
        assert send(wrong, "-oi", "you@example.net").returncode == 0
        rc, out = flush(wrong)
        assert rc == 1 and "certificate" in out and smtp.messages() == []
        assert "certificate" in outbox(wrong)[0]["last_error"]
        right = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
        rc, out = flush(right)
        assert rc == 0 and len(smtp.messages()) == 1, (out, outbox(right))


def test_4xx_waits_5xx_fails_then_retry_and_drop(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
    assert send(account, "-oi", "you@example.net").returncode == 0
    smtp.mode = "4xx"
    rc, _out = flush(account)
    (record,) = outbox(account)
    assert rc == 1 and record["state"] == "queued" and "451" in record["last_error"]
    smtp.mode = "5xx"
    flush(account)
    (record,) = outbox(account)
    assert (record["state"], record["attempts"]) == ("failed", 2)
    assert "554 5.7.1 message refused by policy" in record["last_error"]
    smtp.mode = "ok"
    flush(account)
    assert smtp.messages() == [] and outbox(account)[0]["state"] == "failed"  # parked
    assert run_cli("--config", str(account.config), "outbox", "retry", "--all")[0] == 0
    assert flush(account)[0] == 0 and len(smtp.messages()) == 1 and outbox(account) == []

    assert send(account, "-oi", "you@example.net").returncode == 0
    ident = outbox(account)[0]["id"]
    rc, _out, err = run_cli("--config", str(account.config), "outbox", "drop", ident)
    assert rc == 2 and "--yes" in err  # not on a terminal: it does not ask, it refuses
    assert run_cli("--config", str(account.config), "outbox", "drop", ident, "--yes")[0] == 0
    assert outbox(account) == []


def test_server_down_then_back(tmp_path: Path, dovecot: Dovecot, user: User,
                               smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
    smtp.stop()
    assert send(account, "-oi", "you@example.net").returncode == 0
    rc, out = flush(account)
    assert rc == 1 and "refused" in out
    assert outbox(account)[0]["state"] == "queued"
    smtp.start()
    rc, out, err = run_cli("--config", str(account.config), "sync")  # sync flushes too
    assert rc == 0, out + err
    assert len(smtp.messages()) == 1 and outbox(account) == []


def test_unknown_outcome_found_in_sent_is_not_sent_again(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    file_into_sent(dovecot, user)
    smtp.file_sent = lambda data: dovecot.append(user, "Sent", data, ["\\Seen"])
    account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
    assert send(account, "-oi", "you@example.net").returncode == 0
    smtp.mode = "drop"  # the server takes the message and hangs up before its 250
    rc, out = flush(account)
    assert rc == 1 and "unknown" in out
    assert outbox(account)[0]["state"] == "sending"
    smtp.mode = "ok"
    rc, out = flush(account)
    assert rc == 0 and "possibly" not in out
    assert len(smtp.messages()) == 1 and outbox(account) == []
    assert dovecot.count(user, "Sent") == 1


def test_unknown_outcome_not_in_sent_is_resent_once_and_reported(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
    assert send(account, "-oi", "you@example.net").returncode == 0
    smtp.mode = "drop"
    flush(account)
    smtp.mode = "ok"
    rc, out = flush(account)
    assert rc == 0 and "1 possibly sent twice" in out
    assert len(smtp.messages()) == 2 and outbox(account) == []


def test_the_daemon_sends_when_the_server_is_back(
        tmp_path: Path, dovecot: Dovecot, user: User, smtp: SmtpServer) -> None:
    account = outbox_config(tmp_path, dovecot, user, smtp)
    smtp.stop()
    with DaemonProcess(account.config, log_path=tmp_path / "daemon.log") as daemon:
        assert send(account, "-oi", "you@example.net").returncode == 0
        daemon.wait_for_log("not sent yet", timeout=30)
        smtp.start()
        wait_until(lambda: smtp.messages(), 30, message="the daemon to send")
        wait_until(lambda: dovecot.count(user, "Sent") == 1, 30, message="the Sent copy")
        wait_until(lambda: outbox(account) == [], 10, message="an empty outbox")
        assert "sent " in daemon.log()
    assert len(smtp.messages()) == 1
    sent = email.message_from_bytes(smtp.messages()[0].data)
    assert sent["Message-ID"] and sent["Date"]


def test_one_connection_for_the_queue_and_pipelining_where_offered(
        tmp_path: Path, dovecot: Dovecot, user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue goes out over one connection (one login), and where the server offers
    PIPELINING the envelope goes in one write: smtplib's one-command-per-round-trip mail()
    and rcpt() are never called."""
    dovecot.ensure_certs()
    with SmtpServer(dovecot.cert_file, dovecot.key_file, pipelining=True) as smtp:
        account = outbox_config(tmp_path, dovecot, user, smtp, save_sent="never")
        for n in range(3):
            data = MESSAGE.replace(b"Subject: hello", f"Subject: hello {n}".encode())
            assert send(account, "-oi", "-t", data=data).returncode == 0

        def one_by_one(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a command sent on its own despite PIPELINING")

        monkeypatch.setattr(smtplib.SMTP, "mail", one_by_one)
        monkeypatch.setattr(smtplib.SMTP, "rcpt", one_by_one)
        rc, out = flush(account)
        assert rc == 0, out
        got = smtp.messages()
        assert smtp.logins == 1 and smtp.commands == 9  # 3 x (MAIL + 2 RCPT)
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in got) == [
        b"hello 0", b"hello 1", b"hello 2"]
    assert all(sorted(m.rcpt_tos) == ["hidden@example.net", "you@example.net"] for m in got)
    assert outbox(account) == []
