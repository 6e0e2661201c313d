"""A deterministic, realistic mail corpus and the incremental changes applied to it.

Message ``i`` depends only on (seed, i): the same arguments always give the same bytes, folder
and flags, whatever else is generated. Size mix (issue 6): ~60% 2-8 KB plain text, ~30%
10-60 KB multipart/alternative (text + HTML), ~10% 100 KB-2 MB multipart/mixed with a base64
attachment (log-uniform, so most attachments are a few hundred KB, as in real mailboxes).
Flags: ~70% \\Seen, ~12% \\Answered (of the seen ones), ~6% \\Flagged; everything in Sent is
seen.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import Header

from tests.support.dovecot import make_message

#: (folder, share). Two nested list folders under a \Noselect parent, one non-ASCII name.
FOLDERS: tuple[tuple[str, float], ...] = (
    ("INBOX", 0.34),
    ("Archive", 0.30),
    ("Sent", 0.14),
    ("Lists/python", 0.09),
    ("Lists/rust", 0.08),
    ("Überweisungen", 0.05),
)
FOLDER_NAMES = tuple(name for name, _ in FOLDERS)

_BASE = datetime(2023, 1, 1, 7, 0, 0, tzinfo=UTC)
_WORDS_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if so "
    "what more about up out them some could into than then other its time only new meeting "
    "invoice release patch review deploy server mailbox folder sync daemon flags schedule "
    "budget quarter report draft attached please thanks regards tomorrow friday Überweisung "
    "Grüße naïve café résumé façade"
)
_WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True, slots=True)
class Message:
    index: int
    folder: str
    flags: str  # Maildir letters, sorted: "F", "R", "S"
    mtime: float  # INTERNALDATE
    message_id: str
    data: bytes  # LF line ends, as stored in a Maildir (the wire form has CRLF)


def message_id(seed: int, i: int) -> str:
    return f"<bench.{seed}.{i}@corpus.syncd.test>"


_POOL_WORDS = 500_000


@functools.cache
def _pool(seed: int) -> str:
    """~3 MB of prose (paragraphs of 60 words, 11 words a line); messages take slices."""
    rng = random.Random(f"syncd-bench-pool:{seed}")
    words = rng.choices(_WORDS, k=_POOL_WORDS)
    paragraphs = []
    for start in range(0, len(words), 60):
        chunk = words[start:start + 60]
        chunk[0] = chunk[0].capitalize()
        chunk[-1] += "."
        paragraphs.append("\n".join(" ".join(chunk[k:k + 11]) for k in range(0, len(chunk), 11)))
    return "\n\n".join(paragraphs)


def _text(rng: random.Random, seed: int, size: int) -> str:
    """About ``size`` characters of prose, whole lines, from a random place in the pool."""
    pool = _pool(seed)
    start = pool.index("\n", rng.randrange(len(pool) - size - 200)) + 1
    end = pool.rfind("\n", start, start + size)
    return pool[start:end if end > start else start + size].strip("\n")


@functools.cache
def _attachment_pool(seed: int) -> str:
    """3 MB of random bytes as base64 lines (incompressible, like real PDFs and JPEGs)."""
    raw = random.Random(f"syncd-bench-attachments:{seed}").randbytes(3 * 1024 * 1024)
    return base64.encodebytes(raw).decode("ascii")


def _attachment(rng: random.Random, seed: int, size: int) -> str:
    """``size`` characters of base64 lines (77 characters a line with its LF)."""
    pool = _attachment_pool(seed)
    lines = len(pool) // 77
    count = min(lines, max(1, size // 77))
    start = rng.randrange(lines - count + 1)
    return pool[start * 77:(start + count) * 77].rstrip("\n")


def _headers(i: int, mid: str, subject: str, date: datetime, sent: bool) -> list[str]:
    me = "Bench User <user@example.test>"
    other = f"Person {i % 97} <person{i % 97}@example.test>"
    return [
        f"From: {me if sent else other}",
        f"To: {other if sent else me}",
        f"Subject: {subject if subject.isascii() else Header(subject, 'utf-8').encode()}",
        f"Date: {email.utils.format_datetime(date)}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
    ]


def _meta(seed: int, i: int) -> tuple[random.Random, str, str, datetime]:
    rng = random.Random(f"syncd-bench:{seed}:{i}")
    roll = rng.random()
    acc = 0.0
    folder = FOLDERS[-1][0]
    for name, share in FOLDERS:
        acc += share
        if roll < acc:
            folder = name
            break
    seen = folder == "Sent" or rng.random() < 0.70
    flags = ""
    if rng.random() < 0.06:
        flags += "F"
    if seen and rng.random() < 0.17:
        flags += "R"
    if seen:
        flags += "S"
    date = _BASE + timedelta(minutes=25 * i + rng.randint(0, 20))
    return rng, folder, flags, date


def folder_and_flags(seed: int, i: int) -> tuple[str, str]:
    """Where message ``i`` lives and its Maildir flag letters (cheap: no body is made)."""
    _, folder, flags, _ = _meta(seed, i)
    return folder, flags


def date_of(seed: int, i: int) -> datetime:
    """Message ``i``'s INTERNALDATE (and Date:), cheap: no body is made."""
    return _meta(seed, i)[3]


