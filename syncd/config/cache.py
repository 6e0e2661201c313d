"""The cache of validated config files: `load_settings()`, what every command calls.

Importing pydantic and PyYAML and building the models (syncd.config.load) takes ~0.25 s, most
of a no-change sync, so the result of the last validation of each config file is kept under
``$XDG_CACHE_HOME/syncd/`` and used while the file, the environment the file refers to and
syncd's own validation code are unchanged. Anything unexpected about the cache means a full
validation; a cache can make loading faster, never different.

The JSON is written and read generically from the records' fields (syncd.config.settings, the
one schema): a field's type says what becomes a Path, a tuple or a record.

No secret in the cache: a field marked SECRET (password_command, an OAuth2 client_secret) is
stored as the offsets of its value in the config file, not as its text, and a cache hit slices
the value out of the file it has just read and hashed. The key holds the file's digest, so the
offsets can only be used on the very bytes they were taken from; and an entry is written only
when slicing gives back exactly the validated value (a plain or quoted one-line scalar, the
common case; anything else, e.g. a double-quoted escape, is validated on every start instead).
The other designs cost more: re-reading those keys with PyYAML's C loader on every hit costs
~7 ms of a ~75 ms no-change sync (the import), and not caching accounts with a
password_command at all would slow down the common case to a full validation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.config.settings import (
    SECRET,
    FieldSpec,
    Settings,
    default_cache_dir,
    default_config_path,
    field_specs,
    secret_values,
    warn_if_readable_by_others,
)

if TYPE_CHECKING:
    from syncd.config.load import Located

__all__ = ["load_settings"]

log = logging.getLogger("syncd.config")


CACHE_FORMAT = 2  # 2: secrets as offsets into the file
_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# What validation reads besides the file: ~ and the XDG defaults, and relative paths.
_ENV_READ = ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
# syncd's own code that decides what a config file means.
_VALIDATION_CODE = ("load.py", "presets.py", "settings.py", "cache.py")


def load_settings(path: Path | str | None = None, *, cache_dir: Path | None = None
                  ) -> Settings:
    """The validated settings of a config file (default: ``default_config_path()``): from the
    cache when it holds this very file's validation, else from syncd.config.load (which raises
    ConfigError with key and line), then cached."""
    path = Path(path).expanduser() if path is not None else default_config_path()
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    where = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:24]
    entry = cache_dir / f"config-{where}.json"
    data = _read(path)
    if data is None:  # load_config reports why
        from syncd.config.load import load_config

        return load_config(path)
    key = _cache_key(path, *data)
    settings = _read_cache(entry, key, data[0])
    if settings is not None:
        warn_if_readable_by_others(path, settings)
        return settings
    from syncd.config.load import load_located

    located = load_located(path, data[0])
    _write_cache(entry, key, located)
    return located.settings


def _read(path: Path) -> tuple[bytes, os.stat_result] | None:
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except OSError:
        return None


def _cache_key(path: Path, text: bytes, st: os.stat_result) -> str:
    """A digest of everything the validation result depends on."""
    # The file's contents (not only its mtime: an edit within one timestamp tick must count).
    parts: list[object] = [CACHE_FORMAT, os.path.abspath(path), hashlib.sha256(text).hexdigest(),
                           st.st_mtime_ns, st.st_size]
    here = Path(__file__).parent
    for name in _VALIDATION_CODE:
        try:
            code = (here / name).stat()
        except OSError:
            code = None
        parts.append((name, code and code.st_mtime_ns, code and code.st_size))
    names = set(_ENV_READ)
    for braced, plain in _VAR_RE.findall(text.decode("utf-8", "replace")):
        names.add(braced or plain)
    parts.append(sorted((name, os.environ.get(name)) for name in names))
    from syncd import __version__

    parts.append(__version__)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _read_cache(entry: Path, key: str, data: bytes) -> Settings | None:
    try:
        with open(entry, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                return None  # only ever trust our own file
            cached = json.load(f)
        if cached.get("key") != key:
            return None
        return _record_from(Settings, cached["settings"], data.decode("utf-8-sig"))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _write_cache(entry: Path, key: str, located: Located) -> None:
    # Private directory and file all the same (the cache says which accounts and servers one
    # has). Failing to write it (a read-only home under the systemd unit's ProtectHome) only
    # costs the next start its speed.
    spans = _secret_spans(located)
    if spans is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "settings": _plain(located.settings, spans)}, f)
        os.replace(tmp, entry)
    except OSError as exc:
        log.debug("config cache not written (%s): %s", entry, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


Loc = tuple[str, ...]


def _secret_spans(located: Located) -> dict[Loc, list[int]] | None:
    """Where each secret value is in the file, or None (nothing is cached) when one cannot be
    sliced back out exactly."""
    spans: dict[Loc, list[int]] = {}
    for loc, value in secret_values(located.settings):
        span = located.spans.get(loc)
        if span is None or _scalar_at(located.text, span) != value:
            log.debug("config not cached: %s is not a one-line scalar", ".".join(loc))
            return None
        spans[loc] = list(span)
    return spans


def _scalar_at(text: str, span: list[int] | tuple[int, int]) -> str | None:
    """The value of the one-line YAML scalar at ``span`` in ``text``: plain, 'single' or
    "double-quoted" without escapes; None for any other form."""
    start, end = span
    raw = text[start:end]
    if not raw or "\n" in raw or "\r" in raw:
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return None if "\\" in raw else raw[1:-1]
    return None if raw[0] in "'\"|>" else raw


def _plain(value: Any, secrets: dict[Loc, list[int]], loc: Loc = ()) -> Any:
    """``value`` as JSON data, each secret replaced by its offsets."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # one of the records
        out = {}
        for spec in field_specs(type(value)):
            here = (*loc, spec.key)
            item = getattr(value, spec.name)
            out[spec.name] = (secrets[here] if spec.has(SECRET) and item is not None
                              else _plain(item, secrets, here))
        return out
    if isinstance(value, dict):
        return {k: _plain(v, secrets, (*loc, k)) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v, secrets, loc) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _record_from(record: type[Any], data: dict[str, Any], text: str) -> Any:
    # A field missing from the entry (another format) is a KeyError: not used.
    return record(**{spec.name: _value_from(spec, spec.type, data[spec.name], text)
                     for spec in field_specs(record)})


def _value_from(spec: FieldSpec, tp: Any, raw: Any, text: str) -> Any:
    """The value of type ``tp`` that _plain wrote as ``raw``."""
    if raw is None:
        if not spec.optional:
            raise TypeError(f"{spec.name} is not optional")
        return None
    if spec.has(SECRET):
        value = _scalar_at(text, raw)
        if value is None:
            raise ValueError(f"{spec.name}: no value at {raw}")
        return value
    if tp is Path:
        return Path(raw)
    if hasattr(tp, "_fields"):
        return _record_from(tp, raw, text)
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return tuple(_value_from(spec, item, v, text) for v in raw)
    if origin is dict:
        item = typing.get_args(tp)[1]
        return {k: _value_from(spec, item, v, text) for k, v in raw.items()}
    return raw
