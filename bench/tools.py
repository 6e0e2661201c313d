"""The contenders: how each one is configured, run and read back.

IMAP <-> Maildir: syncd, mbsync (isync 1.4), offlineimap3. POP3 download-and-delete: syncd,
getmail6 (from PyPI, see ``Getmail``), fetchmail (with safecat, a C Maildir MDA). Every tool
verifies the server certificate against the fixture CA; none has certificate checks turned off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from bench import install
from tests.support.dovecot import Dovecot, User, imap_utf7_decode
from tests.support.syncd_env import write_config

REPO = Path(__file__).resolve().parents[1]
SYNCD = Path(sys.executable).with_name("syncd")
#: getmail6 from the ``bench`` extra (pyproject.toml), not Debian's: see ``Getmail``.
GETMAIL = Path(sys.executable).with_name("getmail")

IMAP_TOOLS = ("syncd", "mbsync", "offlineimap")
#: the first sync's floors (bench/floor.py), and with the no-change sync's
FETCH_FLOORS = ("floor-write", "floor-read")
FLOOR_TOOLS = (*FETCH_FLOORS, "floor-status")
POP3_TOOLS = ("syncd", "getmail", "fetchmail")
DEBIAN_PACKAGE = {"mbsync": "isync", "offlineimap": "offlineimap3", "fetchmail": "fetchmail"}
#: peers that come from PyPI, through the ``bench`` extra of pyproject.toml
PIP_PACKAGE = {"getmail": "getmail6"}
EXECUTABLE = {"mbsync": "mbsync", "offlineimap": "offlineimap", "getmail": str(GETMAIL),
              "fetchmail": "fetchmail"}
VERSION_ARGS = {"mbsync": ["--version"], "offlineimap": ["--version"],
                "getmail": ["--version"], "fetchmail": ["--version"]}


#: Where earlier runs' trees wait to be deleted once nothing is timed (``empty_trash``).
TRASH_NAME = ".trash"
#: Below this much free space the trash is emptied at once, timed run or not.
TRASH_FREE_FLOOR = 20 * 1024**3


def set_aside(tree: Path) -> None:
    """Move ``tree`` into the trash beside it instead of deleting it. On the bench VMs (ext4
    mounted with ``discard`` on a virtio disk) a first sync written right after a big tree was
    deleted spent twice the system time of one written into untouched space (a 2,046-message
    sync: 1.9-2.0 s against 0.95-1.1 s, repeatably), so deleting the last run's mirror
    before a timed run charged the harness's deletion to the tool measured next."""
    trash = tree.parent / TRASH_NAME
    trash.mkdir(exist_ok=True)
    if shutil.disk_usage(trash).free < TRASH_FREE_FLOOR:
        empty_trash(tree.parent)
        trash.mkdir(exist_ok=True)
    n = 0
    while (trash / f"{tree.name}.{n}").exists():
        n += 1
    tree.rename(trash / f"{tree.name}.{n}")


def empty_trash(parent: Path) -> None:
    """Delete what ``set_aside`` kept under ``parent`` (call it when nothing is timed)."""
    shutil.rmtree(parent / TRASH_NAME, ignore_errors=True)


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: Dovecot itself, or the latency proxy in front of it."""

    imaps_port: int
    pop3s_port: int
    ca_file: Path
    host: str = "127.0.0.1"


class Tool:
    name: str
    protocol = "imap"

    def __init__(self, root: Path, endpoint: Endpoint, user: User) -> None:
        self.root = root
        self.endpoint = endpoint
        self.user = user
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }

    # where the messages land; everything under root is the tool's (mail, state, config)
    @property
    def mail_root(self) -> Path:
        raise NotImplementedError

    def prepare(self) -> None:
        """A fresh start: no local mail, no state; the config written. The last run's tree is
        moved aside, not deleted (see ``set_aside``)."""
        if self.root.exists():
            set_aside(self.root)
        self.root.mkdir(parents=True)
        self.write_config()

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def folder_dirs(self) -> dict[str, Path]:
        """Server folder name -> local Maildir folder, found by walking ``mail_root``."""
        return discover_folders(self.mail_root)

    def start_files(self) -> list[Path]:
        """The files a start reads, evicted from the page cache before a cold run."""
        found = shutil.which(self.command()[0])
        return [Path(found)] if found else []


def discover_folders(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if "cur" in dirnames and "new" in dirnames:
            rel = here.relative_to(root).as_posix()
            name = "INBOX" if rel in (".", "") or rel.upper() == "INBOX" else rel
            if "&" in name:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    name = imap_utf7_decode(name)
            found[name] = here
        dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
    return found


# ------------------------------------------------------------------------------- IMAP tools


class Syncd(Tool):
    name = "syncd"
    #: The `syncd` that runs: bench/install.py's pip-installed venv (what a user runs; set by
    #: bench/run.py) or, with --syncd editable, the bench's own .venv.
    executable: Path = SYNCD

    @property
    def mail_root(self) -> Path:
        return self.root / "Mail" / self.account

    account = "bench"

    def write_config(self) -> None:
        # write_config takes the Dovecot fixture for its ports and CA: point it at the endpoint
        shim = SimpleNamespace(imaps_port=self.endpoint.imaps_port,
                               imap_port=self.endpoint.imaps_port,
                               pop3s_port=self.endpoint.pop3s_port,
                               pop3_port=self.endpoint.pop3s_port,
                               ca_file=self.endpoint.ca_file)
        self.account_info = write_config(self.root, shim, self.user, name=self.account,
                                         protocol=self.protocol)  # type: ignore[arg-type]
        self.config = self.account_info.config

    def command(self) -> list[str]:
        return [str(self.executable), "--config", str(self.config), "sync"]

    def daemon_command(self) -> list[str]:
        return [str(self.executable), "--config", str(self.config), "run"]

    def start_files(self) -> list[Path]:
        venv = Path(self.executable).parent.parent
        return install.python_files(venv)


class Mbsync(Tool):
    name = "mbsync"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def write_config(self) -> None:
        self.config = self.root / "mbsyncrc"
        self.mail_root.mkdir(exist_ok=True)
        self.config.write_text(f"""\
