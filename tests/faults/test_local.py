"""Local faults: a full disk while delivering, the state database deleted or corrupted, files
changed by another program while a sync runs, and the mass-deletion guard (a wiped folder, an
unmounted maildir, an empty folder directory). Each followed by recovery and an exact
comparison of both sides.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from syncd.store import maildir as maildir_adapter
from tests.faults.faultlib import (
    compare,
    count_files,
    fault,
    in_sync,
    lf,
    make_account,
    secret_user,
    seed_for,
    stray_files,
    syncd_cmd,
)
from tests.faults.test_kill import Model, local_by_subject, new_local, rename_flags, seeded
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import REPO, Account, local_files, run_cli, server_state


def sync(account: Account, *args: str) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(account.config), "sync", *args)
    return rc, out + err


def snapshot_local(account: Account) -> dict[str, bytes]:
    return {str(p.relative_to(account.maildir)): p.read_bytes()
            for p in account.maildir.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# disk full


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                          str(path)], capture_output=True, text=True, check=False)
    return res.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_disk_full_while_delivering(how: str, dovecot: Dovecot, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A clear error naming the account and the folder, nothing partial in cur/ or new/, the
    state unharmed (every row names a complete file), and the sync completes once space
    returns. A small tmpfs where mounting is allowed (root in a sandbox); otherwise ENOSPC
    injected into the Maildir adapter's writes after 2 MB."""
    user = secret_user(dovecot)
    messages = [(make_message(i, size=100_000), "S" if i % 2 else "") for i in range(50)]
    dovecot.seed(user, "INBOX", messages)
    dovecot.seed(user, "Work", [make_message(i, folder="Work") for i in range(5)])
    account = make_account(tmp_path, dovecot, user)
    mounted = how == "tmpfs" and _mount_tmpfs(account.maildir, "2m")
    print(f"{how}: {'a 2 MB tmpfs' if mounted else 'ENOSPC injected after 2 MB'}")
    real_write = os.write
    budget = {"left": 2_000_000, "on": not mounted}

    def full_write(fd: int, data) -> int:
        if budget["on"]:
            budget["left"] -= len(data)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(maildir_adapter.os, "write", full_write)
    try:
        rc, text = sync(account)
        fault("disk full")
        print(text)
        assert rc == 1, text
        assert "No space left on device" in text and "INBOX" in text and "test:" in text, text
        assert "Traceback" not in text and "internal error" not in text
        # Nothing partial where mail readers look, nothing left in tmp/.
        wanted = {lf(body) for body, _ in messages}
        inbox = account.folder_dir("INBOX")
        for _flags, path in local_files(inbox):
            assert path.read_bytes() in wanted, f"a partial message in {path}"
        assert not stray_files(account.maildir)
        # The state is unharmed: whatever it recorded is complete on disk.
        conn = sqlite3.connect(account.state_dir / "test.sqlite3")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            keys = {k for (k,) in conn.execute("SELECT maildir_key FROM message")}
        finally:
            conn.close()
        on_disk = {p.name.split(":2,")[0] for _, p in local_files(inbox)}
        on_disk |= {p.name.split(":2,")[0] for _, p in local_files(account.folder_dir("Work"))}
        assert keys <= on_disk, "the state records messages that are not on disk"
        partial = count_files(inbox)
        print(f"{partial}/50 messages delivered before the disk was full")
        # Space returns.
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(account.maildir)],
                           check=True)
        budget["on"] = False
        rc, text = sync(account)
        assert rc == 0, text
        in_sync(dovecot, user, account, "INBOX",
                Counter((lf(b), "".join(sorted(f))) for b, f in messages))
        in_sync(dovecot, user, account, "Work")
        rc, text = sync(account)
        assert rc == 0 and "+0 down +0 up -0 ~0 flags" in text, text
    finally:
        if mounted:
            _umount(account.maildir)


# --------------------------------------------------------------------------------------------
# the state database


