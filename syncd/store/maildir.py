"""Maildir adapter: scan, durable delivery, flag renames, removal; the two layouts; safe
folder-name mapping. Thin and honest: no sync decisions here.

CONTRACT (implemented by the maildir helper; the engine codes against exactly this):

Folder names inside syncd are tuples of components, already decoded from modified UTF-7,
e.g. ("Lists", "python"); INBOX is ("INBOX",). The server's delimiter never appears here.

Escaping (see ``escape_component``) is the security boundary between server-controlled folder
names and the local filesystem: every name maps to a path strictly inside the account root,
distinct names map to distinct paths, and ``list_folders`` maps paths back to the same names.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import re
import socket
import stat
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

from syncd.core.flags import KNOWN_LETTERS, Flags, from_info
from syncd.core.message import header_identity
from syncd.core.placeholder import Original, placeholder_of

log = logging.getLogger(__name__)

Layout = Literal["verbatim", "maildir++"]
FolderName = tuple[str, ...]

INBOX: FolderName = ("INBOX",)
_SUBDIRS = ("cur", "new", "tmp")
DIR_MODE = 0o700
FILE_MODE = 0o600
# Read size for streamed passes over message files: big enough to be cheap in syscalls, small
# enough that memory stays flat however large the message is.
_CHUNK = 1 << 16
# A header block larger than this is not a header we can trust to parse; we stop collecting
# (the size pass still continues) rather than hold an unbounded amount of memory.
_MAX_HEADER = 1 << 20
# The spec's encoding for the info separator; a key never contains it (the hostname is escaped).
_INFO_SEP = ":"
# Used for the empty component: "%" on its own is never produced by escaping anything else
# ("%" itself becomes "%25"), so it cannot collide, and it is not empty (an empty directory-name
# component would vanish from the path or, in maildir++, produce "..").
_EMPTY_MARK = "%"
_ESCAPE_RE = re.compile(r"%([0-9A-F]{2})")

# Per-process delivery counter (the "Q" part of a unique name). itertools.count's __next__ is
# atomic under the GIL, so concurrent delivering threads still get distinct numbers.
_counter = itertools.count(1)


class LocalEntry(NamedTuple):
    key: str  # file name before ":2," (or the whole name when there is no info)
    subdir: Literal["cur", "new"]
    name: str  # the full file name as it is on disk now
    flags: Flags


class _Identity(NamedTuple):
    message_id: str | None
    size: int  # as the server would count it: every bare LF is a CRLF there
    trace_bytes: int  # of ``size``: fields other tools add (X-TUID, Status, ...), CRLF counted


class HeaderInfo(_Identity):
    """What pairing needs of a file the state does not know (see syncd.core.message): the
    three-item identity, and ``placeholder`` besides it (not an item, so that the identity
    compares and unpacks as it always has): for a placeholder (max_size,
    syncd.core.placeholder) the full message's size and where it is on the server."""

    placeholder: Original | None

    def __new__(cls, message_id: str | None, size: int, trace_bytes: int,
                placeholder: Original | None = None) -> HeaderInfo:
        info = super().__new__(cls, message_id, size, trace_bytes)
        info.placeholder = placeholder
        return info


# ---------------------------------------------------------------------------------------------
# small filesystem helpers


def _fsync_dir(path: Path | str) -> None:
    """fsync a directory so that entries created/renamed/removed in it survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: os.PathLike[str], data: bytes, *, exclusive: bool = True) -> None:
    """Write a whole file and fsync it (mode 0600); ``exclusive``: it must not exist yet,
    else an existing one is truncated. The caller renames it into place and fsyncs the
    directory."""
    mode = os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Like os.makedirs, but every directory it creates gets exactly 0700 (umask ignored) and
    its parent is fsynced, so that a freshly created folder survives a crash. Existing
    directories keep their mode: the user may have chosen it."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        parent = current.parent
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            # Raced with another creator (or it is a file: the is_dir() check below tells).
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, DIR_MODE)
        _fsync_dir(directory.parent)


def _check_key(key: str) -> None:
    """A key comes from the state database or a scan; refuse anything that is not a plain file
    name, so that a corrupt or hostile state row can never address a path outside the folder."""
    if (not key or key in (".", "..") or key.startswith(".") or "/" in key or "\0" in key
            or _INFO_SEP in key):
        raise ValueError(f"invalid maildir key {key!r}")


def _check_flags(flags: str) -> str:
    """Flags become part of a file name: only ASCII letters are acceptable there."""
    if not all("A" <= c <= "Z" or "a" <= c <= "z" for c in flags):
        raise ValueError(f"invalid maildir flags {flags!r}")
    return "".join(sorted(set(flags)))


def _split_name(name: str) -> tuple[str, str | None]:
    """file name -> (key, info or None). The key is everything before the first colon."""
    key, sep, info = name.partition(_INFO_SEP)
    return key, (info if sep else None)


@functools.cache
def _hostname() -> str:
    """The host part of unique names, looked up once per process: it was a gethostname(2)
    per delivered message."""
    # The maildir spec's escapes: "/" and ":" cannot appear in a unique name.
    host = socket.gethostname() or "localhost"
    return host.replace("/", r"\057").replace(":", r"\072")


_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


# A forked child must not reuse its parent's PID in names (the PID is what keeps two
# processes' counters apart); getpid(2) per message was not free either.
os.register_at_fork(after_in_child=_after_fork)


def _new_key() -> str:
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return (f"{seconds}.M{nanos // 1000}P{_pid}Q{next(_counter)}R{os.urandom(8).hex()}"
            f".{_hostname()}")


# ---------------------------------------------------------------------------------------------
# umask and no-replace renames


def _read_umask() -> int:
    """The process umask, without changing it even for an instant where Linux reports it
    (os.umask() can only read it by setting it, and a file another thread creates in between
    would get the wrong mode)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_umask: int | None = None


