"""Config loading: the schema, defaults, paths, and above all precise errors (key + line)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncd.config.load import (
    Settings,
    build_account,
    default_config_path,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from syncd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME and no XDG overrides, so that defaults are predictable."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    return home


def yml(text: str) -> str:
    """Dedent, and drop the first newline so that the first YAML line is line 1."""
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str, path: str = "<test>") -> Settings:
    return parse_config(yml(text), path)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


MINIMAL = """
accounts:
  work:
    protocol: imap
    host: imap.example.com
    username: me
"""


# --------------------------------------------------------------------------------- the example


def test_example_config_loads() -> None:
    settings = load_config(REPO / "config.example.yaml")
    assert list(settings.accounts) == ["work", "gmail", "fastmail", "isp"]
    work = settings.accounts["work"]
    assert (work.host, work.port, work.protocol) == ("outlook.office365.com", 993, "imap")
    assert work.password_command == "pass show mail/work"
    gmail = settings.accounts["gmail"]
    assert gmail.host == "imap.gmail.com"
    assert "[Gmail]/All Mail" in gmail.folders.exclude
    assert settings.accounts["fastmail"].host == "imap.fastmail.com"
    isp = settings.accounts["isp"]
    assert (isp.protocol, isp.host, isp.port, isp.leave_on_server) == (
        "pop3", "pop.example.net", 995, False)
    assert isp.poll_interval == 600
    assert all(a.password_command and "pass show" in a.password_command
               for a in settings.accounts.values())


# ---------------------------------------------------------------------------------- defaults


def test_imap_defaults(home: Path) -> None:
    settings = parse(MINIMAL)
    assert settings.path is None
    general = settings.general
    assert general.maildir_root == home / "Mail"
    assert general.state_dir == home / ".local/state/syncd"
    assert general.log_level == "info"
    assert general.on_new_mail is None
    work = settings.accounts["work"]
    assert work.name == "work"
    assert work.port == 993
    assert work.tls == "implicit"
    assert work.tls_ca_file is None
    assert work.allow_insecure is False
    assert work.password_command is None
    assert work.maildir == home / "Mail/work"
    assert work.layout == "verbatim"
    assert work.folders.include == ("*",)
    assert work.folders.exclude == ()
    assert work.idle == ("INBOX",)
    assert work.poll_interval == 300.0
    assert work.trash_folder is None
    assert work.timeout == 60.0
    assert work.connections == 3
    assert work.state_path == home / ".local/state/syncd/work.sqlite3"


def test_pop3_defaults() -> None:
    isp = parse("""
        accounts:
          isp:
            protocol: pop3
            host: pop.example.net
            username: me
    """).accounts["isp"]
    assert isp.port == 995
    assert isp.poll_interval == 600.0
    assert isp.leave_on_server is False
    assert isp.delete_after is None
    assert isp.max_message_size is None
    assert isp.max_messages_per_poll is None


@pytest.mark.parametrize(("protocol", "tls", "port"), [
    ("imap", "implicit", 993), ("imap", "starttls", 143), ("imap", "none", 143),
    ("pop3", "implicit", 995), ("pop3", "starttls", 110), ("pop3", "none", 110),
])
def test_default_port_follows_protocol_and_tls(protocol: str, tls: str, port: int) -> None:
    account = parse(f"""
        accounts:
          a:
            protocol: {protocol}
            host: h
            username: u
            tls: {tls}
            allow_insecure: true
    """).accounts["a"]
    assert account.port == port


def test_xdg_state_home_and_config_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg/state")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/xdg/config")
    assert parse(MINIMAL).general.state_dir == Path("/xdg/state/syncd")
    assert default_config_path() == Path("/xdg/config/syncd/config.yaml")


def test_default_config_path_falls_back_to_dot_config(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_config_path() == home / ".config/syncd/config.yaml"
    # The XDG spec says relative values are invalid and must be ignored.
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    assert default_config_path() == home / ".config/syncd/config.yaml"


def test_full_account_and_general() -> None:
    settings = parse("""
        general:
          maildir_root: /srv/mail
          state_dir: /srv/state
          log_level: DEBUG
          on_new_mail: notmuch new
        accounts:
          work:
            protocol: imap
            host: mail.example.com
            port: 10993
            tls: starttls
            tls_ca_file: /etc/ca.pem
            username: me@example.com
            password_command: pass show mail/work
            maildir: /data/work
            layout: maildir++
            folders:
              include: ["*"]
              exclude: [Junk, "[Gmail]/All Mail"]
            idle: [INBOX, Sent]
            poll_interval: 1h30m
            trash_folder: Trash
            timeout: 30s
            connections: 8
          isp:
            protocol: pop3
            host: pop.example.net
            username: me
            leave_on_server: true
            delete_after: 14d
            max_message_size: 25MB
            max_messages_per_poll: 100
    """)
    assert settings.general.log_level == "debug"
    assert settings.general.on_new_mail == "notmuch new"
    work = settings.accounts["work"]
    assert work.port == 10993
    assert work.tls_ca_file == Path("/etc/ca.pem")
    assert work.maildir == Path("/data/work")
    assert work.layout == "maildir++"
    assert work.folders.exclude == ("Junk", "[Gmail]/All Mail")
    assert work.idle == ("INBOX", "Sent")
    assert work.poll_interval == 5400.0
    assert work.timeout == 30.0
    assert work.state_path == Path("/srv/state/work.sqlite3")
    isp = settings.accounts["isp"]
    assert isp.delete_after == 14 * 86400
    assert isp.max_message_size == 25_000_000
    assert isp.max_messages_per_poll == 100
    assert isp.maildir == Path("/srv/mail/isp")


def test_settings_are_frozen_and_keep_account_order() -> None:
    settings = parse("""
        accounts:
          zeta: {protocol: imap, host: h, username: u}
          alpha: {protocol: imap, host: h, username: u}
          mid: {protocol: pop3, host: h, username: u}
    """)
    assert list(settings.accounts) == ["zeta", "alpha", "mid"]
    with pytest.raises(AttributeError):  # immutable
        settings.accounts["zeta"].port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.general.log_level = "debug"  # type: ignore[misc]


def test_account_settings_can_be_built_directly(home: Path) -> None:
    # Other modules' tests build accounts without a config file.
    account = build_account(name="t", protocol="pop3", host="h", username="u")
    assert account.port == 995
    assert account.maildir == home / "Mail/t"
    assert account.state_path == home / ".local/state/syncd/t.sqlite3"


def test_yaml_1_1_quirks_are_read_as_typed() -> None:
    # 0123 would be octal 83, 2024 an int, "123:" an int key: text fields get the typed text.
    settings = parse("""
        accounts:
          123:
            protocol: imap
            host: h
            username: 0123
            idle: [INBOX, 2024]
            folders:
              exclude: Junk
    """)
    account = settings.accounts["123"]
    assert account.name == "123"
    assert account.username == "0123"
    assert account.idle == ("INBOX", "2024")
    assert account.folders.exclude == ("Junk",)


def test_yaml_merge_keys_share_settings() -> None:
    settings = parse("""
        accounts:
          a: &common
            protocol: imap
            host: imap.example.com
            username: a
            poll_interval: 2m
          b:
            <<: *common
            username: b
            maildir: /m/b
    """)
    b = settings.accounts["b"]
    assert (b.host, b.username, b.poll_interval, b.maildir) == (
        "imap.example.com", "b", 120.0, Path("/m/b"))


# -------------------------------------------------------------------------------------- paths


def test_paths_expand_home_vars_and_relative_to_config_file(
        tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILBASE", "/var/mail-base")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = conf_dir / "config.yaml"
    config.write_text(yml("""
        general:
          maildir_root: $MAILBASE/root
          state_dir: ~/st
        accounts:
          a:
            protocol: imap
            host: h
            username: u
            maildir: ${MAILBASE}/a
            tls_ca_file: certs/ca.pem
          b:
            protocol: imap
            host: h
            username: u
            maildir: ../elsewhere/b
    """))
    settings = load_config(config)
    assert settings.path == config
    assert settings.general.maildir_root == Path("/var/mail-base/root")
    assert settings.general.state_dir == home / "st"
    assert settings.accounts["a"].maildir == Path("/var/mail-base/a")
    assert settings.accounts["a"].tls_ca_file == conf_dir / "certs/ca.pem"
    assert settings.accounts["b"].maildir == tmp_path / "elsewhere/b"


def test_unset_variable_in_path_is_an_error() -> None:
    err = error("""
        general:
          maildir_root: $SYNCD_SURELY_UNSET/mail
        accounts:
          a: {protocol: imap, host: h, username: u}
    """)
    assert err.key == "general.maildir_root"
    assert err.line == 2
    assert "$SYNCD_SURELY_UNSET is not set" in str(err)


# ------------------------------------------------------------------------------------- errors


def test_unknown_account_key_suggests_the_close_one() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            poll_intervall: 5m
    """)
    assert err.key == "accounts.work.poll_intervall"
    assert err.line == 6
    assert "did you mean 'poll_interval'?" in str(err)
    assert str(err).startswith("config error: line 6: accounts.work.poll_intervall: ")


