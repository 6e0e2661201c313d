"""The floor: the fastest first sync this machine and this Dovecot allow (issue 21).

    python -m bench.floor --port P --ca CA --user U --password PW --root DIR
                          [--connections 3] [--write] [--since 1-Jan-2026] [--status]

No sync engine, no state, no flags: per folder one ``UID FETCH 1:* BODY.PEEK[]`` (the whole
folder in one command, so the server never waits for the client to ask), over the same kind of
connection syncd uses (implicit TLS, certificate verified against ``--ca``), with as many
connections as syncd's default (3; the largest folders first, one folder per connection at a
time; the other two open and log in while the first lists, which then fetches too). The reply
is split into literals and, without ``--write``, dropped: the read floor, TLS and the server
only. With ``--write`` each message is written the way syncd writes a
download group: CRLF to LF, staged in tmp/ without fsync, then per group (200 messages or
2 MiB, syncd's DOWNLOAD_COMMIT_*) one syncfs(2), the renames into new/, one fsync of new/.
With ``--since`` (a partial mirror's floor, issue 18) each folder is first asked
``UID SEARCH SINCE`` and only the UIDs it names are fetched, as syncd does under ``max_age``.
With ``--status`` it is a no-change sync's floor instead: log in, one LIST-STATUS (messages,
UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ of every folder: what a CONDSTORE client must know to
tell that nothing changed), LOGOUT sent and not waited for; no state read, nothing
compared, nothing written.

Only the standard library, so that it starts in ~20 ms; run by bench/run.py as a tool beside
syncd and mbsync.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import sys
from typing import TYPE_CHECKING

# Imported where used: the --status floor (a no-change sync's) starts without them.
if TYPE_CHECKING:
    import multiprocessing
    from pathlib import Path

GROUP_COUNT = 200  # syncd.imap.download.DOWNLOAD_COMMIT_COUNT
GROUP_BYTES = 2 * 1024 * 1024  # syncd.imap.download.DOWNLOAD_COMMIT_BYTES
RECV = 1 << 20

_LITERAL = re.compile(rb"\{(\d+)\}$")
_LIST = re.compile(rb'^\* LIST \(([^)]*)\) (?:NIL|"[^"]*") (.+)$')
_STATUS_MESSAGES = re.compile(rb"MESSAGES (\d+)")


class Connection:
    """One IMAPS connection with a buffered reader of lines and literals."""

    def __init__(self, host: str, port: int, ca: str) -> None:
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection((host, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buf = bytearray()
        self.pos = 0
        self.tag = 0
        self.line()  # greeting

    def _fill(self) -> None:
        data = self.sock.recv(RECV)
        if not data:
            raise EOFError("the server closed the connection")
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                text = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return text
            self._fill()

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def send(self, command: str) -> bytes:
        self.tag += 1
        tag = b"f%d" % self.tag
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        return tag

    def command(self, command: str) -> list[bytes]:
        """Send and read to the tagged reply; the untagged lines (literals inlined)."""
        tag = self.send(command)
        lines = []
        while True:
            text = self.line()
            if text.startswith(tag + b" "):
                if not text.startswith(tag + b" OK"):
                    raise RuntimeError(f"{command.split()[0]}: {text.decode(errors='replace')}")
                return lines
            literal = _LITERAL.search(text)
            if literal is not None:
                text += self.take(int(literal.group(1))) + self.line()
            lines.append(text)

    def search_since(self, since: str) -> str | None:
        """The UID set `UID SEARCH SINCE` names in the selected folder (None: none)."""
        uids = [int(word) for text in self.command(f"UID SEARCH SINCE {since}")
                if text.startswith(b"* SEARCH") for word in text.split()[2:]]
        return uid_set(uids) if uids else None

    def fetch_all(self, sink: Sink | None, uids: str = "1:*") -> int:
        """UID FETCH <uids> BODY.PEEK[] of the selected folder; each body to ``sink``."""
        tag = self.send(f"UID FETCH {uids} BODY.PEEK[]")
        count = 0
        while True:
            text = self.line()
            if text.startswith(tag + b" "):
                if not text.startswith(tag + b" OK"):
                    raise RuntimeError(f"FETCH: {text.decode(errors='replace')}")
                return count
            literal = _LITERAL.search(text)
            if literal is None:
                continue
            body = self.take(int(literal.group(1)))
            self.line()  # the rest of the FETCH response: ")"
            count += 1
            if sink is not None:
                sink.add(body)

    def login(self, user: str, password: str) -> None:
        self.command(f'LOGIN "{user}" "{password}"')


class Sink:
    """A folder's Maildir, written in syncd's group commits."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.tmp, self.new = root / "tmp", root / "new"
        for d in (self.tmp, self.new, root / "cur"):
            d.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.staged: list[str] = []
        self.staged_bytes = 0
        self.n = 0
        import ctypes

        self._get_errno = ctypes.get_errno
        self._syncfs = ctypes.CDLL(None, use_errno=True).syncfs

    def add(self, body: bytes) -> None:
        # syncd's crlf_to_lf (syncd/store/maildir.py): one-byte replaces go through memchr,
        # several times faster than replace(b"\r\n", b"\n"); checked, else the slow way.
        data = body.replace(b"\r", b"")
        if len(data) != len(body) and data.replace(b"\n", b"\r\n") != body:
            data = body.replace(b"\r\n", b"\n")
        self.n += 1
        name = f"{self.prefix}.{self.n}"
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.staged.append(name)
        self.staged_bytes += len(data)
        if len(self.staged) >= GROUP_COUNT or self.staged_bytes >= GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.staged:
            return
        fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if self._syncfs(fd) != 0:
                raise OSError(self._get_errno(), "syncfs")
            for name in self.staged:
                os.rename(self.tmp / name, self.new / name)
        finally:
            os.close(fd)
        fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.staged, self.staged_bytes = [], 0