def _needs_fchmod() -> bool:
    """Whether open(..., FILE_MODE) can come out with fewer bits than FILE_MODE. Read once (the
    umask is process-wide and syncd never changes it); refresh_umask() re-reads it."""
    global _umask
    if _umask is None:
        _umask = _read_umask()
    return bool(_umask & FILE_MODE)


def refresh_umask() -> None:
    """Forget the cached umask (for a process, or a test, that changes it)."""
    global _umask
    _umask = None


_RENAME_NOREPLACE = 1  # <linux/fs.h>
_AT_FDCWD = -100


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


# Loaded at the first delivery: ctypes costs ~4 ms to import, which a sync that delivers
# nothing need not pay. None where the platform has no renameat2.
_UNLOADED: Any = object()
_RENAMEAT2: Callable[..., int] | None = _UNLOADED


def _renameat2() -> Callable[..., int] | None:
    global _RENAMEAT2
    if _RENAMEAT2 is _UNLOADED:
        _RENAMEAT2 = _load_renameat2()
    return _RENAMEAT2

# errno values meaning "this kernel/filesystem cannot do RENAME_NOREPLACE" (not "the target
# exists"): the caller then links instead.
_NOREPLACE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP,
                                    errno.EOPNOTSUPP, errno.EPERM})


def _rename_noreplace(src: str, dst: str) -> bool:
    """rename(src, dst) unless dst exists (FileExistsError then), atomically: one syscall
    where link(2) + unlink(2) took two. False when the platform or the filesystem cannot do
    it (nothing was changed; use link + unlink)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                  _RENAME_NOREPLACE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in _NOREPLACE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


# ---------------------------------------------------------------------------------------------


class Staged(NamedTuple):
    """A message written to tmp/ but not yet durable nor visible (see MaildirFolder.stage)."""

    tmp_path: str
    flags: Flags
    fixed: bool  # the key was chosen by the caller (recorded in an intent): never rename it


@functools.cache  # at the first flush: see _renameat2 for why not at import
def _syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


# Above this many files one syncfs beats per-file fsyncs (measured on ext4: ~0.6 ms per file
# with syncfs vs ~3.5 ms per fsync).
SYNCFS_MIN_FILES = 4


def flush_files(paths: Sequence[Path | str], directory: Path | str) -> None:
    """Make the data of these files durable: one syncfs(2) on their filesystem where Linux
    offers it, else fsync of each file."""
    syncfs = _syncfs() if len(paths) >= SYNCFS_MIN_FILES else None
    if syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) != 0:
                import ctypes

                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(directory))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview | Iterable[bytes]) -> None:
    chunks: Iterable[bytes] = (
        (data,) if isinstance(data, bytes | bytearray | memoryview) else data)
    for chunk in chunks:
        written = os.write(fd, chunk)
        if written < len(chunk):
            # os.write may write less than asked (signals, pipes, quotas): the rest follows
            # (checked rather than slicing a memoryview for every message).
            view = memoryview(chunk)[written:]
            while view:
                view = view[os.write(fd, view):]


#: The tmp/ name of a message a TmpWriter is writing (or wrote and nobody staged yet):
#: tmp/<key>.part. Such a file is never anyone else's: remove_partial() removes what a killed
#: sync left, where the 36 h rule of clean_tmp would keep hundreds of MB.
PARTIAL_SUFFIX = ".part"


class Written(NamedTuple):
    """A message a TmpWriter wrote to tmp/<key>.part (not yet fsynced nor visible), to be
    staged under ``key``. ``server_bytes``: bytes as received (before CRLF -> LF)."""

    tmp_path: str
    key: str
    server_bytes: int

    def discard(self) -> None:
        """Remove the file (a message that is not delivered after all)."""
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


class TmpWriter:
    """A message written to tmp/<key>.part chunk by chunk as it arrives from the server (CRLF ->
    LF on the way): a message too big to hold in memory. finish() closes it without fsync
    (MaildirFolder.publish flushes it with the rest of its group); abort() removes it, so a
    connection dropped mid-message leaves nothing behind."""

    def __init__(self, tmp_path: str, fd: int) -> None:
        self.tmp_path = tmp_path
        self.key = tmp_path.rpartition("/")[2].removesuffix(PARTIAL_SUFFIX)
        self.server_bytes = 0
        self._fd: int | None = fd
        self._pending_cr = False  # a CR ending the last chunk: the next may start with its LF

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None, "TmpWriter used after finish() or abort()"
        self.server_bytes += len(chunk)
        if not chunk:
            return
        if self._pending_cr:
            chunk = b"\r" + chunk
        self._pending_cr = chunk.endswith(b"\r")
        if self._pending_cr:
            chunk = chunk[:-1]
        _write_all(self._fd, crlf_to_lf(chunk))

    def finish(self) -> Written:
        assert self._fd is not None, "TmpWriter used after finish() or abort()"
        fd, self._fd = self._fd, None
        try:
            if self._pending_cr:
                _write_all(fd, b"\r")
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        os.close(fd)
        return Written(self.tmp_path, self.key, self.server_bytes)

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


class MaildirFolder:
    """One Maildir folder (a directory with cur/ new/ tmp/).

    Holds no file descriptors between calls. It caches where each key was last seen (filled by
    scan() and kept current by our own operations); the cache is only a hint: every operation
    that finds the file gone re-scans once before concluding it is missing, because mutt and
    friends rename files under us at any time.
    """

    path: Path

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._where: dict[str, tuple[str, str]] = {}  # key -> (subdir, name)

    def __repr__(self) -> str:
        return f"MaildirFolder({str(self.path)!r})"

    def exists(self) -> bool:
        return all((self.path / sub).is_dir() for sub in _SUBDIRS)

    def create(self) -> None:
        """Create path, cur, new, tmp with mode 0700 (parents too, 0700); fsync the parent."""
        _make_dirs(self.path)
        created = False
        for sub in _SUBDIRS:
            target = self.path / sub
            try:
                os.mkdir(target, DIR_MODE)
            except FileExistsError:
                if not target.is_dir():
                    raise
                continue
            os.chmod(target, DIR_MODE)
            created = True
        if created:
            _fsync_dir(self.path)

    # -- reading --------------------------------------------------------------------------

    def scan(self) -> dict[str, LocalEntry]:
        """key -> entry for every message file in cur/ and new/ (os.scandir, no stat per file).
        Ignores dot files. If one key appears twice (another tool copied a file), the first in
        cur/ wins and the duplicate is left alone."""
        entries: dict[str, LocalEntry] = {}
        where: dict[str, tuple[str, str]] = {}
        sub: Literal["cur", "new"]
        for sub in ("cur", "new"):
            try:
                iterator = os.scandir(self.path / sub)
            except FileNotFoundError:
                continue
            with iterator:
                for dirent in iterator:
                    name = dirent.name
                    if name.startswith("."):
                        continue
                    # d_type answers this without a stat on every common filesystem.
                    if dirent.is_dir(follow_symlinks=False):
                        continue
                    key, info = _split_name(name)
                    if not key:
                        continue
                    previous = entries.get(key)
                    # A duplicate key: cur/ (scanned first) beats new/; within one directory
                    # the smallest name wins so the choice is stable (scandir order is not).
                    if previous is not None and (previous.subdir != sub
                                                 or previous.name <= name):
                        continue
                    flags = from_info(info) if info is not None else ""
                    entries[key] = LocalEntry(key=key, subdir=sub, name=name, flags=flags)
                    where[key] = (sub, name)
        self._where = where
        return entries

    def path_of(self, key: str) -> Path:
        """Current path of the file of key (scans if needed). FileNotFoundError if absent."""
        _check_key(key)
        hint = self._where.get(key)
        if hint is not None:
            candidate = self.path / hint[0] / hint[1]
            if os.path.lexists(candidate):
                return candidate
        # A flagless message delivered by someone else sits in new/ under its bare key; that is
        # worth one lstat before paying for a full scan.
        candidate = self.path / "new" / key
        if os.path.lexists(candidate):
            self._where[key] = ("new", key)
            return candidate
        self.scan()
        hint = self._where.get(key)
        if hint is None:
            raise FileNotFoundError(errno.ENOENT, f"no message with key {key!r}", str(self.path))
        return self.path / hint[0] / hint[1]

    def _retrying(self, key: str) -> Iterator[Path]:
        """Yield the path of key; if the caller finds it vanished (renamed by a MUA in the
        meantime), it asks for the next one, which is re-resolved from a fresh scan."""
        for _attempt in range(3):
            yield self.path_of(key)
            self._where.pop(key, None)
        raise FileNotFoundError(errno.ENOENT, f"message {key!r} keeps moving", str(self.path))

    def read(self, key: str) -> bytes:
        """The file's bytes (LF line ends, as stored)."""
        for path in self._retrying(key):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        raise AssertionError("unreachable")  # _retrying raises when it runs out

    def header_info(self, key: str) -> HeaderInfo:
        """Message-ID, the size the message has on the server (LF -> CRLF counted) and the
        bytes of that size taken by fields other tools add (mbsync's X-TUID, ...)."""
        for path in self._retrying(key):
            try:
                with open(path, "rb") as handle:
                    return _header_info_stream(iter(lambda: handle.read(_CHUNK), b""))
            except FileNotFoundError:
                continue
        raise AssertionError("unreachable")

    # -- writing --------------------------------------------------------------------------

    def new_key(self) -> str:
        """A fresh unique key, for callers that must record it (an intent) before delivering."""
        return _new_key()

    def deliver(self, data: bytes | Iterable[bytes], flags: Flags, *, mtime: float | None = None,
                size_hint: int | None = None, key: str | None = None) -> str:
        """Write data to tmp/ (0600), fsync, then move it into cur/ (with ":2,<flags>") or new/
        (flagless) without ever overwriting; set mtime if given. Returns the new key. Does NOT
        fsync the directories: call sync() once per batch before recording.

        ``data`` may be one bytes object or an iterable of chunks (streamed, never joined).
        ``size_hint`` is accepted for callers that know the size; it is not needed (we never
        preallocate: a preallocated file would have the wrong size if the stream ends early).
        ``key``: deliver under this pre-chosen key (from new_key(), recorded in an intent before
        the delivery); a clash then raises FileExistsError instead of picking another name.
        """
        del size_hint
        staged = self._write_tmp(data, flags, mtime=mtime, key=key, fsync=True)
        try:
            key, consumed = self._link_into_place(staged.tmp_path, staged.flags,
                                                  fixed=staged.fixed)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged.tmp_path)
            raise
        if not consumed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.tmp_path)
        return key

    def stage(self, data: bytes | Iterable[bytes], flags: Flags, *, mtime: float | None = None,
              key: str | None = None) -> Staged:
        """First half of a batched delivery: write the message to tmp/ without fsync. Nothing
        is visible to mail readers until publish()."""
        return self._write_tmp(data, flags, mtime=mtime, key=key, fsync=False)

    def _write_tmp(self, data: bytes | Iterable[bytes], flags: Flags, *, mtime: float | None,
                   key: str | None, fsync: bool) -> Staged:
        """The message in tmp/ (0600), fsynced if asked; nothing is left there on failure."""
        flags = _check_flags(flags)
        if key is not None:
            _check_key(key)
        tmp_path, fd = self._open_tmp(key)
        try:
            try:
                _write_all(fd, data)
                if mtime is not None:
                    # Set before the fsync so that the fsync covers it too. atime is "now" so
                    # that clean_tmp (which looks at both) never takes a delivery in progress
                    # for a stale one when the INTERNALDATE is old.
                    os.utime(fd, (time.time(), mtime))
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # A half-written tmp file is garbage (ENOSPC, a dropped connection mid-stream, ...).
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise
        return Staged(tmp_path, flags, key is not None)

    def tmp_writer(self) -> TmpWriter:
        """A new tmp/<key>.part under a fresh key, written chunk by chunk (see TmpWriter)."""
        return TmpWriter(*self._open_tmp(_new_key() + PARTIAL_SUFFIX))

    def stage_written(self, written: Written, flags: Flags, *,
                      mtime: float | None = None) -> Staged:
        """Stage a message a TmpWriter wrote as tmp/<key> (the caller records the key in its
        intent first: recovery then removes tmp/<key>); like stage(), nothing is visible
        until publish()."""
        flags = _check_flags(flags)
        tmp_path = f"{self.path}/tmp/{written.key}"
        os.rename(written.tmp_path, tmp_path)
        if mtime is not None:
            os.utime(tmp_path, (time.time(), mtime))
        return Staged(tmp_path, flags, True)

    def remove_partial(self) -> int:
        """Remove tmp/*.part: messages a killed sync was receiving (TmpWriter). Call only
        while no sync of this folder is receiving (the account's lock is held)."""
        removed = 0
        try:
            names = os.listdir(self.path / "tmp")
        except FileNotFoundError:
            return 0
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / "tmp" / name)
                    removed += 1
        return removed

    def open_message(self, key: str) -> BinaryIO:
        """The message's file, open for reading: a MUA may rename it later (a flag change),
        but the bytes read stay this file's (streamed uploads read it twice)."""
        for path in self._retrying(key):
            try:
                return open(path, "rb")  # the caller closes it
            except FileNotFoundError:
                continue
        raise AssertionError("unreachable")

    def publish(self, staged: Sequence[Staged]) -> list[str]:
        """Second half: make every staged file's data durable at once (one syncfs instead of
        one fsync per message: the group commit that makes initial syncs fast), then move each
        into cur/ or new/. Returns the keys, in order. Like deliver(), the directories are
        fsynced by sync()."""
        if not staged:
            return []
        flush_files([item.tmp_path for item in staged], self.path)
        keys = []
        for item in staged:
            key, consumed = self._link_into_place(item.tmp_path, item.flags, fixed=item.fixed)
            if not consumed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(item.tmp_path)
            # Bulk deliveries are not remembered as location hints: over an initial sync the
            # hints grew with the folder (~250 bytes a message) and nothing in that sync looks
            # the new files up again; path_of() finds them anyway (new/<key>, else a scan).
            self._where.pop(key, None)
            keys.append(key)
        return keys

    def discard(self, staged: Sequence[Staged]) -> None:
        for item in staged:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp_path)

    def _open_tmp(self, key: str | None = None) -> tuple[str, int]:
        """Create tmp/<name> (O_EXCL, 0600) and return its path (a str: no pathlib in the
        per-message loop) and an fd open for writing."""
        tmp_dir = f"{self.path}/tmp/"
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        for attempt in range(100):
            tmp_path = tmp_dir + (key or _new_key())
            try:
                fd = os.open(tmp_path, flags, FILE_MODE)
            except FileExistsError:
                if key is not None and attempt == 0:
                    # A tmp file of this key can only be the debris of an interrupted earlier
                    # attempt (the key was recorded in our intent). Removed only when found:
                    # an unlink before every open was a syscall per message for a rare case.
                    os.unlink(tmp_path)
                    continue
                if key is not None:
                    raise
                continue
            # Skipped when the umask cannot take bits of FILE_MODE away (the usual 022/077):
            # one syscall per message less. A umask that can (e.g. 0277) still gets 0600.
            if _needs_fchmod():
                try:
                    os.fchmod(fd, FILE_MODE)
                except BaseException:
                    os.close(fd)
                    os.unlink(tmp_path)
                    raise
            return tmp_path, fd
        raise FileExistsError(errno.EEXIST, "could not find a free name in tmp/", tmp_dir)

    def _link_into_place(self, tmp_path: str, flags: str, *,
                         fixed: bool = False) -> tuple[str, bool]:
        """Move tmp_path to its final name without ever replacing an existing file, which is
        what makes delivery safe against any name clash. Returns the key used and whether the
        tmp name is gone already (a rename consumed it; after a link the caller unlinks it).

        In order of preference: renameat2(RENAME_NOREPLACE) (one atomic syscall), link(2) (then
        unlink: the classic maildir way, for kernels and filesystems without the former), and a
        checked rename on filesystems without hard links."""
        key = tmp_path.rpartition("/")[2]
        base = f"{self.path}/"
        for _attempt in range(100):
            sub = "cur" if flags else "new"
            name = f"{key}{_INFO_SEP}2,{flags}" if flags else key
            target = f"{base}{sub}/{name}"
            try:
                if _rename_noreplace(tmp_path, target):
                    self._where[key] = (sub, name)
                    return key, True
                os.link(tmp_path, target)
            except FileExistsError:
                if fixed:
                    raise
                key = _new_key()
                continue
            except OSError as exc:
                # Filesystems without hard links (some FUSE/SMB/vfat mounts). Falling back to a
                # checked rename keeps delivery working there, with a tiny race window that the
                # random part of the name makes practically irrelevant.
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                     errno.EMLINK, errno.ENOSYS):
                    raise
                if os.path.lexists(target):
                    if fixed:
                        raise FileExistsError(errno.EEXIST, "message name taken",
                                              target) from None
                    key = _new_key()
                    continue
                os.rename(tmp_path, target)
                self._where[key] = (sub, name)
                return key, True
            self._where[key] = (sub, name)
            return key, False
        raise FileExistsError(errno.EEXIST, "could not find a free message name", str(self.path))

    def stamp(self) -> str | None:
        """A cheap fingerprint of the folder's contents: the mtimes of cur/ and new/ (every
        delivery, rename and unlink changes them) and when it was taken; None if missing."""
        try:
            cur = os.stat(self.path / "cur").st_mtime_ns
            new = os.stat(self.path / "new").st_mtime_ns
        except OSError:
            return None
        return f"{cur} {new} {time.time():.3f}"

    def unchanged_since(self, stamp: str | None, *, slack: float = 1.0) -> bool:
        """True when cur/ and new/ are as they were when `stamp` was taken, so neither a scan
        nor the state rows are needed. Only a stamp whose mtimes were already `slack` seconds
        old when it was taken counts: a change within the same clock tick as the stamped one
        would leave the mtime as it was (the 'racy' case git's index knows too)."""
        if not stamp:
            return False
        try:
            cur_ns, new_ns, taken = stamp.split()
            cur = os.stat(self.path / "cur").st_mtime_ns
            new = os.stat(self.path / "new").st_mtime_ns
        except (OSError, ValueError):
            return False
        if (str(cur), str(new)) != (cur_ns, new_ns):
            return False
        return max(cur, new) / 1e9 < float(taken) - slack

    def sync(self) -> None:
        """fsync the cur/ and new/ directories: makes preceding delivers, renames and removals
        durable. Not tmp/: nothing there must survive a crash (a message is safe once linked
        into new/ or cur/, and a tmp/ name that comes back is debris that recovery and
        clean_tmp remove), and the fetch thread keeps writing there, so each fsync of it
        forced a journal commit of its own (a third of a download group's fsync time)."""
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(self.path / sub)

    def set_flags(self, key: str, flags: Flags, *, expect: Flags | None = None) -> bool:
        """Rename the file of key so that it carries flags (moving new/ -> cur/ when needed).
        Letters the file had that syncd does not know are kept. Missing file: FileNotFoundError.
        A flagless message in new/ that stays flagless stays in new/; a message in cur/ keeps
        its ":2," suffix even when it loses all flags (that is where MUAs keep seen mail).

        ``expect``: the flags the caller last saw on the file. If another program has changed
        them since (mutt renaming it while a sync runs), nothing is renamed and False is
        returned: overwriting would silently undo that change (fault suite, concurrent local
        changes); the next sync merges it."""
        wanted = _check_flags(flags)
        for path in self._retrying(key):
            sub = path.parent.name
            _key, info = _split_name(path.name)
            if expect is not None and (from_info(info) if info is not None else "") != expect:
                return False
            kept = ""
            if info is not None and info.startswith("2,"):
                # Keyword letters of other tools (Dovecot's lowercase a-z, ...) are theirs.
                kept = "".join(c for c in info[2:] if c not in KNOWN_LETTERS)
            letters = "".join(sorted(set(wanted + kept)))
            if sub == "new" and not letters and info is None:
                return True  # flagless and already in the right place
            new_name = f"{key}{_INFO_SEP}2,{letters}"
            target = self.path / "cur" / new_name
            if sub == "cur" and path.name == new_name:
                return True
            try:
                # rename() replaces an existing target; a target with this exact name can only
                # be this same message (same key), so the result is still one copy of it.
                os.rename(path, target)
            except FileNotFoundError:
                continue  # moved under us: look it up again
            self._where[key] = ("cur", new_name)
            return True
        raise AssertionError("unreachable")  # _retrying raises when it runs out

    def remove(self, key: str) -> bool:
        """Unlink the file of key; False if it was already gone."""
        try:
            for path in self._retrying(key):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                self._where.pop(key, None)
                return True
        except FileNotFoundError:
            self._where.pop(key, None)
            return False
        raise AssertionError("unreachable")

    def clean_tmp(self, older_than: float = 36 * 3600) -> int:
        """Remove tmp/ files older than older_than seconds (the spec's rule); returns the count.
        "Older" means neither accessed nor modified for that long, so a delivery in progress
        (ours or another program's) is never taken for garbage."""
        limit = time.time() - older_than
        removed = 0
        try:
            iterator = os.scandir(self.path / "tmp")
        except FileNotFoundError:
            return 0
        with iterator:
            for dirent in iterator:
                try:
                    st = dirent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                if max(st.st_atime, st.st_mtime) >= limit:
                    continue
                try:
                    os.unlink(dirent.path)
                except FileNotFoundError:
                    continue
                removed += 1
        return removed


