"""Maildir adapter: delivery, scanning, flag renames, header info, and (security-critical) the
folder-name <-> path mapping of both layouts. Real files in tmp_path throughout."""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.store import maildir as md
from syncd.store.maildir import (
    LocalEntry,
    Maildir,
    MaildirFolder,
    crlf_to_lf,
    crlf_to_lf_stream,
    escape_component,
    lf_to_crlf,
    lf_to_crlf_stream,
    to_crlf_stream,
    unescape_component,
)

KEY_RE = re.compile(r"^\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.[^/:]+$")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> MaildirFolder:
    f = MaildirFolder(tmp_path / "box")
    f.create()
    return f


# ---------------------------------------------------------------------------------------------
# create / exists


def test_create_makes_private_dirs_with_parents(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not leak into the modes
    try:
        f = MaildirFolder(tmp_path / "a" / "b" / "box")
        assert not f.exists()
        f.create()
    finally:
        os.umask(old)
    assert f.exists()
    for p in (tmp_path / "a", tmp_path / "a" / "b", f.path, f.path / "cur", f.path / "new",
              f.path / "tmp"):
        assert mode_of(p) == 0o700, p
    f.create()  # idempotent


def test_create_keeps_mode_of_existing_dirs(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir(mode=0o755)
    os.chmod(tmp_path / "box", 0o755)
    MaildirFolder(tmp_path / "box").create()
    assert mode_of(tmp_path / "box") == 0o755
    assert mode_of(tmp_path / "box" / "cur") == 0o700


def test_create_over_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "box").write_text("x")
    with pytest.raises(OSError):
        MaildirFolder(tmp_path / "box").create()


def test_exists_needs_all_three(tmp_path: Path) -> None:
    (tmp_path / "box" / "cur").mkdir(parents=True)
    (tmp_path / "box" / "new").mkdir()
    f = MaildirFolder(tmp_path / "box")
    assert not f.exists()
    f.create()  # repairs the missing tmp/
    assert f.exists()


# ---------------------------------------------------------------------------------------------
# deliver


def test_deliver_flagless_goes_to_new(folder: MaildirFolder) -> None:
    key = folder.deliver(b"Subject: x\n\nbody\n", "")
    assert KEY_RE.match(key), key
    path = folder.path / "new" / key
    assert path.read_bytes() == b"Subject: x\n\nbody\n"
    assert mode_of(path) == 0o600
    assert os.listdir(folder.path / "tmp") == []
    assert os.listdir(folder.path / "cur") == []


def test_deliver_with_flags_goes_to_cur_sorted(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x\n", "SF")
    assert os.listdir(folder.path / "cur") == [f"{key}:2,FS"]
    assert os.listdir(folder.path / "new") == []


def test_deliver_mode_ignores_umask(folder: MaildirFolder) -> None:
    old = os.umask(0)
    try:
        key = folder.deliver(b"x\n", "")
    finally:
        os.umask(old)
    assert mode_of(folder.path / "new" / key) == 0o600


def test_deliver_sets_mtime(folder: MaildirFolder) -> None:
    when = 1_000_000_000.0
    key = folder.deliver(b"x\n", "S", mtime=when)
    st_ = os.stat(folder.path / "cur" / f"{key}:2,S")
    assert st_.st_mtime == when
    assert st_.st_atime > when  # atime is "now": clean_tmp-style age checks stay sane


def test_deliver_streams_chunks(folder: MaildirFolder) -> None:
    chunks = (bytes([65 + i % 26]) * 100_000 for i in range(30))  # a generator, 3 MB
    key = folder.deliver(chunks, "", size_hint=3_000_000)
    data = folder.read(key)
    assert len(data) == 3_000_000
    assert data[:100_000] == b"A" * 100_000 and data[-1:] == b"D"


def test_deliver_accepts_bytearray_and_memoryview(folder: MaildirFolder) -> None:
    k1 = folder.deliver(bytearray(b"one\n"), "")
    k2 = folder.deliver(memoryview(b"two\n"), "")
    assert folder.read(k1) == b"one\n" and folder.read(k2) == b"two\n"


def test_deliver_does_not_transform_line_ends(folder: MaildirFolder) -> None:
    key = folder.deliver(b"a\r\nb\n\r", "")
    assert folder.read(key) == b"a\r\nb\n\r"


def test_deliver_unique_keys(folder: MaildirFolder) -> None:
    keys = {folder.deliver(b"x", "") for _ in range(200)}
    assert len(keys) == 200
    assert len(os.listdir(folder.path / "new")) == 200


def test_deliver_never_overwrites(folder: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    # Force a clash: the first generated name is already taken in new/.
    names = iter(["1.M1P1Q1Rdeadbeefdeadbeef.h", "1.M1P1Q1Rdeadbeefdeadbeef.h",
                  "2.M2P2Q2Rdeadbeefdeadbeef.h", "3.M3P3Q3Rdeadbeefdeadbeef.h"])
    monkeypatch.setattr(md, "_new_key", lambda: next(names))
    existing = folder.path / "new" / "1.M1P1Q1Rdeadbeefdeadbeef.h"
    existing.write_bytes(b"precious")
    # The tmp file gets name 1 (tmp/ is empty); linking it as new/1 clashes, so does the
    # next candidate (1 again), and the third one is free.
    key = folder.deliver(b"fresh", "")
    assert existing.read_bytes() == b"precious"
    assert key == "2.M2P2Q2Rdeadbeefdeadbeef.h"
    assert (folder.path / "new" / key).read_bytes() == b"fresh"
    assert os.listdir(folder.path / "tmp") == []


def test_deliver_skips_taken_tmp_names(folder: MaildirFolder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    names = iter(["1.a", "2.b"])
    monkeypatch.setattr(md, "_new_key", lambda: next(names))
    (folder.path / "tmp" / "1.a").write_bytes(b"someone else's delivery")
    key = folder.deliver(b"mine", "")
    assert key == "2.b"
    assert (folder.path / "tmp" / "1.a").read_bytes() == b"someone else's delivery"


def test_deliver_failure_leaves_no_tmp(folder: MaildirFolder) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("dropped")

    with pytest.raises(ConnectionError):
        folder.deliver(broken(), "")
    assert os.listdir(folder.path / "tmp") == []
    assert os.listdir(folder.path / "new") == []


def test_deliver_without_hard_links_falls_back(folder: MaildirFolder,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(md.os, "link", no_link)
    monkeypatch.setattr(md, "_RENAMEAT2", None)  # no renameat2 either (old kernel, FUSE)
    key = folder.deliver(b"x", "S")
    assert (folder.path / "cur" / f"{key}:2,S").read_bytes() == b"x"
    assert os.listdir(folder.path / "tmp") == []


def test_deliver_rejects_bad_flags(folder: MaildirFolder) -> None:
    for bad in ("S/", "../", ":", "S\0"):
        with pytest.raises(ValueError):
            folder.deliver(b"x", bad)
    assert os.listdir(folder.path / "tmp") == []


def test_hostname_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(md.socket, "gethostname", lambda: "evil/host:name")
    md._hostname.cache_clear()
    try:
        key = md._new_key()
    finally:
        md._hostname.cache_clear()
    assert "/" not in key and ":" not in key
    assert key.endswith(r".evil\057host\072name")


def test_hostname_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(md.socket, "gethostname", lambda: calls.append(1) or "h")
    md._hostname.cache_clear()
    try:
        keys = {md._new_key() for _ in range(50)}
    finally:
        md._hostname.cache_clear()
    assert len(calls) == 1 and len(keys) == 50
    assert all(KEY_RE.match(k) and k.endswith(".h") for k in keys)


def test_forked_child_uses_its_own_pid_in_keys() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report a key and leave without running any cleanup
        os.write(write_end, md._new_key().encode())
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child_key = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert f"P{pid}Q" in child_key
    assert f"P{os.getpid()}Q" in md._new_key()


# ---------------------------------------------------------------------------------------------
# the no-replace rename and its fallbacks; the umask


def test_delivery_is_one_rename_where_the_kernel_offers_it(
        folder: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    if md._renameat2() is None:
        pytest.skip("no renameat2 here")

    def no_link(src: object, dst: object) -> None:
        raise AssertionError("link(2) used although renameat2 works")

    monkeypatch.setattr(md.os, "link", no_link)
    key = folder.deliver(b"x", "S")
    staged = folder.stage(b"y", "")
    [key2] = folder.publish([staged])
    assert (folder.path / "cur" / f"{key}:2,S").read_bytes() == b"x"
    assert (folder.path / "new" / key2).read_bytes() == b"y"
    assert os.listdir(folder.path / "tmp") == []


def test_rename_noreplace_never_replaces(tmp_path: Path) -> None:
    if md._renameat2() is None:
        pytest.skip("no renameat2 here")
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        md._rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == b"new"
    assert (tmp_path / "b").read_bytes() == b"precious"
    with pytest.raises(FileNotFoundError):
        md._rename_noreplace(str(tmp_path / "missing"), str(tmp_path / "c"))
    assert md._rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert (tmp_path / "c").read_bytes() == b"new" and not (tmp_path / "a").exists()


@pytest.mark.parametrize("how", ["no renameat2", "filesystem says EINVAL"])
def test_without_rename_noreplace_delivery_links(
        how: str, folder: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "no renameat2":
        monkeypatch.setattr(md, "_RENAMEAT2", None)
    else:
        def einval(*args: object) -> int:
            import ctypes

            ctypes.set_errno(errno.EINVAL)
            return -1

        if md._renameat2() is None:
            pytest.skip("no renameat2 here")
        monkeypatch.setattr(md, "_RENAMEAT2", einval)
    linked = []
    real_link = os.link
    monkeypatch.setattr(md.os, "link", lambda s, d: (linked.append(d), real_link(s, d)))
    existing = folder.path / "new" / "1.a"
    existing.write_bytes(b"precious")
    names = iter(["1.a", "2.b"])
    monkeypatch.setattr(md, "_new_key", lambda: next(names))
    key = folder.deliver(b"mine", "")  # tmp/1.a, new/1.a taken: becomes 2.b
    assert key == "2.b" and len(linked) == 2
    assert existing.read_bytes() == b"precious"
    assert (folder.path / "new" / "2.b").read_bytes() == b"mine"
    [k] = folder.publish([folder.stage(b"staged", "F", key="3.c")])
    assert k == "3.c" and (folder.path / "cur" / "3.c:2,F").read_bytes() == b"staged"
    assert os.listdir(folder.path / "tmp") == []


def test_fixed_key_clash_raises_with_every_method(folder: MaildirFolder,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (folder.path / "cur" / "k1:2,S").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        folder.publish([folder.stage(b"other", "S", key="k1")])
    monkeypatch.setattr(md, "_RENAMEAT2", None)
    with pytest.raises(FileExistsError):
        folder.deliver(b"other", "S", key="k1")
    assert (folder.path / "cur" / "k1:2,S").read_bytes() == b"precious"


def test_fixed_key_replaces_debris_in_tmp(folder: MaildirFolder) -> None:
    (folder.path / "tmp" / "k2").write_bytes(b"half a message from a killed run")
    key = folder.deliver(b"whole", "", key="k2")
    assert key == "k2" and (folder.path / "new" / "k2").read_bytes() == b"whole"
    assert os.listdir(folder.path / "tmp") == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277, 0o377, 0o177])
def test_file_mode_is_0600_whatever_the_umask(umask: int, folder: MaildirFolder) -> None:
    old = os.umask(umask)
    md.refresh_umask()
    try:
        key = folder.deliver(b"x", "S")
        [key2] = folder.publish([folder.stage(b"y", "")])
    finally:
        os.umask(old)
        md.refresh_umask()
    assert mode_of(folder.path / "cur" / f"{key}:2,S") == 0o600
    assert mode_of(folder.path / "new" / key2) == 0o600


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert md._read_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_fchmod_skipped_only_when_the_umask_cannot_remove_bits(
        folder: MaildirFolder, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fchmod
    monkeypatch.setattr(md.os, "fchmod", lambda fd, mode: (calls.append(mode), real(fd, mode)))
    for umask, expected in ((0o022, []), (0o277, [0o600])):
        old = os.umask(umask)
        md.refresh_umask()
        try:
            calls.clear()
            folder.deliver(b"x", "")
        finally:
            os.umask(old)
            md.refresh_umask()
        assert calls == expected


def test_sync_fsyncs_each_directory(folder: MaildirFolder,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """sync() is what makes deliveries, renames and removals durable (the engine records them
    only after it): a real fsync of each of cur/ and new/ themselves, not of a file (tmp/
    holds nothing that must survive a crash)."""
    folder.deliver(b"x", "")
    synced: list[str] = []
    real = md.os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(md.os, "fsync", recording)
    folder.sync()
    assert synced == [str(folder.path / sub) for sub in ("cur", "new")]


# ---------------------------------------------------------------------------------------------
# scan / path_of / read


def test_scan_round_trip(folder: MaildirFolder) -> None:
    k1 = folder.deliver(b"1", "")
    k2 = folder.deliver(b"2", "FS")
    k3 = folder.deliver(b"3", "DPRT")
    entries = folder.scan()
    assert entries == {
        k1: LocalEntry(k1, "new", k1, ""),
        k2: LocalEntry(k2, "cur", f"{k2}:2,FS", "FS"),
        k3: LocalEntry(k3, "cur", f"{k3}:2,DPRT", "DPRT"),
    }


def test_scan_ignores_dotfiles_dirs_and_unknown_info(folder: MaildirFolder) -> None:
    (folder.path / "cur" / ".hidden:2,S").write_bytes(b"")
    (folder.path / "new" / ".nfs0001").write_bytes(b"")
    (folder.path / "cur" / "subdir").mkdir()
    (folder.path / "cur" / "k1:2,Sab").write_bytes(b"")  # keyword letters: ignored in flags
    (folder.path / "cur" / "k2:1,experimental").write_bytes(b"")
    (folder.path / "new" / "k3:2,S").write_bytes(b"")  # flags in new/: still read
    entries = folder.scan()
    assert set(entries) == {"k1", "k2", "k3"}
    assert entries["k1"].flags == "S"
    assert entries["k2"].flags == ""
    assert entries["k3"] == LocalEntry("k3", "new", "k3:2,S", "S")


def test_scan_duplicate_key_cur_wins(folder: MaildirFolder) -> None:
    (folder.path / "new" / "dup").write_bytes(b"new copy")
    (folder.path / "cur" / "dup:2,S").write_bytes(b"cur copy")
    (folder.path / "cur" / "dup:2,F").write_bytes(b"cur copy 2")
    entries = folder.scan()
    assert entries["dup"].subdir == "cur"
    assert entries["dup"].name == "dup:2,F"  # stable choice: the smallest name
    # The duplicates are left alone.
    assert sorted(os.listdir(folder.path / "cur")) == ["dup:2,F", "dup:2,S"]
    assert os.listdir(folder.path / "new") == ["dup"]


def test_scan_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert MaildirFolder(tmp_path / "nope").scan() == {}


def test_path_of_follows_renames_by_others(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "")
    folder.scan()
    # mutt marks it seen behind our back.
    os.rename(folder.path / "new" / key, folder.path / "cur" / f"{key}:2,S")
    assert folder.path_of(key) == folder.path / "cur" / f"{key}:2,S"
    assert folder.read(key) == b"x"


def test_path_of_missing(folder: MaildirFolder) -> None:
    with pytest.raises(FileNotFoundError):
        folder.path_of("nope")
    with pytest.raises(FileNotFoundError):
        folder.read("nope")


@pytest.mark.parametrize("key", ["", ".", "..", "../x", "a/b", ".hidden", "k:2,S", "a\0b"])
def test_keys_that_are_not_plain_names_are_refused(folder: MaildirFolder, key: str) -> None:
    with pytest.raises(ValueError):
        folder.path_of(key)
    with pytest.raises(ValueError):
        folder.remove(key)


# ---------------------------------------------------------------------------------------------
# set_flags / remove


def test_set_flags_moves_new_to_cur(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "")
    folder.set_flags(key, "S")
    assert os.listdir(folder.path / "new") == []
    assert os.listdir(folder.path / "cur") == [f"{key}:2,S"]
    assert folder.read(key) == b"x"


def test_set_flags_flagless_in_new_stays(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "")
    folder.set_flags(key, "")
    assert os.listdir(folder.path / "new") == [key]


def test_set_flags_clearing_keeps_cur_suffix(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "S")
    folder.set_flags(key, "")
    assert os.listdir(folder.path / "cur") == [f"{key}:2,"]
    assert folder.scan()[key].flags == ""


def test_set_flags_keeps_unknown_letters(folder: MaildirFolder) -> None:
    (folder.path / "cur" / "k:2,Sac").write_bytes(b"x")
    folder.set_flags("k", "RF")
    assert os.listdir(folder.path / "cur") == ["k:2,FRac"]
    folder.set_flags("k", "")
    assert os.listdir(folder.path / "cur") == ["k:2,ac"]


def test_set_flags_same_flags_is_noop(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "FS")
    folder.set_flags(key, "SF")
    assert os.listdir(folder.path / "cur") == [f"{key}:2,FS"]


def test_set_flags_replaces_experimental_info(folder: MaildirFolder) -> None:
    (folder.path / "cur" / "k:1,whatever").write_bytes(b"x")
    folder.set_flags("k", "S")
    assert os.listdir(folder.path / "cur") == ["k:2,S"]


def test_set_flags_missing(folder: MaildirFolder) -> None:
    with pytest.raises(FileNotFoundError):
        folder.set_flags("nope", "S")


def test_set_flags_target_exists_is_fine(folder: MaildirFolder) -> None:
    # Another tool already made the same rename (a copy with the target name exists).
    (folder.path / "new" / "k").write_bytes(b"x")
    (folder.path / "cur" / "k:2,S").write_bytes(b"x")
    folder.scan()
    folder.set_flags("k", "S")
    assert folder.scan()["k"].name == "k:2,S"


def test_set_flags_after_stale_scan(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "S")
    folder.scan()
    os.rename(folder.path / "cur" / f"{key}:2,S", folder.path / "cur" / f"{key}:2,RS")
    folder.set_flags(key, "F")
    assert os.listdir(folder.path / "cur") == [f"{key}:2,F"]


def test_remove(folder: MaildirFolder) -> None:
    k1 = folder.deliver(b"x", "")
    k2 = folder.deliver(b"y", "S")
    assert folder.remove(k1) is True
    assert folder.remove(k2) is True
    assert folder.remove(k1) is False
    assert folder.remove("never-was") is False
    assert folder.scan() == {}


def test_remove_after_rename_by_others(folder: MaildirFolder) -> None:
    key = folder.deliver(b"x", "")
    folder.scan()
    os.rename(folder.path / "new" / key, folder.path / "cur" / f"{key}:2,T")
    assert folder.remove(key) is True
    assert os.listdir(folder.path / "cur") == []


# ---------------------------------------------------------------------------------------------
# header_info


def put(folder: MaildirFolder, key: str, data: bytes) -> str:
    (folder.path / "cur" / f"{key}:2,S").write_bytes(data)
    return key


@pytest.mark.parametrize(("data", "expected_id"), [
    (b"Message-ID: <a@b>\n\nbody\n", "<a@b>"),
    (b"message-id:<a@b>\n\n", "<a@b>"),
    (b"MESSAGE-ID: <a@b>\r\n\r\n", "<a@b>"),
    (b"Subject: x\nMessage-Id:\n <folded@example.com>\nTo: y\n\n", "<folded@example.com>"),
    (b"Message-ID:\r\n\t<crlf-folded@example.com>\r\nTo: y\r\n\r\n", "<crlf-folded@example.com>"),
    (b"Message-ID: <first@x> (comment)\nMessage-ID: <second@x>\n\n", "<first@x>"),
    (b"Subject: none\n\nMessage-ID: <in-body@x>\n", None),
    (b"Subject: mixed\r\n\nMessage-ID: <after-mixed-blank@x>\n", None),
    (b"Subject: mixed\n\r\nMessage-ID: <after-mixed-blank@x>\n", None),
    (b"\nMessage-ID: <no-header@x>\n", None),
    (b"Message-ID: bare-id-without-brackets\n\n", "bare-id-without-brackets"),
    (b"Message-ID:   \n\n", None),
    (b"Resent-Message-ID: <resent@x>\n\n", None),
    (b"", None),
    (b"Message-ID: <only-header@x>", "<only-header@x>"),
])
def test_header_info_message_id(folder: MaildirFolder, data: bytes,
                                expected_id: str | None) -> None:
    key = put(folder, "k", data)
    message_id, size, trace = folder.header_info(key)
    assert message_id == expected_id
    assert trace == 0
    assert size == len(lf_to_crlf(data))


def test_header_info_size_counts_bare_lf_only(folder: MaildirFolder) -> None:
    data = b"a\nb\r\nc\n\r\n\rd"
    # bare LFs: after a, after c -> 2 extra bytes
    assert folder.header_info(put(folder, "k", data)) == (None, len(data) + 2, 0)


def test_header_info_streams_across_chunk_boundaries(folder: MaildirFolder,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(md, "_CHUNK", 3)  # every boundary case gets hit
    data = (b"Subject: x\r\nMessage-ID:\r\n <split@example.org>\r\n\r\n"
            b"body\r\nmore\nlines\r\n\n")
    for i in range(4):  # shift the alignment
        blob = b"X-Pad: " + b"p" * i + b"\r\n" + data
        key = put(folder, f"k{i}", blob)
        assert folder.header_info(key) == ("<split@example.org>", len(lf_to_crlf(blob)), 0)


def test_header_info_large_body_is_streamed(folder: MaildirFolder) -> None:
    body = b"line\n" * 400_000  # 2 MB
    data = b"Message-ID: <big@x>\n\n" + body
    key = folder.deliver([data[:10], data[10:]], "")
    assert folder.header_info(key) == ("<big@x>", len(data) + data.count(b"\n"), 0)


def test_header_info_counts_trace_fields_as_the_server_would(folder: MaildirFolder) -> None:
    """mbsync's X-TUID (and other added fields) are counted with CRLF, as RFC822.SIZE counts
    them, so size - trace_bytes equals the server size of the copy without them."""
    plain = b"Message-ID: <t@x>\nSubject: s\n\nbody\n"
    tuid = b"Message-ID: <t@x>\nX-TUID: AbCdEf012345\nSubject: s\nStatus: RO\n\nbody\n"
    info = folder.header_info(put(folder, "k", tuid))
    assert info.message_id == "<t@x>"
    assert info.size - info.trace_bytes == len(lf_to_crlf(plain))
    assert info.trace_bytes == len(b"X-TUID: AbCdEf012345\r\nStatus: RO\r\n")


def test_header_stream_caps_header_memory() -> None:
    # No blank line ever: the header collection stops at the cap, the size is still exact.
    chunks = [b"X: " + b"y" * 70_000 + b"\n" for _ in range(20)]
    message_id, size, _trace = md._header_info_stream(iter(chunks))
    assert message_id is None
    assert size == sum(len(c) + 1 for c in chunks)


# ---------------------------------------------------------------------------------------------
# clean_tmp


def test_clean_tmp(folder: MaildirFolder) -> None:
    old = folder.path / "tmp" / "old"
    fresh = folder.path / "tmp" / "fresh"
    recently_read = folder.path / "tmp" / "recently-read"
    for p in (old, fresh, recently_read):
        p.write_bytes(b"x")
    long_ago = time.time() - 40 * 3600
    os.utime(old, (long_ago, long_ago))
    os.utime(recently_read, (time.time(), long_ago))
    (folder.path / "tmp" / "adir").mkdir()
    assert folder.clean_tmp() == 1
    assert sorted(os.listdir(folder.path / "tmp")) == ["adir", "fresh", "recently-read"]
    assert folder.clean_tmp(older_than=-1) == 2
    assert MaildirFolder(folder.path / "missing").clean_tmp() == 0


# ---------------------------------------------------------------------------------------------
# line ends


def test_crlf_to_lf() -> None:
    assert crlf_to_lf(b"a\r\nb\nc\r\r\n\r") == b"a\nb\nc\r\n\r"
    assert crlf_to_lf(b"a\r\nb\r\n") == b"a\nb\n"  # the fast path: every CR starts a CRLF
    assert crlf_to_lf(b"a\rb\nc\r\n") == b"a\rb\nc\n"  # as many CRs as LFs, one lone
    assert crlf_to_lf(b"a\r\nb\nc\r\n") == b"a\nb\nc\n"  # a bare LF: the slow way
    assert crlf_to_lf(b"no line end at all") == b"no line end at all"
    assert crlf_to_lf(b"") == b"" and crlf_to_lf(b"\r") == b"\r"


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r", b"\n\r", b"ab", b""]),
                max_size=40))
def test_crlf_to_lf_is_exactly_crlf_replaced(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert crlf_to_lf(data) == data.replace(b"\r\n", b"\n")


def test_lf_to_crlf() -> None:
    assert lf_to_crlf(b"a\nb\r\nc\n\n\r") == b"a\r\nb\r\nc\r\n\r\n\r"
    assert lf_to_crlf(crlf_to_lf(b"x\r\ny\r\n")) == b"x\r\ny\r\n"


@given(st.lists(st.binary(max_size=8).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")))
       | st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b""])))
def test_stream_converters_match_whole(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    assert b"".join(crlf_to_lf_stream(chunks)) == crlf_to_lf(whole)
    assert b"".join(lf_to_crlf_stream(chunks)) == lf_to_crlf(whole)


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b""])))
def test_to_crlf_stream_is_imaplibs_mapping(chunks: list[bytes]) -> None:
    """What a streamed APPEND sends is what imaplib's append() sends of the whole message."""
    import imaplib

    whole = b"".join(chunks)
    assert b"".join(to_crlf_stream(chunks)) == imaplib.MapCRLF.sub(b"\r\n", whole)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"ab", b""]), max_size=20))
