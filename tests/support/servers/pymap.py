"""pymap 0.36 (PyPI, the ``interop`` extra of pyproject.toml), its ``maildir`` backend.

A pure-Python asyncio server: no namespace prefix, ``/`` delimiter; messages are stored with the
line endings they came with as LF (sizes differ from CRLF); keywords it does not keep are dropped
silently. Users are in ``pymap-etc-passwd``/``pymap-etc-shadow`` in its base directory, read at
each login (so users can be added while it runs). Passwords are PBKDF2 hashes with few rounds
(the default 500,000 would cost ~0.3 s of CPU per login).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from tests.support.servers.base import ImapServer, ServerUnavailable, ServerUser

PYMAP_VERSION = "0.36.7"


class PymapServer(ImapServer):
    kind = "pymap"
    start_timeout = 30.0

    def __init__(self, workdir: Path | str) -> None:
        super().__init__(workdir)
        self.base = self.workdir / "base"

    def _preflight(self) -> None:
        if importlib.util.find_spec("pymap") is None:
            raise ServerUnavailable(
                f"pymap is not installed in {sys.prefix}: run `make venv` (pip install -e "
                f"'.[test,interop]', pymap=={PYMAP_VERSION})")

    def _prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        for name in ("pymap-etc-passwd", "pymap-etc-shadow"):
            (self.base / name).touch()

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return ([sys.executable, "-c", "import sys; from pymap.main import main; sys.exit(main())",
                 "--host", "127.0.0.1", "--port", str(self.port), "maildir", str(self.base)], env)

    def _log_tail(self) -> str:
        p = self.workdir / "server.out"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def _create_user(self, name: str, password: str) -> ServerUser:
        from pysasl.hashing import BuiltinHash

        hashed = BuiltinHash(rounds=1000).hash(password)
        with open(self.base / "pymap-etc-shadow", "a") as f:
            f.write(f"{name}:{hashed.replace(':', chr(92) + ':')}:::::::\r\n")
        with open(self.base / "pymap-etc-passwd", "a") as f:
            f.write(f"{name}::1000:1000::{name}:\r\n")
        return ServerUser(name=name, login=name, password=password)
