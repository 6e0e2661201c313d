"""syncd/imap/wire.py against the installed imapclient and imaplib: one test per function, so
that a release which renames or changes one of their internals fails here, by name, and not
somewhere in the sync suite. A scripted server on a socket pair answers the commands."""

from __future__ import annotations

import contextlib
import datetime as dt
import imaplib
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from syncd.imap import wire
from tests.support import oldest

REPO = Path(__file__).resolve().parents[2]

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE LIST-STATUS] scripted\r\n"
# Verb -> what the server sends before "<tag> OK done" ({tag} is the command's tag).
REPLIES: dict[bytes, bytes] = {
    b"CAPABILITY": b"* CAPABILITY IMAP4rev1 IDLE NAMESPACE LIST-STATUS\r\n",
    b"NOOP": b"* 3 EXISTS\r\n* 1 RECENT\r\n",
    b"LIST": b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
             b'* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7)\r\n',
    b"UID": b"* 1 FETCH (UID 10 FLAGS (\\Seen))\r\n* 2 FETCH (UID 11 FLAGS ())\r\n",
    b"FETCH": b"* 1 FETCH (UID 10 BODY[] {5}\r\nhello)\r\n",
}
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")


class Server:
    """Answers each command line from REPLIES, then "<tag> OK done"; records the lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lines: list[bytes] = []
        self.literals: list[bytes] = []  # of commands with one (APPEND)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        reader = self.sock.makefile("rb")
        with contextlib.suppress(OSError):
            self.sock.sendall(GREETING)
            while line := reader.readline():
                self.lines.append(line)
                tag, _, command = line.rstrip(b"\r\n").partition(b" ")
                literal = _LITERAL.search(line)
                if literal:
                    if not literal.group(2):  # synchronising: wait for our go-ahead
                        self.sock.sendall(b"+ go ahead\r\n")
                    self.literals.append(reader.read(int(literal.group(1))))
                    if reader.readline() != b"\r\n":
                        self.sock.sendall(tag + b" BAD the literal was not followed by CRLF\r\n")
                        continue
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"LOGOUT":
                    self.sock.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                    return
                self.sock.sendall(REPLIES.get(verb, b"") + tag + b" OK done\r\n")

    def verbs(self) -> list[bytes]:
        return [line.split(b" ")[1].strip().upper() for line in self.lines]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Server]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    server = Server(theirs)
    yield ours, server
    ours.close()
    theirs.close()


@pytest.fixture
def imap(pair: tuple[socket.socket, Server]) -> imaplib.IMAP4:
    return wire.IMAP4OnSocket("localhost", 143, pair[0])


@pytest.fixture
def client(pair: tuple[socket.socket, Server]) -> IMAPClient:
    return wire.client_on_socket()("localhost", port=143, ssl=False, sock=pair[0], timeout=5)


# --- imapclient's module set-up -------------------------------------------------------------
def test_spare_version_lookup() -> None:
    """imapclient imports with the stand-in, reports its real version, and (4.x) without
    importlib.metadata."""
    code = ("import sys; from syncd.imap import wire; wire.spare_version_lookup(); "
            "import imapclient; print(imapclient.__version__, "
            "'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    from importlib.metadata import version

    assert out[0] == version("imapclient")
    if int(out[0].split(".")[0]) >= 4:
        assert out[1] == "False"


# --- a connection opened ahead --------------------------------------------------------------
def test_imap4_on_socket(imap: imaplib.IMAP4, pair: tuple[socket.socket, Server]) -> None:
    """The greeting is read from the given socket, its capabilities taken without asking."""
    assert "LIST-STATUS" in imap.capabilities
    assert imap.state == "NONAUTH"
    imap.noop()
    assert pair[1].verbs() == [b"NOOP"]  # no CAPABILITY


def test_imap4_on_socket_traces_redacted(pair: tuple[socket.socket, Server],
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=wire.TRACE.name):
        imap = wire.IMAP4OnSocket("localhost", 143, pair[0])
        imap._mesg("> b'1 LOGIN user secret'")
    assert "scripted" in caplog.text  # the greeting
    assert "secret" not in caplog.text and "LOGIN **REDACTED**" in caplog.text


def test_client_on_socket(client: IMAPClient) -> None:
    assert b"IDLE" in client.capabilities()
    client.noop()


# --- imapclient's private parts -------------------------------------------------------------
def test_imaplib_of(client: IMAPClient) -> None:
    assert isinstance(wire.imaplib_of(client), imaplib.IMAP4)


def test_forget_capabilities(client: IMAPClient, pair: tuple[socket.socket, Server]) -> None:
    client.login("u", "p")
    client.capabilities()
    client.capabilities()  # cached
    assert pair[1].verbs().count(b"CAPABILITY") == 1
    wire.forget_capabilities(client)
    assert b"NAMESPACE" in client.capabilities()
    assert pair[1].verbs().count(b"CAPABILITY") == 2


def test_parse_folder_list(client: IMAPClient) -> None:
    raw = [b'(\\HasNoChildren) "/" INBOX', b'(\\Noselect) "/" "A b"']
    assert wire.parse_folder_list(client, raw) == [
        ((b"\\HasNoChildren",), b"/", "INBOX"), ((b"\\Noselect",), b"/", "A b")]


def test_folder_argument(client: IMAPClient) -> None:
    assert wire.folder_argument(client, "Entwürfe") == b'"Entw&APw-rfe"'


def test_parse_select(client: IMAPClient) -> None:
    # As imaplib files a SELECT's responses: response codes under their own names too.
    untagged = {"EXISTS": [b"3"], "UIDVALIDITY": [b"7"], "UIDNEXT": [b"4"],
                "HIGHESTMODSEQ": [b"9"], "OK": [b"[PERMANENTFLAGS (\\Seen \\*)] ok"],
                "FLAGS": [b"(\\Seen \\Deleted)"]}
    parsed = wire.parse_select(client, untagged)
    assert parsed[b"EXISTS"] == 3 and parsed[b"UIDVALIDITY"] == 7
    assert parsed[b"UIDNEXT"] == 4 and parsed[b"HIGHESTMODSEQ"] == 9
    assert parsed[b"PERMANENTFLAGS"] == (b"\\Seen", b"\\*")


def test_uid_fetch(client: IMAPClient, pair: tuple[socket.socket, Server]) -> None:
    client.login("u", "p")
    wire.set_selected(wire.imaplib_of(client), True)
    data = wire.uid_fetch(client, "1:*", "(UID FLAGS)")
    assert data == [b"1 (UID 10 FLAGS (\\Seen))", b"2 (UID 11 FLAGS ())"]
    assert pair[1].lines[-1].endswith(b"UID FETCH 1:* (UID FLAGS)\r\n")


def test_append_arguments(client: IMAPClient) -> None:
    when = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    folder, flags, date = wire.append_arguments(client, "INBOX", [b"\\Seen"], when)
    assert folder in (b"INBOX", b'"INBOX"') and flags == "(\\Seen)"
    assert date == '"02-Jan-2020 03:04:05 +0000"'
    assert wire.append_arguments(client, "A", [], None)[1:] == ("()", None)


@pytest.mark.parametrize("nonsync", [True, False])
def test_append_streamed(imap: imaplib.IMAP4, pair: tuple[socket.socket, Server],
                         nonsync: bool) -> None:
    imap.login("u", "p")
    message = [b"Subject: x\r\n", b"\r\n", b"body\r\n"]
    typ, _data = wire.append_streamed(imap, ("INBOX", "(\\Seen)", None), 20, iter(message),
                                      nonsync=nonsync)
    assert typ == "OK"
    server = pair[1]
    assert server.literals == [b"".join(message)]
    assert server.lines[-1].endswith(b" APPEND INBOX (\\Seen) {20%s}\r\n"
                                     % (b"+" if nonsync else b""))
    assert imap.noop()[0] == "OK"  # still in step


def test_append_streamed_short(imap: imaplib.IMAP4) -> None:
    """A stream shorter than announced drops the connection (the server waits for more)."""
    imap.login("u", "p")
    with pytest.raises(imap.abort, match="changed while it was sent"):
        wire.append_streamed(imap, ("INBOX", None, None), 20, iter([b"short"]), nonsync=True)


def test_parenthesised() -> None:
    assert wire.parenthesised(["flags", "uid"]) == "(FLAGS UID)"


def test_parse_response() -> None:
    assert wire.parse_response([b"INBOX (MESSAGES 3 UIDNEXT 4)"]) == (
        b"INBOX", (b"MESSAGES", 3, b"UIDNEXT", 4))


def test_parse_fetch(client: IMAPClient) -> None:
    parsed = wire.parse_fetch(client, [b"1 (UID 10 FLAGS (\\Seen))"])
    assert parsed[10][b"FLAGS"] == (b"\\Seen",)


# --- imaplib: more than one command at a time -----------------------------------------------
def test_trace_and_set_trace(imap: imaplib.IMAP4, caplog: pytest.LogCaptureFixture) -> None:
    wire.set_trace(imap, False)
    assert imap.debug == 0
    with caplog.at_level(logging.DEBUG, logger=wire.TRACE.name):
        wire.trace(imap, "> quiet")
        wire.set_trace(imap, True)
        assert imap.debug >= wire.TRACE_LEVEL
        wire.trace(imap, "> loud")
    assert "loud" in caplog.text and "quiet" not in caplog.text


def test_write_command_and_tagged_reply(imap: imaplib.IMAP4,
                                        pair: tuple[socket.socket, Server]) -> None:
    first = wire.write_command(imap, b"NOOP")
    second = wire.write_command(imap, b"CHECK")
    assert wire.tagged_reply(imap, second)[0] == "OK"  # the first's reply is filed meanwhile
    assert wire.tagged_reply(imap, first)[0] == "OK"
    assert pair[1].verbs() == [b"NOOP", b"CHECK"]


def test_check_bye(imap: imaplib.IMAP4) -> None:
    wire.check_bye(imap)
    wire.swap_untagged(imap, {"BYE": [b"going away"]})  # as imaplib files one
    with pytest.raises(imap.abort, match="going away"):
        wire.check_bye(imap)


def test_start_command_and_forget_tag(imap: imaplib.IMAP4) -> None:
    tag = wire.start_command(imap, "NOOP")
    assert tag in imap.tagged_commands
    wire.forget_tag(imap, tag)
    assert tag not in imap.tagged_commands


def test_simple_command_and_untagged(imap: imaplib.IMAP4) -> None:
    imap.login("u", "p")
    typ, _ = wire.simple_command(imap, "LIST", '""', '"*"', "RETURN (STATUS (MESSAGES))")
    assert typ == "OK"
    assert wire.untagged(imap, "LIST") == [b'(\\HasNoChildren) "/" INBOX']
    assert wire.untagged(imap, "STATUS") == [b"INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 7)"]
    assert wire.untagged(imap, "STATUS") == [None]  # popped


def test_take_kept_and_swap_untagged(imap: imaplib.IMAP4) -> None:
    imap.noop()
    assert wire.kept_untagged(imap, "RECENT") == [b"1"]
    assert wire.take_untagged(imap, "RECENT") == [b"1"]
    assert wire.take_untagged(imap, "RECENT") is None
    old = wire.swap_untagged(imap, {"BYE": [b"x"]})
    assert old["EXISTS"] == [b"3"]
    assert wire.swap_untagged(imap) == {"BYE": [b"x"]}
    assert wire.kept_untagged(imap, "EXISTS") is None


def test_tag_count(imap: imaplib.IMAP4) -> None:
    before = wire.tag_count(imap)
    imap.noop()
    assert wire.tag_count(imap) == before + 1


def test_state_of_and_set_selected(imap: imaplib.IMAP4) -> None:
    assert wire.state_of(imap) == "NONAUTH"
    imap.login("u", "p")
    wire.set_selected(imap, True)
    assert wire.state_of(imap) == "SELECTED" and not imap.is_readonly
    imap.expunge()  # allowed in SELECTED only
    wire.set_selected(imap, False)
    assert wire.state_of(imap) == "AUTH"


def test_reader(imap: imaplib.IMAP4) -> None:
    wire.write_command(imap, b"NOOP")
    assert wire.reader(imap).peek(1)[:1] == b"*"  # the reply has begun arriving


def test_hook_io(imap: imaplib.IMAP4) -> None:
    seen: list[str] = []
    own: list[wire.ImapIO] = []

    def read(size: int) -> bytes:
        seen.append("read")
        return own[0].read(size)

    def readline() -> bytes:
        seen.append("readline")
        return own[0].readline()

    def send(data: bytes) -> None:
        seen.append("send")
        own[0].send(data)

    def append_untagged(typ: str, dat: object) -> None:
        seen.append(f"untagged {typ}")
        own[0].append_untagged(typ, dat)

    own.append(wire.hook_io(imap, wire.ImapIO(read, readline, send, append_untagged)))
    imap.noop()
    assert seen[0] == "send" and "readline" in seen and "untagged EXISTS" in seen
    assert wire.kept_untagged(imap, "EXISTS") == [b"3"]


def test_hook_io_literal_object(imap: imaplib.IMAP4) -> None:
    """imaplib files whatever the read hook returns for a literal in place of its bytes: a big
    body is handed on as the file it was written to (ReplyGuard.spooling)."""
    own: list[wire.ImapIO] = []
    spooled = object()

    def read(size: int) -> object:
        own[0].read(size)
        return spooled

    own.append(wire.hook_io(imap, wire.ImapIO(read, lambda: own[0].readline(),  # type: ignore[arg-type]
                                              lambda data: own[0].send(data),
                                              lambda typ, dat: own[0].append_untagged(typ, dat))))
    imap.login("u", "p")
    wire.set_selected(imap, True)
    typ, _ = wire.simple_command(imap, "FETCH", "1", "(BODY[])")
    assert typ == "OK"
    assert wire.untagged(imap, "FETCH") == [(b"1 (UID 10 BODY[] {5}", spooled), b")"]


# --- the declared lower bound ---------------------------------------------------------------
@pytest.mark.parametrize("version", oldest.releases("imapclient"))
def test_wire_with_oldest_imapclient(version: str) -> None:
    """Every test above, against the oldest imapclient pyproject.toml allows (installed beside
    the venv by tests/support/oldest.py)."""
    path = oldest.ensure("imapclient", version)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), str(REPO)]),
               SYNCD_WIRE_IMAPCLIENT=version)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__, "-k", "not oldest_imapclient"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_imapclient_under_test() -> None:
    """In the run above, the release asked for is the one imported, not the venv's."""
    wanted = os.environ.get("SYNCD_WIRE_IMAPCLIENT")
    if wanted is None:
        pytest.skip("only in the run against an older imapclient")
    import imapclient

    assert imapclient.__version__ == wanted


def test_send_uid_fetch_and_uid_fetch_reply(client: IMAPClient,
                                            pair: tuple[socket.socket, Server]) -> None:
    client.login("u", "p")
    wire.set_selected(wire.imaplib_of(client), True)
    first = wire.send_uid_fetch(client, "1:2", "(UID FLAGS)")
    second = wire.send_uid_fetch(client, "3:4", "(UID FLAGS)")  # before the first's reply
    assert wire.uid_fetch_reply(client, first) == [b"1 (UID 10 FLAGS (\\Seen))",
                                                    b"2 (UID 11 FLAGS ())"]
    assert len(wire.uid_fetch_reply(client, second)) == 2
    assert [line.split(b" ", 1)[1] for line in pair[1].lines[-2:]] == [
        b"UID FETCH 1:2 (UID FLAGS)\r\n", b"UID FETCH 3:4 (UID FLAGS)\r\n"]