def test_tmp_writer_writes_what_stage_writes(folder: MaildirFolder, chunks: list[bytes]) -> None:
    writer = folder.tmp_writer()
    for chunk in chunks:
        writer.write(chunk)
    written = writer.finish()
    assert written.server_bytes == sum(map(len, chunks))
    assert written.tmp_path == f"{folder.path}/tmp/{written.key}.part"
    staged = folder.stage_written(written, "S", mtime=1_000_000)
    [key] = folder.publish([staged])
    assert key == written.key
    assert folder.read(key) == crlf_to_lf(b"".join(chunks))
    assert os.stat(folder.path_of(key)).st_mtime == 1_000_000
    assert not os.listdir(folder.path / "tmp")
    folder.remove(key)


def test_tmp_writer_abort_and_discard_leave_nothing(folder: MaildirFolder) -> None:
    writer = folder.tmp_writer()
    writer.write(b"half a message\r\n")
    writer.abort()
    writer = folder.tmp_writer()
    writer.write(b"a whole one\r\n")
    writer.finish().discard()
    assert not os.listdir(folder.path / "tmp")


def test_remove_partial_takes_only_part_files(folder: MaildirFolder) -> None:
    """What a killed sync was streaming goes; another program's delivery in tmp/ stays."""
    writer = folder.tmp_writer()
    writer.write(b"cut short")
    (folder.path / "tmp" / "12345.other-mda").write_bytes(b"in progress")
    assert folder.remove_partial() == 1
    assert os.listdir(folder.path / "tmp") == ["12345.other-mda"]


