"""Logging set-up: readable lines on a terminal; under systemd (JOURNAL_STREAM set) no
timestamps and syslog priority prefixes so journald keeps the levels; every handler redacts
registered secrets."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from syncd.auth.secrets import RedactingFilter

# syslog priorities (sd-daemon(3)): journald parses a leading "<N>".
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Every line of a multi-line message needs its own prefix to keep its level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def under_journal(stream: TextIO) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup_logging(level: str = "info", *, debug: bool = False,
                  stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    if under_journal(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                               datefmt="%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    effective = logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO)
    root.setLevel(effective)
    # Protocol traces only with --debug; imapclient redacts LOGIN itself and our filter
    # catches every registered secret besides.
    for name in ("imapclient", "imapclient.protocol", "imapclient.imaplib"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.INFO if debug else logging.WARNING)
    # watchdog logs a harmless ERROR when its inotify thread is stopped during shutdown.
    logging.getLogger("watchdog").setLevel(logging.DEBUG if debug else logging.CRITICAL)
