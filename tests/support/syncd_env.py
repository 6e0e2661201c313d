"""Helpers for tests that run syncd against the test Dovecot: configs, running the CLI, and an
exact comparison of a Maildir with the server (same messages byte for byte, same flags, no
duplicates on either side)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import Dovecot, User
from tests.support.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]
IMAP_TO_LETTER = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T",
                  "\\draft": "D", "$forwarded": "P"}


@dataclass
class Account:
    config: Path
    name: str
    maildir: Path
    state_dir: Path
    layout: str
    user: User

    def folder_dir(self, folder: str) -> Path:
        """Where a server folder lives locally (for plain ASCII names without escaping)."""
        if self.layout == "maildir++":
            if folder.upper() == "INBOX":
                return self.maildir
            return self.maildir / ("." + folder.replace("/", "."))
        return self.maildir.joinpath(*folder.split("/"))


def config_head(tmp_path: Path, name: str, *, protocol: str, port: int,
                general_extra: str = "") -> str:
    """The start of a test config: ``general`` (Maildirs and state under ``tmp_path``) and one
    account's protocol, host and port; the caller adds its login and the rest, indented four
    spaces. ``general_extra`` goes in as it is (whole lines, each ending in a newline)."""
    return f"""\
general:
  maildir_root: {tmp_path / "Mail"}
  state_dir: {tmp_path / "state"}
{general_extra}accounts:
  {name}:
    protocol: {protocol}
    host: 127.0.0.1
    port: {port}
"""


def write_config(tmp_path: Path, dovecot: Dovecot, user: User, *, name: str = "test",
                 layout: str = "verbatim", tls: str = "implicit", extra: str = "",
                 protocol: str = "imap", general_extra: str = "",
                 port: int | None = None) -> Account:
    """A config with one account on the test Dovecot; ``port`` replaces the server's (a
    proxy in front of it)."""
    if port is None:
        port = {("imap", "implicit"): dovecot.imaps_port,
                ("imap", "starttls"): dovecot.imap_port,
                ("pop3", "implicit"): dovecot.pop3s_port,
                ("pop3", "starttls"): dovecot.pop3_port}[(protocol, tls)]
    maildir_root = tmp_path / "Mail"
    state_dir = tmp_path / "state"
    config = tmp_path / "config.yaml"
    # (an empty line after general's extra lines, always: tests name config lines by number)
    text = config_head(tmp_path, name, protocol=protocol, port=port,
                       general_extra=general_extra + "\n") + f"""\
    tls: {tls}
    tls_ca_file: {dovecot.ca_file}
    username: {user.name}
    password_command: "printf {user.password}"
    layout: {layout}
{extra}"""
    config.write_text(text)
    # As a careful user keeps it: syncd warns about a config with a password_command that
    # other users can read (fault suite, security).
    config.chmod(0o600)
    return Account(config=config, name=name, maildir=maildir_root / name, state_dir=state_dir,
                   layout=layout, user=user)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """syncd's CLI in this process (fast; the same code path as the console script)."""
    from syncd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def sync(account: Account, *args: str) -> tuple[int, str, str]:
    return run_cli("--config", str(account.config), "sync", *args)


def synced_ok(account: Account, *args: str) -> str:
    """`syncd sync` that must succeed; its output."""
    rc, out, err = sync(account, *args)
    assert rc == 0, f"sync failed ({rc}): {out}{err}"
    return out


def run_subprocess(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def info_flags(name: str) -> str:
    if ":2," not in name:
        return ""
    return "".join(sorted(c for c in name.split(":2,", 1)[1] if c in "DFPRST"))


def local_files(folder_dir: Path) -> list[tuple[str, Path]]:
    """(flags, path) of every message file in a Maildir folder."""
    result = []
    for sub in ("cur", "new"):
        d = folder_dir / sub
        if not d.is_dir():
            continue
        for entry in sorted(d.iterdir()):
            if entry.name.startswith("."):
                continue
            result.append((info_flags(entry.name), entry))
    return result


def flags_by_subject(folder_dir: Path) -> dict[bytes, str]:
    """Subject line -> local flags of the message files in a Maildir folder."""
    found = {}
    for flags, path in local_files(folder_dir):
        subject = next(line for line in path.read_bytes().split(b"\n")
                       if line.startswith(b"Subject:"))
        found[subject] = flags
    return found


def server_state(dovecot: Dovecot, user: User, folder: str) -> Counter[tuple[bytes, str]]:
    messages = dovecot.messages(user, folder)
    return Counter(
        (m.body.replace(b"\r\n", b"\n"),
         "".join(sorted(IMAP_TO_LETTER[f.lower()] for f in m.flags
                        if f.lower() in IMAP_TO_LETTER)))
        for m in messages.values())


def local_state(folder_dir: Path) -> Counter[tuple[bytes, str]]:
    return Counter((path.read_bytes(), flags) for flags, path in local_files(folder_dir))


def assert_folder_in_sync(dovecot: Dovecot, user: User, account: Account, folder: str,
                          *, local_dir: Path | None = None) -> int:
    """Same messages byte for byte, same flags, no duplicates on either side. Returns the
    number of messages compared."""
    server = server_state(dovecot, user, folder)
    local = local_state(local_dir or account.folder_dir(folder))
    assert all(n == 1 for n in server.values()), f"duplicates on the server in {folder}"
    assert all(n == 1 for n in local.values()), f"duplicates locally in {folder}"
    if server != local:
        only_server = server - local
        only_local = local - server
        raise AssertionError(
            f"{folder}: {sum(only_server.values())} only on server "
            f"{[(b[:60], f) for b, f in only_server]}, {sum(only_local.values())} only local "
            f"{[(b[:60], f) for b, f in only_local]}")
    return sum(server.values())


def wait_for_lock(proc: subprocess.Popen[str], account: Account, timeout: float = 60) -> None:
    """Until the process holds its account lock file open (it is past its imports and about
    to connect), or has exited: the kill tests start their clock there."""
    lock = str(account.state_dir / f"{account.name}.lock")
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except FileNotFoundError:
            return
        for fd in fds:
            try:
                if os.readlink(f"/proc/{proc.pid}/fd/{fd}") == lock:
                    return
            except OSError:
                continue
        time.sleep(0.002)


def bytes_to_download(server: Mapping[Path, Iterable[bytes]]) -> int:
    """How many bytes of these server messages a sync still has to download: those without a
    local file of the same content in the folder directory they are listed under. Counted
    with CRLF line ends, as IMAP and POP3 send them (the bodies may be given either way)."""
    missing = 0
    for folder_dir, bodies in server.items():
        local = {path.read_bytes() for _, path in local_files(folder_dir)}
        for body in bodies:
            lf_body = body.replace(b"\r\n", b"\n")
            if lf_body not in local:
                missing += len(lf_body) + lf_body.count(b"\n")
    return missing


class DownloadFloor:
    """Until when a sync (or the daemon) that starts now through ``proxy`` is surely still
    downloading, however fast its CPU: it has to receive every server message it does not
    have yet through the proxy's rate limit. The kill tests kill before then."""

    def __init__(self, proxy: TcpProxy, server: Mapping[Path, Iterable[bytes]]) -> None:
        self.proxy = proxy
        self.missing = bytes_to_download(server)
        self.mark = proxy.bytes_down

    def seconds_left(self) -> float:
        received = self.proxy.bytes_down - self.mark
        return self.proxy.least_time(down=max(0, self.missing - received))
