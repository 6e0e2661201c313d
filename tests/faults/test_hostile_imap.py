"""Hostile IMAP servers (a scripted server on loopback, over verified TLS): folder names that
try to leave the maildir, literals that announce gigabytes, malformed FETCH responses, garbage
and over-long lines, unsolicited responses, a server that never answers.

Whatever the server does, syncd must: report an error naming the account (and the folder where
there is one), never crash with an internal error, write nothing outside the maildir and its
state directory (the whole test directory tree is compared before and after), keep its memory
bounded (peak RSS of the real process, its VmHWM), upload and delete nothing on the server it
was not asked to, and (the daemon) keep running and keep serving its other accounts.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.faultlib import (
    SECRETS,
    count_files,
    fault,
    in_sync,
    lf,
    make_account,
    rss_kib,
    run_syncd,
    secret_user,
    tree,
)
from tests.faults.hostile import Conn, ImapServer, Msg
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, local_files, run_cli

# Peak RSS a `syncd sync` may reach against a hostile server. An honest sync of a few small
# messages peaks around 50 MB (the interpreter, imapclient, pydantic, sqlite); what matters is
# that no hostile announcement or stream makes it grow with what the server claims or sends.
RSS_LIMIT_KIB = 120 * 1024
GIGABYTES = 5_000_000_000


def dummy_user(tmp_path: Path) -> User:
    return User(name="victim", password=SECRETS.new(), home=tmp_path / "nohome",
                maildir=tmp_path / "nohome")


@pytest.fixture
def imap_server(dovecot: Dovecot) -> Iterator[Callable[..., ImapServer]]:
    made: list[ImapServer] = []

    def make(folders: dict[str, list[Msg]] | None = None, **kwargs: object) -> ImapServer:
        server = ImapServer(dovecot.cert_file, dovecot.key_file, folders, **kwargs)  # type: ignore[arg-type]
        made.append(server.__enter__())
        return server

    yield make
    for server in made:
        server.__exit__(None, None, None)
        assert not server.errors, server.errors


def account_for(tmp_path: Path, dovecot: Dovecot, server: ImapServer, *,
                timeout: str = "2s", extra: str = "", layout: str = "verbatim") -> Account:
    return make_account(tmp_path, dovecot, dummy_user(tmp_path), port=server.port,
                        timeout=timeout, extra=extra, layout=layout, name="victim")


def msgs(folder: str, n: int, start: int = 1) -> list[Msg]:
    return [Msg(uid, make_message(uid, folder=folder)) for uid in range(start, start + n)]


def outside_tree(tmp_path: Path, account: Account) -> dict[str, tuple[int, int]]:
    """Everything under the test's directory except the maildir and the state directory."""
    return tree(tmp_path, skip=[account.maildir.parent, account.state_dir])


def all_local_bodies(root: Path) -> Counter[bytes]:
    bodies: Counter[bytes] = Counter()
    for dirpath, _dirs, files in os.walk(root):
        if Path(dirpath).name in ("cur", "new"):
            bodies.update((Path(dirpath) / f).read_bytes() for f in files)
    return bodies


def assert_reported(rc: int, out: str, err: str, *words: str) -> str:
    """Exit 1, no internal error or traceback, and a message naming the account and
    whatever else is given (the folder, the cause)."""
    text = out + err
    assert rc == 1, f"exit {rc}: {text}"
    assert "internal error" not in text and "Traceback" not in text, text
    line = next((ln for ln in text.splitlines() if ln.startswith("victim")), "")
    assert line, f"no line names the account: {text}"
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in: {text}"
    return text


# --------------------------------------------------------------------------------------------
# folder names


