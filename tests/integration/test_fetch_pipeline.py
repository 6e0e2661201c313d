"""Body FETCHes pipelined across batches and download groups (issue 21: one batch per round
trip left a 100 ms link idle). Against the real Dovecot, with batches of a few messages so
that a small folder spans many: every body arrives once, in order, absent UIDs are skipped, a
fetch abandoned half-way leaves the connection in step, and a first sync through the
pipeline equals the server."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from syncd import faults
from syncd.imap import client as imap_client
from syncd.imap import download, wire
from syncd.imap.client import ImapSession
from syncd.store.maildir import MaildirFolder
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import assert_folder_in_sync, sync, write_config


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_client, "FETCH_BATCH_COUNT", 3)
    # fewer in flight than these tests' folders have batches: the depth bound is reached
    monkeypatch.setattr(imap_client, "FETCH_PIPELINE_DEPTH", 3)


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[now, most] UID FETCH commands sent and not yet answered."""
    count = [0, 0]
    send, reply = wire.send_uid_fetch, wire.uid_fetch_reply

    def sending(client: object, *args: str) -> bytes:
        count[0] += 1
        count[1] = max(count)
        return send(client, *args)

    def replied(client: object, tag: bytes) -> list:
        count[0] -= 1
        return reply(client, tag)

    monkeypatch.setattr(wire, "send_uid_fetch", sending)
    monkeypatch.setattr(wire, "uid_fetch_reply", replied)
    return count


def test_every_body_once_in_order_absent_ones_skipped(
        dovecot: Dovecot, user: User, session: ImapSession, in_flight: list[int]) -> None:
    uids = dovecot.seed(user, "INBOX", [make_message(i) for i in range(14)])
    bodies = {m.uid: m.body for m in dovecot.messages(user, "INBOX").values()}
    session.select("INBOX")
    wanted = [(uid, None) for uid in uids[:5]] + [(9999, 10)] + [(uid, 1) for uid in uids[5:]]
    got = list(session.fetch_bodies(wanted))
    assert [uid for uid, _, _ in got] == uids
    assert all(body == bodies[uid] for uid, body, _ in got)
    assert all(date is not None for _, _, date in got)
    assert in_flight == [0, imap_client.FETCH_PIPELINE_DEPTH]


def test_an_abandoned_fetch_leaves_the_connection_in_step(
        dovecot: Dovecot, user: User, session: ImapSession, in_flight: list[int]) -> None:
    uids = dovecot.seed(user, "INBOX", [(make_message(i), "S") for i in range(20)])
    session.select("INBOX")
    fetching = session.fetch_bodies([(uid, None) for uid in uids])
    first = [next(fetching) for _ in range(4)]
    assert [uid for uid, _, _ in first] == uids[:4]
    fetching.close()  # batches still in flight are read and dropped
    assert in_flight[0] == 0
    # Nothing of them is taken for the next command's data.
    assert set(session.fetch_flags().flags) == set(uids)
    again = list(session.fetch_bodies([(uids[-1], None), (uids[0], None)]))
    assert [uid for uid, _, _ in again] == [uids[-1], uids[0]]


def test_first_sync_through_the_pipeline_equals_the_server(
        dovecot: Dovecot, user: User, tmp_path: Path, in_flight: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Download groups of 4 across batches of 3: group and batch boundaries never line up.
    monkeypatch.setattr(download, "DOWNLOAD_COMMIT_COUNT", 4)
    dovecot.seed(user, "INBOX", [(make_message(i, size=2000 + 300 * i), "S" if i % 2 else "")
                                 for i in range(23)])
    dovecot.seed(user, "Archive", [make_message(100 + i) for i in range(7)])
    account = write_config(tmp_path, dovecot, user)
    rc, out, err = sync(account)
    assert rc == 0, out + err
    assert in_flight[1] == imap_client.FETCH_PIPELINE_DEPTH
    assert assert_folder_in_sync(dovecot, user, account, "INBOX") == 23
    assert assert_folder_in_sync(dovecot, user, account, "Archive") == 7
    rc, out, err = sync(account)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in out, out + err


@pytest.mark.parametrize("announced_small", [False, True])
def test_a_group_costs_one_commit_and_nothing_is_published_without_its_intent(
        dovecot: Dovecot, user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        announced_small: bool) -> None:
    """Each group's download intents ride with the previous group's rows (one state commit a
    group, not two), and still come first: whenever bodies are published into cur/ or new/,
    every file the state has no row for has an open download intent under its key (what a
    kill there leaves recovery to settle). A big body is spooled into tmp/ under a key of its
    own: its group's intents are written when it has come; and if it was not expected to be
    big (``announced_small``: the intents went ahead), an intent of its own key is added
    before it is published."""
    monkeypatch.setattr(download, "DOWNLOAD_COMMIT_COUNT", 3)
    monkeypatch.setattr(imap_client, "SPOOL_LITERAL_MIN", 8000)  # message 7 is streamed
    monkeypatch.setattr(imap_client, "_READ_CHUNK", 4096)
    monkeypatch.setattr(download, "SPOOL_LITERAL_MIN", 10**9 if announced_small else 8000)
    dovecot.seed(user, "INBOX", [make_message(i, size=20000 if i == 7 else 1500)
                                 for i in range(10)])
    streamed: list[str] = []
    stage_written = MaildirFolder.stage_written
    monkeypatch.setattr(MaildirFolder, "stage_written", lambda self, written, *a, **kw: (
        streamed.append(written.key), stage_written(self, written, *a, **kw))[1])
    account = write_config(tmp_path, dovecot, user)
    state_path = account.state_dir / f"{account.name}.sqlite3"
    folder = account.folder_dir("INBOX")
    unrecorded: list[int] = []

    def published(step: str) -> None:
        with contextlib.closing(sqlite3.connect(state_path)) as db:
            intents = {key for (key,) in db.execute(
                "SELECT maildir_key FROM intent WHERE op = 'download'")}
            recorded = {key for (key,) in db.execute("SELECT maildir_key FROM message")}
        files = {name.split(":2,")[0] for sub in ("cur", "new")
                 for name in os.listdir(folder / sub)}
        assert files - recorded <= intents, (files - recorded) - intents
        unrecorded.append(len(files - recorded))

    faults.add_hook("download.publish", published)
    faults.arm(None, record=True)
    try:
        rc, out, err = sync(account)
        trace = list(faults.trace or [])
    finally:
        faults.add_hook("download.publish", None)
        faults.arm(None)
    assert rc == 0, out + err
    assert len(streamed) == 1  # message 7, through its tmp/ file
    assert unrecorded == [3, 3, 3, 1]
    # intents of their own for the first group, and for the group of the big body (6-8)
    # unless it was not expected
    assert trace.count("download.intents") == (1 if announced_small else 2), trace
    assert trace.count("download.commit") == 4, trace
    assert assert_folder_in_sync(dovecot, user, account, "INBOX") == 10
    with contextlib.closing(sqlite3.connect(state_path)) as db:
        assert db.execute("SELECT count(*) FROM intent").fetchone() == (0,)
