"""POP3 accounts: download into the account's INBOX Maildir, then (by default) delete from the
server, never losing and never duplicating a message.

The order for every message (docs/architecture.md, "The order that makes kill -9 safe"):

1. an intent naming the Maildir key the message will get is committed (in blocks: one commit
   for many messages);
2. RETR, streamed straight into ``tmp/`` (CRLF -> LF), fsync, link into ``new/``;
3. once per group of messages: one fsync of the directories, then one state commit that
   records every UIDL of the group and clears its intents;
4. DELE, only for messages whose UIDL is committed; QUIT commits the deletions on the server.

A crash anywhere is safe: before 2 completes nothing is on disk; between 2 and 3 the intent
names the key, and the next run finds the file and records the UIDL without downloading it
again; between 3 and QUIT the server restores the DELEted messages (RFC 1939), and since their
UIDLs are recorded they are only DELEted again, never delivered twice.

Identity of a message, and the content-hash fallback
----------------------------------------------------
A message is known by its UIDL. When the server has no UIDL command, or lists one UIDL for
several messages (a broken server), those messages are known instead by
``sha256:<hex>``: the SHA-256 of the message as stored in the Maildir (the server's bytes
with CRLF turned into LF). Such a message has to be downloaded before it can be recognised,
so every poll retrieves all of them again (in download-and-delete mode they are gone after the
first poll, so this only costs something with ``leave_on_server``). Two byte-identical messages
on such a server count as one: the second is deleted (or left alone) as already downloaded.

The same hashes re-pair a mailbox with the Maildir when the state cannot help: after the state
database was found corrupt (and rebuilt), or on the first run of a ``leave_on_server`` account
whose INBOX already holds mail (e.g. fetched by fetchmail before). Messages are then
downloaded once more into a spool file and compared with the local files; a match is recorded,
not delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from syncd import faults
from syncd.core.model import Pop3Known, Pop3Plan
from syncd.core.plan import plan_pop3
from syncd.errors import AccountError
from syncd.outcome.results import AccountResult, FolderResult
from syncd.pop3.client import ListedMessage, Pipeline, Pop3Session
from syncd.store.maildir import Maildir, MaildirFolder, crlf_to_lf_stream
from syncd.store.state import StateStore, StateTooNew

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings, Settings

log = logging.getLogger("syncd.pop3")

INBOX = ("INBOX",)
#: The intent op of a POP3 delivery (see syncd.store.state.Intent).
INTENT_OP = "pop3_retr"
#: Prefix of a content-hash identity in the pop3_seen table (a UIDL never contains ":").
HASH_PREFIX = "sha256:"
# Group commit: this many messages (or bytes) share one directory fsync and one state commit.
# Bigger groups save fsyncs; smaller ones lose less work to a dropped connection (nothing is
# ever lost either way: an uncommitted delivery is recovered from its intent).
GROUP_COUNT = 100
GROUP_BYTES = 32 * 1024 * 1024
# Content-path messages are held in memory up to this size, then spill to a temporary file.
SPOOL_MEMORY = 1024 * 1024
# Parallel delivery. The floor of a Maildir delivery is one fsync per message file, and a
# single thread pays each one in full (measured: 2-9 ms per file on ext4, worse on a busy
# disk); concurrent fsyncs share journal commits (16 threads: ~0.5 ms per file). So messages
# up to POOLED_MAX are read into memory and written by DELIVERY_THREADS workers while the main
# thread reads the next replies; bigger ones stream straight to disk in the main thread.
# At most MAX_PENDING are waiting, so memory stays bounded (<= MAX_PENDING * POOLED_MAX).
# The durability order is unchanged: a group is recorded only after all its writes finished
# and the directory fsync that follows them.
DELIVERY_THREADS = 8
POOLED_MAX = 256 * 1024
MAX_PENDING = 32
_CHUNK = 1 << 16

# How a retrieved message is handled: "keyed" (a unique UIDL: streamed straight into the
# Maildir), "pair" (a unique UIDL, but the state cannot say what is local: spooled and matched
# with local files by content first), "content" (no usable UIDL: spooled, identified by hash).
Mode = Literal["keyed", "pair", "content"]


class Pop3FolderResult(FolderResult):
    """FolderResult plus what only POP3 has: messages left on the server for their size, and
    RETRs the server refused."""

    def __init__(self, folder: str, *, skipped: int = 0, skipped_bytes: int = 0,
                 retrieve_failed: int = 0, **counts: Any) -> None:
        super().__init__(folder, **counts)
        self.skipped = skipped
        self.skipped_bytes = skipped_bytes
        self.retrieve_failed = retrieve_failed


class Pop3AccountResult(AccountResult):
    """AccountResult with a POP3-shaped summary (there is no upload or flag sync)."""

    def summary(self) -> str:
        down = sum(f.downloaded for f in self.folders)
        size = sum(f.downloaded_bytes for f in self.folders)
        deleted = sum(f.deleted_remote for f in self.folders)
        skipped = sum(getattr(f, "skipped", 0) for f in self.folders)
        parts = [f"+{down} down ({_human(size)})", f"-{deleted} deleted on the server"]
        if skipped:
            parts.append(f"{skipped} skipped (over max_message_size)")
        return self._with_problems(f"{self.account}: {', '.join(parts)}, "
                                   f"{self.seconds:.1f} s")


def sync_pop3_account(settings: Settings, account: AccountSettings, *, dry_run: bool = False,
                      clock: Callable[[], float] = time.time) -> AccountResult:
    """One POP3 session for ``account``: recover interrupted deliveries, list, download what
    is new, delete what the policy says, QUIT. Never raises for problems of this account:
    they are reported in the result (``error`` for the connection, the folder's ``error`` for
    local trouble). ``clock`` is the wall clock used for ``delete_after`` (tests fake it).
    ``settings`` is accepted for symmetry with the IMAP path (general settings)."""
    del settings  # nothing account-independent is needed yet
    started = time.monotonic()
    result = Pop3AccountResult(account.name)
    folder = Pop3FolderResult("INBOX")
    result.folders.append(folder)
    try:
        state, rebuilt = StateStore.open_or_rebuild(account.state_path)
    except (StateTooNew, OSError) as exc:
        result.error = f"cannot open the state database: {exc}"
        result.seconds = time.monotonic() - started
        return result
    if rebuilt:
        log.warning("%s: the state database was corrupt; it was moved aside and rebuilt: "
                    "server messages are matched with local mail by content (nothing is "
                    "delivered twice)", account.name)
    try:
        Pop3Run(account, state, folder, dry_run=dry_run, clock=clock, rebuilt=rebuilt).run()
    except AccountError as exc:
        result.error = str(exc).removeprefix(f"{account.name}: ")
    except OSError as exc:
        folder.error = f"local error: {exc}"
    finally:
        state.close()
        result.seconds = time.monotonic() - started
    return result


@dataclass(slots=True)
class _Delivered:
    identity: str
    key: str
    number: int
    server_bytes: int
    new: bool  # False: paired with a file already in the Maildir (nothing written)
    # A delivery still being written by a worker thread (None: done in this thread).
    pending: Future[str] | None = None


class Pop3Run:
    """One sync of one POP3 account (one session). Not thread-safe; one per run."""

    def __init__(self, account: AccountSettings, state: StateStore, result: Pop3FolderResult,
                 *, dry_run: bool, clock: Callable[[], float], rebuilt: bool,
                 window: int | None = None) -> None:
        self.account = account
        self.state = state
        self.result = result
        self.dry_run = dry_run
        self.rebuilt = rebuilt
        # Commands in flight with PIPELINING (None: the adapter's default window).
        self.window = window
        self.inbox: MaildirFolder = Maildir(account.maildir, account.layout).folder(INBOX)
        self.now = clock()
        # identity -> what the state knows; loaded once per session, kept current as we record
        self.known: dict[str, Pop3Known] = {}
        self.keys: dict[int, tuple[str, int]] = {}  # msgnum -> (pre-chosen key, intent id)
        self.group: list[_Delivered] = []
        self.pool: ThreadPoolExecutor | None = None
        self.pending: deque[Future[str]] = deque()  # pooled deliveries, oldest first
        self.group_bytes = 0
        self.to_delete: list[int] = []  # msgnums whose identity is committed and marked
        self.dup_uidls: frozenset[str] = frozenset()
        self.seen_hashes: set[str] = set()  # hashes of "content" messages of this session
        self.content_seen = 0
        self.local_index: dict[str, str] | None = None  # sha256 identity -> local key
        self.aliases: dict[str, str] = {}  # sha256 identity -> the UIDL it was recorded as
        self.new_budget: int | None = None  # new "content" deliveries max_messages still allows
        self.inbox_missing = False
        self.retr_errors: list[str] = []

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        # A missing INBOX (a wiped or never-mounted maildir) is not "the user deleted all that
        # mail": what the server still keeps is downloaded again (the mass-deletion guard).
        self.inbox_missing = not self.inbox.exists()
        if not self.dry_run:
            self.inbox.create()
            self.inbox.clean_tmp()
            self.recover()
        session = self.connect()
        try:
            self.session_body(session)
        finally:
            session.close()

    def connect(self) -> Pop3Session:
        from syncd.auth.secrets import get_password

        account = self.account
        return Pop3Session.connect(account, lambda: get_password(account))

    def recover(self) -> int:
        """Finish deliveries a crash interrupted: an open intent whose file exists is
        recorded (the message is on disk: it must not be downloaded again); one whose file
        does not exist never happened. One scan, one commit."""
        intents = [i for i in self.state.open_intents(None) if i.op == INTENT_OP]
        if not intents:
            return 0
        for intent in intents:
            if intent.key and "/" not in intent.key and not intent.key.startswith("."):
                # A kill mid-delivery leaves tmp/<key> behind, and clean_tmp() only takes
                # files older than 36 h: every kill leaked up to a window of messages into
                # tmp/ (fault suite, kill -9 of the daemon during a POP3 download).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.inbox.path / "tmp" / intent.key)
        present = self.inbox.scan()
        recorded = 0
        with self.state.transaction():
            for intent in intents:
                if not intent.key or intent.key not in present:
                    continue
                identity = intent.extra or _hash_file(self.inbox, intent.key)
                if self.state.pop3_row(identity) is None:
                    self.state.pop3_record(identity, intent.key, self.now)
                    recorded += 1
            self.state.clear_intents(i.id for i in intents)
        faults.checkpoint("pop3.recovered")
        if recorded:
            log.info("%s: recorded %d message(s) delivered by an interrupted run",
                     self.account.name, recorded)
        return recorded

    def session_body(self, session: Pop3Session) -> None:
        account = self.account
        listed = session.listing()
        rows = self.state.pop3_rows()
        if self.inbox_missing and any(not r.deleted for r in rows):
            log.warning("%s: the INBOX maildir %s was missing; messages kept on the server are "
                        "downloaded again", account.name, self.inbox.path)
            rows = [r for r in rows if r.deleted]
        self.known = {r.uidl: Pop3Known(r.deleted, r.downloaded_at) for r in rows}
        counts = Counter(m.uidl for m in listed if m.uidl is not None)
        self.dup_uidls = frozenset(u for u, c in counts.items() if c > 1)
        keyed = [m for m in listed if m.uidl is not None and m.uidl not in self.dup_uidls]
        unkeyed = [m for m in listed if m.uidl is None or m.uidl in self.dup_uidls]
        if unkeyed:
            what = (f"duplicate UIDLs ({', '.join(sorted(self.dup_uidls)[:3])})"
                    if self.dup_uidls else "no UIDL")
            log.info("%s: %d message(s) have %s; they are identified by content (sha256)",
                     account.name, len(unkeyed), what)
            self._alias_duplicates({r.uidl: r.key for r in rows})
        plan = plan_pop3([(m.number, m.uidl or "", m.size) for m in keyed], self.known,
                         leave_on_server=account.leave_on_server,
                         delete_after=account.delete_after, now=self.now,
                         max_message_size=account.max_message_size,
                         max_messages=account.max_messages_per_poll)
        content: list[ListedMessage] = []
        for m in unkeyed:
            if account.max_message_size is not None and m.size > account.max_message_size:
                skip = (m.number, m.uidl or "(none)", m.size)
                plan = plan._replace(skipped_too_big=(*plan.skipped_too_big, skip))
            else:
                content.append(m)
        if account.max_messages_per_poll is not None:
            self.new_budget = max(0, account.max_messages_per_poll - len(plan.retrieve))
        pairing = bool(plan.retrieve or content) and self._pairing_wanted(bool(rows))
        by_number = {m.number: m for m in listed}
        self._report_skips(plan.skipped_too_big)
        if self.dry_run:
            self._describe(plan, content, by_number, pairing)
            session.quit()
            return
        if pairing:
            self.local_index = self._index_local()
        work: list[tuple[int, Mode]] = [(n, "pair" if pairing else "keyed")
                                        for n in plan.retrieve]
        work += [(m.number, "content") for m in content]
        if plan.delete_only:
            # Marked before DELE is sent: "deleted" means "syncd decided to delete it".
            uidls = [by_number[n].uidl for n in plan.delete_only]
            self.state.pop3_mark_deleted(u for u in uidls if u is not None)
            faults.checkpoint("pop3.marked_deleted")
            self.to_delete.extend(plan.delete_only)
        self._download(session, work, by_number, delete_retrieved=plan.delete_retrieved)
        self._delete_and_quit(session)
        complete = self.content_seen == len(unkeyed)
        self._forget_missing(listed, complete_hashes=complete)
        faults.checkpoint("pop3.forgot")
        if self.retr_errors:
            self.result.error = (
                f"{len(self.retr_errors)} message(s) could not be retrieved and stay on the "
                f"server (first: {self.retr_errors[0]})")

    # -- downloading --------------------------------------------------------------------

    def _download(self, session: Pop3Session, work: list[tuple[int, Mode]],
                  by_number: dict[int, ListedMessage], *, delete_retrieved: bool) -> None:
        if not work:
            return
        pipe: Pipeline[tuple[int, Mode]] = session.pipeline(self.window)
        for n, mode in work:
            pipe.submit(f"RETR {n}", multiline=True, tag=(n, mode))
        position = {n: i for i, (n, _mode) in enumerate(work)}
        if DELIVERY_THREADS > 1 and len(work) > 1:
            self.pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="pop3-deliver")
        try:
            while pipe:
                reply = pipe.next_reply()
                number, mode = reply.tag
                listed = by_number[number]
                if not reply.ok or reply.body is None:
                    log.warning("%s: RETR %d (UIDL %s) failed: %s", self.account.name,
                                number, listed.uidl, reply.text)
                    self.retr_errors.append(f"RETR {number}: {reply.text}")
                    self.result.retrieve_failed += 1
                    continue
                if number not in self.keys:
                    start = position[number]
                    self._add_intents(work[start:start + GROUP_COUNT], by_number)
                if mode == "keyed":
                    assert listed.uidl is not None
                    self._deliver(number, listed.uidl, reply.body, listed.size)
                else:
                    self._content(number, listed, reply.body, mode)
                    if self.new_budget is not None and self.new_budget <= 0:
                        # Enough new mail for this poll: RETRs not sent yet are dropped (those
                        # in flight still arrive and are only identified).
                        pipe.discard_queued(keep=lambda tag: tag[1] != "content")
                if len(self.group) >= GROUP_COUNT or self.group_bytes >= GROUP_BYTES:
                    self._commit_group(delete_retrieved)
        except Exception:
            # The connection or the disk broke: what is fully delivered is worth recording
            # now. (Not for a BaseException such as KeyboardInterrupt: stopping fast matters
            # more then, and the intents cover it on the next run, exactly as after a kill.)
            with contextlib.suppress(Exception):
                self._commit_group(delete_retrieved)
            raise
        finally:
            # No worker may still be writing once we return (or raise): wait for them.
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None
        self._commit_group(delete_retrieved)
        # Intents of messages that were not delivered (refused, known, paired) are void.
        if self.keys:
            self.state.clear_intents(intent_id for _key, intent_id in self.keys.values())
            self.keys.clear()

    def _add_intents(self, upcoming: list[tuple[int, Mode]],
                     by_number: dict[int, ListedMessage]) -> None:
        """Choose keys for the next block of messages and commit their intents in one go.
        The identity goes into the intent when it is known up front (a unique UIDL);
        content-path messages get none, and recovery hashes the file instead."""
        items: list[tuple[int, str, str | None]] = []
        for n, mode in upcoming:
            if n in self.keys:
                continue
            identity = by_number[n].uidl if mode != "content" else None
            items.append((n, self.inbox.new_key(), identity))
        ids = self.state.add_intents(None, INTENT_OP,
                                     [(n, key, None, identity) for n, key, identity in items])
        for (n, key, _identity), intent_id in zip(items, ids, strict=True):
            self.keys[n] = (key, intent_id)
        faults.checkpoint("pop3.intents")

    def _deliver(self, number: int, identity: str, body: Iterable[bytes], size: int) -> None:
        """Deliver one message under its pre-chosen key: streamed to disk here, or (small
        ones, when a pool is running) read into memory and handed to a worker."""
        key, _intent_id = self.keys[number]
        counter = _Counter()
        stream = _crlf_to_lf(body, counter)
        if self.pool is not None and size <= POOLED_MAX:
            chunks: list[bytes] = []
            held = 0
            for chunk in stream:
                chunks.append(chunk)
                held += len(chunk)
                if held > 4 * POOLED_MAX:
                    break  # LIST understated the size: stream the rest to disk right here
            else:
                while len(self.pending) >= MAX_PENDING:
                    self.pending.popleft().exception()  # wait; failures surface at commit
                future = self.pool.submit(self.inbox.deliver, b"".join(chunks), "", key=key)
                self.pending.append(future)
                self._grouped(_Delivered(identity, key, number, counter.server_bytes, True,
                                         future))
                return
            stream = itertools.chain(chunks, stream)
        written = self.inbox.deliver(stream, "", key=key)
        self._grouped(_Delivered(identity, written, number, counter.server_bytes, True))
        faults.checkpoint("pop3.delivered")

    def _content(self, number: int, listed: ListedMessage, body: Iterable[bytes],
                 mode: Mode) -> None:
        """Spool the message while hashing it, then decide: already known (by hash, by an
        alias, or paired with a local file), or new and delivered from the spool."""
        counter = _Counter()
        digest = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY,
                                           dir=self.inbox.path / "tmp") as spool:
            for chunk in _crlf_to_lf(body, counter):
                digest.update(chunk)
                spool.write(chunk)
            hashed = HASH_PREFIX + digest.hexdigest()
            if mode == "content":
                identity = hashed
                self.seen_hashes.add(hashed)
                self.content_seen += 1
            else:
                assert listed.uidl is not None
                identity = listed.uidl
            known_as = identity if identity in self.known else self.aliases.get(hashed)
            if known_as is None and any(d.identity == identity for d in self.group):
                known_as = identity  # the same bytes twice in this session
            if known_as is not None:
                self._known_again(number, known_as, listed.size)
                return
            if self.local_index is not None and hashed in self.local_index:
                # Already in the Maildir (the state forgot it): record it, deliver nothing.
                self._grouped(_Delivered(identity, self.local_index.pop(hashed), number,
                                         counter.server_bytes, False))
                return
            if mode == "content" and self.new_budget is not None:
                if self.new_budget <= 0:
                    return  # max_messages_per_poll reached: it waits for the next poll
                self.new_budget -= 1
            key, _intent_id = self.keys[number]
            spool.seek(0)
            written = self.inbox.deliver(iter(lambda: spool.read(_CHUNK), b""), "", key=key)
            self._grouped(_Delivered(identity, written, number, counter.server_bytes, True))
        faults.checkpoint("pop3.delivered")

    def _known_again(self, number: int, identity: str, size: int) -> None:
        """A spooled message that is already downloaded: delete it or leave it, by the same
        policy as for UIDLs (the planner decides, for this one message)."""
        known = self.known.get(identity)
        if known is None:  # delivered in this very session (still in the group)
            known = Pop3Known(not self.account.leave_on_server, self.now)
        plan = plan_pop3([(number, identity, size)], {identity: known},
                         leave_on_server=self.account.leave_on_server,
                         delete_after=self.account.delete_after, now=self.now,
                         max_message_size=None, max_messages=None)
        if plan.delete_only:
            self.state.pop3_mark_deleted([identity])
            self.to_delete.extend(plan.delete_only)

    def _grouped(self, item: _Delivered) -> None:
        self.group.append(item)
        self.group_bytes += item.server_bytes

    def _commit_group(self, delete_retrieved: bool) -> None:
        """One directory fsync, then one transaction: record every identity of the group,
        mark them deleted if they are to be DELEted, clear their intents. Only after this may
        DELE be sent for them."""
        if not self.group:
            return
        group, self.group, self.group_bytes = self.group, [], 0
        # Pooled writes first: a failed one (disk full...) is left out and raised after the
        # others are recorded (its intent is cleared on the next run: no file, no delivery).
        failure: BaseException | None = None
        done: list[_Delivered] = []
        for item in group:
            if item.pending is not None:
                error = item.pending.exception()
                if error is not None:
                    failure = failure or error
                    continue
                item.key = item.pending.result()
                item.pending = None
                faults.checkpoint("pop3.delivered")
            done.append(item)
        self.pending.clear()
        group = done
        if not group:
            if failure is not None:
                raise failure
            return
        self.inbox.sync()
        faults.checkpoint("pop3.dir_synced")
        intent_ids = [self.keys.pop(d.number)[1] for d in group if d.number in self.keys]
        with self.state.transaction():
            for item in group:
                self.state.pop3_record(item.identity, item.key, self.now)
            if delete_retrieved:
                self.state.pop3_mark_deleted(item.identity for item in group)
            self.state.clear_intents(intent_ids)
        faults.checkpoint("pop3.recorded")
        for item in group:
            self.known[item.identity] = Pop3Known(delete_retrieved, self.now)
        new = [d for d in group if d.new]
        self.result.downloaded += len(new)
        self.result.new_mail += len(new)
        self.result.downloaded_bytes += sum(d.server_bytes for d in new)
        self.result.paired += len(group) - len(new)
        if delete_retrieved:
            self.to_delete.extend(item.number for item in group)
        if failure is not None:
            raise failure

    # -- deleting -----------------------------------------------------------------------

    def _delete_and_quit(self, session: Pop3Session) -> None:
        """DELE every message whose identity is committed, then QUIT. DELE only takes effect
        at QUIT (RFC 1939 UPDATE state), so sending them all here, after the last RETR, is as
        safe as interleaving them, and keeps the RETR replies back to back."""
        deleted = 0
        if self.to_delete:
            pipe: Pipeline[int] = session.pipeline(self.window)
            for n in sorted(set(self.to_delete)):
                pipe.submit(f"DELE {n}", multiline=False, tag=n)
            for reply in pipe.drain():
                if reply.ok:
                    deleted += 1
                else:  # still marked deleted in the state: DELEd again next time
                    log.warning("%s: DELE %d failed: %s", self.account.name, reply.tag,
                                reply.text)
            faults.checkpoint("pop3.deleted")
        session.quit()
        faults.checkpoint("pop3.quit")
        self.result.deleted_remote += deleted

    def _forget_missing(self, listed: list[ListedMessage], *, complete_hashes: bool) -> None:
        """Drop rows of deleted messages the server no longer lists, so the table does not
        grow forever. Hash rows are only judged when every message without a usable UIDL was
        hashed in this session (otherwise "not seen" proves nothing)."""
        present = {m.uidl for m in listed if m.uidl is not None} | self.seen_hashes
        if not complete_hashes:
            present |= {u for u in self.known if u.startswith(HASH_PREFIX)}
        self.state.pop3_forget_missing(present)

    # -- helpers ------------------------------------------------------------------------

    def _pairing_wanted(self, have_rows: bool) -> bool:
        """Match with local mail by content when the state cannot say what is local: it was
        rebuilt, or a leave_on_server account starts with an INBOX that already has mail.
        (Without leave_on_server the server only holds mail nobody fetched yet.)"""
        if self.rebuilt:
            return True
        if have_rows or not self.account.leave_on_server or not self.inbox.exists():
            return False
        return bool(self.inbox.scan())

    def _index_local(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for key in self.inbox.scan():
            with contextlib.suppress(FileNotFoundError):
                index.setdefault(_hash_file(self.inbox, key), key)
        log.info("%s: matching server messages with %d local message(s) by content",
                 self.account.name, len(index))
        return index

    def _alias_duplicates(self, keys: dict[str, str | None]) -> None:
        """A UIDL recorded while it was unique and now listed twice: hash its local file, so
        that the copy we already have is recognised by content among the duplicates."""
        for uidl in self.dup_uidls:
            key = keys.get(uidl)
            if key is None:
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.aliases[_hash_file(self.inbox, key)] = uidl

    def _report_skips(self, skipped: Iterable[tuple[int, str, int]]) -> None:
        limit = self.account.max_message_size or 0
        for number, uidl, size in skipped:
            log.warning("%s: message %d (UIDL %s, %s) is larger than max_message_size (%s); "
                        "left on the server", self.account.name, number, uidl, _human(size),
                        _human(limit))
            self.result.skipped += 1
            self.result.skipped_bytes += size

    def _describe(self, plan: Pop3Plan, content: list[ListedMessage],
                  by_number: dict[int, ListedMessage], pairing: bool) -> None:
        lines = self.result.plan_lines
        intents = [i for i in self.state.open_intents(None) if i.op == INTENT_OP]
        if intents:
            lines.append(f"reconcile {len(intents)} delivery(ies) interrupted by a crash")
        after = " and delete it from the server" if plan.delete_retrieved else ""
        how = " (compared with local mail by content first)" if pairing else ""
        for n in plan.retrieve:
            m = by_number[n]
            lines.append(f"download message {n} (UIDL {m.uidl}, {_human(m.size)}){how}{after}")
        for m in content:
            lines.append(f"download message {m.number} ({_human(m.size)}, no unique UIDL) to "
                         f"identify it by content; deliver it if new{after}")
        for n in plan.delete_only:
            lines.append(f"delete message {n} (UIDL {by_number[n].uidl}) from the server: "
                         "already downloaded")
        for n, uidl, size in plan.skipped_too_big:
            lines.append(f"skip message {n} (UIDL {uidl}, {_human(size)}): larger than "
                         "max_message_size")


@dataclass(slots=True)
class _Counter:
    server_bytes: int = 0


def _crlf_to_lf(chunks: Iterable[bytes], counter: _Counter) -> Iterator[bytes]:
    """Server bytes -> file bytes (crlf_to_lf_stream), counting the server bytes on the way."""

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            counter.server_bytes += len(chunk)
            yield chunk

    return crlf_to_lf_stream(counted())


def _hash_file(folder: MaildirFolder, key: str) -> str:
    digest = hashlib.sha256()
    with open(folder.path_of(key), "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return HASH_PREFIX + digest.hexdigest()


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


__all__ = ["Pop3AccountResult", "Pop3FolderResult", "Pop3Run", "sync_pop3_account"]
