"""`syncd sync` opens each IMAP account's connection (TCP and TLS) in a thread while it is still
importing the engine and imapclient (syncd.net): the session must then run on
that very connection, a failure to open it must be reported as connecting on the spot would
report it (once: no second attempt, no second timeout), and an unused one must be closed."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from syncd import net as transport
from syncd.config.cache import load_settings
from syncd.errors import AccountError
from syncd.imap.client import ImapSession
from syncd.imap.nochange import Probe
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import REPO, run_subprocess, write_config


def _account(tmp_path: Path, dovecot: Dovecot, user: User, **kw: str):
    account = write_config(tmp_path, dovecot, user, **kw)
    return load_settings(account.config).accounts["test"]


def _refused_account(tmp_path: Path, dovecot: Dovecot, user: User):
    """The account on a port nothing listens on (refused), dialed ahead; and that port."""
    account = _account(tmp_path, dovecot, user)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    account = account._replace(port=port)
    transport.dial_ahead(account)
    return account, port


def _dialed(account) -> socket.socket:
    """The socket dial_ahead is opening for the account (waits until it is open)."""
    with transport._DIALS_LOCK:
        dial = transport._DIALS[transport._dial_key(account)]
    dial.thread.join(30)
    assert dial.error is None, dial.error
    assert dial.sock is not None
    return dial.sock


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_the_session_runs_on_the_connection_opened_ahead(dovecot: Dovecot, user: User,
                                                         tmp_path: Path, tls: str) -> None:
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(2)])
    account = _account(tmp_path, dovecot, user, tls=tls)
    transport.dial_ahead(account)
    opened = _dialed(account)
    # Implicit TLS: the handshake is done ahead too. STARTTLS: TCP only (TLS comes later,
    # after the greeting, on the same socket).
    assert isinstance(opened, ssl.SSLSocket) == (tls == "implicit")
    local_address = opened.getsockname()
    session = ImapSession.connect(account, lambda: user.password)
    try:
        sock = session.client.socket()
        if tls == "implicit":
            assert sock is opened
        else:
            # STARTTLS wrapped it (the plain socket object is detached by that).
            assert isinstance(sock, ssl.SSLSocket) and sock.getsockname() == local_address
        assert [f.name for f in session.list_folders()] == ["INBOX"]
    finally:
        session.close()
    # Taken once: the next connection is a new one.
    assert transport.take_dialed(account) is None


def test_a_refused_connection_is_reported_once_with_its_cause(tmp_path: Path,
                                                              dovecot: Dovecot,
                                                              user: User) -> None:
    account, port = _refused_account(tmp_path, dovecot, user)
    with pytest.raises(AccountError) as info:
        ImapSession.connect(account, lambda: pytest.fail("no password without a connection"))
    assert info.value.cause == "refused" and f"127.0.0.1:{port}" in str(info.value)


def test_an_untrusted_certificate_met_ahead_is_named(tmp_path: Path, dovecot: Dovecot,
                                                     user: User) -> None:
    account = _account(tmp_path, dovecot, user)
    account = account._replace(tls_ca_file=None)
    transport.dial_ahead(account)
    with pytest.raises(AccountError) as info:
        ImapSession.connect(account, lambda: pytest.fail("no password on an untrusted link"))
    assert info.value.cause == "certificate"


def test_connections_never_taken_are_closed(tmp_path: Path, dovecot: Dovecot,
                                            user: User) -> None:
    account = _account(tmp_path, dovecot, user)
    transport.dial_ahead(account)
    opened = _dialed(account)
    transport.close_dialed()
    assert opened.fileno() == -1
    assert transport.take_dialed(account) is None


def test_sync_uses_one_connection(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    """A `syncd sync` with nothing to do: one connection to the server, the one opened ahead
    (an unused one Dovecot would log as a disconnect without any login). With something to
    do, the no-change check's connection and the engine's: two, both used."""
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    account = write_config(tmp_path, dovecot, user)
    assert run_subprocess("--config", str(account.config), "sync").returncode == 0
    # The Maildir's directory stamps vouch for it once they were a second old when taken:
    # the sync after that takes them again.
    time.sleep(1.2)
    assert run_subprocess("--config", str(account.config), "sync").returncode == 0
    mark = dovecot.log_mark()
    out = run_subprocess("--config", str(account.config), "--debug", "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    log = dovecot.log_text(mark)
    assert log.count("Login: user=") == 1, log + out.stderr
    assert "no auth attempts" not in log, log

    dovecot.seed(user, "INBOX", [make_message(10)])
    mark = dovecot.log_mark()
    out = run_subprocess("--config", str(account.config), "sync")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "+1 down" in out.stdout, out.stdout
    log = dovecot.log_text(mark)
    assert log.count("Login: user=") == 2, log
    assert "no auth attempts" not in log, log


def test_imapclient_version_without_importlib_metadata() -> None:
    """syncd provides imapclient.version itself (its own lookup imports importlib.metadata
    and scans every installed package): the value must be the real one."""
    code = ("import sys, syncd.imap.client, imapclient\n"
            "assert 'importlib.metadata' not in sys.modules\n"
            "from importlib.metadata import version\n"
            "assert imapclient.__version__ == version('imapclient'), imapclient.__version__\n"
            "assert imapclient.version_info[:3] == tuple(map(int, "
            "version('imapclient').split('.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_connection_still_opening_does_not_hold_the_exit(tmp_path: Path, dovecot: Dovecot,
                                                           user: User) -> None:
    """A server that accepts TCP and never answers the TLS handshake: close_dialed() returns
    at once, and the socket is closed (not kept) when the handshake times out."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        account = _account(tmp_path, dovecot, user)._replace(
            port=silent.getsockname()[1], timeout=1.5)
        transport.dial_ahead(account)
        with transport._DIALS_LOCK:
            dial = transport._DIALS[transport._dial_key(account)]
        time.sleep(0.2)  # connected, waiting for the server's TLS reply
        started = time.monotonic()
        transport.close_dialed()
        assert time.monotonic() - started < 0.5
        dial.thread.join(10)
        assert not dial.thread.is_alive()
        assert dial.sock is None and isinstance(dial.error, TimeoutError | ssl.SSLError)


