"""The systemd user unit, written from the config: `syncd systemd-unit`.

The unit is hardened (``ProtectSystem=strict``, ``ProtectHome=read-only``), so syncd can only
write where ``ReadWritePaths=`` says. Those paths depend on the config (``maildir_root``, every
account's ``maildir``, ``state_dir``) and the cache directory, so a fixed unit cannot list them:
a maildir outside ``~/Mail`` would be read-only. The paths are listed with ``-`` (a path that
does not exist does not fail the unit) and created here, because a path missing when the unit
starts stays read-only for the whole run.

``systemd/syncd.service`` in the repository is this module's output for the default paths
(tests/system/test_systemd_unit.py keeps them equal), for packagers.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from syncd.config.settings import Settings, default_cache_dir, default_config_path

__all__ = ["MARKER", "UnitInputs", "inputs_from", "render_unit", "unit_path", "write_unit"]

# The first line of a unit syncd wrote: one without it (hand-written) is never overwritten.
MARKER = "# Written by `syncd systemd-unit`"
# What the daemon reads from its environment; the user manager's may lack what the shell has.
_XDG_VARIABLES = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


class UnitInputs(NamedTuple):
    """What the unit depends on."""

    executable: tuple[str, ...]  # the command that runs syncd (absolute paths)
    config: Path | None  # --config, when not the default file
    writable: tuple[Path, ...]  # ReadWritePaths, outermost first
    environment: tuple[tuple[str, str], ...]  # Environment= pairs
    home: Path  # paths under it are written with %h


def inputs_from(settings: Settings, config: Path | None) -> UnitInputs:
    """The unit's inputs for ``settings`` (read from ``config``, None for the default file),
    run by the syncd program that runs now."""
    wanted = [settings.general.maildir_root, settings.general.state_dir, default_cache_dir()]
    for account in settings.accounts.values():
        wanted += [account.maildir, account.state_dir]
    if config is not None and config.absolute() == default_config_path():
        config = None
    environment = tuple((name, os.environ[name]) for name in _XDG_VARIABLES
                        if os.path.isabs(os.environ.get(name, "")))
    return UnitInputs(executable=_executable(), config=config and config.absolute(),
                      writable=outermost(wanted), environment=environment,
                      home=Path(os.path.expanduser("~")))


def _executable() -> tuple[str, ...]:
    """The `syncd` that runs now: the unit must start the same installation."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "syncd" and argv0.exists():
        return (str(argv0.absolute()),)
    # `python -m syncd`: the console script next to this interpreter, if it was installed.
    script = Path(sys.executable).parent / "syncd"
    return (str(script),) if script.exists() else (sys.executable, "-m", "syncd")


def outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """``paths`` without duplicates and without those inside another one (writable already)."""
    unique = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: (len(p.parts), p))
    kept: list[Path] = []
    for path in unique:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return tuple(kept)


def render_unit(inputs: UnitInputs) -> str:
    """The unit file's text."""
    words = [*inputs.executable, *(["--config", str(inputs.config)] if inputs.config else [])]
    command = " ".join([*(_quote(_specified(w, inputs.home), dollar=True) for w in words),
                        "run"])
    writable = " ".join("-" + _quote(_specified(str(p), inputs.home)) for p in inputs.writable)
    environment = "".join(f"Environment={_quote(f'{name}={value}'.replace('%', '%%'))}\n"
                          for name, value in inputs.environment)
    return _TEMPLATE.format(marker=MARKER, exec_start=command, writable=writable,
                            environment=environment)


def _specified(path: str, home: Path) -> str:
    """``path`` as the unit writes it: under the home directory with %h, and every other %
    doubled (a % starts a specifier in unit files)."""
    prefix = str(home).rstrip("/") + "/"
    if path.startswith(prefix):
        return "%h/" + path[len(prefix):].replace("%", "%%")
    return path.replace("%", "%%")


def _quote(word: str, *, dollar: bool = False) -> str:
    """One word of a unit setting: quoted if it holds a space or a quote; in a command line,
    $ doubled (it would be a variable)."""
    if dollar:
        word = word.replace("$", "$$")
    if re.search(r"[\s\"'\\]", word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def unit_path() -> Path:
    """Where `systemctl --user` finds the user's own units."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    config = Path(base) if os.path.isabs(base) else Path(os.path.expanduser("~/.config"))
    return config / "systemd" / "user" / "syncd.service"


class UnitExists(Exception):
    """A unit syncd did not write is in the way."""


def write_unit(inputs: UnitInputs, path: Path, *, force: bool = False) -> None:
    """Write the unit to ``path`` (atomically) and create the writable directories."""
    try:
        current = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        current = None
    if current is not None and not current.startswith(MARKER) and not force:
        raise UnitExists(str(path))
    for directory in inputs.writable:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_unit(inputs), encoding="utf-8")
    os.replace(tmp, path)


_TEMPLATE = """\
{marker} from the config's paths; re-run it after changing them.
# (systemd/syncd.service in syncd's source is this for the default paths.) Then:
#   systemctl --user daemon-reload && systemctl --user enable --now syncd
[Unit]
Description=syncd mail sync daemon (IMAP IDLE <-> Maildir, POP3)
Documentation=https://example.invalid/syncd
# No network-online.target: it means nothing to a user manager. syncd waits for the network
# itself (it retries an unreachable server with a backoff).

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
{environment}Restart=on-failure
RestartSec=10s
WatchdogSec=120s
TimeoutStopSec=15s
# Hardening that still lets syncd write the maildirs, its state and its cache: those paths
# only ("-": a missing one does not fail the unit; `syncd systemd-unit` creates them).
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={writable}
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
RestrictRealtime=yes
SystemCallArchitectures=native

[Install]
WantedBy=default.target
"""
