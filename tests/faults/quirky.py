"""Scripted servers that behave as big providers do where the RFCs leave room (issue 15,
"Provider quirks that peers had to learn"), built on the hostile ImapServer:

- ``CyrusLike``: CONDSTORE/QRESYNC with Cyrus's reading of ``UID FETCH 1:* (FLAGS)
  (CHANGEDSINCE n VANISHED)``: "*" is the highest UID still present, so an expunged message
  above it is not reported VANISHED (an explicit ``1:<uidnext-1>`` is).
- ``ExchangeLike``: no CAPABILITY in the greeting's or the LOGIN's OK, and fewer capabilities
  before LOGIN than after (syncd must ask again after LOGIN); ``throttle(n, ms)``: the next n
  commands after LOGIN get ``NO Request is throttled. Suggested Backoff Time: <ms>
  milliseconds`` and the connection is dropped; ``append_line_limit``: an APPEND whose
  message has a line longer than that gets ``BAD Command Error. 10``; ``size_skew``: every
  RFC822.SIZE is off by that much (Exchange reports sizes that are not the exact ones).
- ``GmailLike``: ``alert(n)``: LOGIN answers ``NO [ALERT] Account exceeded command or bandwidth
  limits. (Failure)`` n times.

Not a test module. No syncd imports.
"""

from __future__ import annotations

import re
import threading

from tests.faults.hostile import Conn, ImapServer, Msg, _quote, _unquote_mailbox
from tests.support.dovecot import imap_utf7_encode

MAX_UID = 4294967295


