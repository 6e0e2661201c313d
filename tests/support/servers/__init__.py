"""The IMAP servers of the interop matrix (tests/interop): one module per server, one interface
(tests/support/servers/base.py ImapServer).

``SERVER_KINDS`` names every server the matrix runs against; ``make_server(kind, workdir)``
builds one (not started). ``start()`` raises ``ServerUnavailable`` (naming what is missing:
the matrix skips) when this machine lacks the server, ``HarnessError`` when it is there but
fails (the matrix fails). ``make interop-deps`` installs them all.

This package must not import pytest or syncd.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.servers.base import (
    HarnessError,
    ImapServer,
    ServerMessage,
    ServerUnavailable,
    ServerUser,
    normalise_body,
)
from tests.support.servers.dovecot import PROFILES, DovecotServer

#: Every server of the matrix, in the order the tests run.
SERVER_KINDS: tuple[str, ...] = (*PROFILES, "cyrus", "courier", "mailutils", "pymap")


def make_server(kind: str, workdir: Path | str) -> ImapServer:
    if kind in PROFILES:
        return DovecotServer(workdir, kind)
    if kind == "cyrus":
        from tests.support.servers.cyrus import CyrusServer

        return CyrusServer(workdir)
    if kind == "courier":
        from tests.support.servers.courier import CourierServer

        return CourierServer(workdir)
    if kind == "mailutils":
        from tests.support.servers.mailutils import MailutilsServer

        return MailutilsServer(workdir)
    if kind == "pymap":
        from tests.support.servers.pymap import PymapServer

        return PymapServer(workdir)
    raise ValueError(f"unknown server kind {kind!r} (known: {', '.join(SERVER_KINDS)})")


__all__ = ["SERVER_KINDS", "HarnessError", "ImapServer", "ServerMessage", "ServerUnavailable",
           "ServerUser", "make_server", "normalise_body"]
