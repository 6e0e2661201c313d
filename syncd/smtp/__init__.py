"""The outbox (README, "Sending mail"): `syncd send` queues a message durably, the daemon,
`syncd sync` and `syncd outbox flush` send it exactly once.

- ``queue``: the queue, a Maildir per account under ``<state_dir>/outbox/`` plus one JSON
  record per message (envelope, state, attempts, last error);
- ``message``: what `syncd send` does to a message (Message-ID and Date when absent, no Bcc)
  and reads from it (envelope);
- ``sendmail``: the sendmail-compatible command line;
- ``client``: SMTP over smtplib (TLS verified, never downgraded; PLAIN/LOGIN, XOAUTH2,
  OAUTHBEARER);
- ``flush``: sending one account's queue, exactly once, and the copy in the Sent folder;
- ``sender``: the daemon's sending thread.

This module itself stays import-light: `syncd sync` asks ``has_mail`` for every account.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["has_mail", "queue_dir"]


def queue_dir(state_dir: Path, account: str) -> Path:
    """Where an account's queue lives: ``<state_dir>/outbox/<account>/``."""
    return state_dir / "outbox" / account


def has_mail(state_dir: Path, account: str) -> bool:
    """Whether the account's queue holds any message (one directory listing)."""
    try:
        with os.scandir(queue_dir(state_dir, account) / "new") as entries:
            return any(not entry.name.startswith(".") for entry in entries)
    except OSError:
        return False
