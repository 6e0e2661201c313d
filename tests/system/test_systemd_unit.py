"""`syncd systemd-unit` (issue 16 item 7): the unit's writable paths come from the config, a
missing one does not fail the unit, `systemd-analyze verify` finds nothing, and the shipped
systemd/syncd.service is the same unit for the default paths."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.service.unit import MARKER, UnitInputs, outermost, render_unit
from tests.support.syncd_env import REPO, run_cli


def verify(unit: Path, home: Path) -> None:
    """systemd-analyze --user verify on ``unit``: exit 0 and not one warning about it."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: `make deps` installs it (Debian package "
                    "systemd)", pytrace=False)
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), HOME=str(home),
               SYSTEMD_LOG_LEVEL="notice")
    proc = subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, output
    # verify exits 0 even for unknown keys and bad values (it only warns): none allowed.
    problems = [line for line in output.splitlines() if unit.name in line]
    assert not problems, "\n".join(problems)


def test_the_shipped_unit_is_the_generated_one_for_the_default_paths() -> None:
    home = Path("/home/someone")
    inputs = UnitInputs(executable=(str(home / ".local/bin/syncd"),), config=None,
                        writable=outermost([home / "Mail", home / ".local/state/syncd",
                                            home / ".cache/syncd"]),
                        environment=(), home=home)
    shipped = (REPO / "systemd" / "syncd.service").read_text()
    assert shipped == render_unit(inputs)
    assert "ReadWritePaths=-%h/Mail -%h/.cache/syncd -%h/.local/state/syncd\n" in shipped
    assert "network-online" not in re.sub(r"(?m)^#.*$", "", shipped)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return home


def write_config(path: Path, elsewhere: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""\
general:
  maildir_root: {elsewhere}/mail root
accounts:
  work:
    protocol: imap
    host: imap.example.com
    username: me
  archive:
    protocol: pop3
    host: pop.example.com
    username: me
    maildir: {elsewhere}/100%/archive
""")
    path.chmod(0o600)


def test_the_unit_lists_the_configs_paths_and_verifies(home: Path, tmp_path: Path) -> None:
    """A maildir_root outside the home and an account maildir elsewhere (with a space and a
    % in their names) are writable; the state and the cache are too; nothing is listed twice;
    a path that does not exist yet does not fail the unit."""
    elsewhere = tmp_path / "srv"
    config = home / ".config" / "syncd" / "config.yaml"
    write_config(config, elsewhere)
    rc, out, err = run_cli("systemd-unit", "--print")
    assert rc == 0, out + err
    assert not (elsewhere / "mail root").exists()  # --print writes and creates nothing
    [paths] = re.findall(r"(?m)^ReadWritePaths=(.*)$", out)
    # Outermost first; a space quoted, a % doubled (it would start a specifier).
    assert paths.split(" -") == [f'-"{elsewhere}/mail root"', "%h/.cache/syncd",
                                 f"{elsewhere}/100%%/archive", "%h/.local/state/syncd"], paths
    assert re.search(r"(?m)^ExecStart=/\S+/syncd run$", out), out  # the default config
    assert "network-online" not in re.sub(r"(?m)^#.*$", "", out)
    unit = tmp_path / "units" / "syncd.service"
    unit.parent.mkdir()
    unit.write_text(out)
    verify(unit, home)


def test_systemd_unit_writes_the_unit_and_creates_the_paths(home: Path,
                                                            tmp_path: Path) -> None:
    elsewhere = tmp_path / "srv"
    config = tmp_path / "my config.yaml"
    write_config(config, elsewhere)
    rc, out, err = run_cli("--config", str(config), "systemd-unit")
    assert rc == 0, out + err
    unit = home / ".config" / "systemd" / "user" / "syncd.service"
    text = unit.read_text()
    assert text.startswith(MARKER)
    assert f'--config "{config}" run' in text, text  # not the default file: named
    for path in (elsewhere / "mail root", elsewhere / "100%" / "archive",
                 home / ".local" / "state" / "syncd", home / ".cache" / "syncd"):
        assert path.is_dir(), path  # missing when the unit starts, it would stay read-only
    assert str(unit) in out and "daemon-reload" in out
    verify(unit, home)
    # Its own unit is rewritten; a hand-written one only with --force.
    assert run_cli("--config", str(config), "systemd-unit")[0] == 0
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    rc, out, err = run_cli("--config", str(config), "systemd-unit")
    assert rc == 2 and "--force" in err and "not written by syncd" in err, out + err
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"
    assert run_cli("--config", str(config), "systemd-unit", "--force")[0] == 0
    assert unit.read_text().startswith(MARKER)


def test_python_m_syncd_runs_the_console_script_of_its_environment(home: Path) -> None:
    write_config(home / ".config" / "syncd" / "config.yaml", home / "srv")
    out = subprocess.run([sys.executable, "-m", "syncd", "systemd-unit", "--print"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    script = Path(sys.executable).parent / "syncd"
    assert f"ExecStart={script} run\n" in out.stdout or \
        f"ExecStart=%h/{script.relative_to(home)} run\n" in out.stdout, out.stdout
