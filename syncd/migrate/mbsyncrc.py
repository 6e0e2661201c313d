"""A parser for mbsync's (isync's) configuration file, ~/.mbsyncrc, as isync 1.4 reads it.

The grammar (mbsync(1), "CONFIGURATION"): one ``Keyword args...`` per line; ``#`` starts a
comment line; arguments are separated by blanks and may be double-quoted, with backslash
escapes inside quotes. A section starts with ``IMAPAccount``, ``IMAPStore``, ``MaildirStore``,
``Channel`` or ``Group`` and its name, and ends at an empty line or the next section keyword;
keywords outside any section are global defaults for every channel. Keywords are
case-insensitive. ``Master``/``Slave`` are the pre-1.4 names of ``Far``/``Near``; an
``IMAPStore`` may carry its account's options itself (the old style, without IMAPAccount).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MbsyncConfig", "Section", "parse_mbsyncrc", "split_args"]

SECTION_KINDS = ("imapaccount", "imapstore", "maildirstore", "channel", "group")
# Old spellings isync still accepts, and what they mean now.
_ALIASES = {"master": "far", "slave": "near", "pattern": "patterns"}


class MbsyncrcError(ValueError):
    """A line mbsync itself would not accept (an unterminated quote, a section without name)."""


@dataclass
class Section:
    kind: str  # one of SECTION_KINDS
    name: str
    line: int
    # keyword (lower case, aliases resolved) -> every occurrence's arguments, in order
    options: dict[str, list[list[str]]] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for ``key`` (mbsync: a later line overrides an earlier one)."""
        values = self.options.get(key)
        if not values or not values[-1]:
            return default
        return " ".join(values[-1])

    def all_args(self, key: str) -> list[str]:
        """Every argument of every occurrence of ``key`` (``Patterns`` given several times)."""
        return [arg for args in self.options.get(key, []) for arg in args]


@dataclass
class MbsyncConfig:
    path: Path | None
    sections: list[Section]
    globals: Section

    def of_kind(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]

    def find(self, kind: str, name: str) -> Section | None:
        for section in self.sections:
            if section.kind == kind and section.name == name:
                return section
        return None


def split_args(text: str, line: int = 0) -> list[str]:
    """Blank-separated arguments; "double quotes" group, and a backslash inside them escapes
    the next character (isync's get_arg)."""
    args: list[str] = []
    pos, size = 0, len(text)
    while pos < size:
        while pos < size and text[pos] in " \t":
            pos += 1
        if pos >= size:
            break
        current: list[str] = []
        while pos < size and text[pos] not in " \t":
            char = text[pos]
            if char != '"':
                current.append(char)
                pos += 1
                continue
            pos += 1
            while True:
                if pos >= size:
                    raise MbsyncrcError(f"line {line}: unterminated quoted string")
                char = text[pos]
                if char == '"':
                    pos += 1
                    break
                if char == "\\" and pos + 1 < size:
                    pos += 1
                    char = text[pos]
                current.append(char)
                pos += 1
        args.append("".join(current))
    return args


def parse_mbsyncrc(text: str, path: Path | None = None) -> MbsyncConfig:
    globals_ = Section("global", "", 0)
    sections: list[Section] = []
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            current = None  # an empty line ends a section
            continue
        if stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ") if " " in stripped else (
            stripped.partition("\t"))
        key = keyword.lower()
        key = _ALIASES.get(key, key)
        args = split_args(rest, number)
        if key in SECTION_KINDS:
            if not args:
                raise MbsyncrcError(f"line {number}: {keyword} needs a name")
            current = Section(key, args[0], number)
            sections.append(current)
            continue
        (current or globals_).options.setdefault(key, []).append(args)
    return MbsyncConfig(path, sections, globals_)


def load_mbsyncrc(path: Path) -> MbsyncConfig:
    return parse_mbsyncrc(path.read_text(encoding="utf-8"), path)


@dataclass
class Channel:
    """One Channel with its two stores resolved. ``far_box``/``near_box``: the mailbox after
    ``:store:`` (empty = the store's root, the usual with Patterns)."""

    section: Section
    far: Section  # the IMAPStore
    far_box: str
    near: Section  # the MaildirStore
    near_box: str
    account: Section  # the IMAPAccount, or the IMAPStore itself (old style)
    config: MbsyncConfig

    @property
    def name(self) -> str:
        return self.section.name

    def option(self, key: str) -> str | None:
        """A channel option, else the global default (mbsync's precedence)."""
        value = self.section.get(key)
        return value if value is not None else self.config.globals.get(key)

    def option_args(self, key: str) -> list[str] | None:
        if key in self.section.options:
            return self.section.all_args(key)
        if key in self.config.globals.options:
            return self.config.globals.all_args(key)
        return None


def _store_ref(value: str | None, where: Section) -> tuple[str, str]:
    """``:store:box`` -> (store, box)."""
    if not value or not value.startswith(":") or value.count(":") < 2:
        raise MbsyncrcError(f"line {where.line}: channel {where.name!r}: expected "
                            f":store:[mailbox], got {value!r}")
    _, store, box = value.split(":", 2)
    return store, box


def channels(config: MbsyncConfig) -> list[Channel]:
    """Every channel between an IMAP store and a Maildir store (either way round)."""
    found: list[Channel] = []
    for section in config.of_kind("channel"):
        ends = []
        for side in ("far", "near"):
            store_name, box = _store_ref(section.get(side), section)
            store = config.find("imapstore", store_name) or config.find(
                "maildirstore", store_name)
            if store is None:
                raise MbsyncrcError(f"line {section.line}: channel {section.name!r}: no store "
                                    f"named {store_name!r}")
            ends.append((store, box))
        kinds = {store.kind for store, _ in ends}
        if kinds != {"imapstore", "maildirstore"}:
            continue  # IMAP to IMAP or Maildir to Maildir: nothing syncd does
        (far, far_box), (near, near_box) = sorted(
            ends, key=lambda end: end[0].kind != "imapstore")
        account = far
        account_name = far.get("account")
        if account_name:
            found_account = config.find("imapaccount", account_name)
            if found_account is None:
                raise MbsyncrcError(f"line {far.line}: store {far.name!r}: no IMAPAccount "
                                    f"named {account_name!r}")
            account = found_account
        found.append(Channel(section, far, far_box, near, near_box, account, config))
    return found
