"""The personal namespace (RFC 2342) and folder places: pure mapping rules (core.folders), the
FolderMap over a real Maildir, the two NAMESPACE parsers, and how a refused upload is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.core.folders import (
    NO_NAMESPACE,
    Namespace,
    folder_selected,
    local_components,
    local_only_folders,
    personal_namespace,
    prefixed_name,
    server_name,
    without_prefix,
)
from syncd.core.model import RemoteFolder
from syncd.errors import FolderError
from syncd.imap.client import parse_namespace, refusal_text
from syncd.imap.folder_map import FolderMap
from syncd.imap.probe import _parse_namespace
from syncd.imap.refusals import MAX_REFUSALS_IN_A_ROW, RefusedUploads, subject_of
from syncd.store.maildir import Maildir

COURIER = Namespace("INBOX.", ".")


def folder(name: str, delimiter: str | None = ".") -> RemoteFolder:
    return RemoteFolder(name=name, delimiter=delimiter, noselect=False, special_use=None)


@pytest.mark.parametrize(("name", "expected"), [
    ("INBOX.Archive", "Archive"),
    ("INBOX.Archive.2024", "Archive.2024"),
    ("inbox.Archive", "Archive"),  # INBOX is case-insensitive, in a prefix too
    ("INBOX", None),
    ("INBOX.", None),
    ("INBOX.INBOX", None),  # would take the real INBOX's place
    ("INBOX.inbox.x", None),
    ("user.bob.x", None),  # another namespace: as it is
    ("INBOXES", None),
])
def test_without_prefix(name: str, expected: str | None) -> None:
    assert without_prefix(name, COURIER) == expected


def test_no_prefix_changes_nothing() -> None:
    assert without_prefix("INBOX/Sub", Namespace("", "/")) is None
    assert local_components(folder("INBOX/Sub", "/"), Namespace("", "/")) == ("INBOX", "Sub")
    assert local_components(folder("A/B", "/")) == ("A", "B")
    assert server_name(("A", "B"), NO_NAMESPACE, "/") == "A/B"


def test_personal_namespace_ends_with_its_delimiter() -> None:
    assert personal_namespace("INBOX", ".") == COURIER
    assert personal_namespace("INBOX.", ".") == COURIER
    assert personal_namespace("", "/") == Namespace("", "/")
    assert personal_namespace("", None) == NO_NAMESPACE


@pytest.mark.parametrize(("name", "components"), [
    ("INBOX", ("INBOX",)),
    ("INBOX.Archive", ("Archive",)),
    ("INBOX.Archive.2024", ("Archive", "2024")),
    ("INBOX.INBOX.x", ("INBOX", "INBOX", "x")),
    ("user.bob", ("user", "bob")),
])
def test_local_components_strip_the_prefix(name: str, components: tuple[str, ...]) -> None:
    assert local_components(folder(name), COURIER) == components


@pytest.mark.parametrize("name", ["INBOX", "INBOX.Archive", "INBOX.Archive.2024", "INBOX.a b"])
def test_server_name_inverts_local_components(name: str) -> None:
    assert server_name(local_components(folder(name), COURIER), COURIER, "/") == name


def test_server_name_of_new_local_folders() -> None:
    assert server_name(("Archive", "2024"), COURIER, "/") == "INBOX.Archive.2024"
    # A folder below the local INBOX (laid out before namespaces) is the server's INBOX tree.
    assert server_name(("INBOX", "Sub"), COURIER, ".") == "INBOX.Sub"
    assert server_name(("INBOX",), COURIER, ".") == "INBOX"
    # The namespace's delimiter wins over the one guessed from the LIST.
    assert server_name(("A", "B"), Namespace("", "."), "/") == "A.B"


@pytest.mark.parametrize(("name", "include", "exclude", "selected"), [
    ("INBOX.Trash", ["*"], ["Trash"], False),
    ("INBOX.Trash", ["*"], ["INBOX.Trash"], False),
    ("INBOX.Junk.old", ["*"], ["Junk*"], False),
    ("INBOX.Lists.python", ["INBOX", "Lists*"], [], True),
    ("INBOX", ["INBOX"], ["Trash"], True),
    ("inbox", ["INBOX"], [], True),
    ("INBOX.Archive", ["*"], [], True),
    ("user.bob.Trash", ["*"], ["Trash"], True),  # not under the prefix
])
def test_patterns_match_with_or_without_the_prefix(name: str, include: list[str],
                                                    exclude: list[str], selected: bool) -> None:
    assert folder_selected(name, include, exclude, namespace=COURIER) is selected


def test_without_a_namespace_patterns_see_only_the_server_name() -> None:
    assert folder_selected("INBOX.Trash", ["*"], ["Trash"]) is True


@pytest.mark.parametrize(("name", "expected"), [
    ("Lists", "INBOX.Lists"),
    ("Lists/python", "INBOX.Lists.python"),  # as the local path shows it
    ("INBOX.Lists", "INBOX.Lists"),          # already the server's name
    ("inbox.Lists", "inbox.Lists"),
    ("INBOX", "INBOX"),
    ("inbox", "inbox"),
])
def test_prefixed_name_of_an_idle_folder(name: str, expected: str) -> None:
    assert prefixed_name(name, COURIER) == expected


def test_prefixed_name_without_a_prefix_changes_nothing() -> None:
    assert prefixed_name("Lists/python", NO_NAMESPACE) == "Lists/python"
    assert prefixed_name("Lists", Namespace("", "/")) == "Lists"


def test_local_only_folders() -> None:
    local = [("INBOX",), ("Archive",), ("Archive", "2024"), ("Lists",), ("INBOX", "Old"),
             ("a.b",)]
    found = local_only_folders(
        local, ["INBOX", "INBOX.Lists"], ".", ["*"], [], namespace=COURIER,
        claimed={("INBOX",), ("Lists",)}, recorded={("a.b",): "INBOX.a.b"})
    assert found == [("INBOX.Archive", ("Archive",)),
                     ("INBOX.Archive.2024", ("Archive", "2024")),
                     ("INBOX.Old", ("INBOX", "Old")),
                     ("INBOX.a.b", ("a.b",))]
    # Excluded by the prefix-less name.
    assert local_only_folders([("Trash",)], [], ".", ["*"], ["Trash"],
                              namespace=COURIER) == []


# --- FolderMap ------------------------------------------------------------------------------
def make_folder_dir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_folder_map_places(tmp_path: Path, layout: str) -> None:
    maildir = Maildir(tmp_path / "m", layout)  # type: ignore[arg-type]
    fmap = FolderMap(maildir, COURIER, {})
    assert fmap.local_path(folder("INBOX")) == maildir.local_path(("INBOX",))
    assert fmap.local_path(folder("INBOX.Archive.2024")) == maildir.local_path(
        ("Archive", "2024"))


def test_folder_map_keeps_recorded_places(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m", "verbatim")
    legacy = maildir.local_path(("INBOX", "Lists"))
    elsewhere = tmp_path / "old-root" / "Archive"
    fmap = FolderMap(maildir, COURIER, {"INBOX.Lists": str(legacy),
                                        "INBOX.Archive": str(elsewhere)})
    assert fmap.local_path(folder("INBOX.Lists")) == legacy
    # A place under another maildir root is not kept: the folder goes where this one puts it.
    assert fmap.local_path(folder("INBOX.Archive")) == maildir.local_path(("Archive",))
    assert fmap.known("INBOX.Archive") and fmap.known("INBOX.Lists")
    assert not fmap.known("INBOX.News")


def test_folder_map_takes_an_existing_prefixed_folder(tmp_path: Path) -> None:
    """State lost after a syncd without namespace support laid INBOX/Lists out: that folder is
    taken, not a second one at Lists/."""
    maildir = Maildir(tmp_path / "m", "verbatim")
    legacy = make_folder_dir(maildir.local_path(("INBOX", "Lists")))
    assert FolderMap(maildir, COURIER, {}).local_path(folder("INBOX.Lists")) == legacy
    make_folder_dir(maildir.local_path(("Lists",)))
    assert FolderMap(maildir, COURIER, {}).local_path(folder("INBOX.Lists")) == \
        maildir.local_path(("Lists",))


def test_folder_map_local_only(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "m", "verbatim")
    for components in [("INBOX",), ("Lists",), ("Archive",), ("Gone",), ("odd.name",)]:
        make_folder_dir(maildir.local_path(components))
    fmap = FolderMap(maildir, COURIER, {"INBOX.Gone": str(maildir.local_path(("Gone",)))})
    listed = [folder("INBOX"), folder("INBOX.Lists")]
    found = fmap.local_only(listed, maildir.list_folders(), ["*"], [])
    assert found == [("INBOX.Archive", ("Archive",)), ("INBOX.Gone", ("Gone",)),
                     ("INBOX.odd.name", ("odd.name",))]
    # Created from the local "odd.name": that directory is its place from now on, although
    # the server's name would map to odd/name.
    fmap.record("INBOX.odd.name", maildir.local_path(("odd.name",)))
    listed.append(folder("INBOX.odd.name"))
    assert fmap.local_path(folder("INBOX.odd.name")) == maildir.local_path(("odd.name",))
    assert [name for name, _ in fmap.local_only(listed, maildir.list_folders(), ["*"], [])] \
        == ["INBOX.Archive", "INBOX.Gone"]


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_folder_name_of_inverts_local_path(tmp_path: Path, layout: str) -> None:
    maildir = Maildir(tmp_path / "m", layout)  # type: ignore[arg-type]
    for name in [("INBOX",), ("A",), ("A", "B"), ("x.y",), ("100%",), (".hidden",)]:
        assert maildir.folder_name_of(maildir.local_path(name)) == name
    assert maildir.folder_name_of(tmp_path / "elsewhere" / "A") is None
    assert maildir.folder_name_of(maildir.root / "100%") is None  # not what escaping makes
    other = Maildir(tmp_path / "m", "maildir++" if layout == "verbatim" else "verbatim")
    assert maildir.folder_name_of(other.local_path(("A", "B"))) is None


# --- NAMESPACE replies ------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    (b'(("INBOX." ".")) NIL NIL', COURIER),
    (b'(("" "/")) (("Other Users/" "/")) (("Shared Folders/" "/"))', Namespace("", "/")),
    (b'(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))', COURIER),
    (b'(("INBOX/" "/")) NIL NIL', Namespace("INBOX/", "/")),
    (b'(("" NIL)) NIL NIL', NO_NAMESPACE),
    (b"NIL NIL NIL", NO_NAMESPACE),
    (b'(("" "/" "X-PARAM" ("FLAG1" "FLAG2"))) NIL NIL', Namespace("", "/")),
])
def test_namespace_replies(raw: bytes, expected: Namespace) -> None:
    assert parse_namespace(raw) == expected
    assert _parse_namespace([raw]) == expected  # the no-change check reads them alike


def test_a_namespace_prefix_as_a_literal() -> None:
    assert parse_namespace([(b"(({6}", b"INBOX."), b' ".")) NIL NIL']) == COURIER


def test_unreadable_namespace_replies() -> None:
    assert parse_namespace(b"((garbage") == NO_NAMESPACE
    assert _parse_namespace([(b"{3}", b"abc")]) is None  # the full sync will ask


# --- refused uploads --------------------------------------------------------------------------
def test_refusal_text() -> None:
    assert refusal_text(Exception("APPEND command error: BAD [b'Command Error. 10']")) \
        == "BAD Command Error. 10"
    assert refusal_text(Exception("append failed: [LIMIT] too big")) == "NO [LIMIT] too big"
    assert refusal_text(Exception("something else")) == "something else"


def test_a_refused_message_is_named() -> None:
    refused = RefusedUploads("work", "Sent")
    data = b"From: a@b\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n  aus Berlin\n\nbody\n"
    assert subject_of(data) == "Grüße aus Berlin"
    refused.add("1700.M1P1.host", data, "BAD Command Error. 10")
    assert refused
    assert refused.error() == (
        "the server refused 1 message (kept in the Maildir, tried again at the next sync): "
        "1700.M1P1.host (Subject: Grüße aus Berlin): BAD Command Error. 10")
    assert subject_of(b"From: a@b\n\nno subject\n") is None


def test_a_refusal_of_the_folder_stops_its_uploads() -> None:
    refused = RefusedUploads("work", "Sent")
    with pytest.raises(FolderError, match=r"work/Sent: .*OVERQUOTA"):
        refused.add("k", b"Subject: s\n\n", "NO [OVERQUOTA] quota exceeded")


def test_refusals_in_a_row_give_up_until_the_next_sync() -> None:
    refused = RefusedUploads("work", "Sent")
    for n in range(MAX_REFUSALS_IN_A_ROW - 1):
        refused.add(f"k{n}", b"\n", "BAD no")
    refused.accepted()
    assert not refused.give_up
    for n in range(MAX_REFUSALS_IN_A_ROW):
        refused.add(f"j{n}", b"\n", "BAD no")
    assert refused.give_up
    refused.not_tried = 7
    assert refused.error().endswith(
        f"and {2 * MAX_REFUSALS_IN_A_ROW - 1 - 5} more; 7 more not tried after "
        f"{MAX_REFUSALS_IN_A_ROW} refusals in a row")
