"""Secrets: password_command, the keyring (in-memory backends), redaction, and no leaks."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator

import keyring
import keyring.backend
import keyring.errors
import pytest

from syncd.auth import secrets
from syncd.auth.secrets import (
    RedactingFilter,
    get_password,
    redact,
    register_secret,
    set_password,
)
from syncd.config.load import AccountSettings, build_account
from syncd.errors import SecretError

SECRET = "s3cr3t-Pa55word"


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[service, username] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class HangingKeyring(MemoryKeyring):
    """A locked keyring waiting for an unlock prompt nobody answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.calls += 1
        self.release.wait(10)
        return None


class BrokenKeyring(MemoryKeyring):
    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("Failed to unlock the collection!")


@pytest.fixture(autouse=True)
def clean_secrets() -> Iterator[None]:
    previous = keyring.get_keyring()
    secrets._forget_secrets()
    secrets._stuck.clear()
    yield
    keyring.set_keyring(previous)
    secrets._forget_secrets()
    secrets._stuck.clear()


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    return backend


def account(name: str = "work", command: str | None = None) -> AccountSettings:
    return build_account(name=name, protocol="imap", host="imap.example.com", username="me",
                         password_command=command)


def assert_no_leak(exc: BaseException, secret: str = SECRET) -> None:
    """The secret must not be reachable from the exception in any printable form."""
    texts = [str(exc), repr(exc), *map(str, exc.args),
             "".join(traceback.format_exception_only(exc)), repr(vars(exc))]
    for text in texts:
        assert secret not in text, text
    assert exc.__cause__ is None
    assert exc.__context__ is None


# -------------------------------------------------------------------------------- keyring


def test_keyring_round_trip(memory_keyring: MemoryKeyring) -> None:
    set_password("work", SECRET)
    assert memory_keyring.store == {("syncd", "work"): SECRET}
    assert get_password(account("work")) == SECRET
    assert redact(f"LOGIN me {SECRET}") == "LOGIN me ***"


def test_keyring_without_password(memory_keyring: MemoryKeyring) -> None:
    with pytest.raises(SecretError) as info:
        get_password(account("work"))
    assert info.value.account == "work"
    assert str(info.value) == ("work: no password for account 'work': run `syncd password set "
                               "work` or set password_command")


def test_keyring_is_per_account(memory_keyring: MemoryKeyring) -> None:
    set_password("home", SECRET)
    with pytest.raises(SecretError, match="no password for account 'work'"):
        get_password(account("work"))


def test_locked_keyring_times_out_and_does_not_pile_up_threads() -> None:
    backend = HangingKeyring()
    keyring.set_keyring(backend)
    try:
        started = time.monotonic()
        with pytest.raises(SecretError) as info:
            get_password(account("work"), timeout=0.3)
        assert time.monotonic() - started < 2
        assert "did not answer within 0.3 s" in str(info.value)
        assert info.value.account == "work"
        # The stuck lookup is remembered: the next attempt fails at once, without a new thread.
        with pytest.raises(SecretError, match="still not answered"):
            get_password(account("work"), timeout=0.3)
        assert backend.calls == 1
    finally:
        backend.release.set()
    secrets._stuck["work"].join(5)
    # Once the old lookup has finished, the keyring is asked again.
    with pytest.raises(SecretError, match="no password"):
        get_password(account("work"), timeout=2)
    assert backend.calls == 2


def test_keyring_error_is_reported() -> None:
    keyring.set_keyring(BrokenKeyring())
    with pytest.raises(SecretError) as info:
        get_password(account("work"))
    assert str(info.value) == ("work: keyring error while trying to read the password: "
                               "Failed to unlock the collection!")
    assert_no_leak(info.value)


def test_set_password_refuses_empty(memory_keyring: MemoryKeyring) -> None:
    with pytest.raises(SecretError, match="empty password"):
        set_password("work", "")
    assert memory_keyring.store == {}


# ---------------------------------------------------------------------------- password_command


def test_command_first_line_without_newline() -> None:
    command = f"printf '{SECRET}\\nsecond line: notes\\n'"
    assert get_password(account(command=command)) == SECRET
    assert redact(SECRET) == "***"


@pytest.mark.parametrize(("command", "expected"), [
    ("printf 'abc'", "abc"),  # no trailing newline at all
    ("printf 'abc\\r\\n'", "abc"),
    ("printf '  spaced pw  \\n'", "  spaced pw  "),
    ("printf '%s\\n' 'two words'", "two words"),  # quoting without a shell
    ("printf 'abc\\n' | tr a-c x-z", "xyz"),  # a pipe: needs /bin/sh
    ("printf '%s\\n' \"$SYNCD_ACCOUNT\"", "work"),
])
def test_command_output(command: str, expected: str) -> None:
    assert get_password(account(command=command)) == expected


@pytest.mark.parametrize(("command", "shell"), [
    ("pass show mail/work", False),
    ("printf '%s\\n' 'a b'", False),
    ("gpg -dq ~/.pw.gpg", True),
    ("pass show a | head -1", True),
    ("cat $HOME/pw", True),
    ("security find-generic-password -w -s x; true", True),
    ("cat pw*", True),
    ("echo `cat pw`", True),
    ("GNUPGHOME=/x pass show a", True),
    ("pass show 'unbalanced", True),
])
def test_shell_only_when_needed(command: str, shell: bool) -> None:
    assert secrets._needs_shell(command) is shell


