"""A real SMTP server on 127.0.0.1 for the outbox tests (aiosmtpd, in a thread).

- TLS with the test Dovecot's certificate (signed by its test CA): implicit TLS
  (``tls="implicit"``) or STARTTLS required before anything else (``tls="starttls"``).
- AUTH PLAIN/LOGIN against one user and password (only over TLS, as aiosmtpd insists).
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

import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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
            self.logins += 1
        return AuthResult(success=ok)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {
            "authenticator": self._authenticate, "auth_required": True,
            "auth_exclude_mechanism": ["CRAM-MD5"],
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
