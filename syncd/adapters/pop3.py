"""Thin POP3 adapter on poplib: implicit TLS or STLS with verified certificates, USER/PASS or
AUTH PLAIN, STAT, UIDL, RETR, DELE, QUIT. No sync decisions here."""

from __future__ import annotations

import base64
import poplib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.adapters.imap import describe_connect_error, ssl_context_for
from syncd.errors import AccountError

if TYPE_CHECKING:
    from syncd.config import AccountSettings


class Pop3Session:
    """One authenticated POP3 connection for one account."""

    def __init__(self, account: AccountSettings, client: poplib.POP3,
                 capabilities: dict[str, list[str]]) -> None:
        self.account = account
        self.client = client
        self.capabilities = capabilities

    @classmethod
    def connect(cls, account: AccountSettings, password: Callable[[], str]) -> Pop3Session:
        name = account.name
        try:
            context = ssl_context_for(account.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AccountError(name, f"cannot load tls_ca_file {account.tls_ca_file}: {exc}",
                               cause="certificate") from None
        try:
            if account.tls == "implicit":
                client: poplib.POP3 = poplib.POP3_SSL(account.host, account.port,
                                                      context=context, timeout=account.timeout)
            else:
                client = poplib.POP3(account.host, account.port, timeout=account.timeout)
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line cause
            cause, message = describe_connect_error(exc, account.host, account.port)
            raise AccountError(name, message, cause=cause) from None
        try:
            capabilities = _capabilities(client)
            if account.tls == "starttls":
                if "STLS" not in capabilities:
                    raise AccountError(
                        name, f"{account.host}:{account.port} does not offer STLS; refusing to "
                        "continue in plaintext (use tls: implicit, or a server that offers STLS)",
                        cause="tls")
                client.stls(context)
                capabilities = _capabilities(client)
            secret = password()
            try:
                if "SASL" in capabilities and "PLAIN" in [m.upper() for m in
                                                          capabilities["SASL"]]:
                    _auth_plain(client, account.username, secret)
                else:
                    client.user(account.username)
                    client.pass_(secret)
            except poplib.error_proto:
                raise AccountError(
                    name, f"login as {account.username!r} on {account.host} failed: wrong "
                    "username or password", cause="auth") from None
            return cls(account, client, _capabilities(client) or capabilities)
        except AccountError:
            _close_quietly(client)
            raise
        except poplib.error_proto as exc:
            _close_quietly(client)
            raise AccountError(name, f"{account.host}: {_text(exc)}", cause="protocol") from None
        except Exception as exc:  # noqa: BLE001
            _close_quietly(client)
            cause, message = describe_connect_error(exc, account.host, account.port)
            raise AccountError(name, message, cause=cause) from None

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
        self.client.quit()

    def close(self) -> None:
        _close_quietly(self.client)


def _auth_plain(client: poplib.POP3, username: str, secret: str) -> None:
    token = base64.b64encode(f"\0{username}\0{secret}".encode()).decode("ascii")
    # poplib has no AUTH; the initial response goes on the command line (RFC 5034).
    client._shortcmd(f"AUTH PLAIN {token}")


def _capabilities(client: poplib.POP3) -> dict[str, list[str]]:
    try:
        return client.capa()
    except poplib.error_proto:
        return {}


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _close_quietly(client: poplib.POP3) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - the connection may already be gone
        pass
