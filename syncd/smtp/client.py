"""SMTP with smtplib: connect with TLS verified as for IMAP (implicit TLS, or STARTTLS that is
required, never skipped), authenticate (PLAIN or LOGIN with the account's password source;
OAUTHBEARER or XOAUTH2 with its OAuth2 tokens), and map every failure to a verdict:

- ``Transient`` (network, timeout, 4xx): retry later with backoff;
- ``Permanent`` (5xx): the message is parked as failed with the server's reply;
- ``AccountError`` (TLS, certificate, login): retried with backoff, reported as such.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.errors import AccountError
from syncd.net import describe_connect_error, ssl_context_for

if TYPE_CHECKING:
    from syncd.auth.oauth import OAuthSasl
    from syncd.config.settings import AccountSettings, SmtpSettings

__all__ = ["Permanent", "SmtpFailure", "Transient", "connect", "reply_text"]

log = logging.getLogger("syncd.outbox")

# Privacy: no host name of this laptop in EHLO (msmtp's default too).
EHLO_NAME = "localhost"


class SmtpFailure(Exception):
    """The server refused, or the connection failed; ``str()`` says what and where."""


class Transient(SmtpFailure):
    pass


class Permanent(SmtpFailure):
    pass


def reply_text(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def refusal(code: int, message: bytes | str, what: str) -> SmtpFailure:
    """The verdict on a reply: 4xx transient, anything else (5xx) permanent."""
    kind = Transient if 400 <= code < 500 else Permanent
    return kind(f"{what}: {reply_text(code, message)}")


def _smtp(account: AccountSettings) -> SmtpSettings:
    assert account.smtp is not None
    return account.smtp


def connect(account: AccountSettings, password: Callable[[], str]) -> smtplib.SMTP:
    """An authenticated SMTP connection. Raises AccountError (TLS, login) or Transient."""
    smtp = _smtp(account)
    ca_file = smtp.tls_ca_file or account.tls_ca_file
    try:
        context = ssl_context_for(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise AccountError(account.name, f"cannot load tls_ca_file {ca_file}: {exc}",
                           cause="certificate") from None
    try:
        if smtp.tls == "implicit":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, EHLO_NAME,
                                                  timeout=account.timeout, context=context)
        else:
            conn = smtplib.SMTP(smtp.host, smtp.port, EHLO_NAME, timeout=account.timeout)
    except smtplib.SMTPConnectError as exc:
        raise refusal(exc.smtp_code, exc.smtp_error, f"{smtp.host}:{smtp.port}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise _connect_failure(account, exc) from None
    try:
        _secure_and_login(account, conn, context, password)
    except BaseException:
        _close(conn)
        raise
    return conn


def _connect_failure(account: AccountSettings, exc: BaseException) -> Exception:
    smtp = _smtp(account)
    cause, message = describe_connect_error(exc, smtp.host, smtp.port)
    if cause in ("certificate", "tls"):
        return AccountError(account.name, f"SMTP: {message}", cause=cause)
    if isinstance(exc, smtplib.SMTPResponseException):
        return refusal(exc.smtp_code, exc.smtp_error, f"{smtp.host}:{smtp.port}")
    return Transient(f"SMTP {message}")


def _secure_and_login(account: AccountSettings, conn: smtplib.SMTP, context: ssl.SSLContext,
                      password: Callable[[], str]) -> None:
    smtp = _smtp(account)
    try:
        conn.ehlo_or_helo_if_needed()
        if smtp.tls == "starttls":
            if not conn.has_extn("starttls"):
                raise AccountError(account.name, f"SMTP {smtp.host}:{smtp.port} does not offer "
                                   "STARTTLS; refusing to continue in plaintext", cause="tls")
            code, message = conn.starttls(context=context)
            if code != 220:  # smtplib raises for most refusals; never go on in plaintext
                raise AccountError(account.name, f"SMTP {smtp.host}:{smtp.port} refused "
                                   f"STARTTLS ({reply_text(code, message)})", cause="tls")
            conn.ehlo()
        _login(account, conn, password)
    except (AccountError, SmtpFailure):
        raise
    except smtplib.SMTPNotSupportedError:
        raise AccountError(account.name, f"SMTP {smtp.host}:{smtp.port} does not offer "
                           "STARTTLS; refusing to continue in plaintext", cause="tls") from None
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise Transient(f"SMTP {smtp.host}: {reply_text(exc.smtp_code, exc.smtp_error)}"
                            ) from None
        raise AccountError(account.name, f"SMTP {smtp.host}: "
                           f"{reply_text(exc.smtp_code, exc.smtp_error)}", cause="protocol"
                           ) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise _connect_failure(account, exc) from None


def _login(account: AccountSettings, conn: smtplib.SMTP, password: Callable[[], str]) -> None:
    smtp = _smtp(account)
    offered = (conn.esmtp_features.get("auth") or "").upper().split()
    if not offered:
        # A relay that takes mail without a login (a local smarthost): nothing to send.
        log.debug("%s: SMTP %s offers no AUTH; sending without logging in", account.name,
                  smtp.host)
        return
    username = smtp.username or account.username
    if account.auth == "oauth2":
        _oauth2_login(account, conn, offered, username)
        return
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise AccountError(account.name, f"SMTP {smtp.host} offers no password login "
                           f"(AUTH {' '.join(offered)}); syncd uses PLAIN or LOGIN",
                           cause="auth")
    conn.user, conn.password = username, password()
    authobject = conn.auth_plain if mechanism == "PLAIN" else conn.auth_login
    try:
        conn.auth(mechanism, authobject)
    except smtplib.SMTPAuthenticationError as exc:
        if 400 <= exc.smtp_code < 500:
            raise Transient(f"SMTP {smtp.host}: login: "
                            f"{reply_text(exc.smtp_code, exc.smtp_error)}") from None
        raise AccountError(account.name, f"SMTP login as {username!r} on {smtp.host} failed "
                           f"({reply_text(exc.smtp_code, exc.smtp_error)})", cause="auth"
                           ) from None


def _oauth2_login(account: AccountSettings, conn: smtplib.SMTP, offered: list[str],
                  username: str) -> None:
    from syncd.auth.oauth import SaslRejected, choose_mechanism, login_with_oauth2, token_provider

    smtp = _smtp(account)
    mechanism = choose_mechanism(offered)

    def authenticate(sasl: OAuthSasl) -> None:
        def respond(challenge: bytes | None = None) -> str:
            if challenge is None:
                return sasl.initial_response(username).decode("ascii")
            sasl.record_challenge(challenge)
            # smtplib base64-encodes what we return; an error challenge gets the empty or
            # %x01 response, after which the server sends its final refusal.
            return sasl.error_response().decode("ascii")

        try:
            conn.auth(mechanism, respond, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            raise SaslRejected(reply_text(exc.smtp_code, exc.smtp_error)) from None

    login_with_oauth2(account, mechanism, smtp.host, smtp.port, authenticate,
                      token_provider(account, "smtp"), username=username)


def _close(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        conn.close()


def quit_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        _close(conn)
