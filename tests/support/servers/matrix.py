"""One user of a matrix server with a syncd account for it: the config, running `syncd sync`,
reading the local Maildir, and the exact comparison of Maildir and server.

Compared: every folder on each side (the same set of folders), and in each the messages as
(content, flags), content with LF line ends and without the header fields the server adds by
itself (mailutils), flags as Maildir letters (S R F T D P). Failure messages name the server,
the folder and the messages (by Subject) only on one side or duplicated.

Imports syncd only when a sync runs (tests.support.syncd_env.run_cli: syncd's own main()).
"""

from __future__ import annotations

import email.parser
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import make_message
from tests.support.servers.base import ImapServer, ServerUser, normalise_body

IMAP_TO_LETTER = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T",
                  "\\draft": "D", "$forwarded": "P"}
LETTER_TO_IMAP = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted",
                  "D": "\\Draft", "P": "$Forwarded"}
_HEADERS = email.parser.BytesHeaderParser()
DATE = "01-Jan-2024 08:00:00 +0000"

Item = tuple[bytes, str]  # (normalised content, flag letters)


def letters(flags: frozenset[str] | set[str]) -> str:
    return "".join(sorted(IMAP_TO_LETTER[f.lower()] for f in flags
                          if f.lower() in IMAP_TO_LETTER))


def info_letters(name: str) -> str:
    if ":2," not in name:
        return ""
    return "".join(sorted(c for c in name.split(":2,", 1)[1] if c in "DFPRST"))


def subject(content: bytes) -> str:
    return str(_HEADERS.parsebytes(content).get("Subject", "?"))


def message_id(content: bytes) -> str:
    return str(_HEADERS.parsebytes(content).get("Message-ID", "")).strip()