def header_info_of(handle: BinaryIO) -> HeaderInfo:
    """MaildirFolder.header_info of a message file open for reading."""
    return _header_info_stream(file_chunks(handle))


def read_head(handle: BinaryIO, limit: int = _MAX_HEADER) -> bytes:
    """The first ``limit`` bytes of the file: enough for its header (a Subject to report)."""
    handle.seek(0)
    return handle.read(limit)


def _header_info_stream(chunks: Iterable[bytes]) -> HeaderInfo:
    """One streamed pass: collect the header block (up to the first empty line), count the
    bytes and the LFs that are not preceded by CR (each becomes two bytes on the server)."""
    size = 0
    bare_lf = 0
    prev_cr = False
    header = bytearray()
    header_done = False
    for chunk in chunks:
        size += len(chunk)
        lf = chunk.count(b"\n")
        crlf = chunk.count(b"\r\n")
        if prev_cr and chunk.startswith(b"\n"):
            crlf += 1  # a CRLF split across two chunks
        bare_lf += lf - crlf
        prev_cr = chunk.endswith(b"\r")
        if not header_done:
            start = max(0, len(header) - 3)  # the blank line may straddle chunks
            header += chunk
            end = _header_end(header, start)
            if end is not None:
                del header[end:]
                header_done = True
            elif len(header) > _MAX_HEADER:
                header_done = True
    block = bytes(header)
    message_id, trace = header_identity(block)
    # The search first: parsing the fields again for every file would double the cost.
    placeholder = placeholder_of(block) if _PLACEHOLDER_FIELD.search(block) else None
    return HeaderInfo(message_id, size + bare_lf, trace, placeholder)


