"""Fixtures of the fault suite: the leak check every test goes through, faster in-process TLS,
and the figures (faults injected, kills survived, messages checked, lost, duplicated) printed
at the end of the run and written to ``.pytest_cache/syncd-faults-summary.json`` (or to
``$SYNCD_FAULTS_SUMMARY``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import faults
from tests.faults.faultlib import FIGURES, SECRETS, write_summary

_scanned = {"files": 0, "tests": 0}


@pytest.fixture(autouse=True)
def leakcheck(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """After every test: no password handed to syncd appears in anything it saw (stdout,
    stderr, logs: captured at the file-descriptor level, subprocesses included) nor in any
    file under the test's directory (maildir, state, status, daemon logs)."""
    yield
    captured = capfd.readouterr()
    # Give the output back to pytest (shown with -s, or when the test fails).
    sys.stdout.write(captured.out)
    sys.stderr.write(captured.err)
    _scanned["files"] += SECRETS.scan(tmp_path, [captured.out, captured.err])
    _scanned["tests"] += 1


@pytest.fixture(autouse=True)
def _no_armed_fault() -> Iterator[None]:
    # (TLS contexts need no caching here: syncd.net.ssl_context_for shares them.)
    faults.arm(None)
    yield
    faults.arm(None)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _scanned["tests"]:
        return
    figures = FIGURES.as_dict()
    target = Path(os.environ.get("SYNCD_FAULTS_SUMMARY")
                  or Path(str(config.rootpath)) / ".pytest_cache" / "syncd-faults-summary.json")
    figures["leak_scan"] = {"tests": _scanned["tests"], "files": _scanned["files"]}
    write_summary(target, figures)
    tr = terminalreporter
    tr.section("syncd fault suite")
    kinds = ", ".join(f"{k} {v}" for k, v in figures["faults_by_kind"].items())
    tr.write_line(f"faults injected: {figures['faults_injected']} (kill -9 "
                  f"{figures['kills_survived']}; {kinds})")
    tr.write_line(f"kills survived: {figures['kills_survived']}")
    tr.write_line(f"messages checked: {figures['messages_checked']}, lost: {figures['lost']}, "
                  f"duplicated: {figures['duplicated']}")
    tr.write_line(f"leak scan: {_scanned['files']} files and the output of "
                  f"{_scanned['tests']} tests searched for the passwords")
    if figures["seeds"]:
        tr.write_line("seeds: " + " ".join(f"{k}={v}" for k, v in figures["seeds"].items()))
    tr.write_line(f"summary written to {target}")
