"""Crash tests: an injected crash at every checkpoint of the engine, for scenarios mixing every
operation (docs/architecture.md; issue 3, "crash tests").

The engine calls ``syncd.faults.checkpoint()`` between every I/O step and every state commit.
For each scenario we first run it once with a recording trace to learn how many checkpoints it
passes (N). Then, for every n in 1..N (each its own test id), a fresh user gets the same
scenario, the sync is interrupted at checkpoint n (``InjectedCrash``, a BaseException that no
handler in syncd swallows), and a normal sync resumes. After it:

- every folder is in sync (bytes, flags, no duplicates on either side);
- the result equals the uninterrupted run's (the same messages with the same flags);
- a second sync changes nothing on either side (its summary and both sides' exact contents).

The scenarios are deterministic (same bodies, same flags, same order of operations), so the
reference result computed once per scenario is what every interrupted run must reach.

``SYNCD_CRASH_TRACE=1`` prints the trace of the reference runs (checkpoint names in order).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd import faults
from syncd.faults import InjectedCrash
from syncd.imap import client as imap_adapter
from syncd.imap import download
from tests.crash.crash_support import (
    SCENARIOS,
    Template,
    assert_quiet,
    contents,
    describe_difference,
    stray_tmp,
)
from tests.support.dovecot import Dovecot
from tests.support.syncd_env import sync, synced_ok

# Upper bounds for the parametrization (pytest needs the ids before Dovecot runs). The
# reference test of each scenario fails if the engine ever passes more checkpoints than this,
# so coverage can never shrink silently: raise the bound then. Ids beyond the real count skip.
MAX_CHECKPOINTS = {"mixed": 46, "initial": 35, "uidvalidity": 25, "trash": 12,
                   "placeholders": 25, "window": 26}

# Small download groups so that crashes also land between group commits.
DOWNLOAD_GROUP = 2


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def _test_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(download, "DOWNLOAD_COMMIT_COUNT", DOWNLOAD_GROUP)
    # (TLS contexts need no caching here: syncd.net.ssl_context_for shares them.)
    faults.arm(None)
    yield
    faults.arm(None)


_templates: dict[str, Template] = {}


def template(name: str, dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory
             ) -> Template:
    if name not in _templates:
        user = dovecot.add_user()
        local = tmp_path_factory.mktemp(f"template-{name}")
        _templates[name] = Template(SCENARIOS[name].prepare(dovecot, user, local), local)
    return _templates[name]


@dataclass
class Reference:
    trace: list[str]
    result: dict[str, Counter]


_references: dict[str, Reference] = {}


def reference(name: str, dovecot: Dovecot, tmp_path_factory: pytest.TempPathFactory
              ) -> Reference:
    """The uninterrupted run of a scenario: its checkpoint trace and its result (cached)."""
    if name not in _references:
        user, account = template(name, dovecot, tmp_path_factory).instantiate(
            dovecot, tmp_path_factory.mktemp(f"reference-{name}"))
        faults.arm(None, record=True)
        try:
            synced_ok(account)
            trace = list(faults.trace or [])
        finally:
            faults.arm(None)
        result = contents(dovecot, user, account)
        assert not stray_tmp(account), f"files left in tmp/: {stray_tmp(account)}"
        assert_quiet(dovecot, user, account)
        if os.environ.get("SYNCD_CRASH_TRACE"):
            print(f"\n{name}: {len(trace)} checkpoints")
            for n, step in enumerate(trace, 1):
                print(f"  {n:3d} {step}")
        _references[name] = Reference(trace, result)
    return _references[name]


# --------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_reference_run(name: str, dovecot: Dovecot,
                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """The uninterrupted run converges, is idempotent, and its checkpoints are all covered."""
    ref = reference(name, dovecot, tmp_path_factory)
    assert ref.trace, "the engine passed no checkpoint: fault injection is not wired"
    assert len(ref.trace) <= MAX_CHECKPOINTS[name], (
        f"{name} passes {len(ref.trace)} checkpoints, more than the "
        f"{MAX_CHECKPOINTS[name]} parametrized: raise MAX_CHECKPOINTS[{name!r}]")
    # Every phase of the engine must be reached by at least one scenario; checked per scenario
    # where the scenario is designed to reach it.
    expected = {
        "mixed": {"state-only.commit", "local-flags.rename", "local-flags.commit",
                  "push-flags.store", "delete-local.remove", "delete-local.commit",
                  "delete-remote.expunge", "remote-changes.commit",
                  "download.intents", "download.publish", "download.commit",
                  "upload.intent", "upload.append", "upload.commit", "folder.cursors"},
        "initial": {"download.intents", "download.publish", "download.commit",
                    "upload.intent", "upload.append", "upload.commit", "folder.cursors"},
        "uidvalidity": {"state-only.commit", "download.publish", "upload.append",
                        "folder.cursors"},
        "trash": {"delete-remote.move", "remote-changes.commit", "download.publish"},
        "placeholders": {"placeholder.intents", "placeholder.publish", "placeholder.commit",
                         "fetch_full.intent", "fetch_full.staged", "fetch_full.rename",
                         "fetch_full.commit", "copy_original.intent", "copy_original.copy",
                         "copy_original.commit", "rescue.intent", "rescue.copy",
                         "rescue.commit"},
        "window": {"local-flags.rename", "push-flags.store", "delete-remote.expunge",
                   "download.publish", "upload.append", "folder.cursors"},
    }[name]
    missing = expected - set(ref.trace)
    assert not missing, f"{name} never reaches {sorted(missing)}"


def test_every_checkpoint_is_covered(dovecot: Dovecot,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every checkpoint the engine has (in any module of syncd/imap/) is reached by some
    scenario (a new step in the engine needs a scenario here, or it goes untested)."""
    names = {name for path in Path(imap_adapter.__file__).parent.glob("*.py")
             for name in re.findall(r'checkpoint\("([^"]+)"\)', path.read_text())}
    assert "download.publish" in names  # the pattern still finds them
    reached = set()
    for name in SCENARIOS:
        reached.update(reference(name, dovecot, tmp_path_factory).trace)
    assert names - reached == set(), f"no scenario reaches {sorted(names - reached)}"


CASES = [pytest.param(name, n, id=f"{name}-{n:02d}")
         for name in SCENARIOS for n in range(1, MAX_CHECKPOINTS[name] + 1)]


@pytest.mark.parametrize(("name", "crash_at"), CASES)
def test_crash_at_checkpoint(name: str, crash_at: int, dovecot: Dovecot, tmp_path: Path,
                             tmp_path_factory: pytest.TempPathFactory) -> None:
    ref = reference(name, dovecot, tmp_path_factory)
    if crash_at > len(ref.trace):
        pytest.skip(f"{name} has only {len(ref.trace)} checkpoints")
    step = ref.trace[crash_at - 1]
    user, account = template(name, dovecot, tmp_path_factory).instantiate(dovecot, tmp_path)

    faults.arm(crash_at)
    try:
        with pytest.raises(InjectedCrash) as crashed:
            sync(account)
    finally:
        faults.arm(None)
    assert crashed.value.step == step, "the scenario is not deterministic"

    out = synced_ok(account)  # recovery
    result = contents(dovecot, user, account)
    assert result == ref.result, (
        f"crash at {crash_at} ({step}), then a sync ({out.strip()}): not the uninterrupted "
        f"result: {describe_difference(result, ref.result)}")
    assert not stray_tmp(account), f"files left in tmp/: {stray_tmp(account)}"
    assert_quiet(dovecot, user, account)
