"""The daemon's filter on NOTIFY events (service/daemon.on_remote_change): the account's
include/exclude patterns match a folder's server name or its name without the personal
namespace prefix, as the engine selects folders (core.folders.folder_selected; issue 15)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from syncd.core.folders import Namespace
from syncd.service.daemon import Daemon

COURIER = Namespace("INBOX.", ".")


class Worker:
    def __init__(self) -> None:
        self.requested: list[str | None] = []

    def request(self, folder: str | None, reason: str = "", delay: float = 0.0) -> None:
        self.requested.append(folder)


def daemon_with(include: list[str], exclude: list[str], namespace: Namespace
                ) -> tuple[Daemon, Worker]:
    worker = Worker()
    runtime = SimpleNamespace(
        account=SimpleNamespace(folders=SimpleNamespace(include=include, exclude=exclude)),
        worker=worker, namespace=lambda: namespace)
    daemon = object.__new__(Daemon)  # only the event handler is under test
    daemon.accounts = {"work": runtime}  # type: ignore[dict-item]
    return daemon, worker


@pytest.mark.parametrize(("include", "exclude", "folder", "wanted"), [
    (["INBOX", "Lists"], [], "INBOX.Lists", True),
    (["INBOX", "INBOX.Lists"], [], "INBOX.Lists", True),
    (["INBOX"], [], "INBOX.Lists", False),
    (["*"], ["Junk"], "INBOX.Junk", False),
    (["*"], ["INBOX.Junk"], "INBOX.Junk", False),
    (["*"], ["Junk"], "INBOX.Lists", True),
])
def test_patterns_match_without_the_prefix(include: list[str], exclude: list[str],
                                           folder: str, wanted: bool) -> None:
    daemon, worker = daemon_with(include, exclude, COURIER)
    daemon.on_remote_change("work", folder)
    assert worker.requested == ([folder] if wanted else [])


def test_a_whole_account_request_is_never_filtered() -> None:
    daemon, worker = daemon_with(["INBOX"], ["*"], COURIER)
    daemon.on_remote_change("work", None)
    assert worker.requested == [None]
