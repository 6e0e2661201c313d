"""Test support code shared by the test suite, the demo and the benchmarks.

Nothing in here imports pytest or syncd: the harness is an independent oracle.
"""

from tests.support.dovecot import (
    PLAIN_IMAP_CAPABILITY,
    Dovecot,
    HarnessError,
    ServerMessage,
    User,
    imap_utf7_decode,
    imap_utf7_encode,
    make_message,
)

__all__ = [
    "PLAIN_IMAP_CAPABILITY",
    "Dovecot",
    "HarnessError",
    "ServerMessage",
    "User",
    "imap_utf7_decode",
    "imap_utf7_encode",
    "make_message",
]