ESCAPES = [
    "..", ".", "../x", "../../escape", "a/../../b", "/{outside}/abs", "//double",
    "nul\0byte", "esc\x1b[31mred", "tab\there", "new\nline", "del\x7f", "c1\x9bcsi",
    "INBOX/cur", "INBOX/tmp", "INBOX/new", "%", "%25", "p/%", "p/", "x%2Fy", "x/y",
    "caf\u00e9", "cafe\u0301", ".hidden", "...", "Inbox", "a" * 300,
]


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_folder_names_never_escape_the_maildir(tmp_path: Path, dovecot: Dovecot,
                                               imap_server: Callable[..., ImapServer],
                                               layout: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    names = [n.replace("{outside}", str(outside).lstrip("/")) for n in ESCAPES]
    folders = {"INBOX": msgs("INBOX", 2)}
    for i, name in enumerate(names):
        folders[name] = [Msg(1, make_message(1000 + i, folder=name,
                                             subject=f"hostile folder {i}"))]
    server = imap_server(folders)
    account = account_for(tmp_path, dovecot, server, layout=layout)
    before = outside_tree(tmp_path, account)
    fault("hostile folder names", len(names))

    rc, out, err = run_cli("--config", str(account.config), "sync")
    text = out + err
    assert "internal error" not in text and "Traceback" not in text, text
    # A name the filesystem cannot hold (300 bytes) and the case-insensitive INBOX twin may
    # fail, each with an error naming it; everything else syncs.
    assert rc in (0, 1), text
    assert outside_tree(tmp_path, account) == before, "syncd wrote outside the maildir"
    assert list(outside.iterdir()) == []
    root = account.maildir.resolve()
    for path in account.maildir.rglob("*"):
        assert root in path.resolve().parents or path.resolve() == root, path
        assert not path.is_symlink(), path
    # Every message downloaded at most once, and nothing uploaded or changed on the server.
    bodies = all_local_bodies(account.maildir)
    assert all(n == 1 for n in bodies.values()), "a message was stored twice"
    want = Counter(lf(m.body) for ms in folders.values() for m in ms)
    assert set(bodies) <= set(want)
    assert server.changes == [], server.changes
    missing = len(want) - len(bodies)
    for line in text.splitlines():
        print(line)
    assert missing <= 2, f"{missing} hostile folders not synced: {text}"

    # Again: idempotent, still nothing uploaded (a local folder mapped back to a different
    # name would be created and filled on the server).
    rc2, out2, err2 = run_cli("--config", str(account.config), "sync")
    assert rc2 == rc, out2 + err2
    assert "+0 down +0 up -0" in out2, out2
    assert server.changes == [], server.changes
    assert all_local_bodies(account.maildir) == bodies
    assert outside_tree(tmp_path, account) == before


# --------------------------------------------------------------------------------------------
# literals, lines and responses that try to exhaust memory


def _huge_body_literal(size_claim: int) -> Callable[[Conn, str, str], bool]:
    def handler(conn: Conn, tag: str, args: str) -> bool:
        conn.send(f'* 1 FETCH (UID 1 INTERNALDATE "01-Jan-2024 08:00:00 +0000" BODY[] '
                  f"{{{size_claim}}}\r\n")
        conn.stream(300 * 1024 * 1024)  # then as much as the client takes, up to 300 MB
        conn.close()
        return True
    return handler


def _huge_meta(size: int) -> Callable[[Conn, str, str], bool]:
    def handler(conn: Conn, tag: str, args: str) -> bool:
        header = b"Message-ID: <1@x>\r\n\r\n"
        conn.send(f"* 1 FETCH (UID 1 RFC822.SIZE {size} BODY[HEADER.FIELDS (MESSAGE-ID)] "
                  f"{{{len(header)}}}\r\n".encode() + header + b")\r\n")
        conn.line(f"{tag} OK done")
        return True
    return handler


def _literal_in_list(conn: Conn, tag: str, args: str) -> bool:
    conn.send(f'* LIST () "/" {{{GIGABYTES}}}\r\n')
    conn.stream(300 * 1024 * 1024)
    conn.close()
    return True


def _long_line(conn: Conn, tag: str, args: str) -> bool:
    conn.send("* 1 FETCH (UID 1 FLAGS (")
    conn.stream(300 * 1024 * 1024, byte=b"\\")  # a line that never ends
    conn.close()
    return True


def _endless_untagged(conn: Conn, tag: str, args: str) -> bool:
    # Short, valid, unsolicited lines, as fast as the client reads them, never a tagged reply.
    line = b"* OK [ALERT] " + b"n" * 65000 + b"\r\n"
    block = line * 16
    sent = 0
    try:
        while sent < 300 * 1024 * 1024:
            conn.sock.sendall(block)
            sent += len(block)
    except OSError:
        pass
    conn.close()
    return True


MEMORY_CASES = {
    # a 5 GB literal where a 1 kB message was announced
    "body literal far above RFC822.SIZE": ("FETCH-BODY", _huge_body_literal(GIGABYTES), None),
    # RFC822.SIZE itself says 5 GB, and so does the literal
    "RFC822.SIZE and literal of gigabytes": ("FETCH-BODY", _huge_body_literal(GIGABYTES),
                                             ("FETCH-META", _huge_meta(GIGABYTES))),
    "literal of gigabytes in a LIST response": ("LIST", _literal_in_list, None),
    "a line that never ends": ("FETCH-FLAGS", _long_line, None),
    "endless unsolicited responses": ("FETCH-FLAGS", _endless_untagged, None),
}


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_memory_stays_bounded(case: str, tmp_path: Path, dovecot: Dovecot,
                              imap_server: Callable[..., ImapServer]) -> None:
    key, handler, extra = MEMORY_CASES[case]
    server = imap_server({"INBOX": msgs("INBOX", 1)})
    server.overrides[key] = handler
    if extra is not None:
        server.overrides[extra[0]] = extra[1]
    account = account_for(tmp_path, dovecot, server)
    before = outside_tree(tmp_path, account)
    fault("hostile: memory")
    started = time.monotonic()
    rc, out, err, peak = run_syncd(account.config, "sync", timeout=90)
    seconds = time.monotonic() - started
    print(f"{case}: exit {rc} after {seconds:.1f} s, peak RSS {peak // 1024} MB: "
          f"{(out + err).strip()}")
    assert_reported(rc, out, err)
    assert peak < RSS_LIMIT_KIB, f"{case}: peak RSS {peak // 1024} MB"
    assert outside_tree(tmp_path, account) == before
    assert not list((account.maildir / "INBOX" / "tmp").glob("*")) \
        if (account.maildir / "INBOX" / "tmp").exists() else True
    assert server.changes == []


# --------------------------------------------------------------------------------------------
# malformed and unexpected responses


def _reply(lines: list[str], tagged: str | None = "OK done") -> Callable[[Conn, str, str], bool]:
    def handler(conn: Conn, tag: str, args: str) -> bool:
        for line in lines:
            conn.send(line.encode("latin-1") + b"\r\n")
        if tagged is not None:
            conn.line(f"{tag} {tagged}")
        return True
    return handler


def _garbage_date(conn: Conn, tag: str, args: str) -> bool:
    for seq, msg in conn.server.messages_for(conn, args.split(" ", 1)[0]):
        conn.send(ImapServer.fetch_response(seq, msg, "FETCH-BODY").replace(
            b'"01-Jan-2024 08:00:00 +0000"', b'"yesterday, or so"'))
    conn.line(f"{tag} OK done")
    return True


MALFORMED = {
    "FETCH with a non-numeric UID": ("FETCH-FLAGS", _reply(["* 1 FETCH (UID abc FLAGS ())"])),
    "FETCH with unbalanced parentheses": ("FETCH-FLAGS",
                                          _reply(["* 1 FETCH (UID 1 FLAGS (\\Seen)"])),
    "FETCH without a list": ("FETCH-FLAGS", _reply(["* 1 FETCH UID 1 FLAGS"])),
    "FETCH with a negative size": ("FETCH-META", _reply(
        ["* 1 FETCH (UID 1 RFC822.SIZE -5 BODY[HEADER.FIELDS (MESSAGE-ID)] NIL)"])),
    "FETCH of a body that is NIL": ("FETCH-BODY", _reply(
        ["* 1 FETCH (UID 1 INTERNALDATE \"01-Jan-2024 08:00:00 +0000\" BODY[] NIL)"])),
    "FETCH with a garbage date": ("FETCH-BODY", _garbage_date),
    "SELECT without UIDVALIDITY": ("SELECT", _reply(["* 1 EXISTS"], "OK [READ-WRITE] ok")),
    "SELECT with a garbage UIDVALIDITY": ("SELECT", _reply(
        ["* 1 EXISTS", "* OK [UIDVALIDITY zz] x", "* OK [UIDNEXT -1] x"], "OK ok")),
    "STATUS garbage": ("STATUS", _reply(["* STATUS INBOX (MESSAGES x UIDNEXT"])),
    "STATUS with garbage numbers": ("STATUS", _reply(
        ["* STATUS INBOX (MESSAGES x UIDNEXT -3 UIDVALIDITY 99999999999999999999999)"])),
    "LIST garbage": ("LIST", _reply(["* LIST garbage", "* LIST (\\Noselect \"/\""])),
    "binary garbage line": ("FETCH-FLAGS", _reply(["\x00\xff\xfe garbage \x1b[2J"])),
    "untagged garbage": ("FETCH-META", _reply(["* \x01\x02 FETCH ((("])),
    "a tagged reply with an unknown tag": ("FETCH-FLAGS", _reply(["Z999 OK what"])),
    "SEARCH garbage": ("UID SEARCH", _reply(["* SEARCH 1 two 3"])),
    "NO to every FETCH": ("FETCH-FLAGS", _reply([], "NO [SERVERBUG] nope")),
    "BAD to SELECT": ("SELECT", _reply([], "BAD what")),
    "BYE in the middle of a FETCH": ("FETCH-BODY", _reply(["* BYE going away"], None)),
    "BYE at the greeting": ("greeting", _reply(["* BYE not today"], None)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_responses(case: str, tmp_path: Path, dovecot: Dovecot,
                             imap_server: Callable[..., ImapServer]) -> None:
    key, handler = MALFORMED[case]
    server = imap_server({"INBOX": msgs("INBOX", 1)})
    server.overrides[key] = handler
    if key == "greeting" or "BYE" in case:
        # the server hangs up after that
        original = handler

        def handler_then_close(conn: Conn, tag: str, args: str) -> bool:
            original(conn, tag, args)
            conn.close()
            return True
        server.overrides[key] = handler_then_close
    account = account_for(tmp_path, dovecot, server)
    before = outside_tree(tmp_path, account)
    fault("hostile: malformed response")
    rc, out, err = run_cli("--config", str(account.config), "sync")
    print(f"{case}: {(out + err).strip()}")
    if rc != 0:
        assert_reported(rc, out, err)
    assert outside_tree(tmp_path, account) == before
    assert server.changes == []
    # Whatever was tolerated or refused, nothing is lost or doubled once the server heals.
    server.overrides.clear()
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    assert all_local_bodies(account.maildir) == Counter(
        lf(m.body) for m in server.folders["INBOX"])
    assert server.changes == []


def test_unsolicited_responses_are_harmless(tmp_path: Path, dovecot: Dovecot,
                                            imap_server: Callable[..., ImapServer]) -> None:
    """EXISTS, EXPUNGE, FETCH FLAGS of other messages, ALERTs, CAPABILITY and RECENT arrive
    before every tagged reply: the sync still stores exactly the server's messages, once."""
    server = imap_server({"INBOX": msgs("INBOX", 30), "Other": msgs("Other", 5)})
    server.before_tagged = [b"* 99 EXISTS", b"* 3 EXPUNGE", b"* 2 FETCH (FLAGS (\\Deleted))",
                            b"* 7 FETCH (UID 12345 FLAGS (\\Seen))", b"* OK [ALERT] hello",
                            b"* CAPABILITY IMAP4rev1", b"* 4 RECENT", b"* NO [ALERT] quota",
                            b"* 40 FETCH (UID 400 BODY[] {5}\r\nhello)"]
    account = account_for(tmp_path, dovecot, server)
    fault("hostile: unsolicited responses", len(server.before_tagged))
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    for folder in ("INBOX", "Other"):
        got = Counter(p.read_bytes() for _, p in local_files(account.folder_dir(folder)))
        assert got == Counter(lf(m.body) for m in server.folders[folder]), folder
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0 and "+0 down +0 up -0" in out, out + err
    assert server.changes == []


# --------------------------------------------------------------------------------------------
# servers that never answer


def _hang(conn: Conn, tag: str, args: str) -> bool:
    conn.hang()
    return True


@pytest.mark.parametrize("where", ["greeting", "LOGIN", "SELECT", "FETCH-BODY"])
def test_a_server_that_never_answers(where: str, tmp_path: Path, dovecot: Dovecot,
                                     imap_server: Callable[..., ImapServer]) -> None:
    server = imap_server({"INBOX": msgs("INBOX", 3)})
    server.overrides[where] = _hang
    account = account_for(tmp_path, dovecot, server, timeout="2s")
    fault("hostile: never answers")
    started = time.monotonic()
    rc, out, err, _peak = run_syncd(account.config, "sync", timeout=60)
    seconds = time.monotonic() - started
    print(f"silent at {where}: exit {rc} after {seconds:.1f} s: {(out + err).strip()}")
    assert_reported(rc, out, err, "timed out")
    assert seconds < 20, f"gave up only after {seconds:.0f} s with timeout: 2s"
    if where == "FETCH-BODY":
        assert count_files(account.folder_dir("INBOX")) == 0


# --------------------------------------------------------------------------------------------
# the daemon: a hostile account does not take the others down


def test_daemon_keeps_serving_other_accounts(tmp_path: Path, dovecot: Dovecot,
                                             imap_server: Callable[..., ImapServer]) -> None:
    server = imap_server({"INBOX": msgs("INBOX", 2), "../../escape": msgs("x", 1)})
    server.overrides["FETCH-BODY"] = _huge_body_literal(GIGABYTES)
    good = secret_user(dovecot)
    dovecot.seed(good, "INBOX", [make_message(i) for i in range(3)])
    account = make_account(tmp_path, dovecot, good, timeout="2s")
    # a second account, on the hostile server, in the same config
    text = account.config.read_text()
    block = re.search(r"(?ms)^  test:\n.*", text).group(0)
    hostile_block = block.replace("  test:\n", "  victim:\n", 1)
    hostile_block = re.sub(r"(?m)^    port: \d+$", f"    port: {server.port}", hostile_block)
    hostile_block = re.sub(r"(?m)^    username: .*$", "    username: victim", hostile_block)
    account.config.write_text(text + hostile_block + "    poll_interval: 5s\n")
    before = tree(tmp_path, skip=[tmp_path / "Mail", tmp_path / "state"])
    fault("hostile: daemon account")
    d = DaemonProcess(account.config, log_path=tmp_path / "daemon.log").start()
    try:
        inbox = account.folder_dir("INBOX")
        wait_until(lambda: count_files(inbox) == 3, 30, message=lambda: d.log()[-3000:])
        # The hostile account fails (and is retried with backoff), again and again.
        wait_until(lambda: d.log().count("victim:") >= 2, 30, message=lambda: d.log()[-3000:])
        dovecot.append(good, "INBOX", make_message(50))
        wait_until(lambda: count_files(inbox) == 4, 15, message=lambda: d.log()[-3000:])
        assert d.alive()
        rss, peak = rss_kib(d.pid)
        print(f"daemon RSS {rss // 1024} MB (peak {peak // 1024} MB) after "
              f"{server.connections} hostile connections")
        assert peak < RSS_LIMIT_KIB + 40 * 1024
        log = d.log()
        assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    finally:
        rc, _ = d.stop()
    assert rc == 0, d.log()[-3000:]
    in_sync(dovecot, good, account, "INBOX")
    assert tree(tmp_path, skip=[tmp_path / "Mail", tmp_path / "state"]) == {
        **before, **{k: v for k, v in tree(tmp_path, skip=[tmp_path / "Mail",
                                                           tmp_path / "state"]).items()
                     if k.startswith("daemon.log")}}
    assert server.changes == []
