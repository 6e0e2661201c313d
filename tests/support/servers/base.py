"""The common interface of the IMAP servers of the matrix (tests/interop), and what they share.

Every server runs on 127.0.0.1 on a free port with all its state in its own work directory,
started as a session leader (its own process group) by ``subprocess.Popen(start_new_session=
True)`` and stopped by signalling that process group, never by process name. A tiny watchdog
process stops the group too if the test process dies without calling ``stop()``.

Server-side manipulation is done over IMAP (imaplib), as another mail client would, with
*logical* folder names: ``"INBOX"``, ``"Archive"``, ``"A/B"``. The server's personal namespace
(from NAMESPACE, e.g. ``INBOX.`` with ``.`` on Courier and Cyrus) is added and removed here, so a
test reads the same on every server. Locally, syncd is expected to show a server folder by its
logical name (issue 15: "show them locally without the prefix").

See /work/shared/notes/other-imap-servers.md for the reasons behind each server's recipe.
This module must not import pytest or syncd.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import (
    _FETCH_DATE,
    _LIST_LINE,
    HarnessError,
    _check,
    _fetch_records,
    _flag_list,
    _free_ports,
    _selectable,
    _seq_set,
    _unquote,
    fetch_uid_flags,
    imap_utf7_encode,
    list_entries,
    stop_watchdog,
)

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[3]
#: Where `make interop-deps` unpacks the Cyrus and Courier packages (SYNCD_INTEROP_PREFIX moves it).
INTEROP_PREFIX = Path(os.environ.get("SYNCD_INTEROP_PREFIX", REPO / ".interop" / "root"))

__all__ = [
    "HOST",
    "INTEROP_PREFIX",
    "HarnessError",
    "ImapServer",
    "ServerMessage",
    "ServerUnavailable",
    "ServerUser",
]


class ServerUnavailable(Exception):
    """The server cannot run on this machine; the message names what is missing (a skip)."""


@dataclass(frozen=True)
class ServerUser:
    name: str  # short name (for paths and messages)
    login: str  # what syncd and imaplib log in with (mailutils: name@domain)
    password: str


@dataclass(frozen=True)
class ServerMessage:
    uid: int
    flags: frozenset[str]  # without \Recent
    body: bytes  # BODY[] as the server returns it
    internaldate: str | None  # as in the FETCH response, e.g. "01-Jan-2024 08:00:00 +0000"


_NAMESPACE = re.compile(rb'^\(\("((?:[^"\\]|\\.)*)" (?:"((?:[^"\\]|\\.)*)"|NIL)\)')


# A watchdog (python -I -S -c): argv = process group, leader PID, leader start time. Waits for
# EOF on stdin (the test process's pipe end closes when it dies, however it dies), then TERMs the
# group if its leader is still the same process, and KILLs what is left after 5 s.
_WATCHDOG = r"""
import os, signal, sys, time
pg, leader, start = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
while os.read(0, 4096):
    pass
