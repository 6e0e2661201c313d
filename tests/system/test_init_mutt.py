"""`syncd init` (flags and questions) and `syncd mutt-config`, as a user runs them: against the
real Dovecot, with the resulting snippet loaded by Debian's neomutt (`neomutt -n -F snippet
-Q ...`, HOME in a temporary directory)."""

from __future__ import annotations

import builtins
import getpass
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import pytest

from syncd.config.presets import ACCOUNT_PRESETS
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.file_keyring import FileKeyring, read_all
from tests.support.syncd_env import REPO, run_cli

NEOMUTT = shutil.which("neomutt")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("XDG_", "SYNCD_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_STATE_HOME=str(home / ".local" / "state"), **extra)
    return env


def syncd(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", *argv], capture_output=True,
                          text=True, cwd=REPO, env=env_for(home, **env), timeout=120,
                          stdin=subprocess.DEVNULL)


def neomutt_query(home: Path, snippet: Path, *variables: str) -> dict[str, str]:
    """Load the snippet into neomutt and read variables back. neomutt reports errors in a
    sourced file on stderr but still exits 0, so stderr must be empty too."""
    assert NEOMUTT is not None, "neomutt is not installed (make deps)"
    args = [NEOMUTT, "-n", "-F", str(snippet)]
    for variable in variables:
        args += ["-Q", variable]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30,
                            env={"HOME": str(home), "PATH": os.environ.get("PATH", ""),
                                 "TERM": "dumb", "LANG": "C.UTF-8"},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    values = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r'set (\w+) = (?:"(.*)"|(\S+))', line)
        assert match, line
        quoted, bare = match.group(2), match.group(3)
        values[match.group(1)] = bare if quoted is None else quoted.replace('\\"', '"')
    return values


def write_snippet(home: Path, account: str, config: Path | None = None) -> tuple[Path, str]:
    argv = ["mutt-config", account] if config is None else ["--config", str(config),
                                                             "mutt-config", account]
    result = syncd(home, *argv)
    assert result.returncode == 0, result.stderr
    snippet = home / f"{account}.muttrc"
    snippet.write_text(result.stdout)
    return snippet, result.stdout


# --------------------------------------------------------------------------------------------
# init


def test_init_non_interactive_creates_the_config_and_checks(home: Path, dovecot: Dovecot,
                                                            user: User) -> None:
    result = syncd(home, "init", "--non-interactive", "--name", "mail",
                   "--email", f"{user.name}@example.test", "--username", user.name,
                   "--host", "127.0.0.1", "--port", str(dovecot.imaps_port),
                   "--tls-ca-file", str(dovecot.ca_file),
                   "--password-command", f"printf {user.password}")
    assert result.returncode == 0, result.stdout + result.stderr
    config = home / ".config" / "syncd" / "config.yaml"  # the default location
    assert f"added account 'mail' to {config}" in result.stdout
    assert "mail: OK — IMAP 127.0.0.1" in result.stdout
    assert "next: `syncd sync mail`" in result.stdout
    assert config.stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert "smtp_host: smtp.example.test" in text  # guessed for the unknown domain
    # The file is a normal config: check and sync work, mutt-config follows.
    assert syncd(home, "check").returncode == 0
    dovecot.seed(user, "INBOX", [make_message(1)])
    sync = syncd(home, "sync")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    snippet, _ = write_snippet(home, "mail")
    values = neomutt_query(home, snippet, "folder", "spoolfile")
    assert values["folder"] == str(home / "Mail" / "mail")
    assert values["spool_file"] == str(home / "Mail" / "mail" / "INBOX")