_PLACEHOLDER_FIELD = re.compile(rb"^x-syncd-placeholder:", re.IGNORECASE | re.MULTILINE)


_BLANK_LINE = re.compile(rb"\n\r?\n")


def _header_end(buffer: bytearray, start: int) -> int | None:
    """Offset just past the last header line (LF, CRLF or a mix), or None if not seen yet."""
    if buffer.startswith(b"\n") or buffer.startswith(b"\r\n"):
        return 0  # no header at all
    match = _BLANK_LINE.search(buffer, start)
    return match.start() + 1 if match else None


# ---------------------------------------------------------------------------------------------


class Maildir:
    """An account's maildir root with its layout."""

    root: Path
    layout: Layout

    def __init__(self, root: Path, layout: Layout) -> None:
        if layout not in ("verbatim", "maildir++"):
            raise ValueError(f"unknown maildir layout {layout!r}")
        self.root = Path(root)
        self.layout = layout
        # local_path is asked for the same names several times per folder (the folder map,
        # the no-change check, the local-only folders): with 1,000 folders that was most of a
        # no-change sync's own time (issue 21).
        self._paths: dict[FolderName, Path] = {}

    def __repr__(self) -> str:
        return f"Maildir({str(self.root)!r}, {self.layout!r})"

    def folder(self, name: FolderName) -> MaildirFolder:
        """The MaildirFolder for a server folder name (escaped so it can never leave root)."""
        return MaildirFolder(self.local_path(name))

    def local_path(self, name: FolderName) -> Path:
        path = self._paths.get(name) if isinstance(name, tuple) else None
        if path is None:
            path = self._paths[name] = self._local_path(name)
        return path

    def _local_path(self, name: FolderName) -> Path:
        if not isinstance(name, tuple) or not name:
            raise ValueError(f"a folder name is a non-empty tuple of components, not {name!r}")
        if self.layout == "maildir++":
            if name == INBOX:
                return self.root
            path = self.root / ("." + ".".join(escape_component(c, self.layout) for c in name))
        else:
            path = self.root.joinpath(*(escape_component(c, self.layout) for c in name))
        # Belt and braces: escaping already guarantees this; if it ever did not, refusing here
        # turns a path-traversal bug into an error instead of a write outside the maildir.
        root_n = os.path.normpath(self.root)
        path_n = os.path.normpath(path)
        if (os.path.commonpath([root_n, path_n]) != root_n
                or (path_n == root_n and name != INBOX)):
            raise ValueError(f"folder name {name!r} maps outside the maildir {self.root}")
        return path

    def folder_name_of(self, path: Path | str) -> FolderName | None:
        """The folder name whose directory ``path`` is under this root and layout (the inverse
        of local_path); None for a path this Maildir would never give (another root, the other
        layout, a name that is not canonical)."""
        try:
            relative = Path(path).relative_to(self.root)
        except ValueError:
            return None
        parts = list(relative.parts)
        if self.layout == "maildir++":
            if not parts:
                return INBOX
            if len(parts) != 1 or not parts[0].startswith(".") or parts[0] in (".", ".."):
                return None
            parts = parts[0][1:].split(".")
        elif not parts:
            return None
        name = _decode_dir_name(parts, self.layout)
        if name is None or (self.layout == "maildir++" and name == INBOX):
            return None
        try:
            return name if self.local_path(name) == Path(path) else None
        except ValueError:
            return None

    def list_folders(self) -> list[FolderName]:
        """Every Maildir folder under root (directories holding cur/ new/ tmp/), mapped back to
        folder names (unescaped). INBOX included if present.

        A directory counts as a folder when it has cur/ (what MUAs check; create() adds a
        missing new/ or tmp/). Symlinks are never followed: they could point out of root or
        make cycles. Directories whose names are not what escaping would produce (made by hand,
        e.g. "100%") are skipped with a warning: mapping them to a name that maps back to a
        different directory would make syncd fork the folder in two."""
        if self.layout == "maildir++":
            return self._list_maildirpp()
        found: list[FolderName] = []
        self._walk_verbatim(self.root, (), found)
        return sorted(found)

    def _list_maildirpp(self) -> list[FolderName]:
        found: list[FolderName] = []
        if _is_real_dir(self.root / "cur"):
            found.append(INBOX)
        try:
            iterator = os.scandir(self.root)
        except FileNotFoundError:
            return found
        with iterator:
            for dirent in iterator:
                if not dirent.name.startswith(".") or dirent.name in (".", ".."):
                    continue
                if not dirent.is_dir(follow_symlinks=False):
                    continue
                if not _is_real_dir(Path(dirent.path) / "cur"):
                    continue  # .notmuch, .git, ...: not a maildir
                name = _decode_dir_name(dirent.name[1:].split("."), "maildir++")
                if name is None or name == INBOX:
                    # ".INBOX" would map back to the root, not to this directory.
                    log.warning("maildir: ignoring %s: not a name syncd would create",
                                dirent.path)
                    continue
                found.append(name)
        return sorted(found)

    def _walk_verbatim(self, directory: Path, prefix: FolderName,
                       found: list[FolderName]) -> None:
        try:
            iterator = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        with iterator:
            children = [d for d in iterator
                        if d.name not in _SUBDIRS and not d.name.startswith(".")
                        and d.is_dir(follow_symlinks=False)]
        for dirent in children:
            name = _decode_dir_name([dirent.name], "verbatim")
            if name is None:
                log.warning("maildir: ignoring %s: not a name syncd would create", dirent.path)
                continue
            child = Path(dirent.path)
            full = prefix + name
            if _is_real_dir(child / "cur"):
                found.append(full)
            # Recurse regardless: "A" may be a \Noselect parent with no cur/ of its own.
            self._walk_verbatim(child, full, found)

    def ensure_root(self) -> None:
        """Create root 0700 if missing."""
        _make_dirs(self.root)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _decode_dir_name(parts: list[str], layout: Layout) -> FolderName | None:
    """Directory-name parts -> folder name, or None when the parts are not canonical (i.e. the
    name would not map back to these very parts)."""
    name: list[str] = []
    for part in parts:
        try:
            component = unescape_component(part)
        except ValueError:
            return None
        if escape_component(component, layout) != part:
            return None
        name.append(component)
    return tuple(name)


