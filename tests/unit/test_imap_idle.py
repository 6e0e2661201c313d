"""The IDLE reader (syncd/imap/idle_stream.py) against a scripted server on loopback, plain
and over TLS: responses that arrive in pieces (a line cut in two TCP segments or TLS records,
a literal cut in its middle), several at once, untagged responses before the "+", a server
that ends IDLE by itself, a server that hangs up mid-line, and ReplyGuard's limits during IDLE.

imapclient's own idle_check() fails on the first of these with "unterminated line"
(imapclient issue 519) and cannot read literals at all.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from syncd.imap.client import LITERAL_LIMIT, ReplyGuard
from syncd.imap.idle_stream import IdleStream
from syncd.service.idle import changed_folder, is_change

PAUSE = 0.05  # between the pieces of a response: long enough to be separate reads

Step = bytes | float | None  # bytes: send; float: sleep; None: hang up


class ScriptedServer:
    """Greets, accepts LOGIN, answers IDLE with ``script`` (the tag is put in for "{tag}"),
    then answers DONE with "<tag> OK"; records every line the client sent."""

    def __init__(self, script: list[Step], tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.lines: list[bytes] = []
        self.after_done = b""  # sent between DONE and the tagged reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.errors: list[BaseException] = []

    def _serve(self) -> None:
        raw, _ = self.listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
        try:
            self._session(sock)
        except OSError:
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _session(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        sock.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n")
        while True:
            line = reader.readline()
            if not line:
                return
            self.lines.append(line)
            tag, _, command = line.rstrip(b"\r\n").partition(b" ")
            verb = command.split(b" ", 1)[0].upper()
            if verb == b"CAPABILITY":
                sock.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
            elif verb == b"IDLE":
                for step in self.script:
                    if step is None:
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    if isinstance(step, float):
                        time.sleep(step)
                    else:
                        sock.sendall(step.replace(b"{tag}", tag))
                if any(b"{tag} OK" in s for s in self.script if isinstance(s, bytes)):
                    continue  # the server ended IDLE itself: no DONE expected
                done = reader.readline()
                self.lines.append(done)
                if done.strip().upper() == b"DONE":
                    sock.sendall(self.after_done + tag + b" OK IDLE terminated\r\n")
            elif verb == b"LOGOUT":
                sock.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                return
            else:
                sock.sendall(tag + b" OK done\r\n")


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for a self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


@pytest.fixture(params=["plain", "tls"])
def connect(request: pytest.FixtureRequest, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
            ) -> Iterator:
    made: list[tuple[ScriptedServer, IMAPClient]] = []

    def make(script: list[Step]) -> tuple[ScriptedServer, IMAPClient]:
        tls = request.param == "tls"
        server = ScriptedServer(script, tls_pair[0] if tls else None)
        server.thread.start()
        client = IMAPClient("127.0.0.1", port=server.port, ssl=tls,
                            ssl_context=tls_pair[1] if tls else None, timeout=3)
        ReplyGuard.install(client)
        client.login("user", "password")
        made.append((server, client))
        return server, client

    yield make
    for server, client in made:
        with contextlib.suppress(Exception):
            client.shutdown()
        server.listener.close()
        server.thread.join(3)
        assert not server.errors, server.errors


def test_a_line_cut_in_two_pieces_is_read_whole(connect) -> None:
    _server, client = connect([b"+ idling\r\n", PAUSE, b"* 3 EX", PAUSE, b"ISTS\r\n"])
    stream = IdleStream(client)
    assert stream.start() == []
    got: list = []
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        got = stream.check(1.0)
    assert got == [(3, b"EXISTS")]
    assert is_change(got[0])
    assert stream.done() == []
    assert stream.ended is not None and stream.ended[0] == "OK"
    # The connection is in step afterwards.
    assert client.noop()[0].startswith(b"done")


def test_every_response_that_has_begun_comes_back_whole(connect) -> None:
    _server, client = connect([b"+ idling\r\n", PAUSE,
                               b"* 1 EXPUNGE\r\n* OK Still here\r\n* 2 EX", PAUSE,
                               b"ISTS\r\n* 2 FETCH (FLAGS (\\Se", PAUSE, b"en))\r\n"])
    stream = IdleStream(client)
    stream.start()
    got: list = []
    deadline = time.monotonic() + 3
    while len(got) < 4 and time.monotonic() < deadline:
        got += stream.check(1.0)
    assert got == [(1, b"EXPUNGE"), (b"OK", b"Still here"), (2, b"EXISTS"),
                   (2, b"FETCH", (b"FLAGS", (b"\\Seen",)))]
    assert [is_change(r) for r in got] == [True, False, True, True]
    stream.done()


def test_a_literal_cut_in_its_middle(connect) -> None:
    """NOTIFY's STATUS with the folder name as a literal, cut inside the literal."""
    _server, client = connect([b"+ idling\r\n", PAUSE, b"* STATUS {7}\r\nLis", PAUSE,
                               b"ts/a (MESSAGES 2 UIDNEXT 9)\r\n"])
    stream = IdleStream(client)
    stream.start()
    got: list = []
    deadline = time.monotonic() + 3
    while not got and time.monotonic() < deadline:
        got = stream.check(1.0)
    assert len(got) == 1 and is_change(got[0])
    assert changed_folder(got[0]) == "Lists/a"
    stream.done()


