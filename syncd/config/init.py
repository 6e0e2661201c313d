"""`syncd init`: ask the few questions needed (or take flags), add the account to the config.

The config file is edited as text, never re-dumped: the account block is inserted at the end
of the ``accounts:`` mapping (or the file is created), so the user's comments, order and
anchors stay as they were. The result is validated with the normal loader before it replaces
the file (atomically, keeping its mode); an invalid result leaves the file untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.config.load import ACCOUNT_NAME_RE, Settings, parse_config
from syncd.config.presets import ACCOUNT_PRESETS, guess_servers, preset_for_address
from syncd.errors import ConfigError, UsageError

__all__ = ["AccountAnswers", "account_block", "add_account", "apply_discovery", "ask",
           "default_name"]


@dataclass
class AccountAnswers:
    """Everything `syncd init` needs to know; what is None is left to presets/defaults."""

    name: str
    email: str
    provider: str | None = None
    protocol: str = "imap"
    username: str | None = None
    host: str | None = None
    port: int | None = None
    tls: str | None = None
    tls_ca_file: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    auth: str | None = None
    password_command: str | None = None
    oauth2: dict[str, str] = field(default_factory=dict)


def default_name(email: str) -> str:
    """An account name from an address: the domain's first label (``me@example.com`` ->
    ``example``), made safe for a file name."""
    domain = email.rpartition("@")[2] or email
    label = re.sub(r"[^A-Za-z0-9._-]", "-", domain.split(".")[0]).strip("-.") or "mail"
    return label[:64]


def fill_defaults(answers: AccountAnswers) -> AccountAnswers:
    """Guess what the user did not say: a preset from the address's domain, else servers
    named imap./pop./smtp.<domain>."""
    if answers.username is None:
        answers.username = answers.email
    if answers.provider is None and answers.host is None:
        preset = preset_for_address(answers.email)
        if preset is not None:
            answers.provider = preset.name
    if answers.provider is None:
        guessed = guess_servers(answers.email)
        if answers.host is None:
            answers.host = guessed[answers.protocol].host
        if answers.smtp_host is None:
            answers.smtp_host = guessed["smtp"].host
    return answers


def _scalar(value: Any) -> str:
    """A YAML scalar that reads back as exactly ``value`` (plain where that is safe, else a
    JSON string, which is valid YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./@+-][A-Za-z0-9_./@+:-]*", text) and not text.endswith(":"):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text, ensure_ascii=False)


def account_block(answers: AccountAnswers, indent: str = "  ") -> str:
    """The YAML text of one account under ``accounts:`` (indented by ``indent``)."""
    inner = indent * 2 if len(indent) <= 4 else indent + "  "
    step = inner[len(indent):]
    lines = [f"{indent}{answers.name}:"]

    def put(key: str, value: Any) -> None:
        if value is not None:
            lines.append(f"{inner}{key}: {_scalar(value)}")

    put("provider", answers.provider)
    if answers.provider is None or answers.protocol != "imap":
        put("protocol", answers.protocol)
    put("host", answers.host)
    put("port", answers.port)
    put("tls", answers.tls)
    put("tls_ca_file", answers.tls_ca_file)
    put("username", answers.username)
    put("auth", answers.auth)
    put("password_command", answers.password_command)
    if answers.oauth2:
        lines.append(f"{inner}oauth2:")
        for key, value in answers.oauth2.items():
            if value is not None:
                lines.append(f"{inner}{step}{key}: {_scalar(value)}")
    put("smtp_host", answers.smtp_host)
    put("smtp_port", answers.smtp_port)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Editing the file
# ---------------------------------------------------------------------------------------------

_HEADER = """\
# syncd configuration (see `syncd --help` and the README).
# general:
#   maildir_root: ~/Mail
accounts:
"""


