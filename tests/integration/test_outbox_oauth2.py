"""The outbox's SMTP logins against a real SMTP server on loopback (aiosmtpd,
tests/support/smtp_server.py) that checks XOAUTH2 and OAUTHBEARER bearer tokens with the fake
identity provider that issued them (tests/support/fake_idp.py): delivery over STARTTLS and
implicit TLS, a token the server refuses refreshed once and retried, a token it keeps refusing
and a refused password reported against the account with the message kept, and no secret in
any output."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.auth import oauth
from tests.support.dovecot import Dovecot, User
from tests.support.fake_idp import FakeIdP
from tests.support.file_keyring import FileKeyring, installed
from tests.support.smtp_server import SmtpServer
from tests.support.syncd_env import config_head, run_cli, write_config

NAME = "work"
SENDER = "sender@example.org"
MESSAGE = b"From: Me <me@example.org>\nTo: You <you@example.net>\nSubject: hello\n\nbody\n"


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdP]:
    with FakeIdP(user=SENDER) as provider:
        yield provider


@pytest.fixture(autouse=True)
def _fresh(idp: FakeIdP, tmp_path: Path) -> Iterator[None]:
    """A fresh provider state, a keyring of this test's own, no cached access token."""
    idp.reset(SENDER)
    oauth._forget_providers()
    with installed(tmp_path / "keyring.json"):
        yield
    oauth._forget_providers()


def smtp_server(dovecot: Dovecot, idp: FakeIdP, tls: str = "starttls",
                mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")) -> SmtpServer:
    dovecot.ensure_certs()
    return SmtpServer(dovecot.cert_file, dovecot.key_file, tls=tls, user=SENDER,
                      oauth2=idp.introspect, oauth2_mechanisms=mechanisms)


def oauth2_config(tmp_path: Path, dovecot: Dovecot, idp: FakeIdP, smtp: SmtpServer) -> Path:
    """An OAuth2 account whose SMTP server is ``smtp`` (credentials: the account's)."""
    config = tmp_path / "config.yaml"
    config.write_text(config_head(tmp_path, NAME, protocol="imap", port=dovecot.imaps_port)
                      + f"""\
    tls_ca_file: {dovecot.ca_file}
    username: {SENDER}
    auth: oauth2
{idp.oauth2_yaml()}    from: [me@example.org]
    smtp: {{host: 127.0.0.1, port: {smtp.port}, tls: {smtp.tls}}}
    save_sent: never
""")
    return config


def signed_in(idp: FakeIdP) -> None:
    """As if `syncd auth` had run: the refresh token in the keyring."""
    FileKeyring().set_password("syncd", f"{NAME}:oauth2", str(idp.issue()["refresh_token"]))


def send(config: Path, data: bytes = MESSAGE) -> None:
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    try:
        rc, out, err = run_cli("--config", str(config), "send", "-oi", "you@example.net")
    finally:
        sys.stdin = stdin
    assert rc == 0, out + err


def flush(config: Path) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(config), "outbox", "flush")
    return rc, out + err


def queue(config: Path, account: str = NAME) -> list[dict]:
    rc, out, _err = run_cli("--config", str(config), "outbox", "--json")
    assert rc == 0
    return json.loads(out)["accounts"][account]


@pytest.mark.parametrize(("tls", "offered", "used"), [
    ("starttls", ("XOAUTH2", "OAUTHBEARER"), "OAUTHBEARER"),
    ("starttls", ("XOAUTH2",), "XOAUTH2"),
    ("implicit", ("XOAUTH2", "OAUTHBEARER"), "OAUTHBEARER"),
    ("implicit", ("XOAUTH2",), "XOAUTH2"),
])
def test_send_and_flush_with_oauth2(tmp_path: Path, dovecot: Dovecot, idp: FakeIdP,
                                    caplog: pytest.LogCaptureFixture, tls: str,
                                    offered: tuple[str, ...], used: str) -> None:
    with smtp_server(dovecot, idp, tls, offered) as smtp:
        config = oauth2_config(tmp_path, dovecot, idp, smtp)
        signed_in(idp)
        send(config)
        with caplog.at_level(logging.DEBUG):
            rc, out = flush(config)
        assert rc == 0, out
        (got,) = smtp.messages()
        assert got.rcpt_tos == ["you@example.net"] and b"Subject: hello" in got.data
        assert smtp.mechanisms == [used] and smtp.refused_tokens == 0
    assert queue(config) == []
    assert idp.counts["refresh_token"] == 1
    assert not idp.leaks(out + caplog.text)