# ---------------------------------------------------------------------------------------------
# escaping


def _pct(char: str) -> str:
    # surrogatepass: a lone surrogate (malformed modified UTF-7 from a server) still escapes
    # reversibly instead of crashing the filesystem encoder.
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def _must_escape(char: str, layout: Layout) -> bool:
    if char in "%/\\":
        return True
    if layout == "maildir++" and char == ".":
        return True  # the level separator of maildir++
    category = unicodedata.category(char)
    # Cc: C0 controls, DEL and C1 controls (terminal escapes such as U+009B CSI included);
    # Cs: lone surrogates, which are not encodable as UTF-8 file names.
    return category in ("Cc", "Cs")


def escape_component(component: str, layout: Layout) -> str:
    """Reversible escaping of one folder-name component for use as (part of) a directory name.

    ``%XX`` (uppercase hex of the UTF-8 bytes) for: "%" itself; "/" and "\\"; control characters
    (and lone surrogates); in maildir++ every "." (its separator); in verbatim a leading "." (no
    hidden directories, no "." / ".." and no confusion with maildir++) and the first letter of
    "cur", "new", "tmp" (they would collide with the parent folder's own subdirectories). The
    empty component becomes "%". Everything else, any Unicode included, is kept as is.
    """
    if layout not in ("verbatim", "maildir++"):
        raise ValueError(f"unknown maildir layout {layout!r}")
    if component == "":
        return _EMPTY_MARK
    out = [_pct(c) if _must_escape(c, layout) else c for c in component]
    if layout == "verbatim" and (component[0] == "." or component in _SUBDIRS):
        out[0] = _pct(component[0])
    return "".join(out)


