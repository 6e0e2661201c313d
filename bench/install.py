"""syncd as a user runs it (issue 21): `pip install` (not editable) into a plain venv of its own.

The bench's own .venv has syncd installed editable (a .pth entry pointing at the source tree),
with the test and bench extras beside it. A user's syncd is a regular install: the package
copied into site-packages and compiled there by pip, the `syncd` console script, and only
syncd's dependencies. This module makes that venv under the bench's work dir and keeps it in
step with the source tree (re-installed when a file of syncd/ or pyproject.toml changes).

Start-up is measured three ways (bench/run.py): with no bytecode written yet (every
``__pycache__`` of the venv removed: the first run compiles and writes them), cold (the files
of the venv and of the standard library evicted from the page cache with
``posix_fadvise(DONTNEED)``, which any user may do to files they can read; pages mapped by a
running process, such as the interpreter binary and libssl, stay), and warm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The interpreter a user installs with on Debian (the Makefile's PYTHON default).
SYSTEM_PYTHON = "/usr/bin/python3"
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")


def source_digest(repo: Path = REPO) -> str:
    """A digest of what `pip install .` would install: syncd/ and the project files."""
    h = hashlib.sha256()
    paths = [repo / f for f in SOURCE_FILES if (repo / f).exists()]
    paths += sorted(p for p in (repo / "syncd").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    for p in paths:
        h.update(p.relative_to(repo).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _copy_source(repo: Path, dest: Path) -> None:
    """The installable tree without build leftovers, so pip builds from a clean copy and never
    writes build/ or *.egg-info into the repository."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in SOURCE_FILES:
        if (repo / f).exists():
            shutil.copy2(repo / f, dest / f)
    shutil.copytree(repo / "syncd", dest / "syncd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def ensure(work: Path, python: str = SYSTEM_PYTHON, log=print) -> Path:
    """The `syncd` executable of <work>/syncd-venv, (re)installed if the source changed."""
    venv = work / "syncd-venv"
    exe = venv / "bin" / "syncd"
    stamp = venv / ".source-digest"
    digest = source_digest()
    if exe.exists() and stamp.exists() and stamp.read_text() == digest:
        return exe
    src = work / "syncd-src"
    _copy_source(REPO, src)
    pip = venv / "bin" / "pip"
    fresh = not pip.exists()
    if fresh:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    log(f"installing syncd into {venv} with pip (not editable)")
    cmd = [str(pip), "install", "--quiet", "--disable-pip-version-check"]
    # Only syncd itself when the dependencies are in place and pyproject.toml is unchanged.
    same_deps = (not fresh and (venv / ".pyproject").exists()
                 and (venv / ".pyproject").read_text() == (REPO / "pyproject.toml").read_text())
    if same_deps:
        cmd += ["--force-reinstall", "--no-deps"]
    subprocess.run([*cmd, str(src)], check=True)
    shutil.copy2(REPO / "pyproject.toml", venv / ".pyproject")
    stamp.write_text(digest)
    return exe


def remove_bytecode(venv: Path) -> int:
    """Remove every __pycache__ under the venv's site-packages; how many were removed."""
    n = 0
    for d in list(venv.glob("lib/python*/site-packages/**/__pycache__")):
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    return n


def evict(paths: list[Path]) -> int:
    """Drop the page cache of every regular file under ``paths`` (POSIX_FADV_DONTNEED);
    how many files were advised. Clean, unmapped pages go; the rest stays."""
    n = 0
    for root in paths:
        files = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())
        for p in files:
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return n


def python_files(venv: Path) -> list[Path]:
    """What a syncd start reads: the venv and the standard library it runs on."""
    stdlib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    return [venv, stdlib or Path(sysconfig.get_path("stdlib"))]
