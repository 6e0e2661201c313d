"""SQLite state store: schema, migrations, transactions, intents, POP3 rows, corruption."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.core.model import SyncedMessage
from syncd.store import state as state_mod
from syncd.store.state import (
    SCHEMA_VERSION,
    FolderState,
    Intent,
    Pop3Row,
    StateConflict,
    StateCorrupt,
    StateStore,
    StateTooNew,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "work.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[StateStore]:
    s = StateStore(db_path)
    yield s
    s.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def make_populated(path: Path, n: int = 3000) -> None:
    with StateStore(path) as s:
        f = s.ensure_folder("INBOX", "/m/INBOX")
        s.put_messages(f.id, (SyncedMessage(i, f"key{i}", "S", i, f"<{i}@x>")
                              for i in range(1, n + 1)))


# ---------------------------------------------------------------------------------------------
# create / open / migrate


def test_create_sets_modes_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "work.db"
    old = os.umask(0)
    try:
        s = StateStore(path)
        s.ensure_folder("INBOX", "/x")  # makes the WAL files exist
    finally:
        os.umask(old)
    try:
        assert mode_of(path) == 0o600
        assert mode_of(tmp_path / "a") == 0o700
        assert mode_of(tmp_path / "a" / "b") == 0o700
        for side in ("work.db-wal", "work.db-shm"):
            if (path.parent / side).exists():
                assert mode_of(path.parent / side) == 0o600, side
        conn = s._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        s.close()


def test_existing_world_readable_file_is_made_private(db_path: Path) -> None:
    StateStore(db_path).close()
    os.chmod(db_path, 0o644)
    StateStore(db_path).close()
    assert mode_of(db_path) == 0o600


def test_reopen_keeps_data(db_path: Path) -> None:
    with StateStore(db_path) as s:
        f = s.ensure_folder("INBOX", "/m/INBOX")
        s.put_message(f.id, SyncedMessage(7, "k7", "FS", 123, "<m@x>"))
        s.set_cursors(f.id, uidvalidity=1, uidnext=8, highestmodseq=99, last_sync=5.5)
    with StateStore(db_path) as s:
        assert s.folders() == [FolderState(f.id, "INBOX", "/m/INBOX", 1, 8, 99, 5.5)]
        assert s.messages(f.id) == [SyncedMessage(7, "k7", "FS", 123, "<m@x>")]


def test_zero_length_file_is_a_new_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"")
    with StateStore(db_path) as s:
        assert s.folders() == []


def test_migration_from_older_version(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with StateStore(db_path) as s:
        s.ensure_folder("INBOX", "/x")
    # A future step: add a column; opening runs exactly the missing step.
    step = ("ALTER TABLE folder ADD COLUMN note TEXT", "UPDATE folder SET note = 'migrated'")
    monkeypatch.setattr(state_mod, "MIGRATIONS", [*state_mod.MIGRATIONS, step])
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with StateStore(db_path) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert s._conn.execute("SELECT note FROM folder").fetchall() == [("migrated",)]
        assert s.folder("INBOX") is not None
    with StateStore(db_path) as s:  # not run twice
        assert s._conn.execute("SELECT count(*) FROM folder").fetchone()[0] == 1


def test_failed_migration_changes_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(db_path).close()
    step = ("ALTER TABLE folder ADD COLUMN note TEXT", "THIS IS NOT SQL")
    monkeypatch.setattr(state_mod, "MIGRATIONS", [*state_mod.MIGRATIONS, step])
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        StateStore(db_path)
    monkeypatch.undo()
    with StateStore(db_path) as s:
        cols = [r[1] for r in s._conn.execute("PRAGMA table_info(folder)")]
        assert "note" not in cols
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused_not_rebuilt(db_path: Path) -> None:
    with StateStore(db_path) as s:
        s._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(StateTooNew, match="newer"):
        StateStore(db_path)
    with pytest.raises(StateTooNew):
        StateStore.open_or_rebuild(db_path)
    assert not list(db_path.parent.glob("*.corrupt-*"))


# ---------------------------------------------------------------------------------------------
# transactions


def test_transaction_commits(db_path: Path) -> None:
    with StateStore(db_path) as s, s.transaction():
        f = s.ensure_folder("INBOX", "/x")
        s.put_message(f.id, SyncedMessage(1, "k1", ""))
        s.add_intents(f.id, "download", [(2, None, None, None)])
    with StateStore(db_path) as s:
        assert len(s.messages(f.id)) == 1
        assert len(s.open_intents()) == 1


def test_exception_inside_transaction_writes_nothing(db_path: Path) -> None:
    with StateStore(db_path) as s:
        f = s.ensure_folder("INBOX", "/x")
        with pytest.raises(RuntimeError), s.transaction():
            s.put_message(f.id, SyncedMessage(1, "k1", ""))
            s.add_intents(f.id, "download", [(2, None, None, None)])
            s.set_cursors(f.id, uidvalidity=1, uidnext=3, highestmodseq=None, last_sync=None)
            s.pop3_record("u1", "k", 1.0)
            raise RuntimeError("crash in the middle")
        assert s.messages(f.id) == []
        # The store is usable afterwards.
        s.put_message(f.id, SyncedMessage(1, "k1", ""))
    with StateStore(db_path) as s:
        assert s.messages(f.id) == [SyncedMessage(1, "k1", "")]
        assert s.open_intents() == []
        assert s.pop3_rows() == []
        assert s.folder("INBOX") == FolderState(f.id, "INBOX", "/x", None, None, None, None)


def test_nested_transaction_joins_outer(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    with pytest.raises(RuntimeError), store.transaction():
        with store.transaction():
            store.put_message(f.id, SyncedMessage(1, "k1", ""))
        # The inner block "finished", but nothing is committed until the outer one does.
        raise RuntimeError
    assert store.messages(f.id) == []


def test_nested_failure_caught_by_caller_undoes_only_inner(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    with store.transaction():
        store.put_message(f.id, SyncedMessage(1, "k1", ""))
        with pytest.raises(RuntimeError), store.transaction():
            store.put_message(f.id, SyncedMessage(2, "k2", ""))
            raise RuntimeError
        store.put_message(f.id, SyncedMessage(3, "k3", ""))
    assert [m.uid for m in store.messages(f.id)] == [1, 3]


def test_transaction_is_visible_to_others_only_after_commit(db_path: Path) -> None:
    with StateStore(db_path) as writer, StateStore(db_path) as reader:
        f = writer.ensure_folder("INBOX", "/x")
        with writer.transaction():
            writer.put_message(f.id, SyncedMessage(1, "k1", ""))
            assert reader.messages(f.id) == []
        assert reader.messages(f.id) == [SyncedMessage(1, "k1", "")]


def test_threads_of_one_process_queue_for_the_writer_lock(db_path: Path) -> None:
    """Parallel folder syncs write one database from several threads, a StateStore each:
    they queue on the process's writer lock (not SQLite's sleeping busy handler), and every
    commit of every thread lands."""
    import threading

    with StateStore(db_path) as setup:
        folder_ids = [setup.ensure_folder(f"F{n}", f"/f{n}").id for n in range(3)]
    errors: list[BaseException] = []

    def writer(folder_id: int) -> None:
        try:
            with StateStore(db_path) as store:
                # SQLite's own wait off: a commit that met another thread's would fail at once
                # with "database is locked" unless the writer lock kept them apart.
                store._conn.execute("PRAGMA busy_timeout = 0")
                for uid in range(1, 151):
                    with store.transaction():
                        store.put_message(folder_id, SyncedMessage(uid, f"k{folder_id}-{uid}", ""))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(fid,)) for fid in folder_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with StateStore(db_path) as check:
        assert [check.message_count(fid) for fid in folder_ids] == [150, 150, 150]


def test_writer_lock_held_too_long_is_database_locked(db_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that cannot get the writer lock within the busy timeout fails as SQLite would
    ("database is locked"), and its store works again once the lock is free."""
    import threading

    monkeypatch.setattr(state_mod, "_BUSY_TIMEOUT", 0.2)
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with StateStore(db_path) as store, store.transaction():
            holding.set()
            release.wait(10)

    with StateStore(db_path) as store:
        folder = store.ensure_folder("INBOX", "/x")
        thread = threading.Thread(target=holder)
        thread.start()
        assert holding.wait(10)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"), \
                    store.transaction():
                pytest.fail("entered a transaction while another thread held the lock")
        finally:
            release.set()
            thread.join()
        store.put_message(folder.id, SyncedMessage(1, "k1", ""))
        assert store.message_count(folder.id) == 1


