"""Pipelined IMAP commands (adapters/imap.py: Pipeline, select_with_changes, send_store,
send_expunge) against the real Dovecot: every reply read and matched to its command, a refused
command in the middle leaving the others applied and the connection in step."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from imapclient.exceptions import IMAPClientError

from syncd.imap.client import ImapSession, raise_refused
from tests.support.dovecot import Dovecot, User, make_message


def test_stores_and_expunge_in_one_batch(dovecot: Dovecot, user: User,
                                         session: ImapSession) -> None:
    uids = dovecot.seed(user, "INBOX", [(make_message(i), "S") for i in range(8)])
    session.select("INBOX")
    pipe = session.pipeline()
    flagged = session.send_store(pipe, uids[0:3], "F", "")
    unseen = session.send_store(pipe, uids[3:5], "", "S")
    answered = session.send_store(pipe, uids[5:6], "R", "S")  # add and remove: two commands
    gone = session.send_expunge(pipe, uids[6:8])
    replies = pipe.replies()

    assert [len(flagged), len(unseen), len(answered)] == [1, 1, 2]
    assert len(replies) == 1 + 1 + 2 + len(gone.stores) + len(gone.expunges) == 6
    assert all(r.ok for r in replies), replies
    assert [r.command for r in replies[:4]] == ["UID STORE"] * 4
    assert replies[-1].command == "UID EXPUNGE"
    raise_refused(replies)  # nothing refused: no error
    assert session.finish_expunge(gone, replies).expunged == set(uids[6:8])

    flags = dovecot.flags(user, "INBOX")
    assert sorted(flags) == uids[:6]
    for uid in uids[0:3]:
        assert flags[uid] == {"\\Seen", "\\Flagged"}
    for uid in uids[3:5]:
        assert flags[uid] == frozenset()
    assert flags[uids[5]] == {"\\Answered"}
    # The connection is in step: the next ordinary command gets its own answer.
    assert set(session.fetch_flags().flags) == set(uids[:6])


@pytest.mark.parametrize("qresync", [True, False], ids=["vanished", "search"])
def test_a_message_that_survives_uid_expunge_is_not_recorded_gone(
        dovecot: Dovecot, user: User, session: ImapSession, qresync: bool) -> None:
    """An OK to UID EXPUNGE with one of the UIDs still there (Dovecot keeps a message whose
    file another session renamed at that instant): only the one really gone counts as
    expunged, so the state keeps the other's row and the next sync expunges it again. Told by
    the expunge's VANISHED under QRESYNC, else by a UID SEARCH after it."""
    uids = dovecot.seed(user, "INBOX", [(make_message(i), "S") for i in range(2)])
    session.select("INBOX")
    session.qresync = session.qresync and qresync
    pipe = session.pipeline()
    gone = session.send_expunge(pipe, uids[:1])  # the server is asked to expunge one only,
    replies = pipe.replies()
    # ... but syncd is told both were meant: uids[1] stands for the one that survived.
    survived = gone._replace(uids=frozenset(uids))
    assert session.finish_expunge(survived, replies).expunged == {uids[0]}
    assert session.finish_expunge(gone, replies).expunged == {uids[0]}


def test_refused_command_in_the_middle(dovecot: Dovecot, user: User,
                                       session: ImapSession) -> None:
    """A STORE on a UID set the server rejects (UID 0 is no valid UID: BAD) between good ones:
    the others still apply, every reply is read, the error names the refused command, and the
    session goes on in step."""
    uids = dovecot.seed(user, "INBOX", [(make_message(i), "") for i in range(4)])
    session.select("INBOX")
    pipe = session.pipeline()
    first = session.send_store(pipe, uids[:1], "F", "")
    bad = session.send_store(pipe, [0], "S", "")
    after = session.send_store(pipe, uids[1:2], "S", "")
    gone = session.send_expunge(pipe, uids[3:4])
    replies = pipe.replies()

    assert replies[first[0]].ok
    assert replies[bad[0]].status in ("BAD", "NO"), replies[bad[0]]
    assert replies[after[0]].ok
    assert all(replies[i].ok for i in (*gone.stores, *gone.expunges))
    assert session.finish_expunge(gone, replies).expunged == {uids[3]}
    with pytest.raises(IMAPClientError, match="UID STORE failed"):
        raise_refused(replies)

    flags = dovecot.flags(user, "INBOX")
    assert flags == {uids[0]: {"\\Flagged"}, uids[1]: {"\\Seen"}, uids[2]: frozenset()}
    session.noop()
    assert session.fetch_flags().flags == {uids[0]: "F", uids[1]: "S", uids[2]: ""}
    assert session.fetch_meta([uids[2]])[uids[2]][0] > 0