def test_untagged_responses_before_the_continuation(connect) -> None:
    _server, client = connect([b"* 4 EXISTS\r\n", PAUSE, b"+ idling\r\n"])
    stream = IdleStream(client)
    assert stream.start() == [(4, b"EXISTS")]
    assert stream.check(0.1) == []
    assert stream.done() == []


def test_responses_that_come_with_the_reply_to_done(connect) -> None:
    server, client = connect([b"+ idling\r\n"])
    server.after_done = b"* 8 EXISTS\r\n"
    stream = IdleStream(client)
    stream.start()
    assert stream.check(0.1) == []
    assert stream.done() == [(8, b"EXISTS")]


def test_the_server_ends_idle_by_itself(connect) -> None:
    server, client = connect([b"+ idling\r\n", PAUSE, b"* 5 EXISTS\r\n{tag} OK IDLE done\r\n"])
    stream = IdleStream(client)
    stream.start()
    got: list = []
    deadline = time.monotonic() + 3
    while stream.ended is None and time.monotonic() < deadline:
        got += stream.check(1.0)
    assert got == [(5, b"EXISTS")]
    assert stream.ended is not None and stream.ended[0] == "OK"
    assert stream.check(0.1) == []
    assert stream.done() == []  # no DONE sent: IDLE is over already
    assert not any(line.strip().upper() == b"DONE" for line in server.lines)
    assert client.noop()[0].startswith(b"done")


def test_a_refused_idle_is_an_error(connect) -> None:
    _server, client = connect([b"{tag} NO [LIMIT] not now\r\n"])
    with pytest.raises(IMAPClientError, match="not now"):
        IdleStream(client).start()


def test_silence_returns_nothing_after_the_timeout(connect) -> None:
    _server, client = connect([b"+ idling\r\n"])
    stream = IdleStream(client)
    stream.start()
    started = time.monotonic()
    assert stream.check(0.3) == []
    assert 0.25 <= time.monotonic() - started < 1.5
    stream.done()


def test_a_hang_up_in_the_middle_of_a_line_is_an_error(connect) -> None:
    _server, client = connect([b"+ idling\r\n", PAUSE, b"* 3 EX", PAUSE, None])
    stream = IdleStream(client)
    stream.start()
    with pytest.raises((imaplib.IMAP4.abort, ConnectionError, OSError)):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            stream.check(1.0)


def test_a_hang_up_while_idle_is_an_error(connect) -> None:
    _server, client = connect([b"+ idling\r\n", PAUSE, None])
    stream = IdleStream(client)
    stream.start()
    with pytest.raises((imaplib.IMAP4.abort, ConnectionError, OSError)):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            stream.check(1.0)


