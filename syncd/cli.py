"""Command line: the ONE place where exceptions become messages and exit codes.

Exit status: 0 success; 1 a sync or connection failed (other accounts still ran); 2 bad usage
or bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import __version__
from syncd.errors import AccountError, ConfigError, SyncdError, UsageError
from syncd.locks import AccountBusy, AccountLock

if TYPE_CHECKING:
    from syncd.config.init import AccountAnswers
    from syncd.config.load import AccountSettings, Settings
    from syncd.config.presets import AccountPreset
    from syncd.imap.nochange import Probe
    from syncd.outcome.results import AccountResult

log = logging.getLogger("syncd")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that command's subparser (see _command_in)."""
    parser = _Parser(
        prog="syncd",
        description="Keep local Maildirs in step with IMAP (both ways) and POP3 accounts.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="config file (default: $XDG_CONFIG_HOME/syncd/config.yaml)")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging with protocol traces (credentials redacted) and "
                        "tracebacks")
    # prog given: argparse would otherwise build a help formatter (and import shutil) for it.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="syncd")

    for command, add_parser in _COMMAND_PARSERS.items():
        if only is None or only == command:
            add_parser(sub)
    return parser


def _sync_parser(sub: Any) -> None:
    p = sub.add_parser("sync", help="one full sync of every (or the named) account, then exit",
                       description="One full sync of every (or the named) account, then exit. "
                       "Progress bars on a terminal, quiet otherwise.")
    p.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be done (per folder) and change nothing anywhere")
    p.add_argument("--force-deletions", action="store_true",
                   help="confirm a mass deletion the safety guard refused to propagate")


def _run_parser(sub: Any) -> None:
    sub.add_parser("run", help="the daemon: IDLE, polling and watching until SIGTERM",
                   description="Run as a daemon (IDLE, polling, filesystem watching). "
                   "SIGTERM/SIGINT stop it, SIGHUP reloads the config.")


def _status_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="last sync, errors, counts and pending changes",
                       description="Per account and folder: last successful sync, last error, "
                       "message counts, pending local changes. Works while the daemon runs.")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _check_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="validate the config, log in, list folders",
                       description="Validate the config, then connect and log in to each "
                       "account and list its folders; say precisely what is wrong.")
    p.add_argument("accounts", nargs="*", metavar="ACCOUNT")


def _password_parser(sub: Any) -> None:
    p = sub.add_parser("password", help="manage stored passwords",
                       description="Manage passwords stored in the system keyring.")
    psub = p.add_subparsers(dest="password_command", metavar="ACTION")
    ps = psub.add_parser("set", help="store an account's password in the keyring (prompted)",
                         description="Store the account's password in the system keyring "
                         "(service 'syncd', user = account name). Prompted, never echoed.")
    ps.add_argument("account", metavar="ACCOUNT")


def _auth_parser(sub: Any) -> None:
    p = sub.add_parser("auth", help="sign in to an OAuth2 account (Microsoft 365, Gmail, ...)",
                       description="Sign in to an account with `auth: oauth2` and keep the "
                       "refresh token in the system keyring (service 'syncd', user "
                       "'ACCOUNT:oauth2'). The default flow is the provider's: a device code "
                       "(open a URL on any device and enter a code; works on a headless "
                       "machine) for Microsoft, the browser for Google.")
    p.add_argument("account", metavar="ACCOUNT")
    flow = p.add_mutually_exclusive_group()
    flow.add_argument("--browser", action="store_true",
                      help="sign in with a browser (redirect to 127.0.0.1 on a random port, "
                      "PKCE)")
    flow.add_argument("--device", action="store_true",
                      help="sign in with a device code (prints a URL and a code)")
    p.add_argument("--no-check", action="store_true",
                   help="do not log in to the server afterwards")


def _init_parser(sub: Any) -> None:
    p = sub.add_parser("init", help="add an account to the config (asks, or takes flags)",
                       description="Add an account to the config file (created if missing; "
                       "an existing file keeps its comments), then run `check` on it. "
                       "Asks the few questions needed, or takes flags. Known providers "
                       "(presets) fill in the servers; for other domains imap.DOMAIN, "
                       "pop.DOMAIN and smtp.DOMAIN are guessed.")
    p.add_argument("address", nargs="?", metavar="ADDRESS",
                   help="the email address (the same as --email); its servers are found "
                   "by presets, Thunderbird autoconfig, DNS SRV records (RFC 6186) and "
                   "the MX host's provider")
    p.add_argument("--name", help="account name (default: from the address's domain)")
    p.add_argument("--email", help="the account's email address")
    p.add_argument("--no-discover", action="store_true",
                   help="do not look on the network for the servers (presets and the "
                   "imap.DOMAIN guess only)")
    # A metavar, or argparse lists the choices (importing the presets) for every command.
    p.add_argument("--provider", choices=_PresetNames(), metavar="PROVIDER",
                   help="provider preset: %(choices)s (default: guessed from the address)")
    p.add_argument("--protocol", choices=("imap", "pop3"), default=None)
    p.add_argument("--username", help="login name (default: the email address)")
    p.add_argument("--host", help="mail server (instead of a preset or the guess)")
    p.add_argument("--port", type=int)
    p.add_argument("--tls", choices=("implicit", "starttls"))
    p.add_argument("--tls-ca-file", metavar="FILE", help="trust this CA too")
    p.add_argument("--smtp-host", help="SMTP server for mutt-config")
    p.add_argument("--auth", choices=("password", "oauth2"))
    p.add_argument("--password-command", metavar="CMD",
                   help="command printing the password (default: the keyring)")
    p.add_argument("--client-id", help="OAuth2 application (client) ID")
    p.add_argument("--client-secret", help="OAuth2 client secret (Google)")
    p.add_argument("--tenant", help="Microsoft tenant (default: from the preset)")
    p.add_argument("--non-interactive", action="store_true",
                   help="ask nothing: use the flags and the guesses")
    p.add_argument("--no-check", action="store_true", help="do not run `check` afterwards")


