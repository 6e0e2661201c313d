"""Flag conversion and the three-way merge, as tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.core.flags import KNOWN_LETTERS, from_imap, from_info, merge, normalize, to_imap

LETTERS = "".join(sorted(KNOWN_LETTERS))
flag_sets = st.sets(st.sampled_from(LETTERS)).map(normalize)


@pytest.mark.parametrize(
    ("imap", "letters"),
    [
        ([], ""),
        (["\\Seen"], "S"),
        (["\\Seen", "\\Answered", "\\Flagged"], "FRS"),
        (["\\Deleted"], "T"),  # \Deleted is just a flag: T
        (["\\Draft", "$Forwarded"], "DP"),
        ([b"\\Seen", b"\\Flagged"], "FS"),  # imapclient returns bytes
        (["\\SEEN", "\\flagged", "$FORWARDED"], "FPS"),  # flags are case-insensitive
        (["\\Recent", "$Junk", "NonJunk", "\\Seen"], "S"),  # unknown keywords are not synced
        (["\\Seen", "\\Seen"], "S"),
        ([b"\xff\\Seen"], ""),  # undecodable bytes never raise
    ],
)
def test_from_imap(imap: list[str | bytes], letters: str) -> None:
    assert from_imap(imap) == letters


@pytest.mark.parametrize(
    ("letters", "imap"),
    [
        ("", []),
        ("S", ["\\Seen"]),
        ("FRS", ["\\Flagged", "\\Answered", "\\Seen"]),
        ("SRF", ["\\Flagged", "\\Answered", "\\Seen"]),  # order follows the sorted letters
        ("DPT", ["\\Draft", "$Forwarded", "\\Deleted"]),
        ("SXa", ["\\Seen"]),  # unknown letters dropped
    ],
)
def test_to_imap(letters: str, imap: list[str]) -> None:
    assert to_imap(letters) == imap


@given(flag_sets)
def test_imap_round_trip(letters: str) -> None:
    assert from_imap(to_imap(letters)) == letters


@pytest.mark.parametrize(
    ("info", "letters"),
    [
        ("2,", ""),
        ("2,S", "S"),
        ("2,FS", "FS"),
        ("2,SF", "FS"),  # sorted even if a tool wrote them out of order
        ("2,DFPRST", "DFPRST"),
        ("2,Sab", "S"),  # lowercase letters are experimental flags: ignored
        ("2,SS", "S"),
        ("1,experimental", ""),  # "1," info is not about flags
        ("", ""),
        ("S", ""),  # no "2," prefix: not flags
    ],
)
def test_from_info(info: str, letters: str) -> None:
    assert from_info(info) == letters


@pytest.mark.parametrize(
    ("synced", "local", "remote", "merged"),
    [
        ("", "", "", ""),
        ("S", "S", "S", "S"),
        # one side changes, the other does not: the change wins
        ("", "S", "", "S"),
        ("", "", "S", "S"),
        ("S", "", "S", ""),
        ("S", "S", "", ""),
        # the same change on both sides is one change
        ("", "S", "S", "S"),
        ("S", "", "", ""),
        # different changes on each side merge per flag
        ("", "S", "F", "FS"),
        ("S", "F", "S", "F"),  # local: -S +F
        ("FS", "F", "FRS", "FR"),  # local -S, remote +R
        ("FS", "S", "F", ""),  # local -F, remote -S
        ("RS", "FRS", "R", "FR"),  # local +F, remote -S
        ("T", "T", "ST", "ST"),  # T is just a flag
        ("", "T", "", "T"),
        ("DFPRST", "", "DFPRST", ""),
    ],
)
def test_merge_table(synced: str, local: str, remote: str, merged: str) -> None:
    assert merge(synced, local, remote) == merged
    # swapping the sides never changes the result
    assert merge(synced, remote, local) == merged


@given(flag_sets, flag_sets, flag_sets)
def test_merge_properties(synced: str, local: str, remote: str) -> None:
    merged = merge(synced, local, remote)
    assert merged == normalize(merged)
    assert merge(synced, local, synced) == local  # only local changed
    assert merge(synced, synced, remote) == remote  # only remote changed
    assert merge(synced, local, local) == local  # both made the same change
    # merging again against the result is a fixed point (idempotency of flag sync)
    assert merge(merged, merged, merged) == merged
    for letter in LETTERS:
        base, loc, rem = (letter in synced), (letter in local), (letter in remote)
        if loc == base:
            assert (letter in merged) == rem
        elif rem == base:
            assert (letter in merged) == loc


def test_normalize() -> None:
    assert normalize("SFR") == "FRS"
    assert normalize("SSx") == "S"
    assert normalize([]) == ""
