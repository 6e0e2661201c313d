"""One folder's snapshot, gathered before anything is planned: the state's rows (read once),
the Maildir scan (its stamp taken before it), and the server's view (SELECT, flags, and the
size and Message-ID of messages nobody knows yet); body digests only where pairing needs them.

Nothing here writes: the state, the Maildir and the server are as they were (a missing local
folder is created, which the planner reports as created). See docs/architecture.md, "One
folder's sync".
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.flags import normalize
from syncd.core.folders import files_match, server_untouched
from syncd.core.model import (
    FolderPolicy,
    FolderSnapshot,
    LocalMessage,
    RemoteMessage,
    SyncedMessage,
)
from syncd.imap.client import UID_SET_CHUNK, SelectChanges

if TYPE_CHECKING:
    from syncd.core.model import FolderStatus
    from syncd.imap.client import FlagChanges, ImapSession, SelectInfo
    from syncd.store.maildir import LocalEntry, MaildirFolder
    from syncd.store.state import FolderState, StateStore

log = logging.getLogger("syncd.imap.account")


class FolderRows(NamedTuple):
    """The state's side of one folder, read in one place before planning: the synced rows,
    the letters the server is known not to keep, the UIDs whose expunge is still pending."""

    synced: list[SyncedMessage]
    unkept: str
    pending: frozenset[int]
    # What the sync policy keeps on one side only (StateStore.untracked).
    untracked_uids: frozenset[int] = frozenset()
    untracked_keys: frozenset[str] = frozenset()
    outside: tuple[SyncedMessage, ...] = ()  # pairs parked outside the window


def read_rows(state: StateStore, fstate: FolderState | None) -> FolderRows:
    """The folder's rows; none for a folder the state does not know (a dry run's new one)."""
    if fstate is None:
        return FolderRows([], "", frozenset())
    return FolderRows(state.messages(fstate.id), state.unkept_flags(fstate.id),
                      state.pending_expunges(fstate.id), *state.untracked(fstate.id))


class LocalScan(NamedTuple):
    """The Maildir side: its files, and the stamp taken before they were read."""

    entries: dict[str, LocalEntry]
    # Taken before the scan, so a mail reader's change made while this sync runs moves an
    # mtime past it and the next sync looks (issue 16). None in a dry run (never recorded).
    stamp: str | None
    # The directory vanished although messages were synced into it: the planner must not
    # take that for the user deleting every message (the guard).
    folder_missing: bool


def scan_local(folder: MaildirFolder, synced: list[SyncedMessage], *, dry: bool
               ) -> tuple[LocalScan, bool]:
    """The scan, and whether the folder was created locally just now (it had never been
    synced: a new folder, not a lost one)."""
    missing = not folder.exists()
    created = False
    if missing and not dry:
        folder.create()
        created = not synced
    stamp = None if dry else folder.stamp()
    entries = {} if missing else folder.scan()
    return LocalScan(entries, stamp, missing and bool(synced)), created


def unchanged(fstate: FolderState, status: FolderStatus, rows: FolderRows, scan: LocalScan,
              *, condstore: bool, policy_changed: bool = False) -> bool:
    """True when neither side can have changed since the last completed sync: the server's
    STATUS matches the cursors (HIGHESTMODSEQ covers flag changes; without CONDSTORE we
    cannot know, so never), and the Maildir holds exactly the synced files and flags."""
    entries = scan.entries
    if rows.untracked_keys or rows.outside:
        left_out = rows.untracked_keys | {m.key for m in rows.outside}
        entries = {k: e for k, e in entries.items() if k not in left_out}
    return (not scan.folder_missing and not policy_changed
            and server_untouched(fstate, status, condstore=condstore,
                                 synced_count=lambda: len(rows.synced)
                                 if fstate.server_count is None else fstate.server_count)
            and files_match(rows.synced, entries))


class FolderView(NamedTuple):
    """Everything one folder's plan is made from, and the SELECT's numbers, which become the
    cursors once the plan is executed. The server's view is kept only as the snapshot's
    tuple: a big initial sync holds one record per message, not a dict besides."""

    info: SelectInfo
    snapshot: FolderSnapshot
    uidvalidity_changed: bool


class WindowSpec(NamedTuple):
    """A folder's window (max_age in seconds, max_messages), and the time it is taken at."""

    max_age: float | None
    max_messages: int | None
    now: float


