"""YAML configuration -> validated, frozen settings.

The schema is the user contract the README documents key by key, declared once in
syncd.config.settings: its records' fields (name, type, default) and Annotated markers. This
module derives the pydantic models from them (``_derive``) and keeps only what relates keys to
each other (presets, SMTP defaults, protocol-only keys, shared maildirs) in the models' rules.
The YAML is composed by hand first so that every key and list item keeps its line number: a
pydantic error ``loc`` is mapped back to that line, and every ``ConfigError`` names the key as a
dotted path (``accounts.work.tls``) and the line it is on.

No error text ever echoes a value that could be a secret: values are only quoted for keys in
``_ECHO_KEYS`` (choices, numbers, durations), never for hosts, user names or commands."""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from syncd.config.settings import (
    DURATION,
    HOST,
    IMAP_ONLY,
    INTERNAL,
    LOWER,
    POP3_ONLY,
    REQUIRED,
    SIZE,
    URL,
    VERBATIM,
    YES_NO_CHOICE,
    AccountSettings,
    Check,
    Default,
    FieldSpec,
    FolderFilter,
    FolderSettings,
    GeneralSettings,
    OAuth2Settings,
    Range,
    Settings,
    SmtpSettings,
    YamlKey,
    default_config_path,
    default_maildir_root,
    default_state_dir,
    field_specs,
    warn_if_readable_by_others,
)
from syncd.errors import ConfigError

__all__ = [
    "ACCOUNT_NAME_RE",
    "AccountSettings",
    "FolderFilter",
    "GeneralSettings",
    "Located",
    "OAuth2Settings",
    "Settings",
    "build_account",
    "default_config_path",
    "default_maildir_root",
    "default_state_dir",
    "load_config",
    "load_located",
    "parse_config",
    "parse_duration",
    "parse_size",
]

# The account name becomes a file name (<state_dir>/<name>.sqlite3) and a directory name, so it
# must not be able to contain "/" or start with "." (no "..", no hidden files).
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------------------------------------
# Durations and sizes
# ---------------------------------------------------------------------------------------------

_DURATION_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _DURATION_UNITS[_name] = _seconds

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)")


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30s``, ``5m``, ``1h``, ``14d``, ``1h30m``, or a plain number of seconds.

    Raises ValueError (the config layer turns it into a ConfigError naming the key)."""
    # bool is an int subclass; "poll_interval: yes" must not mean one second.
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h or 14d, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError("expected a duration such as 30s, 5m, 1h or 14d, got an empty string")
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_units(text, value)
    else:
        raise ValueError(f"expected a duration such as 30s, 5m, 1h or 14d, "
                         f"not a {_type_name(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def _parse_duration_units(text: str, original: str) -> float:
    compact = text.replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_PART_RE.finditer(compact):
        unit = _DURATION_UNITS.get(match.group(2))
        if match.start() != pos or unit is None:
            break
        total += float(match.group(1)) * unit
        pos = match.end()
    if pos == 0 or pos != len(compact):
        raise ValueError(f"invalid duration {original!r}: use a number of seconds or a number "
                         f"with a unit, e.g. 30s, 5m, 1h, 2d (units: s, m, h, d, w)")
    return total


# SI prefixes are powers of 1000 and IEC "i" prefixes powers of 1024, as their standards say;
# a bare letter (10k, 25M) is read as SI too so that "25M" and "25MB" agree.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgt", start=1):
    _SIZE_UNITS[_letter] = 1000**_i
    _SIZE_UNITS[_letter + "b"] = 1000**_i
    _SIZE_UNITS[_letter + "ib"] = 1024**_i
    _SIZE_UNITS[_letter + "i"] = 1024**_i

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)$")


def parse_size(value: str | int | float) -> int:
    """Bytes from ``25MB``, ``10k``, ``1GiB``, ``512`` (plain numbers are bytes).

    ``k``/``KB``/``M``/``MB``/... are powers of 1000; ``KiB``/``MiB``/``GiB`` powers of 1024.
    Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MB, 10k or 1GiB, not a boolean")
    if isinstance(value, int):
        size = float(value)
    elif isinstance(value, float):
        size = value
    elif isinstance(value, str):
        match = _SIZE_RE.match(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"invalid size {value!r}: use a number of bytes or a number with a "
                             f"unit, e.g. 500k, 25MB, 1GiB")
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a size such as 25MB, 10k or 1GiB, not a {_type_name(value)}")
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"invalid size {value!r}: must be a non-negative number of bytes")
    return int(size)


def _type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------


def _fail(message: str, *loc: str | int) -> PydanticCustomError:
    # "syncd" errors carry a loc relative to where they were raised, so that errors raised in a
    # model validator (whose pydantic loc is the model itself) still point at the right key.
    return PydanticCustomError("syncd", message, {"loc": loc})


