"""`syncd import mbsync|offlineimap [FILE]`: read the other tool's config, add its accounts
to syncd's (syncd.migrate.importer writes them) and say what could not be carried over."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from syncd.errors import ConfigError, UsageError
from syncd.migrate.importer import add_accounts, render


def run_import(tool: str, file: Path | None, config_path: Path, *, dry_run: bool,
               out: TextIO) -> int:
    source = file or Path(os.path.expanduser("~/.mbsyncrc" if tool == "mbsync"
                                             else "~/.offlineimaprc"))
    if not source.is_file():
        raise UsageError(f"no {tool} config at {source}; give its path: syncd import {tool} FILE")
    try:
        if tool == "mbsync":
            from syncd.migrate.import_mbsync import import_mbsync

            accounts = import_mbsync(source)
        else:
            from syncd.migrate.import_offlineimap import import_offlineimap

            accounts = import_offlineimap(source)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not accounts:
        print(f"{source}: no IMAP-to-Maildir account found; nothing to import", file=out)
        return 0
    if dry_run:
        for account in accounts:
            out.write(render(account))
        print(f"(dry run: {config_path} not changed)", file=out)
        return 0
    added, skipped = add_accounts(config_path, accounts)
    for account in accounts:
        if account.name in skipped:
            print(f"{account.name}: already in {config_path}; not overwritten", file=out)
            continue
        print(f"{account.name}: added to {config_path} (from {account.source})", file=out)
        for note in account.not_carried:
            print(f"  {note}", file=out)
    if added:
        print("next: `syncd adopt NAME` to take over the Maildir with no download, then "
              "`syncd sync NAME`", file=out)
    return 0