def test_unknown_key_far_from_everything_has_no_suggestion() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            zzzzzz: 1
    """)
    assert (err.key, err.line) == ("accounts.work.zzzzzz", 6)
    assert "did you mean" not in str(err)


@pytest.mark.parametrize(("text", "key", "line", "suggestion"), [
    ("general:\n  log_levl: info\naccounts:\n  a: {protocol: imap, host: h, username: u}\n",
     "general.log_levl", 2, "log_level"),
    ("acounts:\n  a: {protocol: imap, host: h, username: u}\n", "acounts", 1, "accounts"),
    ("accounts:\n  a:\n    protocol: imap\n    host: h\n    username: u\n    folders:\n"
     "      include: ['*']\n      exlude: [Junk]\n", "accounts.a.folders.exlude", 8, "exclude"),
    ("accounts:\n  a:\n    protocol: imap\n    hots: h\n    username: u\n",
     "accounts.a.hots", 4, "host"),
])
def test_unknown_keys_everywhere(text: str, key: str, line: int, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert (info.value.key, info.value.line) == (key, line)
    assert f"did you mean '{suggestion}'?" in str(info.value)


def test_keys_at_the_wrong_level_get_a_hint() -> None:
    err = error("""
        general:
          poll_interval: 5m
        accounts:
          a: {protocol: imap, host: h, username: u}
    """)
    assert (err.key, err.line) == ("general.poll_interval", 2)
    assert "per-account setting" in str(err)
    err = error("""
        accounts:
          a:
            protocol: imap
            host: h
            username: u
            state_dir: /x
    """)
    assert (err.key, err.line) == ("accounts.a.state_dir", 6)
    assert "move it under general" in str(err)


def test_a_password_key_is_refused_without_echoing_it() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            password: hunter2-secret
    """)
    assert (err.key, err.line) == ("accounts.work.password", 6)
    assert "password_command" in str(err)
    assert "hunter2-secret" not in str(err)


