"""~/.offlineimaprc -> syncd accounts: one per [Account] with an IMAP remote and a Maildir
local repository. Python-expression options are matched against their common forms only."""

from __future__ import annotations

import ast
import os
import re
import shlex
from pathlib import Path

from syncd.migrate.importer import ImportedAccount, account_name
from syncd.migrate.offlineimaprc import OfflineimapAccount, folder_filter, load_offlineimaprc

_REMOTE_DONE = {"type", "remotehost", "remoteport", "ssl", "starttls", "sslcacertfile",
                "remoteuser", "remotepass", "remotepasseval", "remotepassfile", "folderfilter",
                "folderincludes", "idlefolders", "readonly", "maxage", "maxsize", "expunge",
                "createfolders", "nametrans", "ssl_version", "tls_level", "maxconnections",
                "holdconnectionopen", "keepalive"}
_LOCAL_DONE = {"type", "localfolders", "sep", "sync_deletes", "readonly", "maxage", "maxsize",
               "createfolders", "nametrans", "folderfilter", "filename_use_mail_timestamp",
               "utime_from_header"}
_ACCOUNT_DONE = {"localrepository", "remoterepository", "autorefresh", "quick", "maxage",
                 "maxsize", "startdate", "synclabels"}
_POLICY = {
    "startdate": "syncd's `max_age:` is a window sliding daily, not a fixed first date; set "
                 "max_age by hand",
}


def import_offlineimap(path: Path) -> list[ImportedAccount]:
    accounts = []
    for config in load_offlineimaprc(path):
        remote_type = config.remote.get("type", "").strip().lower()
        local_type = config.local.get("type", "").strip().lower()
        if remote_type not in ("imap", "gmail") or local_type not in ("maildir",
                                                                      "gmailmaildir"):
            continue
        accounts.append(_account(config, path))
    return accounts


def _account(config: OfflineimapAccount, path: Path) -> ImportedAccount:
    result = ImportedAccount(account_name(config.name), f"{path}: [Account {config.name}]")
    remote = config.remote
    _server(result, remote, config.remote_name)
    _password(result, remote)
    if config.localfolders is not None:
        result.settings["maildir"] = str(config.localfolders)
    result.settings["layout"] = "verbatim"
    if config.sep != "/":
        result.skip("sep", repr(config.sep), "offlineimap keeps A/B as one folder 'A"
                    f"{config.sep}B'; syncd makes new folders as A/B (layout verbatim); "
                    "`syncd adopt` keeps the existing folders where they are")
    _folders(result, remote)
    autorefresh = config.account.get("autorefresh")
    if autorefresh and re.fullmatch(r"\d+(\.\d+)?", autorefresh.strip()):
        result.settings["poll_interval"] = f"{round(float(autorefresh) * 60)}s"
    for label, section, done in ((f"Account {config.name}", config.account, _ACCOUNT_DONE),
                                 (f"Repository {config.remote_name}", remote, _REMOTE_DONE),
                                 (f"Repository {config.local_name}", config.local,
                                  _LOCAL_DONE)):
        _policy_and_unknown(result, label, section, done)
    _policy(result, config)
    return result


def _policy(result: ImportedAccount, config: OfflineimapAccount) -> None:
    """readonly -> direction; expunge (remote) / sync_deletes (local) -> delete;
    createfolders -> create_folders; maxage (days) -> max_age; maxsize -> max_size."""
    remote, local = config.remote, config.local
    sides = {"server", "local"}
    if _bool(remote.get("readonly"), False):
        sides.discard("server")
    if _bool(local.get("readonly"), False):
        sides.discard("local")
    deletes = set(sides)
    if not _bool(remote.get("expunge"), True):
        deletes.discard("server")
        result.not_carried.append(f"expunge = {remote['expunge']} ([Repository "
                                  f"{config.remote_name}]): carried over as delete: not "
                                  f"propagating local deletions to the server (offlineimap "
                                  f"left them flagged \\Deleted there; syncd leaves them "
                                  f"untracked, unflagged)")
    if not _bool(local.get("sync_deletes"), True):
        deletes.discard("local")
    create = {side for side, repo in (("server", remote), ("local", local))
              if _bool(repo.get("createfolders"), True)}
    names = {frozenset({"server", "local"}): "both", frozenset({"local"}): "pull",
             frozenset({"server"}): "push"}
    s = result.settings
    if not sides:
        result.not_carried.append("readonly = True on both repositories: offlineimap synced "
                                  "nothing; carried over as direction: pull, delete: none")
        s["direction"], s["delete"] = "pull", "none"
    elif len(sides) == 1:
        s["direction"] = names[frozenset(sides)]
    if sides and deletes != sides:
        s["delete"] = names.get(frozenset(deletes), "none")
    if create != {"server", "local"}:
        s["create_folders"] = {frozenset({"local"}): "local",
                               frozenset({"server"}): "server"}.get(frozenset(create), "none")
    for label, section in ((f"Account {config.name}", config.account),
                           (f"Repository {config.remote_name}", remote),
                           (f"Repository {config.local_name}", local)):
        _max_size(result, label, section)
        value = (section.get("maxage") or "").strip()
        if not value:
            continue
        if value.isdigit() and int(value) > 0:
            s["max_age"] = f"{int(value)}d"
            result.not_carried.append(f"maxage = {value} ([{label}]): carried over as "
                                      f"max_age: {value}d (by INTERNALDATE; nothing outside "
                                      f"it is deleted, as in offlineimap)")
        else:
            result.skip(f"maxage ([{label}])", value, "not a number of days")