def test_open_message_follows_a_rename(folder: MaildirFolder) -> None:
    key = folder.deliver(b"Subject: x\n\nbody\n", "")
    folder.set_flags(key, "S")  # renamed into cur/ behind the cached location
    with folder.open_message(key) as handle:
        assert md.header_info_of(handle).size == len(b"Subject: x\r\n\r\nbody\r\n")
        assert md.read_head(handle, 10) == b"Subject: x"


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"ab", b"\n\n", b""]), max_size=30),
       st.integers(min_value=1, max_value=5))
def test_header_stream_size_matches_whole(parts: list[bytes], chunk: int) -> None:
    whole = b"".join(parts)
    chunks = [whole[i:i + chunk] for i in range(0, len(whole), chunk)]
    assert md._header_info_stream(chunks)[1] == len(lf_to_crlf(whole))


# ---------------------------------------------------------------------------------------------
# escaping and layouts


@pytest.mark.parametrize(("component", "verbatim", "maildirpp"), [
    ("INBOX", "INBOX", "INBOX"),
    ("Sent Items", "Sent Items", "Sent Items"),
    ("Entwürfe", "Entwürfe", "Entwürfe"),
    ("📬 Post", "📬 Post", "📬 Post"),
    ("", "%", "%"),
    (".", "%2E", "%2E"),
    ("..", "%2E.", "%2E%2E"),
    ("...", "%2E..", "%2E%2E%2E"),
    (".hidden", "%2Ehidden", "%2Ehidden"),
    ("a.b", "a.b", "a%2Eb"),
    ("a.", "a.", "a%2E"),
    ("../x", "%2E.%2Fx", "%2E%2E%2Fx"),
    ("/etc/passwd", "%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"),
    ("a\\b", "a%5Cb", "a%5Cb"),
    ("nul\0byte", "nul%00byte", "nul%00byte"),
    ("\x01", "%01", "%01"),
    ("tab\there", "tab%09here", "tab%09here"),
    ("new\nline", "new%0Aline", "new%0Aline"),
    ("del\x7f", "del%7F", "del%7F"),
    ("csi\x9b", "csi%C2%9B", "csi%C2%9B"),
    ("100%", "100%25", "100%25"),
    ("%2E", "%252E", "%252E"),
    ("cur", "%63ur", "cur"),
    ("new", "%6Eew", "new"),
    ("tmp", "%74mp", "tmp"),
    ("Cur", "Cur", "Cur"),
    ("current", "current", "current"),
    ("\ud800", "%ED%A0%80", "%ED%A0%80"),
])
def test_escape_table(component: str, verbatim: str, maildirpp: str) -> None:
    assert escape_component(component, "verbatim") == verbatim
    assert escape_component(component, "maildir++") == maildirpp
    assert unescape_component(verbatim) == component
    assert unescape_component(maildirpp) == component