def test_init_appends_to_an_existing_config(home: Path, tmp_path: Path, dovecot: Dovecot,
                                            user: User) -> None:
    config = tmp_path / "config.yaml"
    original = f"""\
# my accounts
accounts:
  old:   # keep me
    protocol: imap
    host: 127.0.0.1
    port: {dovecot.imaps_port}
    tls_ca_file: {dovecot.ca_file}
    username: {user.name}
    password_command: printf {user.password}

# general stuff
general:
  maildir_root: {tmp_path / "Mail"}
  state_dir: {tmp_path / "state"}
"""
    config.write_text(original)
    args = ("--config", str(config), "init", "--non-interactive", "--email",
            "someone@fastmail.com", "--password-command", "pass fastmail", "--no-check")
    result = syncd(home, *args)
    assert result.returncode == 0, result.stderr
    assert "added account 'fastmail'" in result.stdout
    assert "note: use an app password" in result.stdout
    text = config.read_text()
    block = "  fastmail:\n    provider: fastmail\n    username: someone@fastmail.com\n" \
            "    password_command: \"pass fastmail\"\n"
    assert block in text
    assert text.replace(block, "") == original
    # Again: the name is taken, nothing changes.
    again = syncd(home, *args)
    assert again.returncode == 2
    assert "account 'fastmail' is already in" in again.stderr
    assert config.read_text() == text
    assert syncd(home, "--config", str(config), "check", "old").returncode == 0


@pytest.mark.parametrize("preset", sorted(ACCOUNT_PRESETS))
def test_init_with_each_preset(home: Path, tmp_path: Path, preset: str) -> None:
    config = tmp_path / "config.yaml"
    args = ["--config", str(config), "init", "--non-interactive", "--provider", preset,
            "--email", "me@example.com", "--name", preset, "--no-check"]
    if ACCOUNT_PRESETS[preset].auth == "oauth2":
        refused = syncd(home, *args)
        assert refused.returncode == 2
        assert "signs in with OAuth2: pass --client-id" in refused.stderr
        assert not config.exists()
        args += ["--client-id", "00000000-aaaa-bbbb-cccc-000000000000", "--client-secret",
                 "not-really-secret"]
    result = syncd(home, *args)
    assert result.returncode == 0, result.stderr
    if ACCOUNT_PRESETS[preset].auth == "oauth2":
        assert f"next: `syncd auth {preset}` to sign in" in result.stdout
    # short, and valid
    assert len(config.read_text().split(f"  {preset}:\n")[1].splitlines()) <= 5
    check = syncd(home, "--config", str(config), "status")
    assert check.returncode == 0, check.stderr