def unescape_component(text: str) -> str:
    """Inverse of escape_component (for either layout). ValueError on text that escaping never
    produces a valid decoding for (a lone "%" other than the empty marker, bad hex, bytes that
    are not UTF-8)."""
    if text == _EMPTY_MARK:
        return ""
    raw = bytearray()
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "%":
            match = _ESCAPE_RE.match(text, pos)
            if match is None:
                raise ValueError(f"bad escape in folder directory name {text!r}")
            raw.append(int(match.group(1), 16))
            pos = match.end()
        else:
            raw += char.encode("utf-8", "surrogatepass")
            pos += 1
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad escape in folder directory name {text!r}") from exc


# ---------------------------------------------------------------------------------------------
# line ends


def crlf_to_lf(data: bytes) -> bytes:
    """Server bytes -> file bytes: CRLF becomes LF; nothing else changes."""
    # replace(b"\r\n", b"\n") restarts its search at every line (~0.4 GB/s: the biggest
    # single cost of an initial sync), as does count(b"\r\n"). Single-byte needles go through
    # memchr (~2-3 GB/s): delete every CR, then check that putting a CR back before every LF
    # gives the input again. If it does, the input was exactly `out` with LF -> CRLF, so `out`
    # is its CRLF -> LF. A lone CR or a bare LF anywhere takes the slow way.
    out = data.replace(b"\r", b"")
    if len(out) == len(data) or out.replace(b"\n", b"\r\n") == data:
        return out
    return data.replace(b"\r\n", b"\n")


