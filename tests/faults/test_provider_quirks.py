"""Issue 15, "Provider quirks that peers had to learn", on scripted servers that behave as the
providers do (tests/faults/quirky.py):

- Cyrus: an expunged message above the highest UID still present is reported VANISHED only
  for an explicit upper bound; syncd never asks CHANGEDSINCE ... VANISHED with "*".
- Exchange: no capabilities in the greeting or LOGIN's OK, fewer before LOGIN than after:
  syncd asks again after LOGIN. "NO Request is throttled. Suggested Backoff Time: N
  milliseconds" then a dropped connection: no new connection before N ms (the worker's and
  the IDLE watcher's alike), the status says so. APPEND of a line over ~9,900 bytes: "BAD
  Command Error. 10".
- Gmail: "NO [ALERT] Account exceeded command or bandwidth limits" pauses the account (an
  hour), with a clear status, never a retry storm, and is not taken for a wrong password.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from syncd.config import providers
from syncd.config.load import load_config
from tests.faults.faultlib import fault, make_account
from tests.faults.hostile import ImapServer, Msg
from tests.faults.quirky import MAX_UID, CyrusLike, ExchangeLike, GmailLike
from tests.faults.test_hostile_imap import dummy_user, msgs
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import Account, local_files, run_cli

ACCOUNT = "victim"


@pytest.fixture
def serve(dovecot: Dovecot) -> Iterator[Callable[..., ImapServer]]:
    made: list[ImapServer] = []

    def make(cls: type[ImapServer], folders: dict[str, list[Msg]] | None = None,
             **kwargs: object) -> ImapServer:
        server = cls(dovecot.cert_file, dovecot.key_file, folders, **kwargs)  # type: ignore[arg-type]
        made.append(server.__enter__())
        return server

    providers.PAUSES.clear(ACCOUNT)
    yield make
    providers.PAUSES.clear(ACCOUNT)
    for server in made:
        server.__exit__(None, None, None)
        assert not server.errors, server.errors


def account_on(tmp_path: Path, dovecot: Dovecot, server: ImapServer, extra: str = ""
               ) -> Account:
    return make_account(tmp_path, dovecot, dummy_user(tmp_path), port=server.port,
                        timeout="3s", extra=extra, name=ACCOUNT)


def sync(account: Account) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(account.config), "sync")
    return rc, out + err


def count(account: Account, folder: str = "INBOX") -> int:
    return len(local_files(account.folder_dir(folder)))


# --------------------------------------------------------------------------------------------
# Cyrus


def test_cyrus_an_expunge_above_the_highest_uid_left_is_seen(tmp_path: Path, dovecot: Dovecot,
                                                            serve) -> None:
    server: CyrusLike = serve(CyrusLike, {"INBOX": msgs("INBOX", 3)})
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 0 and count(account) == 3, text

    server.server_expunge("INBOX", 3)  # the highest UID: "1:*" now ends at 2
    fault("cyrus: expunge above the highest UID left")
    mark = len(server.commands)
    rc, text = sync(account)
    assert rc == 0, text
    assert count(account) == 2
    sent = server.commands[mark:]
    assert server.changedsince_sets, sent
    assert all("*" not in uid_set for uid_set in server.changedsince_sets), \
        server.changedsince_sets
    # VANISHED told it: no UID SEARCH was needed to find out.
    assert not any(c.startswith("UID SEARCH") for c in sent), sent

    # A new message and an expunge in one go, then idempotent.
    server.server_append("INBOX", make_message(50))
    server.server_expunge("INBOX", 2)
    rc, text = sync(account)
    assert rc == 0 and count(account) == 2, text
    rc, text = sync(account)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in text, text


def test_cyrus_fetch_flags_asks_up_to_uidnext(tmp_path: Path, dovecot: Dovecot,
                                              serve) -> None:
    """The fetch that follows a SELECT (not pipelined) bounds the set by the SELECT's UIDNEXT."""
    from syncd.imap.client import ImapSession

    server: CyrusLike = serve(CyrusLike, {"INBOX": msgs("INBOX", 4)})
    account = account_on(tmp_path, dovecot, server)
    settings = load_config(account.config).accounts[ACCOUNT]
    server.server_expunge("INBOX", 4)
    session = ImapSession.connect(settings, lambda: account.user.password)
    try:
        info = session.select("INBOX")
        assert info.uidnext == 5
        changes = session.fetch_flags(changedsince=1)
    finally:
        session.close()
    assert server.changedsince_sets == ["1:4"]
    assert changes.vanished == {4}


