"""POP3 adapter: the multi-line scanner (dot-stuffing, chunk boundaries), the pipeline
(windows with PIPELINING, one command at a time without), listing, errors; and the sync's
content-hash fallback for servers without (unique) UIDLs, which Dovecot cannot show.

The server here is a scripted fake on loopback: it speaks just enough POP3, records what it
received and how many commands arrived before it answered (which is how pipelining is seen
from the server side).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config.load import AccountSettings, Settings, parse_config
from syncd.errors import AccountError
from syncd.pop3.client import (
    _BOL,
    Pop3ConnectionLost,
    Pop3ProtocolError,
    Pop3Session,
    _scan,
)
from syncd.pop3.fetch import _Counter, _crlf_to_lf, sync_pop3_account

# ---------------------------------------------------------------------------------------------
# the scanner


def stuff(body: bytes) -> bytes:
    """What a server sends for a message body (CRLF lines): dot-stuffed, terminated."""
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    out = [b"." + line if line.startswith(b".") else line for line in lines[:-1]]
    return b"".join(line + b"\r\n" for line in out) + b".\r\n"


def unstuff_chunked(wire: bytes, sizes: list[int]) -> tuple[bytes, int]:
    """Run the scanner over ``wire`` cut into chunks of the given sizes (cycled), the way
    ``Pop3Session._body`` does: returns (data, bytes consumed up to the terminator)."""
    state, pos, out = _BOL, 0, []
    k = 0
    while True:
        size = sizes[k % len(sizes)]
        k += 1
        chunk = wire[pos:pos + size]
        assert chunk, "ran off the end without a terminator"
        data, state, used, done = _scan(chunk, state)
        out.append(data)
        pos += used
        if done:
            return b"".join(out), pos


_LINE = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n"))
_DOTTY = st.sampled_from([b".", b"..", b".x", b"", b". ", b"...\t", b"x.", b".\r"])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(_LINE, _DOTTY.map(lambda d: d.replace(b"\r", b""))),
                      max_size=20),
       sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=5),
       trailer=st.binary(max_size=10))
def test_scanner_undoes_dot_stuffing_across_any_chunking(lines: list[bytes], sizes: list[int],
                                                         trailer: bytes) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(body)
    data, used = unstuff_chunked(wire + trailer, sizes)
    assert data == body
    assert used == len(wire)  # the bytes after the terminator belong to the next reply


def test_scanner_edge_cases() -> None:
    assert unstuff_chunked(b".\r\n", [1]) == (b"", 3)
    assert unstuff_chunked(b"..\r\n.\r\n", [1]) == (b".\r\n", 7)
    # A lone "." followed by CR and not LF was stuffing: the CR is data.
    assert unstuff_chunked(b".\rx\r\n.\r\n", [2]) == (b"\rx\r\n", 8)
    # Some servers end lines with bare LF.
    assert unstuff_chunked(b"a\n..b\n.\n+OK", [3]) == (b"a\n.b\n", 8)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=60).map(lambda b: b.replace(b"a", b"\r").replace(b"b", b"\n")),
       cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_crlf_to_lf_is_exact_across_chunks(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    counter = _Counter()
    assert b"".join(_crlf_to_lf(chunks, counter)) == data.replace(b"\r\n", b"\n")
    assert counter.server_bytes == len(data)


# ---------------------------------------------------------------------------------------------
# a scripted POP3 server


@dataclass
class FakeMailbox:
    """The maildrop shared by all connections: (uidl, message with CRLF) pairs. DELE takes
    effect at QUIT only, as RFC 1939 says."""

    messages: list[tuple[str, bytes]]
    uidl: bool = True
    password: str = "secret"
    capa: list[str] = field(default_factory=lambda: ["USER", "UIDL", "PIPELINING", "TOP"])
    drop_after: int | None = None  # close the connection after this many RETR body bytes
    refuse_retr: set[int] = field(default_factory=set)  # msgnums whose RETR gets -ERR
    commands: list[str] = field(default_factory=list)
    max_batch: int = 0  # most command lines seen at once before replying
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakePop3Server:
    def __init__(self, mailbox: FakeMailbox) -> None:
        self.mailbox = mailbox
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop accepting. shutdown() first: a thread blocked in accept() is not woken by
        close() alone, and could later accept on a reused descriptor (another test's
        listener) and serve that test from this mailbox."""
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        box = self.mailbox
        with conn:
            conn.sendall(b"+OK fake POP3 ready\r\n")
            buf = b""
            user = None
            authed = False
            deleted: set[int] = set()
            with box.lock:
                snapshot = list(box.messages)
            while True:
                while b"\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                *lines, buf = buf.split(b"\r\n")
                box.max_batch = max(box.max_batch, len(lines))
                for raw in lines:
                    line = raw.decode()
                    verb, _, arg = line.partition(" ")
                    verb = verb.upper()
                    box.commands.append(verb if verb in ("PASS", "AUTH") else line)
                    if verb == "CAPA":
                        conn.sendall(b"+OK\r\n" + b"".join(c.encode() + b"\r\n"
                                                           for c in box.capa) + b".\r\n")
                    elif verb == "USER":
                        user = arg
                        conn.sendall(b"+OK\r\n")
                    elif verb == "PASS":
                        authed = user is not None and arg == box.password
                        conn.sendall(b"+OK logged in\r\n" if authed
                                     else b"-ERR [AUTH] Authentication failed.\r\n")
                    elif verb == "AUTH":
                        mech, _, token = arg.partition(" ")
                        _authz, _u, secret = base64.b64decode(token).split(b"\0")
                        authed = mech == "PLAIN" and secret.decode() == box.password
                        conn.sendall(b"+OK logged in\r\n" if authed
                                     else b"-ERR [AUTH] Authentication failed.\r\n")
                    elif not authed and verb != "QUIT":
                        conn.sendall(b"-ERR not logged in\r\n")
                    elif verb == "STAT":
                        live = [m for i, m in enumerate(snapshot, 1) if i not in deleted]
                        conn.sendall(f"+OK {len(live)} {sum(len(m) for _u, m in live)}\r\n"
                                     .encode())
                    elif verb == "UIDL" and box.uidl:
                        body = "".join(f"{i} {u}\r\n" for i, (u, _m) in enumerate(snapshot, 1)
                                       if i not in deleted)
                        conn.sendall(b"+OK\r\n" + body.encode() + b".\r\n")
                    elif verb == "LIST":
                        body = "".join(f"{i} {len(m)}\r\n" for i, (_u, m) in
                                       enumerate(snapshot, 1) if i not in deleted)
                        conn.sendall(b"+OK\r\n" + body.encode() + b".\r\n")
                    elif verb == "RETR":
                        n = int(arg)
                        if n in box.refuse_retr or not 1 <= n <= len(snapshot) or n in deleted:
                            conn.sendall(b"-ERR no such message\r\n")
                            continue
                        wire = b"+OK\r\n" + stuff(snapshot[n - 1][1])
                        if box.drop_after is not None:
                            conn.sendall(wire[:box.drop_after])
                            return
                        conn.sendall(wire)
                    elif verb == "DELE":
                        deleted.add(int(arg))
                        conn.sendall(b"+OK deleted\r\n")
                    elif verb == "QUIT":
                        with box.lock:
                            gone = {id(snapshot[i - 1]) for i in deleted}
                            box.messages = [m for m in box.messages if id(m) not in gone]
                        conn.sendall(b"+OK bye\r\n")
                        return
                    else:
                        conn.sendall(b"-ERR unknown command\r\n")