IMAPAccount bench
Host {self.endpoint.host}
Port {self.endpoint.imaps_port}
User {self.user.name}
Pass {self.user.password}
SSLType IMAPS
CertificateFile {self.endpoint.ca_file}

IMAPStore bench-remote
Account bench

MaildirStore bench-local
Path {self.mail_root}/
Inbox {self.mail_root}/INBOX
SubFolders Verbatim

Channel bench
Far :bench-remote:
Near :bench-local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    def command(self) -> list[str]:
        return ["mbsync", "-c", str(self.config), "-q", "-a"]


class OfflineImap(Tool):
    name = "offlineimap"
    #: "In most cases, setting this value to 2 or 3 will speed up the sync ... You should
    #: probably never set it to a value more than 5." (offlineimap.conf)
    maxconnections = 3

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def write_config(self) -> None:
        self.config = self.root / "offlineimaprc"
        self.mail_root.mkdir(exist_ok=True)
        self.config.write_text(f"""\
[general]
accounts = bench
metadata = {self.root}/meta
ui = quiet
maxsyncaccounts = 1

[Account bench]
localrepository = bench-local
remoterepository = bench-remote
utf8foldernames = yes

[Repository bench-local]
type = Maildir
localfolders = {self.mail_root}
sep = /

[Repository bench-remote]
type = IMAP
remotehost = {self.endpoint.host}
remoteport = {self.endpoint.imaps_port}
remoteuser = {self.user.name}
remotepass = {self.user.password}
ssl = yes
sslcacertfile = {self.endpoint.ca_file}
maxconnections = {self.maxconnections}
""")

    def command(self) -> list[str]:
        return ["offlineimap", "-c", str(self.config), "-u", "quiet", "-o"]


class Floor(Tool):
    """bench/floor.py: the fastest first sync (one UID FETCH 1:* per folder), writing nothing
    (``floor-read``) or writing like syncd (``floor-write``); ``floor-status`` is the
    no-change sync's floor (log in, one LIST-STATUS). Run with ``-I -S``: the standard library
    only, no site-packages to scan at start-up."""

    name = "floor-write"
    mode: tuple[str, ...] = ("--write",)
    since: str | None = None  # an IMAP date: fetch only what UID SEARCH SINCE names

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def write_config(self) -> None:
        self.mail_root.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-I", "-S", str(REPO / "bench" / "floor.py"),
                "--host", self.endpoint.host,
                "--port", str(self.endpoint.imaps_port), "--ca", str(self.endpoint.ca_file),
                "--user", self.user.name, "--password", self.user.password,
                "--root", str(self.mail_root), *self.mode,
                *(["--since", self.since] if self.since else [])]


class FloorRead(Floor):
    name = "floor-read"
    mode = ()


class FloorStatus(Floor):
    name = "floor-status"
    mode = ("--status",)


# ------------------------------------------------------------------------------- POP3 tools


class SyncdPop3(Syncd):
    protocol = "pop3"
    account = "pop"


