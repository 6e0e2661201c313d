"""A real neomutt (Debian package) reads the Maildir that a running `syncd run` keeps in step
with Dovecot: it sees the synced mail and new mail arriving, and what the user does in it
(open a message, delete another) reaches the server within seconds. Configured by `syncd
mutt-config`, it sends through the outbox while the SMTP server is down; the mail goes out
once when the server is back, with one copy in Sent.

neomutt runs in a detached tmux session on its own tmux server (`-L`, own config, socket in
the test's tmp dir), driven with send-keys and read with capture-pane, with a muttrc that never
prompts (see /work/shared/notes/testing-with-a-real-mail-client.md). neomutt and the tmux
server are ended by PID, and the socket file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.smtp_server import SmtpServer
from tests.support.syncd_env import (
    Account,
    assert_folder_in_sync,
    local_files,
    run_cli,
    write_config,
)

SUBJECTS = ["Alpha report", "Bravo minutes", "Charlie invoice"]


class Tmux:
    """One detached tmux session on a private tmux server."""

    def __init__(self, workdir: Path) -> None:
        self.tmux = shutil.which("tmux")
        self.name = f"syncd-test-{secrets.token_hex(4)}"
        self.workdir = workdir
        self.conf = workdir / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\nset -g status off\n"
                             "set -g default-terminal screen\n")
        self.env = dict(os.environ, TMUX_TMPDIR=str(workdir), HOME=str(workdir),
                        LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm")
        self.env.pop("TMUX", None)
        self.server_pid: int | None = None
        self.pane_pid: int | None = None

    def run(self, *args: str) -> str:
        assert self.tmux is not None
        proc = subprocess.run([self.tmux, "-L", self.name, "-f", str(self.conf), *args],
                              capture_output=True, text=True, env=self.env, timeout=10,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, command: list[str]) -> None:
        self.run("new-session", "-d", "-s", "main", "-x", "160", "-y", "40", *command)
        pids = self.run("display-message", "-p", "-t", "main", "#{pid} #{pane_pid}").split()
        self.server_pid, self.pane_pid = int(pids[0]), int(pids[1])

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "main", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main")

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: text in self.screen() and self.screen(), timeout,
                          interval=0.05,
                          message=lambda: f"{text!r} on the neomutt screen:\n{self.screen()}")

    def close(self) -> None:
        for pid in (self.pane_pid, self.server_pid):
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        socket_dir = self.workdir / f"tmux-{os.getuid()}"
        with contextlib.suppress(FileNotFoundError):
            (socket_dir / self.name).unlink()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a child of the tmux server that
    exited is reaped by it; our own children we reap here)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    for tool in ("tmux", "neomutt"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make deps` installs it (Debian package {tool})",
                        pytrace=False)
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        with contextlib.suppress(Exception):
            print(f"--- last neomutt screen ---\n{t.screen()}")
        t.close()


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for d in started:
            rc, seconds = d.stop(5.0)
            print(f"--- daemon pid {d.pid}: exit {rc} after {seconds:.1f} s; log:\n"
                  f"{d.log()[-5000:]}")


def muttrc(path: Path, maildir: Path, inbox: Path) -> Path:
    path.write_text(f"""\