@pytest.mark.parametrize("text", ["%", "%2", "%2e", "%ZZ", "a%", "%FF", "%C3"])
def test_unescape_rejects_what_escaping_never_makes(text: str) -> None:
    if text == "%":
        assert unescape_component(text) == ""  # the empty-component marker
        return
    with pytest.raises(ValueError):
        unescape_component(text)


def test_escape_rejects_unknown_layout() -> None:
    with pytest.raises(ValueError):
        escape_component("x", "mbox")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "relative"), [
    (("INBOX",), "INBOX"),
    (("A", "B"), "A/B"),
    (("Lists", "python"), "Lists/python"),
    (("..",), "%2E."),
    (("..", ".."), "%2E./%2E."),
    (("../x",), "%2E.%2Fx"),
    (("/etc/passwd",), "%2Fetc%2Fpasswd"),
    (("a", "cur"), "a/%63ur"),
    (("a", ".b"), "a/%2Eb"),
    (("a.b",), "a.b"),
    (("Entwürfe",), "Entwürfe"),
    (("", "x"), "%/x"),
])
def test_verbatim_paths(tmp_path: Path, name: tuple[str, ...], relative: str) -> None:
    m = Maildir(tmp_path, "verbatim")
    assert m.local_path(name) == tmp_path / relative
    assert m.folder(name).path == tmp_path / relative