@pytest.mark.parametrize(("line_text", "key", "expect"), [
    ("port: abc", "port", "must be a whole number (got 'abc')"),
    ("port: 99999", "port", "less than or equal to 65535"),
    ("port: true", "port", "not a boolean"),
    ("connections: 9", "connections", "less than or equal to 8"),
    ("connections: 0", "connections", "greater than or equal to 1"),
    ("allow_insecure: maybe", "allow_insecure", "must be true or false (got 'maybe')"),
    ("tls: startls", "tls", "did you mean 'starttls'?"),
    ("tls: off", "tls", "must be 'implicit', 'starttls' or 'none' (got 'off')"),
    ("layout: maildirpp", "layout", "must be 'verbatim' or 'maildir++'"),
    ("poll_interval: 5x", "poll_interval", "invalid duration '5x'"),
    ("poll_interval: 0", "poll_interval", "greater than 0"),
    ("timeout: soon", "timeout", "invalid duration 'soon'"),
    ("idle: {INBOX: 1}", "idle", "must be a list, not a mapping"),
    ("folders: [INBOX]", "folders", "must be a mapping"),
    ("trash_folder: ''", "trash_folder", "must not be empty"),
])
def test_wrong_values_name_key_and_line(line_text: str, key: str, expect: str) -> None:
    err = error(f"""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            {line_text}
    """)
    assert err.key == f"accounts.work.{key}"
    assert err.line == 6
    assert expect in str(err)