def _whole_line_ends(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks, none empty, with a CR that ends one moved to the start of the next, so that
    no CRLF is split between two chunks (a CR ending the stream comes alone, last)."""
    pending_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if pending_cr:
            chunk = b"\r" + chunk
        pending_cr = chunk.endswith(b"\r")
        if pending_cr:
            chunk = chunk[:-1]
        if chunk:
            yield chunk
    if pending_cr:
        yield b"\r"


def crlf_to_lf_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """crlf_to_lf over a stream of chunks: a CR at the end of one chunk and an LF at the start
    of the next are still one CRLF. The output concatenates to crlf_to_lf(b"".join(chunks))."""
    for chunk in _whole_line_ends(chunks):
        yield crlf_to_lf(chunk)


_BARE_LF = re.compile(rb"(?<!\r)\n")


def lf_to_crlf(data: bytes) -> bytes:
    """File bytes -> upload bytes: bare LF becomes CRLF (existing CRLF kept)."""
    return _BARE_LF.sub(b"\r\n", data)


def lf_to_crlf_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """lf_to_crlf over a stream of chunks (a CR ending one chunk protects an LF starting the
    next). The output concatenates to lf_to_crlf(b"".join(chunks))."""
    prev_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if prev_cr and chunk.startswith(b"\n"):
            out = b"\n" + _BARE_LF.sub(b"\r\n", chunk[1:])
        else:
            out = _BARE_LF.sub(b"\r\n", chunk)
        prev_cr = chunk.endswith(b"\r")
        yield out


_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


def to_crlf_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Every line end (LF, CR or CRLF) as CRLF, over a stream of chunks: what imaplib's
    append() makes of a message (its MapCRLF), for a message sent in chunks. A CR ending one
    chunk and an LF starting the next are one line end."""
    for chunk in _whole_line_ends(chunks):
        # A chunk without CR (a Maildir file: LF only) takes replace(), several times faster.
        yield chunk.replace(b"\n", b"\r\n") if b"\r" not in chunk \
            else _ANY_LINE_END.sub(b"\r\n", chunk)


def file_chunks(handle: BinaryIO, size: int = _CHUNK) -> Iterator[bytes]:
    """The file's bytes from its start, in chunks of ``size``."""
    handle.seek(0)
    return iter(lambda: handle.read(size), b"")