def gather_view(session: ImapSession, fstate: FolderState | None, name: str,
                status: FolderStatus | None, rows: FolderRows, scan: LocalScan,
                folder: MaildirFolder, policy: FolderPolicy,
                window_spec: WindowSpec | None = None) -> FolderView:
    """SELECT the folder and build the snapshot: the server's view, the local one, and the
    policy completed with what the server keeps and the pending expunges."""
    synced_by_key = {m.key: m for m in rows.synced}
    parked_keys = {m.key for m in rows.outside}
    # Message-IDs only serve pairing local files the state does not know with server
    # messages; an initial sync into an empty Maildir has none, and skips a header fetch.
    unknown_files = any(
        k not in synced_by_key and k not in parked_keys and k not in rows.untracked_keys
        for k in scan.entries)
    # Nothing of the folder known yet and no window: every message is new, so the SELECT
    # brings every flag (and, with nothing local to pair, every size) in the same round trip.
    nothing_known = not (rows.synced or rows.outside or rows.untracked_uids)
    searched = None
    if window_spec is not None:
        # A windowed folder's UIDs ride with the SELECT: an age window's first sync needs
        # its window alone (UID SEARCH SINCE), any other sync every UID (UID SEARCH ALL).
        info, searched = select_windowed(session, name, window_spec, nothing_known)
        prefetched = None
    else:
        info, prefetched = select(session, fstate, name, status,
                                  initial=(not unknown_files) if nothing_known else None)
    uidvalidity_changed = (fstate is not None and fstate.uidvalidity is not None
                           and fstate.uidvalidity != info.uidvalidity)
    unpaired_local = uidvalidity_changed or unknown_files
    untracked_uids = frozenset() if uidvalidity_changed else rows.untracked_uids
    window: frozenset[int] | None = None
    if window_spec is not None or (rows.outside and not uidvalidity_changed):
        # A window, or pairs parked by one: every UID's flags, so that what is outside is told
        # from what was expunged; sizes and Message-IDs only of what is inside (of all new
        # messages when local files must be paired with them: a first sync, a UIDVALIDITY
        # change, or any file syncd does not know yet, which may be the copy of a message
        # outside the window and must be parked with it, not uploaded a second time).
        known = set() if uidvalidity_changed else (
            {m.uid for m in rows.synced} | {m.uid for m in rows.outside} | untracked_uids)
        remote, window = windowed_view(session, info, known, window_spec,
                                       pair_outside=unpaired_local,
                                       message_ids=unpaired_local, searched=searched)
    else:
        remote = remote_view(session, fstate, info, rows.synced, uidvalidity_changed,
                             None if uidvalidity_changed else prefetched,
                             message_ids=unpaired_local, untracked=untracked_uids)
    # After a UIDVALIDITY change every file is re-paired, so every file needs its identity.
    local = local_view(folder, scan.entries, {} if uidvalidity_changed else synced_by_key)
    storable = info.storable
    if fstate is not None:
        storable = normalize(set(storable) - set(rows.unkept))
    snapshot = FolderSnapshot(synced=tuple(rows.synced), local=tuple(local),
                              remote=tuple(remote.values()),
                              uidvalidity_changed=uidvalidity_changed,
                              policy=policy._replace(storable=storable),
                              pending_expunge=rows.pending,
                              untracked_uids=untracked_uids,
                              untracked_keys=rows.untracked_keys,
                              window=window, outside=rows.outside)
    return FolderView(info, snapshot, uidvalidity_changed)


def select(session: ImapSession, fstate: FolderState | None, name: str,
           status: FolderStatus | None, *, initial: bool | None = None
           ) -> tuple[SelectInfo, SelectChanges | None]:
    """SELECT; in the incremental case with what changed in the same round trip. STATUS (just
    taken) vouches for the UIDVALIDITY, so the old cursors apply. The new UIDs' meta rides
    along unless STATUS announces more new messages than one fetch_meta chunk: that reply
    would not be bounded. ``initial`` (not None: no UID of the folder is known) has every
    flag ride along, and every size if True (nothing local to pair: no header fields)."""
    if (fstate is not None and fstate.highestmodseq is not None and fstate.uidnext
            and session.condstore and status is not None
            and status.uidvalidity == fstate.uidvalidity):
        many = (status.uidnext or 0) - fstate.uidnext > UID_SET_CHUNK
        return session.select_with_changes(name, fstate.highestmodseq,
                                           None if many else fstate.uidnext)
    if initial is not None:
        return session.select_initial(name, sizes=initial)
    return session.select(name), None