set folder="{maildir}"
set spoolfile="{inbox}"
set mbox_type=Maildir
set record=""
set postponed=""
set confirmappend=no
set confirmcreate=no
set delete=yes
set quit=yes
set move=no
set mark_old=no
set maildir_trash=no
set sort=date
set use_threads=no
set check_new=yes
set mail_check=1
set timeout=1
set sleep_time=0
set wait_key=no
set beep=no
set help=no
set header_cache=""
set message_cachedir=""
set pager_stop=yes
set index_format="%4C %Z %s"
""")
    return path


def server_view(dc: Dovecot, user: User) -> dict[str, frozenset[str]]:
    """{subject keyword: flags} of the messages on the server."""
    result = {}
    for m in dc.messages(user, "INBOX").values():
        for subject in [*SUBJECTS, "Delta"]:
            if f"Subject: {subject}".encode() in m.body:
                result[subject] = m.flags
    return result


def test_neomutt_reads_marks_read_and_deletes(dovecot: Dovecot, user: User, tmp_path: Path,
                                              tmux: Tmux,
                                              daemon_log: list[DaemonProcess]) -> None:
    dovecot.seed(user, "INBOX", [make_message(i, subject=s) for i, s in enumerate(SUBJECTS)])
    account = write_config(tmp_path, dovecot, user)
    d = DaemonProcess(account.config, log_path=tmp_path / "daemon.log").start()
    daemon_log.append(d)
    inbox = account.folder_dir("INBOX")
    wait_until(lambda: len(local_files(inbox)) == 3, 30,
               message=lambda: f"the first sync\n{d.log()}")

    rc = muttrc(tmp_path / "muttrc", account.maildir, inbox)
    neomutt = shutil.which("neomutt")
    assert neomutt is not None
    tmux.start([neomutt, "-n", "-F", str(rc)])
    screen = tmux.wait_for(SUBJECTS[2])
    assert all(s in screen for s in SUBJECTS), screen

    # New mail on the server shows up in the running neomutt. neomutt notices a change by the
    # mtime of new/ at one-second resolution: deliver in the next wall-clock second.
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    dovecot.append(user, "INBOX", make_message(3, subject="Delta"))
    tmux.wait_for("Delta", timeout=15)

    # Open the first message (marks it read), back to the index, delete the second, sync.
    tmux.keys("=")  # first entry (sorted by date: Alpha)
    tmux.keys("Enter")
    tmux.wait_for("this is test message 0")
    tmux.keys("q")
    tmux.wait_for(SUBJECTS[1])
    tmux.keys("=", "j")  # Bravo
    tmux.keys("d")
    time.sleep(0.2)
    tmux.keys("$")
    started = time.monotonic()

    def on_server() -> bool:
        view = server_view(dovecot, user)
        return "\\Seen" in view.get(SUBJECTS[0], ()) and SUBJECTS[1] not in view

    wait_until(on_server, 10, interval=0.05,
               message=lambda: f"Alpha \\Seen and Bravo expunged on the server: "
               f"{server_view(dovecot, user)}\nlocal: {local_files(inbox)}\n{tmux.screen()}"
               f"\n{d.log()[-3000:]}")
    print(f"neomutt's sync ($) reached the server after {time.monotonic() - started:.2f} s")
    view = server_view(dovecot, user)
    assert "\\Seen" not in view[SUBJECTS[2]] and "\\Seen" not in view["Delta"]

    tmux.keys("q")  # quit=yes: no prompt
    wait_until(lambda: not _alive(tmux.pane_pid or 0), 5,
               message=lambda: f"neomutt to quit:\n{tmux.screen()}")
    wait_until(lambda: assert_folder_in_sync(dovecot, user, account, "INBOX") == 3, 5)
    rc_, seconds = d.stop(5.0)
    assert rc_ == 0 and seconds < 5.0


# --------------------------------------------------------------------------------------------
# Sending through the outbox while the SMTP server is down (issue 19)

EDITOR = """\
#!/bin/sh
# neomutt's $editor: write the body, as a user typing it would.
printf 'Written on a plane.\\n.\\nA lone dot above, kept with -oi.\\n' >> "$1"
"""


def sending_muttrc(tmp_path: Path, account: Account, snippet: Path) -> Path:
    """The reading muttrc plus `source` of what `syncd mutt-config` printed, and what a
    scripted compose needs: an editor that writes the body, no questions."""
    editor = tmp_path / "editor.sh"
    editor.write_text(EDITOR)
    editor.chmod(0o755)
    base = muttrc(tmp_path / "muttrc", account.maildir, account.folder_dir("INBOX"))
    with base.open("a") as rc:
        rc.write(f"""\