@pytest.mark.parametrize(("name", "relative"), [
    (("INBOX",), ""),
    (("A", "B"), ".A.B"),
    (("a.b",), ".a%2Eb"),
    (("a", "b"), ".a.b"),
    (("..",), ".%2E%2E"),
    (("",), ".%"),
    (("a", "", "b"), ".a.%.b"),
    (("../x",), ".%2E%2E%2Fx"),
    (("/etc/passwd",), ".%2Fetc%2Fpasswd"),
    (("INBOX", "Sub"), ".INBOX.Sub"),
    (("cur",), ".cur"),
    (("Entwürfe",), ".Entwürfe"),
    (("📬",), ".📬"),
])
def test_maildirpp_paths(tmp_path: Path, name: tuple[str, ...], relative: str) -> None:
    m = Maildir(tmp_path, "maildir++")
    expected = tmp_path / relative if relative else tmp_path
    assert m.local_path(name) == expected


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_naive_collisions_are_distinct(tmp_path: Path, layout: md.Layout) -> None:
    m = Maildir(tmp_path, layout)
    names = [("a.b",), ("a", "b"), ("a%2Eb",), ("%2E",), (".",), ("a", ".b"), ("a/b",),
             ("a", "cur"), ("a", "%63ur"), ("",), ("%",), ("%25",), ("INBOX",), ("inbox",)]
    paths = [m.local_path(n) for n in names]
    assert len(set(paths)) == len(paths)