def _corrupt(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "deleted":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(os.urandom(size))
    elif how == "garbage-after-header":
        with open(path, "r+b") as handle:
            handle.seek(100)
            handle.write(os.urandom(size - 100))
    elif how.startswith("truncated"):
        keep = {"truncated-header": 60, "truncated-half": size // 2,
                "truncated-one-page": 4096}[how]
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.unlink()


@pytest.mark.parametrize("how", ["deleted", "garbage", "garbage-after-header",
                                 "truncated-header", "truncated-half", "truncated-one-page"])
def test_state_database_lost_or_corrupt(how: str, dovecot: Dovecot, tmp_path: Path) -> None:
    """Rebuilt by re-pairing (Message-ID and size, then content): no download, no upload, no
    deletion on either side, no duplicate; a truncated or corrupt file is detected (and moved
    aside), never trusted."""
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [(make_message(i), "S" if i % 3 else "") for i in range(400)])
    # Messages without a Message-ID pair by content.
    dovecot.seed(user, "Work", [(f"Subject: no id {i}\r\n\r\nbody {i}\r\n".encode(), "F")
                                for i in range(20)])
    account = make_account(tmp_path, dovecot, user)
    rc, text = sync(account)
    assert rc == 0, text
    state = account.state_dir / "test.sqlite3"
    before_local = snapshot_local(account)
    before_server = {f: dovecot.flags(user, f) for f in ("INBOX", "Work")}
    _corrupt(state, how)
    fault(f"state database {how}")

    rc, text = sync(account)
    print(f"{how}: {text.strip()}")
    assert rc == 0, text
    assert "+0 down +0 up -0" in text, text
    if how != "deleted":
        assert "corrupt" in text, f"the damage went unnoticed: {text}"
        assert list(account.state_dir.glob("test.sqlite3.corrupt-*")), "not moved aside"
    assert snapshot_local(account) == before_local, "local files changed"
    assert {f: dovecot.flags(user, f) for f in ("INBOX", "Work")} == before_server
    for folder in ("INBOX", "Work"):
        in_sync(dovecot, user, account, folder)
    rc, text = sync(account)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in text, text


# --------------------------------------------------------------------------------------------
# another program changes files while a sync runs


