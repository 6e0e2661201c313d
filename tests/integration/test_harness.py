"""Tests of the Dovecot test harness itself (tests/support/dovecot.py)."""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.dovecot import (
    PLAIN_IMAP_CAPABILITY,
    Dovecot,
    HarnessError,
    User,
    imap_utf7_decode,
    imap_utf7_encode,
    make_message,
)

# ------------------------------------------------------------------ pure helpers


def test_make_message_is_deterministic_crlf_and_unique() -> None:
    a = make_message(7)
    assert a == make_message(7)
    assert a != make_message(8)
    assert make_message(7, folder="Sent") != a
    assert b"\n" not in a.replace(b"\r\n", b"")
    assert a.endswith(b"\r\n")
    ids = {make_message(i, folder=f)[: a.index(b"MIME")] for i in range(50) for f in ("A", "B")}
    assert len(ids) == 100
    assert b"Message-ID: <x@y>\r\n" in make_message(1, message_id="<x@y>")


@pytest.mark.parametrize("size", [500, 501, 502, 579, 580, 581, 582, 4096, 100_001])
def test_make_message_pads_to_exact_size(size: int) -> None:
    msg = make_message(3, size=size)
    assert len(msg) == size
    assert b"\n" not in msg.replace(b"\r\n", b"")
    assert max(len(line) for line in msg.split(b"\r\n")) <= 80


def test_make_message_non_ascii() -> None:
    msg = make_message(1, folder="Entwürfe", subject="Grüße", body="Tschüß\nbis bald")
    head, _, body = msg.partition(b"\r\n\r\n")
    assert head.isascii()
    assert b"=?utf-8?" in head
    assert body == "Tschüß\r\nbis bald\r\n".encode()


@pytest.mark.parametrize(
    ("name", "encoded"),
    [("INBOX", "INBOX"), ("Entwürfe", "Entw&APw-rfe"), ("A&B", "A&-B"), ("日本語", "&ZeVnLIqe-")],
)
def test_modified_utf7(name: str, encoded: str) -> None:
    assert imap_utf7_encode(name) == encoded
    assert imap_utf7_decode(encoded) == name


# ------------------------------------------------------------------ TLS and logins


def test_imaps_login_trusts_generated_ca_only(dovecot: Dovecot, user: User) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    conn = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=ctx, timeout=10)
    try:
        assert conn.login(user.name, user.password)[0] == "OK"
        cert = conn.sock.getpeercert()
        assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
        assert ("DNS", "127.0.0.1") in cert["subjectAltName"]
        assert ((("commonName", "127.0.0.1"),)) in cert["subject"]
    finally:
        conn.logout()

    mark = dovecot.log_mark()
    other = ssl.create_default_context(cafile=str(dovecot.other_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=other, timeout=10)
    # and the system store alone does not trust our CA either
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            dovecot.host, dovecot.imaps_port, ssl_context=ssl.create_default_context(), timeout=10
        )
    time.sleep(0.2)
    assert f"user=<{user.name}>" not in dovecot.log_text(mark)


def test_hostname_localhost_also_verifies(dovecot: Dovecot, user: User) -> None:
    conn = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=dovecot.ssl_context())
    try:
        assert conn.login(user.name, user.password)[0] == "OK"
    finally:
        conn.logout()


def test_starttls_on_imap_port(dovecot: Dovecot, user: User) -> None:
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        assert "STARTTLS" in conn.capabilities
        assert conn.starttls(ssl_context=dovecot.ssl_context())[0] == "OK"
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.login(user.name, user.password)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
    finally:
        conn.logout()


def test_starttls_with_unknown_ca_fails(dovecot: Dovecot) -> None:
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.starttls(ssl_context=dovecot.ssl_context(dovecot.other_ca_file))
    finally:
        with contextlib.suppress(OSError):  # the failed handshake closed the socket already
            conn.shutdown()


def test_pop3s_and_stls_login(dovecot: Dovecot, user: User) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    p = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=dovecot.ssl_context(), timeout=10)
    try:
        p.user(user.name)
        p.pass_(user.password)
        assert p.stat()[0] == 3
    finally:
        p.quit()
    p = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        assert "STLS" in p.capa()
        p.stls(context=dovecot.ssl_context())
        p.user(user.name)
        p.pass_(user.password)
        assert len(p.uidl()[1]) == 3
    finally:
        p.quit()
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(
            dovecot.host,
            dovecot.pop3s_port,
            context=dovecot.ssl_context(dovecot.other_ca_file),
            timeout=10,
        )


def test_wrong_password_is_refused_and_logged(dovecot: Dovecot, user: User) -> None:
    mark = dovecot.log_mark()
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(user.name, "wrong")
    finally:
        conn.shutdown()
    dovecot.wait_for_log(rf"user=<{user.name}>", since=mark)


