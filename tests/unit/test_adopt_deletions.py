"""adopt's evidence of messages deleted locally after the other tool's last run: only pairs
its state records plainly, only in a folder whose every file name was read, never past what
the server holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.migrate.adopt import (
    AdoptRefused,
    ServerFolder,
    ToolFolder,
    ToolPair,
    adopt_folder,
    deleted_key,
    message_names,
    record_deletions,
    uid_in_name,
)
from syncd.migrate.mbsync_state import parse_state
from syncd.migrate.offlineimap_state import _uid_reader

HEADER = "FarUidValidity 7\nNearUidValidity 9\nMaxPulledUid 6\nMaxPushedUid 0\n\n"


def test_state_lines_with_a_status_mark_are_no_evidence() -> None:
    state = parse_state(HEADER + "1 1 S\n2 2 ~S\n3 3 <\n4 4 ^F\n5 5 !\n6 6 \n7 0 S\n")
    assert sorted(state.pairs) == [1, 2, 3, 4, 5, 6]  # 7 has no Maildir side
    assert sorted(state.plain_pairs()) == [1, 6]
    assert state.pairs[2] == (2, "S")


def folder() -> ToolFolder:
    return ToolFolder("INBOX", Path("/m/INBOX"), 7)


def test_a_recorded_uid_no_file_carries_is_deleted() -> None:
    tool = folder()
    names = ["1.host,U=1:2,S", "3.host,U=3:2,"]
    record_deletions(tool, names, {1: (11, "S"), 2: (12, "F"), 3: (13, "")}, uid_in_name,
                     "mbsync")
    assert tool.deleted == {12: "F"} and tool.notes == []


@pytest.mark.parametrize("odd_name", ["1700000000.M1P2.host:2,S", ".hidden",
                                      "1.host,U=:2,"])
def test_one_unreadable_name_means_nothing_is_deleted(odd_name: str) -> None:
    tool = folder()
    names = ["1.host,U=1:2,S", odd_name]
    record_deletions(tool, names, {1: (11, "S"), 2: (12, "F")}, uid_in_name, "mbsync")
    assert tool.deleted == {}
    assert "1 file name(s) here do not carry a UID adopt can read" in tool.notes[0]


def test_an_unlisted_folder_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "cur").mkdir()  # new/ missing: not read in full
    assert message_names(tmp_path) is None
    tool = folder()
    record_deletions(tool, None, {2: (12, "")}, uid_in_name, "mbsync")
    assert tool.deleted == {} and "could not be listed" in tool.notes[0]


def test_offlineimap_names_of_another_folder_are_unreadable_here() -> None:
    uid_of = _uid_reader("a" * 32)
    assert uid_of(f"1_0.1.host,U=5,FMD5={'a' * 32}:2,S") == 5
    assert uid_of(f"1_0.1.host,U=5,FMD5={'b' * 32}:2,S") is None  # moved in, or a wrong md5
    assert uid_of("1_0.1.host:2,S") is None
    tool = folder()
    names = [f"1_0.1.host,U=5,FMD5={'b' * 32}:2,S"]
    record_deletions(tool, names, {5: (5, "S")}, uid_of, "offlineimap")
    assert tool.deleted == {}


def test_adopt_folder_records_a_pair_with_no_file() -> None:
    tool = folder()
    tool.pairs["1.host,U=1"] = ToolPair(11, "S")
    tool.deleted = {12: "F", 13: "", 11: "S"}  # 13: gone on the server too; 11: has a file
    server = ServerFolder(7, 20, {11: "S", 12: "F"})
    result = adopt_folder("acct", tool, server)
    assert result.deleted_locally == 1
    assert sorted((m.uid, m.key) for m in result.messages) == [
        (11, "1.host,U=1"), (12, deleted_key(12))]


def test_a_deleted_uid_the_server_never_gave_out_refuses() -> None:
    tool = folder()
    tool.deleted = {25: ""}
    with pytest.raises(AdoptRefused, match="never given out"):
        adopt_folder("acct", tool, ServerFolder(7, 20, {}))


def test_no_deletions_when_uidvalidity_changed() -> None:
    tool = folder()
    tool.deleted = {12: ""}
    result = adopt_folder("acct", tool, ServerFolder(8, 20, {12: ""}))
    assert result.by_content and result.messages == [] and result.deleted_locally == 0
