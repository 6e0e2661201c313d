"""~/.mbsyncrc -> syncd accounts: one per IMAPAccount and Maildir store pair (the channels
between them, a Group's members included, together)."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from syncd.migrate.importer import ImportedAccount, account_name
from syncd.migrate.mbsyncrc import Channel, Section, channels, load_mbsyncrc

# Account/store keywords that are carried over, or that need no counterpart.
_ACCOUNT_DONE = {"host", "port", "user", "pass", "passcmd", "ssltype", "certificatefile",
                 "account", "path", "trash", "usenamespace", "pathdelimiter",
                 "sslversions", "systemcertificates", "timeout", "pipelinedepth",
                 "authmechs", "disableextension", "disableextensions", "maxsize"}
_STORE_DONE = {"path", "inbox", "subfolders", "flatten", "infodelimiter", "maxsize"}
_CHANNEL_DONE = {"far", "near", "patterns", "syncstate", "sync", "create", "remove",
                 "expunge", "maxmessages", "maxsize", "expireunread", "copyarrivaldate"}
_WHY = {
    "remove": "syncd never removes a folder; remove it on the other side by hand",
    "maxsize": "MaxSize on the server's store limits uploads; syncd uploads every message",
    "copyarrivaldate": "syncd keeps the server's INTERNALDATE as the file's time already",
}
# Sync operations (mbsync(1) 1.4, and 1.5's spellings): what each moves.
_OPS = {"new": "new", "renew": "new", "upgrade": "new", "old": "new", "delete": "delete",
        "gone": "delete", "flags": "flags"}
_SIDES = {"far": "far", "master": "far", "near": "near", "slave": "near", "both": "both",
          "none": "none"}


@dataclass
class _Policy:
    """One channel's policy in syncd's keys; ``sides``: where syncd writes (server, local)."""

    sides: frozenset[str]  # subset of {"server", "local"}; empty: the channel syncs nothing
    deletes: frozenset[str]
    create: frozenset[str]
    max_messages: int | None
    notes: list[str]


def _sync_ops(value: str | None) -> tuple[dict[str, set[str]], list[str]]:
    """mbsync's ``Sync`` -> the operations toward each side (``pull``: far -> near, i.e. to
    the Maildir; ``push``: near -> far, to the server). Default: All."""
    ops: dict[str, set[str]] = {"pull": set(), "push": set()}
    unknown = []
    if value is None:
        value = "All"
    dirs: set[str] = set()
    common: set[str] = set()
    for word in value.lower().split():
        if word in ("all", "full"):
            dirs |= {"pull", "push"}
        elif word in ("pull", "push"):
            dirs.add(word)
        elif word in _OPS:
            common.add(_OPS[word])
        elif word[:4] in ("pull", "push") and word[4:] in _OPS:
            ops[word[:4]].add(_OPS[word[4:]])
        elif word not in ("none", "noop"):
            unknown.append(word)
    if dirs or common:
        for way in dirs or {"pull", "push"}:
            ops[way] |= common or {"new", "delete", "flags"}
    return ops, unknown


def _policy(channel: Channel) -> _Policy:
    sync = channel.option("sync")
    ops, unknown = _sync_ops(sync)
    notes = [f"Sync {sync} (Channel {channel.name}): '{w}' not understood; treated as "
             f"nothing" for w in unknown]
    to = {"local": ops["pull"], "server": ops["push"]}
    sides = frozenset(side for side, moved in to.items() if moved & {"new", "flags"})
    shown = f"Sync {sync or 'All (default)'} (Channel {channel.name})"
    if not sides:
        notes.append(f"{shown}: the channel moves no message or flag; its folders are left "
                     f"out (folders: exclude)" + (": mbsync's propagated deletions alone are "
                     "not carried over" if to["local"] | to["server"] else ""))
    for side in sorted(sides):
        moved = to[side]
        where = "to the server" if side == "server" else "to the Maildir"
        if "new" not in moved:
            notes.append(f"{shown}: carried over as direction including {where}, which also "
                         f"copies new messages {where} (mbsync copied only flag changes)")
        elif "flags" not in moved:
            notes.append(f"{shown}: carried over as direction including {where}, which also "
                         f"syncs flag changes {where} (mbsync copied only new messages)")
    expunge_value = channel.option("expunge")
    expunge = _SIDES.get((expunge_value or "none").lower(), "none")
    expunged = {"far": {"server"}, "near": {"local"}, "both": {"server", "local"}}.get(
        expunge, set())
    deletes = frozenset(side for side in sides if "delete" in to[side] and side in expunged)
    for side in sorted(sides):
        if "delete" in to[side] and side not in expunged:
            what = "server: \\Deleted" if side == "server" else "Maildir: the T flag"
            notes.append(f"Expunge {expunge_value or 'None (default)'} (Channel "
                         f"{channel.name}): mbsync only marked a message deleted elsewhere as "
                         f"deleted on the {what}, never expunging it; carried over as delete: "
                         f"not propagating those deletions (the copy stays, untracked, "
                         f"unmarked); set delete: to propagate them as real deletions")
    if expunged and expunge_value:
        notes.append(f"Expunge {expunge_value} (Channel {channel.name}): syncd expunges only "
                     f"messages deleted on the other side; a message merely flagged deleted "
                     f"(T / \\Deleted) is synced as a flag, not expunged as mbsync did")
    create_value = channel.option("create")
    create_side = _SIDES.get((create_value or "none").lower(), "none")
    create = frozenset({"far": {"server"}, "near": {"local"}, "both": {"server", "local"}}.get(
        create_side, set()))
    max_messages = None
    raw = channel.option("maxmessages")
    if raw and raw.isdigit() and int(raw) > 0:
        max_messages = int(raw)
        unread = (channel.option("expireunread") or "").lower() in ("yes", "true", "on", "1")
        notes.append(f"MaxMessages {raw} (Channel {channel.name}): carried over as "
                     f"max_messages; unlike mbsync, syncd deletes no local copy that falls out "
                     f"of the window (it stays, untracked) and does not keep older "
                     + ("flagged" if unread else "flagged or unread") + " messages mirrored")
    elif raw and not raw.isdigit():
        notes.append(f"MaxMessages {raw} (Channel {channel.name}): not carried over: not a "
                     f"number")
    if channel.option("expireunread") and max_messages is None:
        notes.append(f"ExpireUnread {channel.option('expireunread')} (Channel "
                     f"{channel.name}): not carried over: it only matters with MaxMessages")
    return _Policy(sides, deletes, create, max_messages, notes)


def _keys(policy: _Policy) -> dict[str, object]:
    """The syncd keys of a policy, every one."""
    direction = {frozenset({"server", "local"}): "both", frozenset({"local"}): "pull",
                 frozenset({"server"}): "push"}.get(policy.sides, "pull")
    delete = {frozenset({"server", "local"}): "both", frozenset({"local"}): "pull",
              frozenset({"server"}): "push"}.get(policy.deletes, "none")
    create = {frozenset({"server", "local"}): "both", frozenset({"local"}): "local",
              frozenset({"server"}): "server"}.get(policy.create, "none")
    keys: dict[str, object] = {"direction": direction, "delete": delete,
                               "create_folders": create}
    if policy.max_messages is not None:
        keys["max_messages"] = policy.max_messages
    return keys


_DEFAULTS = {"direction": "both", "delete": "both", "create_folders": "both"}


def _apply_policies(result: ImportedAccount, members: list[Channel],
                    policies: dict[str, _Policy]) -> None:
    """One channel's policy is the account's. Several differing: the account gets the most
    conservative of them (what every channel allows), and a channel on one mailbox (no
    Patterns) gets its own through folder_settings."""
    live = [policies[c.name] for c in members if policies[c.name].sides]
    if not live:
        return
    sides = frozenset.intersection(*(p.sides for p in live))
    counts = [p.max_messages for p in live if p.max_messages is not None]
    meet = _Policy(sides, frozenset.intersection(*(p.deletes for p in live)),
                   frozenset.intersection(*(p.create for p in live)),
                   min(counts) if counts else None, [])
    account = _keys(meet)
    if not sides:
        result.not_carried.append("Sync: the channels copy in opposite directions; the "
                                  "account is carried over as direction: pull, delete: none "
                                  "(adjust by hand)")
    for key, value in account.items():
        if _DEFAULTS.get(key) != value:
            result.settings[key] = value
    overrides: dict[str, dict[str, object]] = {}
    for channel in members:
        policy = policies[channel.name]
        if not policy.sides:
            continue
        mine = _keys(policy)
        differs = {k: v for k, v in mine.items() if account.get(k) != v}
        if policy.max_messages is None and meet.max_messages is not None:
            differs.pop("max_messages", None)
            result.not_carried.append(f"Channel {channel.name}: mirrors only the newest "
                                      f"{meet.max_messages} (another channel's MaxMessages): "
                                      f"syncd has one window per folder setting")
        if not differs:
            continue
        if channel.option_args("patterns") is None:
            overrides[_glob(channel.far_box or "INBOX")] = differs
        else:
            result.not_carried.append(
                f"Channel {channel.name}: its own policy ("
                + ", ".join(f"{k}: {v}" for k, v in differs.items())
                + ") not carried over: its Patterns span several folders; it gets the "
                  "account's, which writes and deletes no more")
    if overrides:
        result.settings["folder_settings"] = overrides


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
    policies = {c.name: _policy(c) for c in members}
    _folders(result, members, policies)
    for channel in members:
        _channel_policy(result, channel, policies[channel.name])
    _apply_policies(result, members, policies)
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


def _folders(result: ImportedAccount, members: list[Channel],
             policies: dict[str, _Policy]) -> None:
    include: list[str] = []
    exclude: list[str] = []
    for channel in members:
        patterns = channel.option_args("patterns")
        if not policies[channel.name].sides:  # syncs nothing: its folders are left out
            exclude += [_glob(channel.far_box + p) for p in patterns or [] if
                        not p.startswith("!")] if patterns else [_glob(channel.far_box or
                                                                       "INBOX")]
            continue
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


def _channel_policy(result: ImportedAccount, channel: Channel, policy: _Policy) -> None:
    for note in policy.notes:
        if note not in result.not_carried:
            result.not_carried.append(note)
    _max_size(result, channel)
    for key in ("remove", "maxsize", "copyarrivaldate"):
        value = channel.option(key) if key != "maxsize" else channel.far.get("maxsize")
        if value is None or (key == "remove" and value.lower() == "none"):
            continue
        pretty = {"maxsize": "MaxSize", "copyarrivaldate": "CopyArrivalDate"}.get(
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


def _max_size(result: ImportedAccount, channel: Channel) -> None:
    """MaxSize of the Maildir store (or the channel's, mbsync 1.5): messages bigger than that
    are not brought down. syncd's max_size mirrors them as placeholders instead (headers and
    a note; `syncd fetch` gets the whole message), so nothing is silently missing. Several
    channels: the smallest wins (the least disk)."""
    value = channel.near.get("maxsize") or channel.option("maxsize")
    if value is None:
        return
    size = mbsync_size(value)
    if size is None:
        result.skip(f"MaxSize (Channel {channel.name})", value, "not a size")
        return
    current = result.settings.get("max_size")
    if isinstance(current, int) and current <= size:
        return
    result.settings["max_size"] = size
    note = (f"MaxSize {value} (Channel {channel.name}): carried over as max_size: {size} "
            f"(bytes); bigger messages become placeholders (headers only; `syncd fetch FILE` "
            f"gets one whole) instead of being left out")
    if note not in result.not_carried:
        result.not_carried.append(note)


def mbsync_size(text: str) -> int | None:
    """mbsync's size grammar, ``size[k|m][b]`` (k = 1024, m = 1024 * 1024) -> bytes."""
    match = re.fullmatch(r"(\d+)\s*([kKmM]?)[bB]?", text.strip())
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
