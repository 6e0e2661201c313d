"""The config schema and the settings every other module works with: plain immutable records
(NamedTuples: a frozen dataclass costs ~1 ms to create at import, see syncd.core.model), and the
default paths.

Each key is declared once, here: its name, type and default as a record field, and how the YAML
is read beyond the type as ``Annotated`` metadata (the small pydantic-free markers below). From
these, syncd.config.load derives its pydantic models (validation, with errors that name key and
line) and syncd.config.cache its JSON (de)serialisation, so a new key is one line in a record
(plus the README's key table); only a rule between keys needs code in syncd.config.load.

How a field's type is read from YAML unless a marker says otherwise: ``str`` is non-empty text,
``int`` a whole number (not a boolean), ``Path`` a path (``~`` and ``$VARS`` expanded, relative
to the config file), ``tuple[str, ...]`` a list of non-empty text (one string is a list of one),
``Literal`` one of the values, a record a mapping of its keys. A ``float`` must say how it is
read (DURATION), because the config has no plain fractional numbers.
"""

import functools
import logging
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

__all__ = [
    "DURATION",
    "HOST",
    "IMAP_ONLY",
    "INTERNAL",
    "LOWER",
    "POP3_ONLY",
    "SECRET",
    "SIZE",
    "URL",
    "VERBATIM",
    "YES_NO_CHOICE",
    "AccountSettings",
    "Check",
    "Default",
    "FieldSpec",
    "FolderFilter",
    "FolderSettings",
    "GeneralSettings",
    "OAuth2Settings",
    "Range",
    "Settings",
    "SmtpSettings",
    "YamlKey",
    "default_cache_dir",
    "default_config_path",
    "default_maildir_root",
    "default_state_dir",
    "field_specs",
    "secret_keys",
    "secret_values",
]

log = logging.getLogger("syncd.config.load")

# ---------------------------------------------------------------------------------------------
# Defaults (read from the environment at call time so that tests and SIGHUP reloads see changes)
# ---------------------------------------------------------------------------------------------