class Searched(NamedTuple):
    """A windowed folder's UID searches asked with its SELECT (None: not asked, or not
    answered in a shape we read: the view asks the ordinary way)."""

    since: set[int] | None  # UID SEARCH SINCE: the age window's UIDs
    all: set[int] | None  # UID SEARCH ALL: every UID


def select_windowed(session: ImapSession, name: str, spec: WindowSpec, nothing_known: bool
                    ) -> tuple[SelectInfo, Searched]:
    """SELECT a windowed folder with the one search its view starts from (see
    _window_flags): SINCE for an age window's first sync, which needs nothing else; ALL
    otherwise (the rest of the window, if any, is asked after)."""
    if nothing_known and spec.max_age is not None and spec.max_messages is None:
        info, uids = session.select_searching(name, since_day(spec))
        return info, Searched(uids, None)
    info, uids = session.select_searching(name, None)
    return info, Searched(None, uids)


def remote_view(session: ImapSession, fstate: FolderState | None, info: SelectInfo,
                synced: list[SyncedMessage], uidvalidity_changed: bool,
                prefetched: SelectChanges | None = None, *,
                message_ids: bool = True,
                untracked: frozenset[int] = frozenset()) -> dict[int, RemoteMessage]:
    """Every message on the server with its flags; size and Message-ID for UIDs the state
    does not know. With CONDSTORE only what changed since the last sync is fetched (or taken
    from ``prefetched``, asked for together with the SELECT). ``untracked`` UIDs count as
    known (no meta fetched; the planner leaves them alone)."""
    incremental = (not uidvalidity_changed and fstate is not None
                   and fstate.highestmodseq is not None and info.highestmodseq is not None
                   and session.condstore)
    if incremental:
        assert fstate is not None
        view = _changed_flags(session, fstate, info, synced, prefetched, untracked)
    else:
        if prefetched is not None and prefetched.complete:
            full = prefetched.changes  # every flag, with the SELECT (select_initial)
        else:
            full = session.fetch_flags() if info.exists else None
        view = {uid: RemoteMessage(uid, flags)
                for uid, flags in (full.flags.items() if full else ())}
    known_uids = set() if uidvalidity_changed else {m.uid for m in synced} | untracked
    new_uids = [uid for uid in view if uid not in known_uids]
    if new_uids:
        _add_meta(session, view, new_uids, prefetched, message_ids=message_ids)
    return view


def window_uids(session: ImapSession, present: Iterable[int], spec: WindowSpec,
                searched: set[int] | None = None) -> set[int]:
    """Which of the selected folder's ``present`` UIDs the window holds: the newest
    ``max_messages``, with INTERNALDATE on or after the day ``max_age`` ago (UID SEARCH
    SINCE; ``searched``: its answer, asked with the SELECT)."""
    inside = set(present)
    if spec.max_messages is not None:
        inside = set(sorted(inside)[-spec.max_messages:])
    if spec.max_age is not None and inside:
        inside &= searched if searched is not None else session.search_since(since_day(spec))
    return inside


def since_day(spec: WindowSpec) -> dt.date:
    """The first day an age window holds (UID SEARCH SINCE takes whole days)."""
    assert spec.max_age is not None
    return dt.date.fromtimestamp(spec.now - spec.max_age)


class FirstSync(NamedTuple):
    """What a first sync of one folder would download under the policy (`syncd check`)."""

    messages: int  # downloaded whole
    size: int  # their bytes, as the server counts them (RFC822.SIZE)
    on_server: int
    placeholders: int = 0  # bigger than max_size: mirrored as placeholders (headers only)


