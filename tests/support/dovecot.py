"""A private Dovecot 2.3 on 127.0.0.1 for tests, the demo and the benchmarks.

Usage::

    with Dovecot(Path("/var/tmp/somewhere")) as dc:
        user = dc.add_user()
        dc.seed(user, "INBOX", (make_message(i) for i in range(100)))
        print(dc.messages(user, "INBOX"))

Everything the instance needs lives in its work directory (config, TLS files, passwd file,
mail store, log). The instance is started with ``dovecot -F`` as our own child process and
stopped by PID; its children are found through /proc, never by process name.
See /work/shared/notes/dovecot-on-loopback.md for the reasons behind each detail.

This module must not import pytest or syncd.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import email.utils
import hashlib
import imaplib
import itertools
import os
import poplib
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.parser import BytesHeaderParser
from pathlib import Path

HOST = "127.0.0.1"

#: Dovecot 2.3.19's own capability list minus CONDSTORE, QRESYNC, ENABLE and NOTIFY (and the
#: other extensions that only make sense with them). Used by the ``dovecot_plain_imap`` fixture
#: to exercise the fallbacks of a server without change tracking.
PLAIN_IMAP_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS "
    "THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY "
    "MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+"
)

#: Maildir info letters Dovecot understands for system flags.
_FLAG_LETTERS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}

_MAIL_USER = "mail"
# P-256 keys: generated in milliseconds (RSA takes ~0.3 s each), supported by every client.
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_instances: weakref.WeakSet[Dovecot] = weakref.WeakSet()


class HarnessError(RuntimeError):
    """The test Dovecot could not do what was asked (with the reason and, if useful, its log)."""


@dataclass(frozen=True)
class User:
    name: str
    password: str
    home: Path
    maildir: Path  # the Maildir++ root (INBOX); folder "A/B" is maildir / ".A.B"


@dataclass(frozen=True)
class ServerMessage:
    uid: int
    flags: frozenset[str]  # e.g. {"\\Seen", "$Forwarded"}; \Recent is never included
    body: bytes  # the full message as sent on the wire (CRLF line ends); b"" if not fetched
    message_id: str | None  # "<...>" as in the header, or None
    size: int = 0  # RFC822.SIZE
    internaldate: datetime | None = None


# --------------------------------------------------------------------------------------------
# Modified UTF-7 (RFC 3501 section 5.1.3)


def imap_utf7_encode(name: str) -> str:
    """Encode a mailbox name to IMAP modified UTF-7."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def imap_utf7_decode(name: str | bytes) -> str:
    """Decode an IMAP modified UTF-7 mailbox name."""
    if isinstance(name, bytes):
        name = name.decode("ascii")
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.index("-", i)
        if end == i + 1:
            out.append("&")
        else:
            chunk = name[i + 1 : end].replace(",", "/")
            chunk += "=" * (-len(chunk) % 4)
            out.append(base64.b64decode(chunk).decode("utf-16-be"))
        i = end + 1
    return "".join(out)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox_arg(folder: str) -> str:
    return _quote(imap_utf7_encode(folder))


# --------------------------------------------------------------------------------------------
# Message factory

_BASE_DATE = datetime(2024, 1, 1, 8, 0, 0, tzinfo=UTC)


def _folder_token(folder: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", folder).strip("-").lower() or "x"
    digest = hashlib.sha1(folder.encode("utf-8")).hexdigest()[:6]
    return f"{slug[:24]}.{digest}"


def make_message(
    i: int,
    *,
    folder: str = "INBOX",
    size: int | None = None,
    subject: str | None = None,
    message_id: str | None = None,
    body: str | bytes | None = None,
) -> bytes:
    """A deterministic RFC 5322 message with CRLF line ends.

    The same arguments always give the same bytes. The Message-ID is unique per (i, folder)
    unless given. ``size`` pads the body with filler lines so that the message is exactly
    ``size`` bytes long with CRLF line ends (the IMAP RFC822.SIZE), if it is not already longer.
    """
    mid = message_id if message_id is not None else f"<{i}.{_folder_token(folder)}@syncd.test>"
    subj = subject if subject is not None else f"Test message {i} in {folder}"
    subj_header = subj if subj.isascii() else Header(subj, "utf-8").encode()
    date = email.utils.format_datetime(_BASE_DATE + timedelta(minutes=i))
    if body is None:
        body_bytes = (
            f"Hello,\r\n\r\nthis is test message {i} in folder {folder}.\r\n"
            "\r\n-- \r\nsyncd tests\r\n"
        ).encode()
    else:
        body_bytes = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        body_bytes = re.sub(rb"\r?\n", b"\r\n", body_bytes)
        if body_bytes and not body_bytes.endswith(b"\r\n"):
            body_bytes += b"\r\n"
    headers = [
        f"From: Sender {i % 7} <sender{i % 7}@example.test>",
        "To: Test User <user@example.test>",
        f"Subject: {subj_header}",
        f"Date: {date}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: " + ("7bit" if body_bytes.isascii() else "8bit"),
    ]
    msg = ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8") + body_bytes
    if size is not None and size > len(msg):
        msg = _pad(msg, size)
    return msg


def _pad(msg: bytes, size: int) -> bytes:
    deficit = size - len(msg)
    lines: list[bytes] = []
    while deficit > 0:
        if deficit >= 80 + 2 or deficit == 80:
            lines.append(b"x" * 78 + b"\r\n")
            deficit -= 80
        elif deficit >= 2:
            lines.append(b"x" * (deficit - 2) + b"\r\n")
            deficit = 0
        else:  # exactly one byte left: lengthen a filler line, or the last body line
            if lines:
                lines[-1] = b"x" + lines[-1]
            else:
                msg = msg[:-2] + b"." + msg[-2:]
            deficit = 0
    return msg + b"".join(lines)


# --------------------------------------------------------------------------------------------
# helpers


def _which(prog: str) -> str | None:
    return shutil.which(prog) or shutil.which(prog, path=_SBIN_PATH)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, starttime) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may itself contain ") "
    rest = data[data.rindex(")") + 2 :].split()
    return int(rest[1]), rest[0], int(rest[19])


