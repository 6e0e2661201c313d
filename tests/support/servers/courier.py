"""Courier-IMAP 5.0 (Debian's courier-imap + courier-authlib, unpacked by `make interop-deps`).

libcourierauth has /etc/courier, /run/courier/authdaemon and /usr/lib/courier-authlib compiled
in, so each instance runs in its own mount namespace (``unshare --mount``): read-only overlays of
the unpacked ``usr`` on /usr and of ``<workdir>/etc`` on /etc, and a tmpfs on /run. Nothing on
the host changes. ``/etc/courier`` in the overlay is a symlink to ``<workdir>/courier-etc``, so
users added while the server runs (a new userdb.dat) are seen at once.

Personal folders live under ``INBOX.`` (delimiter ``.``); CREATE of a top-level name is refused.
IDLE is real (IMAP_ENHANCEDIDLE=1 with gamin), keywords are kept (IMAP_KEYWORDS=1).
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

_RUN_SH = r"""set -e
mount -t overlay overlay -o "lowerdir=$PREFIX/usr:/usr" /usr
mount -t overlay overlay -o "lowerdir=$DIR/etc:/etc" /etc
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/courier/authdaemon && chown mail:mail /run/courier/authdaemon
U="setpriv --reuid=mail --regid=mail --clear-groups"
$U /usr/lib/courier/courier-authlib/authdaemond 2>>"$DIR/authdaemond.log" &
n=0
while [ ! -S /run/courier/authdaemon/socket ]; do
  n=$((n+1)); [ $n -lt 400 ] || { echo "authdaemond did not start" >&2; exit 1; }
  sleep 0.02
done
export IMAP_CAPABILITY="IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT \
THREAD=REFERENCES SORT QUOTA IDLE" \
       IMAP_KEYWORDS=1 IMAP_ACL=1 IMAP_USELOCKS=1 IMAP_ENHANCEDIDLE=1 IMAP_IDLE_TIMEOUT=60 \
       IMAP_MAXDAEMONS=100 MAXPERIP=100
exec $U /usr/sbin/couriertcpd -address=127.0.0.1 -nodnslookup -noidentlookup \
     -maxprocs=100 -maxperip=100 -stderr="$DIR/imapd.log" \
     "$PORT" /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir
"""


class CourierServer(ImapServer):
    kind = "courier"
    start_timeout = 20.0

    def __init__(self, workdir: Path | str, *, prefix: Path = INTEROP_PREFIX) -> None:
        super().__init__(workdir)
        self.prefix = Path(prefix)
        self.etc = self.workdir / "courier-etc"
        self.makedat = self.prefix / "usr/lib/courier/courier-authlib/makedatprog"
        mail = pwd.getpwnam("mail")
        self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid
        self._records: list[tuple[str, str]] = []  # (name, sha512-crypt)

    def _preflight(self) -> None:
        need = [self.prefix / "usr/bin/imapd", self.prefix / "usr/sbin/couriertcpd",
                self.prefix / "usr/lib/courier/courier/imaplogin",
                self.prefix / "usr/lib/courier/courier-authlib/authdaemond", self.makedat,
                self.prefix / "usr/lib/courier-authlib/libauthuserdb.so"]
        missing = [str(p) for p in need if not p.exists()]
        if missing:
            raise ServerUnavailable(
                f"Courier-IMAP is not unpacked ({', '.join(missing)} missing): run `make "
                "interop-deps` (apt-get download courier-imap courier-base courier-authlib "
                f"courier-authlib-userdb libcourier-unicode4; dpkg -x into {self.prefix})")
        for tool in ("unshare", "setpriv", "openssl", "mount"):
            if shutil.which(tool) is None:
                raise ServerUnavailable(f"Courier needs {tool!r} (util-linux / openssl)")
        if not any(Path(d, "libfam.so.0").exists()
                   for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")):
            raise ServerUnavailable(
                "Courier's imapd needs libfam.so.0: run `make interop-deps` "
                "(apt-get install libgamin0 gamin)")
        if shutil.which("gam_server") is None and not Path("/usr/libexec/gam_server").exists():
            raise ServerUnavailable(
                "Courier's IDLE needs gam_server: run `make interop-deps` (apt-get install gamin)")

    def _prepare(self) -> None:
        w = self.workdir
        (w / "etc").mkdir(exist_ok=True)
        self.etc.mkdir(exist_ok=True)
        link = w / "etc" / "courier"
        if not link.is_symlink():
            link.symlink_to(self.etc)
        (self.etc / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\ndaemons=1\nauthdaemonvar=/run/courier/authdaemon\n')
        (w / "home").mkdir(exist_ok=True)
        (w / "run.sh").write_text(_RUN_SH)
        self._write_userdb()
        for p in (w, w / "etc", self.etc, w / "home", *self.etc.iterdir()):
            os.lchown(p, self.mail_uid, self.mail_gid)

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        env = dict(os.environ, PREFIX=str(self.prefix), DIR=str(self.workdir), PORT=str(self.port))
        return (["unshare", "--mount", "--propagation", "private", "sh",
                 str(self.workdir / "run.sh")], env)

    def _log_tail(self) -> str:
        text = ""
        for name in ("server.out", "authdaemond.log", "imapd.log"):
            p = self.workdir / name
            if p.exists():
                text += f"[{name}]\n" + p.read_text(errors="replace")[-2000:]
        return text

    def _makedat(self, lines: str, name: str) -> None:
        res = subprocess.run(
            [str(self.makedat), "-", str(self.etc / f"{name}.tmp"), str(self.etc / f"{name}.dat")],
            input=lines + ".\n", capture_output=True, text=True, check=False,
            env=dict(os.environ, LD_LIBRARY_PATH=str(self.prefix / "usr/lib/x86_64-linux-gnu")))
        if res.returncode != 0:
            raise HarnessError(f"makedatprog {name} failed: {res.stderr.strip()}")
        os.chown(self.etc / f"{name}.dat", self.mail_uid, self.mail_gid)

    def _write_userdb(self) -> None:
        users = "".join(
            f"{n}\tuid={self.mail_uid}|gid={self.mail_gid}|home={self.workdir}/home/{n}|_=\n"
            for n, _ in self._records)
        shadow = "".join(f"{n}\tsystempw={h}\n" for n, h in self._records)
        self._makedat(users, "userdb")
        self._makedat(shadow, "userdbshadow")

    def _create_user(self, name: str, password: str) -> ServerUser:
        home = self.workdir / "home" / name
        for d in (home, home / "Maildir", *(home / "Maildir" / s for s in ("cur", "new", "tmp"))):
            d.mkdir(exist_ok=True)
            os.chown(d, self.mail_uid, self.mail_gid)
        hashed = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True,
                                text=True, check=True).stdout.strip()
        self._records.append((name, hashed))
        self._write_userdb()
        return ServerUser(name=name, login=name, password=password)