@pytest.fixture
def fake() -> Iterator[tuple[FakeMailbox, FakePop3Server]]:
    box = FakeMailbox(messages=[])
    server = FakePop3Server(box)
    try:
        yield box, server
    finally:
        server.close()


def make_settings(tmp_path: Path, port: int, **extra: object) -> Settings:
    lines = [f"    {k}: {v}" for k, v in extra.items()]
    text = "\n".join([
        "general:",
        f"  maildir_root: {tmp_path}/Mail",
        f"  state_dir: {tmp_path}/state",
        "accounts:",
        "  fake:",
        "    protocol: pop3",
        "    host: 127.0.0.1",
        f"    port: {port}",
        "    tls: none",
        "    allow_insecure: true",
        "    username: me",
        "    password_command: printf secret",
        "    timeout: 10",
        *lines,
    ])
    return parse_config(text + "\n")


def account_of(settings_: Settings) -> AccountSettings:
    return settings_.accounts["fake"]


def msg(i: int, extra: bytes = b"") -> bytes:
    return (f"From: a@example.test\r\nSubject: message {i}\r\nMessage-ID: <{i}@x>\r\n\r\n"
            f"body {i}\r\n.leading dot\r\n".encode() + extra)


def local_files(tmp_path: Path) -> list[bytes]:
    new = tmp_path / "Mail" / "fake" / "INBOX" / "new"
    return sorted(p.read_bytes() for p in new.iterdir()) if new.is_dir() else []


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------------------------------------
# the session


