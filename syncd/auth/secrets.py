"""Passwords: ``password_command`` or the system keyring; time-bounded; never logged.

Every password obtained here is registered with ``register_secret`` so that ``redact`` and the
``RedactingFilter`` on the log handlers scrub it from anything that gets printed, including
protocol traces under ``--debug``. Errors raised from here never carry a password, nor the
output of a password command (its stderr is exactly where tools like ``pass`` or ``gpg`` might
echo one), nor the command line (users do write ``password_command: echo hunter2``).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from syncd.errors import SecretError

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings

def _keyring() -> ModuleType:
    """Imported on first use: it costs ~0.2 s of start-up (entry points, backends) that
    accounts with a password_command never need."""
    import keyring

    return keyring


__all__ = [
    "KEYRING_SERVICE",
    "RedactingFilter",
    "get_password",
    "get_refresh_token",
    "oauth2_keyring_user",
    "redact",
    "register_secret",
    "set_password",
    "set_refresh_token",
]

KEYRING_SERVICE = "syncd"

# Shorter strings would redact half the log ("***" for every "a"); three characters is also the
# shortest password any server accepts in practice.
_MIN_SECRET_LEN = 3
_REDACTED = "***"

_secrets: set[str] = set()
_secrets_sorted: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Make ``redact`` (and so every log line) replace ``value`` from now on."""
    global _secrets_sorted
    if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
        return
    # An IMAP LOGIN command carries the password as a quoted string with \\ and \" escaped;
    # register that spelling too so that --debug protocol traces are scrubbed as well.
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    with _secrets_lock:
        _secrets.update({value, quoted})
        # Longest first: when one secret contains another, the whole of it is replaced.
        _secrets_sorted = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    secrets = _secrets_sorted  # one read of an immutable tuple: no lock needed
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _forget_secrets() -> None:
    """For tests only: start again with no registered secrets."""
    global _secrets_sorted
    with _secrets_lock:
        _secrets.clear()
        _secrets_sorted = ()


class RedactingFilter(logging.Filter):
    """Scrubs registered secrets from every record passing through the handler it is installed
    on. Installed on handlers, not loggers, because logger filters do not see records that
    propagate up from child loggers (imapclient logs under its own name)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets_sorted:
            return True
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: let logging report it, but never with raw arguments.
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatter.format() uses exc_text when present; filling it here means the
            # traceback (whose exception text may quote a server reply) is redacted too.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# ---------------------------------------------------------------------------------------------
# password_command
# ---------------------------------------------------------------------------------------------

# Characters that mean the user wrote shell syntax (pipes, redirections, variables, globs,
# ~ expansion, comments, command substitution). Quotes and backslashes are not here: shlex
# handles those the way sh does.
_SHELL_CHARS = frozenset("|&;<>()$`*?~[#\n")


def _needs_shell(command: str) -> bool:
    if any(char in _SHELL_CHARS for char in command):
        return True
    try:
        words = shlex.split(command)
    except ValueError:
        return True  # unbalanced quotes: let sh produce its own error (exit 2)
    # "GNUPGHOME=/x pass show mail" sets a variable for the command, which only sh can do.
    return bool(words) and "=" in words[0] and not words[0].startswith("=")


def _run_password_command(account: str, command: str, timeout: float) -> str:
    if not command.strip():
        raise SecretError(account, "password_command is empty")
    argv = ["/bin/sh", "-c", command] if _needs_shell(command) else shlex.split(command)
    env = {**os.environ, "SYNCD_ACCOUNT": account}
    # Errors are raised outside the except blocks on purpose: the caught exceptions hold the
    # command line (FileNotFoundError.filename) or partial output (TimeoutExpired.output), and
    # would stay reachable as __context__ even with "from None".
    problem = None
    try:
        # A session of its own, so that on timeout the whole process group (sh and whatever it
        # started) can be killed; killing only sh would leave a grandchild holding our pipes.
        # stdin is /dev/null: a command that prompts must not steal the terminal or hang.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except FileNotFoundError:
        problem = "its program was not found (is it installed and on PATH?)"
    except PermissionError:
        problem = "its program is not executable"
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    if problem is not None:
        raise SecretError(account, f"password_command could not be run: {problem}")

    timed_out = False
    out = b""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Also on KeyboardInterrupt: never leave the command running behind us.
        if proc.poll() is None or timed_out:
            _kill_group(proc)
    if timed_out:
        raise SecretError(account, f"password_command timed out after {timeout:g} s and was "
                                   f"killed")

    if proc.returncode != 0:
        raise SecretError(account, f"password_command {_how_it_failed(proc.returncode)} (its "
                                   f"output is suppressed; run it by hand to see why)")
    return _password_in(account, out)


def _how_it_failed(status: int) -> str:
    """A command's non-zero exit status in words."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    if status == 127:
        return "failed with exit status 127 (command not found)"
    if status == 126:
        return "failed with exit status 126 (command not executable)"
    return f"failed with exit status {status}"