def build(seed: int, i: int, folder: str | None = None) -> Message:
    """Message ``i`` of the corpus (``folder`` overrides the folder it would get)."""
    rng, chosen, flags, date = _meta(seed, i)
    folder = folder or chosen
    sent = folder == "Sent"
    mid = message_id(seed, i)
    subject = f"Bench message {i}: " + " ".join(rng.choices(_WORDS, k=5))
    kind = rng.random()
    if kind < 0.60:
        body = _text(rng, seed, rng.randint(2000, 8000) - 400)
        data = make_message(i, folder=folder, subject=subject, message_id=mid, body=body)
        data = data.replace(b"\r\n", b"\n")
    elif kind < 0.90:
        size = rng.randint(10_000, 60_000)
        plain = _text(rng, seed, size // 3)
        html = "<html><body>\n" + "".join(
            f'<p style="margin:0 0 1em 0">\n{p}\n</p>\n'
            for p in _text(rng, seed, size // 2).split("\n\n")
        ) + "</body></html>"
        boundary = f"=_alt_{seed}_{i}"
        lines = [
            *_headers(i, mid, subject, date, sent),
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            plain,
            f"--{boundary}",
            "Content-Type: text/html; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            html,
            f"--{boundary}--",
            "",
        ]
        data = "\n".join(lines).encode("utf-8")
    else:
        size = int(math.exp(rng.uniform(math.log(100_000), math.log(2_000_000))))
        boundary = f"=_mix_{seed}_{i}"
        lines = [
            *_headers(i, mid, subject, date, sent),
            f'Content-Type: multipart/mixed; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            _text(rng, seed, 1500),
            f"--{boundary}",
            f'Content-Type: application/pdf; name="document-{i}.pdf"',
            f'Content-Disposition: attachment; filename="document-{i}.pdf"',
            "Content-Transfer-Encoding: base64",
            "",
            _attachment(rng, seed, size),
            f"--{boundary}--",
            "",
        ]
        data = "\n".join(lines).encode("utf-8")
    return Message(index=i, folder=folder, flags=flags, mtime=date.timestamp(),
                   message_id=mid, data=data)


def build_small(seed: int, i: int, folder: str | None = None) -> Message:
    """Message ``i`` of the small corpus (issue 21's million messages: about 2 KB each, plain
    text): the same folder, flags, date and Message-ID as ``build`` gives message ``i``."""
    rng, chosen, flags, date = _meta(seed, i)
    folder = folder or chosen
    subject = f"Bench message {i}: " + " ".join(rng.choices(_WORDS, k=5))
    body = _text(rng, seed, rng.randint(1000, 3000) - 400)
    data = make_message(i, folder=folder, subject=subject, message_id=message_id(seed, i),
                        body=body).replace(b"\r\n", b"\n")
    return Message(index=i, folder=folder, flags=flags, mtime=date.timestamp(),
                   message_id=message_id(seed, i), data=data)


def builder(kind: str) -> Callable[[int, int, str | None], Message]:
    """The message maker of a corpus kind (bench.run's corpus users): "s" small, else mixed."""
    return build_small if kind == "s" else build


@dataclass(frozen=True)
class Changes:
    """The incremental scenario: corpus indices touched by each kind of change (disjoint)."""

    new_server: tuple[int, ...]  # indices >= n: appended on the server
    server_flags: tuple[int, ...]  # existing messages whose flags change on the server
    local_flags: tuple[int, ...]  # existing messages whose flags change in the Maildir
    local_deletions: tuple[int, ...]  # existing messages deleted from the Maildir

    @property
    def total(self) -> int:
        return (len(self.new_server) + len(self.server_flags) + len(self.local_flags)
                + len(self.local_deletions))


def changes(seed: int, n: int, *, new: int = 200, server_flags: int = 1000,
            local_flags: int = 500, local_deletions: int = 100) -> Changes:
    """Issue 6's incremental mix, scaled down proportionally for corpora under 20k/4."""
    scale = min(1.0, n / 5000)
    counts = [max(1, round(c * scale)) for c in (server_flags, local_flags, local_deletions)]
    rng = random.Random(f"syncd-bench-changes:{seed}:{n}")
    picked = rng.sample(range(n), sum(counts))
    a, b = counts[0], counts[0] + counts[1]
    return Changes(
        new_server=tuple(range(n, n + max(1, round(new * scale)))),
        server_flags=tuple(sorted(picked[:a])),
        local_flags=tuple(sorted(picked[a:b])),
        local_deletions=tuple(sorted(picked[b:])),
    )


def toggled(flags: str) -> str:
    """The flag change applied to a message: \\Seen toggled, \\Flagged toggled."""
    out = set(flags)
    out ^= {"S", "F"}
    return "".join(sorted(out))
