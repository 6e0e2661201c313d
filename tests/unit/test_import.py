"""`syncd import mbsync|offlineimap`: config files in the forms their manuals show."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from syncd.config.load import parse_config
from syncd.migrate.import_mbsync import import_mbsync
from syncd.migrate.import_offlineimap import import_offlineimap, password_eval_command
from syncd.migrate.mbsyncrc import MbsyncrcError, parse_mbsyncrc, split_args
from syncd.migrate.offlineimaprc import folder_filter
from tests.support.syncd_env import run_cli

MBSYNCRC = """\
# mbsync(1), EXAMPLES, and a second account in the old (pre-1.4) spelling
IMAPAccount work
Host work.host.com
Port 993
User tehuser
PassCmd "+pass show \\"mail/work\\""
SSLType IMAPS
CertificateFile ~/.cert/work.pem

IMAPStore work-remote
Account work

MaildirStore work-local
Path ~/Mail/work/
Inbox ~/Mail/work/INBOX
SubFolders Verbatim

Channel work
Far :work-remote:
Near :work-local:
Patterns * !Junk "!Archive*" "[Gmail]/Sent Mail"
Sync Pull
Create Near
Expunge Both
MaxMessages 1000
SyncState *

IMAPStore home-remote
Host imap.home.net
User me
Pass hunter2
SSLType STARTTLS

MaildirStore home-local
Inbox ~/Maildir
SubFolders Maildir++

Channel home
Master :home-remote:
Slave :home-local:
Patterns % "!Trash*" Trash/keep
"""


def test_split_args_quoting() -> None:
    assert split_args('a "b c" "d\\"e" f\\g') == ["a", "b c", 'd"e', "f\\g"]
    with pytest.raises(MbsyncrcError):
        split_args('"open')


def test_mbsyncrc_sections() -> None:
    config = parse_mbsyncrc(MBSYNCRC)
    kinds = [(s.kind, s.name) for s in config.sections]
    assert ("channel", "home") in kinds and ("imapaccount", "work") in kinds
    channel = config.find("channel", "work")
    assert channel is not None
    assert channel.all_args("patterns") == ["*", "!Junk", "!Archive*", "[Gmail]/Sent Mail"]
    assert config.find("channel", "home").get("far") == ":home-remote:"  # Master -> Far


def test_import_mbsync_accounts(tmp_path: Path) -> None:
    rc = tmp_path / "mbsyncrc"
    rc.write_text(MBSYNCRC)
    work, home = import_mbsync(rc)
    assert work.name == "work"
    home_dir = str(Path("~").expanduser())
    assert work.settings == {
        "protocol": "imap", "host": "work.host.com", "tls": "implicit", "port": 993,
        "tls_ca_file": f"{home_dir}/.cert/work.pem", "username": "tehuser",
        "password_command": 'pass show "mail/work"', "maildir": f"{home_dir}/Mail/work",
        "layout": "verbatim",
        "folders": {"include": ["*", "[[]Gmail]/Sent Mail"], "exclude": ["Junk", "Archive*"]},
        "direction": "pull", "delete": "pull", "create_folders": "local", "max_messages": 1000}
    notes = "\n".join(work.not_carried)
    assert "MaxMessages 1000 (Channel work): carried over as max_messages" in notes
    assert "Expunge Both (Channel work): syncd expunges only" in notes
    assert home.settings["create_folders"] == "none"  # mbsync's default Create None
    assert home.settings["delete"] == "none"  # Expunge None: deletions only flagged
    assert "direction" not in home.settings
    assert home.settings["tls"] == "starttls" and home.settings["layout"] == "maildir++"
    assert home.settings["maildir"] == f"{home_dir}/Maildir"
    assert "password_command" not in home.settings
    home_notes = "\n".join(home.not_carried)
    assert "Pass (hidden): not carried over" in home_notes and "hunter2" not in home_notes
    assert "Patterns %: not carried over" in home_notes
    assert "Patterns Trash/keep: not carried over" in home_notes  # re-inclusion after !Trash*


def test_import_mbsync_writes_config_keeping_comments(tmp_path: Path) -> None:
    rc = tmp_path / "mbsyncrc"
    rc.write_text(MBSYNCRC)
    config = tmp_path / "config.yaml"
    original = ("general:\n  maildir_root: /tmp/m  # mine\n# accounts below\naccounts:\n"
                "  work:\n    protocol: imap\n    host: keep.me\n    username: u\n")
    config.write_text(original)
    code, out, err = run_cli("--config", str(config), "import", "mbsync", str(rc), "--dry-run")
    assert code == 0, err
    assert config.read_text() == original and "home:" in out
    code, out, err = run_cli("--config", str(config), "import", "mbsync", str(rc))
    assert code == 0, err
    text = config.read_text()
    assert text.startswith(original)  # comments kept, the existing account untouched
    assert "work: already in" in out and "not overwritten" in out
    assert "home: added" in out and "Pass (hidden): not carried over" in out
    settings = parse_config(text, str(config))
    assert settings.accounts["work"].host == "keep.me"
    assert settings.accounts["home"].layout == "maildir++"
    assert "# Pass (hidden): not carried over" in text  # the report stays in the file


OFFLINEIMAPRC = """\
[general]
accounts = Personal, Work
metadata = ~/.offlineimap