def _adopt_parser(sub: Any) -> None:
    p = sub.add_parser("adopt", help="take over a Maildir that mbsync or offlineimap syncs",
                       description="Take over a Maildir that another tool has been "
                       "syncing, with no message downloaded again: files are paired by "
                       "the UIDs in their names and the tool's state (UIDVALIDITY "
                       "checked), else left to pairing by content. File names are left "
                       "alone. Reads the server's flags only; writes syncd's state in one "
                       "transaction; refuses, changing nothing, if the tool's state "
                       "disagrees with the server.")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--from", dest="tool", choices=("mbsync", "offlineimap", "auto"),
                   default="auto", help="the tool that synced the Maildir (default: auto)")
    p.add_argument("--rc", metavar="FILE", type=Path,
                   help="the tool's config (default ~/.mbsyncrc or ~/.offlineimaprc): "
                   "where its state is")
    p.add_argument("--dry-run", action="store_true", help="say what would be adopted; "
                   "write nothing")


def _import_parser(sub: Any) -> None:
    p = sub.add_parser("import", help="add the accounts of ~/.mbsyncrc or ~/.offlineimaprc",
                       description="Read mbsync's or offlineimap's config and add the "
                       "equivalent accounts to syncd's config (an existing account is "
                       "never overwritten); name every setting that cannot be carried "
                       "over.")
    p.add_argument("tool", choices=("mbsync", "offlineimap"))
    p.add_argument("file", nargs="?", type=Path, metavar="FILE",
                   help="default ~/.mbsyncrc / ~/.offlineimaprc")
    p.add_argument("--dry-run", action="store_true",
                   help="print the accounts; change no file")


def _fetch_parser(sub: Any) -> None:
    p = sub.add_parser("fetch", help="replace placeholders with the full messages",
                       description="Replace each placeholder FILE (a message bigger than "
                       "max_size, mirrored as its headers) with the full message, in "
                       "place: same folder, same file name and flags. Works beside a "
                       "running daemon.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")


def _prune_parser(sub: Any) -> None:
    p = sub.add_parser("prune", help="remove local copies outside the window",
                       description="Remove the local copies of messages that max_age or "
                       "max_messages left outside the window at the last sync. Locally "
                       "only: the server is never touched. Needs the account's lock (stop "
                       "the daemon first).")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be removed; remove nothing")


def _mutt_config_parser(sub: Any) -> None:
    p = sub.add_parser("mutt-config", help="print a neomutt snippet for an account",
                       description="Print neomutt settings for an account's Maildir: folder, "
                       "spoolfile, mailboxes for every synced folder, record/postponed/trash "
                       "mapped to the server's Sent/Drafts/Trash folders (as recorded by "
                       "`syncd check`), and smtp_url.")
    p.add_argument("account", metavar="ACCOUNT")


def _systemd_unit_parser(sub: Any) -> None:
    p = sub.add_parser("systemd-unit", help="write the systemd user unit for this config",
                       description="Write ~/.config/systemd/user/syncd.service: the daemon "
                       "as a hardened user service that may write only the config's "
                       "maildirs, its state and its cache (created now if missing). Re-run "
                       "it after changing those paths. A unit syncd did not write is not "
                       "overwritten without --force.")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the unit on stdout; write and create nothing")
    p.add_argument("--force", action="store_true",
                   help="replace a unit that syncd did not write")


def _send_parser(sub: Any) -> None:
    # Parsed by syncd.smtp.sendmail (sendmail's options); listed here for --help.
    sub.add_parser("send", help="queue a message from stdin (sendmail-compatible)",
                   description="syncd send [-t] [-i] [-oi] [-f ADDR] [-F NAME] "
                   "[--account NAME] [--] [RCPT ...] < message")


