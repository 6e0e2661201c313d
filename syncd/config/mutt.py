"""`syncd mutt-config ACCOUNT`: a neomutt snippet for an account's Maildir.

Offline by design (it reads local files only):

- the folders: the account's state database (every folder syncd syncs), else the folders
  found in the local maildir;
- the special-use folders (Sent, Drafts, Trash): what the server said in its LIST
  (``\\Sent``, ``\\Drafts``, ``\\Trash``, RFC 6154), recorded by ``syncd check`` in
  ``<state_dir>/<account>.folders.json`` with the personal namespace; else well-known names
  (``Sent Items``, ``[Gmail]/Sent Mail``, ...) among the synced folders and the server's;
  a folder not synced yet gets the place a sync will give it: without the namespace prefix
  (Courier's ``INBOX.Sent`` is ``+Sent``, as syncd/imap/folder_map.py lays it out);
- sending: through syncd's outbox (``set sendmail = "syncd send -oi"``) when the account has
  an SMTP server (``smtp``, or a provider preset's); ``record`` is then unset where syncd
  (``save_sent``) or the provider files the sent copy, so it appears once, not twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from syncd.core.folders import NO_NAMESPACE, Namespace, local_components, without_prefix
from syncd.core.model import RemoteFolder

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings

__all__ = ["ROLES", "render", "roles_path", "save_roles"]

#: neomutt variable -> (special-use flag, well-known names to fall back on, lower case).
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "record": ("\\Sent", ("sent", "sent items", "sent messages", "sent mail", "[gmail]/sent mail",
                          "[google mail]/sent mail", "inbox/sent", "inbox.sent", "gesendet",
                          "gesendete elemente", "envoyés", "éléments envoyés")),
    "postponed": ("\\Drafts", ("drafts", "draft", "[gmail]/drafts", "[google mail]/drafts",
                               "inbox/drafts", "inbox.drafts", "entwürfe", "brouillons")),
    "trash": ("\\Trash", ("trash", "deleted items", "deleted messages", "bin", "[gmail]/trash",
                          "[gmail]/bin", "[google mail]/trash", "[google mail]/bin",
                          "inbox/trash", "inbox.trash", "papierkorb", "gelöschte elemente",
                          "corbeille")),
}


def roles_path(account: AccountSettings) -> Path:
    return account.state_dir / f"{account.name}.folders.json"


def save_roles(account: AccountSettings, folders: Iterable[RemoteFolder],
               namespace: Namespace = NO_NAMESPACE) -> None:
    """Record the server's folder list with special-use flags and the personal namespace
    (called by `syncd check`). Best effort: a read-only state directory only costs
    mutt-config its exact answer."""
    data = {"folders": [{"name": f.name, "delimiter": f.delimiter, "special_use": f.special_use,
                         "noselect": f.noselect} for f in folders],
            "namespace": {"prefix": namespace.prefix, "delimiter": namespace.delimiter}}
    path = roles_path(account)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".folders-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class ServerFolders(NamedTuple):
    """What `syncd check` recorded of the server's folders."""

    folders: list[RemoteFolder]
    namespace: Namespace


