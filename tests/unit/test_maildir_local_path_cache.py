"""Maildir.local_path remembers each name's path (issue 21: asked several times per folder,
it was most of a 1,000-folder no-change sync's own time): same answers as before, and names
that must be refused are refused every time."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.store.maildir import Maildir


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_remembered_paths_are_the_computed_ones(tmp_path: Path, layout: str) -> None:
    maildir = Maildir(tmp_path / "Mail", layout)  # type: ignore[arg-type]
    names = [("INBOX",), ("Archive",), ("Lists", "python"), ("Überweisungen",), ("a.b",)]
    first = [maildir.local_path(n) for n in names]
    assert [maildir.local_path(n) for n in names] == first
    assert first == [maildir._local_path(n) for n in names]
    assert maildir.local_path(("Lists", "python")) is first[2]  # remembered, not rebuilt
    for name in names[1:]:
        assert maildir.folder_name_of(maildir.local_path(name)) == name


@pytest.mark.parametrize("bad", [(), "INBOX", ["INBOX"]])
def test_bad_names_are_refused_every_time(tmp_path: Path, bad: object) -> None:
    maildir = Maildir(tmp_path / "Mail", "verbatim")
    for _ in range(2):
        with pytest.raises((ValueError, TypeError)):
            maildir.local_path(bad)  # type: ignore[arg-type]