@pytest.mark.parametrize(("host", "expect"), [
    ("imaps://mail.example.com", "not a URL"), ("'mail example.com'", "bare host name"),
    ("''", "not an empty string"),
])
def test_bad_host(host: str, expect: str) -> None:
    err = error(f"""
        accounts:
          work:
            protocol: imap
            username: u
            host: {host}
    """)
    assert (err.key, err.line) == ("accounts.work.host", 5)
    assert expect in str(err)


def test_pop3_wrong_bool() -> None:
    err = error("""
        accounts:
          home: {protocol: imap, host: h, username: u}
          isp:
            protocol: pop3
            host: pop.example.net
            username: me
            leave_on_server: maybe
    """)
    assert (err.key, err.line) == ("accounts.isp.leave_on_server", 7)
    assert "must be true or false (got 'maybe')" in str(err)


@pytest.mark.parametrize(("line_text", "expect"), [
    ("max_message_size: 25XB", "invalid size '25XB'"),
    ("max_message_size: 0", "greater than or equal to 1"),
    ("delete_after: fortnight", "invalid duration 'fortnight'"),
    ("max_messages_per_poll: lots", "must be a whole number"),
])
def test_bad_pop3_durations_and_sizes(line_text: str, expect: str) -> None:
    err = error(f"""
        accounts:
          isp:
            protocol: pop3
            host: h
            username: u
            leave_on_server: true
            {line_text}
    """)
    assert err.key == f"accounts.isp.{line_text.split(':')[0]}"
    assert err.line == 7
    assert expect in str(err)


def test_sequence_item_error_points_at_the_item() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            folders:
              exclude:
                - Junk
                - [nested]
    """)
    assert (err.key, err.line) == ("accounts.work.folders.exclude[1]", 9)


def test_missing_host_names_account_and_its_line() -> None:
    err = error("""
        accounts:
          home:
            protocol: imap
            host: h
            username: u
          work:
            protocol: imap
            username: me
    """)
    assert err.key == "accounts.work.host"
    assert err.line == 6
    assert "missing required key 'host' in account 'work'" in str(err)


@pytest.mark.parametrize(("body", "missing"), [
    ("    host: h\n    username: u\n", "protocol"),
    ("    protocol: pop3\n    host: h\n", "username"),
])
def test_missing_required_keys(body: str, missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("accounts:\n  acct:\n" + body)
    assert (info.value.key, info.value.line) == (f"accounts.acct.{missing}", 2)


def test_account_without_any_settings() -> None:
    err = error("""
        general: {}
        accounts:
          empty:
    """)
    assert (err.key, err.line) == ("accounts.empty.protocol", 3)
    assert "missing required key 'protocol' in account 'empty'" in str(err)


def test_tls_none_requires_allow_insecure() -> None:
    text = """
        accounts:
          lan:
            protocol: imap
            host: 192.168.1.2
            tls: none
            username: u
    """
    err = error(text)
    assert (err.key, err.line) == ("accounts.lan.tls", 5)
    assert "allow_insecure: true" in str(err)
    ok = parse_config(yml(text) + "    allow_insecure: true\n")
    assert ok.accounts["lan"].tls == "none"


@pytest.mark.parametrize("name", ["../x", ".hidden", "a b", "a/b", "-x", "x" * 65, "ü"])
def test_invalid_account_name(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'general: {{}}\naccounts:\n  "{name}":\n    protocol: imap\n')
    assert info.value.key == f"accounts.{name}"
    assert info.value.line == 3
    assert "invalid account name" in str(info.value)


@pytest.mark.parametrize("name", ["a", "work.2", "A_b-c", "123", "x" * 64])
def test_valid_account_names(name: str) -> None:
    settings = parse_config(f'accounts:\n  "{name}": {{protocol: imap, host: h, username: u}}\n')
    assert list(settings.accounts) == [name]


def test_duplicate_account_is_an_error() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
          work:
            protocol: pop3
            host: h
            username: u
    """)
    assert (err.key, err.line) == ("accounts.work", 6)
    assert "duplicate account 'work' (first defined on line 2)" in str(err)