def _window_flags(session: ImapSession, info: SelectInfo, spec: WindowSpec,
                  known: set[int] | frozenset[int], searched: Searched
                  ) -> tuple[dict[int, RemoteMessage], set[int], SelectChanges | None]:
    """The view of a windowed folder without reading what is outside the window: every UID
    (UID SEARCH ALL: a number each, no flags), the window among them, and flags of just those.
    Outside UIDs appear with no flags: the planner asks of them only whether they are there
    (parked, never flag-synced). A UID gone between the SEARCH and the FETCH counts as gone,
    never as a message whose flags were all removed.
    With no UID known yet and an age window alone, UID SEARCH SINCE names the window and
    nothing else is asked: the outside UIDs are all new, and new ones outside the window are
    left out of the view (windowed_view), so listing them would be a round trip for nothing.
    With no UID known every one inside is new: its size comes with its flags (the third
    value, for _add_meta), one FETCH where two would do."""
    if not info.exists:
        present: set[int] = set()
        inside: set[int] = set()
    elif not known and spec.max_messages is None and spec.max_age is not None:
        present = inside = searched.since if searched.since is not None \
            else session.search_since(since_day(spec))
    else:
        present = searched.all if searched.all is not None else session.search_all_uids()
        inside = window_uids(session, present, spec, searched.since) if present else set()
    early = None
    if inside and not known:
        flags, sizes = session.fetch_flags_and_sizes(inside)
        early = SelectChanges(None, sizes)
    else:
        flags = session.fetch_flags_of(inside) if inside else {}
    gone = inside - flags.keys()
    view = {uid: RemoteMessage(uid, flags.get(uid, "")) for uid in present if uid not in gone}
    return view, inside - gone, early


def first_sync_estimate(session: ImapSession, name: str, spec: WindowSpec | None,
                        max_size: int | None = None) -> FirstSync:
    """EXAMINE the folder; count and size the messages inside the window (all without one);
    those bigger than ``max_size`` are counted apart (placeholders: headers only). Reads UIDs
    and sizes only."""
    info = session.select(name, readonly=True)
    if not info.exists:
        return FirstSync(0, 0, 0)
    present = session.search_all_uids()
    inside = present if spec is None else window_uids(session, present, spec)
    meta = session.fetch_meta(inside, message_ids=False) if inside else {}
    sizes = [m.size for m in meta.values()]
    full = [size for size in sizes if max_size is None or size <= max_size]
    return FirstSync(len(full), sum(full), len(present), len(sizes) - len(full))


def windowed_view(session: ImapSession, info: SelectInfo, known: set[int] | frozenset[int],
                  spec: WindowSpec | None, *, pair_outside: bool, message_ids: bool,
                  searched: Searched | None = None
                  ) -> tuple[dict[int, RemoteMessage], frozenset[int] | None]:
    """The server's view under a window, and the UIDs inside it (None: no window). The window
    from UID SEARCH SINCE (max_age) and the newest UIDs (max_messages), flags only of what is
    inside it (see _window_flags); every UID's flags (UID FETCH 1:* FLAGS) when there is no
    window (pairs parked by an earlier one) or new messages outside it are to be paired with
    local files; sizes and Message-IDs of new messages inside it, or of every new one with
    ``pair_outside``. New messages outside it are left out of the view altogether.
    ``searched``: the searches asked with the SELECT (select_windowed)."""
    searched = searched or Searched(None, None)
    early = None
    if spec is not None and not pair_outside:
        view, inside, early = _window_flags(session, info, spec, known, searched)
    else:
        full = session.fetch_flags() if info.exists else None
        view = {uid: RemoteMessage(uid, flags)
                for uid, flags in (full.flags.items() if full else ())}
        inside = None if spec is None else window_uids(session, view, spec, searched.since)
    new_uids = [uid for uid in view if uid not in known]
    wanted = [uid for uid in new_uids if pair_outside or inside is None or uid in inside]
    if len(wanted) != len(new_uids):
        keep = set(wanted)
        for uid in new_uids:
            if uid not in keep:
                del view[uid]
    if wanted:
        # (the sizes that came with the window's flags carry no Message-ID: not for pairing)
        _add_meta(session, view, wanted, None if message_ids else early,
                  message_ids=message_ids)
    return view, None if inside is None else frozenset(inside & set(view))


