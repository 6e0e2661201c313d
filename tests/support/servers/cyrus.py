"""Cyrus imapd 3.6 (Debian's cyrus-imapd, unpacked by `make interop-deps` into .interop/root).

Debian's own namespace settings (``altnamespace: no``, ``unixhierarchysep: no``): personal
folders live under ``INBOX.`` with ``.`` as the delimiter, and CREATE of a top-level name is
refused. master runs as user ``mail`` with ``idled``, so IDLE reports other sessions' changes
at once. Users are in a private sasldb (saslpasswd2); the INBOX is created at first LOGIN.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tests.support.servers.base import (
    INTEROP_PREFIX,
    HarnessError,
    ImapServer,
    ServerUnavailable,
    ServerUser,
)

_LIBDIR = "usr/lib/x86_64-linux-gnu"
_SYSTEM_LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")


class CyrusServer(ImapServer):
    kind = "cyrus"

    def __init__(self, workdir: Path | str, *, prefix: Path = INTEROP_PREFIX) -> None:
        super().__init__(workdir)
        self.prefix = Path(prefix)
        self.bindir = self.prefix / "usr/lib/cyrus/bin"
        self.conf = self.workdir / "imapd.conf"

    def _preflight(self) -> None:
        missing = [str(p) for p in (self.bindir / "master", self.bindir / "imapd",
                                    self.bindir / "idled") if not p.exists()]
        if missing:
            raise ServerUnavailable(
                f"Cyrus imapd is not unpacked ({', '.join(missing)} missing): run `make "
                "interop-deps` (apt-get download cyrus-imapd cyrus-common; dpkg -x into "
                f"{self.prefix})")
        for tool in ("saslpasswd2", "setpriv"):
            if shutil.which(tool) is None:
                raise ServerUnavailable(
                    f"Cyrus needs {tool!r}: run `make interop-deps` (apt-get install sasl2-bin)")
        for lib in ("libpcre.so.3", "libical.so.3"):
            if not any(Path(d, lib).exists() for d in _SYSTEM_LIBDIRS):
                raise ServerUnavailable(f"Cyrus needs {lib}: run `make interop-deps` "
                                        "(apt-get install libpcre3 libical3)")

    def _prepare(self) -> None:
        w = self.workdir
        (w / "conf" / "socket").mkdir(parents=True, exist_ok=True)
        (w / "spool").mkdir(exist_ok=True)
        self.conf.write_text(
            f"configdirectory: {w}/conf\n"
            f"partition-default: {w}/spool\n"
            "servername: localhost\n"
            "cyrus_user: mail\n"
            "altnamespace: no\n"
            "unixhierarchysep: no\n"
            "allowplaintext: yes\n"
            "sasl_pwcheck_method: auxprop\n"
            "sasl_auxprop_plugin: sasldb\n"
            f"sasl_sasldb_path: {w}/sasldb2\n"
            "sasl_mech_list: PLAIN LOGIN\n"
            "autocreate_quota: 0\n"
            "syslog_prefix: syncd-test-cyrus\n")
        (w / "cyrus.conf").write_text(
            "SERVICES {\n"
            f'  imap cmd="{self.bindir}/imapd -C {self.conf}" listen="127.0.0.1:{self.port}"'
            " prefork=0\n"
            "}\n"
            "DAEMON {\n"
            f'  idled cmd="{self.bindir}/idled -C {self.conf}"\n'
            "}\n")
        mail = pwd.getpwnam("mail")
        for root, dirs, files in os.walk(w):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), mail.pw_uid, mail.pw_gid)
        os.chown(w, mail.pw_uid, mail.pw_gid)

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        env = dict(os.environ, LD_LIBRARY_PATH=str(self.prefix / _LIBDIR))
        return ([
            "setpriv", "--reuid=mail", "--regid=mail", "--clear-groups",
            str(self.bindir / "master"), "-C", str(self.conf),
            "-M", str(self.workdir / "cyrus.conf"),
            "-p", str(self.workdir / "master.pid"), "-L", str(self.workdir / "master.log"),
        ], env)

    def _log_tail(self) -> str:
        text = ""
        for name in ("server.out", "master.log"):
            p = self.workdir / name
            if p.exists():
                text += f"[{name}]\n" + p.read_text(errors="replace")[-2000:]
        return text

    def _create_user(self, name: str, password: str) -> ServerUser:
        res = subprocess.run(
            ["setpriv", "--reuid=mail", "--regid=mail", "--clear-groups",
             "saslpasswd2", "-p", "-c", "-f", str(self.workdir / "sasldb2"), "-u", "localhost",
             name],
            input=password + "\n", capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise HarnessError(f"saslpasswd2 failed: {res.stderr.strip()}")
        return ServerUser(name=name, login=name, password=password)