def test_listing_and_pipelined_retrieval(fake, tmp_path: Path) -> None:
    box, server = fake
    box.messages = [(f"u{i}", msg(i)) for i in range(1, 201)]
    session = Pop3Session.connect(account_of(make_settings(tmp_path, server.port)),
                                  lambda: "secret")
    try:
        assert session.pipelining
        listed = session.listing()
        assert [(m.number, m.uidl) for m in listed] == [(i, f"u{i}") for i in range(1, 201)]
        assert listed[0].size == len(msg(1))
        pipe = session.pipeline(window=32)
        for m in listed:
            pipe.submit(f"RETR {m.number}", multiline=True, tag=m.number)
        got = {}
        while pipe:
            reply = pipe.next_reply()
            assert reply.ok and reply.body is not None
            got[reply.tag] = b"".join(reply.body)
        assert got == {i: msg(i) for i in range(1, 201)}
        session.quit()
    finally:
        session.close()
    assert box.max_batch > 1  # commands really were in flight together
    assert box.max_batch <= 32


def test_without_pipelining_one_command_at_a_time(fake, tmp_path: Path) -> None:
    box, server = fake
    box.capa = ["USER", "UIDL"]
    box.messages = [(f"u{i}", msg(i)) for i in range(1, 51)]
    session = Pop3Session.connect(account_of(make_settings(tmp_path, server.port)),
                                  lambda: "secret")
    try:
        assert not session.pipelining
        pipe = session.pipeline(window=64)
        for i in range(1, 51):
            pipe.submit(f"RETR {i}", multiline=True, tag=i)
        # Bodies left unread are drained by the pipeline itself.
        replies = pipe.drain()
        assert [r.tag for r in replies] == list(range(1, 51))
        session.quit()
    finally:
        session.close()
    assert box.max_batch == 1


def test_unread_body_is_drained_before_the_next_reply(fake, tmp_path: Path) -> None:
    box, server = fake
    box.messages = [("a", msg(1, b"x" * 100_000 + b"\r\n")), ("b", msg(2))]
    session = Pop3Session.connect(account_of(make_settings(tmp_path, server.port)),
                                  lambda: "secret")
    try:
        pipe = session.pipeline()
        pipe.submit("RETR 1", multiline=True, tag=1)
        pipe.submit("RETR 2", multiline=True, tag=2)
        first = pipe.next_reply()
        assert first.body is not None
        next(first.body)  # read a little, then abandon it
        second = pipe.next_reply()
        sink = bytearray()
        assert second.write_to(sink.extend) == len(msg(2)) and sink == msg(2)
    finally:
        session.close()


def test_server_without_uidl(fake, tmp_path: Path) -> None:
    box, server = fake
    box.uidl = False
    box.capa = ["USER"]
    box.messages = [("", msg(1)), ("", msg(2))]
    session = Pop3Session.connect(account_of(make_settings(tmp_path, server.port)),
                                  lambda: "secret")
    try:
        assert not session.has_uidl()
        assert [(m.number, m.uidl) for m in session.listing()] == [(1, None), (2, None)]
    finally:
        session.close()


def test_auth_plain_when_offered_and_user_pass_otherwise(fake, tmp_path: Path) -> None:
    box, server = fake
    account = account_of(make_settings(tmp_path, server.port))
    box.capa = ["USER", "SASL PLAIN LOGIN", "UIDL"]
    Pop3Session.connect(account, lambda: "secret").close()
    assert "AUTH" in box.commands and "PASS" not in box.commands
    box.commands.clear()
    box.capa = ["USER", "UIDL"]
    Pop3Session.connect(account, lambda: "secret").close()
    assert "PASS" in box.commands and "AUTH" not in box.commands


def test_wrong_password_names_the_account(fake, tmp_path: Path) -> None:
    box, server = fake
    box.password = "other"
    with pytest.raises(AccountError) as info:
        Pop3Session.connect(account_of(make_settings(tmp_path, server.port)), lambda: "secret")
    assert info.value.cause == "auth"
    assert str(info.value).startswith("fake: login as 'me' on 127.0.0.1 failed")
    assert "secret" not in str(info.value)


def test_starttls_required_but_not_offered(fake, tmp_path: Path) -> None:
    _box, server = fake
    account = account_of(make_settings(tmp_path, server.port))._replace(tls="starttls")
    with pytest.raises(AccountError) as info:
        Pop3Session.connect(account, lambda: "secret")
    assert info.value.cause == "tls"
    assert "refusing to continue in plaintext" in str(info.value)


def test_connection_lost_mid_body(fake, tmp_path: Path) -> None:
    box, server = fake
    box.messages = [("a", msg(1, b"y" * 50_000 + b"\r\n"))]
    box.drop_after = 20_000
    session = Pop3Session.connect(account_of(make_settings(tmp_path, server.port)),
                                  lambda: "secret")
    try:
        pipe = session.pipeline()
        pipe.submit("RETR 1", multiline=True, tag=1)
        reply = pipe.next_reply()
        assert reply.body is not None
        with pytest.raises(Pop3ConnectionLost) as info:
            b"".join(reply.body)
        assert "closed the connection in the middle of RETR 1" in str(info.value)
        assert str(info.value).startswith("fake: ")
    finally:
        session.close()