def test_local_path_refuses_bad_names(tmp_path: Path) -> None:
    for layout in ("verbatim", "maildir++"):
        m = Maildir(tmp_path, layout)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            m.local_path(())
        with pytest.raises(ValueError):
            m.local_path("INBOX")  # type: ignore[arg-type]


def test_local_path_guard_catches_escaping_bugs(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # If escaping were ever broken, the final check still refuses to leave root.
    monkeypatch.setattr(md, "escape_component", lambda c, layout: c)
    with pytest.raises(ValueError):
        Maildir(tmp_path / "root", "verbatim").local_path(("..", "x"))
    with pytest.raises(ValueError):
        Maildir(tmp_path / "root", "verbatim").local_path(("/etc",))
    with pytest.raises(ValueError):
        Maildir(tmp_path / "root", "verbatim").local_path((".",))


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Maildir(tmp_path, "mbox")  # type: ignore[arg-type]


def test_ensure_root(tmp_path: Path) -> None:
    m = Maildir(tmp_path / "Mail" / "work", "verbatim")
    m.ensure_root()
    assert mode_of(tmp_path / "Mail") == 0o700
    assert mode_of(tmp_path / "Mail" / "work") == 0o700
    m.ensure_root()


# ---------------------------------------------------------------------------------------------
# list_folders


def test_list_folders_verbatim(tmp_path: Path) -> None:
    m = Maildir(tmp_path, "verbatim")
    names = [("INBOX",), ("A", "B"), ("A", "B", "C"), ("..",), ("x", "cur"), ("Entwürfe",),
             ("a/b",), ("",)]
    for n in names:
        m.folder(n).create()
    # ("A",) is only a parent directory (\Noselect): not a folder, but its children are.
    assert m.list_folders() == sorted(names)


def test_list_folders_maildirpp(tmp_path: Path) -> None:
    m = Maildir(tmp_path, "maildir++")
    names = [("INBOX",), ("A", "B"), ("a.b",), ("..",), ("cur",), ("Entwürfe",), ("a/b",),
             ("INBOX", "Sub")]
    for n in names:
        m.folder(n).create()
    assert (tmp_path / "cur").is_dir()
    assert m.list_folders() == sorted(names)


def test_list_folders_without_inbox(tmp_path: Path) -> None:
    m = Maildir(tmp_path, "maildir++")
    m.folder(("Sent",)).create()
    assert m.list_folders() == [("Sent",)]


def test_list_folders_missing_root(tmp_path: Path) -> None:
    assert Maildir(tmp_path / "nope", "verbatim").list_folders() == []
    assert Maildir(tmp_path / "nope", "maildir++").list_folders() == []


def test_list_folders_ignores_non_maildirs_and_hidden(tmp_path: Path) -> None:
    m = Maildir(tmp_path, "verbatim")
    m.folder(("Real",)).create()
    (tmp_path / "plain-dir").mkdir()
    (tmp_path / ".notmuch" / "xapian").mkdir(parents=True)
    (tmp_path / ".hidden" / "cur").mkdir(parents=True)  # hidden dirs are never ours
    (tmp_path / "file").write_text("x")
    assert m.list_folders() == [("Real",)]

    p = Maildir(tmp_path / "pp", "maildir++")
    p.folder(("Real",)).create()
    (tmp_path / "pp" / ".notmuch" / "xapian").mkdir(parents=True)
    (tmp_path / "pp" / "plain").mkdir()
    assert p.list_folders() == [("Real",)]


def test_list_folders_skips_non_canonical_names(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # Made by hand: "100%" would map back to "100%25", a different directory. Listing it
    # would make the engine create and fill that other directory: skip and warn instead.
    m = Maildir(tmp_path, "verbatim")
    for raw in ("100%", "a%2e", "%FF", "ok"):
        (tmp_path / raw / "cur").mkdir(parents=True)
    assert m.list_folders() == [("ok",)]
    assert "100%" in caplog.text

    p = Maildir(tmp_path / "pp", "maildir++")
    for raw in (".100%", ".a..b", ".INBOX", ".ok"):
        (tmp_path / "pp" / raw / "cur").mkdir(parents=True)
    assert p.list_folders() == [("ok",)]


def test_list_folders_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    MaildirFolder(outside / "Secret").create()
    MaildirFolder(outside).create()
    root = tmp_path / "root"
    m = Maildir(root, "verbatim")
    m.folder(("Real",)).create()
    os.symlink(outside, root / "link")
    os.symlink(root, root / "Real" / "loop")  # a cycle must not hang the walk
    assert m.list_folders() == [("Real",)]

    p = Maildir(tmp_path / "pp", "maildir++")
    p.ensure_root()
    os.symlink(outside, tmp_path / "pp" / ".Linked")
    assert p.list_folders() == []


# ---------------------------------------------------------------------------------------------
# property: arbitrary unicode names stay inside root, never collide, and round-trip

components = st.text(
    # exclude_categories=() lets lone surrogates in too (malformed modified UTF-7).
    alphabet=st.characters(exclude_categories=()),
    max_size=12,
) | st.sampled_from(["", ".", "..", "cur", "new", "tmp", "INBOX", "%", "%2E", "/", "\\", "\0"])
folder_names = st.lists(components, min_size=1, max_size=4).map(tuple)


def _inside(root: Path, path: Path) -> bool:
    r, p = os.path.normpath(root), os.path.normpath(path)
    return os.path.commonpath([r, p]) == r


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(folder_names, min_size=1, max_size=6, unique=True))
def test_mapping_properties(tmp_path_factory: pytest.TempPathFactory, layout: md.Layout,
                            names: list[tuple[str, ...]]) -> None:
    root = tmp_path_factory.mktemp("prop")
    m = Maildir(root, layout)
    paths = {}
    for name in names:
        path = m.local_path(name)
        assert _inside(root, path)
        if name != ("INBOX",) or layout == "verbatim":
            assert os.path.normpath(path) != os.path.normpath(root)
        # Every path component is a plain directory name: no "..", no ".", no separators.
        rel = os.path.relpath(path, root)
        if rel != ".":
            assert all(part not in ("", ".", "..") and "\0" not in part
                       for part in rel.split(os.sep))
        paths[name] = path
    assert len(set(paths.values())) == len(paths), "distinct names must map to distinct paths"
    for name in names:
        try:
            m.folder(name).create()
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a filesystem limit, not a mapping bug
                return
            raise
    listed = m.list_folders()
    # Exactly the created names: parents made along the way have no cur/, so they are not
    # folders, and every created directory maps back to its own name.
    assert set(listed) == set(names)
    for name in listed:
        assert m.local_path(name) == paths[name]


@given(st.text(max_size=30), st.sampled_from(["verbatim", "maildir++"]))
def test_escape_round_trip(component: str, layout: md.Layout) -> None:
    escaped = escape_component(component, layout)
    assert unescape_component(escaped) == component
    assert escaped not in ("", ".", "..")
    assert "/" not in escaped and "\0" not in escaped and "\\" not in escaped
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in escaped)
    if layout == "maildir++":
        assert "." not in escaped
    else:
        assert not escaped.startswith(".")
        assert escaped not in ("cur", "new", "tmp")
