"""The cache of validated config files: `load_settings()`, what every command calls.

Importing pydantic and PyYAML and building the models (syncd.config.load) takes ~0.25 s, most
of a no-change sync, so the result of the last validation of each config file is kept under
``$XDG_CACHE_HOME/syncd/`` and used while the file, the environment the file refers to and
syncd's own validation code are unchanged. Anything unexpected about the cache means a full
validation; a cache can make loading faster, never different.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from syncd.config.settings import (
    AccountSettings,
    FolderFilter,
    GeneralSettings,
    OAuth2Settings,
    Settings,
    SmtpSettings,
    default_cache_dir,
    default_config_path,
    warn_if_readable_by_others,
)

__all__ = ["load_settings"]

log = logging.getLogger("syncd.config")


CACHE_FORMAT = 1
_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# What validation reads besides the file: ~ and the XDG defaults, and relative paths.
_ENV_READ = ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
# syncd's own code that decides what a config file means.
_VALIDATION_CODE = ("load.py", "presets.py", "settings.py", "cache.py")


def load_settings(path: Path | str | None = None, *, cache_dir: Path | None = None
                  ) -> Settings:
    """The validated settings of a config file (default: ``default_config_path()``): from the
    cache when it holds this very file's validation, else from syncd.config.load.load_config (which
    raises ConfigError with key and line), then cached."""
    path = Path(path).expanduser() if path is not None else default_config_path()
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    key = _cache_key(path)
    where = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:24]
    entry = cache_dir / f"config-{where}.json"
    if key is not None:
        settings = _read_cache(entry, key)
        if settings is not None:
            warn_if_readable_by_others(path, settings)
            return settings
    from syncd.config.load import load_config

    settings = load_config(path)
    if key is not None:
        _write_cache(entry, key, settings)
    return settings


def _cache_key(path: Path) -> str | None:
    """A digest of everything the validation result depends on, or None when the file cannot
    be read (load_config then reports why)."""
    try:
        st = path.stat()
        text = path.read_bytes()
    except OSError:
        return None
    # The file's contents (not only its mtime: an edit within one timestamp tick must count).
    parts: list[object] = [CACHE_FORMAT, os.path.abspath(path), hashlib.sha256(text).hexdigest(),
                           st.st_mtime_ns, st.st_size]
    here = Path(__file__).parent
    for name in _VALIDATION_CODE:
        try:
            code = (here / name).stat()
        except OSError:
            return None
        parts.append((name, code.st_mtime_ns, code.st_size))
    names = set(_ENV_READ)
    for braced, plain in _VAR_RE.findall(text.decode("utf-8", "replace")):
        names.add(braced or plain)
    parts.append(sorted((name, os.environ.get(name)) for name in names))
    from syncd import __version__

    parts.append(__version__)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _read_cache(entry: Path, key: str) -> Settings | None:
    try:
        with open(entry, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                return None  # only ever trust our own file
            data = json.load(f)
        if data.get("key") != key:
            return None
        return _settings_from(data["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(entry: Path, key: str, settings: Settings) -> None:
    # The cache holds what the config holds (a password_command, an OAuth2 client_secret):
    # private directory and file. Failing to write it (a read-only home under the systemd unit's
    # ProtectHome) only costs the next start its speed.
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "settings": _plain(settings)}, f)
        os.replace(tmp, entry)
    except OSError as exc:
        log.debug("config cache not written (%s): %s", entry, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # one of the records above
        return {name: _plain(getattr(value, name)) for name in value._fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _settings_from(data: dict[str, Any]) -> Settings:
    general = data["general"]
    return Settings(
        general=GeneralSettings(
            maildir_root=Path(general["maildir_root"]), state_dir=Path(general["state_dir"]),
            log_level=general["log_level"], on_new_mail=general["on_new_mail"]),
        accounts={name: _account_from(raw) for name, raw in data["accounts"].items()},
        path=Path(data["path"]) if data["path"] is not None else None)


_PATH_FIELDS = frozenset({"maildir", "tls_ca_file", "state_dir"})
_TUPLE_FIELDS = frozenset({"idle", "from_addresses"})


def _account_from(raw: dict[str, Any]) -> AccountSettings:
    values: dict[str, Any] = {}
    for name in AccountSettings._fields:
        value = raw[name]  # a missing key (another format) is a KeyError: not used
        if value is not None and name in _PATH_FIELDS:
            value = Path(value)
        elif name in _TUPLE_FIELDS:
            value = tuple(value)
        elif name == "folders":
            value = FolderFilter(include=tuple(value["include"]),
                                 exclude=tuple(value["exclude"]))
        elif name == "oauth2" and value is not None:
            oauth = dict(value)
            if oauth["scopes"] is not None:
                oauth["scopes"] = tuple(oauth["scopes"])
            value = OAuth2Settings(**oauth)
        elif name == "smtp" and value is not None:
            smtp = dict(value)
            if smtp["tls_ca_file"] is not None:
                smtp["tls_ca_file"] = Path(smtp["tls_ca_file"])
            value = SmtpSettings(**smtp)
        values[name] = value
    return AccountSettings(**values)
