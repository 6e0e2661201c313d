"""Shared by the crash tests: deterministic scenarios that mix every operation, fast copies of
a prepared scenario (server and local side), and exact before/after comparisons.

Not a test module; imported as ``tests.crash.crash_support``.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from syncd.core.message import header_identity
from syncd.core.placeholder import placeholder_of
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import (
    IMAP_TO_LETTER,
    Account,
    assert_folder_in_sync,
    local_files,
    local_state,
    server_state,
    synced_ok,
    write_config,
)

FOLDERS = ("INBOX", "Work")


def _msg(i: int, folder: str) -> bytes:
    return make_message(i, folder=folder)


def _no_id_message(tag: str) -> bytes:
    """A message without a Message-ID header (pairs only by content)."""
    return (f"From: Someone <someone@example.test>\r\nTo: user@example.test\r\n"
            f"Subject: no message-id {tag}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            f"\r\nbody of {tag}\r\n").encode()


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def rename_local(path: Path, flags: str) -> Path:
    base = path.name.split(":2,", 1)[0]
    target = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    os.rename(path, target)
    return target


_local_seq = 0


def write_local(account: Account, folder: str, body: bytes, flags: str) -> Path:
    """A message saved by a MUA: written to tmp/, renamed into cur/ (or new/ if flagless)."""
    global _local_seq
    _local_seq += 1
    directory = account.folder_dir(folder)
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    key = f"{int(time.time())}.M{_local_seq}P{os.getpid()}.mutt"
    tmp = directory / "tmp" / key
    tmp.write_bytes(_lf(body))
    final = (directory / "cur" / f"{key}:2,{flags}") if flags else (directory / "new" / key)
    os.rename(tmp, final)
    return final


class ServerFolder:
    """Several changes to one server folder over one IMAP session (the harness's helpers open
    a connection per call, which would dominate the runtime of ~150 tests)."""

    def __init__(self, imap: imaplib.IMAP4, folder: str) -> None:
        self.imap, self.folder = imap, folder
        self._ok(imap.select(f'"{folder}"'))

    @staticmethod
    def _ok(response: tuple[str, list]) -> list:
        typ, data = response
        assert typ == "OK", data
        return data

    def append(self, message: bytes, flags: str = "") -> None:
        self._ok(self.imap.append(f'"{self.folder}"', f"({flags})", None, message))

    def store(self, uids: list[int], op: str, flags: str) -> None:
        self._ok(self.imap.uid("STORE", ",".join(map(str, uids)), op, f"({flags})"))

    def expunge(self, uids: list[int]) -> None:
        """\\Deleted, then UID EXPUNGE of these UIDs, checked with a UID SEARCH: the tests'
        expected results count them as gone. Once (fault suite, the daemon syncing the same
        folder meanwhile) Dovecot's maildir store answered both with OK and kept a message, with
        \\Deleted set; syncd then rightly mirrored it, and the test's expectation was wrong. The
        expunge is repeated, and said so, instead; a message that stays is a failure."""
        for attempt in range(1, 6):
            uid_set = ",".join(map(str, uids))
            self.store(uids, "+FLAGS.SILENT", "\\Deleted")
            self._ok(self.imap.uid("EXPUNGE", uid_set))
            [found] = self._ok(self.imap.uid("SEARCH", "UID", uid_set))
            left = [int(uid) for uid in (found or b"").split()]
            if not left:
                return
            print(f"the server kept UIDs {left} after UID EXPUNGE {uid_set} (attempt {attempt})")
            uids = left
        raise AssertionError(f"the server does not expunge UIDs {uids}")


@contextlib.contextmanager
def server_folder(dovecot: Dovecot, user: User, folder: str) -> Iterator[ServerFolder]:
    with dovecot.imap(user) as imap:
        yield ServerFolder(imap, folder)


def snapshot(dovecot: Dovecot, user: User, account: Account) -> dict[str, object]:
    """Everything observable on both sides: server UIDs and flags (a UID's body never changes),
    local file names (key and flags)."""
    result: dict[str, object] = {}
    for folder in dovecot.folders(user):
        local = sorted(str(p.relative_to(account.maildir)) for _, p in
                       local_files(account.folder_dir(folder)))
        result[folder] = (dovecot.flags(user, folder), local)
    return result


def contents(dovecot: Dovecot, user: User, account: Account) -> dict[str, Counter]:
    """What a run produced: per folder the (body, flags) of every message, once both sides
    are checked to be exactly equal (bytes, flags, no duplicates). A placeholder (max_size)
    stands for the server's message of its Message-ID and size."""
    result = {}
    window = _window_days(account)
    for folder in dovecot.folders(user):
        if window is not None:
            result[folder] = _in_sync_inside_window(dovecot, user, account, folder, window)
            continue
        if any(placeholder_of(p.read_bytes()) for _, p in local_files(
                account.folder_dir(folder))):
            result[folder] = _in_sync_with_placeholders(dovecot, user, account, folder)
            continue
        assert_folder_in_sync(dovecot, user, account, folder)
        result[folder] = local_state(account.folder_dir(folder))
    top = {folder.split("/")[0] for folder in result}
    local_only = {p.name for p in account.maildir.iterdir() if p.is_dir()} - top
    assert not local_only, f"local folders missing on the server: {local_only}"
    return result


def _window_days(account: Account) -> int | None:
    """The account's max_age in days (the window scenario's "max_age: 30d"), or None."""
    for line in account.config.read_text().splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "max_age":
            return int(value.rstrip("d"))
    return None


def _in_sync_inside_window(dovecot: Dovecot, user: User, account: Account, folder: str,
                           days: int) -> Counter:
    """assert_folder_in_sync for a folder under max_age: the local side is exactly the
    server's messages inside the window (bytes, flags, no duplicates); those outside stay on
    the server and are part of the result, tagged "outside", so that a run which touched one
    (a flag, an expunge, a copy) differs from the uninterrupted run."""
    since = time.time() - days * 86400
    inside: Counter = Counter()
    outside: Counter = Counter()
    for m in dovecot.messages(user, folder).values():
        letters = "".join(sorted(IMAP_TO_LETTER[f.lower()] for f in m.flags
                                 if f.lower() in IMAP_TO_LETTER))
        assert m.internaldate is not None, f"{folder}: UID {m.uid} without INTERNALDATE"
        side = inside if m.internaldate.timestamp() >= since else outside
        side[(m.body.replace(b"\r\n", b"\n"), letters)] += 1
    assert all(n == 1 for n in (inside + outside).values()), f"duplicates on the server in {folder}"
    local = local_state(account.folder_dir(folder))
    assert all(n == 1 for n in local.values()), f"duplicates locally in {folder}"
    assert local == inside, f"{folder}: {local - inside} only local, {inside - local} only " \
        "on the server inside the window"
    return inside + Counter({(body, flags, "outside"): n for (body, flags), n in outside.items()})


def _in_sync_with_placeholders(dovecot: Dovecot, user: User, account: Account,
                               folder: str) -> Counter:
    """assert_folder_in_sync where some local files are placeholders: each must match one
    server message by Message-ID and size (and flags); the others byte for byte. Returns the
    local side with each placeholder as its full message, flagged "placeholder"."""
    server = server_state(dovecot, user, folder)
    assert all(n == 1 for n in server.values()), f"duplicates on the server in {folder}"
    sizes = {m.message_id: m.size for m in dovecot.messages(user, folder).values()}
    by_id = {header_identity(body).message_id: body for body, _ in server}
    local: Counter = Counter()
    for flags, path in local_files(account.folder_dir(folder)):
        data = path.read_bytes()
        original = placeholder_of(data)
        if original is not None:
            message_id = header_identity(data).message_id
            assert message_id in by_id, f"{folder}: placeholder {path.name} of nothing"
            assert sizes[message_id] == original.size, f"{folder}: {path.name}'s size"
            local[(by_id[message_id], flags, "placeholder")] += 1
        else:
            local[(data, flags, "")] += 1
    assert all(n == 1 for n in local.values()), f"duplicates locally in {folder}"
    plain = Counter({(body, flags): n for (body, flags, _), n in local.items()})
    assert plain == server, f"{folder}: {plain - server} only local, {server - plain} only on " \
        "the server"
    return local


def describe_difference(got: dict[str, Counter], want: dict[str, Counter]) -> str:
    def short(item: tuple) -> tuple[str, ...]:
        body, *flags = item  # (body, flags), and "placeholder" for a placeholder
        subject = next((line for line in body.split(b"\n") if line.startswith(b"Subject:")),
                       body[:40])
        return subject.decode(errors="replace"), *flags

    lines = []
    for folder in sorted(set(got) | set(want)):
        extra = got.get(folder, Counter()) - want.get(folder, Counter())
        missing = want.get(folder, Counter()) - got.get(folder, Counter())
        if extra or missing:
            lines.append(f"{folder}: unexpected {[short(i) for i in extra]}, "
                         f"missing {[short(i) for i in missing]}")
    return "; ".join(lines)


def stray_tmp(account: Account) -> list[Path]:
    return sorted(p for p in account.maildir.rglob("*") if p.parent.name == "tmp" and p.is_file())


def assert_quiet(dovecot: Dovecot, user: User, account: Account) -> None:
    """A sync right after a sync changes nothing on either side."""
    before = snapshot(dovecot, user, account)
    out = synced_ok(account)
    assert "+0 down +0 up -0 ~0 flags" in out, out
    assert snapshot(dovecot, user, account) == before, "the second sync changed something"


# --------------------------------------------------------------------------------------------
# scenarios: prepare(dovecot, user, tmp_path) -> account, with the interesting sync still to run


@dataclass(frozen=True)
class Scenario:
    name: str
    prepare: Callable[[Dovecot, User, Path], Account]


SEED = 9  # messages per folder in the initial state
SEED_FLAGS = ["", "S", "FS", "R", "", "S", "", "S", "FS"]


def _initial_state(dovecot: Dovecot, user: User, tmp_path: Path
                   ) -> tuple[Account, dict[str, list[int]]]:
    """Two folders of SEED messages, synced once. Returns the account and the UIDs."""
    uids = {folder: dovecot.seed(user, folder, [(_msg(i, folder), SEED_FLAGS[i])
                                               for i in range(SEED)])
            for folder in FOLDERS}
    account = write_config(tmp_path, dovecot, user)
    synced_ok(account)
    return account, uids


def local_by_index(account: Account, folder: str, count: int,
                   present: range | None = None) -> dict[int, Path]:
    """The local file of each message 0..count-1 (of those in ``present``, if given)."""
    files = {p.read_bytes(): p for _, p in local_files(account.folder_dir(folder))}
    return {i: files[_lf(_msg(i, folder))] for i in (present or range(count))}


def prepare_mixed(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """After one clean sync: every kind of change on both sides of two folders."""
    account, uids = _initial_state(dovecot, user, tmp_path)
    for n, folder in enumerate(FOLDERS):
        uid = uids[folder]
        local = local_by_index(account, folder, SEED)
        with server_folder(dovecot, user, folder) as server:
            # new messages (one seen), one without a Message-ID in the second folder
            server.append(_msg(100, folder))
            server.append(_msg(101, folder), "\\Seen")
            if n == 1:
                server.append(_no_id_message(f"server {folder}"))
            # flag changes
            server.store([uid[1]], "+FLAGS.SILENT", "\\Flagged")  # S -> FS; local adds R
            server.store([uid[2]], "-FLAGS.SILENT", "\\Seen")     # FS -> F
            server.store([uid[6]], "+FLAGS.SILENT", "\\Flagged")  # vs a local deletion
            # expunges
            server.expunge([uid[3], uid[7]])                       # 7: vs a local flag change
        # local: new files, with and without Message-ID
        write_local(account, folder, _msg(200, folder), "S")
        write_local(account, folder, _no_id_message(f"local {folder}"), "")
        # local: flag renames
        rename_local(local[1], "RS")                               # both sides change 1
        rename_local(local[4], "S")
        rename_local(local[8], "")                                 # FS -> nothing
        rename_local(local[7], "FS")                               # vs the server's expunge
        # local: deletions
        local[5].unlink()
        local[6].unlink()                                          # vs a server flag change
    return account


def prepare_initial(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """A first sync: server folders with mail, local files already there (some the same
    messages as on the server, with and without Message-ID), a local-only folder."""
    for folder in FOLDERS:
        dovecot.seed(user, folder, [(_msg(i, folder), SEED_FLAGS[i]) for i in range(4)])
    with server_folder(dovecot, user, "Work") as server:
        server.append(_no_id_message("both"), "\\Seen")
    account = write_config(tmp_path, dovecot, user)
    # The server's INBOX 2 (same Message-ID and size) with other flags; the Work message
    # without Message-ID (pairs by content) with other flags; new local mail in both folders.
    write_local(account, "INBOX", _msg(2, "INBOX"), "R")
    write_local(account, "INBOX", _msg(300, "INBOX"), "S")
    write_local(account, "Work", _no_id_message("both"), "F")
    write_local(account, "Work", _no_id_message("local only"), "")
    # A folder that exists only locally: created on the server, its mail uploaded.
    write_local(account, "Drafts", _msg(400, "Drafts"), "D")
    return account


def prepare_uidvalidity(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """After one clean sync, the server resets one folder's UIDVALIDITY; both sides also
    changed things since the last sync (in that folder and in the other)."""
    account, uids = _initial_state(dovecot, user, tmp_path)
    folder = "Work"
    local = local_by_index(account, folder, SEED)
    with server_folder(dovecot, user, folder) as server:
        server.append(_msg(100, folder), "\\Flagged")
        server.store([uids[folder][4]], "+FLAGS.SILENT", "\\Answered")
    rename_local(local[1], "")          # local removed \Seen: the merge must keep that
    rename_local(local[0], "F")
    write_local(account, folder, _msg(200, folder), "S")
    write_local(account, folder, _no_id_message("local"), "")
    dovecot.set_uidvalidity(user, folder, dovecot.uidvalidity(user, folder) + 1000)
    # and ordinary changes in the other folder
    with server_folder(dovecot, user, "INBOX") as server:
        server.store([uids["INBOX"][0]], "+FLAGS.SILENT", "\\Seen")
        server.append(_msg(100, "INBOX"))
    rename_local(local_by_index(account, "INBOX", SEED)[3], "RS")
    return account


def prepare_trash(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """trash_folder set: local deletions move the messages to Trash on the server (and so
    into the local Trash as well, in the same sync: Trash is synced after INBOX)."""
    uids = dovecot.seed(user, "INBOX", [(_msg(i, "INBOX"), SEED_FLAGS[i]) for i in range(SEED)])
    dovecot.seed(user, "Trash", [(_msg(0, "Trash"), "S")])
    account = write_config(tmp_path, dovecot, user, extra="    trash_folder: Trash\n")
    synced_ok(account)
    local = local_by_index(account, "INBOX", SEED)
    local[2].unlink()
    local[5].unlink()
    rename_local(local[4], "F")
    with server_folder(dovecot, user, "INBOX") as server:
        server.store([uids[6]], "+FLAGS.SILENT", "\\Answered")
    return account


def _big(i: int, folder: str) -> bytes:
    return make_message(i, folder=folder, size=30_000)


def prepare_placeholders(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """max_size with fetch_flagged, after one clean sync: new big mail (a placeholder), a
    placeholder flagged locally (replaced by the full message), placeholders moved and copied
    into the other folder by the mail client (copied on the server, one of the moves before
    its source folder deletes it, whichever folder syncs first)."""
    for folder in FOLDERS:
        dovecot.seed(user, folder, [(_msg(0, folder), "S"),
                                    *[(_big(i, folder), "S") for i in range(1, 4)]])
    account = write_config(tmp_path, dovecot, user,
                           extra="    max_size: 20k\n    fetch_flagged: true\n")
    synced_ok(account)
    files = {folder: {i: p for _, p in local_files(account.folder_dir(folder))
                      for i in range(4) if f"Test message {i} in".encode() in p.read_bytes()}
             for folder in FOLDERS}
    with server_folder(dovecot, user, "INBOX") as server:
        server.append(_big(100, "INBOX"))
    rename_local(files["INBOX"][1], "FS")
    for source, dest in (("INBOX", "Work"), ("Work", "INBOX")):
        write_local(account, dest, files[source][2].read_bytes(), "S")  # a move ...
        files[source][2].unlink()
    write_local(account, "Work", files["INBOX"][3].read_bytes(), "RS")  # ... and a copy
    return account


_IMAP_FLAG = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered"}


def prepare_window(dovecot: Dovecot, user: User, tmp_path: Path) -> Account:
    """max_age (issue 18), after one clean sync under it: in each folder old messages (outside
    the window: never downloaded, never touched, whatever happens inside it) and recent ones;
    then changes inside the window on both sides, and outside it on the server."""
    now = time.time()
    uids: dict[str, list[int]] = {}
    for folder in FOLDERS:
        if folder != "INBOX":
            dovecot.create_folder(user, folder)
        uids[folder] = [
            dovecot.append(user, folder, _msg(i, folder),
                           [_IMAP_FLAG[c] for c in SEED_FLAGS[i]],
                           date=now - ((400 - i) if i < 4 else (SEED - i)) * 86400)
            for i in range(SEED)]  # 0-3 are a year old, 4-8 from the last days
    account = write_config(tmp_path, dovecot, user, extra="    max_age: 30d\n")
    synced_ok(account)
    for n, folder in enumerate(FOLDERS):
        local = local_by_index(account, folder, SEED, present=range(4, SEED))
        rename_local(local[4], "FS")  # a flag inside the window, locally
        local[5 + n].unlink()  # a deletion inside the window, locally
        write_local(account, folder, _msg(300, folder), "S")  # new local mail (uploaded)
        with server_folder(dovecot, user, folder) as server:
            server.store([uids[folder][7]], "+FLAGS.SILENT", "\\Answered")  # inside
            server.store([uids[folder][1]], "+FLAGS.SILENT", "\\Flagged")  # outside
            server.append(_msg(100, folder), "\\Seen")  # new server mail (now: inside)
    return account


SCENARIOS = {s.name: s for s in (
    Scenario("mixed", prepare_mixed),
    Scenario("initial", prepare_initial),
    Scenario("uidvalidity", prepare_uidvalidity),
    Scenario("trash", prepare_trash),
    Scenario("placeholders", prepare_placeholders),
    Scenario("window", prepare_window),
)}


@dataclass
class Template:
    """A prepared scenario, copied for every run: the server user's home (its Maildir and
    Dovecot's indexes: the same UIDs and UIDVALIDITY every time) and the local side (Maildir,
    state). Copying is much faster than preparing, and every run starts from the very same
    bytes."""

    account: Account  # the template's own (its user, its config: paths, trash folder, ...)
    local: Path  # the tmp_path it was prepared in

    def instantiate(self, dovecot: Dovecot, tmp_path: Path) -> tuple[User, Account]:
        user = dovecot.add_user()
        shutil.copytree(self.account.user.home, user.home, symlinks=True)
        for root, dirs, files in os.walk(user.home):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.lchown(name, dovecot.mail_uid, dovecot.mail_gid)
        for part in ("Mail", "state"):
            if (self.local / part).exists():
                shutil.copytree(self.local / part, tmp_path / part, symlinks=True)
        text = self.account.config.read_text().replace(str(self.local), str(tmp_path))
        text = text.replace(f"username: {self.account.user.name}\n", f"username: {user.name}\n")
        config = tmp_path / self.account.config.name
        config.write_text(text)
        return user, Account(config=config, name=self.account.name,
                             maildir=tmp_path / self.account.maildir.relative_to(self.local),
                             state_dir=tmp_path / self.account.state_dir.relative_to(self.local),
                             layout=self.account.layout, user=user)