def _accounts_insertion(text: str) -> tuple[int, str, bool]:
    """(line index to insert before, indentation of account keys, whether an ``accounts:``
    line must be written first). An empty ``accounts: {}`` / ``accounts: ~`` is first turned
    into a bare ``accounts:`` line by the caller (see ``_bare_accounts``)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot add an account: the file is not valid YAML ({exc})") from None
    lines = text.splitlines()
    if node is None:
        return len(lines), "  ", True
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("cannot add an account: the top level of the file is not a mapping")
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) != "accounts":
            continue
        key_line = key_node.start_mark.line
        if isinstance(value_node, yaml.ScalarNode) and value_node.value == "":
            return key_line + 1, "  ", False
        if not isinstance(value_node, yaml.MappingNode) or value_node.flow_style:
            raise ConfigError("cannot add an account: 'accounts' is not a block mapping; "
                              "add the account by hand", key="accounts", line=key_line + 1)
        if not value_node.value:
            return key_line + 1, "  ", False
        indent = " " * value_node.value[0][0].start_mark.column
        # The block ends at the next line indented less than its keys; its last indented
        # (non-blank) line is where the new account goes after. Comments at column 0 after
        # it belong to what follows, so they stay below the new account.
        last = key_line
        for index in range(key_line + 1, len(lines)):
            line = lines[index]
            stripped = line.strip()
            if not stripped:
                continue
            width = len(line) - len(line.lstrip(" "))
            if width < len(indent):
                if stripped.startswith("#"):
                    continue
                break
            last = index
        return last + 1, indent, False
    return len(lines), "  ", True


def _bare_accounts(text: str) -> str:
    """``accounts: {}`` or ``accounts: ~`` (no accounts yet) -> ``accounts:``."""
    return re.sub(r"(?m)^accounts:[ \t]*(?:\{[ \t]*\}|~|null)[ \t]*(#.*)?$", r"accounts:", text)


def add_account(path: Path, answers: AccountAnswers) -> Settings:
    """Insert the account into the config at ``path`` (created if missing); validate; write
    atomically. Returns the validated settings."""
    if not ACCOUNT_NAME_RE.match(answers.name):
        raise UsageError(f"invalid account name {answers.name!r}: use 1-64 letters, digits, "
                         f"'.', '_' or '-', starting with a letter or digit")
    try:
        original = path.read_text(encoding="utf-8")
        exists = True
    except FileNotFoundError:
        original, exists = "", False
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None
    if original.strip():
        try:
            current = parse_config(original, str(path))
        except ConfigError as exc:
            if "no accounts configured" not in str(exc) and "no 'accounts'" not in str(exc):
                raise ConfigError(str(exc).removeprefix("config error: ") +
                                  "; fix it before adding an account") from None
        else:
            if answers.name in current.accounts:
                raise UsageError(f"account {answers.name!r} is already in {path}; choose "
                                 f"another name with --name")
    text = with_account(original, lambda indent: account_block(answers, indent))
    try:
        settings = parse_config(text, "<new config>")
    except ConfigError as exc:
        raise ConfigError(f"the account was not added: {str(exc).removeprefix('config error: ')}"
                          ) from None
    settings = parse_config(text, str(path))  # again, to resolve relative paths against it
    _write_atomically(path, text, exists)
    return settings


def with_account(text: str, block: Callable[[str], str]) -> str:
    """Config ``text`` with one more account under ``accounts:``, indented as the file's
    accounts are (a new file starts with the header); ``block(indent)`` writes the account.
    Comments and everything else in the file stay as they are."""
    if not text.strip():
        return _HEADER + block("  ")
    text = _bare_accounts(text)
    index, indent, needs_key = _accounts_insertion(text)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines[index:index] = [("accounts:\n" if needs_key else "") + block(indent)]
    return "".join(lines)


def _write_atomically(path: Path, text: str, exists: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = (path.stat().st_mode & 0o7777) if exists else 0o600
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def apply_discovery(answers: AccountAnswers, *, network: bool,
                    say: Callable[[str], None]) -> None:
    """Find the servers of ``answers.email`` (syncd/config/discover.py) and fill what the
    user has not given, saying where each value came from. Runs as soon as the address is
    known: from the command line, or typed at the prompt (then the questions that follow
    offer what was found instead of guesses)."""
    from syncd.config.discover import discover

    found = discover(answers.email, network=network)
    say(f"servers for {answers.email}:")
    for line in found.lines():
        say(line)
    if found.preset is not None:
        answers.provider = found.preset.name
        return
    server = found.servers.get(answers.protocol)
    if server is not None:
        answers.host, answers.port, answers.tls = server.host, server.port, server.tls
        answers.username = answers.username or server.username
    smtp = found.servers.get("smtp")
    if smtp is not None and answers.smtp_host is None:
        answers.smtp_host, answers.smtp_port = smtp.host, smtp.port
    if server is None:
        say(f"  no {answers.protocol.upper()} server found: guessing from the domain")


def ask(answers: AccountAnswers, prompt: Callable[[str], str],
        say: Callable[[str], None],
        on_email: Callable[[AccountAnswers], None] | None = None) -> AccountAnswers:
    """Ask for what is still open (prompt returns the typed line; empty = the default).
    ``on_email`` runs once an address typed at the prompt is known (discovery), before the
    questions its answers may settle."""

    def question(text: str, default: str | None = None,
                 check: Callable[[str], str | None] | None = None) -> str:
        while True:
            shown = f"{text} [{default}]: " if default else f"{text}: "
            value = prompt(shown).strip() or (default or "")
            problem = check(value) if check else (None if value else "an answer is needed")
            if problem is None:
                return value
            say(f"  {problem}")

    if not answers.email:
        answers.email = question("Email address", check=lambda v: None if "@" in v
                                 else "that is not an email address")
        if on_email is not None and answers.provider is None and answers.host is None:
            on_email(answers)
    if not answers.name:
        answers.name = question("Account name (for syncd commands and the maildir)",
                                default_name(answers.email),
                                lambda v: None if ACCOUNT_NAME_RE.match(v) else
                                "letters, digits, '.', '_' or '-' only")
    if answers.provider is None and answers.host is None:
        guess = preset_for_address(answers.email)
        choices = ", ".join(ACCOUNT_PRESETS)
        value = question(f"Provider ({choices}, or 'other')",
                         guess.name if guess else "other",
                         lambda v: None if v.lower() in (*ACCOUNT_PRESETS, "other")
                         else f"one of {choices}, or other")
        if value.lower() != "other":
            answers.provider = value.lower()
    answers.protocol = question("Protocol (imap or pop3)", answers.protocol,
                                lambda v: None if v in ("imap", "pop3") else "imap or pop3")
    answers.username = question("Username", answers.username or answers.email)
    if answers.provider is None and answers.host is None:
        guessed = guess_servers(answers.email)
        answers.host = question(f"{answers.protocol.upper()} server",
                                guessed[answers.protocol].host)
        answers.smtp_host = answers.smtp_host or question("SMTP server (for mutt-config)",
                                                          guessed["smtp"].host)
    preset = ACCOUNT_PRESETS.get(answers.provider or "")
    auth = answers.auth or (preset.auth if preset else "password")
    if preset is not None and preset.note:
        say(f"Note: {preset.note}")
    if auth == "oauth2" and not answers.oauth2.get("client_id"):
        value = question("OAuth2 application (client) ID, or 'password' to use an app "
                         "password instead")
        if value.lower() == "password":
            answers.auth = "password"
        else:
            answers.oauth2["client_id"] = value
            if preset is not None and preset.oauth2_provider == "google":
                answers.oauth2["client_secret"] = question("OAuth2 client secret")
    return answers