def _proc_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _listening_ports() -> set[int]:
    """Ports in LISTEN state on 127.0.0.1 (or any address), from /proc/net/tcp."""
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            addr, port = fields[1].split(":")
            if fields[3] == "0A" and addr in ("0100007F", "00000000"):
                ports.add(int(port, 16))
    return ports


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _is_log_process(pid: int) -> bool:
    return _proc_cmdline(pid).rstrip().endswith("/log")


def _signal(pid: int, starttime: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` unless that PID now belongs to a different process."""
    if _alive(pid, starttime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pid: int, starttime: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[2] == starttime and st[1] not in ("Z", "X")


_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FETCH_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.*)$')


def _unquote(b: bytes) -> str:
    s = b.decode("ascii")
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def _check(typ: str, data: list, what: str) -> list:
    if typ != "OK":
        raise HarnessError(f"IMAP {what} failed: {typ} {data!r}")
    return data


def _fetch_records(data: list) -> Iterator[tuple[bytes, list[bytes]]]:
    """Group imaplib FETCH data into (response text without literals, [literals in order])."""
    records: list[tuple[bytearray, list[bytes]]] = []
    for part in data:
        if part is None:
            continue
        head = part[0] if isinstance(part, tuple) else part
        if not records or re.match(rb"^\d+ \(", head):
            records.append((bytearray(), []))
        records[-1][0].extend(head)
        if isinstance(part, tuple):
            records[-1][1].append(part[1])
    for text, lits in records:
        yield bytes(text), lits


def list_entries(data: list, what: str = "") -> Iterator[tuple[str, list[str]]]:
    """(folder name decoded from modified UTF-7, its flags in lower case) of each LIST
    response in imaplib's ``data``; a name may come as a literal."""
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):  # the name sent as a literal
            line, raw_name = item
            mo = _LIST_LINE.match(line.rstrip())
            name = raw_name.decode("utf-8")
        else:
            mo = _LIST_LINE.match(item)
            name = _unquote(mo.group("name")) if mo else ""
        if mo is None:
            raise HarnessError(f"{what}cannot parse LIST response {item!r}")
        yield imap_utf7_decode(name), mo.group("flags").decode().lower().split()


def _selectable(flags: list[str]) -> bool:
    return "\\noselect" not in flags and "\\nonexistent" not in flags


def fetch_uid_flags(text: bytes, what: str = "") -> tuple[int, frozenset[str]]:
    """The UID and the flags (\\Recent left out) of one FETCH response's text."""
    uid_m = _FETCH_UID.search(text)
    if uid_m is None:
        raise HarnessError(f"{what}FETCH response without UID: {text!r}")
    flags_m = _FETCH_FLAGS.search(text)
    words = flags_m.group(1).decode().split() if flags_m else []
    return int(uid_m.group(1)), frozenset(f for f in words if f.lower() != "\\recent")


def _seq_set(uids: int | Iterable[int]) -> str:
    if isinstance(uids, int):
        return str(uids)
    items = sorted(set(uids))
    if not items:
        raise ValueError("empty UID set")
    return ",".join(str(u) for u in items)


def _flag_list(flags: str | Iterable[str]) -> str:
    if isinstance(flags, str):
        flags = [flags]
    return "(" + " ".join(flags) + ")"


# --------------------------------------------------------------------------------------------


class Dovecot:
    """A private Dovecot instance in ``workdir``, listening on free ports of 127.0.0.1."""

    host = HOST

    def __init__(
        self,
        workdir: Path | str,
        *,
        imap_capability: str | None = None,
        mailbox_list_index: bool = False,
        extra_conf: str = "",
        inbox_prefix: str = "",
        separator: str = "/",
    ) -> None:
        """``inbox_prefix``/``separator``: the personal namespace, e.g. ``"INBOX."``/``"."``
        for a Courier- or Cyrus-style server where every folder lives under INBOX."""
        self.workdir = Path(workdir).absolute()
        self.imap_capability = imap_capability
        self.inbox_prefix = inbox_prefix
        self.separator = separator
        self.mailbox_list_index = mailbox_list_index
        self.extra_conf = extra_conf
        self.instance_name = f"syncd-test-{secrets.token_hex(4)}"
        self.conf_file = self.workdir / "dovecot.conf"
        # One passwd-file per user: Dovecot re-reads a changed passwd-file at most once a second,
        # so appending to one shared file makes a brand-new user unknown for up to a second.
        self.passwd_dir = self.workdir / "passwd.d"
        self.log_file = self.workdir / "dovecot.log"
        self.stderr_file = self.workdir / "dovecot.stderr"
        self.mail_dir = self.workdir / "mail"
        self.tls_dir = self.workdir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.ca_key_file = self.tls_dir / "ca.key"
        self.cert_file = self.tls_dir / "cert.pem"
        self.key_file = self.tls_dir / "key.pem"
        self.other_ca_file = self.tls_dir / "other-ca.pem"
        self.other_ca_key_file = self.tls_dir / "other-ca.key"
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = _free_ports(4)
        self._ports_used = False  # once started, the ports are kept across restarts
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_fd: int | None = None
        self._lock = threading.RLock()
        self._users: dict[str, User] = {}
        self._counter = itertools.count(1)
        self._file_seq = itertools.count(1)
        mail = pwd.getpwnam(_MAIL_USER)
        self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid
        if self.passwd_dir.is_dir():  # an existing work dir: keep its users
            self._load_users()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dovecot {self.instance_name} {state} imap={self.imap_port} at {self.workdir}>"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Dovecot:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def master_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Dovecot:
        """Write the config (and TLS files, passwd file) and start; return when it serves."""
        with self._lock:
            if self.running:
                return self
            if self._proc is not None:  # the master died on its own: clean up after it first
                self.stop()
            self._preflight()
            self._prepare_dirs()
            self.ensure_certs()
            self._load_users()
            attempts = 1 if self._ports_used else 5
            for attempt in range(attempts):
                self.conf_file.write_text(self.config_text())
                try:
                    self._launch()
                except _PortInUse:
                    if attempt == attempts - 1:
                        raise HarnessError(
                            f"could not bind the ports of {self!r}:\n{self._diagnostics()}"
                        ) from None
                    self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = _free_ports(
                        4
                    )
                    continue
                break
            self._ports_used = True
            _instances.add(self)
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master and every process of this instance, by PID; wait until gone.

        Client sessions (imap, pop3) get ``* BYE Server shutting down`` and their connections
        close, as in a real server outage. Stopping twice is harmless.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            master = proc.pid
            seen = self._descendants(master)  # before the master goes: afterwards they're orphans
            signaled: dict[int, float] = {}
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    # The master waits for its children; a login process it forks during the
                    # shutdown (for a connection still in the backlog) would wait 5 s for the
                    # dead auth process. So end every child now except the log process, which
                    # the master ends last (the remaining log lines still get written).
                    children = self._descendants(master)
                    seen.update(children)
                    now = time.monotonic()
                    live = {p: st for p, st in children.items() if _alive(p, st)}
                    workers = {p for p in live if not _is_log_process(p)}
                    for pid in workers:
                        if pid not in signaled:
                            _signal(pid, live[pid], signal.SIGTERM)
                            signaled[pid] = now
                        elif now - signaled[pid] > 2.0:
                            _signal(pid, live[pid], signal.SIGKILL)
                    time.sleep(0.01)
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            self._proc = None
            # Anything left (orphaned sessions, late forks) is ended by PID too.
            leftovers = dict(seen)
            leftovers.update(self._instance_processes())
            self._terminate(leftovers, timeout=5.0)
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / "run" / "master.pid").unlink()
            self._stop_watchdog()

    def restart(self) -> Dovecot:
        """Stop (ending every client connection) and start again on the same ports and data."""
        self.stop()
        return self.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[Dovecot]:
        """A server outage: stopped inside the block (clients get BYE), started again after it,
        on the same ports and with the same data."""
        self.stop()
        try:
            yield self
        finally:
            self.start()

    def pids(self) -> list[int]:
        """PIDs of the master and every live process of this instance."""
        found = dict(self._instance_processes())
        if self._proc is not None and self._proc.poll() is None:
            st = _proc_stat(self._proc.pid)
            if st is not None:
                found[self._proc.pid] = st[2]
            found.update(self._descendants(self._proc.pid))
        return sorted(pid for pid, start in found.items() if _alive(pid, start))

    # internals of the lifecycle

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise HarnessError(
                "the Dovecot test harness must run as root (Dovecot switches to the dovecot, "
                "dovenull and mail users)"
            )
        for prog in ("dovecot", "doveadm", "openssl"):
            if _which(prog) is None:
                raise HarnessError(
                    f"{prog!r} is not installed: run `make deps` as root "
                    "(apt-get install dovecot-imapd dovecot-pop3d openssl)"
                )
        version = subprocess.run(
            [_which("dovecot"), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not version.startswith("2.3."):
            raise HarnessError(f"the harness needs Dovecot 2.3, found {version or 'unknown'!r}")
        # Gotcha 1: every directory above the work dir must be traversable by other users.
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        for parent in self.workdir.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise HarnessError(
                    f"{parent} is not traversable by other users (mode "
                    f"{oct(os.stat(parent).st_mode & 0o777)}); Dovecot's unprivileged processes "
                    f"could not reach {self.workdir}. Use a directory such as /var/tmp/..."
                )

    def _prepare_dirs(self) -> None:
        for d in (self.workdir / "run", self.workdir / "state", self.tls_dir):
            d.mkdir(exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, self.mail_uid, self.mail_gid)
        os.chmod(self.mail_dir, 0o755)
        # gotcha 3: the auth process runs as "dovecot" and must read these
        self.passwd_dir.mkdir(exist_ok=True)
        os.chown(self.passwd_dir, 0, _group_id("dovecot"))
        os.chmod(self.passwd_dir, 0o750)

    def config_text(self) -> str:
        w = self.workdir
        lines = [
            f"base_dir = {w}/run",
            f"state_dir = {w}/state",
            f"instance_name = {self.instance_name}",
            f"listen = {HOST}",
            "protocols = imap pop3",
            f"log_path = {self.log_file}",
            "ssl = yes",
            f"ssl_cert = <{self.cert_file}",
            f"ssl_key = <{self.key_file}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_verbose = yes",
            "auth_failure_delay = 0",
            # No stats: otherwise a login process that starts while the instance stops waits
            # 5 s for the stats-writer handshake (and logs an error).
            "stats_writer_socket_path =",
            "",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={self.mail_uid} gid={self.mail_gid} home={self.mail_dir}/%u",
            "}",
            f"first_valid_uid = {self.mail_uid}",
            f"first_valid_gid = {self.mail_gid}",
            "",
            "mail_location = maildir:~/Maildir",
            "namespace inbox {",
            "  inbox = yes",
            f"  separator = {self.separator}",
            *([f"  prefix = {self.inbox_prefix}"] if self.inbox_prefix else []),
            "}",
            f"mailbox_list_index = {'yes' if self.mailbox_list_index else 'no'}",
            # syncd opens several connections per account (IDLE watchers, parallel fetches)
            "mail_max_userip_connections = 100",
        ]
        if self.imap_capability is not None:
            lines.append(f"imap_capability = {self.imap_capability}")
        lines += [
            "",
            "service imap-login {",
            "  inet_listener imap {",
            f"    port = {self.imap_port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.imaps_port}",
            "    ssl = yes",
            "  }",
            "}",
            # After a failed login Dovecot delays every later login from that IP (auth penalty,
            # 2..15 s): one wrong-password test would slow down all the others. Without access
            # to this socket the auth process runs with the penalty disabled.
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
            "service pop3-login {",
            "  inet_listener pop3 {",
            f"    port = {self.pop3_port}",
            "  }",
            "  inet_listener pop3s {",
            f"    port = {self.pop3s_port}",
            "    ssl = yes",
            "  }",
            "}",
            "",
            self.extra_conf,
            "",
        ]
        return "\n".join(lines)

    def _launch(self) -> None:
        log_start = self.log_mark()
        with open(self.stderr_file, "ab") as err:
            self._proc = subprocess.Popen(
                [_which("dovecot"), "-F", "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # a terminal's ^C goes to pytest, which stops us
            )
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                text = self.stderr_file.read_text(errors="replace") + self.log_text(log_start)
                if "Address already in use" in text:
                    raise _PortInUse
                raise HarnessError(f"Dovecot exited at start:\n{self._diagnostics()}")
            if self._serving():
                self._start_watchdog()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise HarnessError(f"Dovecot did not come up in 20 s:\n{self._diagnostics()}")
            time.sleep(0.02)

    def _start_watchdog(self) -> None:
        """A tiny process that stops this instance if we die without calling stop().

        It waits for EOF on a pipe whose only writer is this process, so it also fires when
        we are killed with SIGKILL (e.g. by a CI timeout), when atexit handlers never run.
        """
        assert self._proc is not None
        st = _proc_stat(self._proc.pid)
        read_end, write_end = os.pipe()  # not inherited by other children (close_fds)
        try:
            self._watchdog = subprocess.Popen(
                [
                    sys.executable, "-I", "-S", "-c",
                    "import os; exec(os.environ['SYNCD_DOVECOT_WATCHDOG'])",
                    str(self._proc.pid), str(st[2] if st else 0),
                    f"dovecot-{self.instance_name}/",
                ],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"SYNCD_DOVECOT_WATCHDOG": _WATCHDOG, "PATH": os.environ.get("PATH", "")},
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(read_end)
        self._watchdog_fd = write_end

    def _stop_watchdog(self) -> None:
        stop_watchdog(self._watchdog_fd, self._watchdog)
        self._watchdog_fd = self._watchdog = None

    def _serving(self) -> bool:
        """All four ports listen, and imap-login answers with a greeting."""
        ports = {self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port}
        if not ports <= _listening_ports():
            return False
        try:
            with socket.create_connection((HOST, self.imap_port), timeout=5) as s:
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def _diagnostics(self) -> str:
        err = self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""
        log = self.log_text()
        return f"--- stderr ---\n{err[-3000:]}\n--- {self.log_file} ---\n{log[-3000:]}"

    def _descendants(self, root: int) -> dict[int, int]:
        """{pid: starttime} of every process below ``root``."""
        children: dict[int, list[tuple[int, int]]] = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is not None:
                children.setdefault(st[0], []).append((pid, st[2]))
        found: dict[int, int] = {}
        todo = [root]
        while todo:
            for pid, start in children.get(todo.pop(), []):
                if pid not in found:
                    found[pid] = start
                    todo.append(pid)
        return found

    def _instance_processes(self) -> dict[int, int]:
        """{pid: starttime} of processes whose title names this instance (e.g. orphaned imap)."""
        marker = f"dovecot-{self.instance_name}/"
        conf = f"-c {self.conf_file}"
        found: dict[int, int] = {}
        for pid in _all_pids():
            if pid == os.getpid():
                continue
            cmd = _proc_cmdline(pid)
            if cmd.startswith(marker) or (
                cmd.startswith(_which("dovecot") or "dovecot") and conf in cmd
            ):
                st = _proc_stat(pid)
                if st is not None:
                    found[pid] = st[2]
        return found

    @staticmethod
    def _terminate(procs: dict[int, int], timeout: float) -> None:
        live = {pid: start for pid, start in procs.items() if _alive(pid, start)}
        for pid, start in live.items():
            _signal(pid, start, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            live = {pid: start for pid, start in live.items() if _alive(pid, start)}
            if live:
                time.sleep(0.02)
        for pid, start in live.items():
            _signal(pid, start, signal.SIGKILL)

    # ------------------------------------------------------------------ TLS

    def ensure_certs(self) -> None:
        """Create the CA, the server certificate and an unrelated CA, unless already there."""
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        tag = self.instance_name
        if not (self.ca_file.exists() and self.ca_key_file.exists()):
            self._make_ca(self.ca_file, self.ca_key_file, f"syncd test CA {tag}")
        if not (self.cert_file.exists() and self.key_file.exists()):
            self._make_server_cert()
        if not self.other_ca_file.exists():
            self._make_ca(self.other_ca_file, self.other_ca_key_file, f"unrelated test CA {tag}")

    def _openssl(self, *args: str) -> None:
        res = subprocess.run(
            [_which("openssl"), *args], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise HarnessError(f"openssl {' '.join(args)} failed:\n{res.stderr}")

    def _make_ca(self, cert: Path, key: Path, cn: str) -> None:
        tmp_key = key.with_name(key.name + ".tmp")
        tmp_cert = cert.with_name(cert.name + ".tmp")
        self._openssl(
            "req", "-x509", *_EC_KEY, "-nodes", "-days", "3650",
            "-keyout", str(tmp_key), "-out", str(tmp_cert), "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        )  # fmt: skip
        os.chmod(tmp_key, 0o600)
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)

    def _make_server_cert(self) -> None:
        csr = self.tls_dir / "server.csr"
        ext = self.tls_dir / "server.ext"
        tmp_key = self.tls_dir / "key.tmp"
        tmp_cert = self.tls_dir / "cert.tmp"
        ext.write_text(
            "basicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature\n"
            "extendedKeyUsage = serverAuth\n"
            # gotcha 5: the IP in the CN, as an IP SAN and as a DNS SAN
            "subjectAltName = IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid,issuer\n"
        )
        self._openssl(
            "req", "-new", *_EC_KEY, "-nodes", "-keyout", str(tmp_key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1",
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
            "-CAkey", str(self.ca_key_file), "-set_serial", str(int(secrets.token_hex(8), 16)),
            "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(tmp_cert),
        )  # fmt: skip
        os.chmod(tmp_key, 0o600)
        os.replace(tmp_key, self.key_file)
        os.replace(tmp_cert, self.cert_file)
        csr.unlink()
        ext.unlink()

    def ssl_context(self, cafile: Path | str | None = None) -> ssl.SSLContext:
        """A verifying client context trusting ``cafile`` (default: this instance's CA)."""
        return ssl.create_default_context(cafile=str(cafile or self.ca_file))

    # ------------------------------------------------------------------ users

    def _load_users(self) -> None:
        with self._lock:
            highest = 0
            for path in sorted(self.passwd_dir.iterdir()):
                if path.name.startswith(".") or not path.is_file():
                    continue
                line = path.read_text().strip()
                if ":" not in line:
                    continue
                name, rest = line.split(":", 1)
                password = rest.split(":", 1)[0].removeprefix("{PLAIN}")
                self._users[name] = self._user_record(name, password)
                m = re.fullmatch(r"u(\d+)", name)
                if m:
                    highest = max(highest, int(m.group(1)))
            self._counter = itertools.count(highest + 1)

    def _user_record(self, name: str, password: str) -> User:
        home = self.mail_dir / name
        return User(name=name, password=password, home=home, maildir=home / "Maildir")

    def add_user(self, name: str | None = None, password: str = "secret") -> User:
        """Create a user (cheap: writes one small passwd-file; usable at once, even running)."""
        with self._lock:
            if not self.passwd_dir.is_dir():
                self._prepare_dirs()
            if name is None:
                while True:
                    name = f"u{next(self._counter):03d}"
                    if name not in self._users:
                        break
            if name in self._users:
                raise HarnessError(f"user {name!r} exists already")
            if not re.fullmatch(r"[A-Za-z0-9._@+-]+", name) or name.startswith("."):
                raise ValueError(f"bad user name {name!r}")
            if any(c in password for c in ":\n\r"):
                raise ValueError("the password may not contain ':' or a line break")
            self._write_passwd(name, password)
            user = self._user_record(name, password)
            self._users[name] = user
            return user

    def _write_passwd(self, name: str, password: str) -> None:
        path = self.passwd_dir / name
        tmp = self.passwd_dir / f".{name}.tmp"
        before = path.stat().st_mtime if path.exists() else None
        tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        os.chown(tmp, 0, _group_id("dovecot"))
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
        # Dovecot re-reads a passwd file only when its mtime (whole seconds) or size changed: a
        # new password of the same length written within the second of the old one was never
        # seen (a wrong-password test then logged in with the old one).
        if before is not None and int(path.stat().st_mtime) <= int(before):
            later = int(before) + 1
            os.utime(path, (later, later))

    def set_password(self, user: User | str, password: str) -> User:
        """Change a user's password (takes effect within a second: Dovecot's re-read limit)."""
        with self._lock:
            u = self._u(user)
            if any(c in password for c in ":\n\r"):
                raise ValueError("the password may not contain ':' or a line break")
            self._write_passwd(u.name, password)
            new = self._user_record(u.name, password)
            self._users[u.name] = new
            return new

    def user(self, name: str) -> User:
        """The User record of an existing user."""
        try:
            return self._users[name]
        except KeyError:
            raise HarnessError(f"no such user {name!r}") from None

    @property
    def users(self) -> list[User]:
        return list(self._users.values())

    def _u(self, user: User | str) -> User:
        return user if isinstance(user, User) else self.user(user)

    # ------------------------------------------------------------------ doveadm

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <conf> ARGS`` and return its stdout (HarnessError with stderr)."""
        res = subprocess.run(
            [_which("doveadm"), "-c", str(self.conf_file), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise HarnessError(
                f"doveadm {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res.stdout

    def set_uidvalidity(self, user: User | str, folder: str, value: int) -> None:
        """Force a new UIDVALIDITY (sessions that have the folder open may need a kick)."""
        self.doveadm(
            "mailbox", "update", "-u", self._u(user).name, "--uid-validity", str(value), folder
        )

    def kick(self, user: User | str) -> None:
        """Disconnect every session of ``user``."""
        self.doveadm("kick", self._u(user).name)

    # ------------------------------------------------------------------ IMAP/POP3 sessions

    @contextlib.contextmanager
    def imap(self, user: User | str, *, timeout: float = 30.0) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib session over the plain port (LOGOUT at the end)."""
        u = self._u(user)
        conn = imaplib.IMAP4(HOST, self.imap_port, timeout=timeout)
        try:
            conn.login(u.name, u.password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    @contextlib.contextmanager
    def pop3(self, user: User | str, *, timeout: float = 30.0) -> Iterator[poplib.POP3]:
        """A logged-in poplib session over the plain port (QUIT at the end)."""
        u = self._u(user)
        conn = poplib.POP3(HOST, self.pop3_port, timeout=timeout)
        try:
            conn.user(u.name)
            conn.pass_(u.password)
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.quit()

    # ------------------------------------------------------------------ reading server state

    def folders(self, user: User | str, *, selectable_only: bool = True) -> list[str]:
        """Sorted folder names, decoded to str, with "/" as delimiter."""
        with self.imap(user) as m:
            data = _check(*m.list(), "LIST")
        return sorted(name for name, flags in list_entries(data)
                      if not selectable_only or _selectable(flags))

    def status(
        self,
        user: User | str,
        folder: str,
        items: Iterable[str] = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"),
    ) -> dict[str, int]:
        """STATUS of a folder as {item: number}."""
        with self.imap(user) as m:
            data = _check(*m.status(_mailbox_arg(folder), "(" + " ".join(items) + ")"), "STATUS")
        text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        inner = text[text.rindex("(") + 1 : text.rindex(")")].split()
        return {inner[k].upper(): int(inner[k + 1]) for k in range(0, len(inner), 2)}

    def uidvalidity(self, user: User | str, folder: str) -> int:
        return self.status(user, folder, ("UIDVALIDITY",))["UIDVALIDITY"]

    def count(self, user: User | str, folder: str) -> int:
        return self.status(user, folder, ("MESSAGES",))["MESSAGES"]

    def uids(self, user: User | str, folder: str) -> list[int]:
        """The folder's UIDs in ascending order."""
        with self.imap(user) as m:
            _check(*m.select(_mailbox_arg(folder), readonly=True), "EXAMINE")
            data = _check(*m.uid("SEARCH", "ALL"), "UID SEARCH")
        return sorted(int(x) for x in (data[0] or b"").split())

    def messages(
        self, user: User | str, folder: str, *, bodies: bool = True
    ) -> dict[int, ServerMessage]:
        """{uid: ServerMessage}, read with BODY.PEEK (reading does not set \\Seen)."""
        items = "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"
        items += " BODY.PEEK[])" if bodies else ")"
        result: dict[int, ServerMessage] = {}
        with self.imap(user) as m:
            _check(*m.select(_mailbox_arg(folder), readonly=True), "EXAMINE")
            data = _check(*m.uid("FETCH", "1:*", items), "UID FETCH")
        for text, lits in _fetch_records(data):
            if _FETCH_UID.search(text) is None:
                continue  # unsolicited: another session's flag change (no UID, not asked for)
            uid, flags = fetch_uid_flags(text)
            header_lit, body_lit = _split_literals(text, lits)
            size_m = _FETCH_SIZE.search(text)
            date_m = _FETCH_DATE.search(text)
            result[uid] = ServerMessage(
                uid=uid,
                flags=flags,
                body=body_lit if bodies else b"",
                message_id=_message_id(header_lit),
                size=int(size_m.group(1)) if size_m else 0,
                internaldate=(
                    datetime.strptime(date_m.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
                    if date_m
                    else None
                ),
            )
        return dict(sorted(result.items()))

    def message(self, user: User | str, folder: str, uid: int) -> ServerMessage:
        msgs = self.messages(user, folder)
        if uid not in msgs:
            raise HarnessError(f"no UID {uid} in {folder!r} of {self._u(user).name}")
        return msgs[uid]

    def flags(self, user: User | str, folder: str) -> dict[int, frozenset[str]]:
        """{uid: flags} without fetching bodies."""
        return {uid: m.flags for uid, m in self.messages(user, folder, bodies=False).items()}

    # ------------------------------------------------------------------ changing server state

    def create_folder(self, user: User | str, name: str) -> None:
        with self.imap(user) as m:
            _check(*m.create(_mailbox_arg(name)), f"CREATE {name!r}")

    def delete_folder(self, user: User | str, name: str) -> None:
        with self.imap(user) as m:
            _check(*m.delete(_mailbox_arg(name)), f"DELETE {name!r}")

    def rename_folder(self, user: User | str, old: str, new: str) -> None:
        with self.imap(user) as m:
            _check(*m.rename(_mailbox_arg(old), _mailbox_arg(new)), f"RENAME {old!r}")

    def append(
        self,
        user: User | str,
        folder: str,
        message: bytes,
        flags: str | Iterable[str] = (),
        date: datetime | float | None = None,
    ) -> int:
        """APPEND over IMAP (the real protocol); returns the new UID (from APPENDUID)."""
        internal = imaplib.Time2Internaldate(date) if date is not None else None
        with self.imap(user) as m:
            data = _check(
                *m.append(_mailbox_arg(folder), _flag_list(flags), internal, message), "APPEND"
            )
        mo = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
        if mo is None:
            raise HarnessError(f"APPEND gave no APPENDUID: {data!r}")
        return int(mo.group(1))

    def _store(
        self, user: User | str, folder: str, uids: int | Iterable[int], op: str, flags
    ) -> None:
        with self.imap(user) as m:
            _check(*m.select(_mailbox_arg(folder)), "SELECT")
            _check(*m.uid("STORE", _seq_set(uids), op, _flag_list(flags)), "UID STORE")

    def set_flags(self, user: User | str, folder: str, uid: int | Iterable[int], flags) -> None:
        """Replace the flags of the message(s) with ``flags`` (a str or an iterable of str)."""
        self._store(user, folder, uid, "FLAGS.SILENT", flags)

    def add_flags(self, user: User | str, folder: str, uid: int | Iterable[int], flags) -> None:
        self._store(user, folder, uid, "+FLAGS.SILENT", flags)

    def remove_flags(self, user: User | str, folder: str, uid: int | Iterable[int], flags) -> None:
        self._store(user, folder, uid, "-FLAGS.SILENT", flags)

    def expunge(self, user: User | str, folder: str, uids: int | Iterable[int]) -> None:
        """Expunge exactly these UIDs (other \\Deleted messages stay)."""
        uid_set = _seq_set(uids)
        with self.imap(user) as m:
            _check(*m.select(_mailbox_arg(folder)), "SELECT")
            _check(*m.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE")
            _check(*m.uid("EXPUNGE", uid_set), "UID EXPUNGE")

    # ------------------------------------------------------------------ seeding the store

    def folder_path(self, user: User | str, folder: str) -> Path:
        """The Maildir++ directory of ``folder`` (INBOX is the Maildir root)."""
        u = self._u(user)
        if folder.upper() == "INBOX":
            return u.maildir
        if "." in folder or folder.startswith("/") or folder.endswith("/") or "//" in folder:
            raise ValueError(f"folder name {folder!r} cannot be seeded in the Maildir++ layout")
        return u.maildir / ("." + imap_utf7_encode(folder).replace("/", "."))

    def _mkdir_mail(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(mode=0o700)
            os.chown(path, self.mail_uid, self.mail_gid)

    def _ensure_folder(self, user: User, folder: str) -> Path:
        self._mkdir_mail(user.home)
        self._mkdir_mail(user.maildir)
        for sub in ("cur", "new", "tmp"):
            self._mkdir_mail(user.maildir / sub)
        d = self.folder_path(user, folder)
        if d != user.maildir:
            self._mkdir_mail(d)
            for sub in ("cur", "new", "tmp"):
                self._mkdir_mail(d / sub)
            marker = d / "maildirfolder"
            if not marker.exists():
                marker.touch()
                os.chown(marker, self.mail_uid, self.mail_gid)
        return d

    def _write_file(self, path: Path, data: bytes, mtime: float | None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchown(fd, self.mail_uid, self.mail_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def seed(
        self,
        user: User | str,
        folder: str,
        messages: Iterable[bytes | tuple[bytes, str] | tuple[bytes, str, float]],
        *,
        index: bool = True,
    ) -> list[int]:
        """Write messages straight into the Maildir (fast), then let Dovecot assign UIDs.

        Each item is the message bytes, or ``(bytes, flag_letters)`` or
        ``(bytes, flag_letters, mtime)`` with Maildir flag letters ("S" seen, "R" answered,
        "F" flagged, "T" deleted, "D" draft, "P" $Forwarded, set over IMAP after indexing) and
        the INTERNALDATE as a Unix time (default: now). Line ends are stored as LF.

        Returns the new UIDs in the order of ``messages``; empty if ``index`` is False (then
        Dovecot finds the files on the next access to the folder).
        """
        u = self._u(user)
        d = self._ensure_folder(u, folder)
        uidnext = self.status(u, folder, ("UIDNEXT",))["UIDNEXT"] if index else 0
        base = int(time.time())
        n = 0
        forwarded: list[int] = []  # positions of messages with "P"
        for i, item in enumerate(messages):
            if isinstance(item, tuple):
                data, letters, *rest = item
                mtime = rest[0] if rest else None
            else:
                data, letters, mtime = item, "", None
            letters = "".join(sorted(set(letters)))
            if any(c not in _FLAG_LETTERS for c in letters):
                raise ValueError(f"unknown maildir flag letters {letters!r}")
            if "P" in letters:
                # Dovecot keeps keywords as a-z letters (dovecot-keywords), not as "P": set
                # $Forwarded over IMAP once the UIDs exist.
                if not index:
                    raise ValueError('the "P" flag ($Forwarded) can only be seeded with index=True')
                letters = letters.replace("P", "")
                forwarded.append(i)
            lf = bytes(data).replace(b"\r\n", b"\n")
            size, wsize = len(lf), len(lf) + lf.count(b"\n")
            # "M<i>" (microseconds) orders files of one second, so UIDs follow ``messages``
            name = (
                f"{base}.M{i}P{os.getpid()}Q{next(self._file_seq)}.syncd-harness"
                f",S={size},W={wsize}:2,{letters}"
            )
            self._write_file(d / "cur" / name, lf, mtime)
            n += 1
        if not index:
            return []
        with self.imap(u) as m:
            _check(*m.select(_mailbox_arg(folder)), "SELECT")
            typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
            _check(typ, data, "UID FETCH")
            typ, data = m.uid("SEARCH", f"UID {uidnext}:*")
            _check(typ, data, "UID SEARCH")
            new = sorted(u for u in (int(x) for x in (data[0] or b"").split()) if u >= uidnext)
            if len(new) != n:
                raise HarnessError(
                    f"seeded {n} messages into {folder!r} but Dovecot shows {len(new)}"
                )
            if forwarded:
                uid_set = _seq_set(new[i] for i in forwarded)
                _check(*m.uid("STORE", uid_set, "+FLAGS.SILENT", "($Forwarded)"), "UID STORE")
        return new

    def seed_file(self, user: User | str, folder: str, source: Path) -> int:
        """Copy one message file (LF line ends) straight into the Maildir, in chunks (a
        message of hundreds of MB never in memory), and let Dovecot assign its UID."""
        u = self._u(user)
        d = self._ensure_folder(u, folder)
        uidnext = self.status(u, folder, ("UIDNEXT",))["UIDNEXT"]
        size = source.stat().st_size
        lines = 0
        with open(source, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                lines += chunk.count(b"\n")
        name = (f"{int(time.time())}.M0P{os.getpid()}Q{next(self._file_seq)}.syncd-harness"
                f",S={size},W={size + lines}:2,")
        target = d / "cur" / name
        shutil.copyfile(source, target)
        os.chown(target, self.mail_uid, self.mail_gid)
        with self.imap(u) as m:
            _check(*m.select(_mailbox_arg(folder)), "SELECT")
            typ, data = m.uid("SEARCH", f"UID {uidnext}:*")
            _check(typ, data, "UID SEARCH")
        new = [uid for uid in (int(x) for x in (data[0] or b"").split()) if uid >= uidnext]
        if len(new) != 1:
            raise HarnessError(f"seeded one file into {folder!r} but Dovecot shows {new}")
        return new[0]

    def deliver(
        self, user: User | str, folder: str, message: bytes, *, mtime: float | None = None
    ) -> Path:
        """Simulate an MTA delivery: tmp/ then rename into new/ (no index update)."""
        u = self._u(user)
        d = self._ensure_folder(u, folder)
        lf = message.replace(b"\r\n", b"\n")
        wsize = len(lf) + lf.count(b"\n")
        name = (
            f"{int(time.time())}.M{time.time_ns() // 1000 % 1_000_000}P{os.getpid()}"
            f"Q{next(self._file_seq)}.syncd-harness,S={len(lf)},W={wsize}"
        )
        tmp = d / "tmp" / name
        self._write_file(tmp, lf, mtime)
        final = d / "new" / name
        os.rename(tmp, final)
        return final

    # ------------------------------------------------------------------ log

    def log_mark(self) -> int:
        """The current length of the log, for ``log_text(since=...)``."""
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """Dovecot's log (errors, logins, disconnects), from byte offset ``since``."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, *, since: int = 0, timeout: float = 5.0) -> re.Match:
        """Wait until the log (from ``since``) matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            mo = re.search(pattern, self.log_text(since))
            if mo is not None:
                return mo
            if time.monotonic() > deadline:
                raise HarnessError(f"{pattern!r} did not appear in {self.log_file} in {timeout} s")
            time.sleep(0.05)


# Run by the watchdog process (python -I -S -c): argv = master PID, its start time, the title
# prefix of the instance's processes. Waits for EOF on stdin, then stops what is left.
def stop_watchdog(fd: int | None, watchdog: subprocess.Popen[bytes] | None) -> None:
    """End a process group's watchdog: close its pipe (EOF: it finds nothing left to stop and
    exits), then reap it (killed if it lingers)."""
    if fd is not None:
        os.close(fd)
    if watchdog is not None:
        try:
            watchdog.wait(10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


def start_or_fail(dc: Dovecot) -> Dovecot:
    """``dc`` started; if it cannot start, the test fails saying why (never a skip: `make
    deps` installs Dovecot)."""
    import pytest

    try:
        dc.start()
    except HarnessError as exc:
        pytest.fail(f"cannot start the test Dovecot: {exc}", pytrace=False)
    return dc


@contextlib.contextmanager
def running(dc: Dovecot) -> Iterator[Dovecot]:
    """``dc`` started (see start_or_fail) and stopped at the end: a fixture's body."""
    start_or_fail(dc)
    try:
        yield dc
    finally:
        dc.stop()


_WATCHDOG = r"""
import os, signal, sys, time

master, master_start, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
while os.read(0, 4096):
    pass


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if rest[0] in ("Z", "X") else int(rest[19])


def instance():
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if not f.read().startswith(marker):
                        continue
            except OSError:
                continue
            st = start_time(int(name))
            if st is not None:
                found[int(name)] = st
    return found


def kill(procs, sig):
    for pid, st in procs.items():
        if start_time(pid) == st:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def wait(procs, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if all(start_time(pid) != st for pid, st in procs.items()):
            return
        time.sleep(0.05)


for procs in ({master: master_start}, "the rest"):
    if procs == "the rest":  # orphaned sessions outlive the master
        procs = instance()
    kill(procs, signal.SIGTERM)
    wait(procs, 10)
    kill(procs, signal.SIGKILL)
"""


class _PortInUse(Exception):
    pass


def _group_id(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


_HEADER_PARSER = BytesHeaderParser()


def _message_id(header: bytes | None) -> str | None:
    if not header:
        return None
    value = _HEADER_PARSER.parsebytes(header).get("Message-ID")
    return " ".join(str(value).split()) if value else None


def _split_literals(text: bytes, lits: list[bytes]) -> tuple[bytes | None, bytes]:
    """Which literal is the Message-ID header and which the full body, by their order in text."""
    header: bytes | None = None
    body = b""
    # item names in order of appearance, each followed by a literal (or NIL/quoted)
    names = re.findall(rb"(BODY\[[^\]]*\])(?: \{\d+\})?", text)
    lit_iter = iter(lits)
    for name in names:
        try:
            lit = next(lit_iter)
        except StopIteration:
            break
        if name.startswith(b"BODY[HEADER"):
            header = lit
        else:
            body = lit
    return header, body


@atexit.register
def _stop_all() -> None:
    for dc in list(_instances):
        with contextlib.suppress(Exception):
            dc.stop()
