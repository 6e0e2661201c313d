"""What a new user met trying syncd out (issue 16 item 8): a garbage status file and a deleted
maildir are recovered from with a warning, and the run says so without failing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, local_files, run_cli, write_config


@pytest.fixture
def account(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    dovecot.create_folder(user, "Archive")
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    dovecot.seed(user, "Archive", [make_message(i) for i in range(3, 5)])
    return write_config(tmp_path, dovecot, user)


def status_file(account: Account) -> Path:
    return account.state_dir / "status.json"


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage\x80", b"{not json", b"[1, 2]"])
def test_a_corrupt_status_file_is_moved_aside_and_rebuilt(account: Account,
                                                          garbage: bytes) -> None:
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    status_file(account).write_bytes(garbage)
    # `syncd status` shows what it can (the state databases) and says what is wrong.
    rc, out, err = run_cli("--config", str(account.config), "status", "--json")
    assert rc == 0, out + err
    assert json.loads(out)["accounts"]["test"]["folders"]["INBOX"]["messages"] == 3
    assert "status.json" in err and "corrupt" in err, err
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    assert "internal error" not in err
    assert "corrupt" in err and "moved aside" in err, err
    [aside] = account.state_dir.glob("status.json.corrupt-*")
    assert aside.read_bytes() == garbage  # kept for a post-mortem
    data = json.loads(status_file(account).read_text())
    assert data["accounts"]["test"]["error"] is None
    rc, out, err = run_cli("--config", str(account.config), "status", "--json")
    assert rc == 0 and "corrupt" not in err, out + err
    assert json.loads(out)["accounts"]["test"]["last_sync"] is not None


def test_a_deleted_maildir_is_downloaded_again_with_a_warning_and_exit_0(
        account: Account) -> None:
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    shutil.rmtree(account.maildir)
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert "the local folder is missing" in err, err
    assert rc == 0, out + err
    assert len(local_files(account.folder_dir("INBOX"))) == 3
    assert len(local_files(account.folder_dir("Archive"))) == 2
    status = json.loads(status_file(account).read_text())["accounts"]["test"]
    assert status["error"] is None and status["folders"]["INBOX"]["error"] is None
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0 and "missing" not in err, out + err


def test_the_mass_deletion_guard_still_fails_the_run(account: Account,
                                                      dovecot: Dovecot) -> None:
    dovecot.seed(account.user, "INBOX", [make_message(i) for i in range(10, 16)])
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 0, out + err
    for _, path in local_files(account.folder_dir("INBOX")):
        path.unlink()  # every file gone, the folder still there: a refusal, not a re-download
    rc, out, err = run_cli("--config", str(account.config), "sync")
    assert rc == 1, out + err
    assert "vanished locally" in err, err