def _outbox_parser(sub: Any) -> None:
    p = sub.add_parser("outbox", help="the queue of mail to send; retry, drop, flush",
                       description="The outbox per account: id, date, recipients, subject, "
                       "attempts, last error, state (queued, sending, sent, failed).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION")
    retry = osub.add_parser("retry", help="requeue failed messages now")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every failed or waiting message")
    drop = osub.add_parser("drop", help="remove a message from the outbox")
    drop.add_argument("id", metavar="ID")
    drop.add_argument("--yes", action="store_true", help="do not ask")
    flush = osub.add_parser("flush", help="send the queue now, without the daemon")
    flush.add_argument("accounts", nargs="*", metavar="ACCOUNT")


# In the order `syncd --help` lists them.
_COMMAND_PARSERS: dict[str, Callable[[Any], None]] = {
    "sync": _sync_parser,
    "run": _run_parser,
    "status": _status_parser,
    "check": _check_parser,
    "password": _password_parser,
    "auth": _auth_parser,
    "init": _init_parser,
    "adopt": _adopt_parser,
    "import": _import_parser,
    "fetch": _fetch_parser,
    "prune": _prune_parser,
    "mutt-config": _mutt_config_parser,
    "systemd-unit": _systemd_unit_parser,
    "send": _send_parser,
    "outbox": _outbox_parser,
}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, sized to the terminal as shutil.get_terminal_size() would, without importing
    shutil (and with it zlib, bz2 and lzma): argparse makes a formatter for every argument it
    adds, so every start paid for that import."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, width=max(columns, 1) - 2)


class _Parser(argparse.ArgumentParser):
    """Uses _HelpFormatter; subcommands' parsers are made of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command a command line names, if it is plain to see: then only its subparser is
    built (all eight cost a few ms of a no-change `sync`). None when in doubt (help, an
    unknown word, an option we do not know): the full parser then decides and explains."""
    words = iter(argv)
    for word in words:
        if word == "--debug" or word.startswith("--config="):
            continue
        if word == "--config":
            next(words, None)
            continue
        return word if word in _HANDLERS else None
    return None


class _PresetNames:
    """argparse choices that import the presets only when `init --provider` is checked or
    shown: every other command, a quick `sync` above all, starts without them."""

    def _names(self) -> list[str]:
        from syncd.config.presets import ACCOUNT_PRESETS

        return sorted(ACCOUNT_PRESETS)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def entry() -> int:
    """The `syncd` program: main(), then, for every command but the daemon, straight out
    (os._exit) once stdout, stderr and the log handlers are flushed. Interpreter shutdown
    (tearing down ~250 modules, OpenSSL's and SQLite's cleanup, the final garbage collection)
    is a tenth of a no-change `sync` and changes nothing on disk: every file syncd writes
    is fsynced and closed, and every database commit is done, before main() returns. The
    daemon returns the usual way: its threads and handlers are stopped by their owners."""
    fast = _command_in(sys.argv[1:]) not in (None, "run")
    code = main()
    if not fast:
        return code
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1  # e.g. a closed pipe: the output did not get through
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    # syncd uses no pydantic plugins; looking for them scans every installed package's entry
    # points, a noticeable part of the start-up a quick no-change `sync` is made of.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
    words = list(sys.argv[1:] if argv is None else argv)
    if _command_in(words) == "send":
        return _send_main(words)  # sendmail's options are not argparse's (-oi, -f ADDR)
    parser = build_parser(only=_command_in(words))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from syncd.logs import setup_logging

    setup_logging("debug" if args.debug else "info", debug=args.debug)
    try:
        return _HANDLERS[args.command](args)
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
        from syncd.auth.secrets import redact

        _complain(f"syncd: internal error: {redact(f'{type(exc).__name__}: {exc}')} "
                  "(run with --debug for details)")
        return 1


def _complain(text: str, *, priority: int = 3) -> None:
    """An error (or warning) line on stderr: redacted, and under the journal with a syslog
    priority prefix like every log line, so journald files it as an error, not as info."""
    from syncd.auth.secrets import redact
    from syncd.logs import under_journal

    prefix = f"<{priority}>" if under_journal(sys.stderr) else ""
    print(f"{prefix}{redact(text)}", file=sys.stderr)


# --- helpers ------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> Settings:
    from syncd.config.cache import load_settings
    from syncd.logs import setup_logging

    settings = load_settings(args.config)
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
    """The account's password, asked for once per run (a password command may prompt, or
    decrypt with gpg, and the no-change check and the sync after it both log in); a failure
    too is remembered and raised again, not asked twice (a cancelled pinentry stays
    cancelled). Safe to call from two threads: the no-change check asks for it during the
    TLS handshake, the login after it."""
    import threading

    from syncd.auth.secrets import get_password

    known: list[str] = []
    failed: list[Exception] = []
    lock = threading.Lock()

    def password() -> str:
        with lock:
            if failed:
                raise failed[0]
            if not known:
                try:
                    known.append(get_password(account))
                except Exception as exc:
                    failed.append(exc)
                    raise
            return known[0]

    return password


