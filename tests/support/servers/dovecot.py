"""Dovecot 2.3 (tests/support/dovecot.py) behind the matrix interface, with provider profiles.

A profile changes what Dovecot *advertises* (``imap_capability``) or its personal namespace:
a client that uses only what is advertised sees the provider's feature set. syncd connects
with implicit TLS (the instance's own CA), the harness over plain IMAP.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.dovecot import Dovecot
from tests.support.servers.base import ImapServer, ServerUser

#: Exchange Online / Microsoft 365 as it advertises itself after LOGIN (issue 15): no
#: CONDSTORE/QRESYNC/ENABLE/ESEARCH/SPECIAL-USE/MOVE.
EXCHANGE_CAPABILITY = (
    "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE "
    "LITERAL+"
)
#: Gmail-like: CONDSTORE, MOVE, SPECIAL-USE, IDLE, UIDPLUS, NAMESPACE; no QRESYNC, no NOTIFY.
#: (Gmail's X-GM-EXT-1, XLIST, COMPRESS=DEFLATE, QUOTA and UTF8=ACCEPT are left out: this Dovecot
#: does not implement them, and advertising them would test Dovecot, not the client.)
GMAIL_CAPABILITY = (
    "IMAP4rev1 UNSELECT IDLE NAMESPACE ID CHILDREN UIDPLUS ENABLE MOVE CONDSTORE ESEARCH "
    "LIST-EXTENDED LIST-STATUS SPECIAL-USE LITERAL+"
)
#: RFC 3501 and nothing else: no UIDPLUS, IDLE, ENABLE, NAMESPACE, MOVE, CONDSTORE.
BARE_CAPABILITY = "IMAP4rev1"

#: kind -> (Dovecot keyword arguments, one-line description)
PROFILES: dict[str, tuple[dict[str, str | None], str]] = {
    "dovecot": ({}, "Dovecot 2.3, its full capability list"),
    "dovecot-exchange": ({"imap_capability": EXCHANGE_CAPABILITY},
                         "Dovecot advertising Exchange Online's capabilities"),
    "dovecot-gmail": ({"imap_capability": GMAIL_CAPABILITY},
                      "Dovecot advertising Gmail-like capabilities (CONDSTORE, no QRESYNC)"),
    "dovecot-bare": ({"imap_capability": BARE_CAPABILITY},
                     "Dovecot advertising bare IMAP4rev1 (no UIDPLUS, IDLE, ENABLE)"),
    "dovecot-inbox-ns": ({"inbox_prefix": "INBOX.", "separator": "."},
                         "Dovecot with a Courier-style INBOX. namespace, '.' delimiter"),
}


class DovecotServer(ImapServer):
    """One Dovecot instance with the capability profile / namespace of ``kind``."""

    tls = "implicit"

    def __init__(self, workdir: Path | str, kind: str = "dovecot") -> None:
        super().__init__(workdir)
        kwargs, self.description = PROFILES[kind]
        self.kind = kind
        self.dc = Dovecot(self.workdir, **kwargs)  # type: ignore[arg-type]
        self.port = self.dc.imap_port
        caps = kwargs.get("imap_capability")
        self.uidplus = caps is None or "UIDPLUS" in caps.split()
        self.idle_pushes = caps is None or "IDLE" in caps.split()

    @property
    def syncd_port(self) -> int:
        return self.dc.imaps_port

    @property
    def ca_file(self) -> Path:  # type: ignore[override]
        return self.dc.ca_file

    @property
    def running(self) -> bool:
        return self.dc.running

    def start(self) -> DovecotServer:
        began = time.monotonic()
        self.dc.start()  # HarnessError (a harness failure, not a skip) if it cannot start
        self.port = self.dc.imap_port
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.dc.stop(timeout)

    def _create_user(self, name: str, password: str) -> ServerUser:
        u = self.dc.add_user(password=password)
        return ServerUser(name=u.name, login=u.name, password=password)

    def force_uidvalidity_change(self, user: ServerUser, folder: str) -> int:
        """A new UIDVALIDITY with the same messages and UIDs (doveadm mailbox update), as after
        a Dovecot index rebuild. Fast: no second of waiting for a new time-based value."""
        before = self.uidvalidity(user, folder)
        self.dc.set_uidvalidity(user.name, self.server_name(user, folder), before + 1000)
        return before + 1000


__all__ = ["BARE_CAPABILITY", "EXCHANGE_CAPABILITY", "GMAIL_CAPABILITY", "PROFILES",
           "DovecotServer"]
