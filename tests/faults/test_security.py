"""Security: TLS verified by default (no LOGIN on an untrusted connection), `tls: none` refused
without allow_insecure, private modes for everything syncd writes, a warning for a config with
secrets that other users can read, and no password anywhere: every test of this suite goes
through the leak check of conftest.py (its output, subprocesses included, and every file under
its directory: maildir, state, status, logs); the tests here add --debug runs and failures.

No plaintext fallback on a failed STARTTLS is covered by tests/system/test_cli_check.py
(test_starttls_missing_from_capabilities_sends_no_login, ..._rejected_by_server_sends_no_login,
test_preauth_greeting_is_not_trusted_in_plaintext).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from pathlib import Path

from tests.faults.faultlib import (
    SECRETS,
    count_files,
    fault,
    in_sync,
    make_account,
    run_syncd,
    secret_user,
)
from tests.faults.hostile import ImapServer
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, User, make_message


def test_tls_is_verified_and_no_login_is_sent_to_an_untrusted_server(
        dovecot: Dovecot, tmp_path: Path) -> None:
    with ImapServer(dovecot.cert_file, dovecot.key_file) as server:
        user = User("victim", SECRETS.new(), tmp_path / "h", tmp_path / "h")
        account = make_account(tmp_path, dovecot, user, port=server.port)
        # Trust another CA than the one that signed the server's certificate.
        text = account.config.read_text().replace(str(dovecot.ca_file),
                                                  str(dovecot.other_ca_file))
        account.config.write_text(text)
        fault("security: untrusted certificate")
        rc, out, err, _ = run_syncd(account.config, "--debug", "sync")
        assert rc == 1, out + err
        assert "certificate" in (out + err).lower(), out + err
        assert "LOGIN" not in server.commands, server.commands
        assert not account.maildir.exists()


def test_tls_none_is_refused_without_allow_insecure(dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    account = make_account(tmp_path, dovecot, user)
    account.config.write_text(re.sub(r"(?m)^    tls: implicit$", "    tls: none",
                                     account.config.read_text()))
    fault("security: tls none")
    rc, out, err, _ = run_syncd(account.config, "sync")
    assert rc == 2, out + err
    assert "tls" in err and "allow_insecure" in err, err
    assert not account.maildir.exists()


def _modes(root: Path) -> list[str]:
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            bad.append(f"{path} {mode:o}")
    return bad


def test_private_modes_and_no_password_with_debug(dovecot: Dovecot, tmp_path: Path) -> None:
    """Under a permissive umask, everything syncd creates is 0700/0600; --debug protocol
    traces of a sync, a failed login and a daemon run never show the password (the leak check
    of conftest.py scans all of it)."""
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(5)])
    dovecot.seed(user, "Lists/a", [make_message(i, folder="Lists/a") for i in range(2)])
    account = make_account(tmp_path, dovecot, user)
    old = os.umask(0o002)
    try:
        rc, out, err, _ = run_syncd(account.config, "--debug", "sync")
        assert rc == 0, out + err
        assert "LOGIN" in err or "login" in err.lower(), "no protocol trace with --debug"
        print(out + err)
        d = DaemonProcess(account.config, log_path=tmp_path / "daemon.log",
                          args=("--debug",)).start()
        try:
            dovecot.append(user, "INBOX", make_message(10))
            wait_until(lambda: count_files(account.folder_dir("INBOX")) == 6, 20,
                       message=lambda: d.log()[-2000:])
        finally:
            d.signal(signal.SIGTERM)
            d.wait(10)
        # A wrong password: the error, with --debug, names the account and not the secret.
        right = user.password
        dovecot.set_password(user, SECRETS.new())
        try:
            time.sleep(1.2)  # Dovecot re-reads a changed passwd file at most once a second
            rc, out, err, _ = run_syncd(account.config, "--debug", "sync")
            assert rc == 1 and "test:" in out + err, out + err
            print(out + err)
        finally:
            dovecot.set_password(user, right)
            time.sleep(1.2)  # Dovecot re-reads a changed passwd file at most once a second
    finally:
        os.umask(old)
    fault("security: --debug runs scanned for the password", 3)
    in_sync(dovecot, user, account, "INBOX")
    assert _modes(account.maildir) == []
    assert _modes(account.state_dir) == []


def test_config_readable_by_others_with_secrets_warns(dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    account = make_account(tmp_path, dovecot, user)
    account.config.chmod(0o644)
    rc, out, err, _ = run_syncd(account.config, "status")
    assert rc == 0, out + err
    assert "readable by other users" in err and "password_command" in err, err
    assert "chmod 600" in err
    fault("security: config readable by others")
    account.config.chmod(0o600)
    rc, out, err, _ = run_syncd(account.config, "status")
    assert rc == 0 and "readable by other users" not in err, err
    # An OAuth2 client secret (a literal secret in the config) is worth the same warning.
    text = account.config.read_text()
    text = re.sub(r"(?m)^    password_command: .*\n", "", text)
    text += ("    auth: oauth2\n    oauth2:\n      provider: google\n      client_id: app\n"
             "      client_secret: not-so-secret\n")
    account.config.write_text(text)
    account.config.chmod(0o640)
    time.sleep(0.01)
    rc, out, err, _ = run_syncd(account.config, "status")
    assert rc == 0, out + err
    assert "readable by other users" in err and "client_secret" in err, err
    assert "not-so-secret" not in out + err