# --- sync ---------------------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    settings = _load(args)
    accounts = _select_accounts(settings, args.accounts)
    if args.force_deletions and not args.accounts:
        raise UsageError("--force-deletions needs the account named explicitly "
                         "(syncd sync --force-deletions ACCOUNT)")
    # The outbox goes first: the sync then brings the copies filed in Sent down.
    unsent = False if args.dry_run else not _flush_outboxes(accounts, quiet_if_empty=True)
    code = _sync_accounts(settings, accounts, args)
    return code or int(unsent)


def _sync_accounts(settings: Settings, accounts: list[AccountSettings],
                   args: argparse.Namespace) -> int:
    from syncd import net as transport

    # Each account's lock first: an account that another process is syncing (the daemon, a
    # sync from cron) must not even be dialled or logged in to.
    locks = _take_locks(settings, accounts)
    # The IMAP connections open while the engine and imapclient are imported (see transport),
    # and the no-change check (see nochange) starts on them at once.
    passwords = {a.name: _password_source(a) for a in accounts}
    probes: dict[str, Probe] = {}
    for account in accounts:
        if isinstance(locks[account.name], AccountBusy):
            continue
        if account.protocol == "imap":
            transport.dial_ahead(account)
            if _light_check_allowed(account, args):
                from syncd.imap.nochange import Probe

                probes[account.name] = Probe(account, passwords[account.name])
    from syncd.outcome.progress import make_reporter

    reporter = make_reporter(sys.stderr)
    results: list[AccountResult] = []
    try:
        with reporter:
            if len(accounts) == 1:
                # No pool for one account: its import and thread are a few ms of a sync that
                # often takes a few tens.
                account = accounts[0]
                results = [_sync_one(settings, account, args, reporter, passwords[account.name],
                                     locks[account.name], probes.get(account.name))]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=max(1, min(8, len(accounts)))) as pool:
                    futures = [pool.submit(_sync_one, settings, account, args, reporter,
                                           passwords[account.name], locks[account.name],
                                           probes.get(account.name))
                               for account in accounts]
                    results = [f.result() for f in futures]
    finally:
        transport.close_dialed()
        for lock in locks.values():
            if isinstance(lock, AccountLock):
                lock.release()
    failed = False
    for result in results:
        if args.dry_run:
            _print_plan(result)
        print(result.summary())
        failed |= not result.ok
    return 1 if failed else 0


def _light_check_allowed(account: AccountSettings, args: argparse.Namespace) -> bool:
    """The no-change check runs on implicit TLS with a password; STARTTLS and OAuth2 logins
    are the engine's. Never for a dry run or --force-deletions, which always need the engine,
    nor for a first sync (no state database yet): it could only say so, after a login and a
    listing of its own, and the engine would log in again."""
    return (account.tls == "implicit" and account.auth != "oauth2"
            and not args.dry_run and not args.force_deletions
            and account.state_path.exists())


def _take_locks(settings: Settings,
                accounts: list[AccountSettings]) -> dict[str, AccountLock | AccountBusy]:
    """Every account's lock, taken now (a flock each, never waiting); AccountBusy for an
    account another process holds."""
    taken: dict[str, AccountLock | AccountBusy] = {}
    for account in accounts:
        lock = AccountLock(account.name, settings.general.state_dir)
        try:
            lock.acquire()
        except AccountBusy as exc:
            taken[account.name] = exc
            continue
        taken[account.name] = lock
    return taken


def _sync_one(settings: Settings, account: AccountSettings, args: argparse.Namespace,
              reporter: Any, password: Callable[[], str], lock: AccountLock | AccountBusy,
              probe: Probe | None = None) -> AccountResult:
    """One account's sync, under its lock (taken by the caller; released here, so that a
    daemon waiting for it starts as soon as this account is done, not after every other)."""
    from syncd.outcome.results import AccountResult

    state_dir = settings.general.state_dir
    started = time.time()
    try:
        if isinstance(lock, AccountBusy):
            raise lock
        try:
            if account.protocol == "pop3":
                result = _sync_pop3(settings, account, args)
            else:
                result = _sync_imap(settings, account, args, reporter, password, probe)
        finally:
            lock.release()
    except AccountError as exc:
        result = AccountResult(account.name, error=str(exc).removeprefix(f"{account.name}: "),
                               error_cause=exc.cause)
    except OSError as exc:
        result = AccountResult(account.name, error=f"local error: {exc}")
    # A sync refused because the daemon owns the account says nothing about the account's
    # health: keep the daemon's status.
    if not args.dry_run and result.error_cause != "busy":
        _record_status(state_dir, result, started)
    return result