def test_duplicate_key_inside_an_account_is_an_error() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            host: other
    """)
    assert (err.key, err.line) == ("accounts.work.host", 6)
    assert "duplicate key 'host' (first defined on line 4)" in str(err)


def test_account_names_differing_only_in_case() -> None:
    err = error("""
        accounts:
          Work: {protocol: imap, host: h, username: u}
          work: {protocol: imap, host: h, username: u}
    """)
    assert (err.key, err.line) == ("accounts.work", 3)
    assert "'Work' and 'work'" in str(err)


def test_two_accounts_with_the_same_maildir() -> None:
    err = error("""
        accounts:
          a:
            protocol: imap
            host: h
            username: u
            maildir: /mail/shared
          b:
            protocol: imap
            host: h
            username: u
            maildir: /mail/shared/
    """)
    assert (err.key, err.line) == ("accounts.b.maildir", 11)
    assert "accounts 'a' and 'b' share a maildir" in str(err)


def test_explicit_maildir_colliding_with_a_default_one(home: Path) -> None:
    err = error("""
        accounts:
          a:
            protocol: imap
            host: h
            username: u
            maildir: ~/Mail/b
          b:
            protocol: imap
            host: h
            username: u
    """)
    # b's maildir is the default <maildir_root>/b: the line is that of account b.
    assert (err.key, err.line) == ("accounts.b.maildir", 7)
    assert "'a' and 'b'" in str(err)


@pytest.mark.parametrize(("a_dir", "b_dir"), [("/m", "/m/b"), ("/m/a/sub", "/m/a")])
def test_nested_maildirs(a_dir: str, b_dir: str) -> None:
    err = error(f"""
        accounts:
          a: {{protocol: imap, host: h, username: u, maildir: {a_dir}}}
          b: {{protocol: imap, host: h, username: u, maildir: {b_dir}}}
    """)
    assert (err.key, err.line) == ("accounts.b.maildir", 3)
    assert "'a' and 'b'" in str(err)


def test_maildir_root_itself_as_an_account_maildir(home: Path) -> None:
    err = error("""
        accounts:
          a: {protocol: imap, host: h, username: u}
          b: {protocol: imap, host: h, username: u, maildir: ~/Mail}
    """)
    assert (err.key, err.line) == ("accounts.b.maildir", 3)


def test_imap_only_key_on_pop3_account() -> None:
    err = error("""
        accounts:
          isp:
            protocol: pop3
            host: h
            username: u
            idle: [INBOX]
    """)
    assert (err.key, err.line) == ("accounts.isp.idle", 6)
    assert "'idle' is an IMAP option" in str(err)


def test_pop3_only_key_on_imap_account() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            leave_on_server: true
    """)
    assert (err.key, err.line) == ("accounts.work.leave_on_server", 6)
    assert "'leave_on_server' is a POP3 option" in str(err)


def test_delete_after_needs_leave_on_server() -> None:
    text = """
        accounts:
          isp:
            protocol: pop3
            host: h
            username: u
            delete_after: 14d
    """
    err = error(text)
    assert (err.key, err.line) == ("accounts.isp.delete_after", 6)
    assert "leave_on_server: true" in str(err)
    ok = parse_config(yml(text) + "    leave_on_server: true\n")
    assert ok.accounts["isp"].delete_after == 14 * 86400


def test_merged_account_error_points_at_the_override() -> None:
    err = error("""
        accounts:
          a: &common
            protocol: imap
            host: h
            username: u
          b:
            <<: *common
            port: abc
    """)
    assert (err.key, err.line) == ("accounts.b.port", 8)


