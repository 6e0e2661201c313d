"""Huge messages (issue 21): a message of hundreds of MB goes down (UID FETCH BODY.PEEK[]) and
up (APPEND) with the peak RSS of `syncd sync` less than 40 MB above the same sync of small
messages, and byte for byte (SHA-256 of the stored files on both sides). Bodies above 1 MiB
are written to tmp/ as they arrive, and uploads are read from the file as they are sent.

`make test` runs a 50 MB message and 4 of 8 MB (a few seconds each way). The goal's sizes,
one of 200 MB and 20 of 25 MB: SYNCD_TEST_HUGE=full (or `python -m bench.huge`).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.faultlib import run_syncd
from tests.support.dovecot import Dovecot, make_message
from tests.support.huge_mail import MB, digests_in, put_local, seed_server
from tests.support.syncd_env import Account, write_config

FULL = os.environ.get("SYNCD_TEST_HUGE") == "full"
ONE_HUGE = [(200 if FULL else 50) * MB]
MANY = [25 * MB] * 20 if FULL else [8 * MB] * 4
#: The goal: peak RSS at most this much above a sync of as many small messages.
GROWTH_LIMIT_KB = 40 * 1024


def _sync(account: Account) -> int:
    """One `syncd sync` in a process of its own; its peak RSS in KiB."""
    rc, out, err, peak_kb = run_syncd(account.config, "sync", timeout=600)
    assert rc == 0, out + err
    return peak_kb


def _small_run(dovecot: Dovecot, tmp_path: Path, count: int) -> tuple[int, int]:
    """Peak RSS (KiB) of the same syncs with small messages: down, then up."""
    user = dovecot.add_user()
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(count)])
    (tmp_path / "small").mkdir()
    account = write_config(tmp_path / "small", dovecot, user)
    down = _sync(account)
    put_local(account.folder_dir("INBOX"), [2_000] * count, seed=1000)
    return down, _sync(account)


def _huge_run(dovecot: Dovecot, tmp_path: Path, sizes: list[int]) -> tuple[int, int]:
    """Messages of ``sizes`` down, then as many up; both sides byte-exact; peak RSS (KiB)."""
    user = dovecot.add_user()
    work = tmp_path / "huge"
    work.mkdir()
    want = seed_server(dovecot, user, "INBOX", sizes, work)
    account = write_config(work, dovecot, user)
    inbox = account.folder_dir("INBOX")
    down = _sync(account)
    assert digests_in(inbox) == want, "the downloaded files differ from the server's"
    assert not any((inbox / "tmp").iterdir()), "tmp/ not empty after the sync"

    want += put_local(inbox, sizes, seed=500)
    up = _sync(account)
    assert digests_in(dovecot.folder_path(user, "INBOX")) == want, \
        "the server's copies differ from the uploaded files"
    assert digests_in(inbox) == want
    return down, up


@pytest.mark.parametrize("sizes", [ONE_HUGE, MANY], ids=["one", "many"])
def test_huge_messages_down_and_up_in_flat_memory(dovecot: Dovecot, tmp_path: Path,
                                                   sizes: list[int]) -> None:
    small_down, small_up = _small_run(dovecot, tmp_path, len(sizes))
    huge_down, huge_up = _huge_run(dovecot, tmp_path, sizes)
    print(f"{len(sizes)} x {sizes[0] // MB} MB: peak RSS down {huge_down // 1024} MB "
          f"(small {small_down // 1024} MB), up {huge_up // 1024} MB "
          f"(small {small_up // 1024} MB)")
    assert huge_down - small_down < GROWTH_LIMIT_KB, (huge_down, small_down)
    assert huge_up - small_up < GROWTH_LIMIT_KB, (huge_up, small_up)


def test_pop3_retr_of_a_huge_message_in_flat_memory(dovecot: Dovecot, tmp_path: Path) -> None:
    """POP3 RETR streams into tmp/ too: a huge message comes down byte-exact, and peak RSS
    stays within the goal of a small-message POP3 download."""
    peaks = []
    for name, sizes in (("small", [2_000]), ("huge", ONE_HUGE)):
        user = dovecot.add_user()
        work = tmp_path / name
        work.mkdir()
        want = seed_server(dovecot, user, "INBOX", sizes, work)
        account = write_config(work, dovecot, user, protocol="pop3")
        peaks.append(_sync(account))
        assert digests_in(account.folder_dir("INBOX")) == want
        assert dovecot.count(user, "INBOX") == 0  # download and delete
    print(f"POP3 {ONE_HUGE[0] // MB} MB: peak RSS {peaks[1] // 1024} MB "
          f"(small {peaks[0] // 1024} MB)")
    assert peaks[1] - peaks[0] < GROWTH_LIMIT_KB, peaks


def test_a_huge_message_without_message_id_is_paired_not_doubled(dovecot: Dovecot,
                                                                  tmp_path: Path) -> None:
    """The state lost: a big server message and its local copy (no Message-ID) are paired by
    a content digest read in chunks from the streamed tmp/ file, not downloaded twice."""
    user = dovecot.add_user()
    work = tmp_path / "w"
    work.mkdir()
    source = work / "m.eml"
    from tests.support.huge_mail import write_message

    write_message(source, 3 * MB, seed=7)
    data = source.read_bytes()
    data = b"".join(line for line in data.splitlines(keepends=True)
                    if not line.startswith(b"Message-ID:"))
    source.write_bytes(data)
    dovecot.seed_file(user, "INBOX", source)
    account = write_config(work, dovecot, user)
    assert _sync(account)
    inbox = account.folder_dir("INBOX")
    for path in account.state_dir.iterdir():
        path.unlink()  # lost: the next sync pairs by content
    assert _sync(account)
    assert digests_in(inbox) == Counter(digests_in(dovecot.folder_path(user, "INBOX")))
    assert sum(digests_in(inbox).values()) == 1
    assert not any((inbox / "tmp").iterdir())
