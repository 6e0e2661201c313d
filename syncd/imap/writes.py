"""Writing flag changes, deletions and new messages to an IMAP server that may not keep what
it is sent, without ever expunging a message the user did not delete.

- A flag the folder does not keep (``storable`` lacks it: PERMANENTFLAGS, or learned before)
  is never sent. A keyword the server refuses (mailutils: "BAD Unrecognized flag") is that
  flag's problem, not the folder's: the STORE or APPEND is sent again without it, and the
  letter is reported as unkept. A keyword the server accepts and drops (pymap; Dovecot where
  the ACL withholds the right) is found by reading the flags back, and reported the same way.
  The caller remembers unkept letters per folder; the planner then keeps them local-only.
- Deletions go through ImapSession.send_expunge/finish_expunge: UID EXPUNGE, or a plain
  EXPUNGE only while the folder's \\Deleted set is ours alone; otherwise they are deferred.

Only keywords are ever learned as unkept: a server that does not keep a system flag says so
in PERMANENTFLAGS, and one lost read-back (another client clearing \\Seen in between) must not
make \\Seen local-only for good.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from syncd.core.actions import PushFlags
from syncd.core.flags import KEYWORD_LETTERS, LETTER_TO_IMAP, Flags, normalize
from syncd.faults import checkpoint
from syncd.imap.client import (
    AppendSource,
    ExpungeOutcome,
    ImapSession,
    Pipeline,
    Reply,
    flags_in,
)

log = logging.getLogger("syncd.imap")


class WriteOutcome(NamedTuple):
    """What the server accepted: ``pushed`` flag changes (their ``flags`` are the new synced
    flags), the letters it showed it does not keep (``unkept``), what happened to the
    deletions, and the replies it refused for other reasons (a folder error)."""

    pushed: list[PushFlags]
    unkept: Flags
    expunge: ExpungeOutcome
    refused: list[Reply]


class _Store(NamedTuple):
    """One UID STORE (+ or -) of ``letters`` on the UIDs of ``actions``, as sent."""

    actions: tuple[PushFlags, ...]
    sign: str
    letters: Flags
    indexes: tuple[int, ...]


def imap_names(letters: Iterable[str]) -> str:
    return " ".join(LETTER_TO_IMAP[letter] for letter in normalize(letters))


def _keep(letters: Flags, storable: Flags) -> Flags:
    return normalize(set(letters) & set(storable))


def _keywords(letters: Flags) -> Flags:
    return normalize(set(letters) & KEYWORD_LETTERS)


def _send_stores(session: ImapSession, pipe: Pipeline, groups: Mapping[tuple[Flags, Flags],
                 Sequence[PushFlags]]) -> list[_Store]:
    stores: list[_Store] = []
    for (add, remove), actions in groups.items():
        uids = [a.uid for a in actions]
        for sign, letters in (("+", add), ("-", remove)):
            if letters:
                indexes = session.send_store(pipe, uids, letters if sign == "+" else "",
                                             letters if sign == "-" else "")
                stores.append(_Store(tuple(actions), sign, letters, tuple(indexes)))
        checkpoint("push-flags.store")
    return stores


def write_changes(session: ImapSession, pushes: Sequence[PushFlags], to_expunge: Sequence[int],
                  storable: Flags) -> WriteOutcome:
    """Flag changes and the expunge of ``to_expunge``, pipelined: one round trip (plus one
    for a plain EXPUNGE without UIDPLUS, and one more only when the server refused a keyword).
    The keywords added are read back in the same batch."""
    groups = _group_pushes(pushes, storable)
    pipe = session.pipeline()
    stores = _send_stores(session, pipe, groups)
    # Read back what was added of keywords: a server may accept them and keep nothing.
    checked = sorted({a.uid for (add, _), actions in groups.items() if _keywords(add)
                      for a in actions})
    if checked:
        session.send_fetch_flags(pipe, checked)
    request = session.send_expunge(pipe, to_expunge)
    if to_expunge:
        checkpoint("delete-remote.expunge")
    replies = pipe.replies()

    verdict = _Verdict()
    retry = _judge_stores(session, stores, replies, verdict)
    verdict.unkept.update(_dropped_keywords(groups, flags_in(replies), verdict.failed))
    if retry:
        _store_again(session, retry, verdict)
    expunged = session.finish_expunge(request, replies)
    if request.uids and not expunged.expunged and not expunged.deferred:
        verdict.refused.extend(replies[i] for i in (*request.stores, *request.expunges)
                               if not replies[i].ok)
    pushed = [a for a in pushes if a.uid not in verdict.failed]
    return WriteOutcome(pushed, normalize(verdict.unkept), expunged, verdict.refused)


class _Verdict:
    """What the server made of the STOREs: letters it does not keep, the UIDs whose change it
    refused (not for a keyword), and those refusals."""

    def __init__(self) -> None:
        self.unkept: set[str] = set()
        self.failed: set[int] = set()
        self.refused: list[Reply] = []


def _group_pushes(pushes: Sequence[PushFlags], storable: Flags
                  ) -> dict[tuple[Flags, Flags], list[PushFlags]]:
    """The pushes by (letters added, letters removed), so that equal changes share a STORE."""
    groups: dict[tuple[Flags, Flags], list[PushFlags]] = defaultdict(list)
    for action in pushes:
        # The planner sends no unkept letter; strip them anyway (a pair made while
        # downloading does not know the folder's storable letters).
        groups[(_keep(action.add, storable), _keep(action.remove, storable))].append(action)
    return groups


def _judge_stores(session: ImapSession, stores: list[_Store], replies: Sequence[Reply],
                  verdict: _Verdict) -> dict[tuple[Flags, Flags], list[PushFlags]]:
    """Sort the refused STOREs into ``verdict``; returns the changes to send again without
    the keywords the server refused (that flag's problem, not the message's)."""
    retry: dict[tuple[Flags, Flags], list[PushFlags]] = defaultdict(list)
    for store in stores:
        bad = [replies[i] for i in store.indexes if not replies[i].ok]
        if not bad:
            continue
        keywords = _keywords(store.letters)
        if not keywords:
            verdict.refused.extend(bad)
            verdict.failed.update(a.uid for a in store.actions)
            continue
        log.info("%s: the server refused %s (%s); kept locally only", session.account.name,
                 imap_names(keywords), bad[0].text)
        verdict.unkept.update(keywords)
        rest = normalize(set(store.letters) - set(keywords))
        if rest:
            key = (rest, "") if store.sign == "+" else ("", rest)
            retry[key].extend(store.actions)
    return retry


def _dropped_keywords(groups: Mapping[tuple[Flags, Flags], Sequence[PushFlags]],
                      read_back: Mapping[int, Flags], failed: set[int]) -> set[str]:
    """Keywords the server accepted and did not keep, as the flags read back show."""
    dropped: set[str] = set()
    for (add, _), actions in groups.items():
        for action in actions:
            have = read_back.get(action.uid)
            if have is not None and action.uid not in failed:
                dropped.update(set(_keywords(add)) - set(have))
    return dropped


def _store_again(session: ImapSession, retry: Mapping[tuple[Flags, Flags],
                 Sequence[PushFlags]], verdict: _Verdict) -> None:
    """The second round trip: the changes without their refused keywords."""
    pipe = session.pipeline()
    stores = _send_stores(session, pipe, retry)
    replies = pipe.replies()
    for store in stores:
        bad = [replies[i] for i in store.indexes if not replies[i].ok]
        if bad:
            verdict.refused.extend(bad)
            verdict.failed.update(a.uid for a in store.actions)


class Appended(NamedTuple):
    uid: int | None
    unkept: Flags  # keywords the server refused on this APPEND


def append_keeping(session: ImapSession, folder: str, data: bytes | AppendSource, flags: Flags,
                   internaldate: dt.datetime | None, storable: Flags) -> Appended:
    """APPEND with the flags the folder keeps. A refusal (NO/BAD) while keywords were given
    is taken for theirs (mailutils refuses any keyword on APPEND): nothing was stored, so the
    message is sent once more without them. Any other refusal is raised as before."""
    from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

    kept = _keep(flags, storable)
    try:
        return Appended(session.append(folder, data, kept, internaldate), "")
    except IMAPClientError as exc:
        keywords = _keywords(kept)
        if isinstance(exc, IMAPClientAbortError) or not keywords:
            raise
        log.info("%s/%s: the server refused an APPEND with %s (%s); sent again without",
                 session.account.name, folder, imap_names(keywords), exc)
    uid = session.append(folder, data, normalize(set(kept) - set(keywords)), internaldate)
    return Appended(uid, keywords)


def verify_appended(session: ImapSession, wanted: Mapping[int, Flags],
                    storable: Flags) -> Flags:
    """Read back the flags of messages just APPENDed (UID -> the flags given) in the selected
    folder. A server may ignore APPEND's flags (mailutils with Maildir): what is missing is
    set with a STORE, and a keyword that still does not stick is returned as unkept."""
    if not wanted:
        return ""
    pipe = session.pipeline()
    session.send_fetch_flags(pipe, list(wanted))
    have = flags_in(pipe.replies())
    fixes = [PushFlags(uid, "", add=missing, remove="", flags=flags)
             for uid, flags in sorted(wanted.items())
             if uid in have and (missing := normalize(set(_keep(flags, storable))
                                                      - set(have[uid])))]
    if not fixes:
        return ""
    outcome = write_changes(session, fixes, (), storable)
    for reply in outcome.refused:
        log.warning("%s: flags of an uploaded message not set: %s %s", session.account.name,
                    reply.status, reply.text)
    return outcome.unkept