def _sync_imap(settings: Settings, account: AccountSettings, args: argparse.Namespace,
               reporter: Any, password: Callable[[], str],
               probe: Probe | None = None) -> AccountResult:
    from syncd.store.state import StateStore

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
        result = None
        if probe is not None:
            from syncd.imap.nochange import sync_if_unchanged

            listing = probe.result()
            if not rebuilt:
                result = sync_if_unchanged(account, state, listing)
            if result is None:
                # The engine's own connection opens while the engine is imported.
                from syncd import net as transport

                transport.dial_ahead(account)
        if result is None:
            from syncd.heap import keep_large_blocks_mapped
            from syncd.imap.account import AccountSync, SyncOptions
            from syncd.imap.client import ImapSession

            keep_large_blocks_mapped()

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
    from syncd.heap import keep_large_blocks_mapped
    from syncd.pop3.fetch import sync_pop3_account

    keep_large_blocks_mapped()
    result = sync_pop3_account(settings, account, dry_run=args.dry_run)
    if not args.dry_run:
        _run_new_mail_hook(settings, result)
    return result


def _run_new_mail_hook(settings: Settings, result: AccountResult) -> None:
    from syncd.service.hooks import run_new_mail_hooks

    run_new_mail_hooks(settings.general.on_new_mail, result, wait=True)


def _record_status(state_dir: Path, result: AccountResult, started: float) -> None:
    from syncd.outcome.status import record_result

    record_result(state_dir, result, started=started)


def _print_plan(result: AccountResult) -> None:
    for folder in result.folders:
        if folder.plan_lines or folder.guard or folder.notice:
            print(f"{result.account}/{folder.folder}:")
            for line in folder.plan_lines:
                print(f"  {line}")
            if folder.guard:
                print(f"  GUARD: {folder.guard}")
            if folder.notice:
                print(f"  NOTE: {folder.notice}")


# --- send and outbox ------------------------------------------------------------------------
def _send_main(words: list[str]) -> int:
    """`syncd [--config FILE] [--debug] send ...`: exit statuses from sysexits.h."""
    from syncd.logs import setup_logging
    from syncd.smtp.sendmail import USAGE, SendmailError, parse_args, send_command

    at = words.index("send")
    config: Path | None = None
    debug = "--debug" in words[:at]
    for i, word in enumerate(words[:at]):
        if word == "--config":
            config = Path(words[i + 1])
        elif word.startswith("--config="):
            config = Path(word.split("=", 1)[1])
    setup_logging("debug" if debug else "warning", debug=debug)
    try:
        if parse_args(words[at + 1:]).help:
            print(USAGE)
            return 0
        from syncd.config.cache import load_settings

        settings = load_settings(config)
        return send_command(settings, words[at + 1:], sys.stdin.buffer)
    except SendmailError as exc:
        _complain(str(exc))
        return exc.exit_code
    except SyncdError as exc:
        _complain(f"syncd send: {exc}; nothing queued")
        return exc.exit_code


def _flush_outboxes(accounts: Sequence[AccountSettings], *, quiet_if_empty: bool = False,
                    wait: float = 60.0) -> bool:
    """Send what the accounts' outboxes hold; False if anything failed or stayed queued for
    an error."""
    from syncd.smtp import has_mail

    ok = True
    for account in accounts:
        if account.smtp is None or (quiet_if_empty and not has_mail(account.state_dir,
                                                                      account.name)):
            continue
        from syncd.smtp.flush import flush_account

        try:
            report = flush_account(account, wait=wait)
        except (OSError, SyncdError) as exc:
            print(f"{account.name}: outbox: {exc}".replace(f"{account.name}: {account.name}:",
                                                          f"{account.name}:"))
            ok = False
            continue
        print(report.summary())
        ok &= report.ok
    return ok


def cmd_send(args: argparse.Namespace) -> int:  # reached only through _send_main
    raise UsageError("usage: syncd send [-t] [-i] [-oi] [-f ADDR] [--] [RCPT ...]")


def cmd_outbox(args: argparse.Namespace) -> int:
    settings = _load(args)
    accounts = [a for a in settings.accounts.values() if a.smtp is not None]
    from syncd.smtp import commands

    action = args.outbox_command
    if action is None:
        commands.list_outbox(accounts, sys.stdout, as_json=args.json)
        return 0
    if action == "flush":
        chosen = _select_accounts(settings, args.accounts)
        return 0 if _flush_outboxes([a for a in chosen if a.smtp is not None]) else 1
    if action == "retry":
        done = commands.retry(accounts, args.ids, args.all)
        print(f"requeued {len(done)} message(s); the daemon sends them now (or run `syncd "
              "outbox flush`)")
        return 0
    ask = input if sys.stdin is not None and sys.stdin.isatty() else None
    dropped = commands.drop(accounts, args.id, yes=args.yes, ask=ask)
    print(f"dropped {dropped.id}" if dropped else "kept")
    return 0


# --- run ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args)
    from syncd.heap import keep_large_blocks_mapped
    from syncd.service.daemon import run_daemon

    keep_large_blocks_mapped()
    return run_daemon(settings, config_path=args.config, debug=args.debug)


