"""A hypothesis state machine: random changes on both sides, then a sync; the two sides must
converge, nothing may be lost or duplicated, and a second plan must be empty.

Every sync is syncd's own: ``FolderSync.run`` (syncd/imap/folder_sync.py) gathers, plans,
executes and records one folder, on a real Maildir folder (syncd/store/maildir.py) and a real
state database (syncd/store/state.py) in a temporary directory. The one stand-in is the
server: an in-memory one behind the ImapSession methods a sync calls
(tests/support/imap_memory.py says why). The invariants are checked on what ends up in the
Maildir, the state and that server, never on a model of them.

Copies of one message need not be byte-identical (issue 15, defect 5): the server may store
every message with trace fields (an mbox server's X-UID/Status), with other added fields (a
filter's), or with LF line ends (a smaller size), and a local file may carry mbsync's X-TUID.
The planner then asks for body digests and the sync fetches them; no such difference may
ever make a message travel both ways.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from syncd.config.settings import AccountSettings
from syncd.core.actions import DeleteRemote, FolderPlan
from syncd.core.flags import normalize
from syncd.core.message import body_start, header_identity
from syncd.core.model import FolderPolicy, SyncedMessage
from syncd.imap.folder_sync import FolderSync, SyncOptions
from syncd.outcome.results import FolderResult, NullReporter
from syncd.store.maildir import MaildirFolder, crlf_to_lf
from syncd.store.state import StateStore
from tests.support.imap_memory import MemoryServer, MemorySession, ServerFolder

# Mostly few letters, so that both sides often make the same change (RecordFlags).
FLAGS = st.one_of(st.sets(st.sampled_from("ST")), st.sets(st.sampled_from("DFPRST"))).map(
    normalize)

FOLDER = "INBOX"

# How the server stores each message it receives.
SERVER_FORMS = {
    "verbatim": lambda raw: raw,
    "trace": lambda raw: b"X-UID: 17\r\nStatus: RO\r\n" + raw,  # ignored when sizes compare
    "other": lambda raw: b"X-Spam-Score: 0.1\r\n" + raw,  # counts in the size: digests decide
    "lf": lambda raw: raw.replace(b"\r\n", b"\n"),  # a smaller RFC822.SIZE: digests decide
}
TUID = b"X-TUID: 0123456789ab\n"  # mbsync's field in a local file

# Temporary Maildirs and state databases: in memory where the system has a tmpfs, as the
# machine fsyncs thousands of times.
TMP_ROOT = "/dev/shm" if Path("/dev/shm").is_dir() else None


@dataclass(frozen=True)
class Msg:
    """A message as the checks see it: its flags, and which message it is. Bodies look like
    "<7@x>|m0007" or "|m0007": all messages without a Message-ID have the same size, so the
    content check (Download.pair_candidates) is exercised for real."""

    flags: str
    body: str

    @property
    def message_id(self) -> str | None:
        return self.body.split("|", 1)[0] or None


def message_bytes(body: str) -> bytes:
    """The message a user or a sender makes of ``body`` (CRLF, as sent over IMAP)."""
    message_id, text = body.split("|", 1)
    head = f"Message-ID: {message_id}\r\n" if message_id else ""
    return f"{head}Subject: {text[:5]}\r\n\r\n{text}\r\n".encode()


def body_of(raw: bytes) -> str:
    """Which message ``raw`` is, whatever form a server or a tool gave it."""
    start = body_start(raw)
    message_id = header_identity(raw[:start]).message_id
    return f"{message_id or ''}|{raw[start:].decode().strip()}"


class RecordingFolderSync(FolderSync):
    """syncd's FolderSync, handing each plan to ``on_plan`` before it is executed."""

    plan: FolderPlan | None = None

    def _plan(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.plan = super()._plan(*args, **kwargs)
        self.on_plan(self.plan)
        return self.plan

    def on_plan(self, plan: FolderPlan) -> None:
        pass


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="syncd-machine-", dir=TMP_ROOT))
        self.server_form = "verbatim"
        self.remote = MemoryServer(lambda raw: SERVER_FORMS[self.server_form](raw))
        self.session = MemorySession(self.remote)
        self.place = MaildirFolder(self.tmp / "mail" / FOLDER)
        self.place.create()
        self.store = StateStore(self.tmp / "state" / "memory.sqlite3")
        self.uidvalidity_changed = False
        self.policy = FolderPolicy()  # its trash_folder, direction and delete: the config's
        self.counter = 0
        self.created: set[str] = set()
        self.lost_by_user: set[str] = set()  # deleted by the user (may stay deleted)
        # deleted on one side while paired: must be gone on both sides after the next sync
        self.deleted_since_sync: set[str] = set()
        self.siblings = 0  # different messages added under an existing Message-ID

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- what there is: read from the server, the Maildir and the state ------------------

    @property
    def inbox(self) -> ServerFolder:
        return self.remote.folder(FOLDER)

    @property
    def server(self) -> dict[int, Msg]:
        return {uid: Msg(m.flags, body_of(m.raw)) for uid, m in self.inbox.messages.items()}

    @property
    def trash(self) -> list[str]:
        folder = self.remote.folders.get("Trash")
        return [body_of(m.raw) for m in folder.messages.values()] if folder else []

    @property
    def local_missing(self) -> bool:
        return not self.place.exists()

    def local_count(self) -> int:
        return 0 if self.local_missing else len(self.place.scan())

    def local_keys(self) -> list[str]:
        """The files' keys in the order of their messages: a key is a unique name (time,
        random bytes), and hypothesis must draw the same file when it replays a run."""
        if self.local_missing:
            return []
        return sorted(self.place.scan(), key=lambda key: (body_of(self.place.read(key)), key))

    @property
    def local(self) -> dict[str, Msg]:
        if self.local_missing:
            return {}
        return {key: Msg(entry.flags, body_of(self.place.read(key)))
                for key, entry in self.place.scan().items()}

    @property
    def state(self) -> dict[int, SyncedMessage]:
        fstate = self.store.folder(FOLDER)
        return {} if fstate is None else {m.uid: m for m in self.store.messages(fstate.id)}

    @property
    def untracked_uids(self) -> set[int]:
        fstate = self.store.folder(FOLDER)
        return set() if fstate is None else set(self.store.untracked(fstate.id)[0])

    @property
    def untracked_keys(self) -> set[str]:
        fstate = self.store.folder(FOLDER)
        return set() if fstate is None else set(self.store.untracked(fstate.id)[1])

    def window(self) -> frozenset[int] | None:
        """The server UIDs inside the window (test_plan_policy.WindowMachine); None: all."""
        return None

    def max_messages(self) -> int | None:
        return None

    # ---- syncing: syncd's own code -------------------------------------------------------

    def account(self) -> AccountSettings:
        return AccountSettings(
            name="memory", protocol="imap", host="127.0.0.1", port=143, username="user",
            maildir=self.tmp / "mail", poll_interval=60.0, state_dir=self.tmp / "state",
            trash_folder=self.policy.trash_folder, direction=self.policy.direction,
            delete=self.policy.delete, max_messages=self.max_messages())

    def on_plan(self, plan: FolderPlan) -> None:
        """Called with each plan before it is executed (the sides are as it saw them)."""

    def run_sync(self, *, force: bool = False, dry_run: bool = False
                 ) -> tuple[FolderPlan, FolderResult]:
        """One sync of the folder (``force``: --force-deletions; ``dry_run``: plan only)."""
        folder_sync = RecordingFolderSync(
            self.account(), self.store, self.session,
            SyncOptions(dry_run=dry_run, force_deletions=force, use_status_shortcut=False),
            reporter=NullReporter(), should_stop=lambda: False, moved_into=set(),
            untouched=[])
        folder_sync.on_plan = self.on_plan  # type: ignore[method-assign]
        result = FolderResult(FOLDER)
        folder_sync.run(FOLDER, self.place, None, result)
        assert result.error is None, result.error
        assert folder_sync.plan is not None
        return folder_sync.plan, result

    def plan_now(self) -> FolderPlan:
        return self.run_sync(dry_run=True)[0]

    # ---- changes on either side, as users and other programs make them -------------------

    def _new_body(self, with_id: bool) -> str:
        self.counter += 1
        body = f"<{self.counter}@x>|m{self.counter:04d}" if with_id else f"|m{self.counter:04d}"
        self.created.add(body)
        return body

    def _server_add(self, flags: str, body: str) -> None:
        """Delivery: the server stores its own form of the message."""
        self.remote.deliver(FOLDER, message_bytes(body), flags)

    def _local_add(self, flags: str, body: str, tuid: bool = False) -> None:
        """A file a mail reader or delivery agent puts into the Maildir (LF line ends)."""
        data = crlf_to_lf(message_bytes(body))
        self.place.deliver(TUID + data if tuid else data, flags)

    @initialize(trash=st.sampled_from([None, "Trash"]), form=st.sampled_from(list(SERVER_FORMS)))
    def configure(self, trash: str | None, form: str) -> None:
        self.policy = FolderPolicy(trash_folder=trash)
        self.server_form = form

    @rule(flags=FLAGS, with_id=st.booleans())
    def server_add(self, flags: str, with_id: bool) -> None:
        self._server_add(flags, self._new_body(with_id))

    @precondition(lambda self: not self.local_missing)
    @rule(flags=FLAGS, with_id=st.booleans(), tuid=st.booleans())
    def local_add(self, flags: str, with_id: bool, tuid: bool) -> None:
        self._local_add(flags, self._new_body(with_id), tuid)

    @precondition(lambda self: not self.local_missing)
    @rule(local_flags=FLAGS, server_flags=FLAGS, with_id=st.booleans(), tuid=st.booleans())
    def both_add(self, local_flags: str, server_flags: str, with_id: bool, tuid: bool) -> None:
        """The same message appears on both sides before syncd knows it (e.g. a first sync
        against a maildir restored from a backup, or one that mbsync kept: X-TUID)."""
        body = self._new_body(with_id)
        self._server_add(server_flags, body)
        self._local_add(local_flags, body, tuid)

    @precondition(lambda self: not self.local_missing
                  and (self.inbox.messages or self.local_count()))
    @rule(data=st.data(), on_server=st.booleans(), flags=FLAGS)
    def add_sibling(self, data: st.DataObject, on_server: bool, flags: str) -> None:
        """A different message under a Message-ID that already exists (an edited draft):
        never to be paired with the other. Its size differs from every other message's under
        that ID by more than any copy's form (same ID and size is the one case that pairs
        on sizes alone, as docs/architecture.md "What every sync keeps" accepts)."""
        mids = sorted({m.message_id for m in [*self.server.values(), *self.local.values()]
                       if m.message_id})
        if not mids:
            return
        self.counter += 1
        self.siblings += 1
        body = f"{data.draw(st.sampled_from(mids))}|m{self.counter:04d}" + "~" * 37 * self.siblings
        self.created.add(body)
        if on_server:
            self._server_add(flags, body)
        else:
            self._local_add(flags, body)

    @precondition(lambda self: self.inbox.messages)
    @rule(data=st.data(), flags=FLAGS)
    def server_flag(self, data: st.DataObject, flags: str) -> None:
        uid = data.draw(st.sampled_from(sorted(self.inbox.messages)))
        self.inbox.messages[uid].flags = flags

    @precondition(lambda self: self.local_count())
    @rule(data=st.data(), flags=FLAGS)
    def local_flag(self, data: st.DataObject, flags: str) -> None:
        key = data.draw(st.sampled_from(self.local_keys()))
        self.place.set_flags(key, flags)

    @precondition(lambda self: self.inbox.messages)
    @rule(data=st.data())
    def server_expunge(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.inbox.messages)))
        synced = uid in self.state
        body = body_of(self.inbox.messages.pop(uid).raw)
        self.lost_by_user.add(body)
        if synced:  # an unsynced copy elsewhere is new to syncd, not deleted
            self.deleted_since_sync.add(body)

    def _local_remove(self, key: str, known_keys: set[str]) -> None:
        body = body_of(self.place.read(key))
        self.place.remove(key)
        self.lost_by_user.add(body)
        if key in known_keys:
            self.deleted_since_sync.add(body)

    @precondition(lambda self: self.local_count())
    @rule(data=st.data())
    def local_delete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.local_keys()))
        self._local_remove(key, {row.key for row in self.state.values()})

    @precondition(lambda self: self.local_count() >= 5)
    @rule()
    def local_delete_most(self) -> None:
        """A wholesale local deletion: trips the mass-deletion guard when the files were known."""
        known_keys = {row.key for row in self.state.values()}
        for key in self.local_keys()[1:]:
            self._local_remove(key, known_keys)

    @rule()
    def uidvalidity_reset(self) -> None:
        """The server renumbers the folder (e.g. rebuilt indexes): same mail, new UIDs."""
        self.inbox.renumber()
        self.uidvalidity_changed = True

    @precondition(lambda self: not self.local_missing)
    @rule()
    def wipe_local_folder(self) -> None:
        """The folder directory vanishes (unmounted disk, rm -r): never a deletion."""
        on_server = {m.body for m in self.server.values()}
        self.lost_by_user |= {m.body for m in self.local.values()} - on_server
        shutil.rmtree(self.place.path)

    @rule(confirm=st.booleans())
    def sync(self, confirm: bool) -> None:
        """A sync; ``confirm``: the user passes --force-deletions."""
        conservative = self.uidvalidity_changed or self.local_missing
        on_server_before = {m.body for m in self.server.values()}
        digests_before = self.session.texts_fetched
        plan, result = self.run_sync(force=confirm)
        guarded = result.guard is not None
        if guarded:
            assert plan.count(DeleteRemote) == 0
        if not self.siblings and self.server_form in ("verbatim", "trace"):
            # Trace fields alone never cost a body fetch: sizes without them settle it.
            assert self.session.texts_fetched == digests_before
        self.uidvalidity_changed = False
        if guarded:
            # Not in step by design: the vanished files stay on the server until confirmed.
            server_bodies = {m.body for m in self.server.values()}
            assert on_server_before - self.lost_by_user <= server_bodies
            assert (self.deleted_since_sync & on_server_before) <= server_bodies
            assert self.created - self.lost_by_user <= server_bodies
        else:
            self.check_converged(conservative)

    # ---- what must hold after a sync ------------------------------------------------------

    def check_converged(self, conservative: bool) -> None:
        server, local, state = self.server, self.local, self.state
        server_bodies = [m.body for m in server.values()]
        local_bodies = [m.body for m in local.values()]
        assert len(set(server_bodies)) == len(server_bodies), "duplicate on the server"
        assert len(set(local_bodies)) == len(local_bodies), "duplicate locally"
        assert set(server_bodies) == set(local_bodies)
        flags_by_body = {m.body: m.flags for m in server.values()}
        for m in local.values():
            assert flags_by_body[m.body] == m.flags
        # the state pairs every message, with the flags both sides have
        assert len(state) == len(server)
        for row in state.values():
            assert server[row.uid].body == local[row.key].body
            assert server[row.uid].flags == row.flags
        # nothing lost: whatever exists is either here or was deleted by the user
        assert self.created - self.lost_by_user <= set(server_bodies)
        # deletions reach the other side, unless a UIDVALIDITY change or a missing folder
        # made syncd conservative (then it restores instead)
        if not conservative:
            assert not (self.deleted_since_sync & set(server_bodies))
        self.deleted_since_sync.clear()
        # idempotency
        again = self.plan_now()
        assert again.actions == () and again.guard is None, again

    @invariant()
    def trash_only_holds_moved_mail(self) -> None:
        trash = self.trash
        assert not set(trash) & {m.body for m in self.server.values()}
        if self.policy.trash_folder is None:
            assert not trash


# Each step runs syncd's sync on real files and a real database: fewer, shorter runs than a
# pure model affords keep `make test` quick (~7 s for this one).
SyncMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None)
TestSyncMachine = SyncMachine.TestCase