def test_a_half_line_that_never_ends_times_out(connect) -> None:
    """A response that stops in its middle is a dead connection after the read timeout
    (3 s here), never a half line taken for a whole one."""
    _server, client = connect([b"+ idling\r\n", PAUSE, b"* 3 EX", 10.0])
    stream = IdleStream(client)
    stream.start()
    started = time.monotonic()
    with pytest.raises((TimeoutError, OSError, imaplib.IMAP4.abort)):
        while time.monotonic() - started < 8:
            stream.check(1.0)
    assert time.monotonic() - started < 6


def test_reply_guard_limits_hold_during_idle(connect) -> None:
    big = LITERAL_LIMIT + 1
    _server, client = connect([b"+ idling\r\n", PAUSE,
                               f"* STATUS {{{big}}}\r\n".encode(), PAUSE, b"x" * 100])
    stream = IdleStream(client)
    stream.start()
    with pytest.raises(imaplib.IMAP4.abort, match="literal"):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            stream.check(1.0)


def test_the_first_byte_already_buffered_is_seen(connect) -> None:
    """The "+" and an event in one segment: imaplib's reader holds the event in its buffer
    after reading the "+"; polling the socket alone would wait for the next packet."""
    _server, client = connect([b"+ idling\r\n* 7 EXISTS\r\n"])
    stream = IdleStream(client)
    stream.start()
    started = time.monotonic()
    assert stream.check(2.0) == [(7, b"EXISTS")]
    assert time.monotonic() - started < 1.0
    stream.done()


def test_a_stream_of_keepalives_returns_to_the_caller(connect) -> None:
    """A server that sends status lines without a pause: check() still returns in about its
    timeout (the watcher's stop flag is looked at between calls)."""
    _server, client = connect([b"+ idling\r\n", b"* OK Still here\r\n" * 20000, 2.0])
    stream = IdleStream(client)
    stream.start()
    started = time.monotonic()
    got = stream.check(0.2)
    assert got and all(not is_change(r) for r in got)
    assert time.monotonic() - started < 1.5


def test_a_wake_descriptor_ends_a_long_wait_at_once(connect) -> None:
    # Issue 21: an idle watcher waits for the server without waking every second; its
    # stop() wakes it through a socket pair instead.
    _server, client = connect([b"+ idling\r\n"])
    stream = IdleStream(client)
    stream.start()
    woken, waker = socket.socketpair()
    try:
        threading.Timer(0.2, waker.send, (b"w",)).start()
        started = time.monotonic()
        assert stream.check(30.0, wake=woken.fileno()) == []
        assert time.monotonic() - started < 2.0
        stream.done()
    finally:
        woken.close()
        waker.close()


def _voluntary_switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_watcher_sleeps_until_the_server_speaks_or_it_is_stopped(connect) -> None:
    """Issue 21: 20 accounts' watchers woke 1,200 times a minute to look at their stop flag.
    Now a silent IDLE costs no wake-up, and stop() still ends the thread at once."""
    from types import SimpleNamespace

    from syncd.imap.client import ImapSession
    from syncd.service.idle import IdleWatcher

    _server, client = connect([b"+ idling\r\n"])
    account = SimpleNamespace(name="acct", host="127.0.0.1", idle=("INBOX",))
    session = ImapSession.__new__(ImapSession)
    session.client = client
    session.has = lambda capability: False  # type: ignore[method-assign]
    session.close = lambda: None  # type: ignore[method-assign]
    changes: list[tuple[str, str | None]] = []
    watcher = IdleWatcher(account, "INBOX", connect=lambda: session,  # type: ignore[arg-type]
                          on_change=lambda a, f: changes.append((a, f)))
    client.select_folder = lambda *a, **k: {}  # the scripted server has no folders
    watcher.start()
    deadline = time.monotonic() + 5
    while not changes and time.monotonic() < deadline:  # IDLE is up: the "start" notice
        time.sleep(0.02)
    assert changes == [("acct", "INBOX")]
    time.sleep(0.2)
    before = _voluntary_switches(watcher.native_id)
    time.sleep(2.5)
    assert _voluntary_switches(watcher.native_id) - before <= 1
    started = time.monotonic()
    watcher.stop()
    watcher.join(3)
    assert not watcher.is_alive()
    assert time.monotonic() - started < 2.5  # woken, not left to a timeout