def uid_set(uids: list[int]) -> str:
    """1,2,3,7 -> 1:3,7"""
    ranges: list[list[int]] = []
    for uid in sorted(uids):
        if ranges and uid == ranges[-1][1] + 1:
            ranges[-1][1] = uid
        else:
            ranges.append([uid, uid])
    return ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)


def list_folders(conn: Connection) -> list[tuple[str, int]]:
    """(name as on the wire, messages) of every selectable folder, largest first."""
    found = []
    for text in conn.command('LIST "" "*" RETURN (STATUS (MESSAGES))'):
        listed = _LIST.match(text)
        if listed is not None and b"\\noselect" not in listed.group(1).lower():
            found.append([listed.group(2).decode(), 0])
        status = _STATUS_MESSAGES.search(text) if text.startswith(b"* STATUS") else None
        if status is not None and found:
            found[-1][1] = int(status.group(1))
    return sorted(((name, n) for name, n in found), key=lambda f: -f[1])


def status_only(conn: Connection) -> int:
    listed = conn.command('LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY '
                          'HIGHESTMODSEQ))')
    conn.send("LOGOUT")  # not waited for: nothing depends on the reply (syncd does the same)
    statuses = sum(1 for text in listed if text.startswith(b"* STATUS"))
    print(f"floor: status of {statuses} folders", file=sys.stderr)
    return 0


def work(args: argparse.Namespace, conn: Connection, folders: multiprocessing.Queue) -> int:
    """Take folders from the queue until its None and fetch each on ``conn``; the count."""
    from pathlib import Path

    count = 0
    while True:
        name = folders.get()
        if name is None:
            break
        conn.command(f"EXAMINE {name}")
        sink = None
        if args.write:
            local = name.strip('"') or "INBOX"
            sink = Sink(Path(args.root) / local, f"{os.getpid()}")
        uids = conn.search_since(args.since) if args.since else "1:*"
        if uids is not None:
            count += conn.fetch_all(sink, uids)
        if sink is not None:
            sink.flush()
    conn.send("LOGOUT")  # not waited for
    return count


def worker(args: argparse.Namespace, folders: multiprocessing.Queue, done: multiprocessing.Queue
           ) -> None:
    conn = Connection(args.host, args.port, args.ca)
    conn.login(args.user, args.password)
    done.put(work(args, conn, folders))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--root", required=True, help="where --write puts the Maildir folders")
    p.add_argument("--connections", type=int, default=3)
    p.add_argument("--write", action="store_true")
    p.add_argument("--since", help="fetch only what UID SEARCH SINCE this date names "
                   "(an IMAP date: 1-Jan-2026)")
    p.add_argument("--status", action="store_true", help="the no-change floor: LIST-STATUS only")
    args = p.parse_args(argv)
    if args.status:
        conn = Connection(args.host, args.port, args.ca)
        conn.login(args.user, args.password)
        return status_only(conn)
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    todo: multiprocessing.Queue = ctx.Queue()
    done: multiprocessing.Queue = ctx.Queue()
    # The other connections open and log in while this one lists; this one then works too.
    procs = [ctx.Process(target=worker, args=(args, todo, done))
             for _ in range(max(0, args.connections - 1))]
    for proc in procs:
        proc.start()
    conn = Connection(args.host, args.port, args.ca)
    conn.login(args.user, args.password)
    folders = list_folders(conn)
    for name, _ in folders:
        todo.put(name)
    for _ in range(len(procs) + 1):
        todo.put(None)
    total = work(args, conn, todo)
    for proc in procs:
        proc.join()
    failed = [proc.exitcode for proc in procs if proc.exitcode != 0]
    total += sum(done.get() for _ in range(len(procs) - len(failed)))
    print(f"floor: {total} messages from {len(folders)} folders"
          + (f"; {len(failed)} worker(s) failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