def test_add_user_is_usable_at_once(dovecot: Dovecot) -> None:
    for _ in range(3):
        u = dovecot.add_user()
        with dovecot.imap(u) as m:
            assert m.select("INBOX")[0] == "OK"
    named = dovecot.add_user("alice.smith@example.test", password="pa ss")
    assert dovecot.folders(named) == ["INBOX"]
    assert dovecot.user("alice.smith@example.test") == named
    with pytest.raises(HarnessError):
        dovecot.add_user("alice.smith@example.test")


def test_set_password(dovecot: Dovecot) -> None:
    u = dovecot.add_user()
    new = dovecot.set_password(u, "changed")
    time.sleep(1.1)  # Dovecot re-reads a known passwd-file at most once a second
    with dovecot.imap(new) as m:
        assert m.noop()[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error):
        dovecot.imap(u).__enter__()


# ------------------------------------------------------------------ seeding and reading


def test_seed_100_messages_round_trip(dovecot: Dovecot, user: User) -> None:
    when = datetime(2023, 5, 17, 12, 30, tzinfo=UTC).timestamp()
    letters = ["", "S", "SF", "RS", "D", "PS", "T", "FRS"]
    msgs = [make_message(i, size=300 + 37 * i) for i in range(100)]
    uids = dovecot.seed(
        user, "INBOX", [(m, letters[i % len(letters)], when + i) for i, m in enumerate(msgs)]
    )
    assert uids == list(range(1, 101))
    assert dovecot.count(user, "INBOX") == 100
    assert dovecot.status(user, "INBOX")["MESSAGES"] == 100
    with dovecot.pop3(user) as p:
        assert p.stat() == (100, sum(len(m) for m in msgs))

    server = dovecot.messages(user, "INBOX")
    assert list(server) == uids
    for i, uid in enumerate(uids):
        sm = server[uid]
        assert sm.body == msgs[i]  # CRLF on the wire ...
        assert sm.size == len(msgs[i])
        assert sm.message_id == _header(msgs[i], "Message-ID")
        expected = {
            {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered"}.get(c)
            or {"S": "\\Seen", "T": "\\Deleted"}[c]
            for c in letters[i % len(letters)]
        }
        assert sm.flags == expected
        assert sm.internaldate is not None
        assert sm.internaldate.timestamp() == when + i

    files = sorted((user.maildir / "cur").iterdir())
    assert len(files) == 100
    for f in files:
        data = f.read_bytes()
        assert b"\r" not in data  # ... LF on disk
        lines = data.count(b"\n")
        assert f",S={len(data)},W={len(data) + lines}:2," in f.name
        assert f.stat().st_uid == dovecot.mail_uid
    # reading with BODY.PEEK did not set \Seen
    assert dovecot.messages(user, "INBOX", bodies=False)[1].flags == frozenset()
    assert dovecot.flags(user, "INBOX")[1] == frozenset()


def test_seed_folders_nested_and_non_ascii(dovecot: Dovecot, user: User) -> None:
    for folder in ("Lists/python", "Entwürfe", "Archive/2023/Q1"):
        uids = dovecot.seed(user, folder, [make_message(i, folder=folder) for i in range(4)])
        assert uids == [1, 2, 3, 4]
        assert [m.body for m in dovecot.messages(user, folder).values()] == [
            make_message(i, folder=folder) for i in range(4)
        ]
    assert dovecot.folders(user) == ["Archive/2023/Q1", "Entwürfe", "INBOX", "Lists/python"]
    # without mailbox_list_index, LIST "" "*" omits the non-existent parents (Lists, Archive)
    assert set(dovecot.folders(user)) <= set(dovecot.folders(user, selectable_only=False))
    assert (user.maildir / ".Lists.python" / "maildirfolder").exists()
    assert (user.maildir / ".Entw&APw-rfe" / "cur").is_dir()
    # a second seed appends after the existing UIDs
    assert dovecot.seed(user, "Entwürfe", [make_message(9, folder="Entwürfe")]) == [5]
    with pytest.raises(ValueError):
        dovecot.seed(user, "a.b", [make_message(1)])


def test_append_and_flag_helpers(dovecot: Dovecot, user: User) -> None:
    dovecot.create_folder(user, "Sent")
    dovecot.create_folder(user, "Grüße/Ältere")
    assert "Grüße/Ältere" in dovecot.folders(user)
    when = datetime(2022, 2, 3, 4, 5, 6, tzinfo=UTC)
    uid = dovecot.append(user, "Sent", make_message(1), flags=["\\Seen"], date=when)
    uid2 = dovecot.append(user, "Sent", make_message(2), flags="\\Flagged")
    assert (uid, uid2) == (1, 2)
    assert dovecot.append(user, "Grüße/Ältere", make_message(3)) == 1
    msgs = dovecot.messages(user, "Sent")
    assert msgs[1].flags == {"\\Seen"} and msgs[1].internaldate == when
    assert msgs[2].flags == {"\\Flagged"}

    dovecot.add_flags(user, "Sent", [1, 2], ["\\Answered", "$Forwarded"])
    dovecot.remove_flags(user, "Sent", 1, "\\Seen")
    dovecot.set_flags(user, "Sent", 2, ["\\Draft"])
    assert dovecot.flags(user, "Sent") == {
        1: {"\\Answered", "$Forwarded"},
        2: {"\\Draft"},
    }
    dovecot.add_flags(user, "Sent", 2, "\\Deleted")
    dovecot.append(user, "Sent", make_message(3))
    dovecot.expunge(user, "Sent", [1])
    assert dovecot.uids(user, "Sent") == [2, 3]  # other \Deleted messages are kept
    dovecot.rename_folder(user, "Sent", "Sent Items")
    dovecot.delete_folder(user, "Grüße/Ältere")
    assert dovecot.folders(user) == ["INBOX", "Sent Items"]  # Grüße was only implied


def test_deliver_lands_in_new(dovecot: Dovecot, user: User) -> None:
    dovecot.seed(user, "INBOX", [make_message(1)])
    path = dovecot.deliver(user, "INBOX", make_message(2))
    assert path.parent.name == "new" and ":2," not in path.name
    assert dovecot.count(user, "INBOX") == 2
    assert dovecot.messages(user, "INBOX")[2].body == make_message(2)


def test_set_uidvalidity(dovecot: Dovecot, user: User) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    before = dovecot.uidvalidity(user, "INBOX")
    dovecot.set_uidvalidity(user, "INBOX", before + 1000)
    assert dovecot.uidvalidity(user, "INBOX") == before + 1000
    assert dovecot.count(user, "INBOX") == 3


def test_kick_disconnects_sessions(dovecot: Dovecot, user: User) -> None:
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    conn.login(user.name, user.password)
    conn.select("INBOX")
    dovecot.kick(user)
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        for _ in range(50):
            conn.noop()
            time.sleep(0.05)
    conn.shutdown()


def test_doveadm_errors_are_raised(dovecot: Dovecot, user: User) -> None:
    with pytest.raises(HarnessError, match="doveadm"):
        dovecot.set_uidvalidity(user, "No such folder", 5)
    assert "u" in dovecot.doveadm("user", user.name)


def test_log_shows_logins(dovecot: Dovecot, user: User) -> None:
    mark = dovecot.log_mark()
    with dovecot.imap(user) as m:
        m.noop()
    dovecot.wait_for_log(rf"Login: user=<{user.name}>", since=mark)
    assert f"Login: user=<{user.name}>" not in dovecot.log_text(0)[:mark]


# ------------------------------------------------------------------ configuration variants


def _post_login_capabilities(dc: Dovecot, user: User) -> set[str]:
    with dc.imap(user) as m:
        typ, data = m.capability()
        assert typ == "OK"
        return set(data[-1].decode().upper().split())


def test_default_capabilities_are_complete(dovecot: Dovecot, user: User) -> None:
    caps = _post_login_capabilities(dovecot, user)
    assert {"CONDSTORE", "QRESYNC", "ENABLE", "IDLE", "UIDPLUS", "MOVE"} <= caps
    assert "NOTIFY" not in caps  # mailbox_list_index is off unless asked for


def test_hidden_capabilities_are_hidden(dovecot_plain_imap: Dovecot) -> None:
    dc = dovecot_plain_imap
    u = dc.add_user()
    hidden = {"CONDSTORE", "QRESYNC", "ENABLE", "NOTIFY"}
    conn = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    try:
        pre_login = {c.upper() for c in conn.capabilities}
        assert not hidden & pre_login
        conn.login(u.name, u.password)
        _, data = conn.capability()
        post_login = set(data[-1].decode().upper().split())
    finally:
        conn.logout()
    assert not hidden & post_login
    assert {"IDLE", "UIDPLUS", "MOVE", "LITERAL+"} <= post_login
    assert post_login == set(PLAIN_IMAP_CAPABILITY.upper().split())
    # the helpers still work against it
    dc.seed(u, "INBOX", [make_message(i) for i in range(3)])
    dc.add_flags(u, "INBOX", 2, "\\Deleted")
    dc.expunge(u, "INBOX", [1])
    assert dc.uids(u, "INBOX") == [2, 3]


def test_mailbox_list_index_offers_notify(dovecot_factory) -> None:
    dc = dovecot_factory(mailbox_list_index=True)
    assert "NOTIFY" in _post_login_capabilities(dc, dc.add_user())


# ------------------------------------------------------------------ lifecycle


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_restart_keeps_data_and_ports(dovecot_factory) -> None:
    dc = dovecot_factory()
    u = dc.add_user()
    dc.seed(u, "INBOX", [make_message(i) for i in range(5)])
    dc.seed(u, "Lists/python", [make_message(i, folder="Lists/python") for i in range(2)])
    before = (dc.messages(u, "INBOX"), dc.uidvalidity(u, "INBOX"), dc.folders(u))
    ports = (dc.imap_port, dc.imaps_port, dc.pop3_port, dc.pop3s_port)
    old_master = dc.master_pid

    conn = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    conn.login(u.name, u.password)
    conn.select("INBOX")
    dc.restart()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        conn.noop()  # the old session did not survive the restart
    conn.shutdown()

    assert dc.master_pid != old_master
    assert (dc.imap_port, dc.imaps_port, dc.pop3_port, dc.pop3s_port) == ports
    assert (dc.messages(u, "INBOX"), dc.uidvalidity(u, "INBOX"), dc.folders(u)) == before
    u2 = dc.add_user()
    with dc.pop3(u2) as p:
        assert p.stat()[0] == 0
    imaplib.IMAP4_SSL(dc.host, dc.imaps_port, ssl_context=dc.ssl_context()).logout()

    with dc.down():  # an outage: nothing listens, then the same server is back
        assert not dc.running
        assert not any(_port_open(p) for p in ports)
    assert dc.running and _port_open(dc.imaps_port)
    assert dc.count(u, "INBOX") == 5


def test_stop_leaves_no_processes(dovecot_factory) -> None:
    dc = dovecot_factory()
    u = dc.add_user()
    dc.seed(u, "INBOX", [make_message(1)])
    # live client sessions: their imap/pop3 processes could outlive the master
    imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=10)
    imap.login(u.name, u.password)
    imap.select("INBOX")
    imaps = imaplib.IMAP4_SSL(dc.host, dc.imaps_port, ssl_context=dc.ssl_context(), timeout=10)
    imaps.login(u.name, u.password)
    pop = poplib.POP3(dc.host, dc.pop3_port, timeout=10)
    pop.user(u.name)
    pop.pass_(u.password)
    half_open = socket.create_connection((dc.host, dc.imap_port))  # stuck in imap-login

    pids = dc.pids()
    assert dc.master_pid in pids and len(pids) >= 6
    titles = {_cmdline(pid) for pid in pids}
    assert any("/imap" in t for t in titles) and any("/pop3" in t for t in titles)

    dc.stop()
    assert not dc.running
    assert dc.pids() == []
    assert [pid for pid in pids if _running(pid)] == []
    assert not any(dc.instance_name in _cmdline(pid) for pid in _all_pids())
    for port in (dc.imap_port, dc.imaps_port, dc.pop3_port, dc.pop3s_port):
        assert not _port_open(port)
    for c in (imap, imaps):
        c.shutdown()
    pop.close()
    half_open.close()
    dc.stop()  # a second stop is harmless