# --- status -------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    from syncd.outcome.report import gather_status, render_status
    from syncd.smtp.commands import queue_summary

    data = gather_status(settings, queue_summary)
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
        failed |= not _check_account(account)
    return 1 if failed else 0


def _check_account(account: AccountSettings) -> bool:
    """Log in and report (the body of `check` for one account); False if it failed."""
    try:
        if account.protocol == "imap":
            _check_imap(account)
        else:
            _check_pop3(account)
    except AccountError as exc:
        from syncd.auth.secrets import redact

        detail = redact(str(exc).removeprefix(f"{exc.account}: "))
        print(f"{exc.account}: FAILED ({exc.cause}): {detail}")
        return False
    return True


def _login_label(account: AccountSettings, mechanism: str | None = None) -> str:
    if account.auth != "oauth2":
        return ""
    return f" (OAuth2{', ' + mechanism if mechanism else ''})"


def _tls_label(account: AccountSettings) -> str:
    return {"implicit": "TLS", "starttls": "STARTTLS", "none": "PLAINTEXT (insecure)"}[
        account.tls]


def _check_imap(account: AccountSettings) -> None:
    from syncd.config.mutt import _state_folders
    from syncd.core.folders import folder_selected
    from syncd.imap.client import INTERESTING_CAPABILITIES, ImapSession
    from syncd.imap.folder_map import FolderMap
    from syncd.store.maildir import Maildir

    session = ImapSession.connect(account, _password_source(account))
    try:
        print(f"{account.name}: OK — IMAP {account.host}:{account.port} over "
              f"{_tls_label(account)}, logged in as {account.username}"
              f"{_login_label(account, session.auth_mechanism)}")
        caps = " ".join(f"{c}{'' if session.has(c) else ' (no)'}"
                        for c in INTERESTING_CAPABILITIES)
        print(f"  capabilities: {caps}")
        folders = session.list_folders()
        from syncd.config.mutt import save_roles

        namespace = session.personal_namespace()  # came with the LIST
        # Sent/Drafts/Trash for `syncd mutt-config`, placed as a sync will place them
        save_roles(account, folders, namespace)
        maildir = Maildir(account.maildir, account.layout)
        if namespace.prefix:
            print(f'  personal namespace "{namespace.prefix}" (delimiter '
                  f'"{namespace.delimiter}"): shown locally without it; new local folders '
                  "are created under it")
        # The places a sync uses: the state's for folders synced before, else the name
        # without the namespace prefix.
        folder_map = FolderMap(maildir, namespace, {
            name: str(path) for name, path in (_state_folders(account) or {}).items()})
        print(f"  folders ({len(folders)}), layout {account.layout}:")
        width = max((len(f.name) for f in folders), default=0)
        for folder in folders:
            if folder.noselect:
                note = "(no messages: directory only)"
            elif not folder_selected(folder.name, account.folders.include,
                                     account.folders.exclude, namespace=namespace):
                note = "(excluded)"
            else:
                try:
                    note = str(folder_map.local_path(folder))
                except ValueError as exc:
                    note = f"(not synced: {exc})"
                else:
                    note += "\n      " + _first_sync_note(account, session, folder.name,
                                                         namespace)
            print(f"    {folder.name:<{width}}  ->  {note}")
    finally:
        session.close()


def _first_sync_note(account: AccountSettings, session: Any, name: str, namespace: Any
                     ) -> str:
    """What a first sync of the folder would download under the sync policy (direction,
    max_age, max_messages, max_size): messages and bytes, of how many on the server."""
    import time

    from syncd.errors import FolderError
    from syncd.imap.folder_sync import folder_policy
    from syncd.imap.gather import WindowSpec, first_sync_estimate

    keys = folder_policy(account, name, namespace)
    spec = None
    if keys.max_age is not None or keys.max_messages is not None:
        spec = WindowSpec(keys.max_age, keys.max_messages, time.time())
    try:
        estimate = first_sync_estimate(session, name, spec, keys.max_size)
    except FolderError as exc:
        return f"not examined: {exc}"
    if keys.direction == "push":
        return f"push: a first sync downloads nothing ({estimate.on_server:,} on the server)"
    window = "" if spec is None else " in the window"
    placeholders = ("" if not estimate.placeholders else
                    f" and {estimate.placeholders:,} placeholder(s) for messages over max_size")
    return (f"a first sync downloads {estimate.messages:,} message(s){window}, "
            f"{_human_size(estimate.size)}{placeholders}, of {estimate.on_server:,} on the "
            "server")


