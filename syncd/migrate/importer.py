"""`syncd import mbsync|offlineimap [FILE]`: the other tool's accounts as syncd accounts.

Every setting of the other tool's file is either carried over or named in the report (and in
a comment in the account's block) with its value and why: none is dropped silently. The
accounts are added to the config as text (initconfig's way: comments and order kept), never
over an existing account of the same name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.errors import ConfigError


@dataclass
class ImportedAccount:
    name: str
    source: str  # where it came from, for the report
    # syncd keys, in writing order
    settings: dict[str, Any] = field(default_factory=lambda: {"protocol": "imap"})
    not_carried: list[str] = field(default_factory=list)

    def skip(self, setting: str, value: str | None, why: str) -> None:
        shown = f"{setting} {value}" if value not in (None, "") else setting
        self.not_carried.append(f"{shown}: not carried over: {why}")


def account_name(text: str) -> str:
    """A valid syncd account name from the other tool's (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "mail"
    return name[:64]


# --- YAML text --------------------------------------------------------------------------------

def render(account: ImportedAccount, indent: str = "  ") -> str:
    from syncd.config.init import _scalar

    inner = indent * 2 if len(indent) <= 4 else indent + "  "
    lines = [f"{indent}{account.name}:", f"{inner}# imported from {account.source}"]
    lines += [f"{inner}# {note}" for note in account.not_carried]
    for key, value in account.settings.items():
        if isinstance(value, dict):
            lines.append(f"{inner}{key}:")
            for sub, item in value.items():
                lines.append(f"{inner}  {_key(sub)}: {_flow(item)}")
        elif isinstance(value, list):
            lines.append(f"{inner}{key}: {_flow(value)}")
        else:
            lines.append(f"{inner}{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    """A mapping key: plain when it reads back as itself (not a glob like ``*``)."""
    from syncd.config.init import _scalar

    return _scalar(key) if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", key) else (
        json.dumps(key, ensure_ascii=False))


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
    from syncd.config.init import _scalar

    return _scalar(value)


def add_accounts(path: Path, accounts: list[ImportedAccount]) -> tuple[list[str], list[str]]:
    """Insert the accounts into the config at ``path``; returns (added, skipped) names. The
    result is validated as a whole before the file is replaced (atomically)."""
    from syncd.config.init import _write_atomically, with_account
    from syncd.config.load import parse_config

    try:
        text = path.read_text(encoding="utf-8")
        exists = True
    except FileNotFoundError:
        text, exists = "", False
    existing: set[str] = set()
    if text.strip():
        try:
            existing = set(parse_config(text, str(path)).accounts)
        except ConfigError as exc:
            if "no accounts" not in str(exc) and "no 'accounts'" not in str(exc):
                raise ConfigError(str(exc).removeprefix("config error: ") +
                                  "; fix it before importing") from None
    added, skipped = [], []
    for account in accounts:
        if account.name in existing:
            skipped.append(account.name)
            continue
        text = with_account(text, lambda indent, account=account: render(account, indent))
        existing.add(account.name)
        added.append(account.name)
    if added:
        try:
            parse_config(text, str(path))
        except ConfigError as exc:
            raise ConfigError("the accounts were not added: " +
                              str(exc).removeprefix("config error: ")) from None
        _write_atomically(path, text, exists)
    return added, skipped