source "{snippet}"
set from="me@example.org"
set realname="Me"
set editor="{editor}"
set edit_headers=no
set autoedit=no
set abort_unmodified=no
set askcc=no
set askbcc=no
set fast_reply=yes
set include=no
set crypt_autosign=no
set crypt_opportunistic_encrypt=no
""")
    return base


def test_neomutt_sends_through_the_outbox_while_offline(
        dovecot: Dovecot, user: User, tmp_path: Path, tmux: Tmux) -> None:
    dovecot.ensure_certs()
    smtp = SmtpServer(dovecot.cert_file, dovecot.key_file)  # not started: the server is down
    extra = (f"    from: [me@example.org]\n"
             f"    smtp: {{host: 127.0.0.1, port: {smtp.port}, tls: starttls, "
             f"username: {smtp.user}, password_command: \"printf {smtp.password}\"}}\n"
             f"    save_sent: always\n    sent_folder: Sent\n")
    account = write_config(tmp_path, dovecot, user, extra=extra)
    cli = ("--config", str(account.config))
    rc, out, err = run_cli(*cli, "sync")
    assert rc == 0, out + err
    rc, snippet_text, err = run_cli(*cli, "mutt-config", account.name)
    assert rc == 0, err
    assert f'set sendmail = "syncd --config {account.config} send -oi"' in snippet_text
    snippet = tmp_path / "syncd.muttrc"
    snippet.write_text(snippet_text)
    rc_file = sending_muttrc(tmp_path, account, snippet)

    neomutt = shutil.which("neomutt")
    assert neomutt is not None
    # $sendmail runs `syncd`: the console script of the venv running this test.
    tmux.env["PATH"] = f"{Path(sys.executable).parent}:{tmux.env.get('PATH', '')}"
    tmux.start([neomutt, "-n", "-F", str(rc_file)])
    tmux.wait_for("INBOX", timeout=10)
    tmux.keys("m")
    tmux.wait_for("To:")
    tmux.keys("you@example.net", "Enter")
    tmux.wait_for("Subject:")
    tmux.keys("Offline hello", "Enter")
    tmux.wait_for("you@example.net", timeout=10)  # the compose screen
    tmux.keys("y")
    tmux.wait_for("Mail sent", timeout=15)

    # Queued on disk, nothing sent (the server is down).
    rc, listing, err = run_cli(*cli, "outbox")
    assert rc == 0, err
    assert "Offline hello" in listing and "you@example.net" in listing, listing
    rc, out, err = run_cli(*cli, "outbox", "flush")
    assert rc == 1 and smtp.messages() == [], out + err
    rc, listing, err = run_cli(*cli, "outbox")
    assert "Offline hello" in listing, listing

    # The server is back: delivered once, with one copy in Sent, however often we ask.
    with smtp:
        rc, out, err = run_cli(*cli, "outbox", "flush")
        assert rc == 0, out + err
        for _ in range(2):
            rc, out, err = run_cli(*cli, "outbox", "flush")
            assert rc == 0, out + err
            rc, out, err = run_cli(*cli, "sync")
            assert rc == 0, out + err
        (got,) = smtp.messages()
    assert got.mail_from == "me@example.org" and got.rcpt_tos == ["you@example.net"]
    assert b"Subject: Offline hello" in got.data
    assert b"plane.\r\n.\r\nA lone dot above" in got.data  # -oi: the dot is no end
    rc, listing, err = run_cli(*cli, "outbox", "--json")
    assert json.loads(listing)["accounts"][account.name] == []
    (copy,) = dovecot.messages(user, "Sent").values()
    assert b"Subject: Offline hello" in copy.body and "\\Seen" in copy.flags
    assert len(local_files(account.folder_dir("Sent"))) == 1
    assert_folder_in_sync(dovecot, user, account, "Sent")