def test_select_with_changes(dovecot: Dovecot, user: User, session: ImapSession) -> None:
    uids = dovecot.seed(user, "Work", [(make_message(i, folder="Work"), "S")
                                       for i in range(6)])
    before = session.select("Work")
    assert before.highestmodseq is not None and before.uidnext is not None
    # Another client changes the folder: a flag, an expunge, two new messages.
    dovecot.add_flags(user, "Work", uids[1], ["\\Flagged"])
    dovecot.expunge(user, "Work", [uids[2]])
    new = [dovecot.append(user, "Work", make_message(100 + i, folder="Work"),
                          ["\\Seen"] if i else []) for i in range(2)]
    session.select("INBOX")  # leave it, as a sync does between folders

    info, extra = session.select_with_changes("Work", before.highestmodseq, before.uidnext)

    assert session.selected == "Work"
    assert info.uidvalidity == before.uidvalidity
    assert info.exists == 7 and info.uidnext == new[-1] + 1
    assert extra.changes is not None and extra.meta is not None
    assert extra.changes.flags == {uids[1]: "FS", new[0]: "", new[1]: "S"}
    if session.qresync:
        assert extra.changes.vanished == {uids[2]}
    server = dovecot.messages(user, "Work", bodies=False)
    assert {uid: meta[:2] for uid, meta in extra.meta.items() if uid in new} == {
        uid: (server[uid].size, server[uid].message_id) for uid in new}
    # The session works on the selected folder as after select().
    assert set(session.fetch_flags().flags) == set(server)


def test_select_with_changes_nothing_new(dovecot: Dovecot, user: User,
                                         session: ImapSession) -> None:
    """No change since the cursors: no flags; the meta fetch from UIDNEXT on may name the last
    message (N:* always matches the highest UID), which is no new message."""
    uids = dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    before = session.select("INBOX")
    assert before.highestmodseq is not None and before.uidnext is not None
    info, extra = session.select_with_changes("INBOX", before.highestmodseq, before.uidnext)
    assert info == before
    assert extra.changes is not None and extra.changes.flags == {}
    assert extra.changes.vanished == frozenset()
    assert extra.meta is not None and set(extra.meta) <= {uids[-1]}
    # Without new_from the meta is not asked for (too many new messages for one reply).
    info, extra = session.select_with_changes("INBOX", before.highestmodseq, None)
    assert info == before and extra.meta is None
    assert extra.changes is not None and extra.changes.flags == {}


def test_select_with_changes_of_a_missing_folder(dovecot: Dovecot, user: User,
                                                 session: ImapSession) -> None:
    """SELECT refused (the fetches pipelined behind it are refused too): the error is the
    SELECT's, nothing is selected, and the connection goes on in step."""
    dovecot.seed(user, "INBOX", [make_message(1)])
    session.select("INBOX")
    with pytest.raises(IMAPClientError, match="SELECT"):
        session.select_with_changes("Does/Not/Exist", 1, 1)
    assert session.selected is None
    info = session.select("INBOX")
    assert info.exists == 1
    assert len(session.fetch_flags().flags) == 1


