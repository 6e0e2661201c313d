"""Cheap snapshots of mail trees: message files are hard-linked, everything else is copied.

Safe because no tool rewrites a Maildir message in place (flag changes are renames, expunges
are unlinks); index, uidlist and state files are rewritten, so they are copied. Owners and
modes are kept (Dovecot's store belongs to the mail uid). See the Dovecot notes,
"Cheap reset between runs".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_MESSAGE_DIRS = {"cur", "new"}


def copy_tree(src: Path, dst: Path) -> int:
    """Replace ``dst`` by a snapshot of ``src``; returns the number of files linked."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    linked = 0
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        target = dst / here.relative_to(src)
        st = os.stat(here)
        target.mkdir(mode=st.st_mode & 0o7777, exist_ok=True)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        link = here.name in _MESSAGE_DIRS
        for name in filenames:
            s, d = here / name, target / name
            if link:
                os.link(s, d)
                linked += 1
            else:
                shutil.copy2(s, d, follow_symlinks=False)
                fst = os.lstat(s)
                os.chown(d, fst.st_uid, fst.st_gid, follow_symlinks=False)
        for name in dirnames:
            if (here / name).is_symlink():
                dirnames.remove(name)
    return linked


def tree_bytes(root: Path) -> tuple[int, int]:
    """(message files, bytes) under the cur/ and new/ directories of ``root``."""
    count = size = 0
    for dirpath, _, filenames in os.walk(root):
        if Path(dirpath).name in _MESSAGE_DIRS:
            for name in filenames:
                count += 1
                size += os.lstat(os.path.join(dirpath, name)).st_size
    return count, size