def test_a_refused_token_is_refreshed_and_retried(tmp_path: Path, dovecot: Dovecot,
                                                  idp: FakeIdP,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The access token the process holds has expired at the provider before its time (or
    was revoked): the server refuses it, syncd refreshes it at the provider and logs in again
    on the same connection; the message goes out once."""
    with smtp_server(dovecot, idp) as smtp:
        config = oauth2_config(tmp_path, dovecot, idp, smtp)
        signed_in(idp)
        send(config)
        assert flush(config)[0] == 0
        idp.revoke_access_tokens()
        send(config, MESSAGE.replace(b"hello", b"second"))
        with caplog.at_level(logging.DEBUG):
            rc, out = flush(config)
        assert rc == 0, out
        assert len(smtp.messages()) == 2 and b"Subject: second" in smtp.messages()[1].data
        assert smtp.refused_tokens == 1 and smtp.mechanisms == ["OAUTHBEARER"] * 2
    assert idp.counts["refresh_token"] == 2
    assert "rejected the OAuth2 access token (status invalid_token); refreshing it" in out
    assert queue(config) == []
    assert not idp.leaks(out + caplog.text)


def test_an_expiring_token_is_refreshed_before_the_login(tmp_path: Path, dovecot: Dovecot,
                                                         idp: FakeIdP) -> None:
    """Short-lived tokens with the real clock: the second flush, after 3/4 of the token's
    life, logs in with a new one, so the server never sees an expired token."""
    idp.expires_in = 4
    with smtp_server(dovecot, idp) as smtp:
        config = oauth2_config(tmp_path, dovecot, idp, smtp)
        signed_in(idp)
        send(config)
        assert flush(config)[0] == 0
        time.sleep(3.2)
        send(config, MESSAGE.replace(b"hello", b"second"))
        rc, out = flush(config)
        assert rc == 0, out
        assert len(smtp.messages()) == 2 and smtp.refused_tokens == 0
    assert idp.counts["refresh_token"] == 2


def test_a_token_the_server_keeps_refusing_keeps_the_message(
        tmp_path: Path, dovecot: Dovecot, idp: FakeIdP,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tokens for another mailbox (SMTP AUTH not allowed for this app): one refresh, one
    retry, then an error naming the account, and the message stays queued."""
    with smtp_server(dovecot, idp, "implicit") as smtp:
        config = oauth2_config(tmp_path, dovecot, idp, smtp)
        signed_in(idp)
        for grant in idp.refresh.values():
            grant.user = "someone-else@example.org"
        send(config)
        with caplog.at_level(logging.DEBUG):
            rc, out = flush(config)
        assert smtp.messages() == [] and smtp.refused_tokens == 2
    assert rc == 1
    assert (f"{NAME}: outbox: 0 sent, 1 still queued (OAuth2 login (OAUTHBEARER) as "
            f"'{SENDER}' on 127.0.0.1 failed: the "
            "server rejected a freshly refreshed access token (status invalid_token). Check "
            "that SMTP access is enabled") in out
    (record,) = queue(config)
    assert record["state"] == "queued" and "freshly refreshed" in record["last_error"]
    outbox_text = "".join(p.read_text(errors="replace")
                          for p in (tmp_path / "state").rglob("*") if p.is_file()
                          and "keyring" not in p.name)
    assert not idp.leaks(out + caplog.text + json.dumps(record) + outbox_text)


def test_a_revoked_sign_in_keeps_the_message(tmp_path: Path, dovecot: Dovecot,
                                             idp: FakeIdP) -> None:
    with smtp_server(dovecot, idp) as smtp:
        config = oauth2_config(tmp_path, dovecot, idp, smtp)
        signed_in(idp)
        idp.revoke_refresh_tokens()
        send(config)
        rc, out = flush(config)
        assert smtp.messages() == [] and smtp.logins == 0
    assert rc == 1
    assert f"{NAME}: " in out and "expired or was revoked" in out
    assert f"syncd auth {NAME}" in out
    assert queue(config)[0]["state"] == "queued"
    assert not idp.leaks(out)


def test_a_refused_password_names_the_account_and_keeps_the_message(
        tmp_path: Path, dovecot: Dovecot, user: User,
        caplog: pytest.LogCaptureFixture) -> None:
    dovecot.ensure_certs()
    with SmtpServer(dovecot.cert_file, dovecot.key_file) as smtp:
        wrong = "not-the-password-4711"
        account = write_config(tmp_path, dovecot, user, extra=(
            f"    from: [me@example.org]\n"
            f"    smtp: {{host: 127.0.0.1, port: {smtp.port}, tls: starttls, "
            f"username: {smtp.user}, password_command: \"printf {wrong}\"}}\n"
            f"    save_sent: never\n"))
        send(account.config)
        with caplog.at_level(logging.DEBUG):
            rc, out = flush(account.config)
        assert smtp.messages() == [] and smtp.logins == 0
    assert rc == 1
    assert (f"{account.name}: " in out and f"SMTP login as '{smtp.user}' on 127.0.0.1 failed "
            "(535 5.7.8 Authentication credentials invalid)") in out, out
    (record,) = queue(account.config, account.name)
    assert record["state"] == "queued" and "535" in record["last_error"]
    assert wrong not in out + caplog.text + json.dumps(record)
