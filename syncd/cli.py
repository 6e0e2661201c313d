"""Command line: the ONE place where exceptions become messages and exit codes.

Exit status: 0 success; 1 a sync or connection failed (other accounts still ran); 2 bad usage
or bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import __version__
from syncd.errors import AccountError, ConfigError, SyncdError, UsageError
from syncd.locks import account_lock

if TYPE_CHECKING:
    from syncd.config import AccountSettings, Settings
    from syncd.engine import AccountResult

log = logging.getLogger("syncd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keep local Maildirs in step with IMAP (both ways) and POP3 accounts.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="config file (default: $XDG_CONFIG_HOME/syncd/config.yaml)")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging with protocol traces (credentials redacted) and "
                        "tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("sync", help="one full sync of every (or the named) account, then exit",
                       description="One full sync of every (or the named) account, then exit. "
                       "Progress bars on a terminal, quiet otherwise.")
    p.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be done (per folder) and change nothing anywhere")
    p.add_argument("--force-deletions", action="store_true",
                   help="confirm a mass deletion the safety guard refused to propagate")

    sub.add_parser("run", help="the daemon: IDLE, polling and watching until SIGTERM",
                   description="Run as a daemon (IDLE, polling, filesystem watching). "
                   "SIGTERM/SIGINT stop it, SIGHUP reloads the config.")

    p = sub.add_parser("status", help="last sync, errors, counts and pending changes",
                       description="Per account and folder: last successful sync, last error, "
                       "message counts, pending local changes. Works while the daemon runs.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("check", help="validate the config, log in, list folders",
                       description="Validate the config, then connect and log in to each "
                       "account and list its folders; say precisely what is wrong.")
    p.add_argument("accounts", nargs="*", metavar="ACCOUNT")

    p = sub.add_parser("password", help="manage stored passwords",
                       description="Manage passwords stored in the system keyring.")
    psub = p.add_subparsers(dest="password_command", metavar="ACTION")
    ps = psub.add_parser("set", help="store an account's password in the keyring (prompted)",
                         description="Store the account's password in the system keyring "
                         "(service 'syncd', user = account name). Prompted, never echoed.")
    ps.add_argument("account", metavar="ACCOUNT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from syncd.logs import setup_logging

    setup_logging("debug" if args.debug else "info", debug=args.debug)
    try:
        handler = {
            "sync": cmd_sync,
            "run": cmd_run,
            "status": cmd_status,
            "check": cmd_check,
            "password": cmd_password,
        }[args.command]
        return handler(args)
    except SyncdError as exc:
        if args.debug:
            log.exception("failed")
        _complain(f"syncd: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _complain("syncd: interrupted", priority=4)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from syncd.secrets import redact

        _complain(f"syncd: internal error: {redact(f'{type(exc).__name__}: {exc}')} "
                  "(run with --debug for details)")
        return 1


def _complain(text: str, *, priority: int = 3) -> None:
    """An error (or warning) line on stderr: redacted, and under the journal with a syslog
    priority prefix like every log line, so journald files it as an error, not as info."""
    from syncd.logs import under_journal
    from syncd.secrets import redact

    prefix = f"<{priority}>" if under_journal(sys.stderr) else ""
    print(f"{prefix}{redact(text)}", file=sys.stderr)


# --- helpers ------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> Settings:
    from syncd.config import load_config
    from syncd.logs import setup_logging

    settings = load_config(args.config)
    setup_logging(settings.general.log_level, debug=args.debug)
    return settings


def _select_accounts(settings: Settings, names: Sequence[str]) -> list[AccountSettings]:
    if not names:
        return list(settings.accounts.values())
    unknown = [n for n in names if n not in settings.accounts]
    if unknown:
        known = ", ".join(settings.accounts) or "none"
        raise UsageError(f"unknown account {unknown[0]!r} (configured: {known})")
    return [settings.accounts[n] for n in dict.fromkeys(names)]


def _password_source(account: AccountSettings) -> Callable[[], str]:
    from syncd.secrets import get_password

    return lambda: get_password(account)


# --- sync ---------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    settings = _load(args)
    accounts = _select_accounts(settings, args.accounts)
    if args.force_deletions and not args.accounts:
        raise UsageError("--force-deletions needs the account named explicitly "
                         "(syncd sync --force-deletions ACCOUNT)")
    from syncd.progress import make_reporter

    reporter = make_reporter(sys.stderr)
    results: list[AccountResult] = []
    with reporter, ThreadPoolExecutor(max_workers=max(1, min(8, len(accounts)))) as pool:
        futures = [pool.submit(_sync_one, settings, account, args, reporter)
                   for account in accounts]
        results = [f.result() for f in futures]
    failed = False
    for result in results:
        if args.dry_run:
            _print_plan(result)
        print(result.summary())
        failed |= not result.ok
    return 1 if failed else 0


def _sync_one(settings: Settings, account: AccountSettings, args: argparse.Namespace,
              reporter: Any) -> AccountResult:
    from syncd.engine import AccountResult

    state_dir = settings.general.state_dir
    started = time.time()
    try:
        with account_lock(account.name, state_dir):
            if account.protocol == "pop3":
                result = _sync_pop3(settings, account, args)
            else:
                result = _sync_imap(settings, account, args, reporter)
    except AccountError as exc:
        result = AccountResult(account.name, error=str(exc).removeprefix(f"{account.name}: "))
    except OSError as exc:
        result = AccountResult(account.name, error=f"local error: {exc}")
    if not args.dry_run:
        _record_status(state_dir, result, started)
    return result


def _sync_imap(settings: Settings, account: AccountSettings, args: argparse.Namespace,
               reporter: Any) -> AccountResult:
    from syncd.adapters.imap import ImapSession
    from syncd.adapters.state import StateStore
    from syncd.engine import AccountSync, SyncOptions

    scratch = None
    state_path = account.state_path
    if args.dry_run and not state_path.exists():
        # A dry run must not even create the state database: plan against an empty one.
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="syncd-dry-run-")
        state_path = Path(scratch.name) / state_path.name
    state, rebuilt = StateStore.open_or_rebuild(state_path)
    if rebuilt:
        log.warning("%s: the state database was corrupt; it was moved aside and is rebuilt "
                    "by pairing messages by content (nothing is downloaded twice)",
                    account.name)
    try:
        password = _password_source(account)
        sync = AccountSync(account, state, lambda: ImapSession.connect(account, password),
                           options=SyncOptions(dry_run=args.dry_run,
                                               force_deletions=args.force_deletions),
                           reporter=reporter)
        result = sync.run()
    finally:
        state.close()
        if scratch is not None:
            scratch.cleanup()
    _run_new_mail_hook(settings, result)
    return result


def _sync_pop3(settings: Settings, account: AccountSettings,
               args: argparse.Namespace) -> AccountResult:
    try:
        from syncd.pop3sync import sync_pop3_account
    except ImportError:
        from syncd.engine import AccountResult

        return AccountResult(account.name, error="POP3 syncing is not implemented in this "
                             "version yet (check works; sync comes with POP3 support)")
    return sync_pop3_account(settings, account, dry_run=args.dry_run)


def _run_new_mail_hook(settings: Settings, result: AccountResult) -> None:
    command = settings.general.on_new_mail
    if not command:
        return
    try:
        from syncd.hooks import run_new_mail_hook
    except ImportError:
        return
    for folder in result.folders:
        if folder.new_mail:
            run_new_mail_hook(command, result.account, folder.folder, folder.new_mail)


def _record_status(state_dir: Path, result: AccountResult, started: float) -> None:
    from syncd.status import update_account

    now = time.time()
    folders = {}
    for f in result.folders:
        entry: dict[str, Any] = {"last_attempt": now, "error": f.error or f.guard}
        if not (f.error or f.guard):
            entry["last_sync"] = now
        folders[f.folder] = entry
    fields: dict[str, Any] = {"last_attempt": started, "error": result.error,
                              "folders": folders}
    if result.ok:
        fields["last_sync"] = now
    try:
        update_account(state_dir, result.account, **fields)
    except OSError as exc:
        log.warning("cannot write the status file in %s: %s", state_dir, exc)


def _print_plan(result: AccountResult) -> None:
    for folder in result.folders:
        if folder.plan_lines or folder.guard:
            print(f"{result.account}/{folder.folder}:")
            for line in folder.plan_lines:
                print(f"  {line}")
            if folder.guard:
                print(f"  GUARD: {folder.guard}")


# --- run ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args)
    try:
        from syncd.service.daemon import run_daemon
    except ImportError:
        _complain("syncd run: the daemon (IDLE, watching, scheduling) is not part of this "
                  "version yet; run `syncd sync` periodically (e.g. from a systemd timer) "
                  "meanwhile.")
        return 1
    return run_daemon(settings, config_path=args.config, debug=args.debug)


# --- status -------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    from syncd.report import gather_status, render_status

    data = gather_status(settings)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render_status(data, sys.stdout)
    return 0


# --- check --------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    settings = _load(args)
    accounts = _select_accounts(settings, args.accounts)
    source = settings.path or "(defaults)"
    print(f"config {source}: OK, {len(settings.accounts)} account(s)")
    failed = False
    for account in accounts:
        try:
            if account.protocol == "imap":
                _check_imap(account)
            else:
                _check_pop3(account)
        except AccountError as exc:
            from syncd.secrets import redact

            detail = redact(str(exc).removeprefix(f"{exc.account}: "))
            print(f"{exc.account}: FAILED ({exc.cause}): {detail}")
            failed = True
    return 1 if failed else 0


def _tls_label(account: AccountSettings) -> str:
    return {"implicit": "TLS", "starttls": "STARTTLS", "none": "PLAINTEXT (insecure)"}[
        account.tls]


def _check_imap(account: AccountSettings) -> None:
    from syncd.adapters.imap import INTERESTING_CAPABILITIES, ImapSession
    from syncd.adapters.maildir import Maildir
    from syncd.engine import folder_selected

    session = ImapSession.connect(account, _password_source(account))
    try:
        print(f"{account.name}: OK — IMAP {account.host}:{account.port} over "
              f"{_tls_label(account)}, logged in as {account.username}")
        caps = " ".join(f"{c}{'' if session.has(c) else ' (no)'}"
                        for c in INTERESTING_CAPABILITIES)
        print(f"  capabilities: {caps}")
        folders = session.list_folders()
        maildir = Maildir(account.maildir, account.layout)
        print(f"  folders ({len(folders)}), layout {account.layout}:")
        width = max((len(f.name) for f in folders), default=0)
        for folder in folders:
            if folder.noselect:
                note = "(no messages: directory only)"
            elif not folder_selected(folder.name, account.folders.include,
                                     account.folders.exclude):
                note = "(excluded)"
            else:
                components = ("INBOX",) if folder.name.upper() == "INBOX" \
                    else folder.components
                note = str(maildir.local_path(components))
            print(f"    {folder.name:<{width}}  ->  {note}")
    finally:
        session.close()


def _check_pop3(account: AccountSettings) -> None:
    from syncd.adapters.pop3 import Pop3Session

    session = Pop3Session.connect(account, _password_source(account))
    try:
        count, size = session.stat()
        uidl = session.has_uidl()
        print(f"{account.name}: OK — POP3 {account.host}:{account.port} over "
              f"{_tls_label(account)}, logged in as {account.username}")
        print(f"  {count} message(s), {size} bytes; UIDL "
              f"{'supported' if uidl else 'NOT supported (content hashes are used)'}; "
              f"PIPELINING {'yes' if 'PIPELINING' in session.capabilities else 'no'}")
        print(f"  delivers into {account.maildir}")
        session.quit()
    finally:
        session.close()


# --- password -----------------------------------------------------------------------------
def cmd_password(args: argparse.Namespace) -> int:
    if args.password_command != "set":
        raise UsageError("usage: syncd password set ACCOUNT")
    import getpass

    from syncd.secrets import set_password

    name = args.account
    try:
        settings = _load(args)
    except ConfigError:
        settings = None
    if settings is not None and name not in settings.accounts:
        _complain(f"syncd: warning: account {name!r} is not in the config", priority=4)
    password = getpass.getpass(f"Password for account {name!r}: ")
    if not password:
        raise UsageError("empty password; nothing stored")
    set_password(name, password)
    print(f"stored the password for {name!r} in the keyring (service 'syncd')")
    return 0