@dataclass
class Matrix:
    server: ImapServer
    user: ServerUser
    root: Path
    config: Path
    maildir: Path
    state_dir: Path
    name: str = "mx"

    # ------------------------------------------------------------------ set-up

    @classmethod
    def create(cls, server: ImapServer, tmp_path: Path, *, extra: str = "") -> Matrix:
        user = server.add_user()
        mx = cls(server=server, user=user, root=tmp_path, config=tmp_path / "config.yaml",
                 maildir=tmp_path / "Mail" / "mx", state_dir=tmp_path / "state")
        mx.write_config(extra)
        return mx

    def write_config(self, extra: str = "") -> None:
        s = self.server
        tls = (f"    tls: implicit\n    tls_ca_file: {s.ca_file}\n" if s.tls == "implicit"
               else "    tls: none\n    allow_insecure: true\n")
        self.config.write_text(
            "general:\n"
            f"  maildir_root: {self.root / 'Mail'}\n"
            f"  state_dir: {self.state_dir}\n"
            "accounts:\n"
            f"  {self.name}:\n"
            "    protocol: imap\n"
            "    host: 127.0.0.1\n"
            f"    port: {s.syncd_port}\n"
            f"{tls}"
            f"    username: {self.user.login}\n"
            f'    password_command: "printf %s {self.user.password}"\n'
            "    layout: verbatim\n"
            f"{extra}")
        self.config.chmod(0o600)

    def seed(self) -> None:
        """INBOX: 4 messages (flags S, SR, none, F); Archive: 2 (S, none)."""
        s, u = self.server, self.user
        for i, flags in enumerate((["\\Seen"], ["\\Seen", "\\Answered"], [], ["\\Flagged"])):
            s.append(u, "INBOX", make_message(i), flags, DATE)
        s.create_folder(u, "Archive")
        for i, flags in enumerate((["\\Seen"], [])):
            s.append(u, "Archive", make_message(100 + i, folder="Archive"), flags, DATE)

    # ------------------------------------------------------------------ syncd

    def sync(self, *args: str, expect: int = 0) -> str:
        """`syncd --config CFG sync` (syncd's main() in this process); its exit status must be
        ``expect``. Returns stdout+stderr."""
        from tests.support.syncd_env import run_cli

        rc, out, err = run_cli("--config", str(self.config), "sync", *args)
        text = out + err
        assert rc == expect, (f"[{self.server.kind}] syncd sync exited {rc}, wanted {expect}:\n"
                              f"{text.strip()[-3000:]}")
        return text

    # ------------------------------------------------------------------ local side

    def folder_dir(self, folder: str) -> Path:
        """Where a logical folder lives locally: ``<maildir>/A/B`` for "A/B" (layout verbatim,
        no namespace prefix). Where only the prefixed directory exists (``INBOX/Archive`` for
        the server's ``INBOX.Archive``: syncd before issue 15's namespace fix), that one, so
        each scenario still tests what it is about; test_first_sync_then_idempotent and
        assert_local_names() hold syncd to the names without the prefix."""
        expected = self.maildir.joinpath(*folder.split("/"))
        legacy = self._prefixed_dir(folder)
        if not expected.is_dir() and legacy is not None and legacy.is_dir():
            return legacy
        return expected

    def _prefixed_dir(self, folder: str) -> Path | None:
        prefix, delim = self.server.namespace(self.user)
        if not prefix or folder.upper() == "INBOX":
            return None
        return self.maildir.joinpath(*self.server.server_name(self.user, folder).split(delim))

    def local_folders(self, *, strict: bool = False) -> list[str]:
        """The local folders (directories with cur/ and new/) as logical names; unless
        ``strict``, a prefixed directory (see folder_dir) counts as its logical folder."""
        found: list[str] = []
        if not self.maildir.is_dir():
            return found
        legacy: dict[str, str] = {}
        if not strict:
            for f in self.server.folders(self.user):
                d = self._prefixed_dir(f)
                if d is not None:
                    legacy["/".join(d.relative_to(self.maildir).parts)] = f
        for dirpath, dirnames, _ in os.walk(self.maildir):
            if {"cur", "new"} <= set(dirnames):
                rel = "/".join(Path(dirpath).relative_to(self.maildir).parts)
                found.append(legacy.get(rel, rel))
            dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
        return sorted(found)

    def assert_local_names(self) -> None:
        """Every server folder has its local directory under its logical name (no namespace
        prefix, "/" for the server's delimiter), and no local folder is extra."""
        remote = sorted(self.server.folders(self.user))
        local = self.local_folders(strict=True)
        prefix, delim = self.server.namespace(self.user)
        assert local == remote, (
            f"[{self.server.kind}] local folder directories {local} are not the server's "
            f"folders {remote} (server namespace prefix {prefix!r}, delimiter {delim!r}: "
            "folders must show locally without the prefix, issue 15 defect 2)")

    def local_files(self, folder: str) -> list[Path]:
        d = self.folder_dir(folder)
        out = []
        for sub in ("cur", "new"):
            if (d / sub).is_dir():
                out += sorted(p for p in (d / sub).iterdir() if not p.name.startswith("."))
        return out

    def local_items(self, folder: str, ignore: str = "") -> Counter[Item]:
        return Counter((normalise_body(p.read_bytes(), self.server.added_headers),
                        "".join(c for c in info_letters(p.name) if c not in ignore))
                       for p in self.local_files(folder))

    def local_file(self, folder: str, mid_or_subject: str) -> Path:
        for p in self.local_files(folder):
            data = p.read_bytes()
            if mid_or_subject in (message_id(data), subject(data)):
                return p
        raise AssertionError(f"[{self.server.kind}] no local file {mid_or_subject!r} in {folder}")

    def local_keys(self, folder: str) -> set[str]:
        """Maildir keys (the file names before ':2,'): a re-download gives new ones."""
        return {p.name.split(":2,", 1)[0] for p in self.local_files(folder)}

    def set_local_flags(self, path: Path, new_letters: str) -> Path:
        """What mutt does to change flags: rename into cur/ with the new info suffix."""
        key = path.name.split(":2,", 1)[0]
        target = path.parent.parent / "cur" / f"{key}:2,{''.join(sorted(new_letters))}"
        os.rename(path, target)
        return target

    def write_local(self, folder: str, content: bytes, flags: str = "S") -> Path:
        """A new message as mutt saves one: tmp/ then rename into cur/ (LF line ends)."""
        d = self.folder_dir(folder)
        for sub in ("cur", "new", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.M{os.getpid()}P{len(os.listdir(d / 'tmp'))}.mutthost"
        tmp = d / "tmp" / name
        tmp.write_bytes(content.replace(b"\r\n", b"\n"))
        final = d / "cur" / f"{name}:2,{flags}"
        os.rename(tmp, final)
        return final

    # ------------------------------------------------------------------ server side

    def server_items(self, folder: str, ignore: str = "") -> Counter[Item]:
        return Counter((normalise_body(m.body, self.server.added_headers),
                        "".join(c for c in letters(m.flags) if c not in ignore))
                       for m in self.server.messages(self.user, folder).values())

    def server_uid(self, folder: str, mid_or_subject: str) -> int:
        for uid, m in self.server.messages(self.user, folder).items():
            if mid_or_subject in (message_id(m.body), subject(m.body)):
                return uid
        raise AssertionError(
            f"[{self.server.kind}] no message {mid_or_subject!r} in {folder} on the server")

    def snapshot(self) -> tuple[dict[str, bytes], dict[str, tuple[int, dict]]]:
        """Everything that a sync could change: local file names and contents, server folders
        with UIDVALIDITY, UIDs, flags and (normalised) contents."""
        local = {str(p.relative_to(self.maildir)): p.read_bytes()
                 for f in self.local_folders() for p in self.local_files(f)}
        remote = {}
        for f in self.server.folders(self.user):
            msgs = self.server.messages(self.user, f)
            remote[f] = (self.server.uidvalidity(self.user, f),
                         {uid: (letters(m.flags), normalise_body(m.body, self.server.added_headers))
                          for uid, m in msgs.items()})
        return local, remote

    # ------------------------------------------------------------------ the comparison

    def assert_in_sync(self, *, ignore: str = "") -> int:
        """The same folders on both sides, in each the same messages with the same flags, no
        duplicates. ``ignore``: flag letters left out (a flag the server cannot keep).
        Returns the number of messages compared."""
        kind = self.server.kind
        remote_folders = self.server.folders(self.user)
        local_folders = self.local_folders()
        problems: list[str] = []
        if set(remote_folders) != set(local_folders):
            only_remote = sorted(set(remote_folders) - set(local_folders))
            only_local = sorted(set(local_folders) - set(remote_folders))
            problems.append(f"folders differ: only on the server {only_remote}, only local "
                            f"{only_local}")
        n = 0
        for folder in sorted(set(remote_folders) & set(local_folders)):
            server = self.server_items(folder, ignore)
            local = self.local_items(folder, ignore)
            n += sum(server.values())
            for side, items in (("server", server), ("local", local)):
                contents = Counter(c for c, _ in items.elements())
                dups = [f"{subject(c)!r} x{k}" for c, k in contents.items() if k > 1]
                if dups:
                    problems.append(f"{folder}: duplicates on the {side}: {dups}")
            if server != local:
                def show(items: Counter[Item]) -> list[str]:
                    return [f"{subject(c)!r} [{fl}]" for c, fl in items]
                problems.append(
                    f"{folder}: only on the server {show(server - local)}; "
                    f"only local {show(local - server)}")
        if problems:
            raise AssertionError(f"[{kind}] Maildir and server differ:\n  " + "\n  ".join(problems))
        return n