def _context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context if isinstance(info.context, Mapping) else {}


_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand_path(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value  # let pydantic report the wrong type
    if not value.strip():
        raise _fail("must be a path, not an empty string")
    # os.path.expandvars leaves unknown variables in place, which would silently create a
    # directory literally called "$MAILHOME"; refuse instead.
    for braced, plain in _VAR_RE.findall(value):
        name = braced or plain
        if name not in os.environ:
            raise _fail(f"environment variable ${name} is not set")
    expanded = os.path.expanduser(os.path.expandvars(value))
    if not os.path.isabs(expanded):
        base = _context(info).get("base_dir") or Path.cwd()
        expanded = os.path.join(base, expanded)
    return Path(os.path.abspath(expanded))


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; "port: yes" or "connections: on" is a mistake.
    if isinstance(value, bool):
        raise _fail("must be a number, not a boolean")
    return value


def _duration(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _size(value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _string_list(value: Any) -> Any:
    # "exclude: Junk" is an obvious shorthand for a one-element list; a tuple of its characters
    # would be a silent disaster.
    if isinstance(value, str):
        return (value,)
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _non_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise _fail("must not be empty")
    return value


def _host(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    host = value.strip()
    if not host:
        raise _fail("must be a host name, not an empty string")
    if "://" in host:
        raise _fail("must be a bare host name such as imap.example.com, not a URL")
    if any(c.isspace() for c in host) or "/" in host:
        raise _fail("must be a bare host name such as imap.example.com")
    return host


ConfigPath = Annotated[Path, BeforeValidator(_expand_path)]
Int = Annotated[int, BeforeValidator(_no_bool)]
Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Text = Annotated[str, BeforeValidator(_non_empty)]
Patterns = Annotated[tuple[Text, ...], BeforeValidator(_string_list)]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _keys(record: type[tuple[Any, ...]], check: Check) -> frozenset[str]:
    """The YAML keys of ``record`` marked ``check``."""
    return frozenset(spec.key for spec in field_specs(record) if spec.has(check))


def _names(record: type[tuple[Any, ...]]) -> frozenset[str]:
    return frozenset(spec.name for spec in field_specs(record))


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown_key_message(key: str, candidates: Iterable[str]) -> str:
    if key in ("password", "pass", "passwd", "secret"):
        return (f"unknown key '{key}': passwords do not go in the config file; use "
                f"password_command, or store it with `syncd password set ACCOUNT`")
    return f"unknown key '{key}'{_suggest(key, candidates)}"


class _Model(BaseModel):
    """The validators of one record of syncd.config.settings; _derive adds its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _record: ClassVar[type[tuple[Any, ...]]]

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping):
            cls._check_keys(data, info)
        return data

    @classmethod
    def _check_keys(cls, data: Mapping[str, Any], info: ValidationInfo) -> None:
        # A key that is a Python word ("from") is a field under another name, with an alias.
        allowed = {f.alias or name for name, f in cls.model_fields.items()}
        if _context(info).get("from_config"):
            # Keys filled in by the loader rather than typed by users: accepted when the model
            # is built directly (tests, other modules), unknown when they come from a file.
            allowed -= _keys(cls._record, INTERNAL)
        for key in data:
            if key not in allowed:
                raise _fail(cls._misplaced(str(key)) or _unknown_key_message(str(key), allowed),
                            key)

    @classmethod
    def _misplaced(cls, key: str) -> str | None:
        """A hint for a real key put at the wrong level, which difflib cannot give."""
        return None


class _FolderFilterRules(_Model):
    _record = FolderFilter


class _FolderSettingsRules(_Model):
    _record = FolderSettings


class _GeneralRules(_Model):
    _record = GeneralSettings

    @classmethod
    def _misplaced(cls, key: str) -> str | None:
        if key in _names(AccountSettings) and key not in _keys(AccountSettings, INTERNAL):
            return (f"'{key}' is a per-account setting and cannot go under general; set it on "
                    f"each account (a YAML anchor and '<<: *name' can share it)")
        return None


def _endpoint_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    url = value.strip()
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise _fail("must be an https:// URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        # Tokens and refresh tokens travel in these requests: plaintext only on this machine.
        raise _fail("must be an https:// URL (plain http is only accepted for 127.0.0.1 / "
                    "localhost)")
    return url


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


EndpointURL = Annotated[str, BeforeValidator(_endpoint_url)]


class _OAuth2Rules(_Model):
    _record = OAuth2Settings

    @model_validator(mode="after")
    def _after(self) -> _OAuth2Rules:
        if self.provider == "custom":
            if self.token_endpoint is None:
                raise _fail("provider custom needs token_endpoint (and "
                            "device_authorization_endpoint and/or authorization_endpoint)",
                            "token_endpoint")
            if self.device_authorization_endpoint is None and self.authorization_endpoint is None:
                raise _fail("provider custom needs device_authorization_endpoint (for the "
                            "device flow) or authorization_endpoint (for the browser flow)",
                            "provider")
            if not self.scopes:
                raise _fail("provider custom needs scopes (the scopes that grant IMAP/POP3 "
                            "access, plus what your provider needs for a refresh token)",
                            "scopes")
        if self.tenant is not None and self.provider != "microsoft":
            raise _fail("tenant only applies to provider microsoft", "tenant")
        if self.scopes is not None and not self.scopes:
            raise _fail("must list at least one scope", "scopes")
        return self


class _SmtpRules(_Model):
    # Defaults of port and tls are filled in by _apply_smtp (each from the other).
    _record = SmtpSettings


def _save_sent(value: Any) -> Any:
    # "save_sent: no" is as natural as "never"; YAML reads it as a boolean.
    if isinstance(value, bool):
        return "always" if value else "never"
    return _lower(value)


def _apply_smtp(data: dict[str, Any]) -> None:
    """One ``smtp`` mapping from ``smtp:``, or from the older ``smtp_host``/``smtp_port``
    (kept working), with the defaults that depend on each other: implicit TLS on 465,
    STARTTLS elsewhere; port 465 for implicit TLS, 587 for STARTTLS. ``smtp_host`` and
    ``smtp_port`` mirror the result (for `syncd mutt-config`)."""
    smtp = data.get("smtp")
    if "smtp_host" in data or "smtp_port" in data:
        if smtp is not None:
            raise _fail("use either smtp (a mapping) or the older smtp_host/smtp_port, not "
                        "both", "smtp_host" if "smtp_host" in data else "smtp_port")
        if "smtp_host" not in data:
            raise _fail("smtp_port needs smtp_host (or use smtp: {host: ..., port: ...})",
                        "smtp_port")
        smtp = {"host": data["smtp_host"]}
        if data.get("smtp_port") is not None:
            smtp["port"] = data["smtp_port"]
    if not isinstance(smtp, Mapping):
        return  # absent (no sending), or not a mapping: the field validator says so
    smtp = dict(smtp)
    port = smtp.get("port")
    if "tls" not in smtp:
        smtp["tls"] = "implicit" if port in (None, 465) else "starttls"
    if port is None:
        smtp["port"] = 465 if smtp["tls"] == "implicit" else 587
    data["smtp"] = smtp
    data["smtp_host"] = smtp.get("host")
    data["smtp_port"] = smtp["port"]


IMAP_ONLY_KEYS = _keys(AccountSettings, IMAP_ONLY)
POP3_ONLY_KEYS = _keys(AccountSettings, POP3_ONLY)

_DEFAULT_PORTS = {("imap", True): 993, ("imap", False): 143, ("pop3", True): 995,
                  ("pop3", False): 110}
_DEFAULT_POLL = {"imap": 300.0, "pop3": 600.0}


def _apply_preset(data: dict[str, Any]) -> None:
    """Fill what ``provider:`` implies, under the keys the user did not set. An unknown
    provider is left for the field validator to report (with the list of presets)."""
    from syncd.config.presets import ACCOUNT_PRESETS

    name = data.get("provider")
    preset = ACCOUNT_PRESETS.get(name.lower()) if isinstance(name, str) else None
    if isinstance(name, str) and preset is None:
        # Reported before anything the preset would have filled in ("missing host").
        raise _fail(f"unknown provider {name[:40]!r} (presets: {', '.join(ACCOUNT_PRESETS)})"
                    f"{_suggest(name.lower(), ACCOUNT_PRESETS)}", "provider")
    if preset is None:
        if "auth" not in data and isinstance(data.get("oauth2"), Mapping):
            data["auth"] = "oauth2"
        return
    protocol = data.setdefault("protocol", "imap")
    server = preset.server(protocol) if protocol in ("imap", "pop3") else None
    if server is None and protocol in ("imap", "pop3") and "host" not in data:
        raise _fail(f"provider {preset.name} ({preset.label}) offers no {protocol.upper()}; "
                    f"use protocol: imap", "protocol")
    if server is not None and "host" not in data:
        data["host"] = server.host
        data.setdefault("tls", server.tls)
        if "port" not in data and data["tls"] == server.tls:
            data["port"] = server.port
    smtp = data.get("smtp")
    if preset.smtp is not None and "smtp_host" not in data and (
            smtp is None or (isinstance(smtp, Mapping) and "host" not in smtp)):
        # The preset's server under the keys the user did not set; the preset's port only
        # with the preset's TLS mode.
        given = dict(smtp or {})
        ours: dict[str, Any] = {"host": preset.smtp.host, "tls": preset.smtp.tls}
        if given.get("tls", preset.smtp.tls) == preset.smtp.tls:
            ours["port"] = preset.smtp.port
        data["smtp"] = {**ours, **given}
    oauth2 = data.get("oauth2")
    if "auth" not in data:
        if preset.auth == "oauth2" and oauth2 is None:
            raise _fail(f"provider {preset.name} signs in with OAuth2: add "
                        f"oauth2: {{client_id: YOUR-APP-ID}} (see the README), or set "
                        f"auth: password if the account has an app password", "provider")
        data["auth"] = "oauth2" if isinstance(oauth2, Mapping) else preset.auth
    if isinstance(oauth2, Mapping) and preset.oauth2_provider is not None:
        oauth2 = dict(oauth2)
        oauth2.setdefault("provider", preset.oauth2_provider)
        if preset.tenant is not None and oauth2.get("provider") == preset.oauth2_provider:
            oauth2.setdefault("tenant", preset.tenant)
        data["oauth2"] = oauth2


class _AccountRules(_Model):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    _record = AccountSettings

    @classmethod
    def _misplaced(cls, key: str) -> str | None:
        if key in _names(GeneralSettings):
            return f"'{key}' is a general setting: move it under general"
        if key == "name":
            return "unknown key 'name': an account's name is its key under accounts"
        return None

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        cls._check_keys(data, info)
        ctx = _context(info)
        data = dict(data)
        _apply_preset(data)
        _apply_smtp(data)
        if ("from" not in data and "from_addresses" not in data
                and isinstance(data.get("username"), str) and "@" in data["username"]):
            data["from"] = (data["username"],)
        protocol = data.get("protocol")
        if protocol in ("imap", "pop3"):
            other, foreign = (("a POP3", POP3_ONLY_KEYS) if protocol == "imap"
                              else ("an IMAP", IMAP_ONLY_KEYS))
            for key in data:
                if key in foreign:
                    raise _fail(f"'{key}' is {other} option, but this account uses "
                                f"protocol {protocol}", key)
        for key in ("name", "state_dir"):
            if key not in data and key in ctx:
                data[key] = ctx[key]
        # Defaults that depend on other keys. An invalid protocol or tls still gets a value here
        # so that the error reported is the invalid key, not a bogus "port is missing".
        proto = protocol if protocol in ("imap", "pop3") else "imap"
        if "port" not in data:
            data["port"] = _DEFAULT_PORTS[proto, data.get("tls", "implicit") == "implicit"]
        if "poll_interval" not in data:
            data["poll_interval"] = _DEFAULT_POLL[proto]
        if "maildir" not in data and isinstance(data.get("name"), str):
            root = ctx.get("maildir_root") or default_maildir_root()
            data["maildir"] = Path(root) / data["name"]
        return data

    @model_validator(mode="after")
    def _after(self) -> _AccountRules:
        if not ACCOUNT_NAME_RE.match(self.name):
            raise _fail(f"invalid account name {self.name!r}", "name")
        if self.tls == "none" and not self.allow_insecure:
            raise _fail("tls: none sends the password and all mail unencrypted; set "
                        "allow_insecure: true on this account if you really mean it", "tls")
        if self.delete_after is not None and not self.leave_on_server:
            raise _fail("delete_after only applies with leave_on_server: true (otherwise "
                        "messages are deleted from the server as soon as they are downloaded)",
                        "delete_after")
        if self.auth == "oauth2":
            if self.oauth2 is None:
                raise _fail("auth: oauth2 needs an oauth2 mapping with at least client_id "
                            "(and provider: microsoft, google or custom)", "auth")
            if self.password_command is not None:
                raise _fail("password_command is not used with auth: oauth2 (the refresh "
                            "token from `syncd auth` is kept in the keyring)",
                            "password_command")
        elif self.oauth2 is not None:
            raise _fail("oauth2 settings are only used with auth: oauth2", "oauth2")
        self._check_outbox()
        return self

    def _check_outbox(self) -> None:
        if self.smtp is not None and self.smtp.tls == "none" and not self.allow_insecure:
            raise _fail("tls: none sends the password and the mail unencrypted; set "
                        "allow_insecure: true on this account if you really mean it",
                        "smtp", "tls")
        if self.smtp is not None and self.smtp.password_command is not None \
                and self.auth == "oauth2":
            raise _fail("password_command is not used with auth: oauth2", "smtp",
                        "password_command")
        if self.direction == "pull" and self.save_sent == "always":
            raise _fail("save_sent: always APPENDs to the Sent folder, but direction: pull "
                        "never changes the server", "save_sent")
        if self.protocol == "pop3" and self.save_sent == "always":
            raise _fail("save_sent: always needs an IMAP account (a POP3 account has no Sent "
                        "folder on the server)", "save_sent")


class _SettingsRules(_Model):
    _record = Settings

    @model_validator(mode="after")
    def _after(self) -> _SettingsRules:
        # Two accounts writing into one tree would each see the other's messages as new local
        # mail and upload them; nested trees are the same problem one level down.
        seen: list[tuple[str, Path]] = []
        for name, account in self.accounts.items():
            if name != account.name:
                raise _fail(f"account key {name!r} differs from its name {account.name!r}",
                            "accounts", name)
            mine = account.maildir.resolve()
            for other_name, other in seen:
                if mine == other:
                    how = f"the same maildir as account '{other_name}' ({mine})"
                elif other in mine.parents:
                    how = (f"a maildir inside the maildir of account '{other_name}' "
                           f"({mine} is under {other})")
                elif mine in other.parents:
                    how = (f"a maildir that contains the maildir of account '{other_name}' "
                           f"({other} is under {mine})")
                else:
                    continue
                raise _fail(f"accounts '{other_name}' and '{name}' share a maildir: '{name}' "
                            f"has {how}; give each account its own directory",
                            "accounts", name, "maildir")
            seen.append((name, mine))
        return self


# ---------------------------------------------------------------------------------------------
# The models, derived from the records of syncd.config.settings (the one schema)
# ---------------------------------------------------------------------------------------------

_MODELS: dict[type[tuple[Any, ...]], type[_Model]] = {}


def _derive(rules: type[_M]) -> type[_M]:
    """``rules`` with one pydantic field per field of its record, in the record's order."""
    fields: dict[str, Any] = {spec.name: (_model_type(spec), _field_info(spec))
                              for spec in field_specs(rules._record)}
    name = rules._record.__name__.removesuffix("Settings") + "Model"
    model = create_model(name, __base__=rules, __module__=__name__, **fields)
    _MODELS[rules._record] = model
    return model


def _model_type(spec: FieldSpec) -> Any:
    inner = _inner_type(spec.type, spec)
    return inner | None if spec.optional else inner


def _inner_type(tp: Any, spec: FieldSpec) -> Any:
    """How a value of ``tp`` is validated (see syncd.config.settings for the rules)."""
    if tp in _MODELS:
        return _MODELS[tp]
    if typing.get_origin(tp) is Literal:
        if spec.has(LOWER):
            return Annotated[tp, BeforeValidator(_lower)]
        if spec.has(YES_NO_CHOICE):
            return Annotated[tp, BeforeValidator(_save_sent)]
        return tp
    if typing.get_origin(tp) is dict:
        key, value = typing.get_args(tp)
        return dict[key, _inner_type(value, spec)]  # type: ignore[valid-type]
    simple = {str: (Annotated[str, BeforeValidator(_host)] if spec.has(HOST)
                    else EndpointURL if spec.has(URL) else str if spec.has(VERBATIM) else Text),
              int: Size if spec.has(SIZE) else Int,
              bool: bool,
              Path: ConfigPath,
              tuple[str, ...]: Patterns}
    if tp is float and spec.has(DURATION):
        return Duration
    if tp in simple:
        return simple[tp]
    raise TypeError(f"{spec.name}: no validation known for {tp} (see syncd.config.settings)")


def _field_info(spec: FieldSpec) -> Any:
    options: dict[str, Any] = {}
    for mark in spec.marks:
        if isinstance(mark, Range):
            options.update((k, v) for k, v in mark._asdict().items() if v is not None)
        elif isinstance(mark, YamlKey):
            options["alias"] = mark.key
        elif isinstance(mark, Default):
            options["default_factory"] = mark.factory
    if spec.default is not REQUIRED:
        default = spec.default
        if type(default) in _MODELS:  # a record's default record: its model
            default = _MODELS[type(default)].model_validate(default._asdict())
        options["default"] = default
    return Field(**options)


FolderFilterModel = _derive(_FolderFilterRules)
FolderSettingsModel = _derive(_FolderSettingsRules)
OAuth2Model = _derive(_OAuth2Rules)
SmtpModel = _derive(_SmtpRules)
GeneralModel = _derive(_GeneralRules)
AccountModel = _derive(_AccountRules)
SettingsModel = _derive(_SettingsRules)


def _as_record(value: Any) -> Any:
    """A validated model as its record of syncd.config.settings (which needs neither pydantic
    nor PyYAML), and so on down."""
    if isinstance(value, BaseModel):
        record = next(r for r, m in _MODELS.items() if isinstance(value, m))
        return record(**{name: _as_record(getattr(value, name)) for name in record._fields})
    if isinstance(value, dict):
        return {key: _as_record(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Document:
    """Plain Python data plus, for every mapping key and list item, the line it is on."""

    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)
    # Original text of plain scalars that YAML 1.1 turned into non-strings (username: 0123 is an
    # octal int, tls: off a bool); string-valued keys get the text the user typed back.
    raw: dict[Loc, str] = field(default_factory=dict)
    # Where each scalar's text is in the document (start, end character offsets): the config
    # cache keeps these instead of secret values (syncd.config.cache).
    spans: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def forget(self, prefix: Loc) -> None:
        """Drop what is recorded at and under ``prefix`` (a merged value being overridden)."""
        n = len(prefix)
        for table in (self.lines, self.raw, self.spans):
            for loc in [loc for loc in table if loc[:n] == prefix]:
                del table[loc]

    def adopt(self, other: _Document, prefix: Loc) -> None:
        n = len(prefix)
        for mine, theirs in ((self.lines, other.lines), (self.raw, other.raw),
                             (self.spans, other.spans)):
            mine.update((loc, v) for loc, v in theirs.items() if loc[:n] == prefix)

    def line_of(self, loc: Loc) -> int | None:
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Composer:
    def __init__(self, text: str, path: str | None) -> None:
        self.path = path
        self.loader = yaml.SafeLoader(text)
        self.doc = _Document()
        self._active: set[int] = set()

    def run(self) -> _Document:
        try:
            try:
                node = self.loader.get_single_node()
            except yaml.MarkedYAMLError as exc:
                raise self._syntax_error(exc) from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"invalid YAML: {exc}", path=self.path) from None
            if node is not None:
                self.doc.lines[()] = node.start_mark.line + 1
                self.doc.data = self._convert(node, ())
            return self.doc
        finally:
            self.loader.dispose()

    def _syntax_error(self, exc: yaml.MarkedYAMLError) -> ConfigError:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        message = f"YAML syntax error: {problem}"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        if "\\t" in problem or "\t" in problem:
            message += "; YAML indentation must use spaces, not tabs"
        return ConfigError(message, line=mark.line + 1 if mark else None, path=self.path)

    def _error(self, message: str, loc: Loc, line: int) -> ConfigError:
        return ConfigError(message, key=_dotted(loc) or None, line=line, path=self.path)

    def _convert(self, node: yaml.Node, loc: Loc) -> Any:
        # Collections are built here rather than by the constructor, so their tags must be
        # checked here: "!!python/object" on a mapping would otherwise pass silently.
        if node.tag not in (_MAP_TAG, _SEQ_TAG) and not isinstance(node, yaml.ScalarNode):
            raise self._error(f"unsupported YAML tag {node.tag}", loc, node.start_mark.line + 1)
        if id(node) in self._active:
            raise self._error("recursive YAML alias", loc, node.start_mark.line + 1)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.doc.lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self._convert(item, (*loc, index)))
                return items
            return self._scalar(node, loc)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or "cannot read this value"
            raise self._error(f"invalid value: {problem}", loc, node.start_mark.line + 1) from None
        if (isinstance(node, yaml.ScalarNode) and node.style is None
                and value is not None and not isinstance(value, str)):
            self.doc.raw[loc] = node.value
        self.doc.spans[loc] = (node.start_mark.index, node.end_mark.index)
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        # "<<: *defaults" lets accounts share settings. Merged keys are applied first and
        # explicit keys override them, as YAML specifies, so an override is not a duplicate.
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._merge(value_node, loc, result, key_node.start_mark.line + 1)
        merged = set(result)
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error("keys must be plain names, not lists or mappings", loc, line)
            # The key is taken as typed: "123:" is account "123", "no:" is not False.
            key = key_node.value
            if key in first_line:
                what = "account" if loc == ("accounts",) else "key"
                raise self._error(f"duplicate {what} '{key}' (first defined on line "
                                  f"{first_line[key]}); YAML would silently keep only the last",
                                  (*loc, key), line)
            first_line[key] = line
            if key in merged:
                self.doc.forget((*loc, key))
            self.doc.lines[(*loc, key)] = line
            result[key] = self._convert(value_node, (*loc, key))
        return result

    def _merge(self, value_node: yaml.Node, loc: Loc, result: dict[str, Any], line: int) -> None:
        sources = (value_node.value if isinstance(value_node, yaml.SequenceNode)
                   else [value_node])
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self._error("'<<' can only merge a mapping", loc, line)
            if id(source) in self._active:
                raise self._error("recursive YAML alias", loc, line)
            # Convert into a scratch document so that keys an earlier source already set keep
            # their lines; then adopt the lines of the keys this source contributes.
            outer, self.doc = self.doc, _Document()
            self._active.add(id(source))
            try:
                values = self._mapping(source, loc)
                scratch = self.doc
            finally:
                self.doc = outer
                self._active.discard(id(source))
            for key, value in values.items():
                if key not in result:
                    result[key] = value
                    self.doc.adopt(scratch, (*loc, key))


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_RECORDS = (GeneralSettings, AccountSettings, FolderFilter, OAuth2Settings, SmtpSettings)


def _echo_keys() -> frozenset[str]:
    """Keys whose values are safe to quote back in an error: choices, numbers, booleans (never
    secrets, hosts or users, which are text)."""
    return frozenset(spec.key for record in _RECORDS for spec in field_specs(record)
                     if spec.type in (int, float, bool) or typing.get_origin(spec.type) is Literal)


def _text_locs(record: type[tuple[Any, ...]], prefix: Loc = ()) -> frozenset[Loc]:
    """Keys (list items as "*") whose value is text: YAML 1.1 scalars like 0123, off or
    2024-01-01 are read back as typed there. Not a YES_NO_CHOICE, where "no" means never."""
    locs: set[Loc] = set()
    for spec in field_specs(record):
        loc = (*prefix, spec.key)
        if spec.has(INTERNAL) or spec.has(YES_NO_CHOICE):
            continue
        if spec.type in _MODELS:
            locs |= _text_locs(spec.type, loc)
        elif spec.type in (str, Path) or typing.get_origin(spec.type) is Literal:
            locs.add(loc)
        elif spec.type == tuple[str, ...]:
            locs |= {loc, (*loc, "*")}
    return frozenset(locs)


_ECHO_KEYS = _echo_keys()
_TEXT_GENERAL = _text_locs(GeneralSettings)
_TEXT_ACCOUNT = _text_locs(AccountSettings)

_TOP_KEYS = ("general", "accounts")


class Located(NamedTuple):
    """A validated config file with where each value was written: ``text`` is the file's text
    (decoded as validated) and ``spans`` maps a key's location (``("accounts", "work",
    "password_command")``) to the offsets of its value in ``text``."""

    settings: Settings
    text: str
    spans: Mapping[Loc, tuple[int, int]]


def load_config(path: Path | str | None = None) -> Settings:
    """Read and validate the config file (default: ``default_config_path()``)."""
    path = Path(path).expanduser() if path is not None else default_config_path()
    shown = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no configuration file found (start from config.example.yaml, or "
                          "pass --config FILE)", path=shown) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a configuration file", path=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or type(exc).__name__}",
                          path=shown) from None
    return load_located(path, data).settings


def load_located(path: Path, data: bytes) -> Located:
    """Validate ``data``, the contents of the config file ``path`` (as load_config does)."""
    shown = str(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", line=line, path=shown) from None
    settings, doc = _parse(text, shown)
    warn_if_readable_by_others(path, settings)
    return Located(settings, text, doc.spans)


def parse_config(text: str, path: str = "<config>") -> Settings:
    """Validate config text. ``path`` labels errors; unless it is a ``<label>``, it is also the
    file relative paths are resolved against and ``Settings.path``."""
    return _parse(text, path)[0]


def _parse(text: str, path: str) -> tuple[Settings, _Document]:
    is_label = path.startswith("<") and path.endswith(">")
    file_path = None if is_label else Path(os.path.abspath(path))
    base_dir = file_path.parent if file_path else Path.cwd()
    # A "<label>" is not a file a user could open: errors then just say "line N".
    shown = None if is_label else path
    doc = _Composer(text, shown).run()
    top = doc.data

    def error(message: str, loc: Loc, line: int | None = None) -> ConfigError:
        return ConfigError(message, key=_dotted(loc) or None,
                           line=line if line is not None else doc.line_of(loc), path=shown)

    accounts = _accounts_of(top, error)
    general_data = top.get("general")  # top is a mapping: _accounts_of checked it
    if general_data is None:
        general_data = {}
    general_data = _with_text(doc, ("general",), general_data, _TEXT_GENERAL)
    context: dict[str, Any] = {"from_config": True, "base_dir": base_dir}
    general = _validate(GeneralModel, general_data, context, ("general",), doc, shown)

    built: dict[str, _Model] = {}
    for name, raw in accounts.items():
        loc: Loc = ("accounts", name)
        # "work:" with nothing under it: report the missing keys rather than a type error.
        data = _with_text(doc, loc, {} if raw is None else raw, _TEXT_ACCOUNT)
        account_context = {**context, "name": name, "maildir_root": general.maildir_root,
                           "state_dir": general.state_dir}
        built[name] = _validate(AccountModel, data, account_context, loc, doc, shown)

    model = _validate(SettingsModel, {"general": general, "accounts": built, "path": file_path},
                      context, (), doc, shown)
    settings: Settings = _as_record(model)
    return settings, doc


def _accounts_of(top: Any, error: Callable[[str, Loc], ConfigError]) -> dict[str, Any]:
    """The ``accounts`` mapping of a parsed document, after checking the top level's shape
    and the account names."""
    if top is None:
        raise error("the configuration is empty; it needs at least an 'accounts' mapping", ())
    if not isinstance(top, dict):
        raise error(f"the top level must be a mapping with 'general' and 'accounts', not a "
                    f"{_type_name(top)}", ())
    for key in top:
        if key not in _TOP_KEYS:
            raise error(_unknown_key_message(key, _TOP_KEYS), (key,))

    if "accounts" not in top:
        raise error("no 'accounts' mapping: at least one account must be configured",
                    ("accounts",))
    accounts = top["accounts"]
    if accounts is None or accounts == {}:
        raise error("no accounts configured: add at least one account under 'accounts'",
                    ("accounts",))
    if not isinstance(accounts, dict):
        raise error(f"must be a mapping from account name to its settings, not a "
                    f"{_type_name(accounts)}", ("accounts",))

    lowered: dict[str, str] = {}
    for name in accounts:
        if not ACCOUNT_NAME_RE.match(name):
            raise error(f"invalid account name {name!r}: it becomes a file name, so use 1-64 "
                        f"letters, digits, '.', '_' or '-', starting with a letter or digit",
                        ("accounts", name))
        # The state file and maildir would collide on case-insensitive file systems.
        if name.lower() in lowered:
            raise error(f"account names '{lowered[name.lower()]}' and '{name}' differ only in "
                        f"case", ("accounts", name))
        lowered[name.lower()] = name
    return accounts


def build_account(**values: Any) -> AccountSettings:
    """An account validated like one from a config file, without the file (tests, tools):
    ``build_account(name="t", protocol="pop3", host="h", username="u")``. Raises pydantic's
    ValidationError."""
    account: AccountSettings = _as_record(AccountModel.model_validate(values))
    return account


def _with_text(doc: _Document, loc: Loc, value: Any, patterns: frozenset[Loc],
               rel: Loc = ()) -> Any:
    """``value`` with the typed text put back wherever ``rel`` (list indices as "*") is one of
    ``patterns`` and YAML had turned that text into a non-string."""
    if isinstance(value, dict):
        return {key: _with_text(doc, (*loc, key), item, patterns, (*rel, key))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_with_text(doc, (*loc, index), item, patterns, (*rel, "*"))
                for index, item in enumerate(value)]
    if rel in patterns and loc in doc.raw:
        return doc.raw[loc]
    return value


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, context: dict[str, Any], loc: Loc,
              doc: _Document, path: str | None) -> _M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = [_locate(err, loc) for err in exc.errors()]
    # Report the first problem in file order; it is the one a reader meets first.
    errors.sort(key=lambda item: doc.line_of(item[0]) or 0)
    full_loc, err = errors[0]
    # A missing key has no line of its own; line_of falls back to the mapping that lacks it.
    raise ConfigError(_describe(err, full_loc, loc), key=_dotted(full_loc) or None,
                      line=doc.line_of(full_loc), path=path) from None


def _locate(err: Any, base: Loc) -> tuple[Loc, Any]:
    loc: Loc = (*base, *err["loc"])
    if err["type"] == "syncd":
        loc = (*loc, *err.get("ctx", {}).get("loc", ()))
    return loc, err


def _describe(err: Any, loc: Loc, base: Loc) -> str:
    kind = err["type"]
    key = next((part for part in reversed(loc) if isinstance(part, str)), "")
    if kind == "syncd":
        return str(err["msg"])
    if kind == "missing":
        where = f" in account '{base[1]}'" if base[:1] == ("accounts",) else ""
        return f"missing required key '{key}'{where}"
    if kind == "extra_forbidden":
        return f"unknown key '{key}'"
    message = str(err["msg"])
    message = message.removeprefix("Value error, ")
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        message = "must be a whole number"
    elif kind in ("float_parsing", "float_type"):
        message = "must be a number"
    elif kind in ("bool_parsing", "bool_type"):
        message = "must be true or false"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = f"must be a mapping of keys, not a {_type_name(err.get('input'))}"
    elif kind in ("tuple_type", "list_type"):
        message = f"must be a list, not a {_type_name(err.get('input'))}"
    elif kind == "path_type":
        message = f"must be a path, not a {_type_name(err.get('input'))}"
    elif kind == "string_type":
        message = f"must be text, not a {_type_name(err.get('input'))}"
    if key in _ECHO_KEYS and "input" in err and not isinstance(err["input"], dict | list):
        shown = repr(err["input"])
        message += f" (got {shown[:40] + '...' if len(shown) > 40 else shown})"
        if kind == "literal_error" and isinstance(err["input"], str):
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            message += _suggest(err["input"].lower(), choices)
    return message