def test_init_asks_the_questions(home: Path, tmp_path: Path, dovecot: Dovecot, user: User,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Interactive: the questions (defaults in brackets), the password into the keyring,
    then `check`."""
    monkeypatch.setenv("SYNCD_TEST_KEYRING", str(tmp_path / "keyring.json"))
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter([
        f"{user.name}@example.test",  # email
        "",                           # account name: the default ("example")
        "other",                      # provider
        "",                           # protocol: imap
        user.name,                    # username
        "127.0.0.1",                  # IMAP server (instead of imap.example.test)
        "",                           # SMTP server: the guess
    ])
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": user.password)
    config = tmp_path / "config.yaml"
    config.write_text(f"general:\n  maildir_root: {tmp_path / 'Mail'}\n"
                      f"  state_dir: {tmp_path / 'state'}\n")
    try:
        rc, out, err = run_cli("--config", str(config), "init", "--port",
                               str(dovecot.imaps_port), "--tls-ca-file", str(dovecot.ca_file))
    finally:
        keyring.set_keyring(previous)
    assert rc == 0, out + err
    assert prompts[:3] == ["Email address: ", "Account name (for syncd commands and the "
                           "maildir) [example]: ", "Provider (outlook, office365, gmail, "
                           "fastmail, icloud, yahoo, or 'other') [other]: "]
    assert "IMAP server [imap.example.test]: " in prompts
    assert "example: OK — IMAP 127.0.0.1" in out
    assert read_all(tmp_path / "keyring.json") == {("syncd", "example"): user.password}
    assert "host: 127.0.0.1" in config.read_text()


# --------------------------------------------------------------------------------------------
# mutt-config

SPECIAL_USE = r"""
namespace inbox {
  mailbox Gesendet-X {
    special_use = \Sent
    auto = subscribe
  }
  mailbox "Brouillons X" {
    special_use = \Drafts
    auto = subscribe
  }
  mailbox Poubelle {
    special_use = \Trash
    auto = subscribe
  }
}
"""


@pytest.fixture(scope="module")
def special_dovecot(dovecot_workroot: Path) -> Iterator[Dovecot]:
    dc = Dovecot(dovecot_workroot / "dovecot-special-use", extra_conf=SPECIAL_USE)
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


def make_account(tmp_path: Path, dc: Dovecot, user: User, layout: str, extra: str = "",
                 protocol: str = "imap") -> Path:
    config = tmp_path / "config.yaml"
    port = dc.imaps_port if protocol == "imap" else dc.pop3s_port
    config.write_text(f"""\
general:
  maildir_root: {tmp_path / "Mail"}
  state_dir: {tmp_path / "state"}
accounts:
  box:
    provider: fastmail
    protocol: {protocol}
    host: 127.0.0.1
    port: {port}
    tls_ca_file: {dc.ca_file}
    username: {user.name}
    password_command: printf {user.password}
    layout: {layout}
{extra}""")
    return config


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_mutt_config_maps_special_use_folders(home: Path, tmp_path: Path,
                                              special_dovecot: Dovecot, layout: str) -> None:
    dc = special_dovecot
    user = dc.add_user()
    dc.create_folder(user, "Sent")  # a decoy: the server says Gesendet-X is \Sent
    dc.create_folder(user, 'Money $HOME "x"')
    dc.seed(user, "INBOX", [make_message(1)])
    config = make_account(tmp_path, dc, user, layout)
    for command in ("sync", "check"):  # check records the special-use flags
        result = syncd(home, "--config", str(config), command)
        assert result.returncode == 0, result.stdout + result.stderr
    snippet, text = write_snippet(home, "box", config)
    root = tmp_path / "Mail" / "box"

    def local(name: str) -> str:
        if layout == "maildir++":
            return str(root) if name == "INBOX" else str(root / f".{name}")
        return str(root / name)

    values = neomutt_query(home, snippet, "folder", "spoolfile", "record", "postponed",
                           "trash", "smtp_url", "sendmail")
    assert values == {
        "folder": str(root),
        "spool_file": local("INBOX"),
        # Mail goes out through syncd's outbox, which files the copy in the server's Sent
        # (save_sent: auto for Fastmail): mutt's own copy would be a second one.
        "record": "",
        "postponed": local("Brouillons X"),
        "trash": local("Poubelle"),
        "smtp_url": "",
        "sendmail": f"syncd --config {config} send -oi",
    }
    mailboxes = next(line for line in text.splitlines() if line.startswith("mailboxes "))
    for name in ("Gesendet-X", "Brouillons X", "Poubelle", "Sent"):
        assert f'"{local(name).replace(str(root), "+", 1).replace("+/", "+")}"' in mailboxes
    # $ and " in a folder name are escaped, never expanded by neomutt
    assert '\\$HOME \\"x\\"' in mailboxes


def test_mutt_config_does_not_double_trash(home: Path, tmp_path: Path,
                                           special_dovecot: Dovecot) -> None:
    user = special_dovecot.add_user()
    config = make_account(tmp_path, special_dovecot, user, "verbatim",
                          extra="    trash_folder: Poubelle\n")
    assert syncd(home, "--config", str(config), "check").returncode == 0
    snippet, text = write_snippet(home, "box", config)
    assert "set trash" not in text
    assert "syncd's trash_folder (Poubelle) already keeps deleted messages" in text
    neomutt_query(home, snippet, "folder")


def test_mutt_config_without_server_knowledge(home: Path, tmp_path: Path,
                                              special_dovecot: Dovecot) -> None:
    """No state and no `check` yet: the local maildir's folders, well-known names. (With
    save_sent: never mutt's record is the Sent copy, so it is set.)"""
    user = special_dovecot.add_user()
    config = make_account(tmp_path, special_dovecot, user, "verbatim",
                          extra="    save_sent: never\n")
    snippet, text = write_snippet(home, "box", config)
    assert "# record: no \\Sent folder found" in text
    assert "# not on disk yet" in text
    neomutt_query(home, snippet, "folder", "spoolfile")
    root = tmp_path / "Mail" / "box"
    for name in ("INBOX", "Sent Items", "Drafts", "Deleted Items"):
        for sub in ("cur", "new", "tmp"):
            (root / name / sub).mkdir(parents=True, exist_ok=True)
    snippet, text = write_snippet(home, "box", config)
    values = neomutt_query(home, snippet, "record", "postponed", "trash")
    assert values == {"record": str(root / "Sent Items"), "postponed": str(root / "Drafts"),
                      "trash": str(root / "Deleted Items")}


def test_mutt_config_for_pop3_and_oauth2_accounts(home: Path, tmp_path: Path,
                                                  special_dovecot: Dovecot) -> None:
    user = special_dovecot.add_user()
    config = make_account(tmp_path, special_dovecot, user, "maildir++", protocol="pop3")
    assert syncd(home, "--config", str(config), "sync").returncode == 0
    snippet, text = write_snippet(home, "box", config)
    assert "POP3 account" in text
    values = neomutt_query(home, snippet, "folder", "spoolfile")
    assert values["spool_file"] == str(tmp_path / "Mail" / "box")
    # An OAuth2 preset account, never synced: the SMTP server of the preset.
    other = tmp_path / "other.yaml"
    other.write_text(f"general:\n  maildir_root: {tmp_path / 'Mail'}\n"
                     f"  state_dir: {tmp_path / 'state'}\naccounts:\n  work:\n"
                     "    provider: office365\n    username: me@example.com\n"
                     "    oauth2: {client_id: 00000000-0000-0000-0000-000000000000}\n")
    snippet, text = write_snippet(home, "work", other)
    values = neomutt_query(home, snippet, "smtp_url", "sendmail", "record", "from")
    assert values["sendmail"] == f"syncd --config {other} send -oi"  # the outbox, OAuth2 too
    assert (values["smtp_url"], values["record"]) == ("", "")  # Microsoft files sent mail
    assert values["from"] == "me@example.com"


def test_mutt_config_unknown_account(home: Path, tmp_path: Path,
                                     special_dovecot: Dovecot) -> None:
    user = special_dovecot.add_user()
    config = make_account(tmp_path, special_dovecot, user, "verbatim")
    result = syncd(home, "--config", str(config), "mutt-config", "nope")
    assert result.returncode == 2
    assert "unknown account 'nope' (configured: box)" in result.stderr



COURIER_SPECIAL_USE = r"""
namespace inbox {
  mailbox Sent-X {
    special_use = \Sent
  }
  mailbox Drafts-X {
    special_use = \Drafts
  }
  mailbox Trash-X {
    special_use = \Trash
  }
}
"""


@pytest.mark.parametrize("special_use", [True, False], ids=["special-use", "names"])
def test_mutt_config_leaves_the_namespace_prefix_out(
        home: Path, tmp_path: Path, dovecot_factory: Callable[..., Dovecot],
        special_use: bool) -> None:
    """A Courier-like server keeps Sent under INBOX.: a sync shows it as +Sent, so the
    snippet must name that place before the folder is synced (issue 15)."""
    dc = dovecot_factory(inbox_prefix="INBOX.", separator=".",
                         extra_conf=COURIER_SPECIAL_USE if special_use else "")
    user = dc.add_user()
    suffix = "-X" if special_use else ""
    for name in ("Sent", "Drafts", "Trash"):
        dc.create_folder(user, f"INBOX.{name}{suffix}")
    config = make_account(tmp_path, dc, user, "verbatim", extra="    save_sent: never\n")
    result = syncd(home, "--config", str(config), "check")  # no sync: nothing local yet
    assert result.returncode == 0, result.stdout + result.stderr
    snippet, text = write_snippet(home, "box", config)
    root = tmp_path / "Mail" / "box"
    assert "INBOX/" not in text, text
    for line in ("record", "postponed", "trash"):
        assert f"set {line} = " in text, text
    assert {k: v for k, v in (line.split(" = ", 1) for line in text.splitlines()
                              if line.startswith(("set record", "set postponed", "set trash")))
            } == {"set record": f'"+Sent{suffix}"', "set postponed": f'"+Drafts{suffix}"',
                  "set trash": f'"+Trash{suffix}"'}
    # After the sync, the folders are where the snippet said.
    result = syncd(home, "--config", str(config), "sync")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("Sent", "Drafts", "Trash"):
        assert (root / f"{name}{suffix}" / "cur").is_dir()
    neomutt_query(home, snippet, "record", "postponed", "trash")
