"""The settings every other module works with: plain immutable records (NamedTuples: a frozen
dataclass costs ~1 ms to create at import, see syncd.core.model), and the default paths.

syncd.config.load turns the YAML into these (with pydantic, and errors that name key and line);
syncd.config.cache keeps the result so that a quick `syncd sync` does not pay for validating.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "AccountSettings",
    "FolderFilter",
    "GeneralSettings",
    "OAuth2Settings",
    "Settings",
    "SmtpSettings",
    "default_cache_dir",
    "default_config_path",
    "default_maildir_root",
    "default_state_dir",
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
# The settings
# ---------------------------------------------------------------------------------------------


class FolderFilter(NamedTuple):
    """Glob patterns on server folder names: a folder is synced if it matches an include
    pattern and no exclude pattern. A pattern also matches the name without the personal
    namespace prefix (core.folders.folder_selected)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


class GeneralSettings(NamedTuple):
    maildir_root: Path
    state_dir: Path
    log_level: str = "info"
    on_new_mail: str | None = None


class OAuth2Settings(NamedTuple):
    """``oauth2:`` of an account. Endpoints and scopes default to the provider preset
    (``syncd.config.presets.OAUTH2_PROVIDERS``); ``custom`` takes every endpoint from here."""

    provider: str
    client_id: str
    client_secret: str | None = None
    tenant: str | None = None
    scopes: tuple[str, ...] | None = None
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    authorization_endpoint: str | None = None


class SmtpSettings(NamedTuple):
    """``smtp:`` of an account (the outbox sends through it). Unset keys fall back to the
    account's: username, tls_ca_file and the credentials (password_command / keyring /
    OAuth2)."""

    host: str
    port: int
    tls: str = "implicit"
    username: str | None = None
    tls_ca_file: Path | None = None
    password_command: str | None = None


class AccountSettings(NamedTuple):
    """One account, as validated by syncd.config.load (which documents every key)."""

    name: str
    protocol: str
    host: str
    port: int
    username: str
    maildir: Path
    poll_interval: float
    state_dir: Path
    provider: str | None = None
    tls: str = "implicit"
    tls_ca_file: Path | None = None
    allow_insecure: bool = False
    auth: str = "password"
    password_command: str | None = None
    oauth2: OAuth2Settings | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    layout: str = "verbatim"
    folders: FolderFilter = FolderFilter()
    idle: tuple[str, ...] = ("INBOX",)
    trash_folder: str | None = None
    timeout: float = 60.0
    connections: int = 3
    leave_on_server: bool = False
    delete_after: float | None = None
    max_message_size: int | None = None
    max_messages_per_poll: int | None = None
    # The outbox (README, "Sending mail"): `from` is from_addresses (addresses and globs).
    from_addresses: tuple[str, ...] = ()
    smtp: SmtpSettings | None = None
    save_sent: str = "auto"
    sent_folder: str | None = None
    send_now: bool = False

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"{self.name}.sqlite3"


class Settings(NamedTuple):
    general: GeneralSettings
    accounts: dict[str, AccountSettings]
    path: Path | None = None


def warn_if_readable_by_others(path: Path, settings: Settings) -> None:
    """A config that holds secrets (an OAuth2 client_secret) or says how to get them (a
    password_command) should not be readable by other users (fault suite, security)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & 0o044:
        return
    keys = [f"accounts.{name}.{key}" for name, account in settings.accounts.items()
            for key, present in (("password_command", account.password_command is not None),
                                 ("oauth2.client_secret", account.oauth2 is not None
                                  and account.oauth2.client_secret is not None))
            if present]
    if keys:
        log.warning("%s is readable by other users (mode %03o) and contains %s: run chmod 600 "
                    "%s", path, mode & 0o777, ", ".join(keys), path)
