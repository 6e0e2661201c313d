"""The bodies of `syncd outbox [--json]`, `outbox retry|drop|flush` and the queue line of
`syncd status`; syncd.cli parses the arguments and turns errors into exit codes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TextIO

from syncd.config.settings import AccountSettings
from syncd.errors import UsageError
from syncd.smtp.queue import Outbox, Record

__all__ = ["drop", "find", "list_outbox", "queue_summary", "retry"]


def _outboxes(accounts: Iterable[AccountSettings]) -> list[Outbox]:
    return [Outbox.of(a.state_dir, a.name) for a in accounts]


def queue_summary(account: AccountSettings) -> dict[str, int]:
    """Messages per state (for `syncd status`); empty when the queue is."""
    counts: dict[str, int] = {}
    for record in Outbox.of(account.state_dir, account.name).records():
        counts[record.state] = counts.get(record.state, 0) + 1
    return counts


def list_outbox(accounts: Iterable[AccountSettings], out: TextIO, *, as_json: bool) -> None:
    data = {box.account: box.records() for box in _outboxes(accounts)}
    if as_json:
        json.dump({"accounts": {name: [asdict(r) for r in records]
                                for name, records in data.items()}}, out, indent=2)
        out.write("\n")
        return
    for name, records in data.items():
        out.write(f"{name}: {len(records) or 'no'} message(s) in the outbox\n")
        for record in records:
            out.write(_line(record))


def _line(record: Record) -> str:
    when = dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M")
    text = (f"  {record.id}  {when}  {record.state:<7}  to {', '.join(record.recipients)}"
            f"  {record.subject!r}  attempts {record.attempts}\n")
    if record.last_error:
        text += f"      last error: {record.last_error}\n"
    if record.possible_duplicate:
        text += "      possibly sent twice (an earlier attempt's outcome was unknown)\n"
    return text


def find(accounts: Iterable[AccountSettings], ident: str) -> tuple[Outbox, Record]:
    """The message whose id is (or starts with) ``ident``, in any account's queue."""
    matches = [(box, record) for box in _outboxes(accounts) for record in box.records()
               if record.id.startswith(ident)]
    if not matches:
        raise UsageError(f"no message {ident!r} in the outbox (see `syncd outbox`)")
    if len(matches) > 1 and not any(r.id == ident for _b, r in matches):
        raise UsageError(f"{ident!r} matches {len(matches)} messages; give more of the id")
    return next(((b, r) for b, r in matches if r.id == ident), matches[0])


def retry(accounts: list[AccountSettings], ids: list[str], every: bool) -> list[Record]:
    """Make failed (or waiting) messages due now."""
    if every == bool(ids):
        raise UsageError("usage: syncd outbox retry ID... | --all")
    chosen = ([(box, r) for box in _outboxes(accounts) for r in box.records()] if every
              else [find(accounts, ident) for ident in ids])
    done = []
    for box, record in chosen:
        if record.state in ("failed", "queued"):
            record.state, record.next_attempt = "queued", 0.0
            box.write_record(record)
            done.append(record)
    return done


def drop(accounts: list[AccountSettings], ident: str, *, yes: bool,
         ask: Callable[[str], str] | None) -> Record | None:
    box, record = find(accounts, ident)
    if record.state == "sending":
        raise UsageError(f"{record.id} may be on its way (state sending): run `syncd outbox "
                         "flush` first")
    if not yes:
        if ask is None:
            raise UsageError("syncd outbox drop asks before removing a message; not on a "
                             "terminal, pass --yes")
        answer = ask(f"drop {record.id} to {', '.join(record.recipients)} "
                     f"({record.subject!r})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return None
    with box.locked(wait=30.0):
        box.remove(record.id)
    return record
