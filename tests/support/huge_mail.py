"""Messages of tens or hundreds of MB for the huge-message test and bench (issue 21): written
straight to files in chunks, seeded into Dovecot's Maildir and into an account's Maildir, and
compared by SHA-256 of the stored bytes (LF line ends on both sides: Dovecot's Maildir keeps
LF, as syncd's does), so that neither the test nor syncd holds one whole."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from collections import Counter
from pathlib import Path

from tests.support.dovecot import Dovecot, User

MB = 1024 * 1024
_BLOCK_RAW = 57 * 18_000  # base64s into 18,000 lines of 76 characters (~1.3 MiB)


def _block(seed: int) -> bytes:
    raw = random.Random(seed).randbytes(_BLOCK_RAW)
    return base64.encodebytes(raw)  # 76-character lines, LF


def write_message(path: Path, size: int, seed: int) -> str:
    """A message of about ``size`` bytes (LF line ends, a base64 attachment) at ``path``;
    returns the SHA-256 of the file. The same seed gives the same bytes."""
    digest = hashlib.sha256()
    header = (f"From: Big Sender <big{seed}@example.test>\n"
              "To: Test User <user@example.test>\n"
              f"Subject: huge message {seed} ({size // MB} MB)\n"
              "Date: Mon, 07 Dec 2026 12:00:00 +0000\n"
              f"Message-ID: <huge-{seed}-{size}@syncd.test>\n"
              "MIME-Version: 1.0\n"
              "Content-Type: application/octet-stream\n"
              "Content-Transfer-Encoding: base64\n\n").encode()
    block = _block(seed)
    with open(path, "wb") as handle:
        handle.write(header)
        digest.update(header)
        written = len(header)
        part = 0
        while written < size:
            # Each block starts with its number: no two MB of the message are alike.
            piece = b"%08d" % part + block[8:]
            if len(piece) > size - written:  # the last: cut to size, ending its line
                piece = piece[:size - written - 1] + b"\n"
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
            part += 1
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digests_in(folder_dir: Path) -> Counter[str]:
    """SHA-256 of every message file in cur/ and new/ of a Maildir folder."""
    found: Counter[str] = Counter()
    for sub in ("cur", "new"):
        directory = folder_dir / sub
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_file() and not entry.name.startswith("."):
                    found[file_digest(entry)] += 1
    return found


def seed_server(dovecot: Dovecot, user: User, folder: str, sizes: list[int], work: Path,
                seed: int = 0) -> Counter[str]:
    """Messages of these sizes into the user's folder on Dovecot; their digests."""
    want: Counter[str] = Counter()
    for n, size in enumerate(sizes):
        source = work / f"seed-{seed + n}.eml"
        want[write_message(source, size, seed + n)] += 1
        dovecot.seed_file(user, folder, source)
        source.unlink()
    return want


def put_local(folder_dir: Path, sizes: list[int], seed: int) -> Counter[str]:
    """Messages of these sizes into a local Maildir folder (cur/, seen), as a MUA saves
    them; their digests."""
    want: Counter[str] = Counter()
    for n, size in enumerate(sizes):
        name = f"1700000000.M{n}P{os.getpid()}.huge{seed + n}:2,S"
        want[write_message(folder_dir / "cur" / name, size, seed + n)] += 1
    return want