def test_garbage_reply_is_a_protocol_error(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"+OK hi\r\n")
            f = conn.makefile("rb")
            f.readline()  # CAPA
            conn.sendall(b"-ERR no CAPA\r\n")
            f.readline()  # USER
            conn.sendall(b"+OK\r\n")
            f.readline()  # PASS
            conn.sendall(b"+OK\r\n")
            f.readline()  # CAPA
            conn.sendall(b"-ERR\r\n")
            f.readline()  # UIDL
            conn.sendall(b"* what is this\r\n")
            time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    session = Pop3Session.connect(account_of(make_settings(tmp_path, port)), lambda: "x")
    try:
        with pytest.raises(Pop3ProtocolError) as info:
            session.listing()
        assert "unexpected reply to UIDL" in str(info.value)
    finally:
        session.close()
        listener.close()


# ---------------------------------------------------------------------------------------------
# the sync against servers Dovecot cannot imitate


def test_no_uidl_falls_back_to_content_hash(fake, tmp_path: Path) -> None:
    box, server = fake
    box.uidl = False
    box.capa = ["USER", "PIPELINING"]
    box.messages = [("", msg(i)) for i in range(1, 21)]
    settings_ = make_settings(tmp_path, server.port, leave_on_server="true")
    first = sync_pop3_account(settings_, account_of(settings_))
    assert first.ok, first.summary()
    assert first.folders[0].downloaded == 20
    # Every poll has to download them again to recognise them; nothing is delivered twice.
    second = sync_pop3_account(settings_, account_of(settings_))
    assert second.ok and second.folders[0].downloaded == 0
    assert local_files(tmp_path) == sorted(lf(m) for _u, m in box.messages)
    assert len(box.messages) == 20


def test_duplicate_uidls_fall_back_to_content_hash(fake, tmp_path: Path) -> None:
    box, server = fake
    # u1 is unique at first and recorded as such; later a second message shows up with the
    # same UIDL: the copy we have must be recognised by content, the new one delivered.
    box.messages = [("u1", msg(1)), ("u2", msg(2))]
    settings_ = make_settings(tmp_path, server.port, leave_on_server="true")
    assert sync_pop3_account(settings_, account_of(settings_)).folders[0].downloaded == 2
    box.messages = [("u1", msg(1)), ("u2", msg(2)), ("u1", msg(3)), ("u1", msg(4))]
    result = sync_pop3_account(settings_, account_of(settings_))
    assert result.ok, result.summary()
    assert result.folders[0].downloaded == 2
    assert local_files(tmp_path) == sorted(lf(msg(i)) for i in range(1, 5))
    again = sync_pop3_account(settings_, account_of(settings_))
    assert again.folders[0].downloaded == 0


def test_no_uidl_download_and_delete(fake, tmp_path: Path) -> None:
    box, server = fake
    box.uidl = False
    box.capa = ["USER"]
    box.messages = [("", msg(i)) for i in range(1, 6)] + [("", msg(1))]  # msg 1 twice
    settings_ = make_settings(tmp_path, server.port)
    result = sync_pop3_account(settings_, account_of(settings_))
    assert result.ok, result.summary()
    # Byte-identical messages are one message for a server without UIDL (documented).
    assert Counter(local_files(tmp_path)) == Counter(lf(msg(i)) for i in range(1, 6))
    assert box.messages == []


def test_refused_retr_is_reported_and_retried(fake, tmp_path: Path) -> None:
    box, server = fake
    box.messages = [(f"u{i}", msg(i)) for i in range(1, 6)]
    box.refuse_retr = {3}
    settings_ = make_settings(tmp_path, server.port)
    result = sync_pop3_account(settings_, account_of(settings_))
    assert not result.ok
    assert "could not be retrieved" in (result.folders[0].error or "")
    assert [u for u, _m in box.messages] == ["u3"]
    box.refuse_retr = set()
    result = sync_pop3_account(settings_, account_of(settings_))
    assert result.ok and box.messages == []
    assert local_files(tmp_path) == sorted(lf(msg(i)) for i in range(1, 6))


def test_dropped_connection_then_rerun(fake, tmp_path: Path) -> None:
    box, server = fake
    big = [(f"u{i}", msg(i, b"z" * 5000 + b"\r\n")) for i in range(1, 11)]
    box.messages = list(big)
    box.drop_after = 3000
    settings_ = make_settings(tmp_path, server.port)
    result = sync_pop3_account(settings_, account_of(settings_))
    assert result.error is not None and "closed the connection" in result.error
    assert len(box.messages) == 10
    box.drop_after = None
    result = sync_pop3_account(settings_, account_of(settings_))
    assert result.ok, result.summary()
    assert local_files(tmp_path) == sorted(lf(m) for _u, m in big)