def test_the_password_is_asked_for_during_the_tls_handshake(tmp_path: Path, dovecot: Dovecot,
                                                            user: User) -> None:
    """The no-change check asks for the password (a command: gpg, pass) once TCP is up, while
    the TLS handshake is still under way: here a server that accepts and never answers TLS.
    The error reported is still the connection's."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        account = _account(tmp_path, dovecot, user)._replace(
            port=silent.getsockname()[1], timeout=1.5)
        asked = threading.Event()

        def password() -> str:
            asked.set()
            return user.password

        transport.dial_ahead(account)
        probe = Probe(account, password)
        assert asked.wait(10), "the password was not asked for during the handshake"
        with pytest.raises(AccountError) as info:
            probe.result()
        assert info.value.cause in ("timeout", "tls"), info.value


def test_no_password_is_asked_for_a_server_that_cannot_be_reached(tmp_path: Path,
                                                                  dovecot: Dovecot,
                                                                  user: User) -> None:
    account, _port = _refused_account(tmp_path, dovecot, user)
    probe = Probe(account, lambda: pytest.fail("no password without a connection"))
    with pytest.raises(AccountError) as info:
        probe.result()
    assert info.value.cause == "refused"


def _counted_password_command(account, tmp_path: Path, *, fails: bool) -> Path:
    """The account's password_command replaced by one that counts its runs."""
    runs = tmp_path / "password-runs"
    script = tmp_path / "password.sh"
    answer = "echo 'no such key' >&2; exit 2" if fails else f"printf %s '{account.user.password}'"
    script.write_text(f"#!/bin/sh\necho run >> '{runs}'\n{answer}\n")
    script.chmod(0o700)
    text = re.sub(r"password_command: .*", f'password_command: "{script}"',
                  account.config.read_text())
    account.config.write_text(text)
    return runs


@pytest.mark.parametrize("fails", [False, True])
def test_the_password_command_runs_once_a_sync(dovecot: Dovecot, user: User, tmp_path: Path,
                                               fails: bool) -> None:
    """The no-change check and the engine after it both log in; the command runs once (and
    a failure is not asked again: a cancelled pinentry stays cancelled), and the failure is
    the account's error."""
    from tests.support.syncd_env import run_cli

    dovecot.seed(user, "INBOX", [make_message(0)])
    account = write_config(tmp_path, dovecot, user)
    assert run_cli("--config", str(account.config), "sync")[0] == 0
    runs = _counted_password_command(account, tmp_path, fails=fails)
    dovecot.seed(user, "INBOX", [make_message(1)])  # something to do: the engine logs in too
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert runs.read_text().count("run") == 1, out + err
    if fails:
        assert rc == 1 and "test" in out + err, out + err
    else:
        assert rc == 0 and "+1 down" in out, out + err
