"""offlineimap's configuration file, ~/.offlineimaprc: a configparser file (``[general]``,
``[Account NAME]``, ``[Repository NAME]``, ``[DEFAULT]`` and ``%(name)s`` interpolation, as
offlineimap reads it). Some values are Python expressions offlineimap evaluates
(``folderfilter``, ``nametrans``, ``remotepasseval``, ...): here they are only ever matched
against the common forms, never evaluated.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OfflineimapAccount", "folder_filter", "load_offlineimaprc", "parse_offlineimaprc"]


class OfflineimaprcError(ValueError):
    pass


@dataclass
class OfflineimapAccount:
    name: str
    account: dict[str, str]
    local_name: str
    local: dict[str, str]
    remote_name: str
    remote: dict[str, str]
    metadata: Path

    @property
    def localfolders(self) -> Path | None:
        value = self.local.get("localfolders")
        return Path(os.path.expanduser(value)) if value else None

    @property
    def sep(self) -> str:
        return (self.local.get("sep") or ".").strip()

    @property
    def status_dir(self) -> Path:
        return self.metadata / f"Account-{self.name}"

    @property
    def validity_dir(self) -> Path:
        return self.metadata / f"Repository-{self.remote_name}" / "FolderValidity"


def _section(parser: configparser.ConfigParser, name: str) -> dict[str, str]:
    if not parser.has_section(name):
        raise OfflineimaprcError(f"no section [{name}]")
    return {k: v for k, v in parser.items(name)}


def parse_offlineimaprc(text: str) -> list[OfflineimapAccount]:
    # offlineimap's own parser is a SafeConfigParser (BasicInterpolation); options are
    # case-insensitive. Interpolation errors are reported, not guessed.
    parser = configparser.ConfigParser(interpolation=configparser.BasicInterpolation(),
                                       strict=False)
    try:
        parser.read_string(text)
        general = dict(parser.items("general")) if parser.has_section("general") else {}
    except (configparser.Error, ValueError) as exc:
        raise OfflineimaprcError(str(exc).replace("\n", " ")) from None
    metadata = Path(os.path.expanduser(general.get("metadata", "~/.offlineimap")))
    names = [n.strip() for n in general.get("accounts", "").split(",") if n.strip()]
    if not names:
        names = [s[len("Account "):] for s in parser.sections() if s.startswith("Account ")]
    accounts = []
    for name in names:
        try:
            account = _section(parser, f"Account {name}")
            local_name = account.get("localrepository", "")
            remote_name = account.get("remoterepository", "")
            local = _section(parser, f"Repository {local_name}")
            remote = _section(parser, f"Repository {remote_name}")
        except (configparser.Error, OfflineimaprcError) as exc:
            raise OfflineimaprcError(f"account {name!r}: {exc}") from None
        accounts.append(OfflineimapAccount(name, account, local_name, local, remote_name, remote,
                                           metadata))
    return accounts


def load_offlineimaprc(path: Path) -> list[OfflineimapAccount]:
    return parse_offlineimaprc(path.read_text(encoding="utf-8"))


# --- folderfilter: the common forms, recognised without eval -----------------------------------

@dataclass
class FilterTranslation:
    include: list[str] | None  # None: every folder
    exclude: list[str]
    problem: str | None = None  # set when the expression is not one of the known forms


def _glob_escape(name: str) -> str:
    # syncd's include/exclude are fnmatch globs: a literal name ("[Gmail]/Spam") needs its
    # brackets, stars and question marks escaped.
    return re.sub(r"([*?\[])", r"[\1]", name)


def _string_list(node: ast.AST) -> list[str] | None:
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]  # type: ignore[attr-defined]
    return None


def _regex_glob(pattern: str, anchored: bool) -> str | None:
    """A regular expression that is a plain name, or a name prefix (re.search with ^ or
    re.match), or an alternation of such -> a glob; None for real regex syntax."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    anchored = anchored or pattern.startswith("^")
    exact = body.endswith("$")
    body = body[:-1] if exact else body
    text = re.sub(r"\\(.)", r"\1", body)
    if re.search(r"(?<!\\)[.*+?()\[\]{}|^$]", body.replace("\\.", "").replace("\\/", "")):
        return None
    glob = _glob_escape(text)
    return (glob if exact else glob + "*") if anchored else (
        ("*" + glob) if exact else f"*{glob}*")


def _regex_globs(call: ast.Call) -> list[str] | None:
    """``re.search('...', f)`` / ``re.match('...', f)`` -> globs (alternations split)."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id == "re" and func.attr in ("search", "match", "fullmatch")):
        return None
    if not call.args or not isinstance(call.args[0], ast.Constant) \
            or not isinstance(call.args[0].value, str):
        return None
    anchored = func.attr != "search"
    pattern = call.args[0].value
    if func.attr == "fullmatch":
        pattern += "$"
    parts = pattern.split("|") if "(" not in pattern else [pattern]
    globs = [_regex_glob(p, anchored) for p in parts]
    return None if any(g is None for g in globs) else [g for g in globs if g]


def _condition(node: ast.AST, var: str) -> tuple[str, list[str]] | None:
    """One test on the folder name -> ("in" | "out", globs)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _condition(node.operand, var)
        return None if inner is None else ("out" if inner[0] == "in" else "in", inner[1])
    if isinstance(node, ast.Compare) and len(node.ops) == 1 \
            and isinstance(node.left, ast.Name) and node.left.id == var:
        names = _string_list(node.comparators[0])
        op = node.ops[0]
        if isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(node.comparators[0], ast.Constant):
            names = [str(node.comparators[0].value)]
        if names is None:
            return None
        globs = [_glob_escape(n) for n in names]
        if isinstance(op, (ast.In, ast.Eq)):
            return "in", globs
        if isinstance(op, (ast.NotIn, ast.NotEq)):
            return "out", globs
        return None
    if isinstance(node, ast.Call):
        globs = _regex_globs(node)
        return None if globs is None else ("in", globs)
    return None


def folder_filter(expression: str) -> FilterTranslation:
    """offlineimap's ``folderfilter`` (a lambda on the remote folder name) -> include and
    exclude globs, for the forms its manual shows: ``lambda f: f in [...]``, ``f not in
    [...]``, ``f == '...'``, ``re.search('...', f)``, ``not re.search(...)``, and ``and`` of
    exclusions or ``or`` of inclusions. Anything else is reported, never evaluated."""
    unknown = FilterTranslation(None, [], f"folderfilter {expression.strip()!r}: not a form "
                                "syncd recognises; set folders: include/exclude by hand")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return unknown
    node = tree.body
    if not isinstance(node, ast.Lambda) or len(node.args.args) != 1:
        return unknown
    var = node.args.args[0].arg
    body = node.body
    terms = body.values if isinstance(body, ast.BoolOp) else [body]
    tests = [_condition(t, var) for t in terms]
    if any(t is None for t in tests):
        return unknown
    kinds = {t[0] for t in tests if t}
    globs = [g for t in tests if t for g in t[1]]
    if kinds == {"out"} and (len(terms) == 1 or isinstance(body.op, ast.And)):  # type: ignore[attr-defined]
        return FilterTranslation(None, globs)
    if kinds == {"in"} and (len(terms) == 1 or isinstance(body.op, ast.Or)):  # type: ignore[attr-defined]
        return FilterTranslation(globs, [])
    return unknown
