"""GNU mailutils imap4d 3.15 (Debian's mailutils-imap4d, installed by `make interop-deps`).

Its default store (mbox): INBOX is a file (``\\NoInferiors``), folders are top-level names with
``/``; no UIDPLUS (EXPUNGE only, answered ``* n EXPUNGED``); keywords such as ``$Forwarded`` are
refused (BAD "Unrecognized flag"); BODY[] carries headers the server adds (X-IMAPbase, X-UID,
Status); IDLE never reports another session's changes (only after DONE). Users are virtual
(``virtdomain``): the login name is ``<user>@test.example``, the password file is read at each
login, so users can be added while it runs. It runs as ``mail``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.support.servers.base import ImapServer, ServerUnavailable, ServerUser

DOMAIN = "test.example"


class MailutilsServer(ImapServer):
    kind = "mailutils"
    idle_pushes = False
    uidplus = False
    added_headers = ("X-IMAPbase", "X-UID", "Status", "X-Status", "X-Keywords")

    def __init__(self, workdir: Path | str) -> None:
        super().__init__(workdir)
        mail = pwd.getpwnam("mail")
        self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid
        self.passwd = self.workdir / "domains" / DOMAIN

    def _preflight(self) -> None:
        if shutil.which("imap4d") is None and not Path("/usr/sbin/imap4d").exists():
            raise ServerUnavailable(
                "GNU mailutils imap4d is not installed: run `make interop-deps` "
                "(apt-get install mailutils-imap4d)")
        for tool in ("setpriv", "openssl"):
            if shutil.which(tool) is None:
                raise ServerUnavailable(f"mailutils needs {tool!r}")

    def _prepare(self) -> None:
        w = self.workdir
        (w / "domains").mkdir(exist_ok=True)
        (w / "home").mkdir(exist_ok=True)
        self.passwd.touch()
        (w / "imap4d.conf").write_text(
            "logging { syslog no; };\n"
            f"server 127.0.0.1:{self.port} {{ }};\n"
            "auth { authorization virtdomain; authentication generic; };\n"
            f"virtdomain {{ passwd-dir {w}/domains; }};\n")
        for p in (w, w / "domains", w / "home", self.passwd, w / "imap4d.conf"):
            os.chown(p, self.mail_uid, self.mail_gid)

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        imap4d = shutil.which("imap4d") or "/usr/sbin/imap4d"
        return (["setpriv", "--reuid=mail", "--regid=mail", "--clear-groups", imap4d,
                 "--daemon", "--foreground", f"--config-file={self.workdir}/imap4d.conf"], None)

    def _log_tail(self) -> str:
        p = self.workdir / "server.out"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def _create_user(self, name: str, password: str) -> ServerUser:
        home = self.workdir / "home" / name
        home.mkdir()
        (home / "INBOX").touch()  # an empty mbox: else the first APPEND gets NO [TRYCREATE]
        for p in (home, home / "INBOX"):
            os.chown(p, self.mail_uid, self.mail_gid)
        hashed = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True,
                                text=True, check=True).stdout.strip()
        with open(self.passwd, "a") as f:
            f.write(f"{name}:{hashed}:{self.mail_uid}:{self.mail_gid}::{home}:/bin/false\n")
        return ServerUser(name=name, login=f"{name}@{DOMAIN}", password=password)