def same():
    try:
        with open(f"/proc/{leader}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19] == start
    except OSError:
        return False
def members():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pg:
                        out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out
if same() or members():
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pg, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 5
        while members() and time.monotonic() < deadline:
            time.sleep(0.05)
"""


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid`` (zombies excluded)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            rest = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if rest[0] not in ("Z", "X") and int(rest[2]) == pgid:
            found.append(int(name))
    return found


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def wait_for_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float,
                      describe: str) -> bytes:
    """Until 127.0.0.1:port sends an IMAP greeting; HarnessError if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise HarnessError(f"{describe} exited with status {proc.returncode} at start")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                greeting = s.recv(512)
                if greeting.startswith(b"* OK") or greeting.startswith(b"* PREAUTH"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"z LOGOUT\r\n")
                        s.recv(512)
                    return greeting
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise HarnessError(f"{describe} did not greet on port {port} within {timeout} s")
        time.sleep(0.02)


def normalise_body(body: bytes, drop_headers: Iterable[str] = ()) -> bytes:
    """LF line ends, and without the header fields ``drop_headers`` (names, any case) that a
    server adds on its own (mailutils: X-IMAPbase, X-UID, Status)."""
    lf = body.replace(b"\r\n", b"\n")
    drop = {h.lower().encode() for h in drop_headers}
    if not drop:
        return lf
    head, sep, rest = lf.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and kept is not None:
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in drop
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + rest


class ImapServer:
    """Base class: one private server instance. Subclasses set ``kind`` and implement
    ``_preflight``, ``_prepare``, ``_command``/``_launch`` and ``_create_user``."""

    kind = "imap"
    #: what syncd's config says: "none" (plain IMAP on ``port``) or "implicit" (``tls_port``)
    tls = "none"
    ca_file: Path | None = None
    #: the server tells an IDLEing session about another session's APPEND (mailutils: never)
    idle_pushes = True
    #: header fields the server adds to BODY[] by itself (ignored when comparing)
    added_headers: tuple[str, ...] = ()
    #: the server has UIDPLUS (UID EXPUNGE, APPENDUID)
    uidplus = True
    start_timeout = 20.0

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).absolute()
        if any(c in str(self.workdir) for c in ":,"):
            raise HarnessError(f"no ':' or ',' allowed in a server work dir: {self.workdir}")
        (self.port,) = _free_ports(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_fd: int | None = None
        self._lock = threading.RLock()
        self._users: dict[str, ServerUser] = {}
        self._counter = 0
        self.start_seconds: float | None = None  # launch to greeting, last start
        self._namespace: tuple[str, str] | None = None
        self._capabilities: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} port={self.port} at {self.workdir}>"

    # ------------------------------------------------------------------ lifecycle

    @property
    def syncd_port(self) -> int:
        """The port syncd connects to (the TLS one where ``tls`` is implicit)."""
        return self.port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _preflight(self) -> None:
        """Raise ServerUnavailable naming whatever this machine lacks."""

    def _prepare(self) -> None:
        """Write the configuration and data files into the (new, empty) work directory."""

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def _log_tail(self) -> str:
        return ""

    def start(self) -> ImapServer:
        with self._lock:
            if self.running:
                return self
            self._preflight()
            if os.geteuid() != 0:
                raise ServerUnavailable(f"{self.kind}: the harness must run as root")
            self.workdir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.workdir, 0o755)
            self._prepare()
            for _attempt in range(3):
                argv, env = self._command()
                began = time.monotonic()
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=self._stdio(), stderr=subprocess.STDOUT,
                    start_new_session=True, env=env, cwd=self.workdir)
                self._start_watchdog()
                try:
                    wait_for_greeting(self.port, self._proc, self.start_timeout, self.kind)
                except HarnessError as e:
                    self.stop()
                    log = self._log_tail()
                    if "in use" in log.lower():  # the free port was taken meanwhile: another
                        (self.port,) = _free_ports(1)
                        self._on_new_port()
                        continue
                    raise HarnessError(f"{e}\n--- log ---\n{log}") from None
                self.start_seconds = time.monotonic() - began
                return self
            raise HarnessError(f"{self.kind}: no free port after 3 attempts")

    def _on_new_port(self) -> None:
        """The port changed before a retried start: rewrite what names it."""
        self._prepare()

    def _stdio(self) -> int:
        return os.open(self.workdir / "server.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def stop(self, timeout: float = 10.0) -> None:
        """TERM the process group we started, wait until it is gone, KILL after ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            pg = proc.pid
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if not group_members(pg) and proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pg, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    proc.poll()
                    if proc.returncode is not None and not group_members(pg):
                        break
                    time.sleep(0.02)
                else:
                    continue
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
            self._proc = None
            self._stop_watchdog()

    def _start_watchdog(self) -> None:
        assert self._proc is not None
        read_end, write_end = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(self._proc.pid),
                 str(self._proc.pid), _start_time(self._proc.pid)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            os.close(read_end)
        self._watchdog_fd = write_end

    def _stop_watchdog(self) -> None:
        stop_watchdog(self._watchdog_fd, self._watchdog)
        self._watchdog_fd = self._watchdog = None

    def __enter__(self) -> ImapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ users

    def _create_user(self, name: str, password: str) -> ServerUser:
        raise NotImplementedError

    def add_user(self, password: str | None = None) -> ServerUser:
        """A fresh user, usable at once."""
        with self._lock:
            self._counter += 1
            name = f"u{self._counter:03d}"
            user = self._create_user(name, password or f"pw-{secrets.token_hex(4)}")
            self._users[name] = user
            return user

    # ------------------------------------------------------------------ sessions

    @contextlib.contextmanager
    def imap(self, user: ServerUser, *, timeout: float = 30.0) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib session over plain IMAP on ``port`` (LOGOUT at the end)."""
        conn = imaplib.IMAP4(HOST, self.port, timeout=timeout)
        try:
            _check(*conn.login(user.login, user.password), "LOGIN")
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def capabilities(self, user: ServerUser) -> frozenset[str]:
        """The capabilities after LOGIN (upper case)."""
        if self._capabilities is None:
            with self.imap(user) as m:
                typ, data = m.capability()
                _check(typ, data, "CAPABILITY")
                self._capabilities = frozenset(data[0].decode().upper().split())
        return self._capabilities

    def namespace(self, user: ServerUser) -> tuple[str, str]:
        """(prefix, delimiter) of the personal namespace, e.g. ("INBOX.", ".") or ("", "/")."""
        if self._namespace is None and "NAMESPACE" not in self.capabilities(user):
            # no RFC 2342 (pymap): no prefix, the delimiter from LIST "" ""
            with self.imap(user) as m:
                data = _check(*m.list('""', '""'), 'LIST "" ""')
            mo = _LIST_LINE.match(data[0]) if isinstance(data[0], bytes) else None
            delim = mo.group("delim") if mo else b"NIL"
            self._namespace = ("", "/" if delim == b"NIL" else _unquote(delim))
        if self._namespace is None:
            with self.imap(user) as m:
                typ, data = m.namespace()
                _check(typ, data, "NAMESPACE")
            raw = data[0] if isinstance(data[0], bytes) else str(data[0]).encode()
            mo = _NAMESPACE.match(raw)
            if mo is None:
                raise HarnessError(f"{self.kind}: cannot parse NAMESPACE {raw!r}")
            prefix = _unquote(b'"' + mo.group(1) + b'"')
            delim = _unquote(b'"' + mo.group(2) + b'"') if mo.group(2) is not None else "/"
            self._namespace = (prefix, delim)
        return self._namespace

    def server_name(self, user: ServerUser, folder: str) -> str:
        """The server's name for a logical folder ("A/B" -> "INBOX.A.B" on Courier)."""
        if folder.upper() == "INBOX":
            return "INBOX"
        prefix, delim = self.namespace(user)
        return prefix + folder.replace("/", delim)

    def logical_name(self, user: ServerUser, name: str) -> str:
        if name.upper() == "INBOX":
            return "INBOX"
        prefix, delim = self.namespace(user)
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        return name.replace(delim, "/") if delim != "/" else name

    def _mbox(self, user: ServerUser, folder: str) -> str:
        name = imap_utf7_encode(self.server_name(user, folder))
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    # ------------------------------------------------------------------ reading server state

    def folders(self, user: ServerUser) -> list[str]:
        """Logical names of the selectable folders, sorted."""
        with self.imap(user) as m:
            data = _check(*m.list('""', "*"), "LIST")
        return sorted(self.logical_name(user, name)
                      for name, flags in list_entries(data, f"{self.kind}: ")
                      if _selectable(flags))

    def _select(self, m: imaplib.IMAP4, user: ServerUser, folder: str, *,
                readonly: bool) -> int:
        typ, data = m.select(self._mbox(user, folder), readonly=readonly)
        _check(typ, data, f"{'EXAMINE' if readonly else 'SELECT'} {folder!r}")
        return int(data[0] or 0)

    def messages(self, user: ServerUser, folder: str) -> dict[int, ServerMessage]:
        """{uid: ServerMessage} with BODY.PEEK[] (reading sets no flag)."""
        out: dict[int, ServerMessage] = {}
        with self.imap(user) as m:
            if self._select(m, user, folder, readonly=True) == 0:
                return out
            data = _check(*m.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])"),
                          "UID FETCH")
        for text, lits in _fetch_records(data):
            uid, flags = fetch_uid_flags(text, f"{self.kind}: ")
            date_m = _FETCH_DATE.search(text)
            out[uid] = ServerMessage(
                uid=uid, flags=flags, body=lits[-1] if lits else b"",
                internaldate=date_m.group(1).decode() if date_m else None)
        return dict(sorted(out.items()))

    def uidvalidity(self, user: ServerUser, folder: str) -> int:
        with self.imap(user) as m:
            data = _check(*m.status(self._mbox(user, folder), "(UIDVALIDITY)"), "STATUS")
        mo = re.search(rb"UIDVALIDITY (\d+)", data[0] if isinstance(data[0], bytes) else b"")
        if mo is None:
            raise HarnessError(f"{self.kind}: no UIDVALIDITY in {data!r}")
        return int(mo.group(1))

    # ------------------------------------------------------------------ changing server state

    def create_folder(self, user: ServerUser, folder: str) -> None:
        with self.imap(user) as m:
            _check(*m.create(self._mbox(user, folder)), f"CREATE {folder!r}")

    def delete_folder(self, user: ServerUser, folder: str) -> None:
        with self.imap(user) as m:
            _check(*m.delete(self._mbox(user, folder)), f"DELETE {folder!r}")

    def append(self, user: ServerUser, folder: str, message: bytes,
               flags: Iterable[str] = (), date: str | None = None) -> int:
        """APPEND (as another client would); returns the new UID. ``date`` is an IMAP
        date-time string without quotes, e.g. "01-Jan-2024 08:00:00 +0000"."""
        with self.imap(user) as m:
            internal = f'"{date}"' if date else None
            data = _check(*m.append(self._mbox(user, folder), _flag_list(list(flags)) if flags
                                    else None, internal, message), f"APPEND to {folder!r}")
            mo = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
            if mo is not None:
                return int(mo.group(1))
            # no UIDPLUS: the highest UID is ours (tests change a user's mail one at a time)
            if self._select(m, user, folder, readonly=True) == 0:
                raise HarnessError(f"{self.kind}: APPEND to {folder!r} left it empty")
            found = _check(*m.uid("SEARCH", "ALL"), "UID SEARCH")
            return max(int(x) for x in (found[0] or b"").split())

    def _store(self, user: ServerUser, folder: str, uids: int | Iterable[int], op: str,
               flags: Iterable[str]) -> None:
        with self.imap(user) as m:
            self._select(m, user, folder, readonly=False)
            _check(*m.uid("STORE", _seq_set(uids), op, _flag_list(list(flags))), "UID STORE")

    def set_flags(self, user: ServerUser, folder: str, uids: int | Iterable[int],
                  flags: Iterable[str]) -> None:
        self._store(user, folder, uids, "FLAGS.SILENT", flags)

    def add_flags(self, user: ServerUser, folder: str, uids: int | Iterable[int],
                  flags: Iterable[str]) -> None:
        self._store(user, folder, uids, "+FLAGS.SILENT", flags)

    def remove_flags(self, user: ServerUser, folder: str, uids: int | Iterable[int],
                     flags: Iterable[str]) -> None:
        self._store(user, folder, uids, "-FLAGS.SILENT", flags)

    def expunge(self, user: ServerUser, folder: str, uids: int | Iterable[int]) -> None:
        """Expunge exactly these UIDs, as another client would; other messages marked
        \\Deleted stay (without UIDPLUS: their \\Deleted is lifted around a plain EXPUNGE)."""
        uid_set = _seq_set(uids)
        wanted = {uids} if isinstance(uids, int) else set(uids)
        with self.imap(user) as m:
            self._select(m, user, folder, readonly=False)
            if "UIDPLUS" in self.capabilities(user):
                _check(*m.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE")
                _check(*m.uid("EXPUNGE", uid_set), "UID EXPUNGE")
                return
            data = _check(*m.uid("SEARCH", "DELETED"), "UID SEARCH DELETED")
            others = {int(x) for x in (data[0] or b"").split()} - wanted
            if others:
                _check(*m.uid("STORE", _seq_set(others), "-FLAGS.SILENT", "(\\Deleted)"),
                       "UID STORE")
            _check(*m.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE")
            _check(*m.expunge(), "EXPUNGE")
            if others:
                _check(*m.uid("STORE", _seq_set(others), "+FLAGS.SILENT", "(\\Deleted)"),
                       "UID STORE")
            # no CLOSE: it would expunge them after all (LOGOUT does not)

    def force_uidvalidity_change(self, user: ServerUser, folder: str) -> int:
        """Give a (non-INBOX) folder a new UIDVALIDITY with the same messages, flags and
        INTERNALDATEs, as a server rebuild does: DELETE, CREATE, APPEND each message again.
        Returns the new UIDVALIDITY."""
        if folder.upper() == "INBOX":
            raise ValueError("force_uidvalidity_change needs a folder other than INBOX")
        before = self.uidvalidity(user, folder)
        msgs = list(self.messages(user, folder).values())
        for attempt in range(4):
            self.delete_folder(user, folder)
            self.create_folder(user, folder)
            after = self.uidvalidity(user, folder)
            if after != before:
                break
            time.sleep(1.0 if attempt < 3 else 0)  # time-based UIDVALIDITY on some servers
        else:
            raise HarnessError(f"{self.kind}: UIDVALIDITY of {folder!r} stayed {before}")
        for msg in msgs:
            body = normalise_body(msg.body, self.added_headers).replace(b"\n", b"\r\n")
            self.append(user, folder, body, sorted(msg.flags), msg.internaldate)
        return after