def test_yaml_syntax_error_has_a_line() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
           host: h
    """)
    assert err.line == 4
    assert "YAML syntax error" in str(err)


def test_tabs_get_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("accounts:\n\twork: {}\n")
    assert info.value.line == 2
    assert "spaces, not tabs" in str(info.value)


def test_unsupported_yaml_tag() -> None:
    err = error("""
        accounts:
          a: !!python/object:os.system
            protocol: imap
    """)
    assert (err.key, err.line) == ("accounts.a", 2)
    assert "unsupported YAML tag" in str(err)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ConfigError, match="the configuration is empty"):
        parse_config(text)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("hello\n", "str")])
def test_top_level_not_a_mapping(text: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.line == 1
    assert f"the top level must be a mapping with 'general' and 'accounts', not a {kind}" in str(
        info.value)


def test_accounts_missing() -> None:
    err = error("""
        general:
          log_level: info
    """)
    assert err.key == "accounts"
    assert "no 'accounts' mapping" in str(err)


@pytest.mark.parametrize("value", ["", " {}", " null"])
def test_accounts_empty(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"general: {{}}\naccounts:{value}\n")
    assert (info.value.key, info.value.line) == ("accounts", 2)
    assert "no accounts configured" in str(info.value)


def test_accounts_as_a_list() -> None:
    err = error("""
        accounts:
          - name: work
            protocol: imap
    """)
    assert (err.key, err.line) == ("accounts", 1)
    assert "mapping from account name" in str(err)


def test_general_not_a_mapping() -> None:
    err = error("""
        general: [a]
        accounts:
          a: {protocol: imap, host: h, username: u}
    """)
    assert (err.key, err.line) == ("general", 1)
    assert "must be a mapping" in str(err)


def test_log_level_choices() -> None:
    err = error("""
        general:
          log_level: verbose
        accounts:
          a: {protocol: imap, host: h, username: u}
    """)
    assert (err.key, err.line) == ("general.log_level", 2)
    assert "(got 'verbose')" in str(err)


@pytest.mark.parametrize(("line_text", "key"), [
    ("username: {x: s3cr3t-value}", "username"),
    ("password_command: [s3cr3t-value]", "password_command"),
    ("trash_folder: [s3cr3t-value]", "trash_folder"),
    ("host: 's3cr3t-value with space'", "host"),
    ("s3cr3t-value: 1", "s3cr3t-value"),
])
def test_errors_never_echo_possibly_secret_values(line_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("accounts:\n  work:\n    protocol: imap\n    username: u\n"
                     "    " + ("" if key == "host" else "host: h\n    ") + line_text + "\n")
    assert info.value.key == f"accounts.work.{key}"
    message = str(info.value).replace(f"accounts.work.{key}", "").replace(f"'{key}'", "")
    assert "s3cr3t-value" not in message


def test_error_text_includes_path_and_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("accounts:\n  work:\n    protocol: imap\n    host: h\n    username: u\n"
                      "    tls: bogus\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(f"config error: {config}:6: accounts.work.tls: ")
    assert info.value.path == str(config)
    assert info.value.exit_code == 2


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "no configuration file" in str(info.value)


def test_default_path_is_used(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(home / ".config/syncd/config.yaml") in str(info.value)
    target = home / ".config/syncd/config.yaml"
    target.parent.mkdir(parents=True)
    target.write_text(yml(MINIMAL))
    assert load_config().path == target


def test_directory_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"accounts:\n  a:\n    host: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.line == 3
    assert "UTF-8" in str(info.value)


# ------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("14d", 1209600), ("1w", 604800),
    ("1h30m", 5400), ("1h 30m", 5400), ("1.5h", 5400), ("90", 90), (90, 90), (2.5, 2.5),
    ("10 min", 600), ("0", 0), (" 5M ", 300),
])
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m", "-5", "5m3", "1h-", "h1", True, None, [5],
                                   float("nan"), "inf"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "size"), [
    ("25MB", 25_000_000), ("10k", 10_000), ("10K", 10_000), ("1GiB", 2**30), ("512", 512),
    (512, 512), ("1.5KiB", 1536), ("2 MiB", 2 * 2**20), ("100B", 100), ("1M", 1_000_000),
])
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["25XB", "MB", "", -1, True, "1.2.3k", None])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ sync policy keys


def test_sync_policy_defaults_and_folder_settings() -> None:
    settings = parse(MINIMAL)
    account = settings.accounts["work"]
    assert (account.direction, account.delete, account.create_folders) == ("both",) * 3
    assert account.folder_settings == {}
    settings = parse("""
        accounts:
          work:
            protocol: imap
            host: imap.example.com
            username: me
            direction: pull
            delete: none
            folder_settings:
              "Archive*": {direction: push}
              "*": {create_folders: local}
    """)
    account = settings.accounts["work"]
    assert (account.direction, account.delete) == ("pull", "none")
    assert list(account.folder_settings) == ["Archive*", "*"]
    # the first matching glob wins; a key it does not set is the account's
    archive = account.folder_policy(lambda p: p in ("Archive*", "*"))
    assert tuple(archive) == ("push", "none", "both", None, None, None, False)
    other = account.folder_policy(lambda p: p == "*")
    assert tuple(other) == ("pull", "none", "local", None, None, None, False)


@pytest.mark.parametrize(("line_text", "key", "expect"), [
    ("direction: pul", "direction", "did you mean 'pull'?"),
    ("delete: never", "delete", "must be 'both', 'pull', 'push' or 'none'"),
    ("create_folders: yes", "create_folders", "must be 'both', 'server', 'local' or 'none'"),
    ("folder_settings: [Archive]", "folder_settings", "must be a mapping"),
    ("max_age: soon", "max_age", "invalid duration 'soon'"),
    ("max_messages: 0", "max_messages", "greater than or equal to 1"),
    ("max_size: lots", "max_size", "lots"),
    ("max_size: 0", "max_size", "greater than or equal to 1"),
    ("fetch_flagged: maybe", "fetch_flagged", "must be true or false"),
])
def test_sync_policy_wrong_values_name_key_and_line(line_text: str, key: str,
                                                    expect: str) -> None:
    err = error(f"""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            {line_text}
    """)
    assert err.key == f"accounts.work.{key}"
    assert err.line == 6
    assert expect in str(err)


def test_folder_settings_errors_name_the_glob_and_line() -> None:
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            folder_settings:
              "Archive*":
                direction: pull
                max_size: huge
    """)
    assert err.key == "accounts.work.folder_settings.Archive*.max_size"
    assert err.line == 9
    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            folder_settings:
              "Archive*": {direction: sideways}
    """)
    assert err.key == "accounts.work.folder_settings.Archive*.direction"
    assert err.line == 7


def test_windows_per_account_and_folder() -> None:
    account = parse("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            max_age: 90d
            folder_settings:
              "Archive*": {max_age: 30d, max_messages: 500}
    """).accounts["work"]
    assert account.max_age == 90 * 86400 and account.max_messages is None
    assert tuple(account.folder_policy(lambda p: True))[3:5] == (30 * 86400, 500)
    assert tuple(account.folder_policy(lambda p: False))[3:5] == (90 * 86400, None)