# ---------------------------------------------------------------------------------------------
# folders and messages


def test_folders(store: StateStore) -> None:
    assert store.folder("INBOX") is None
    a = store.ensure_folder("INBOX", "/m/INBOX")
    b = store.ensure_folder("&AMQ-rger", "/m/Ärger")
    assert store.ensure_folder("INBOX", "/m/INBOX") == a
    assert store.folders() == [a, b]
    assert store.folder("&AMQ-rger") == b
    store.set_cursors(a.id, uidvalidity=5, uidnext=10, highestmodseq=7, last_sync=1.5)
    # A changed local path (layout switch) is recorded; cursors are kept.
    moved = store.ensure_folder("INBOX", "/m")
    assert moved == FolderState(a.id, "INBOX", "/m", 5, 10, 7, 1.5)


def test_reset_folder(store: StateStore) -> None:
    a = store.ensure_folder("A", "/a")
    b = store.ensure_folder("B", "/b")
    store.put_messages(a.id, [SyncedMessage(1, "k1", "S"), SyncedMessage(2, "k2", "")])
    store.put_message(b.id, SyncedMessage(1, "k1", "S"))
    store.set_cursors(a.id, uidvalidity=1, uidnext=3, highestmodseq=9, last_sync=100.0)
    store.reset_folder(a.id)
    assert store.messages(a.id) == []
    assert store.message_count(b.id) == 1
    assert store.folder("A") == FolderState(a.id, "A", "/a", None, None, None, 100.0)


