"""An IMAP server side held in memory, behind the ImapSession methods one folder's sync calls
(gather, execute, record: syncd/imap/folder_sync.py). Only the hypothesis state machines of
tests/unit (test_plan_statemachine.py, test_plan_policy.py) use it.

Why a stand-in here and nowhere else: those machines run thousands of syncs per `make test`,
each after random changes on both sides; a real server costs a login, a SELECT and a dozen
round trips per sync, far too slow for that many. What a real server does with the same
commands is covered by tests/integration (Dovecot) and tests/interop (five more servers).

The stand-in is a subclass of the real ImapSession: only the methods that would go to the
network are replaced, and the pipelined writes (UID STORE, UID EXPUNGE, UID SEARCH, UID FETCH,
EXPUNGE) go through the real send_store/send_expunge/finish_expunge/flags_in, answered by a
pipeline that runs those commands on the folders below. Everything else a sync does (the
Maildir, the state, the planner, the executor) is syncd's own code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from syncd.core import flags as flagmap
from syncd.core.folders import Namespace
from syncd.core.message import body_start, header_identity
from syncd.imap.client import (
    FlagChanges,
    ImapSession,
    MessageMeta,
    Reply,
    SelectChanges,
    SelectInfo,
    parse_uid_set,
)

# The server's own flags are IMAP names; \Deleted is the letter T, as syncd maps it.
DELETED = "T"


class ServerMessage:
    """One message as the server stores it: its flags (Maildir letters) and its bytes."""

    def __init__(self, flags: str, raw: bytes) -> None:
        self.flags = flags
        self.raw = raw


class ServerFolder:
    def __init__(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.messages: dict[int, ServerMessage] = {}

    def add(self, raw: bytes, flags: str) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = ServerMessage(flagmap.normalize(flags), raw)
        return uid

    def renumber(self) -> None:
        """A new UIDVALIDITY: the same messages under new UIDs (rebuilt indexes)."""
        self.uidvalidity += 1
        old, self.messages = self.messages, {}
        for uid in sorted(old):
            self.messages[self.uidnext] = old[uid]
            self.uidnext += 1


class MemoryServer:
    """Folders by name; ``store_form`` turns a message as sent into the form stored (a server
    that adds trace fields, or stores LF line ends)."""

    def __init__(self, store_form: Any = None) -> None:
        self.folders: dict[str, ServerFolder] = {}
        self.store_form = store_form or (lambda raw: raw)

    def folder(self, name: str) -> ServerFolder:
        if name not in self.folders:
            self.folders[name] = ServerFolder(uidvalidity=len(self.folders) * 1000 + 1)
        return self.folders[name]

    def deliver(self, name: str, raw: bytes, flags: str) -> int:
        return self.folder(name).add(self.store_form(raw), flags)


class _Account:
    name = "memory"
    host = "127.0.0.1"


class MemorySession(ImapSession):
    """ImapSession on a MemoryServer, with UIDPLUS and MOVE (the capabilities syncd uses when a
    server has them) and without CONDSTORE: every sync reads every UID's flags."""

    def __init__(self, server: MemoryServer, capabilities: Iterable[str] = ("UIDPLUS", "MOVE")
                 ) -> None:
        # Not ImapSession.__init__: it talks to an IMAPClient.
        self.server = server
        self.account = _Account()  # type: ignore[assignment]
        self.capabilities = frozenset(capabilities)
        self.selected: str | None = None
        self.qresync = False
        self.condstore = False
        self._namespace = Namespace()
        self.texts_fetched = 0  # body digests asked for (tests: they cost a fetch each)

    @property
    def _folder(self) -> ServerFolder:
        assert self.selected is not None, "no folder selected"
        return self.server.folder(self.selected)

    # --- what gather and recover ask ------------------------------------------------------
    def select(self, name: str, *, readonly: bool = False) -> SelectInfo:
        self.selected = name
        folder = self.server.folder(name)
        return SelectInfo(folder.uidvalidity, folder.uidnext, len(folder.messages), None)

    def select_initial(self, name: str, *, sizes: bool) -> tuple[SelectInfo, SelectChanges]:
        info = self.select(name)
        flags = self.fetch_flags()
        meta = self.fetch_meta(flags.flags, message_ids=False) if sizes else None
        return info, SelectChanges(flags, meta, complete=True)

    def select_searching(self, name: str, since: dt.date | None
                         ) -> tuple[SelectInfo, set[int] | None]:
        # No INTERNALDATEs here: an age window's search is left to search_since (not had).
        info = self.select(name)
        return info, self.search_all_uids() if since is None else None

    def noop(self) -> None:
        pass

    def fetch_flags(self, changedsince: int | None = None) -> FlagChanges:
        assert changedsince is None  # no CONDSTORE
        return FlagChanges({uid: m.flags for uid, m in self._folder.messages.items()},
                           frozenset())

    def search_all_uids(self) -> set[int]:
        return set(self._folder.messages)

    def fetch_flags_of(self, uids: Iterable[int]) -> dict[int, str]:
        messages = self._folder.messages
        return {uid: messages[uid].flags for uid in uids if uid in messages}

    def fetch_flags_and_sizes(self, uids: Iterable[int]
                              ) -> tuple[dict[int, str], dict[int, MessageMeta]]:
        wanted = list(uids)
        return self.fetch_flags_of(wanted), self.fetch_meta(wanted, message_ids=False)

    def fetch_meta(self, uids: Iterable[int], *, message_ids: bool = True
                   ) -> dict[int, MessageMeta]:
        messages = self._folder.messages
        meta = {}
        for uid in uids:
            if uid in messages:
                raw = messages[uid].raw
                identity = header_identity(raw[:body_start(raw)]) if message_ids else None
                meta[uid] = MessageMeta(len(raw), *(identity or (None, 0)))
        return meta

    def fetch_texts(self, wanted: Sequence[tuple[int, int | None]]
                    ) -> Iterator[tuple[int, bytes]]:
        messages = self._folder.messages
        for uid, _size in wanted:
            if uid in messages:
                self.texts_fetched += 1
                raw = messages[uid].raw
                yield uid, raw[body_start(raw):]

    def search_message_id(self, message_id: str) -> list[int]:
        return [uid for uid, m in self._folder.messages.items()
                if header_identity(m.raw[:body_start(m.raw)]).message_id == message_id]

    # --- what execute asks ----------------------------------------------------------------
    def fetch_bodies(self, wanted: Sequence[tuple[int, int | None]],
                     refused: Callable[[int, str], None] | None = None,
                     spool: object = None) -> Iterator[tuple[int, bytes, dt.datetime | None]]:
        # (no spooling: the machines' messages are small)
        messages = self._folder.messages
        for uid, _size in wanted:
            if uid in messages:
                yield uid, messages[uid].raw, None

    def append(self, folder: str, data: bytes, flags: str,
               internaldate: dt.datetime | None) -> int | None:
        uid = self.server.deliver(folder, data, flags)
        return uid if "UIDPLUS" in self.capabilities else None

    def move(self, uids: Sequence[int], target: str) -> bool:
        source, into = self._folder, self.server.folder(target)
        for uid in sorted(uids):
            message = source.messages.get(uid)
            if message is not None:
                into.add(message.raw, message.flags)
                if "MOVE" in self.capabilities:
                    del source.messages[uid]
        return "MOVE" in self.capabilities

    def pipeline(self) -> MemoryPipeline:  # type: ignore[override]
        return MemoryPipeline(self)


