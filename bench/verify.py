"""Correctness after a sync: the same messages (by Message-ID) with the same flags on both sides,
no duplicates, and the expected number of messages."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from tests.support.dovecot import Dovecot, User
from tests.support.syncd_env import IMAP_TO_LETTER

View = dict[str, dict[str, str]]  # folder -> {Message-ID: flag letters}

_MID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def info_flags(name: str) -> str:
    for sep in (":2,", "!2,"):
        if sep in name:
            return "".join(sorted(c for c in name.split(sep, 1)[1] if c in "DFPRST"))
    return ""


def file_message_id(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(8192)
        end = head.find(b"\n\n")
        mo = _MID.search(head if end < 0 else head[:end])
        if mo is None and end < 0:  # a very long header block
            head += f.read(1 << 20)
            mo = _MID.search(head)
    return mo.group(1).decode("ascii", "replace") if mo else None


def local_files(folder_dir: Path) -> list[Path]:
    files = []
    for sub in ("cur", "new"):
        d = folder_dir / sub
        with os.scandir(d) as it:
            files.extend(Path(e.path) for e in it if not e.name.startswith(".") and e.is_file())
    return files


def local_index(folder_dir: Path) -> dict[str, Path]:
    """{Message-ID: path} of one local folder."""
    return {mid: p for p in local_files(folder_dir) if (mid := file_message_id(p))}


def local_view(dirs: dict[str, Path]) -> tuple[View, list[str]]:
    view: View = {}
    problems: list[str] = []
    for folder, d in dirs.items():
        counts: Counter[str] = Counter()
        flags: dict[str, str] = {}
        for path in local_files(d):
            mid = file_message_id(path) or f"(no Message-ID: {path.name})"
            counts[mid] += 1
            flags[mid] = info_flags(path.name)
        dups = sum(n - 1 for n in counts.values() if n > 1)
        if dups:
            problems.append(f"{folder}: {dups} duplicate(s) locally")
        view[folder] = flags
    return view, problems


def server_view(dc: Dovecot, user: User, folders: list[str]) -> tuple[View, list[str]]:
    view: View = {}
    problems: list[str] = []
    for folder in folders:
        counts: Counter[str] = Counter()
        flags: dict[str, str] = {}
        for m in dc.messages(user, folder, bodies=False).values():
            mid = m.message_id or f"(no Message-ID: uid {m.uid})"
            counts[mid] += 1
            flags[mid] = "".join(sorted(IMAP_TO_LETTER[f.lower()] for f in m.flags
                                        if f.lower() in IMAP_TO_LETTER))
        dups = sum(n - 1 for n in counts.values() if n > 1)
        if dups:
            problems.append(f"{folder}: {dups} duplicate(s) on the server")
        view[folder] = flags
    return view, problems


def compare(a: View, b: View, a_name: str, b_name: str) -> list[str]:
    problems = []
    for folder in sorted(set(a) | set(b)):
        x, y = a.get(folder), b.get(folder)
        if x is None or y is None:
            missing = a_name if x is None else b_name
            problems.append(f"{folder}: missing on the {missing} side")
            continue
        only_a = len(x.keys() - y.keys())
        only_b = len(y.keys() - x.keys())
        flags = sum(1 for k in x.keys() & y.keys() if x[k] != y[k])
        if only_a or only_b or flags:
            problems.append(f"{folder}: {only_a} only {a_name}, {only_b} only {b_name}, "
                            f"{flags} flag mismatch(es)")
    return problems


def check(dc: Dovecot, user: User, folders: list[str], local_dirs: dict[str, Path], *,
          expected_count: int | None = None, expected: View | None = None) -> tuple[str, int]:
    """("ok" or a description of what is wrong, message count on the server)."""
    server, problems = server_view(dc, user, folders)
    local_dirs = {f: d for f, d in local_dirs.items() if f in folders}
    local, local_problems = local_view(local_dirs)
    problems += local_problems
    problems += compare(server, local, "server", "local")
    if expected is not None:
        problems += compare(server, expected, "server", "expected")
    total = sum(len(v) for v in server.values())
    if expected_count is not None and total != expected_count:
        problems.append(f"server has {total} messages, expected {expected_count}")
    return ("ok" if not problems else "FAIL: " + "; ".join(problems[:4])), total