class Getmail(Tool):
    """getmail6 >= 6.19.10, its own Maildir destination, delete after delivery.

    Every getmail destination delivers each message in a forked child. Up to 6.19.08 (Debian
    bookworm has 6.18.11) the parent waited for that child with a SIGCHLD handler and a
    threading.Condition: when the child exited before the parent had started to wait (the
    handler reaps it and notifies nobody, or the signal came before the handler was
    installed), the wakeup was lost. getmail then sat out its socket timeout (180 s) and
    failed with "operation error (waiting child pid N timed out)", exit 127, and quit
    without POP3 QUIT, so Dovecot undid every DELE of the session. Here that happened once
    in about a hundred to a few thousand messages. 6.19.09 waits with multiprocessing's join
    instead (getmail6 commit d3a3aa3, "Use multiprocessing instead of mixing signals and
    threading condvars"), which cannot lose the child, and 6.19.10 pins that to the fork start
    method; the bench extra installs the current release from PyPI into the venv.
    """

    name = "getmail"
    protocol = "pop3"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    #: getmail refuses to deliver into a Maildir as root ("getmail will not deliver to maildirs
    #: as root, so this 'optional' parameter is required in that situation": the Maildir
    #: section of docs/configuration). ``user`` makes its delivery child (which it forks for
    #: every message, with or without ``user``) switch to this user, who owns the Maildir.
    #: It is getmail's own Maildir writer, not an external MDA.
    delivery_user = "mail"

    def write_config(self) -> None:
        import pwd

        for sub in ("cur", "new", "tmp"):
            (self.mail_root / sub).mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam(self.delivery_user)
        for d in (self.mail_root, *(self.mail_root / s for s in ("cur", "new", "tmp"))):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        (self.root / "getmail").mkdir(exist_ok=True)
        self.config = self.root / "getmailrc"
        # ca_certs: CERT_REQUIRED against the fixture CA, and the certificate must match
        # `server` (127.0.0.1). to_oldmail_on_each_mail stays off: the documentation calls it
        # slower. verbose 0 and no message_log: no per-message output.
        self.config.write_text(f"""\
[retriever]
type = SimplePOP3SSLRetriever
server = {self.endpoint.host}
port = {self.endpoint.pop3s_port}
username = {self.user.name}
password = {self.user.password}
ca_certs = {self.endpoint.ca_file}

[destination]
type = Maildir
path = {self.mail_root}/
user = {self.delivery_user}

[options]
delete = true
read_all = true
to_oldmail_on_each_mail = false
verbose = 0
""")
        os.chmod(self.config, 0o600)

    def command(self) -> list[str]:
        return [str(GETMAIL), f"--rcfile={self.config}",
                f"--getmaildir={self.root / 'getmail'}", "--quiet"]


class Fetchmail(Tool):
    name = "fetchmail"
    protocol = "pop3"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    def write_config(self) -> None:
        for sub in ("cur", "new", "tmp"):
            (self.mail_root / sub).mkdir(parents=True, exist_ok=True)
        self.config = self.root / "fetchmailrc"
        self.config.write_text(f"""\
set no syslog
set no bouncemail
poll {self.endpoint.host} with proto POP3 port {self.endpoint.pop3s_port}
  user "{self.user.name}" there with password "{self.user.password}" is "root" here
  options ssl sslcertck sslcertfile "{self.endpoint.ca_file}" nokeep fetchall
  mda "/usr/bin/safecat {self.mail_root}/tmp {self.mail_root}/new"
""")
        os.chmod(self.config, 0o600)
        self.env["FETCHMAILHOME"] = str(self.root)

    def command(self) -> list[str]:
        return ["fetchmail", "-f", str(self.config), "--silent", "--nodetach"]


def make_tool(name: str, protocol: str, root: Path, endpoint: Endpoint, user: User) -> Tool:
    classes: dict[tuple[str, str], type[Tool]] = {
        ("syncd", "imap"): Syncd, ("mbsync", "imap"): Mbsync,
        ("offlineimap", "imap"): OfflineImap, ("syncd", "pop3"): SyncdPop3,
        ("getmail", "pop3"): Getmail, ("fetchmail", "pop3"): Fetchmail,
        ("floor-write", "imap"): Floor, ("floor-read", "imap"): FloorRead,
        ("floor-status", "imap"): FloorStatus,
    }
    return classes[(name, protocol)](root, endpoint, user)


def direct_endpoint(dc: Dovecot) -> Endpoint:
    return Endpoint(imaps_port=dc.imaps_port, pop3s_port=dc.pop3s_port, ca_file=dc.ca_file)