def test_vanished_range() -> None:
    from syncd.imap.client import _vanished_range

    assert _vanished_range(5) == "1:4"
    assert _vanished_range(None) == f"1:{MAX_UID}"
    assert _vanished_range(1) == "1:*"  # nothing was ever in the folder


# --------------------------------------------------------------------------------------------
# Exchange


def test_exchange_capabilities_are_asked_again_after_login(tmp_path: Path, dovecot: Dovecot,
                                                          serve) -> None:
    from syncd.imap.client import ImapSession

    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 2)})
    account = account_on(tmp_path, dovecot, server)
    settings = load_config(account.config).accounts[ACCOUNT]
    session = ImapSession.connect(settings, lambda: account.user.password)
    try:
        # UIDPLUS, IDLE, NAMESPACE and UNSELECT are only in the list after LOGIN.
        assert {"UIDPLUS", "IDLE", "NAMESPACE", "UNSELECT"} <= session.capabilities
    finally:
        session.close()
    assert server.capability_after_login == 1
    rc, text = sync(account)
    assert rc == 0 and count(account) == 2, text


def test_exchange_throttling_is_waited_out(tmp_path: Path, dovecot: Dovecot, serve) -> None:
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 2)})
    account = account_on(tmp_path, dovecot, server)
    server.throttle(1, 1500)
    fault("exchange: request throttled, connection dropped")
    rc, text = sync(account)
    assert rc == 1, text
    assert "throttled" in text.lower() and "Traceback" not in text, text
    # Within the suggested time, no connection at all; the status says why.
    connections = server.connections
    rc, text = sync(account)
    assert rc == 1 and "throttled by the server until" in text, text
    assert server.connections == connections
    time.sleep(1.6)
    rc, text = sync(account)
    assert rc == 0 and count(account) == 2, text


def test_exchange_throttling_daemon_does_not_hammer(tmp_path: Path, dovecot: Dovecot,
                                                    serve) -> None:
    """The worker and the IDLE watcher both wait the suggested time (4 s here; syncd's own
    first backoff is 2 s), and the status file says the account is throttled."""
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 2)})
    account = account_on(tmp_path, dovecot, server, "    poll_interval: 1h\n")
    server.throttle(4, 4000)
    fault("exchange: requests throttled (daemon)")
    status_file = account.state_dir / "status.json"
    seen_status: list[str] = []
    with DaemonProcess(account.config, log_path=tmp_path / "daemon.log") as daemon:
        def throttled_status() -> bool:
            if status_file.exists() and "throttled by the server" in status_file.read_text():
                seen_status.append(status_file.read_text())
                return True
            return False

        wait_until(throttled_status, 15, message=lambda: f"a throttled status\n{daemon.log()}")
        # The worker's own backoff (2, 4, 8, 16 s, jittered) grows under the suggested pause
        # when it, not the IDLE watcher, draws three of the four throttled replies: the sync
        # then comes ~31 s after the first one.
        wait_until(lambda: count(account) == 2, 60,
                   message=lambda: f"the sync after the backoff\n{daemon.log()}")
        rc, _ = daemon.stop()
        log = daemon.log()
    assert rc == 0, log
    times = server.throttled_at
    assert len(times) == 4, (times, log)
    # Replies within 0.5 s of each other are the two threads' simultaneous attempts; any
    # later attempt waited the suggested 4 s.
    first = times[0]
    later = [t - first for t in times if t - first > 0.5]
    assert later and min(later) >= 3.9, ([t - first for t in times], log)
    assert json.loads(seen_status[0])  # a well-formed status file