def _xdg_dir(variable: str, fallback: str) -> Path:
    # The XDG base directory spec says relative values must be ignored. We use the XDG variables
    # directly rather than platformdirs so that the paths are the documented ones on every OS.
    value = os.environ.get(variable, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path(os.path.expanduser(fallback))


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/syncd/config.yaml`` (``~/.config/syncd/config.yaml``)."""
    return _xdg_dir("XDG_CONFIG_HOME", "~/.config") / "syncd" / "config.yaml"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/syncd`` (``~/.local/state/syncd``)."""
    return _xdg_dir("XDG_STATE_HOME", "~/.local/state") / "syncd"


def default_maildir_root() -> Path:
    return Path(os.path.expanduser("~/Mail"))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/syncd`` (``~/.cache/syncd``)."""
    return _xdg_dir("XDG_CACHE_HOME", "~/.cache") / "syncd"


# ---------------------------------------------------------------------------------------------
# How a key is read beyond its type: markers for Annotated[...], read by syncd.config.load
# ---------------------------------------------------------------------------------------------


class Check(NamedTuple):
    """A named rule on a field; syncd.config.load maps each to a validator."""

    name: str


# Fields not typed by users: filled in by the loader (rejected as unknown in a config file).
INTERNAL = Check("internal")
# Any text, even empty (no "must not be empty" check).
VERBATIM = Check("verbatim")
# A bare host name, not a URL.
HOST = Check("host")
# An https:// URL (plain http only on loopback: tokens travel in these requests).
URL = Check("url")
# A choice read case-insensitively ("Gmail" is "gmail").
LOWER = Check("lower")
# A choice where YAML's yes/no (true/false) mean always/never.
YES_NO_CHOICE = Check("yes-no-choice")
# A float in seconds, written as 30s, 5m, 1h, 14d or a number of seconds.
DURATION = Check("duration")
# An int in bytes, written as 25MB, 10k, 1GiB or a number of bytes.
SIZE = Check("size")
# May hold a secret or say where one is (a password_command's text): never written to the
# config cache (syncd.config.cache), and its presence in a file others can read is warned about.
SECRET = Check("secret")
# Keys that only mean something for one protocol: an error on an account of the other.
IMAP_ONLY = Check("imap-only")
POP3_ONLY = Check("pop3-only")


class Range(NamedTuple):
    """Bounds on a number (pydantic's ge/le/gt)."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None


class YamlKey(NamedTuple):
    """The key in the YAML when it is not the field's name ("from" is a Python keyword)."""

    key: str


class Default(NamedTuple):
    """The default when the key is absent from the YAML, for a field the record requires (a
    path computed from the environment at load time)."""

    factory: Callable[[], Any]


# ---------------------------------------------------------------------------------------------
# The settings (the schema: the README documents every key)
# ---------------------------------------------------------------------------------------------


class FolderFilter(NamedTuple):
    """Glob patterns on server folder names: a folder is synced if it matches an include
    pattern and no exclude pattern. A pattern also matches the name without the personal
    namespace prefix (core.folders.folder_selected)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


Direction = Literal["both", "pull", "push"]
DeletePolicy = Literal["both", "pull", "push", "none"]
CreateFolders = Literal["both", "server", "local", "none"]


class FolderSettings(NamedTuple):
    """One entry of an account's ``folder_settings`` (README, "Partial mirrors"): the sync
    policy keys for the folders its glob matches; an absent key is the account's."""

    direction: Direction | None = None
    delete: DeletePolicy | None = None
    create_folders: CreateFolders | None = None
    max_age: Annotated[float | None, DURATION, Range(gt=0)] = None
    max_messages: Annotated[int | None, Range(ge=1)] = None
    # Bigger messages are mirrored as placeholders (README, "Partial mirrors"); with
    # fetch_flagged a placeholder flagged F is replaced by the full message.
    max_size: Annotated[int | None, SIZE, Range(ge=1)] = None
    fetch_flagged: bool | None = None

    @property
    def fingerprint(self) -> str | None:
        """The keys that leave messages out of the state or change what a sync must fetch, as
        text the state keeps with the server's count (a changed window or max_size must be
        looked at); None for the default policy."""
        if (self.direction in (None, "both") and self.delete in (None, "both")
                and self.max_age is None and self.max_messages is None
                and self.max_size is None and not self.fetch_flagged):
            return None
        text = f"{self.direction} {self.delete} {self.max_age} {self.max_messages}"
        if self.max_size is not None or self.fetch_flagged:
            # Only then: a policy without them keeps the fingerprint it had before they
            # existed (no folder looked at again after an upgrade).
            text += f" {self.max_size} {bool(self.fetch_flagged)}"
        return text


class GeneralSettings(NamedTuple):
    maildir_root: Annotated[Path, Default(default_maildir_root)]
    state_dir: Annotated[Path, Default(default_state_dir)]
    log_level: Annotated[Literal["debug", "info", "warning", "error"], LOWER] = "info"
    on_new_mail: str | None = None


class OAuth2Settings(NamedTuple):
    """``oauth2:`` of an account. Endpoints and scopes default to the provider preset
    (``syncd.config.presets.OAUTH2_PROVIDERS``); ``custom`` takes every endpoint from here."""

    provider: Annotated[Literal["microsoft", "google", "custom"], LOWER]
    client_id: str
    client_secret: Annotated[str | None, SECRET] = None
    tenant: str | None = None
    scopes: tuple[str, ...] | None = None
    token_endpoint: Annotated[str | None, URL] = None
    device_authorization_endpoint: Annotated[str | None, URL] = None
    authorization_endpoint: Annotated[str | None, URL] = None


class SmtpSettings(NamedTuple):
    """``smtp:`` of an account (the outbox sends through it). Unset keys fall back to the
    account's: username, tls_ca_file and the credentials (password_command / keyring /
    OAuth2). syncd.config.load fills port and tls from each other."""

    host: Annotated[str, HOST]
    port: Annotated[int, Range(ge=1, le=65535)]
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    username: str | None = None
    tls_ca_file: Path | None = None
    password_command: Annotated[str | None, SECRET] = None


class AccountSettings(NamedTuple):
    """One account. ``name`` (its key under ``accounts``) and ``state_dir`` (from ``general``)
    are filled in by the loader; a ``provider`` preset fills protocol, host, port, tls, auth and
    the SMTP server (syncd.config.presets), explicit keys override it."""

    name: Annotated[str, INTERNAL, VERBATIM]
    protocol: Literal["imap", "pop3"]
    host: Annotated[str, HOST]
    port: Annotated[int, Range(ge=1, le=65535)]
    username: str
    maildir: Path
    poll_interval: Annotated[float, DURATION, Range(gt=0)]
    state_dir: Annotated[Path, INTERNAL, Default(default_state_dir)]
    provider: Annotated[Literal["outlook", "office365", "gmail", "fastmail", "icloud", "yahoo"]
                        | None, LOWER] = None
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    tls_ca_file: Path | None = None
    allow_insecure: bool = False
    auth: Annotated[Literal["password", "oauth2"], LOWER] = "password"
    password_command: Annotated[str | None, SECRET] = None
    oauth2: OAuth2Settings | None = None
    # The older spelling of smtp.host / smtp.port; they mirror smtp (syncd.config.load).
    smtp_host: Annotated[str | None, HOST] = None
    smtp_port: Annotated[int | None, Range(ge=1, le=65535)] = None
    layout: Literal["verbatim", "maildir++"] = "verbatim"
    folders: Annotated[FolderFilter, IMAP_ONLY] = FolderFilter()
    idle: Annotated[tuple[str, ...], IMAP_ONLY] = ("INBOX",)
    trash_folder: Annotated[str | None, IMAP_ONLY] = None
    # The sync policy (README, "Partial mirrors"); folder_settings overrides it per folder,
    # the first glob matching a folder's name (as include/exclude match) wins.
    direction: Annotated[Direction, IMAP_ONLY] = "both"
    delete: Annotated[DeletePolicy, IMAP_ONLY] = "both"
    create_folders: Annotated[CreateFolders, IMAP_ONLY] = "both"
    # The window (README, "Partial mirrors"): only messages whose INTERNALDATE is newer than
    # this (seconds; the window slides daily), and only the newest N of each folder.
    max_age: Annotated[float | None, DURATION, Range(gt=0), IMAP_ONLY] = None
    max_messages: Annotated[int | None, Range(ge=1), IMAP_ONLY] = None
    # Messages bigger than this (RFC822.SIZE) are mirrored as placeholders: their headers and
    # a short body saying how to get them (`syncd fetch`); fetch_flagged replaces the ones
    # flagged F by the full message at the next sync.
    max_size: Annotated[int | None, SIZE, Range(ge=1), IMAP_ONLY] = None
    fetch_flagged: Annotated[bool, IMAP_ONLY] = False
    folder_settings: Annotated[dict[str, FolderSettings], IMAP_ONLY] = {}  # noqa: RUF012
    timeout: Annotated[float, DURATION, Range(gt=0)] = 60.0
    connections: Annotated[int, Range(ge=1, le=8)] = 3
    leave_on_server: Annotated[bool, POP3_ONLY] = False
    delete_after: Annotated[float | None, DURATION, POP3_ONLY] = None
    max_message_size: Annotated[int | None, SIZE, Range(ge=1), POP3_ONLY] = None
    max_messages_per_poll: Annotated[int | None, Range(ge=1), POP3_ONLY] = None
    # The outbox (README, "Sending mail"): addresses this account sends as (globs; default:
    # the username if it is an address), where it sends, and the Sent copy.
    from_addresses: Annotated[tuple[str, ...], YamlKey("from")] = ()
    smtp: SmtpSettings | None = None
    save_sent: Annotated[Literal["auto", "always", "never"], YES_NO_CHOICE] = "auto"
    sent_folder: str | None = None
    send_now: bool = False

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"{self.name}.sqlite3"

    def folder_policy(self, matches: Callable[[str], bool]) -> FolderSettings:
        """The policy keys for one folder, every one filled: the first ``folder_settings``
        entry whose glob ``matches`` (core.folders.glob_matcher) overrides the account's."""
        mine = FolderSettings(self.direction, self.delete, self.create_folders, self.max_age,
                              self.max_messages, self.max_size, self.fetch_flagged)
        for pattern, override in self.folder_settings.items():
            if matches(pattern):
                return FolderSettings(*(theirs if theirs is not None else ours
                                        for theirs, ours in zip(override, mine, strict=True)))
        return mine


class Settings(NamedTuple):
    general: GeneralSettings
    accounts: dict[str, AccountSettings]
    path: Path | None = None


# ---------------------------------------------------------------------------------------------
# Reading the schema (for syncd.config.load and syncd.config.cache)
# ---------------------------------------------------------------------------------------------

REQUIRED: Any = object()  # FieldSpec.default of a field the record requires


class FieldSpec(NamedTuple):
    """One field of a record, its annotation taken apart."""

    name: str
    key: str  # in the YAML
    type: Any  # without Annotated metadata and without None
    optional: bool  # None is allowed
    marks: tuple[Any, ...]  # the Annotated metadata: Check, Range, YamlKey, Default
    default: Any  # the record's, or REQUIRED

    def has(self, check: Check) -> bool:
        return check in self.marks


@functools.cache
def field_specs(record: type[tuple[Any, ...]]) -> tuple[FieldSpec, ...]:
    """The fields of one of the records above, in order."""
    specs = []
    defaults: dict[str, Any] = getattr(record, "_field_defaults", {})
    for name, annotation in record.__annotations__.items():
        tp, marks = _unannotate(annotation)
        tp, optional = _without_none(tp)
        key = next((m.key for m in marks if isinstance(m, YamlKey)), name)
        specs.append(FieldSpec(name, key, tp, optional, marks, defaults.get(name, REQUIRED)))
    return tuple(specs)


def _unannotate(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    marks: tuple[Any, ...] = ()
    while typing.get_origin(annotation) is Annotated:
        marks += annotation.__metadata__
        annotation = annotation.__origin__
    return annotation, marks


def _without_none(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp, False
    args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    if len(args) != 1:
        raise TypeError(f"the config schema has no unions but X | None: {tp}")
    return args[0], True


def secret_keys(record: type[tuple[Any, ...]]) -> frozenset[str]:
    """The fields of ``record`` marked SECRET."""
    return frozenset(spec.name for spec in field_specs(record) if spec.has(SECRET))


def secret_values(value: Any, loc: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Where ``value`` (Settings or any record in it) holds a SECRET field's text, and that
    text, in field order."""
    found: list[tuple[tuple[str, ...], str]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            found += secret_values(item, (*loc, name))
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for spec in field_specs(type(value)):
            item = getattr(value, spec.name)
            if spec.has(SECRET) and item is not None:
                found.append(((*loc, spec.key), item))
            elif isinstance(item, dict | tuple):
                found += secret_values(item, (*loc, spec.key))
    return found


def warn_if_readable_by_others(path: Path, settings: Settings) -> None:
    """A config that holds secrets (an OAuth2 client_secret) or says how to get them (a
    password_command) should not be readable by other users (fault suite, security)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & 0o044:
        return
    keys = [".".join(loc) for loc, _ in secret_values(settings)]
    if keys:
        log.warning("%s is readable by other users (mode %03o) and contains %s: run chmod 600 "
                    "%s", path, mode & 0o777, ", ".join(keys), path)
