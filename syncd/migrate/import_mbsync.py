"""~/.mbsyncrc -> syncd accounts: one per IMAPAccount and Maildir store pair (the channels
between them, a Group's members included, together)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from syncd.migrate.importer import NOT_BUILT, ImportedAccount, account_name
from syncd.migrate.mbsyncrc import Channel, Section, channels, load_mbsyncrc

# Account/store keywords that are carried over, or that need no counterpart.
_ACCOUNT_DONE = {"host", "port", "user", "pass", "passcmd", "ssltype", "certificatefile",
                 "account", "path", "trash", "usenamespace", "pathdelimiter",
                 "sslversions", "systemcertificates", "timeout", "pipelinedepth",
                 "authmechs", "disableextension", "disableextensions", "maxsize"}
_STORE_DONE = {"path", "inbox", "subfolders", "flatten", "infodelimiter", "maxsize"}
_CHANNEL_DONE = {"far", "near", "patterns", "syncstate", "sync", "create", "remove",
                 "expunge", "maxmessages", "maxsize", "expireunread", "copyarrivaldate"}
# The value under which mbsync does what syncd does anyway (nothing to report).
_SAME_AS_SYNCD = {"sync": {"all", "full"}, "create": {"both"}, "remove": {"none"},
                  "expunge": {"none"}}
_WHY = {
    "sync": f"`direction:` {NOT_BUILT}; syncd syncs both ways, new mail, flags and deletions",
    "create": f"`create_folders:` {NOT_BUILT}; syncd creates missing folders on both sides",
    "remove": f"`create_folders:`/`delete:` {NOT_BUILT}; syncd never removes a folder",
    "expunge": f"`delete:` {NOT_BUILT}; syncd expunges only what you deleted (a \\Deleted "
               f"flag alone is synced as the T flag)",
    "maxmessages": f"`max_messages:` {NOT_BUILT}; syncd mirrors every message",
    "maxsize": f"`max_size:` {NOT_BUILT}; syncd mirrors messages of any size",
    "expireunread": f"`max_messages:` {NOT_BUILT}",
    "copyarrivaldate": "syncd keeps the server's INTERNALDATE as the file's time already",
}


def import_mbsync(path: Path) -> list[ImportedAccount]:
    config = load_mbsyncrc(path)
    groups: dict[tuple[str, str], list[Channel]] = {}
    for channel in channels(config):
        groups.setdefault((channel.account.name, channel.near.name), []).append(channel)
    accounts = []
    names: set[str] = set()
    for (imap_name, _store), members in groups.items():
        # An old-style IMAPStore (no IMAPAccount) is named after its first channel.
        first = members[0]
        name = account_name(imap_name if first.account is not first.far else first.name)
        if name in names:  # one IMAP account, two Maildir stores
            name = account_name(f"{imap_name}-{members[0].near.name}")
        names.add(name)
        accounts.append(_account(name, members, path))
    return accounts


def _account(name: str, members: list[Channel], path: Path) -> ImportedAccount:
    first = members[0]
    where = ", ".join(f"Channel {c.name} (line {c.section.line})" for c in members)
    result = ImportedAccount(name, f"{path}: {where}")
    _server(result, first.account)
    if first.far is not first.account:
        _server(result, first.far)
    _maildir(result, first.near)
    _folders(result, members)
    for channel in members:
        _channel_policy(result, channel)
    for section, done in ((first.account, _ACCOUNT_DONE), (first.far, _ACCOUNT_DONE),
                          (first.near, _STORE_DONE)):
        _unknown(result, section, done)
    return result


def _server(result: ImportedAccount, section: Section) -> None:
    s = result.settings
    if section.get("host"):
        s["host"] = section.get("host")
    ssl = (section.get("ssltype") or "").lower()
    tls = {"imaps": "implicit", "starttls": "starttls", "none": "none"}.get(ssl)
    if tls is not None or "tls" not in s:
        s["tls"] = tls or "starttls"  # mbsync's default is STARTTLS
    if section.get("port"):
        s["port"] = int(section.get("port") or 0)
    if tls == "none":
        s["allow_insecure"] = True
        result.not_carried.append("SSLType None: carried over as `tls: none` with "
                                  "`allow_insecure: true`: the password crosses the network "
                                  "unencrypted; consider IMAPS")
    if section.get("certificatefile"):
        s["tls_ca_file"] = os.path.expanduser(section.get("certificatefile") or "")
    if section.get("user"):
        s["username"] = section.get("user")
    passcmd = section.get("passcmd")
    if passcmd:
        # A leading '+' makes mbsync run the command in the foreground (it may ask).
        s["password_command"] = passcmd.removeprefix("+")
    elif section.get("pass"):
        result.skip("Pass", "(hidden)", f"a password written in the file is not copied into "
                    f"syncd's; store it with `syncd password set {result.name}`")
    if (section.get("systemcertificates") or "").lower() == "no":
        result.skip("SystemCertificates", "no", "syncd always trusts the system's CAs as "
                    "well as tls_ca_file")
    mechs = section.get("authmechs") or ""
    if "XOAUTH2" in mechs.upper() or "OAUTHBEARER" in mechs.upper():
        result.skip("AuthMechs", mechs, "OAuth2 is `auth: oauth2` with a provider; run "
                    f"`syncd auth {result.name}` after setting it up (see the README)")
    timeout = section.get("timeout")
    if timeout and timeout.isdigit() and int(timeout) > 0:
        s["timeout"] = int(timeout)
    if section.get("path"):
        result.skip("Path", section.get("path"), "syncd finds the server's namespace prefix "
                    "itself; for another prefix use folders: include")
    if section.get("trash"):
        s["trash_folder"] = section.get("trash")


def _maildir(result: ImportedAccount, store: Section) -> None:
    style = (store.get("subfolders") or "").lower()
    inbox = os.path.expanduser(store.get("inbox") or "~/Maildir")
    prefix = os.path.expanduser(store.get("path") or "")
    if style == "maildir++":
        result.settings["maildir"] = inbox.rstrip("/")
        result.settings["layout"] = "maildir++"
        return
    root = prefix.rstrip("/") if prefix.endswith("/") else os.path.dirname(prefix) or prefix
    result.settings["maildir"] = root
    result.settings["layout"] = "verbatim"
    if style == "legacy" or store.get("flatten"):
        setting = "SubFolders Legacy" if style == "legacy" else f"Flatten {store.get('flatten')}"
        result.not_carried.append(f"{setting}: not carried over: syncd lays folders out as "
                                  f"A/B (`layout: verbatim`) or .A.B (`layout: maildir++`); "
                                  f"`syncd adopt` keeps existing folders where it can and "
                                  f"says which it cannot")
    if os.path.abspath(inbox) != os.path.join(os.path.abspath(root), "INBOX"):
        result.not_carried.append(f"Inbox {store.get('inbox') or '~/Maildir'}: not carried "
                                  f"over: syncd keeps INBOX at <maildir>/INBOX; `syncd adopt` "
                                  f"keeps it where it is if it lies inside the maildir")


def _folders(result: ImportedAccount, members: list[Channel]) -> None:
    include: list[str] = []
    exclude: list[str] = []
    for channel in members:
        patterns = channel.option_args("patterns")
        if patterns is None:
            box = channel.far_box or "INBOX"
            include.append(_glob(box))
            if channel.near_box and channel.near_box != box:
                result.skip(f"Channel {channel.name}", f"{channel.far_box} -> "
                            f"{channel.near_box}", "syncd names local folders after the "
                            "server's; the folder is synced under its server name")
            continue
        _patterns(result, channel, patterns, include, exclude)
    folders: dict[str, list[str]] = {"include": include or ["*"]}
    if exclude:
        folders["exclude"] = exclude
    result.settings["folders"] = folders


def _patterns(result: ImportedAccount, channel: Channel, patterns: list[str],
              include: list[str], exclude: list[str]) -> None:
    """mbsync: the last pattern that matches decides. syncd: exclude wins over include. The
    same when every exclusion comes after every inclusion; said otherwise."""
    prefix = channel.far_box
    negatives: list[tuple[str, str]] = []  # (pattern text, glob) of the exclusions so far
    for pattern in patterns:
        negative = pattern.startswith("!")
        body = prefix + pattern.lstrip("!")
        if "%" in body:
            result.skip("Patterns", pattern, "'%' (one level only) has no syncd glob; carried "
                        "over as '*', which also matches subfolders")
        glob = _glob(body).replace("%", "*")
        if negative:
            negatives.append((body, glob))
            exclude.append(glob)
        else:
            if any(fnmatch.fnmatchcase(body, g) or fnmatch.fnmatchcase(b, glob)
                   for b, g in negatives):
                result.skip("Patterns", pattern, "an inclusion after an exclusion re-includes "
                            "folders in mbsync; in syncd exclude wins, so these stay excluded: "
                            "narrow folders: exclude by hand")
            include.append(glob)


def _glob(name: str) -> str:
    # '*' keeps its meaning; '[' and '?' are literal in mbsync but special in syncd's globs.
    return name.replace("[", "[[]").replace("?", "[?]")


def _channel_policy(result: ImportedAccount, channel: Channel) -> None:
    for key in ("sync", "create", "remove", "expunge", "maxmessages", "maxsize",
                "expireunread", "copyarrivaldate"):
        value = channel.option(key)
        if value is None and key == "maxsize":
            value = channel.near.get("maxsize") or channel.far.get("maxsize")
        if value is None:
            continue
        if value.lower() in _SAME_AS_SYNCD.get(key, set()):
            continue
        if key == "maxmessages" and value == "0":
            continue
        pretty = {"maxmessages": "MaxMessages", "maxsize": "MaxSize",
                  "expireunread": "ExpireUnread", "copyarrivaldate": "CopyArrivalDate"}.get(
                      key, key.capitalize())
        note = f"{pretty} {value} (Channel {channel.name}): not carried over: {_WHY[key]}"
        if note not in result.not_carried:
            result.not_carried.append(note)
    _unknown(result, channel.section, _CHANNEL_DONE)


def _unknown(result: ImportedAccount, section: Section, done: set[str]) -> None:
    for key, values in section.options.items():
        if key in done:
            continue
        note = (f"{key} {' '.join(values[-1])} ({section.kind} {section.name}): not carried "
                f"over: syncd has no equivalent")
        if note not in result.not_carried:
            result.not_carried.append(note)