def test_command_failure_names_status_and_never_its_output(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    command = f"sh -c 'echo {SECRET} >&2; echo {SECRET}; exit 3'"
    with pytest.raises(SecretError) as info:
        get_password(account("work", command))
    assert info.value.account == "work"
    assert "password_command failed with exit status 3" in str(info.value)
    assert "suppressed" in str(info.value)
    assert_no_leak(info.value)
    assert SECRET not in caplog.text
    # Nor passed through to our own stderr (under systemd, that is the journal).
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_command_exit_status() -> None:
    with pytest.raises(SecretError, match=r"^work: password_command failed with exit status 3 "):
        get_password(account("work", "sh -c 'exit 3'"))


def test_command_timeout_kills_it() -> None:
    started = time.monotonic()
    with pytest.raises(SecretError) as info:
        get_password(account("work", "sleep 5"), timeout=0.5)
    assert time.monotonic() - started < 3
    assert str(info.value) == "work: password_command timed out after 0.5 s and was killed"
    assert_no_leak(info.value)


def test_command_timeout_kills_grandchildren_too() -> None:
    # sh starts sleep, which inherits the pipes; killing only sh would leave us waiting 5 s.
    started = time.monotonic()
    with pytest.raises(SecretError, match=r"timed out after 0\.5 s") as info:
        get_password(account("work", f"echo {SECRET}; sleep 5; echo done"), timeout=0.5)
    assert time.monotonic() - started < 3
    assert_no_leak(info.value)


def test_command_not_found_does_not_echo_the_command() -> None:
    # People do paste the password itself into password_command.
    with pytest.raises(SecretError) as info:
        get_password(account("work", f"{SECRET} --flag"))
    assert "password_command could not be run: its program was not found" in str(info.value)
    assert_no_leak(info.value)


def test_command_not_found_through_the_shell() -> None:
    with pytest.raises(SecretError) as info:
        get_password(account("work", f"{SECRET}-nope 2>/dev/null"))
    assert "exit status 127 (command not found)" in str(info.value)
    assert_no_leak(info.value)


@pytest.mark.parametrize("command", ["true", "printf '\\n'", "printf '\\nsecond\\n'"])
def test_command_with_empty_output(command: str) -> None:
    with pytest.raises(SecretError, match="printed an empty first line"):
        get_password(account("work", command))


def test_command_with_invalid_utf8() -> None:
    with pytest.raises(SecretError, match="not UTF-8") as info:
        get_password(account("work", "printf 'ab\\377cd'"))
    assert_no_leak(info.value, "ab")


def test_command_killed_by_signal() -> None:
    with pytest.raises(SecretError, match="was killed by SIGTERM"):
        get_password(account("work", "sh -c 'kill -TERM 0'"))


# --------------------------------------------------------------------------------- redaction


def test_redact_replaces_every_registered_secret() -> None:
    register_secret("alpha-secret")
    register_secret("beta")
    assert redact("alpha-secret and beta, beta") == "*** and ***, ***"


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret("")
    assert redact("ab cd") == "ab cd"


def test_longest_secret_wins() -> None:
    register_secret("pass")
    register_secret("password123")
    assert redact("x password123 y") == "x *** y"


def test_imap_quoted_form_is_redacted() -> None:
    register_secret('pa"ss\\wd')
    assert redact('A001 LOGIN me "pa\\"ss\\\\wd"') == 'A001 LOGIN me "***"'


@pytest.fixture
def log_output() -> Iterator[tuple[logging.Logger, list[str]]]:
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    handler.addFilter(RedactingFilter())
    parent = logging.getLogger("syncd-test-redact")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    yield parent, lines
    parent.removeHandler(handler)


def test_filter_redacts_messages_args_and_child_loggers(
        log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    register_secret(SECRET)
    logger.info("login with %s", SECRET)
    logger.getChild("imap").debug(f"> LOGIN me {SECRET}")
    logger.info("plain %d", 5)
    assert lines == ["login with ***", "> LOGIN me ***", "plain 5"]


def test_filter_redacts_tracebacks(log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    register_secret(SECRET)
    try:
        raise RuntimeError(f"server said: bad password {SECRET}")
    except RuntimeError:
        logger.exception("login failed")
    assert len(lines) == 1
    assert SECRET not in lines[0]
    assert "bad password ***" in lines[0]


def test_filter_survives_bad_format_arguments(
        log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    register_secret(SECRET)
    logger.info("%d items", SECRET)
    assert len(lines) == 1
    assert SECRET not in lines[0]


def test_password_from_command_is_redacted_in_logs(
        log_output: tuple[logging.Logger, list[str]]) -> None:
    logger, lines = log_output
    password = get_password(account("work", f"printf '{SECRET}\\n'"))
    logger.debug("AUTH %s", password)
    assert lines == ["AUTH ***"]