def test_exchange_long_line_append_is_refused(tmp_path: Path, dovecot: Dovecot,
                                              serve) -> None:
    """Exchange refuses an APPEND with a line over ~9,900 bytes ("BAD Command Error. 10"): the
    error names the folder and the other messages still go up."""
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": [], "Sent": []})
    server.append_line_limit = 9900
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 0, text
    sent = account.folder_dir("Sent")
    long_line = make_message(1, folder="Sent", body="x" * 12_000 + "\r\n")
    (sent / "cur" / "long.1:2,S").write_bytes(long_line.replace(b"\r\n", b"\n"))
    (sent / "cur" / "short.1:2,S").write_bytes(
        make_message(2, folder="Sent").replace(b"\r\n", b"\n"))
    fault("exchange: APPEND of a long line refused")
    rc, text = sync(account)
    assert rc == 1, text
    assert "Command Error. 10" in text and "Sent" in text, text
    assert "Traceback" not in text and "internal error" not in text, text
    # The refusal is that message's: the other message of the folder still goes up.
    assert make_message(2, folder="Sent") in [data for _, data in server.appended], text


def test_exchange_sizes_that_are_not_exact(tmp_path: Path, dovecot: Dovecot, serve) -> None:
    """RFC822.SIZE off by 37 bytes: every message is downloaded whole (the literal's length
    decides, never the announced size), syncs are idempotent, and a lost state re-pairs
    without a duplicate."""
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 3)})
    server.size_skew = 37
    fault("exchange: RFC822.SIZE not exact")
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 0, text
    local = sorted(path.read_bytes() for _, path in local_files(account.folder_dir("INBOX")))
    assert local == sorted(m.body.replace(b"\r\n", b"\n") for m in server.folders["INBOX"])
    rc, text = sync(account)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in text, text
    state_files = list(account.state_dir.glob(f"{ACCOUNT}.sqlite3*"))
    assert state_files
    for path in state_files:
        path.unlink()  # state lost: messages are paired again by content
    rc, text = sync(account)
    assert rc == 0, text
    # Sizes disagree, so the bodies decide (BODY[TEXT] of those messages only): no duplicate.
    assert count(account) == 3 and len(server.appended) == 0, text


def test_exchange_items_fetch_cannot_return(tmp_path: Path, dovecot: Dovecot, serve) -> None:
    """Exchange refuses a whole UID FETCH that names a calendar or contact item ("NO The
    requested message could not be converted to an RFC-822 compatible format"). The batch is
    asked again in halves: the other messages arrive, the refused ones are named (account,
    folder, UID, Subject) in the folder's error, asked for again at the next sync, and
    mirrored once the server sends them."""
    messages = msgs("INBOX", 40)
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": messages})
    server.unfetchable = {7, 23}
    fault("exchange: FETCH refused for calendar/contact items")
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 1, text
    assert count(account) == 38, text
    for uid in (7, 23):
        assert f"UID {uid} (Subject: Test message {uid} in INBOX)" in text, text
    assert "would not send 2 messages" in text and "INBOX" in text and ACCOUNT in text, text
    # Halving costs a few commands, not one per message.
    assert len(server.body_fetches) < 20, server.body_fetches
    rc, text = sync(account)  # asked for again, still refused, nothing duplicated
    assert rc == 1 and "would not send 2 messages" in text and count(account) == 38, text
    server.unfetchable = set()
    rc, text = sync(account)
    assert rc == 0 and count(account) == 40, text
    local = sorted(path.read_bytes() for _, path in local_files(account.folder_dir("INBOX")))
    assert local == sorted(m.body.replace(b"\r\n", b"\n") for m in messages)
    assert len(server.appended) == 0, text