def _load_roles(account: AccountSettings) -> ServerFolders | None:
    try:
        data = json.loads(roles_path(account).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("folders"), list):
        return None
    folders = [_remote_folder(f) for f in data["folders"] if isinstance(f, dict)]
    return ServerFolders(folders, _namespace(data.get("namespace")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _remote_folder(entry: dict[str, object]) -> RemoteFolder:
    return RemoteFolder(name=str(entry.get("name")), delimiter=_text(entry.get("delimiter")),
                        noselect=bool(entry.get("noselect")),
                        special_use=_text(entry.get("special_use")))


def _namespace(entry: object) -> Namespace:
    """A file written before syncd recorded the namespace has none: no prefix (as then)."""
    if not isinstance(entry, dict):
        return NO_NAMESPACE
    return Namespace(_text(entry.get("prefix")) or "", _text(entry.get("delimiter")))


def _state_folders(account: AccountSettings) -> dict[str, Path] | None:
    """remote name -> local path, from the state database (read-only; None if absent)."""
    path = account.state_path
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        rows = conn.execute("SELECT remote_name, local_path FROM folder").fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return {str(name): Path(local) for name, local in rows}


def _local_folders(account: AccountSettings) -> dict[str, Path]:
    from syncd.store.maildir import Maildir

    maildir = Maildir(account.maildir, account.layout)
    result: dict[str, Path] = {}
    for name in maildir.list_folders():
        result["/".join(name)] = maildir.local_path(name)
    return result


def _local_path(account: AccountSettings, folder: RemoteFolder,
                namespace: Namespace = NO_NAMESPACE) -> Path:
    """Where a sync puts a server folder it has not synced yet: without the personal
    namespace prefix (the engine's rule 2 in syncd/imap/folder_map.py)."""
    from syncd.store.maildir import Maildir

    return Maildir(account.maildir, account.layout).local_path(
        local_components(folder, namespace))


def _quote(value: str) -> str:
    """A muttrc double-quoted string: backslash, quote, backtick and $ escaped (no command
    or variable expansion of folder names)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
               .replace("$", "\\$"))
    return f'"{escaped}"'


def _mailbox(root: Path, path: Path) -> str:
    """``+relative`` under $folder where possible (shorter, survives moving the tree)."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return "+" + str(relative) if str(relative) != "." else str(root)


def _pick_roles(account: AccountSettings, folders: Mapping[str, Path]) -> dict[str, Path]:
    """neomutt variable -> local path of the matching folder: the server's special-use
    flag first, then a well-known name among the synced folders, then among the server's."""
    server = _load_roles(account) or ServerFolders([], NO_NAMESPACE)

    def place(folder: RemoteFolder) -> Path:
        return folders.get(folder.name) or _local_path(account, folder, server.namespace)

    chosen: dict[str, Path] = {}
    for variable, (flag, _names) in ROLES.items():
        marked = next((f for f in server.folders
                       if (f.special_use or "").lower() == flag.lower()), None)
        if marked is not None:
            chosen[variable] = place(marked)
    by_name = {name.lower(): path for name, path in folders.items()}
    listed = _by_short_name([f for f in server.folders if not f.noselect], server.namespace)
    for variable, (_flag, names) in ROLES.items():
        if variable in chosen:
            continue
        found = next((by_name[n] for n in names if n in by_name), None)
        if found is None:
            found = next((place(listed[n]) for n in names if n in listed), None)
        if found is not None:
            chosen[variable] = found
    return chosen


def _by_short_name(folders: Iterable[RemoteFolder], namespace: Namespace
                   ) -> dict[str, RemoteFolder]:
    """Server folders by lower-case name, and by the name without the personal prefix
    (Courier's INBOX.Sent answers to "sent"), the full names winning."""
    found: dict[str, RemoteFolder] = {}
    for folder in folders:
        short = without_prefix(folder.name, namespace)
        if short is not None:
            found.setdefault(short.lower(), folder)
    found.update({f.name.lower(): f for f in folders})
    return found


def _files_sent_elsewhere(account: AccountSettings) -> bool:
    """Whether the copy of a sent message reaches the server's Sent folder without mutt's
    ``record``: syncd APPENDs it (save_sent) or the provider files it."""
    if account.smtp is None:
        return False
    from syncd.config.presets import ACCOUNT_PRESETS, saves_sent

    preset = ACCOUNT_PRESETS.get(account.provider or "")
    return saves_sent(account) or (preset is not None and preset.files_sent)


def render(account: AccountSettings, config_path: Path | None = None) -> str:
    """The snippet for ``account`` (text ending in a newline); ``config_path`` (not the
    default one) goes into the sendmail command."""
    root = account.maildir
    folders = _state_folders(account)
    source = "syncd's state"
    if not folders:
        folders = _local_folders(account)
        source = "the local maildir"
    inbox = next((path for name, path in folders.items() if name.upper() == "INBOX"), None)
    if inbox is None:
        inbox = _local_path(account, RemoteFolder("INBOX", None, False, None))
        folders = {"INBOX": inbox, **folders}
    lines = [
        f"# neomutt settings for syncd account {account.name!r}",
        f"# generated by `syncd mutt-config {account.name}`; folders from {source}",
        "# use it with:  source /path/to/this/file   (in your neomuttrc)",
        "set mbox_type = Maildir",
        f"set folder = {_quote(str(root))}",
        f"set spoolfile = {_quote(_mailbox(root, inbox))}",
    ]
    if account.protocol == "imap":
        roles = _pick_roles(account, folders)
        for variable in ("record", "postponed", "trash"):
            path = roles.get(variable)
            if variable == "record" and _files_sent_elsewhere(account):
                # mutt's own copy would be uploaded by the sync: a second one on the server.
                lines.append("unset record  # the sent copy is filed in the server's Sent "
                             "folder (syncd save_sent, or the provider) and synced down")
            elif path is None:
                lines.append(f"# {variable}: no {ROLES[variable][0]} folder found "
                             f"(run `syncd check {account.name}` first to ask the server)")
            elif variable == "trash" and account.trash_folder:
                # syncd already moves deleted messages to trash_folder on the server; neomutt
                # moving them too would leave two copies there.
                lines.append(f"# trash: not set, syncd's trash_folder ({account.trash_folder}) "
                             f"already keeps deleted messages")
            else:
                lines.append(f"set {variable} = {_quote(_mailbox(root, path))}")
    else:
        lines.append("# POP3 account: only INBOX is fetched; record/postponed stay local")
    if "@" in account.username:
        lines.append(f"set from = {_quote(account.username)}")
    lines += _smtp_lines(account, config_path)
    ordered = sorted(folders.items(), key=lambda item: (item[0].upper() != "INBOX", item[0]))
    # neomutt rejects a `mailboxes` entry that does not exist (yet): list what is on disk.
    present = [path for _name, path in ordered if (path / "cur").is_dir()]
    if present:
        lines.append("mailboxes " + " ".join(_quote(_mailbox(root, p)) for p in present))
    if len(present) < len(ordered):
        lines.append(f"# not on disk yet (run `syncd sync {account.name}`, then this again): "
                     + ", ".join(name for name, path in ordered if path not in present))
    return "\n".join(lines) + "\n"


def _smtp_lines(account: AccountSettings, config_path: Path | None = None) -> list[str]:
    if account.smtp is not None:
        # mutt splits $sendmail at spaces: a config path with spaces cannot be passed.
        config = f"--config {config_path} " if config_path and " " not in str(config_path) \
            else ""
        # -oi: read to the end of input (without it, sendmail's rule ends the message at a
        # line holding a single dot, which a mail body can contain).
        return [f"set sendmail = {_quote(f'syncd {config}send -oi')}",
                "unset smtp_url  # mail goes through syncd's outbox (`syncd outbox` lists it)",
                "set sendmail_wait = 0"]
    return ["# sending: no SMTP server known for this account (set smtp: {host: ...} in the "
            "syncd config to send through syncd's outbox, or set smtp_url here)"]