def _changed_flags(session: ImapSession, fstate: FolderState, info: SelectInfo,
                   synced: list[SyncedMessage], prefetched: SelectChanges | None,
                   untracked: frozenset[int] = frozenset()) -> dict[int, RemoteMessage]:
    """The server's flags from the state's rows and what changed since the last modseq
    (untracked UIDs are taken as present, without flags, until told otherwise)."""
    if info.highestmodseq == fstate.highestmodseq and info.uidnext == fstate.uidnext \
            and info.exists == len(synced) + len(untracked):
        view = {m.uid: RemoteMessage(m.uid, m.flags) for m in synced}
        view.update((uid, RemoteMessage(uid, "")) for uid in untracked)
        return view
    assert fstate.highestmodseq is not None
    changes: FlagChanges = prefetched.changes if prefetched is not None \
        and prefetched.changes is not None \
        else session.fetch_flags(changedsince=fstate.highestmodseq)
    view = {m.uid: RemoteMessage(m.uid, m.flags) for m in synced
            if m.uid not in changes.vanished}
    view.update((uid, RemoteMessage(uid, "")) for uid in untracked
                if uid not in changes.vanished)
    for uid, flags in changes.flags.items():
        view[uid] = RemoteMessage(uid, flags)
    if len(view) != info.exists:
        # Expunges we were not told about (no QRESYNC) or a server that skipped some: the UID
        # list settles it in one round trip.
        present = session.search_all_uids() if info.exists else set()
        view = {uid: msg for uid, msg in view.items() if uid in present}
        missing = present - set(view)
        if missing:
            full = session.fetch_flags()
            for uid in missing:
                if uid in full.flags:
                    view[uid] = RemoteMessage(uid, full.flags[uid])
    return view


def _add_meta(session: ImapSession, view: dict[int, RemoteMessage], new_uids: list[int],
              prefetched: SelectChanges | None, *, message_ids: bool) -> None:
    """Size, Message-ID and trace bytes of the UIDs the state does not know, in place; what
    came with the SELECT is not asked again."""
    early = prefetched.meta if prefetched is not None and prefetched.meta else {}
    meta = {uid: early[uid] for uid in new_uids if uid in early}
    rest = [uid for uid in new_uids if uid not in meta]
    if rest:
        meta.update(session.fetch_meta(rest, message_ids=message_ids))
    for uid in new_uids:
        if uid in meta:
            found = meta[uid]
            view[uid] = RemoteMessage(uid, view[uid].flags, found.size, found.message_id,
                                      found.trace_bytes)
        else:
            del view[uid]  # expunged between the two fetches


def local_view(folder: MaildirFolder, entries: dict[str, LocalEntry],
               synced_by_key: dict[str, SyncedMessage]) -> list[LocalMessage]:
    """The local files; size and identity only of those the state does not know."""
    local = []
    for key, entry in entries.items():
        if key in synced_by_key:
            local.append(LocalMessage(key, entry.flags))
            continue
        try:
            info = folder.header_info(key)
        except FileNotFoundError:
            continue  # removed while we looked (mutt, another tool)
        if info.placeholder is not None:
            # A placeholder: it stands for the full message (its size pairs it with its
            # server copy) and is never uploaded.
            local.append(LocalMessage(key, entry.flags, info.placeholder.size,
                                      info.message_id, info.trace_bytes, placeholder=True))
            continue
        local.append(LocalMessage(key, entry.flags, info.size, info.message_id,
                                  info.trace_bytes))
    return local


def with_digests(session: ImapSession, snapshot: FolderSnapshot, folder: MaildirFolder,
                 account: str) -> FolderSnapshot:
    """The snapshot with the body digests the planner needs to pair copies whose sizes
    disagree under one Message-ID (a server storing LF, adding headers, or reporting inexact
    sizes) or whose Message-ID several messages carry: BODY[TEXT] of just those server
    messages, and those local files. Nothing is read in the common cases."""
    from syncd.core.message import body_digest, body_start
    from syncd.core.plan import digests_needed

    wanted = digests_needed(snapshot)
    if not wanted:
        return snapshot
    uids = set(wanted.uids)
    sizes = [(m.uid, m.size) for m in snapshot.remote if m.uid in uids]
    remote_digests = {uid: body_digest(text) for uid, text in session.fetch_texts(sizes)}
    local_digests: dict[str, str] = {}
    for key in wanted.keys:
        try:
            data = folder.read(key)
        except FileNotFoundError:
            continue  # gone meanwhile: not paired; its Upload finds it gone
        local_digests[key] = body_digest(data[body_start(data):])
    log.debug("%s: digested %d server and %d local bodies to pair them", account,
              len(remote_digests), len(local_digests))
    return snapshot._replace(
        remote=tuple(m._replace(body_digest=remote_digests[m.uid])
                     if m.uid in remote_digests else m for m in snapshot.remote),
        local=tuple(m._replace(body_digest=local_digests[m.key])
                    if m.key in local_digests else m for m in snapshot.local))