def test_max_size_and_fetch_flagged_per_account_and_folder() -> None:
    account = parse("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            max_size: 10MB
            folder_settings:
              "Archive*": {max_size: 500k, fetch_flagged: true}
    """).accounts["work"]
    assert (account.max_size, account.fetch_flagged) == (10_000_000, False)
    archive = account.folder_policy(lambda p: True)
    assert (archive.max_size, archive.fetch_flagged) == (500_000, True)
    other = account.folder_policy(lambda p: False)
    assert (other.max_size, other.fetch_flagged) == (10_000_000, False)
    # a policy that fetches differently is looked at again (the fingerprint changes)
    assert archive.fingerprint != other.fingerprint
    assert account._replace(max_size=None).folder_policy(lambda p: False).fingerprint is None
    err = error("""
        accounts:
          pop:
            protocol: pop3
            host: h
            username: u
            max_size: 10MB
    """)
    assert err.key == "accounts.pop.max_size"


def test_pull_never_saves_sent_copies() -> None:
    from syncd.config.presets import saves_sent

    err = error("""
        accounts:
          work:
            protocol: imap
            host: h
            username: u
            direction: pull
            save_sent: always
    """)
    assert err.key == "accounts.work.save_sent" and "direction: pull" in str(err)
    account = parse(MINIMAL.replace("username: me", "username: me\n    direction: pull")
                    ).accounts["work"]
    assert not saves_sent(account)
    assert saves_sent(parse(MINIMAL).accounts["work"])


def test_sync_policy_is_imap_only() -> None:
    err = error("""
        accounts:
          work:
            protocol: pop3
            host: h
            username: u
            direction: pull
    """)
    assert err.key == "accounts.work.direction"
    assert "IMAP option" in str(err)