class CyrusLike(ImapServer):
    capability = "IMAP4rev1 UIDPLUS UNSELECT ENABLE CONDSTORE QRESYNC"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.modseq: dict[tuple[str, int], int] = {}  # (folder, uid) -> modseq of last change
        self.expunged: dict[str, dict[int, int]] = {}  # folder -> {uid: modseq of expunge}
        self.highest = 1
        self.uidnext: dict[str, int] = {name: self._uidnext(msgs)
                                        for name, msgs in self.folders.items()}
        self.changedsince_sets: list[str] = []  # UID sets of CHANGEDSINCE fetches
        for name, msgs in self.folders.items():
            for m in msgs:
                self.modseq[(name, m.uid)] = self.highest

    # --- server-side changes ------------------------------------------------------------
    def server_expunge(self, folder: str, uid: int) -> None:
        self.highest += 1
        self.folders[folder] = [m for m in self.folders[folder] if m.uid != uid]
        self.expunged.setdefault(folder, {})[uid] = self.highest

    def server_append(self, folder: str, body: bytes) -> int:
        self.highest += 1
        uid = self.uidnext[folder]
        self.uidnext[folder] = uid + 1
        self.folders[folder].append(Msg(uid, body))
        self.modseq[(folder, uid)] = self.highest
        return uid

    # --- protocol -----------------------------------------------------------------------
    def dispatch(self, conn: Conn, tag: str, command: str, args: str) -> None:
        if command == "ENABLE":
            conn.line("* ENABLED " + " ".join(w for w in args.upper().split()
                                              if w in ("CONDSTORE", "QRESYNC")))
            self.ok(conn, tag)
        elif command == "STATUS":
            name, _ = _unquote_mailbox(args)
            msgs = self.folders.get(name)
            if msgs is None:
                conn.line(f"{tag} NO no such mailbox")
                return
            conn.line(f"* STATUS {_quote(imap_utf7_encode(name))} (MESSAGES {len(msgs)} "
                      f"UIDNEXT {self.uidnext[name]} UIDVALIDITY {self.uidvalidity} "
                      f"HIGHESTMODSEQ {self.highest})")
            self.ok(conn, tag)
        elif command in ("SELECT", "EXAMINE"):
            name, _ = _unquote_mailbox(args)
            msgs = self.folders.get(name)
            if msgs is None:
                conn.line(f"{tag} NO no such mailbox")
                return
            conn.selected = name
            conn.line(f"* {len(msgs)} EXISTS")
            conn.line("* 0 RECENT")
            conn.line("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
            conn.line(f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid")
            conn.line(f"* OK [UIDNEXT {self.uidnext[name]}] next")
            conn.line(f"* OK [HIGHESTMODSEQ {self.highest}] modseq")
            self.ok(conn, tag, "[READ-WRITE] selected")
        elif command == "UID FETCH" and "CHANGEDSINCE" in args.upper():
            self._fetch_changed(conn, tag, args)
        else:
            super().dispatch(conn, tag, command, args)

    def _fetch_changed(self, conn: Conn, tag: str, args: str) -> None:
        uid_set = args.split(" ", 1)[0]
        self.changedsince_sets.append(uid_set)
        since = int(re.search(r"CHANGEDSINCE (\d+)", args, re.IGNORECASE).group(1))
        folder = conn.selected or ""
        msgs = self.folders.get(folder, [])
        top = max((m.uid for m in msgs), default=0)  # Cyrus: "*" = the highest UID present
        ranges = []
        for part in uid_set.split(","):
            lo, _, hi = part.partition(":")
            lo_n = top if lo == "*" else int(lo)
            hi_n = lo_n if not hi else (top if hi == "*" else int(hi))
            ranges.append((min(lo_n, hi_n), max(lo_n, hi_n)))

        def inside(uid: int) -> bool:
            return any(lo <= uid <= hi for lo, hi in ranges)

        if "VANISHED" in args.upper():
            gone = sorted(u for u, ms in self.expunged.get(folder, {}).items()
                          if ms > since and inside(u))
            if gone:
                conn.line("* VANISHED (EARLIER) " + ",".join(map(str, gone)))
        for seq, m in enumerate(msgs, start=1):
            ms = self.modseq.get((folder, m.uid), 1)
            if ms > since and inside(m.uid):
                conn.line(f"* {seq} FETCH (UID {m.uid} FLAGS ({m.flags}) MODSEQ ({ms}))")
        self.ok(conn, tag, "fetched")


class ExchangeLike(ImapServer):
    """Exchange Online's capabilities: none announced in the greeting or LOGIN's OK."""

    capability = ("IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT "
                  "CHILDREN IDLE NAMESPACE LITERAL+")
    before_login = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR ID CHILDREN LITERAL+"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.throttled_left = 0
        self.backoff_ms = 0
        self.throttled_at: list[float] = []  # when each throttling reply went out (monotonic)
        self.append_line_limit: int | None = None
        self.logged_in: set[int] = set()  # id(conn)
        self.capability_after_login = 0  # CAPABILITY commands sent after LOGIN
        self.size_skew = 0  # added to every RFC822.SIZE (Exchange's are not exact)
        # UIDs whose body FETCH is refused, as Exchange refuses calendar and contact items:
        # the whole UID FETCH that names one of them gets a tagged NO.
        self.unfetchable: set[int] = set()
        self.body_fetches: list[str] = []  # UID sets of the body FETCHes asked

    def throttle(self, n: int, ms: int) -> None:
        with self._lock:
            self.throttled_left, self.backoff_ms = n, ms

    def session(self, conn: Conn) -> None:
        self.overrides.setdefault(
            "greeting", lambda c, _t, _a: c.line("* OK The Microsoft Exchange IMAP4 service "
                                                 "is ready.") or True)
        super().session(conn)

    def dispatch(self, conn: Conn, tag: str, command: str, args: str) -> None:
        import time

        after_login = id(conn) in self.logged_in
        if after_login and command not in ("LOGOUT",):
            with self._lock:
                throttle = self.throttled_left > 0
                if throttle:
                    self.throttled_left -= 1
            if throttle:
                self.throttled_at.append(time.monotonic())
                conn.line(f"{tag} NO Request is throttled. Suggested Backoff Time: "
                          f"{self.backoff_ms} milliseconds")
                conn.close()
                return
        if command == "CAPABILITY":
            if after_login:
                self.capability_after_login += 1
            conn.line(f"* CAPABILITY {self.capability if after_login else self.before_login}")
            self.ok(conn, tag, "CAPABILITY completed.")
        elif command == "LOGIN":
            self.logged_in.add(id(conn))
            self.ok(conn, tag, "LOGIN completed.")
        elif command == "UID FETCH" and self._fetch_kind(args) == "FETCH-BODY":
            uid_set = args.split(" ", 1)[0]
            self.body_fetches.append(uid_set)
            if any(m.uid in self.unfetchable for _, m in self.messages_for(conn, uid_set)):
                conn.line(f"{tag} NO The requested message could not be converted to an "
                          "RFC-822 compatible format.")
                return
            super().dispatch(conn, tag, command, args)
        elif command == "UID FETCH" and "HEADER.FIELDS (SUBJECT)" in args.upper():
            self._fetch_subjects(conn, tag, args.split(" ", 1)[0])
        elif command == "APPEND" and self.append_line_limit is not None:
            data = getattr(self, "_last_literal", b"")
            if any(len(line) > self.append_line_limit for line in data.split(b"\n")):
                conn.line(f"{tag} BAD Command Error. 10")
                return
            super().dispatch(conn, tag, command, args)
        else:
            super().dispatch(conn, tag, command, args)


    def _fetch_subjects(self, conn: Conn, tag: str, uid_set: str) -> None:
        for seq, msg in self.messages_for(conn, uid_set):
            subject = b"".join(line + b"\r\n" for line in msg.body.split(b"\r\n")
                               if line.lower().startswith(b"subject:")) + b"\r\n"
            conn.send(f"* {seq} FETCH (UID {msg.uid} BODY[HEADER.FIELDS (SUBJECT)] "
                      f"{{{len(subject)}}}\r\n".encode() + subject + b")\r\n")
        self.ok(conn, tag, "FETCH completed.")

    def fetch_response(self, seq: int, msg: Msg, kind: str) -> bytes:  # type: ignore[override]
        data = ImapServer.fetch_response(seq, msg, kind)
        if self.size_skew and kind == "FETCH-META":
            data = re.sub(rb"RFC822\.SIZE (\d+)",
                          lambda m: b"RFC822.SIZE %d" % (int(m.group(1)) + self.size_skew), data)
        return data


class GmailLike(ImapServer):
    capability = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alerts_left = 0
        self.logins = 0

    def alert(self, n: int) -> None:
        self.alerts_left = n

    def dispatch(self, conn: Conn, tag: str, command: str, args: str) -> None:
        if command == "LOGIN":
            self.logins += 1
            if self.alerts_left > 0:
                self.alerts_left -= 1
                conn.line(f"{tag} NO [ALERT] Account exceeded command or bandwidth limits. "
                          "(Failure)")
                return
        super().dispatch(conn, tag, command, args)