def _human_size(size: int) -> str:
    """Bytes as `syncd check` shows them: 512 bytes, 3.4 KB, 85.3 MB, 1.2 GB (powers of
    1000)."""
    if size < 1000:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _check_pop3(account: AccountSettings) -> None:
    from syncd.pop3.client import Pop3Session

    session = Pop3Session.connect(account, _password_source(account))
    try:
        count, size = session.stat()
        uidl = session.has_uidl()
        print(f"{account.name}: OK — POP3 {account.host}:{account.port} over "
              f"{_tls_label(account)}, logged in as {account.username}"
              f"{_login_label(account)}")
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

    from syncd.auth.secrets import set_password

    name = args.account
    try:
        settings = _load(args)
    except ConfigError:
        settings = None
    if settings is not None and name not in settings.accounts:
        _complain(f"syncd: warning: account {name!r} is not in the config", priority=4)
    elif settings is not None and settings.accounts[name].auth == "oauth2":
        raise UsageError(f"account {name!r} signs in with OAuth2 (auth: oauth2), not a "
                         f"password: run `syncd auth {name}`")
    password = getpass.getpass(f"Password for account {name!r}: ")
    if not password:
        raise UsageError("empty password; nothing stored")
    set_password(name, password)
    print(f"stored the password for {name!r} in the keyring (service 'syncd')")
    return 0


# --- auth ---------------------------------------------------------------------------------
def cmd_auth(args: argparse.Namespace) -> int:
    settings = _load(args)
    account = _select_accounts(settings, [args.account])[0]
    if account.auth != "oauth2":
        raise UsageError(f"account {account.name!r} uses auth: password; to sign in with "
                         f"OAuth2 set auth: oauth2 and an oauth2 mapping (see the README), or "
                         f"store a password with `syncd password set {account.name}`")
    _sign_in(account, args.browser, args.device)
    if args.no_check:
        return 0
    return 0 if _check_account(account) else 1


def _sign_in(account: AccountSettings, browser: bool = False, device: bool = False) -> None:
    from syncd.auth.oauth import sign_in
    from syncd.auth.secrets import oauth2_keyring_user

    options: dict[str, Any] = {}
    choice = True if browser else False if device else None
    if choice is not False and sys.stdin is not None and sys.stdin.isatty():
        from syncd.auth.oauth import resolve

        if choice or resolve(account).default_flow == "browser":
            options["paste"] = sys.stdin
    sign_in(account, browser=choice, out=sys.stdout, **options)
    print(f"{account.name}: signed in; the refresh token is stored in the keyring (service "
          f"'syncd', user '{oauth2_keyring_user(account.name)}')", flush=True)


# --- init ---------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from syncd.config.init import add_account
    from syncd.config.load import default_config_path

    interactive = not args.non_interactive and sys.stdin is not None and sys.stdin.isatty()
    answers = _init_answers(args, interactive)
    preset = _init_preset(answers)
    path = (args.config or default_config_path()).expanduser()
    settings = add_account(path, answers)
    account = settings.accounts[answers.name]
    print(f"added account {account.name!r} to {path}: {account.protocol.upper()} "
          f"{account.host}:{account.port}, user {account.username}"
          f"{', OAuth2' if account.auth == 'oauth2' else ''}")
    if preset is not None and preset.note and not interactive:
        print(f"note: {preset.note}")
    from syncd.logs import setup_logging

    setup_logging(settings.general.log_level, debug=args.debug)
    if not _init_credentials(account, interactive) or args.no_check:
        return 0
    print(f"checking {account.name}...")
    if _check_account(account):
        print(f"next: `syncd sync {account.name}`, and `syncd mutt-config {account.name}` for "
              f"neomutt")
        return 0
    print(f"the account was added; fix it in {path} and run `syncd check {account.name}`")
    return 1


def _init_answers(args: argparse.Namespace, interactive: bool) -> AccountAnswers:
    """The new account as the flags, the discovery and (interactive) the questions give it."""
    from syncd.config.init import AccountAnswers, apply_discovery, ask, fill_defaults

    if args.address:
        if args.email and args.email != args.address:
            raise UsageError("give the address once: ADDRESS or --email")
        args.email = args.address
    if not interactive and not args.email:
        raise UsageError("syncd init --non-interactive needs --email (and whatever else the "
                         "guesses cannot know)")
    oauth2 = {key: value for key, value in (("client_id", args.client_id),
                                             ("client_secret", args.client_secret),
                                             ("tenant", args.tenant)) if value}
    answers = AccountAnswers(
        name=args.name or "", email=args.email or "", provider=args.provider,
        protocol=args.protocol or "imap", username=args.username, host=args.host,
        port=args.port, tls=args.tls, tls_ca_file=args.tls_ca_file, smtp_host=args.smtp_host,
        auth=args.auth, password_command=args.password_command, oauth2=oauth2)

    def discover(found_for: AccountAnswers) -> None:
        apply_discovery(found_for, network=not args.no_discover, say=print)

    if answers.email and answers.provider is None and answers.host is None:
        discover(answers)
    if interactive:
        # An address typed at the prompt is discovered too, before the questions it settles.
        answers = ask(answers, input, print, on_email=discover)
    elif not answers.name:
        from syncd.config.init import default_name

        answers.name = default_name(answers.email)
    return fill_defaults(answers)