def _max_size(result: ImportedAccount, label: str, section: dict[str, str]) -> None:
    """maxsize (bytes): offlineimap leaves bigger messages out; syncd's max_size mirrors them
    as placeholders (headers only, `syncd fetch` gets one whole)."""
    value = (section.get("maxsize") or "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) <= 0:
        result.skip(f"maxsize ([{label}])", value, "not a number of bytes")
        return
    result.settings["max_size"] = int(value)
    result.not_carried.append(f"maxsize = {value} ([{label}]): carried over as max_size: "
                              f"{value} (bytes); bigger messages become placeholders (headers "
                              f"only; `syncd fetch FILE` gets one whole) instead of being "
                              f"left out")


def _server(result: ImportedAccount, remote: dict[str, str], name: str) -> None:
    s = result.settings
    if remote.get("type", "").strip().lower() == "gmail":
        s["host"] = "imap.gmail.com"
    if remote.get("remotehost"):
        s["host"] = remote["remotehost"].strip()
    ssl = _bool(remote.get("ssl"), True)
    starttls = _bool(remote.get("starttls"), True)
    s["tls"] = "implicit" if ssl else ("starttls" if starttls else "none")
    if s["tls"] == "none":
        s["allow_insecure"] = True
        result.not_carried.append("ssl no, starttls no: carried over as `tls: none` with "
                                  "`allow_insecure: true`: the password crosses the network "
                                  "unencrypted")
    if remote.get("remoteport"):
        s["port"] = int(remote["remoteport"])
    cafile = (remote.get("sslcacertfile") or "").strip()
    if cafile and cafile != "OS-DEFAULT":
        s["tls_ca_file"] = os.path.expanduser(cafile)
    if remote.get("cert_fingerprint"):
        result.skip("cert_fingerprint", remote["cert_fingerprint"], "syncd checks certificates "
                    "against CAs (tls_ca_file), not fingerprints")
    if remote.get("remoteuser"):
        s["username"] = remote["remoteuser"].strip()
    elif remote.get("remoteusereval"):
        result.skip("remoteusereval", remote["remoteusereval"], "a Python expression; set "
                    "username by hand")


def _bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("yes", "true", "on", "1")


def _password(result: ImportedAccount, remote: dict[str, str]) -> None:
    s = result.settings
    if remote.get("remotepasseval"):
        command = password_eval_command(remote["remotepasseval"])
        if command:
            s["password_command"] = command
        else:
            result.skip("remotepasseval", remote["remotepasseval"], "a Python expression "
                        "syncd does not evaluate; set password_command to a shell command "
                        "that prints the password")
    elif remote.get("remotepassfile"):
        s["password_command"] = "cat " + shlex.quote(os.path.expanduser(
            remote["remotepassfile"].strip()))
    elif remote.get("remotepass"):
        result.skip("remotepass", "(hidden)", "a password written in the file is not copied "
                    f"into syncd's; store it with `syncd password set {result.name}`")
    else:
        # offlineimap falls back to ~/.netrc (machine HOST login USER password PW).
        host, user = s.get("host", ""), s.get("username", "")
        s["password_command"] = (
            f"awk '$1 == \"machine\" && $2 == \"{host}\" && $4 == \"{user}\" "
            f"{{print $6; exit}}' ~/.netrc")
        result.not_carried.append("no password in the file: offlineimap reads ~/.netrc; "
                                  "carried over as a password_command reading ~/.netrc "
                                  "(one-line entries); or `syncd password set "
                                  f"{result.name}`")


def password_eval_command(expression: str) -> str | None:
    """The shell command of the common remotepasseval forms, never evaluated:
    ``subprocess.check_output(["pass", "x"])...``, ``check_output("cmd", shell=True)``,
    ``os.popen("cmd").read()...``."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else (
            node.func.id if isinstance(node.func, ast.Name) else "")
        if name not in ("check_output", "run", "popen", "getoutput") or not node.args:
            continue
        try:
            arg = ast.literal_eval(node.args[0])  # a literal only, never code
        except ValueError:
            return None
        if isinstance(arg, str):
            return arg.strip()
        if isinstance(arg, (list, tuple)) and all(isinstance(a, str) for a in arg):
            return shlex.join(arg)
    return None


def _folders(result: ImportedAccount, remote: dict[str, str]) -> None:
    include: list[str] | None = None
    exclude: list[str] = []
    if remote.get("folderfilter"):
        translation = folder_filter(remote["folderfilter"])
        if translation.problem:
            result.not_carried.append(translation.problem)
        include, exclude = translation.include, translation.exclude
    if remote.get("folderincludes"):
        try:
            extra = ast.literal_eval(remote["folderincludes"].strip())
            if include is not None:
                include += [str(x) for x in extra]
        except (ValueError, SyntaxError):
            result.skip("folderincludes", remote["folderincludes"], "not a literal list")
    folders: dict[str, list[str]] = {"include": include or ["*"]}
    if exclude:
        folders["exclude"] = exclude
    result.settings["folders"] = folders
    if remote.get("idlefolders"):
        try:
            idle = ast.literal_eval(remote["idlefolders"].strip())
            result.settings["idle"] = [str(x) for x in idle]
        except (ValueError, SyntaxError):
            result.skip("idlefolders", remote["idlefolders"], "not a literal list")


def _policy_and_unknown(result: ImportedAccount, label: str, section: dict[str, str],
                        done: set[str]) -> None:
    for key, value in section.items():
        if key in _POLICY:
            result.not_carried.append(f"{key} = {value} ([{label}]): not carried over: "
                                      f"{_POLICY[key]}")
        elif key == "nametrans":
            result.skip(f"nametrans ([{label}])", value, "syncd does not rename folders; "
                        "they keep the server's names")
        elif key not in done and key not in ("__name__",):
            result.not_carried.append(f"{key} = {value} ([{label}]): not carried over: "
                                      "syncd has no equivalent")
