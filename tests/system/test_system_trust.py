"""The system trust store: where it is an OpenSSL hashed directory (Debian's /etc/ssl/certs),
syncd reads it lazily instead of parsing the whole bundle at every start. Proven here with the
test CA as the only "system" certificate: a config without tls_ca_file must verify through
the directory, and a directory without the CA must be refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.net import _hashed_system_capath
from tests.support.dovecot import Dovecot, User
from tests.support.syncd_env import REPO, config_head


def check(tmp_path: Path, dovecot: Dovecot, user: User,
          cert_dir: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(config_head(tmp_path, "test", protocol="imap", port=dovecot.imaps_port)
                      + f"""\
    username: {user.name}
    password_command: "printf {user.password}"
""")
    config.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["SSL_CERT_DIR"] = str(cert_dir)
    # SSL_CERT_FILE unset: the directory is the whole "system" store.
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), "check"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_hashed_system_directory_is_trusted(tmp_path: Path, dovecot: Dovecot, user: User,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trusted = tmp_path / "certs-with-ca"
    trusted.mkdir()
    shutil.copy(dovecot.ca_file, trusted / "test-ca.pem")
    subprocess.run(["openssl", "rehash", str(trusted)], check=True, capture_output=True)
    # The lazy directory is what syncd picks here (not the bundle fallback).
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(trusted))
    assert _hashed_system_capath() == str(trusted)
    result = check(tmp_path, dovecot, user, trusted)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test: OK" in result.stdout

    empty = tmp_path / "certs-without-ca"
    empty.mkdir()
    shutil.copy(dovecot.other_ca_file, empty / "other-ca.pem")
    subprocess.run(["openssl", "rehash", str(empty)], check=True, capture_output=True)
    result = check(tmp_path, dovecot, user, empty)
    assert result.returncode == 1
    assert "certificate" in result.stdout, result.stdout + result.stderr