_OWNER = """
import sys, imaplib
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.support.dovecot import Dovecot
dc = Dovecot(Path(sys.argv[1])).start()
u = dc.add_user()
c = imaplib.IMAP4(dc.host, dc.imap_port)
c.login(u.name, u.password)
c.select("INBOX")
print(dc.instance_name, dc.imap_port, flush=True)
sys.stdin.read()
"""


def test_instance_dies_with_its_owner(dovecot_workroot) -> None:
    """If the process that started Dovecot is SIGKILLed (no stop(), no atexit), the
    watchdog stops the instance, including sessions that outlive the master."""
    repo = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(dovecot_workroot / "owned"), str(repo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        instance, port = owner.stdout.readline().split()
        marker = f"dovecot-{instance}/"
        assert any(_cmdline(pid).startswith(marker + "imap") for pid in _all_pids())
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [pid for pid in _all_pids() if _cmdline(pid).startswith(marker) and _running(pid)]
        if not left and not _port_open(int(port)):
            break
        time.sleep(0.1)
    assert left == []
    assert not _port_open(int(port))


def test_context_manager_and_missing_parent_permissions(dovecot_workroot) -> None:
    locked = dovecot_workroot / "locked"
    locked.mkdir(mode=0o700)
    os.chmod(locked, 0o700)
    with pytest.raises(HarnessError, match="traversable"):
        Dovecot(locked / "dc").start()
    with Dovecot(dovecot_workroot / "ctx") as dc:
        u = dc.add_user()
        assert dc.folders(u) == ["INBOX"]
        pids = dc.pids()
    assert [pid for pid in pids if _running(pid)] == []


def _header(msg: bytes, name: str) -> str:
    for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        key, _, value = line.decode().partition(":")
        if key.lower() == name.lower():
            return value.strip()
    raise KeyError(name)


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