def test_exchange_refused_item_amid_pipelined_batches(tmp_path: Path, dovecot: Dovecot,
                                                     serve) -> None:
    """The same refusal when several FETCH batches are in flight (bigger messages: one batch
    per ~2 MiB): the batches behind the refused one are read and asked again, the refused one
    is halved alone, nothing is lost, duplicated or left in tmp/."""
    messages = [Msg(uid, make_message(uid, size=450_000)) for uid in range(1, 13)]
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": messages})
    server.unfetchable = {6}
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 1 and "UID 6 (Subject: Test message 6 in INBOX)" in text, text
    assert count(account) == 11, text
    assert len(server.body_fetches) > 3, server.body_fetches  # pipelined, then split
    server.unfetchable = set()
    rc, text = sync(account)
    assert rc == 0 and count(account) == 12, text
    local = sorted(path.read_bytes() for _, path in local_files(account.folder_dir("INBOX")))
    assert local == sorted(m.body.replace(b"\r\n", b"\n") for m in messages)
    assert not list(account.folder_dir("INBOX").joinpath("tmp").iterdir())


def test_exchange_folder_whose_every_item_is_refused(tmp_path: Path, dovecot: Dovecot,
                                                     serve) -> None:
    """A folder of nothing but such items (Calendar) is that folder's error after a bounded
    number of commands; the other folders are mirrored."""
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 3, start=100),
                                                "Calendar": msgs("Calendar", 60)})
    server.unfetchable = {m.uid for m in server.folders["Calendar"]}
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 1 and "Calendar" in text, text
    assert count(account) == 3 and count(account, "Calendar") == 0, text
    assert len(server.body_fetches) < 80, len(server.body_fetches)
    assert "Traceback" not in text, text


# --------------------------------------------------------------------------------------------
# Gmail


def test_gmail_bandwidth_alert_pauses_the_account(tmp_path: Path, dovecot: Dovecot,
                                                  serve) -> None:
    server: GmailLike = serve(GmailLike, {"INBOX": msgs("INBOX", 2)})
    account = account_on(tmp_path, dovecot, server)
    server.alert(1)
    fault("gmail: account exceeded command or bandwidth limits")
    rc, text = sync(account)
    assert rc == 1, text
    assert "wrong username or password" not in text, text
    assert "throttled by the server until" in text, text
    assert "exceeded command or bandwidth limits" in text, text
    pause = providers.PAUSES.remaining(ACCOUNT)
    assert 3500 < pause <= providers.LIMIT_PAUSE
    logins = server.logins
    for _ in range(3):
        rc, text = sync(account)
        assert rc == 1 and "throttled by the server until" in text, text
    assert server.logins == logins  # no retry storm: nothing sent while paused
    providers.PAUSES.clear(ACCOUNT)  # (the hour has passed)
    rc, text = sync(account)
    assert rc == 0 and count(account) == 2, text


def test_gmail_alert_daemon_status(tmp_path: Path, dovecot: Dovecot, serve) -> None:
    server: GmailLike = serve(GmailLike, {"INBOX": msgs("INBOX", 2)})
    account = account_on(tmp_path, dovecot, server, "    poll_interval: 30s\n")
    server.alert(1000)
    status_file = account.state_dir / "status.json"
    with DaemonProcess(account.config, log_path=tmp_path / "daemon.log") as daemon:
        wait_until(lambda: status_file.exists()
                   and "throttled by the server until" in status_file.read_text(), 15,
                   message=lambda: f"a paused status\n{daemon.log()}")
        time.sleep(4)
        rc, _ = daemon.stop()
        log = daemon.log()
    assert rc == 0, log
    # The worker's and the IDLE watcher's first attempts, nothing after.
    assert server.logins <= 2, (server.logins, log)
    assert "auth failed" not in status_file.read_text()