def test_concurrent_local_changes_during_a_sync(dovecot: Dovecot, tmp_path: Path) -> None:
    """A thread renames (flags), deletes and adds files in a 2000-message folder while a
    sync runs that renames many of them itself (server flag changes) and downloads more.
    A second sync converges: nothing lost, nothing doubled, every flag change kept."""
    seed = seed_for("concurrent local changes")
    rng = random.Random(seed)
    user = secret_user(dovecot)
    model = Model()
    seeded(dovecot, user, "INBOX", 2000, model)
    account = make_account(tmp_path, dovecot, user)
    rc, text = sync(account)
    assert rc == 0, text
    inbox = account.folder_dir("INBOX")
    subjects = sorted(model.items)
    rng.shuffle(subjects)
    server_flagged = subjects[:800]  # the sync renames these locally (server: +\Flagged)
    uids = {m.message_id: uid for uid, m in dovecot.messages(user, "INBOX",
                                                            bodies=False).items()}

    def mid(subject: str) -> str:
        for line in model.items[subject][0].split(b"\n"):
            if line.lower().startswith(b"message-id:"):
                return line.split(b":", 1)[1].strip().decode()
        raise AssertionError(subject)

    from tests.crash.crash_support import server_folder

    with server_folder(dovecot, user, "INBOX") as server:
        server.store([uids[mid(s)] for s in server_flagged], "+FLAGS.SILENT", "\\Flagged")
        for i in range(300):
            body = make_message(50_000 + i, subject=f"server new {i}", size=20_000)
            server.append(body)
            model.add(body, "")
    for s in server_flagged:
        model.flags(s, model.items[s][1] + "F")
    # The thread's targets: half of them among the messages the sync renames too.
    local_flagged = subjects[400:1000]
    local_deleted = subjects[1500:1530]
    local = local_by_subject(inbox)
    changed: list[str] = []
    stop = threading.Event()

    def meddle() -> None:
        todo = [("flag", s) for s in local_flagged] + [("delete", s) for s in local_deleted] \
            + [("add", str(i)) for i in range(40)]
        rng.shuffle(todo)
        for kind, what in todo:
            if stop.is_set():
                break
            if kind == "add":
                body = make_message(60_000 + int(what), subject=f"local new {what}")
                new_local(inbox, body, "")
                model.add(body, "")
                changed.append(kind)
                continue
            for _attempt in range(20):  # like a MUA: look the file up again if it moved
                path = local.get(what)
                try:
                    if kind == "flag":
                        current = path.name.split(":2,")[1] if ":2," in path.name else ""
                        rename_flags(path, current + "R")
                    else:
                        path.unlink()
                    break
                except (FileNotFoundError, AttributeError):
                    time.sleep(0.01)
                    with contextlib.suppress(FileNotFoundError):
                        local.update(local_by_subject(inbox))
            else:
                raise AssertionError(f"could not {kind} {what}")
            if kind == "flag":
                model.flags(what, model.items[what][1] + "R")
            else:
                model.remove(what)
            changed.append(kind)
            time.sleep(0.001)

    proc = subprocess.Popen(syncd_cmd(account.config, "sync"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    thread = threading.Thread(target=meddle)
    thread.start()
    out, _ = proc.communicate(timeout=120)
    stop.set()
    thread.join(60)
    fault("concurrent local changes", len(changed))
    print(f"first sync (rc {proc.returncode}) with {len(changed)} concurrent changes: "
          f"{out.strip()}")
    assert proc.returncode == 0, out
    rc, text = sync(account)
    assert rc == 0, text
    rc, text = sync(account)
    assert rc == 0, text
    in_sync(dovecot, user, account, "INBOX", model.counter())
    rc, text = sync(account)
    assert "+0 down +0 up -0 ~0 flags" in text, text


# --------------------------------------------------------------------------------------------
# the mass-deletion guard


def test_mass_deletion_guard_holds(dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    msgs = {"INBOX": [(make_message(i), "S") for i in range(60)],
            "Work": [(make_message(i, folder="Work"), "") for i in range(30)],
            "Lists": [(make_message(i, folder="Lists"), "F") for i in range(20)]}
    for folder, items in msgs.items():
        dovecot.seed(user, folder, items)
    want = {f: Counter((lf(b), fl) for b, fl in items) for f, items in msgs.items()}
    account = make_account(tmp_path, dovecot, user)
    rc, text = sync(account)
    assert rc == 0, text

    # 1. A wiped folder: every file gone, the directories still there.
    for _flags, path in local_files(account.folder_dir("INBOX")):
        path.unlink()
    fault("guard: local folder wiped")
    for _ in range(2):  # and it keeps holding
        rc, text = sync(account)
        assert rc == 1 and "INBOX" in text and "--force-deletions" in text, text
        compare(want["INBOX"], server_state(dovecot, user, "INBOX"), "server INBOX")

    # 2. An "unmounted" maildir: the whole account directory is gone.
    shutil.rmtree(account.maildir)
    fault("guard: maildir gone")
    rc, text = sync(account)
    assert "Work" in text or rc == 0, text
    for folder in msgs:
        in_sync(dovecot, user, account, folder, want[folder])

    # 3. An empty folder directory (cur/ new/ tmp/ gone, e.g. a mount point).
    lists = account.folder_dir("Lists")
    shutil.rmtree(lists)
    lists.mkdir(mode=0o700)
    fault("guard: empty folder directory")
    rc, text = sync(account)
    for folder in msgs:
        in_sync(dovecot, user, account, folder, want[folder])
    rc, text = sync(account)
    assert rc == 0 and "+0 down +0 up -0 ~0 flags" in text, text
