"""A scripted IMAP server that keeps state (flags, APPENDs, \\Deleted, EXPUNGE) and cannot keep
every flag, the way real servers fail (notes/other-imap-servers.md):

- ``refuse_keywords``: any keyword in STORE or APPEND is ``BAD ... Unrecognized flag``
  (GNU mailutils imap4d);
- ``drop_keywords``: keywords are accepted and silently not kept (pymap);
- ``append_ignores_flags``: APPEND stores no flags at all (mailutils with Maildir);
- ``permanentflags``: the PERMANENTFLAGS text SELECT sends (None: not sent).

No UIDPLUS by default (mailutils has none): UIDs of APPENDs are found by SEARCH HEADER
Message-ID, and a plain EXPUNGE removes every message marked \\Deleted. Not a test module.
"""

from __future__ import annotations

import re

from tests.faults.hostile import Conn, ImapServer, Msg, _unquote_mailbox

_SYSTEM = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"}


class LimitedImapServer(ImapServer):
    capability = "IMAP4rev1 UNSELECT LITERAL+"

    def __init__(self, *args: object, refuse_keywords: bool = False,
                 drop_keywords: bool = False, append_ignores_flags: bool = False,
                 permanentflags: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.refuse_keywords = refuse_keywords
        self.drop_keywords = drop_keywords
        self.append_ignores_flags = append_ignores_flags
        self.permanentflags = permanentflags
        self.refused: list[str] = []  # commands answered BAD for a keyword

    # --- flags ------------------------------------------------------------------------------
    def _has_keyword(self, flags: list[str]) -> bool:
        return any(f.lower() not in _SYSTEM for f in flags)

    def _kept(self, flags: list[str]) -> list[str]:
        return [f for f in flags if f.lower() in _SYSTEM or not self.drop_keywords]

    @staticmethod
    def _flag_list(text: str) -> list[str]:
        match = re.search(r"\(([^)]*)\)", text)
        return match.group(1).split() if match else []

    def dispatch(self, conn: Conn, tag: str, command: str, args: str) -> None:
        if command == "UID STORE":
            self._store(conn, tag, args)
        elif command == "APPEND":
            self._append(conn, tag, args)
        elif command == "UID SEARCH":
            self._search(conn, tag, args)
        elif command == "EXPUNGE":
            self._expunge(conn, tag)
        elif command in ("UID EXPUNGE", "UID MOVE"):
            conn.line(f"{tag} BAD unknown command")
        else:
            super().dispatch(conn, tag, command, args)

    def _msgs(self, conn: Conn) -> list[Msg]:
        return self.folders.get(conn.selected or "", [])

    def select_codes(self, name: str) -> list[str]:
        return [] if self.permanentflags is None else [f"PERMANENTFLAGS ({self.permanentflags})"]

    def _store(self, conn: Conn, tag: str, args: str) -> None:
        uid_set, item, rest = [*args.split(" ", 2), "", ""][:3]
        flags = self._flag_list(rest)
        self.changes.append(f"UID STORE {args}")
        if self.refuse_keywords and self._has_keyword(flags):
            self.refused.append(f"UID STORE {args}")
            conn.line(f"{tag} BAD UID STORE Unrecognized flag")
            return
        kept = self._kept(flags)
        for seq, msg in self.messages_for(conn, uid_set):
            have = msg.flags.split()
            if item.upper().startswith("+"):
                have += [f for f in kept if f.lower() not in {h.lower() for h in have}]
            elif item.upper().startswith("-"):
                gone = {f.lower() for f in kept}
                have = [h for h in have if h.lower() not in gone]
            else:
                have = kept
            msg.flags = " ".join(have)
            if ".SILENT" not in item.upper():
                conn.line(f"* {seq} FETCH (UID {msg.uid} FLAGS ({msg.flags}))")
        self.ok(conn, tag, "stored")

    def _append(self, conn: Conn, tag: str, args: str) -> None:
        name, rest = _unquote_mailbox(args)
        flags = self._flag_list(rest) if rest.lstrip().startswith("(") else []
        self.changes.append(f"APPEND {args[:60]}")
        if self.refuse_keywords and self._has_keyword(flags):
            self.refused.append(f"APPEND {flags}")
            conn.line(f"{tag} BAD APPEND Unrecognized flag")
            return
        body = getattr(self, "_last_literal", b"")
        self._last_literal = b""
        kept = [] if self.append_ignores_flags else self._kept(flags)
        self.folders.setdefault(name, []).append(
            Msg(self.uidnext_of(name), body, " ".join(kept)))
        self.appended.append((args, body))
        if conn.selected == name:
            conn.line(f"* {len(self.folders[name])} EXISTS")
        self.ok(conn, tag, "appended")

    def _search(self, conn: Conn, tag: str, args: str) -> None:
        msgs = self._msgs(conn)
        upper = args.upper()
        if upper.startswith("DELETED"):
            found = [m.uid for m in msgs if "\\deleted" in m.flags.lower()]
        elif upper.startswith("HEADER MESSAGE-ID"):
            wanted = args.split(" ", 2)[2].strip().strip('"').encode()
            found = [m.uid for m in msgs if wanted in m.body]
        else:
            found = [m.uid for m in msgs]
        conn.line("* SEARCH" + "".join(f" {uid}" for uid in found))
        self.ok(conn, tag)

    def _expunge(self, conn: Conn, tag: str) -> None:
        msgs = self._msgs(conn)
        self.changes.append("EXPUNGE")
        for seq in range(len(msgs), 0, -1):
            if "\\deleted" in msgs[seq - 1].flags.lower():
                del msgs[seq - 1]
                conn.line(f"* {seq} EXPUNGE")
        self.ok(conn, tag, "expunged")
