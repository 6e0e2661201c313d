"""Small scripted IMAP and POP3 servers on loopback, over TLS (the test Dovecot's certificate,
signed by its CA, so syncd verifies them as it would any server): by default they behave
well enough for a sync to work; a test overrides any reply to make them hostile.

Not a test module. No syncd imports: these servers are the adversary.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import imap_utf7_decode, imap_utf7_encode


@dataclass
class Msg:
    uid: int
    body: bytes  # CRLF
    flags: str = ""  # IMAP flags, e.g. "\\Seen"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Conn:
    """One client connection (the server side)."""

    def __init__(self, sock: ssl.SSLSocket, server: _Server) -> None:
        self.sock = sock
        self.server = server
        self.file = sock.makefile("rb")
        self.selected: str | None = None
        self.closed = False

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self, text: str | bytes) -> None:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")

    def stream(self, total: int, chunk: int = 1 << 20, byte: bytes = b"x") -> int:
        """Send up to ``total`` filler bytes; stop quietly when the client goes away."""
        block = byte * chunk
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                self.sock.sendall(block[:n])
                sent += n
        except OSError:
            pass
        return sent

    def hang(self) -> None:
        """Never answer (until the client closes or the server stops)."""
        while not self.server.stopping.is_set():
            try:
                self.sock.settimeout(0.2)
                if not self.sock.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


Handler = Callable[[Conn, str, str], bool]  # (conn, tag, args) -> handled?


class _Server:
    """Accept loop and TLS; subclasses speak the protocol."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.overrides: dict[str, Handler] = {}
        self.commands: list[str] = []  # every command line received (for assertions)
        self.connections = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hostile")
        self._conns: list[Conn] = []

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._thread.join(2)
        for conn in self._conns:
            conn.close()
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True,
                             name="hostile-conn").start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            # Replies go out line by line: without this, Nagle and delayed ACKs cost ~40 ms
            # per reply.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            with contextlib.suppress(OSError):
                raw.close()
            return
        conn = Conn(sock, self)
        self._conns.append(conn)
        try:
            self.session(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def hook(self, key: str, conn: Conn, tag: str, args: str) -> bool:
        handler = self.overrides.get(key)
        return bool(handler and handler(conn, tag, args))

    def session(self, conn: Conn) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# IMAP


_UIDSET = re.compile(r"^[0-9:*,]+$")


def _parse_uid_set(text: str, uids: list[int]) -> list[int]:
    top = max(uids, default=0)
    wanted: set[int] = set()
    for part in text.split(","):
        if ":" in part:
            a, b = part.split(":", 1)
            lo = top if a == "*" else int(a)
            hi = top if b == "*" else int(b)
            lo, hi = min(lo, hi), max(lo, hi)
            wanted |= {u for u in uids if lo <= u <= hi}
        else:
            wanted.add(top if part == "*" else int(part))
    return [u for u in uids if u in wanted]


def _unquote_mailbox(args: str) -> tuple[str, str]:
    """The first argument (quoted or atom), mUTF-7 decoded; and the rest."""
    args = args.lstrip()
    if args.startswith('"'):
        out, i = [], 1
        while i < len(args) and args[i] != '"':
            if args[i] == "\\":
                i += 1
            out.append(args[i])
            i += 1
        name, rest = "".join(out), args[i + 1:]
    else:
        name, _, rest = args.partition(" ")
    return imap_utf7_decode(name), rest


class ImapServer(_Server):
    """Folders: {name: [Msg, ...]}; LIST returns them with ``delimiter`` (raw LIST lines can
    be given instead in ``list_lines``)."""

    capability = "IMAP4rev1 UIDPLUS UNSELECT"

    def __init__(self, cert: Path, key: Path, folders: dict[str, list[Msg]] | None = None,
                 *, delimiter: str = "/", uidvalidity: int = 7) -> None:
        super().__init__(cert, key)
        self.folders: dict[str, list[Msg]] = folders if folders is not None else {"INBOX": []}
        self.delimiter = delimiter
        self.uidvalidity = uidvalidity
        self.list_lines: list[bytes] | None = None
        self.appended: list[tuple[str, bytes]] = []
        self.changes: list[str] = []  # STORE, EXPUNGE, CREATE, APPEND, MOVE, COPY lines
        self.before_tagged: list[bytes] = []  # unsolicited lines sent before every tagged OK

    def session(self, conn: Conn) -> None:
        if not self.hook("greeting", conn, "", ""):
            conn.line(f"* OK [CAPABILITY {self.capability}] hostile test server ready")
        while not conn.closed and not self.stopping.is_set():
            line = self._read_command(conn)
            if line is None:
                return
            tag, _, rest = line.partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            if command == "UID":
                sub, _, args = args.partition(" ")
                command = f"UID {sub.upper()}"
            self.commands.append(f"{command} {args}" if command != "LOGIN" else "LOGIN")
            self.dispatch(conn, tag, command, args)

    def _read_command(self, conn: Conn) -> str | None:
        """One command with its literals inlined (we answer '+' to synchronizing ones)."""
        parts: list[bytes] = []
        while True:
            raw = conn.file.readline(1 << 20)
            if not raw:
                return None
            raw = raw.rstrip(b"\r\n")
            match = re.search(rb"\{(\d+)(\+?)\}$", raw)
            if not match:
                parts.append(raw)
                return b"".join(parts).decode("utf-8", "replace")
            parts.append(raw[:match.start()])
            if not match.group(2):
                conn.line("+ go ahead")
            data = conn.file.read(int(match.group(1)))
            parts.append(b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
                         if len(data) < 200 else b"{literal}")
            if len(data) >= 200:
                self._last_literal = data

    def ok(self, conn: Conn, tag: str, text: str = "done") -> None:
        for line in self.before_tagged:
            conn.line(line)
        conn.line(f"{tag} OK {text}")

    def dispatch(self, conn: Conn, tag: str, command: str, args: str) -> None:
        key = {"UID FETCH": self._fetch_kind(args)}.get(command, command)
        if self.hook(key, conn, tag, args):
            return
        if command == "CAPABILITY":
            conn.line(f"* CAPABILITY {self.capability}")
            self.ok(conn, tag)
        elif command in ("LOGIN", "AUTHENTICATE"):
            self.ok(conn, tag, "logged in")
        elif command == "LOGOUT":
            conn.line("* BYE bye")
            self.ok(conn, tag)
            conn.close()
        elif command in ("NOOP", "CHECK", "ID"):
            self.ok(conn, tag)
        elif command == "LIST" or command == "LSUB":
            if self.list_lines is not None:
                for line in self.list_lines:
                    conn.line(line)
            else:
                for name in self.folders:
                    conn.line(f'* LIST (\\HasNoChildren) "{self.delimiter}" '
                              f"{_quote(imap_utf7_encode(name))}")
            self.ok(conn, tag)
        elif command == "STATUS":
            self.status(conn, tag, args)
        elif command in ("SELECT", "EXAMINE"):
            self.select(conn, tag, args)
        elif command in ("UNSELECT", "CLOSE"):
            conn.selected = None
            self.ok(conn, tag)
        elif command.startswith("UID FETCH") or command == "FETCH":
            self._fetch(conn, tag, args)
        elif command in ("UID SEARCH", "SEARCH"):
            msgs = self.folders.get(conn.selected or "", [])
            conn.line("* SEARCH " + " ".join(str(m.uid) for m in msgs))
            self.ok(conn, tag)
        elif command in ("CREATE", "UID STORE", "STORE", "UID EXPUNGE", "EXPUNGE", "UID MOVE",
                         "UID COPY", "SUBSCRIBE", "DELETE", "RENAME"):
            self.changes.append(f"{command} {args}")
            self.ok(conn, tag)
        elif command == "APPEND":
            self.changes.append(f"APPEND {args[:60]}")
            self.appended.append((args, getattr(self, "_last_literal", b"")))
            self.ok(conn, tag, "[APPENDUID 7 9999] appended")
        else:
            conn.line(f"{tag} BAD unknown command")

    @staticmethod
    def _uidnext(msgs: list[Msg]) -> int:
        return max((m.uid for m in msgs), default=0) + 1

    # --- SELECT and STATUS, shared by the scripted servers (limited.py, quirky.py) ---------
    def uidnext_of(self, name: str) -> int:
        return self._uidnext(self.folders[name])

    def select_codes(self, name: str) -> list[str]:
        """Response codes a server adds to SELECT (PERMANENTFLAGS, HIGHESTMODSEQ)."""
        return []

    def status_items(self, name: str) -> str:
        return (f"MESSAGES {len(self.folders[name])} UIDNEXT {self.uidnext_of(name)} "
                f"UIDVALIDITY {self.uidvalidity}")

    def _existing(self, conn: Conn, tag: str, args: str) -> str | None:
        """The folder named in ``args``; None (answered NO) if there is none."""
        name, _ = _unquote_mailbox(args)
        if name not in self.folders:
            conn.line(f"{tag} NO no such mailbox")
            return None
        return name

    def status(self, conn: Conn, tag: str, args: str) -> None:
        name = self._existing(conn, tag, args)
        if name is not None:
            conn.line(f"* STATUS {_quote(imap_utf7_encode(name))} ({self.status_items(name)})")
            self.ok(conn, tag)

    def select(self, conn: Conn, tag: str, args: str) -> None:
        name = self._existing(conn, tag, args)
        if name is None:
            return
        conn.selected = name
        conn.line(f"* {len(self.folders[name])} EXISTS")
        conn.line("* 0 RECENT")
        conn.line("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
        conn.line(f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid")
        conn.line(f"* OK [UIDNEXT {self.uidnext_of(name)}] next")
        for code in self.select_codes(name):
            conn.line(f"* OK [{code}] ok")
        self.ok(conn, tag, "[READ-WRITE] selected")

    @staticmethod
    def _fetch_kind(args: str) -> str:
        upper = args.upper()
        if "BODY.PEEK[]" in upper or "BODY[]" in upper:
            return "FETCH-BODY"
        if "BODY.PEEK[TEXT]" in upper:
            return "FETCH-TEXT"
        if "HEADER.FIELDS" in upper or "RFC822.SIZE" in upper:
            return "FETCH-META"
        return "FETCH-FLAGS"

    def messages_for(self, conn: Conn, uid_set: str) -> list[tuple[int, Msg]]:
        msgs = self.folders.get(conn.selected or "", [])
        uids = _parse_uid_set(uid_set, [m.uid for m in msgs]) if _UIDSET.match(uid_set) else []
        by_uid = {m.uid: (i + 1, m) for i, m in enumerate(msgs)}
        return [by_uid[u] for u in uids if u in by_uid]

    def _fetch(self, conn: Conn, tag: str, args: str) -> None:
        uid_set = args.split(" ", 1)[0]
        kind = self._fetch_kind(args)
        for seq, msg in self.messages_for(conn, uid_set):
            conn.send(self.fetch_response(seq, msg, kind))
        self.ok(conn, tag, "fetched")

    @staticmethod
    def fetch_response(seq: int, msg: Msg, kind: str) -> bytes:
        if kind == "FETCH-BODY":
            return (f'* {seq} FETCH (UID {msg.uid} INTERNALDATE "01-Jan-2024 08:00:00 +0000" '
                    f"BODY[] {{{len(msg.body)}}}\r\n").encode() + msg.body + b")\r\n"
        if kind == "FETCH-TEXT":  # the body after the header block (pairing by content)
            text = msg.body.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in msg.body else b""
            return (f"* {seq} FETCH (UID {msg.uid} BODY[TEXT] {{{len(text)}}}\r\n").encode() \
                + text + b")\r\n"
        if kind == "FETCH-META":
            header = b""
            for line in msg.body.split(b"\r\n"):
                if not line:
                    break
                if line.lower().startswith(b"message-id:"):
                    header = line + b"\r\n"
            header += b"\r\n"
            return (f"* {seq} FETCH (UID {msg.uid} RFC822.SIZE {len(msg.body)} "
                    f"BODY[HEADER.FIELDS (MESSAGE-ID)] {{{len(header)}}}\r\n").encode() \
                + header + b")\r\n"
        return f"* {seq} FETCH (UID {msg.uid} FLAGS ({msg.flags}))\r\n".encode()


# --------------------------------------------------------------------------------------------
# POP3


class Pop3Server(_Server):
    def __init__(self, cert: Path, key: Path, messages: list[bytes] | None = None) -> None:
        super().__init__(cert, key)
        self.messages = list(messages or [])
        self.deleted: set[int] = set()
        self.quit_deleted: list[bytes] = []  # messages deleted by a completed QUIT

    def session(self, conn: Conn) -> None:
        if not self.hook("greeting", conn, "", ""):
            conn.line("+OK hostile POP3 ready")
        pending: set[int] = set()
        while not conn.closed and not self.stopping.is_set():
            raw = conn.file.readline(4096)
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            command, _, args = line.partition(" ")
            command = command.upper()
            self.commands.append(command if command != "PASS" else "PASS")
            if self.hook(command, conn, "", args):
                continue
            live = [(i + 1, m) for i, m in enumerate(self.messages) if i + 1 not in pending]
            if command == "CAPA":
                conn.send("+OK\r\nUSER\r\nUIDL\r\n.\r\n")
            elif command in ("USER", "PASS", "NOOP", "RSET"):
                conn.line("+OK")
            elif command == "STAT":
                conn.line(f"+OK {len(live)} {sum(len(m) for _, m in live)}")
            elif command == "LIST":
                conn.send("+OK\r\n" + "".join(f"{n} {len(m)}\r\n" for n, m in live) + ".\r\n")
            elif command == "UIDL":
                conn.send("+OK\r\n" + "".join(
                    f"{n} u-{hashlib.sha1(m).hexdigest()[:16]}\r\n" for n, m in live)
                    + ".\r\n")
            elif command == "RETR":
                n = int(args)
                body = self.messages[n - 1]
                stuffed = re.sub(rb"(?m)^\.", b"..", body)
                if not stuffed.endswith(b"\r\n"):
                    stuffed += b"\r\n"
                conn.send(b"+OK\r\n" + stuffed + b".\r\n")
            elif command == "DELE":
                pending.add(int(args))
                conn.line("+OK deleted")
            elif command == "QUIT":
                self.quit_deleted += [self.messages[n - 1] for n in sorted(pending)]
                self.messages = [m for i, m in enumerate(self.messages) if i + 1 not in pending]
                conn.line("+OK bye")
                conn.close()
                return
            else:
                conn.line("-ERR unknown")