class MemoryPipeline:
    """Runs the pipelined commands syncd sends (see the module docstring) on the selected
    folder, in order, answering each as a server would."""

    def __init__(self, session: MemorySession) -> None:
        self._session = session
        self._replies: list[Reply] = []

    def send(self, *words: str | bytes) -> int:
        text = [w.decode() if isinstance(w, bytes) else w for w in words]
        name = " ".join(text[:2]) if text[0] == "UID" else text[0]
        self._replies.append(self._run(name, text, Reply(name, "OK", "done", {})))
        return len(self._replies) - 1

    def replies(self) -> list[Reply]:
        replies, self._replies = self._replies, []
        return replies

    def _run(self, name: str, words: list[str], ok: Reply) -> Reply:
        messages = self._session._folder.messages
        if name == "UID STORE":
            uids, sign, names = parse_uid_set(words[2]), words[3][0], words[4].strip("()")
            letters = set(flagmap.from_imap(names.split()))
            for uid in uids & set(messages):
                have = set(messages[uid].flags)
                messages[uid].flags = flagmap.normalize(
                    have | letters if sign == "+" else have - letters)
            return ok
        if name == "UID FETCH":
            found = sorted(parse_uid_set(words[2]) & set(messages))
            lines = [f"{n} (UID {uid} FLAGS ({' '.join(flagmap.to_imap(messages[uid].flags))}))"
                     .encode() for n, uid in enumerate(found, 1)]
            return ok._replace(untagged={"FETCH": lines})
        if name == "UID SEARCH":
            if words[2] == "DELETED":
                found = {uid for uid, m in messages.items() if DELETED in m.flags}
            else:  # UID SEARCH UID <set>
                found = parse_uid_set(words[3]) & set(messages)
            return ok._replace(untagged={"SEARCH": [" ".join(map(str, sorted(found))).encode()]})
        if name in ("UID EXPUNGE", "EXPUNGE"):
            wanted = parse_uid_set(words[2]) if name == "UID EXPUNGE" else set(messages)
            for uid in [u for u in wanted if u in messages and DELETED in messages[u].flags]:
                del messages[uid]
            return ok
        return Reply(name, "BAD", "not understood by the in-memory server", {})