def test_a_folder_refusal_is_no_throttle(tmp_path: Path, dovecot: Dovecot, serve) -> None:
    """A NO about one folder (its own limit, a lock) stays that folder's error: no pause,
    the other folders sync, and the next sync connects again at once."""
    server: ExchangeLike = serve(ExchangeLike, {"INBOX": msgs("INBOX", 2),
                                                "Broken": msgs("Broken", 1)})

    def refuse(conn, tag: str, args: str) -> bool:
        if "Broken" in args:
            conn.line(f"{tag} NO [LIMIT] Mailbox size limit exceeded; request throttled? no")
            return True
        return False

    server.overrides["SELECT"] = refuse
    server.overrides["EXAMINE"] = refuse
    account = account_on(tmp_path, dovecot, server)
    rc, text = sync(account)
    assert rc == 1 and "Broken" in text, text
    assert count(account) == 2, text
    assert providers.PAUSES.remaining(ACCOUNT) == 0
    connections = server.connections
    rc, text = sync(account)
    assert rc == 1 and "throttled by the server" not in text, text
    assert server.connections > connections


# --------------------------------------------------------------------------------------------
# the pure parts


@pytest.mark.parametrize(("line", "seconds", "kind"), [
    (b"A3 NO Request is throttled. Suggested Backoff Time: 1500 milliseconds", 1.5,
     "suggested"),
    (b"A3 NO Request is throttled. Suggested Backoff Time: 999999999 milliseconds",
     providers.SUGGESTED_MAX, "suggested"),
    (b"A3 NO Request is throttled. Suggested Backoff Time: 10 milliseconds",
     providers.SUGGESTED_MIN, "suggested"),
    (b"A1 NO [ALERT] Account exceeded command or bandwidth limits. (Failure)",
     providers.LIMIT_PAUSE, "limit"),
    (b"* BYE [ALERT] Bandwidth limits exceeded", providers.LIMIT_PAUSE, "limit"),
    (b"A1 NO [ALERT] Too many simultaneous connections. (Failure)", providers.SHORT_PAUSE,
     "short"),
    (b"A9 NO [THROTTLED] slow down", providers.SHORT_PAUSE, "short"),
])
def test_throttling_replies(line: bytes, seconds: float, kind: str) -> None:
    throttle = providers.throttle_from(line)
    assert throttle is not None and throttle.seconds == seconds and throttle.kind == kind


@pytest.mark.parametrize("line", [
    b"A5 NO [OVERQUOTA] Quota exceeded (Mailbox size limit)",
    b"A5 NO [LIMIT] Too many flags in this mailbox",
    b"A5 BAD Command Error. 10",
    b"A5 NO [TRYCREATE] no such mailbox",
    b"* OK [ALERT] Your account will be migrated tonight",
    b"A5 OK FETCH completed",
])
def test_folder_and_message_errors_are_not_throttling(line: bytes) -> None:
    assert providers.throttle_from(line) is None


def test_idle_is_renewed_within_the_provider_limit() -> None:
    from syncd.service.idle import IDLE_RENEW, idle_renew_interval

    assert idle_renew_interval("imap.gmail.com") == 9 * 60
    assert idle_renew_interval("IMAP.GMAIL.COM.") == 9 * 60
    assert idle_renew_interval("outlook.office365.com") == IDLE_RENEW < 29 * 60
    assert idle_renew_interval("mail.example.org") == IDLE_RENEW


def test_pauses_keep_the_longest_and_expire() -> None:
    now = [1000.0]
    pauses = providers.Pauses(clock=lambda: now[0])
    pauses.note("a", providers.Throttle(60, "x", "short"))
    pauses.note("a", providers.Throttle(5, "y", "suggested"))
    assert pauses.remaining("a") == 60
    now[0] += 61
    assert pauses.get("a") is None and pauses.remaining("a") == 0


def test_idle_folders_stay_within_gmails_connection_limit() -> None:
    folders = [f"F{i}" for i in range(20)]
    watched, polled = providers.idle_folders_within_limit("imap.gmail.com", 3, folders)
    assert watched == folders[:12] and polled == folders[12:]  # 3 + 12 = 15
    watched, polled = providers.idle_folders_within_limit("imap.gmail.com", 8, ["INBOX"])
    assert (watched, polled) == (["INBOX"], [])
    watched, polled = providers.idle_folders_within_limit("mail.example.org", 8, folders)
    assert (watched, polled) == (folders, [])
