"""IMAP flags <-> Maildir info letters.

Inside syncd a message's flags are a string of Maildir letters in ASCII order ("FRS"); only
the six flags both sides can represent are synced, other IMAP keywords are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

Flags = str  # sorted Maildir letters, e.g. "FRS"; "" for none

IMAP_TO_LETTER: dict[str, str] = {
    "\\seen": "S",
    "\\answered": "R",
    "\\flagged": "F",
    "\\deleted": "T",
    "\\draft": "D",
    "$forwarded": "P",
}
LETTER_TO_IMAP: dict[str, str] = {
    "S": "\\Seen",
    "R": "\\Answered",
    "F": "\\Flagged",
    "T": "\\Deleted",
    "D": "\\Draft",
    "P": "$Forwarded",
}
KNOWN_LETTERS = frozenset(LETTER_TO_IMAP)
ALL_LETTERS: Flags = "".join(sorted(KNOWN_LETTERS))
# Letters that are IMAP keywords rather than system flags. A server may refuse or drop a
# keyword it does not support (mailutils, pymap) while it keeps every system flag.
KEYWORD_LETTERS = frozenset(letter for letter, name in LETTER_TO_IMAP.items()
                            if not name.startswith("\\"))


def normalize(letters: Iterable[str]) -> Flags:
    """Known letters only, each once, in ASCII order (the Maildir spec's order)."""
    return "".join(sorted(set(letters) & KNOWN_LETTERS))


def from_imap(flags: Iterable[str | bytes]) -> Flags:
    letters = []
    for flag in flags:
        text = flag.decode("ascii", "replace") if isinstance(flag, bytes) else flag
        letter = IMAP_TO_LETTER.get(text.lower())
        if letter:
            letters.append(letter)
    return normalize(letters)


def to_imap(flags: Flags) -> list[str]:
    return [LETTER_TO_IMAP[letter] for letter in normalize(flags)]


def from_info(info: str) -> Flags:
    """Flags from a Maildir info part ("2,FS"); unknown letters and experimental info ignored."""
    if not info.startswith("2,"):
        return ""
    return normalize(info[2:])


def merge(synced: Flags, local: Flags, remote: Flags) -> Flags:
    """Three-way merge per flag: a change on one side wins over no change; equal changes are one."""
    base, loc, rem = set(synced), set(local), set(remote)
    changed = (loc ^ base) | (rem ^ base)
    return normalize(base ^ changed)


def merge_keeping(synced: Flags, local: Flags, remote: Flags, storable: Flags) -> Flags:
    """``merge`` for a folder that keeps only the letters in ``storable``: those merge three
    ways; any other letter is local-only and keeps its local value (the server cannot hold
    it, so its absence there is no change, and the local side is never reverted for it)."""
    keep = set(storable)
    shared = merge(normalize(set(synced) & keep), normalize(set(local) & keep),
                   normalize(set(remote) & keep))
    return normalize(set(shared) | (set(local) - keep))


def storable(permanent: Iterable[str | bytes] | None) -> Flags:
    """The letters a folder keeps, from SELECT's PERMANENTFLAGS (RFC 3501 7.1): the flags
    listed, plus every keyword when ``\\*`` (new keywords allowed) is listed. None (no
    PERMANENTFLAGS sent) means every flag can be changed permanently (RFC 3501 6.3.1)."""
    if permanent is None:
        return ALL_LETTERS
    names = {(f.decode("ascii", "replace") if isinstance(f, bytes) else f).lower()
             for f in permanent}
    letters = {IMAP_TO_LETTER[name] for name in names if name in IMAP_TO_LETTER}
    if "\\*" in names:
        letters |= KEYWORD_LETTERS
    return normalize(letters)