def _password_in(account: str, out: bytes) -> str:
    """The password a password_command printed: its first line."""
    # UnicodeDecodeError carries the raw bytes (the password) as .object: raise outside it.
    try:
        text: str | None = out.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise SecretError(account, "password_command printed something that is not UTF-8 text")
    # `pass` prints the password on the first line and may print notes after it. Only the line
    # ending is removed: spaces can be part of a password.
    password = text.split("\n", 1)[0].removesuffix("\r")
    if not password:
        raise SecretError(account, "password_command printed an empty first line; it must "
                                   "print the password")
    return password


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # something escaped the group and holds the pipes; do not wait for it
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------------------------------------
# keyring
# ---------------------------------------------------------------------------------------------

_T = TypeVar("_T")

# One stuck lookup per account is enough: a locked keyring answering nobody must not pile up a
# new blocked thread on every reconnect.
_stuck: dict[str, threading.Thread] = {}
_stuck_lock = threading.Lock()


def _bounded(account: str, what: str, func: Callable[[], _T], timeout: float) -> _T:
    with _stuck_lock:
        previous = _stuck.get(account)
        if previous is not None:
            if previous.is_alive():
                raise SecretError(account, f"the keyring has still not answered an earlier "
                                           f"request (is it locked?); not trying {what} again")
            del _stuck[account]

    result: list[_T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(func())
        except BaseException as exc:
            failure.append(exc)

    # A daemon thread, because a keyring blocked on an unlock prompt cannot be interrupted; it
    # must not keep the process alive at exit either.
    thread = threading.Thread(target=work, name=f"syncd-keyring-{account}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with _stuck_lock:
            _stuck[account] = thread
        raise SecretError(account, f"the keyring did not answer within {timeout:g} s "
                                   f"(is it locked?)")
    if failure:
        exc = failure[0]
        # Keyring messages are about the keyring ("No recommended backend", "Failed to unlock
        # the collection"), but redact anyway in case a backend quotes what it was given.
        detail = redact(str(exc))[:200] or type(exc).__name__
        raise SecretError(account, f"keyring error while trying {what}: {detail}") from None
    return result[0]


def _keyring_password(account: str, timeout: float) -> str:
    password = _bounded(account, "to read the password",
                        lambda: _keyring().get_password(KEYRING_SERVICE, account), timeout)
    if not password:
        raise SecretError(account, f"no password for account '{account}': run `syncd password "
                                   f"set {account}` or set password_command")
    return password


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def get_password(account: AccountSettings, *, timeout: float = 30.0) -> str:
    """The account's password, from its ``password_command`` if set, else the keyring.

    Raises SecretError (naming the account, never the secret or the command's output)."""
    if account.password_command is not None:
        password = _run_password_command(account.name, account.password_command, timeout)
    else:
        password = _keyring_password(account.name, timeout)
    register_secret(password)
    return password


def set_password(account_name: str, password: str, *, timeout: float = 60.0) -> None:
    """Store ``password`` in the keyring (service ``syncd``, user = account name).

    The default timeout is longer than for lookups: storing may show an unlock prompt."""
    if not password:
        raise SecretError(account_name, "refusing to store an empty password")
    register_secret(password)
    _bounded(account_name, "to store the password",
             lambda: _keyring().set_password(KEYRING_SERVICE, account_name, password), timeout)


# ---------------------------------------------------------------------------------------------
# OAuth2 refresh tokens (written by `syncd auth`, read by syncd.auth.oauth.TokenProvider)
# ---------------------------------------------------------------------------------------------


def oauth2_keyring_user(account_name: str) -> str:
    """The keyring user under which an account's refresh token is kept (service ``syncd``).
    Distinct from the password entry (user = account name), so switching an account between
    password and OAuth2 never mixes the two up."""
    return f"{account_name}:oauth2"


def get_refresh_token(account_name: str, *, timeout: float = 30.0) -> str | None:
    """The stored refresh token, or None if the account has not been signed in."""
    token = _bounded(account_name, "to read the OAuth2 refresh token",
                     lambda: _keyring().get_password(KEYRING_SERVICE,
                                                  oauth2_keyring_user(account_name)),
                     timeout)
    if token:
        register_secret(token)
    return token or None


def set_refresh_token(account_name: str, token: str, *, timeout: float = 60.0) -> None:
    if not token:
        raise SecretError(account_name, "refusing to store an empty refresh token")
    register_secret(token)
    _bounded(account_name, "to store the OAuth2 refresh token",
             lambda: _keyring().set_password(KEYRING_SERVICE, oauth2_keyring_user(account_name),
                                          token),
             timeout)