[Account Personal]
localrepository = PersonalLocal
remoterepository = PersonalRemote
autorefresh = 5
maxage = 30

[Repository PersonalLocal]
type = Maildir
localfolders = ~/Mail/personal
sep = /

[Repository PersonalRemote]
type = IMAP
remotehost = imap.example.org
remoteuser = me@example.org
remotepasseval = subprocess.check_output(["pass", "show", "mail/personal"]).strip()
sslcacertfile = OS-DEFAULT
folderfilter = lambda foldername: foldername not in ['Trash', 'Spam', '[Gmail]/All Mail']
readonly = True

[Account Work]
localrepository = WorkLocal
remoterepository = WorkRemote

[Repository WorkLocal]
type = Maildir
localfolders = ~/Mail/work

[Repository WorkRemote]
type = IMAP
remotehost = mail.work.test
remoteport = 143
ssl = no
remoteuser = jo
remotepassfile = ~/.work-pass
folderfilter = lambda f: __import__('os').system('touch /tmp/syncd-pwned')
"""


def test_import_offlineimap_accounts(tmp_path: Path) -> None:
    rc = tmp_path / "offlineimaprc"
    rc.write_text(OFFLINEIMAPRC)
    personal, work = import_offlineimap(rc)
    home_dir = str(Path("~").expanduser())
    assert personal.settings["host"] == "imap.example.org"
    assert personal.settings["tls"] == "implicit" and "tls_ca_file" not in personal.settings
    assert personal.settings["password_command"] == "pass show mail/personal"
    assert personal.settings["maildir"] == f"{home_dir}/Mail/personal"
    assert personal.settings["folders"] == {
        "include": ["*"], "exclude": ["Trash", "Spam", "[[]Gmail]/All Mail"]}
    assert personal.settings["poll_interval"] == "300s"
    notes = "\n".join(personal.not_carried)
    assert personal.settings["direction"] == "pull" and personal.settings["max_age"] == "30d"
    assert "maxage = 30 ([Account Personal]): carried over as max_age: 30d" in notes
    assert "direction" not in work.settings and "delete" not in work.settings
    assert work.settings["tls"] == "starttls" and work.settings["port"] == 143
    assert work.settings["password_command"] == f"cat {home_dir}/.work-pass"
    work_notes = "\n".join(work.not_carried)
    assert "not a form syncd recognises" in work_notes
    assert "sep '.'" in work_notes
    assert not Path("/tmp/syncd-pwned").exists()  # never evaluated
    for account in (personal, work):
        block = yaml.safe_load("\n".join(f"{k}: {v!r}" for k, v in account.settings.items()
                                         if not isinstance(v, dict)))
        assert block["protocol"] == "imap"


@pytest.mark.parametrize(("expression", "include", "exclude"), [
    ("lambda f: f in ['INBOX', 'Sent']", ["INBOX", "Sent"], []),
    ("lambda folder: folder not in ('Trash',)", None, ["Trash"]),
    ("lambda f: f != 'Junk'", None, ["Junk"]),
    ("lambda f: not re.search('^Archive', f)", None, ["Archive*"]),
    ("lambda f: re.search('^(INBOX|Sent)$', f)", None, None),
    ("lambda f: re.search('^INBOX$|^Sent$', f)", ["INBOX", "Sent"], []),
    ("lambda f: f not in ['Trash'] and not re.search('Spam', f)", None, ["Trash", "*Spam*"]),
    ("lambda f: f in ['INBOX'] or re.search('^Lists/', f)", ["INBOX", "Lists/*"], []),
    ("lambda f: os.system('rm -rf ~')", None, None),
])
def test_folderfilter_forms(expression: str, include: list[str] | None,
                            exclude: list[str] | None) -> None:
    result = folder_filter(expression)
    if exclude is None:
        assert result.problem is not None and "not a form" in result.problem
        return
    assert result.problem is None
    assert result.include == include and result.exclude == exclude


def test_remotepasseval_forms() -> None:
    assert password_eval_command('os.popen("pass show x").read().strip()') == "pass show x"
    assert password_eval_command(
        'subprocess.check_output("gpg -dq ~/.p.gpg", shell=True).strip()') == "gpg -dq ~/.p.gpg"
    assert password_eval_command("get_password('work')") is None


def _mbsync(tmp_path: Path, channel: str) -> tuple[dict, str]:
    rc = tmp_path / "mbsyncrc"
    rc.write_text("IMAPStore r\nHost h\nUser u\nPassCmd p\n\nMaildirStore l\nPath ~/M/\n"
                  "Inbox ~/M/INBOX\n\nChannel c\nFar :r:\nNear :l:\nPatterns *\n" + channel)
    (account,) = import_mbsync(rc)
    config = tmp_path / "config.yaml"
    code, _, err = run_cli("--config", str(config), "import", "mbsync", str(rc))
    assert code == 0, err
    from syncd.config.load import load_config

    load_config(config)  # the written policy keys load
    keys = ("direction", "delete", "create_folders", "max_messages", "max_size",
            "folder_settings")
    return ({k: account.settings[k] for k in keys if k in account.settings},
            "\n".join(account.not_carried))


@pytest.mark.parametrize(("channel", "expected", "said"), [
    ("Sync All\nCreate Both\nExpunge Both\n", {}, "flagged deleted"),
    ("Create Both\n", {"delete": "none"}, "never expunging it"),  # Expunge None (default)
    ("Sync Pull\nCreate Slave\nExpunge Slave\n",
     {"direction": "pull", "delete": "pull", "create_folders": "local"}, ""),
    ("Sync Push\nCreate Far\nExpunge Far\n",
     {"direction": "push", "delete": "push", "create_folders": "server"}, ""),
    ("Sync Pull Flags\nCreate Both\nExpunge Both\n",
     {"direction": "pull", "delete": "none"}, "only flag changes"),
    ("Sync New\nCreate Both\nExpunge Both\n", {"delete": "none"}, "only new messages"),
    ("Sync PullNew PullFlags PushFlags PullDelete\nCreate Near\nExpunge Near\n",
     {"delete": "pull", "create_folders": "local"}, "to the server, which also copies new"),
    ("Sync Pull Delete\nCreate Both\nExpunge Both\n", {}, "deletions alone are not carried"),
    ("Sync Pull\nCreate Both\nExpunge Both\nMaxMessages 50\n",
     {"direction": "pull", "delete": "pull", "max_messages": 50}, "deletes no local copy"),
    ("Create Both\nExpunge Both\nRemove Both\n", {}, "never removes a folder"),
    ("Create Both\nExpunge Both\nMaxSize 1m\n", {"max_size": 1048576},
     "MaxSize 1m (Channel c): carried over as max_size: 1048576"),
    ("Create Both\nExpunge Both\nMaxSize 200k\n", {"max_size": 204800}, "placeholders"),
    ("Create Both\nExpunge Both\nMaxSize lots\n", {}, "MaxSize"),
])
def test_mbsync_policy_mapping(tmp_path: Path, channel: str, expected: dict,
                               said: str) -> None:
    keys, notes = _mbsync(tmp_path, channel)
    assert keys == expected
    assert said in notes


def test_mbsync_sync_none_leaves_folders_out(tmp_path: Path) -> None:
    keys, notes = _mbsync(tmp_path, "Sync None\n")
    assert keys == {}
    assert "its folders are left out" in notes


def test_mbsync_channels_with_different_policies(tmp_path: Path) -> None:
    rc = tmp_path / "mbsyncrc"
    rc.write_text("IMAPAccount a\nHost h\nUser u\nPassCmd p\n\nIMAPStore r\nAccount a\n\n"
                  "MaildirStore l\nPath ~/M/\nInbox ~/M/INBOX\n\n"
                  "Channel inbox\nFar :r:INBOX\nNear :l:INBOX\nCreate Both\nExpunge Both\n\n"
                  "Channel arch\nFar :r:Archive\nNear :l:Archive\nSync Pull\nCreate Near\n"
                  "Expunge Near\n")
    (account,) = import_mbsync(rc)
    assert account.settings["direction"] == "pull" and account.settings["delete"] == "pull"
    assert account.settings["folder_settings"] == {"INBOX": {"direction": "both",
                                                             "delete": "both",
                                                             "create_folders": "both"}}
    config = tmp_path / "config.yaml"
    assert run_cli("--config", str(config), "import", "mbsync", str(rc))[0] == 0
    from syncd.config.load import load_config

    assert load_config(config).accounts["a"].folder_settings["INBOX"].direction == "both"


def test_offlineimap_policy(tmp_path: Path) -> None:
    rc = tmp_path / "offlineimaprc"
    rc.write_text("[general]\naccounts = A\n\n[Account A]\nlocalrepository = L\n"
                  "remoterepository = R\nmaxage = 90\n\n[Repository L]\ntype = Maildir\n"
                  "localfolders = ~/M\nsync_deletes = no\ncreatefolders = False\n\n"
                  "[Repository R]\ntype = IMAP\nremotehost = h\nremoteuser = u\n"
                  "remotepassfile = ~/p\nexpunge = no\nmaxsize = 2000000\n")
    (account,) = import_offlineimap(rc)
    s = account.settings
    assert (s["delete"], s["create_folders"], s["max_age"]) == ("none", "server", "90d")
    notes = "\n".join(account.not_carried)
    assert s["max_size"] == 2000000
    assert "maxsize = 2000000 ([Repository R]): carried over as max_size: 2000000" in notes
    assert "expunge = no" in notes
    config = tmp_path / "config.yaml"
    assert run_cli("--config", str(config), "import", "offlineimap", str(rc))[0] == 0
    from syncd.config.load import load_config

    assert load_config(config).accounts["A"].max_age == 90 * 86400