def test_select_initial_brings_every_flag_and_size(dovecot: Dovecot, user: User,
                                                   session: ImapSession) -> None:
    """A first sync's SELECT: every message's flags and sizes in the same round trip, the
    same as fetch_flags() + fetch_meta(message_ids=False) would give."""
    uids = dovecot.seed(user, "Work", [(make_message(i, folder="Work"), "S" if i % 2 else "")
                                       for i in range(5)])
    session.select("INBOX")
    info, extra = session.select_initial("Work", sizes=True)
    assert session.selected == "Work" and info.exists == 5
    assert extra.complete and extra.changes is not None and extra.meta is not None
    assert extra.changes.flags == session.fetch_flags().flags
    assert set(extra.changes.flags) == set(uids)
    server = dovecot.messages(user, "Work", bodies=False)
    assert {uid: meta.size for uid, meta in extra.meta.items()} == {
        uid: m.size for uid, m in server.items()}
    assert all(meta.message_id is None for meta in extra.meta.values())
    info, extra = session.select_initial("Work", sizes=False)
    assert extra.meta is None and extra.changes is not None and len(extra.changes.flags) == 5


def test_select_initial_of_an_empty_and_of_a_missing_folder(dovecot: Dovecot, user: User,
                                                            session: ImapSession) -> None:
    """An empty folder: no flags (or none asked, if the server refuses 1:* there); a missing
    one: the SELECT's error, nothing selected, the connection still in step."""
    dovecot.create_folder(user, "Empty")
    info, extra = session.select_initial("Empty", sizes=True)
    assert info.exists == 0
    assert extra.changes is None or extra.changes.flags == {}
    with pytest.raises(IMAPClientError, match="SELECT"):
        session.select_initial("Does/Not/Exist", sizes=True)
    assert session.selected is None
    assert session.select("Empty").exists == 0


def test_select_searching_brings_the_window_with_the_select(dovecot: Dovecot, user: User,
                                                            session: ImapSession) -> None:
    """A windowed folder's SELECT: UID SEARCH SINCE (or ALL) in the same round trip, the same
    UIDs search_since() (search_all_uids()) names; then the window's flags and sizes in one
    FETCH, the same as fetch_flags_of() and fetch_meta(message_ids=False) give."""
    now = time.time()
    dovecot.create_folder(user, "Work")
    old = [dovecot.append(user, "Work", make_message(i, folder="Work"), "\\Seen",
                          date=now - (400 - i) * 86400) for i in range(4)]
    new = [dovecot.append(user, "Work", make_message(i, folder="Work"), "\\Flagged" if i % 2
                          else "", date=now - (10 - i) * 86400) for i in range(4, 7)]
    day = dt.date.fromtimestamp(now - 30 * 86400)
    session.select("INBOX")
    info, uids = session.select_searching("Work", day)
    assert session.selected == "Work" and info.exists == 7
    assert uids == set(new) == session.search_since(day)
    assert not uids & set(old)
    session.select("INBOX")
    info, every = session.select_searching("Work", None)
    assert info.exists == 7 and every == set(old) | set(new) == session.search_all_uids()
    flags, sizes = session.fetch_flags_and_sizes(uids | {999})  # 999: no such message
    assert flags == session.fetch_flags_of(uids)
    assert flags[new[1]] == "F" and flags[new[0]] == ""
    assert sizes == session.fetch_meta(uids, message_ids=False)
    _, none_inside = session.select_searching("Work", dt.date.fromtimestamp(now + 86400))
    assert none_inside == set()


def test_select_searching_a_missing_folder(dovecot: Dovecot, user: User,
                                          session: ImapSession) -> None:
    """The SELECT's error; nothing selected, the refused SEARCH behind it read too (the
    connection in step for the next command)."""
    with pytest.raises(IMAPClientError, match="SELECT"):
        session.select_searching("Does/Not/Exist", dt.date(2020, 1, 1))
    assert session.selected is None
    assert session.select("INBOX").exists == 0


def test_select_searching_every_uid_is_trusted_only_if_it_counts_as_the_select(
        dovecot: Dovecot, user: User, session: ImapSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A SEARCH ALL reply that names fewer UIDs than EXISTS (cut short, or read under the
    wrong command) is not taken: the missing ones would pass for expunged. None: the caller
    asks again the ordinary way."""
    from syncd.imap import client as imap_client

    dovecot.seed(user, "Work", [make_message(i, folder="Work") for i in range(4)])
    searched = imap_client._searched
    monkeypatch.setattr(imap_client, "_searched",
                        lambda reply: set(sorted(searched(reply) or ())[1:]))
    info, every = session.select_searching("Work", None)
    assert info.exists == 4 and every is None
    assert len(session.search_all_uids()) == 4