def _init_preset(answers: AccountAnswers) -> AccountPreset | None:
    """The account's provider preset; a UsageError if OAuth2 lacks what it needs."""
    from syncd.config.presets import ACCOUNT_PRESETS

    preset = ACCOUNT_PRESETS.get(answers.provider or "")
    wants_oauth2 = (answers.auth or (preset.auth if preset else "password")) == "oauth2"
    if wants_oauth2 and preset is None:
        raise UsageError("OAuth2 needs a provider: use --provider (outlook, office365, gmail), "
                         "or add the account with --auth password and then write its oauth2 "
                         "settings (provider: custom, endpoints, scopes) into the config")
    if wants_oauth2 and not answers.oauth2.get("client_id"):
        raise UsageError(f"{answers.provider or 'this account'} signs in with OAuth2: pass "
                         f"--client-id (see the README for getting one), or --auth password "
                         f"for an app password")
    return preset


def _init_credentials(account: AccountSettings, interactive: bool) -> bool:
    """Sign in (OAuth2) or store the password when someone is there to type it: True. Else
    say which command does it next: False."""
    if account.auth == "oauth2":
        if not interactive:
            print(f"next: `syncd auth {account.name}` to sign in (then `syncd check "
                  f"{account.name}`)")
            return False
        _sign_in(account)
    elif account.password_command is None:
        from syncd.auth.secrets import set_password

        if not interactive:
            print(f"next: `syncd password set {account.name}` to store the password, then "
                  f"`syncd check {account.name}`")
            return False
        import getpass

        password = getpass.getpass(f"Password for {account.username} (stored in the "
                                   f"keyring): ")
        if password:
            set_password(account.name, password)
    return True


# --- adopt / import -----------------------------------------------------------------------
def cmd_adopt(args: argparse.Namespace) -> int:
    settings = _load(args)
    account = _select_accounts(settings, [args.account])[0]
    from syncd.locks import account_lock
    from syncd.migrate.adopt_run import adopt

    with account_lock(account.name, settings.general.state_dir):
        _adoption, lines = adopt(account, _password_source(account), tool=args.tool,
                                 rc=args.rc, dry_run=args.dry_run)
    print("\n".join(lines))
    if not args.dry_run:
        print(f"next: `syncd sync {account.name}` (it downloads no message already here)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from syncd.config.load import default_config_path
    from syncd.migrate.import_run import run_import

    path = (args.config or default_config_path()).expanduser()
    return run_import(args.tool, args.file, path, dry_run=args.dry_run, out=sys.stdout)


# --- partial mirrors ----------------------------------------------------------------------
def cmd_fetch(args: argparse.Namespace) -> int:
    settings = _load(args)
    from syncd.imap.partial import fetch_files

    return fetch_files(settings, args.files, _password_source, sys.stderr)


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _load(args)
    account = _select_accounts(settings, [args.account])[0]
    if account.protocol != "imap":
        raise UsageError(f"{account.name} is a POP3 account: it has no window to prune")
    from syncd.imap.partial import prune_account
    from syncd.locks import account_lock

    with account_lock(account.name, settings.general.state_dir):
        return prune_account(account, dry_run=args.dry_run, out=sys.stdout)


# --- mutt-config --------------------------------------------------------------------------
def cmd_mutt_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    account = _select_accounts(settings, [args.account])[0]
    from syncd.config.mutt import render

    sys.stdout.write(render(account, args.config.expanduser().absolute()
                            if args.config else None))
    return 0


# --- systemd-unit -------------------------------------------------------------------------
def cmd_systemd_unit(args: argparse.Namespace) -> int:
    settings = _load(args)
    from syncd.service.unit import UnitExists, inputs_from, render_unit, unit_path, write_unit

    inputs = inputs_from(settings, args.config.expanduser() if args.config else None)
    if args.print_only:
        sys.stdout.write(render_unit(inputs))
        return 0
    path = unit_path()
    try:
        write_unit(inputs, path, force=args.force)
    except UnitExists:
        raise UsageError(f"{path} exists and was not written by syncd: compare it with "
                         "`syncd systemd-unit --print`, then use --force to replace it, or "
                         "add the paths with `systemctl --user edit syncd`") from None
    print(f"wrote {path} (writable: {', '.join(str(p) for p in inputs.writable)})")
    print("next: systemctl --user daemon-reload && systemctl --user enable --now syncd "
          "(or restart it)")
    return 0


# Every command and what runs it (main); also how _command_in knows a command's name.
_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sync": cmd_sync,
    "run": cmd_run,
    "status": cmd_status,
    "check": cmd_check,
    "password": cmd_password,
    "auth": cmd_auth,
    "init": cmd_init,
    "mutt-config": cmd_mutt_config,
    "send": cmd_send,
    "outbox": cmd_outbox,
    "adopt": cmd_adopt,
    "import": cmd_import,
    "fetch": cmd_fetch,
    "prune": cmd_prune,
    "systemd-unit": cmd_systemd_unit,
}
