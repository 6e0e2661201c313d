"""A keyring backend in a JSON file, for tests that run syncd as a subprocess.

Select it with ``PYTHON_KEYRING_BACKEND=tests.support.file_keyring.FileKeyring`` and
``SYNCD_TEST_KEYRING=/path/keyring.json`` (the subprocess runs with the repository as its
working directory, so ``tests.support`` imports). Plaintext on purpose: it is a test double.
This module must not import pytest or syncd.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors


class FileKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    @property
    def path(self) -> Path:
        value = os.environ.get("SYNCD_TEST_KEYRING")
        if not value:
            raise keyring.errors.KeyringError("SYNCD_TEST_KEYRING is not set")
        return Path(value)

    def _update(self, change: callable) -> None:  # type: ignore[valid-type]
        path = self.path
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            change(data)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    @staticmethod
    def _key(service: str, username: str) -> str:
        return f"{service}\0{username}"

    def get_password(self, service: str, username: str) -> str | None:
        return self._read().get(self._key(service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._update(lambda data: data.__setitem__(self._key(service, username), password))

    def delete_password(self, service: str, username: str) -> None:
        key = self._key(service, username)
        if key not in self._read():
            raise keyring.errors.PasswordDeleteError("not found")
        self._update(lambda data: data.pop(key, None))


def read_all(path: Path) -> dict[tuple[str, str], str]:
    """The file's entries as {(service, user): secret}."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {tuple(k.split("\0", 1)): v for k, v in data.items()}  # type: ignore[misc]


@contextlib.contextmanager
def installed(path: Path) -> Iterator[None]:
    """This process uses a FileKeyring at ``path`` (and subprocesses find it) until exit."""
    previous_env = os.environ.get("SYNCD_TEST_KEYRING")
    previous = keyring.get_keyring()
    os.environ["SYNCD_TEST_KEYRING"] = str(path)
    keyring.set_keyring(FileKeyring())
    try:
        yield
    finally:
        keyring.set_keyring(previous)
        if previous_env is None:
            os.environ.pop("SYNCD_TEST_KEYRING", None)
        else:
            os.environ["SYNCD_TEST_KEYRING"] = previous_env
