"""A real SMTP server on 127.0.0.1 for the outbox tests (aiosmtpd, in a thread).

- TLS with the test Dovecot's certificate (signed by its test CA): implicit TLS
  (``tls="implicit"``) or STARTTLS required before anything else (``tls="starttls"``).
- AUTH PLAIN/LOGIN against one user and password (only over TLS, as aiosmtpd insists).
- With ``oauth2`` (a function from an access token to the user it was issued to, or None:
  ``FakeIdP.introspect``), AUTH XOAUTH2 and OAUTHBEARER too (``oauth2_mechanisms`` says
  which), answering a refused token as Gmail and Microsoft do: a 334 challenge carrying the
  JSON error, then 535 after the client's empty (XOAUTH2) or %x01 (OAUTHBEARER) reply.
  ``mechanisms`` lists the mechanism of every successful login.
- ``mode`` (settable at any time): ``ok``; ``4xx`` / ``5xx`` (the end of DATA is answered
  451 / 554); ``drop`` (the message is received and recorded, then the connection is closed
  without the final reply: the outcome is unknown to the client, the exactly-once case).
- ``file_sent``: called with every recorded message (a provider that files sent mail in the
  Sent folder itself; the tests APPEND it to the Dovecot user's Sent).
- ``stop()`` / ``start()`` on the same port (a server that is down, then back).
- ``pipelining``: advertise PIPELINING (RFC 2920) in the EHLO reply; aiosmtpd reads commands
  one line at a time, so pipelined commands work either way. ``commands`` counts the
  envelope commands (MAIL, RCPT) received.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

# aiosmtpd warns, per connection, about AUTH without STARTTLS: with implicit TLS it is TLS.
warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(self, smtp: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, smtp: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.server.commands += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, smtp: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.server.commands += 1
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        mode = self.server.mode
        if mode == "4xx":
            return "451 4.3.0 try again later"
        if mode == "5xx":
            return "554 5.7.1 message refused by policy"
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        with self.server.lock:
            self.server.received.append(received)
        if self.server.file_sent is not None:
            self.server.file_sent(received.data)
        if mode == "drop":
            smtp.transport.abort()  # recorded, but the client never hears 250
        return "250 2.0.0 queued"

    # aiosmtpd finds AUTH mechanisms by name on the handler (auth_<MECHANISM>), called with
    # the server and the AUTH command's arguments.
    async def auth_XOAUTH2(self, smtp: Any, args: list[str]) -> AuthResult:
        return await self._oauth2(smtp, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, smtp: Any, args: list[str]) -> AuthResult:
        return await self._oauth2(smtp, "OAUTHBEARER", args)

    async def _oauth2(self, smtp: Any, mechanism: str, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                response = base64.b64decode(args[1], validate=True)
            except ValueError:
                await smtp.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            response = await smtp.challenge_auth("")
            if response is MISSING:
                return AuthResult(success=False, handled=True)
        user, token = _bearer(response)
        if user is not None and user == self.server.user and token is not None \
                and self.server.oauth2 is not None and self.server.oauth2(token) == user:
            with self.server.lock:
                self.server.logins += 1
                self.server.mechanisms.append(mechanism)
            return AuthResult(success=True, auth_data=user)
        with self.server.lock:
            self.server.refused_tokens += 1
        status = "invalid_token" if mechanism == "OAUTHBEARER" else "401"
        error = json.dumps({"status": status, "schemes": "bearer", "scope": "mail"})
        if await smtp.challenge_auth(error) is MISSING:  # the client's empty / %x01 reply
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


def _bearer(response: bytes) -> tuple[str | None, str | None]:
    """(user, token) of an XOAUTH2 or OAUTHBEARER initial response."""
    text = response.decode("utf-8", "replace")
    user = token = None
    if text.startswith(("n,", "y,")):  # OAUTHBEARER's gs2 header: n,a=USER,
        gs2, _, text = text.partition("\x01")
        for part in gs2.split(",")[1:]:
            if part.startswith("a="):
                user = part[2:].replace("=2C", ",").replace("=3D", "=")
    for pair in text.split("\x01"):
        key, _, value = pair.partition("=")
        if key == "user":
            user = value
        elif key == "auth" and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ")
    return user, token


@dataclass
class SmtpServer:
    cert_file: Path
    key_file: Path
    tls: str = "starttls"  # starttls | implicit
    user: str = "sender"
    password: str = "secret"
    mode: str = "ok"
    file_sent: Callable[[bytes], None] | None = None
    port: int = field(default_factory=_free_port)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    logins: int = 0
    pipelining: bool = False
    commands: int = 0
    oauth2: Callable[[str], str | None] | None = None
    oauth2_mechanisms: tuple[str, ...] = ("XOAUTH2", "OAUTHBEARER")
    mechanisms: list[str] = field(default_factory=list)
    refused_tokens: int = 0
    _controller: Controller | None = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def _authenticate(self, _smtp: Any, _session: Any, _envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login.decode() == self.user
              and data.password.decode() == self.password)
        if ok:
            with self.lock:
                self.logins += 1
                self.mechanisms.append(mechanism)
        # handled=False: aiosmtpd then answers a refusal with 535 (handled=True, its default,
        # would leave the client waiting for a reply that never comes).
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {
            "authenticator": self._authenticate, "auth_required": True,
            "auth_exclude_mechanism": ["CRAM-MD5", *(
                m for m in ("XOAUTH2", "OAUTHBEARER")
                if self.oauth2 is None or m not in self.oauth2_mechanisms)],
        }
        if self.tls == "implicit":
            # aiosmtpd does not see TLS under it then, and would hide AUTH "until STARTTLS".
            kwargs.update(ssl_context=self._context(), auth_require_tls=False)
        else:
            kwargs.update(tls_context=self._context(), require_starttls=True)
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port,
                                      ready_timeout=10, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