def test_message_crud(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    store.put_message(f.id, SyncedMessage(5, "k5", "S", 10, "<5@x>"))
    store.put_message(f.id, SyncedMessage(3, "k3", "", None, None))
    assert store.messages(f.id) == [SyncedMessage(3, "k3", ""), SyncedMessage(5, "k5", "S", 10,
                                                                              "<5@x>")]
    # Replace by UID (a new key for the same UID is fine: e.g. re-downloaded).
    store.put_message(f.id, SyncedMessage(5, "k5b", "FS", 11, None))
    assert store.messages(f.id)[1] == SyncedMessage(5, "k5b", "FS", 11, None)
    store.set_synced_flags(f.id, 3, "RS")
    store.set_synced_flags(f.id, 999, "S")  # no row: nothing happens
    assert store.messages(f.id)[0].flags == "RS"
    assert store.message_count(f.id) == 2
    store.delete_message(f.id, 3)
    store.delete_message(f.id, 3)
    assert [m.uid for m in store.messages(f.id)] == [5]


def test_same_key_in_different_folders_is_fine(store: StateStore) -> None:
    a = store.ensure_folder("A", "/a")
    b = store.ensure_folder("B", "/b")
    store.put_message(a.id, SyncedMessage(1, "same", ""))
    store.put_message(b.id, SyncedMessage(1, "same", ""))
    assert store.message_count(a.id) == store.message_count(b.id) == 1


def test_unique_key_violation_raises_and_keeps_other_row(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    store.put_message(f.id, SyncedMessage(1, "k", "S"))
    # INSERT OR REPLACE would silently drop UID 1's pairing; we refuse instead.
    with pytest.raises(StateConflict):
        store.put_message(f.id, SyncedMessage(2, "k", ""))
    with pytest.raises(sqlite3.IntegrityError):  # also catchable as the sqlite error
        store.put_message(f.id, SyncedMessage(2, "k", ""))
    assert store.messages(f.id) == [SyncedMessage(1, "k", "S")]


def test_put_messages_is_all_or_nothing(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    store.put_message(f.id, SyncedMessage(1, "taken", ""))
    batch = [SyncedMessage(2, "a", ""), SyncedMessage(3, "b", ""), SyncedMessage(4, "taken", "")]
    with pytest.raises(StateConflict):
        store.put_messages(f.id, batch)
    assert [m.uid for m in store.messages(f.id)] == [1]


def test_conflict_inside_outer_transaction_rolls_back_everything(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    store.put_message(f.id, SyncedMessage(1, "taken", ""))
    with pytest.raises(StateConflict), store.transaction():
        store.put_message(f.id, SyncedMessage(2, "fresh", ""))
        store.put_message(f.id, SyncedMessage(3, "taken", ""))
    assert [m.uid for m in store.messages(f.id)] == [1]


def test_message_for_unknown_folder_is_refused(store: StateStore) -> None:
    with pytest.raises(StateConflict):
        store.put_message(12345, SyncedMessage(1, "k", ""))


def test_deleting_a_folder_row_cascades(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    store.put_message(f.id, SyncedMessage(1, "k", ""))
    store.add_intents(f.id, "download", [(2, None, None, None)])
    with store.transaction():
        store._conn.execute("DELETE FROM folder WHERE id = ?", (f.id,))
    assert store.messages(f.id) == []
    assert store.open_intents() == []


def test_20k_messages_round_trip(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/x")
    msgs = [SyncedMessage(uid, f"1700000000.M{uid}P4242Q{uid}R0123456789abcdef.host.example",
                          "FS" if uid % 3 else "", 4000 + uid, f"<{uid}.x@mail.example.org>")
            for uid in range(1, 20_001)]
    started = time.perf_counter()
    store.put_messages(f.id, reversed(msgs))  # an iterator, any order
    put_time = time.perf_counter() - started
    started = time.perf_counter()
    loaded = store.messages(f.id)
    load_time = time.perf_counter() - started
    assert loaded == msgs  # in UID order
    assert store.message_count(f.id) == 20_000
    # No timing assertion (shared CI machines); the numbers are visible with -s.
    print(f"\n20k rows: put {put_time * 1000:.0f} ms, load {load_time * 1000:.0f} ms")


# ---------------------------------------------------------------------------------------------
# intents


def test_intents_add_list_clear(store: StateStore) -> None:
    a = store.ensure_folder("A", "/a")
    b = store.ensure_folder("B", "/b")
    before = time.time()
    ids = store.add_intents(a.id, "download", [(1, None, None, None), (2, None, "S", None)])
    ids_b = store.add_intents(b.id, "upload", [(None, "key1", "FS", '{"message_id": "<m@x>"}')])
    pop = store.add_intents(None, "pop3_retr", [(None, None, None, "UIDL-1")])
    assert ids == sorted(ids) and len(set(ids + ids_b + pop)) == 4
    listed = store.open_intents(a.id)
    assert [(i.id, i.op, i.uid, i.flags) for i in listed] == [
        (ids[0], "download", 1, None), (ids[1], "download", 2, "S")]
    assert all(i.created >= before - 1 for i in listed)
    assert store.open_intents(b.id) == [
        Intent(ids_b[0], b.id, "upload", None, "key1", "FS", '{"message_id": "<m@x>"}',
               store.open_intents(b.id)[0].created)]
    assert [i.id for i in store.open_intents()] == ids + ids_b + pop
    store.clear_intents([ids[0], pop[0]])
    store.clear_intents([ids[0]])  # clearing twice is harmless
    assert [i.id for i in store.open_intents()] == [ids[1], ids_b[0]]
    store.clear_intents(iter([]))
    assert store.add_intents(a.id, "download", []) == []


def test_intent_ids_are_never_reused(store: StateStore) -> None:
    f = store.ensure_folder("A", "/a")
    first = store.add_intents(f.id, "push_flags", [(1, "k", "S", None)])
    store.clear_intents(first)
    second = store.add_intents(f.id, "push_flags", [(1, "k", "S", None)])
    assert second[0] > first[0]


def test_intent_needs_op(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.add_intents(None, "", [(None, None, None, None)])


def test_intents_and_result_commit_together(db_path: Path) -> None:
    # The engine's pattern: the result is recorded and the intent cleared in one transaction;
    # a crash before COMMIT leaves the intent open and no result.
    with StateStore(db_path) as s:
        f = s.ensure_folder("INBOX", "/x")
        [intent_id] = s.add_intents(f.id, "download", [(9, None, None, None)])
        with pytest.raises(KeyboardInterrupt), s.transaction():
            s.put_message(f.id, SyncedMessage(9, "k9", ""))
            s.clear_intents([intent_id])
            raise KeyboardInterrupt
    with StateStore(db_path) as s:
        assert [i.id for i in s.open_intents()] == [intent_id]
        assert s.messages(f.id) == []


# ---------------------------------------------------------------------------------------------
# pop3


def test_pop3_rows(store: StateStore) -> None:
    assert store.pop3_row("u1") is None
    store.pop3_record("u1", "k1", 100.0)
    store.pop3_record("u2", "k2", 101.0)
    store.pop3_record("u3", None, 102.0)
    assert store.pop3_row("u1") == Pop3Row("u1", "k1", 100.0, False)
    store.pop3_mark_deleted(["u1", "u3", "not-there"])
    assert store.pop3_rows() == [Pop3Row("u1", "k1", 100.0, True),
                                 Pop3Row("u2", "k2", 101.0, False),
                                 Pop3Row("u3", None, 102.0, True)]
    # Recording again never un-marks a deletion.
    store.pop3_record("u1", "k1b", 200.0)
    assert store.pop3_row("u1") == Pop3Row("u1", "k1b", 200.0, True)
    # u3 is gone from the server and deleted -> dropped; u2 is gone but kept -> stays;
    # u1 is still listed -> stays.
    assert store.pop3_forget_missing({"u1"}) == 1
    assert [r.uidl for r in store.pop3_rows()] == ["u1", "u2"]
    assert store.pop3_forget_missing({"u1"}, only_deleted=False) == 1
    assert [r.uidl for r in store.pop3_rows()] == ["u1"]
    assert store.pop3_forget_missing(set()) == 1
    assert store.pop3_rows() == []


# ---------------------------------------------------------------------------------------------
# corruption


def test_garbage_file_is_corrupt(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database at all\n" * 100)
    with pytest.raises(StateCorrupt, match="not an SQLite database") as info:
        StateStore(db_path)
    assert str(db_path) in str(info.value)


@pytest.mark.parametrize("size", [1, 5, 16, 99])
def test_file_truncated_to_a_few_bytes_is_corrupt(db_path: Path, size: int) -> None:
    make_populated(db_path, 10)
    os.truncate(db_path, size)
    with pytest.raises(StateCorrupt, match="truncated"):
        StateStore(db_path)


def test_garbage_after_a_valid_header_is_corrupt(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    with pytest.raises(StateCorrupt):
        StateStore(db_path)


def test_database_truncated_to_half_is_corrupt(db_path: Path) -> None:
    make_populated(db_path)
    assert not Path(str(db_path) + "-wal").exists() or os.path.getsize(str(db_path) + "-wal") == 0
    os.truncate(db_path, os.path.getsize(db_path) // 2)
    with pytest.raises(StateCorrupt, match="corrupt"):
        StateStore(db_path)


def test_corrupt_page_found_by_quick_check(db_path: Path) -> None:
    make_populated(db_path)
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as handle:  # scribble over the middle, header intact
        handle.seek(size // 2)
        handle.write(b"\xff" * 8192)
    with pytest.raises(StateCorrupt):
        StateStore(db_path)


def test_open_or_rebuild_healthy(db_path: Path) -> None:
    make_populated(db_path, 5)
    s, rebuilt = StateStore.open_or_rebuild(db_path)
    with s:
        assert rebuilt is False
        assert s.message_count(s.folders()[0].id) == 5


def test_open_or_rebuild_new(db_path: Path) -> None:
    s, rebuilt = StateStore.open_or_rebuild(db_path)
    s.close()
    assert rebuilt is False


def test_open_or_rebuild_moves_corrupt_file_aside(db_path: Path) -> None:
    make_populated(db_path)
    os.truncate(db_path, os.path.getsize(db_path) // 2)
    damaged = db_path.read_bytes()
    s, rebuilt = StateStore.open_or_rebuild(db_path)
    with s:
        assert rebuilt is True
        assert s.folders() == []
        s.ensure_folder("INBOX", "/x")
    [aside] = db_path.parent.glob("work.db.corrupt-*")
    assert aside.read_bytes() == damaged
    with StateStore(db_path) as s:  # the fresh one is a normal, durable store
        assert [f.remote_name for f in s.folders()] == ["INBOX"]


def test_open_or_rebuild_moves_side_files_too(db_path: Path) -> None:
    # A stale WAL next to a corrupt file must move with it: left behind, SQLite could replay it
    # into the fresh database. (Garbage is rejected before SQLite ever opens the file.)
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"x" * 200)
    db_path.with_name("work.db-wal").write_bytes(b"stale wal")
    db_path.with_name("work.db-shm").write_bytes(b"stale shm")
    s, rebuilt = StateStore.open_or_rebuild(db_path)
    s.close()
    assert rebuilt is True
    names = sorted(p.name for p in db_path.parent.glob("work.db.corrupt-*"))
    assert len(names) == 3
    assert [n.rsplit("-", 1)[-1] for n in names if n.endswith(("-wal", "-shm"))] == ["shm", "wal"]
    wal_aside = next(p for p in db_path.parent.glob("work.db.corrupt-*-wal"))
    assert wal_aside.read_bytes() == b"stale wal"
    # A second corruption within the same second gets its own name.
    db_path.write_bytes(b"y" * 200)
    s2, rebuilt2 = StateStore.open_or_rebuild(db_path)
    s2.close()
    assert rebuilt2 is True
    mains = [p for p in db_path.parent.glob("work.db.corrupt-*")
             if not p.name.endswith(("-wal", "-shm"))]
    assert sorted(p.read_bytes()[:1] for p in mains) == [b"x", b"y"]


def test_locked_database_is_not_corruption(db_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A busy database must never be moved aside as "corrupt".
    monkeypatch.setattr(state_mod, "_BUSY_TIMEOUT", 0.05)
    make_populated(db_path, 1)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("PRAGMA user_version = 0")  # forces the next open to migrate (a write)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            StateStore.open_or_rebuild(db_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(db_path.parent.glob("*.corrupt-*"))


def test_unopenable_path_is_not_corruption(tmp_path: Path) -> None:
    target = tmp_path / "dir.db"
    target.mkdir()
    with pytest.raises(OSError):
        StateStore.open_or_rebuild(target)
    assert target.is_dir()


def test_batched_flag_updates_and_deletions(store: StateStore) -> None:
    f = store.ensure_folder("INBOX", "/m/INBOX")
    other = store.ensure_folder("Other", "/m/Other")
    rows = [SyncedMessage(i, f"key{i}", "S") for i in range(1, 6)]
    store.put_messages(f.id, rows)
    store.put_messages(other.id, rows)
    with store.transaction():
        store.set_synced_flags_many(f.id, [(1, "FS"), (2, ""), (99, "S")])  # 99: no row
        store.delete_messages(f.id, [3, 4, 98])
    got = {m.uid: m.flags for m in store.messages(f.id)}
    assert got == {1: "FS", 2: "", 5: "S"}
    assert {m.uid: m.flags for m in store.messages(other.id)} == {i: "S" for i in range(1, 6)}
    # Empty batches are no-ops; a failing outer transaction takes the batch with it.
    store.set_synced_flags_many(f.id, [])
    store.delete_messages(f.id, [])
    with pytest.raises(RuntimeError), store.transaction():
        store.set_synced_flags_many(f.id, [(1, "")])
        store.delete_messages(f.id, [5])
        raise RuntimeError("undone")
    assert {m.uid: m.flags for m in store.messages(f.id)} == {1: "FS", 2: "", 5: "S"}
