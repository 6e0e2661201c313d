"""Typed errors, scoped by blast radius: message < folder < account < config.

The CLI is the one place that turns these into messages and exit codes. Every error's
``str()`` is a complete, user-facing sentence that names what it concerns and never contains a
secret.
"""

from __future__ import annotations

from typing import Protocol


class _LoginTarget(Protocol):
    """What login_refused names (an account's settings; errors stays below config)."""

    name: str
    username: str
    host: str


class SyncdError(Exception):
    """Base of every error syncd reports to the user."""

    exit_code = 1


class ConfigError(SyncdError):
    """The configuration is invalid. Names the key and, where known, the YAML line."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None,
                 path: str | None = None) -> None:
        self.key = key
        self.line = line
        self.path = path
        where = []
        if path:
            where.append(path if line is None else f"{path}:{line}")
        elif line is not None:
            where.append(f"line {line}")
        prefix = f"{where[0]}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"config error: {prefix}{keypart}{message}")


class UsageError(SyncdError):
    exit_code = 2


class AccountError(SyncdError):
    """Something went wrong for one account (connection, TLS, auth, protocol)."""

    def __init__(self, account: str, message: str, *, cause: str = "error") -> None:
        self.account = account
        # dns, refused, certificate, auth, timeout, tls, protocol, secret, ...
        self.cause = cause
        super().__init__(f"{account}: {message}")


def login_refused(account: _LoginTarget) -> AccountError:
    """The server said NO to LOGIN (both IMAP paths report it in the same words)."""
    return AccountError(
        account.name, f"login as {account.username!r} on {account.host} failed: wrong "
        "username or password (or the server refuses password logins)", cause="auth")


class SecretError(AccountError):
    """A password could not be obtained. Never carries the secret or the command's output."""

    def __init__(self, account: str, message: str) -> None:
        super().__init__(account, message, cause="secret")


class FolderError(SyncdError):
    """Something went wrong for one folder of an account; other folders continue."""

    def __init__(self, account: str, folder: str, message: str) -> None:
        self.account = account
        self.folder = folder
        super().__init__(f"{account}/{folder}: {message}")

