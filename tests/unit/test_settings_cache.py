"""syncd.config.settings.load_settings: the cache of validated config files is only ever faster,
never different, from validating the file (syncd.config.load.load_config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from syncd.config.cache import load_settings
from syncd.config.load import load_config
from syncd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
general:
  maildir_root: $MAILBASE/Mail
accounts:
  work:
    protocol: imap
    host: imap.example.com
    username: me
    password_command: pass show work
    folders: {include: ["*"], exclude: ["Junk", "Lists/*"]}
    idle: [INBOX, Sent]
    poll_interval: 2m
    trash_folder: Trash
    tls_ca_file: ca.pem
  google:
    provider: gmail
    username: me@gmail.com
    oauth2: {client_id: app-id, client_secret: s3cret, scopes: [a, b]}
  isp:
    protocol: pop3
    host: pop.example.net
    username: u
    leave_on_server: true
    delete_after: 7d
    max_message_size: 10M
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MAILBASE", str(tmp_path / "mailbase"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    config.chmod(0o600)
    return config


def entries(config: Path) -> list[Path]:
    return sorted((config.parent / "cache" / "syncd").glob("config-*.json"))


def test_cached_settings_equal_validated_ones(env: Path) -> None:
    validated = load_config(env)
    first = load_settings(env)  # validates, writes the cache
    [entry] = entries(env)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert entry.parent.stat().st_mode & 0o777 == 0o700
    second = load_settings(env)  # from the cache
    assert first == validated
    assert second == validated
    assert second.accounts["google"].oauth2 is not None
    assert second.accounts["google"].oauth2.scopes == ("a", "b")
    assert second.accounts["work"].folders.exclude == ("Junk", "Lists/*")
    assert second.accounts["work"].tls_ca_file == env.parent / "ca.pem"
    assert second.accounts["isp"].state_path == validated.accounts["isp"].state_path


def test_a_cache_hit_needs_neither_pydantic_nor_yaml(env: Path) -> None:
    load_settings(env)
    code = textwrap.dedent(f"""
        import sys
        from syncd.config.cache import load_settings
        settings = load_settings({str(env)!r})
        assert list(settings.accounts) == ["work", "google", "isp"], settings
        print(sorted(m for m in ("pydantic", "yaml", "syncd.config.load") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    assert out.stdout.strip() == "[]", out.stderr


def test_an_edit_in_the_same_timestamp_tick_is_seen(env: Path) -> None:
    before = load_settings(env)
    st = env.stat()
    # Same size, same mtime, different content: only the content hash can tell.
    env.write_text(CONFIG.replace("pass show work", "pass show wxrk"))
    os.utime(env, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = load_settings(env)
    assert before.accounts["work"].password_command == "pass show work"
    assert after.accounts["work"].password_command == "pass show wxrk"


def test_a_changed_environment_variable_is_seen(env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_settings(env)
    monkeypatch.setenv("MAILBASE", str(env.parent / "elsewhere"))
    second = load_settings(env)
    assert first.general.maildir_root == env.parent / "mailbase" / "Mail"
    assert second.general.maildir_root == env.parent / "elsewhere" / "Mail"
    assert second.accounts["work"].maildir == env.parent / "elsewhere" / "Mail" / "work"
    monkeypatch.setenv("HOME", str(env.parent))  # the state dir default follows HOME
    assert load_settings(env).accounts["work"].state_dir == env.parent / ".local/state/syncd"


def test_a_broken_or_foreign_cache_entry_is_ignored(env: Path) -> None:
    load_settings(env)
    [entry] = entries(env)
    data = json.loads(entry.read_text())
    data["settings"]["accounts"]["work"]["host"] = "evil.example.com"
    # The entry is our own private file and is trusted while its key matches (this shows the
    # test below really reads the entry)...
    entry.write_text(json.dumps(data))
    assert load_settings(env).accounts["work"].host == "evil.example.com"
    data["key"] = "0" * 64  # ...but an entry for another state of the file is never used
    entry.write_text(json.dumps(data))
    assert load_settings(env).accounts["work"].host == "imap.example.com"
    entry.write_text("{not json")
    assert load_settings(env).accounts["work"].host == "imap.example.com"
    data = json.loads(entry.read_text())
    del data["settings"]["accounts"]["work"]["port"]
    entry.write_text(json.dumps(data))
    assert load_settings(env).accounts["work"].port == 993


def test_an_invalid_config_is_reported_every_time_and_never_cached(env: Path) -> None:
    env.write_text(CONFIG.replace("protocol: pop3", "protocol: pop4"))
    for _ in range(2):
        with pytest.raises(ConfigError) as info:
            load_settings(env)
        assert info.value.key == "accounts.isp.protocol"
    assert entries(env) == []


def test_an_unwritable_cache_dir_only_costs_speed(env: Path) -> None:
    cache = env.parent / "cache"
    cache.write_text("a file where the directory should be")
    assert load_settings(env).accounts["work"].host == "imap.example.com"
    assert load_settings(env) == load_config(env)


def test_code_changes_invalidate_the_cache(env: Path, tmp_path: Path) -> None:
    # The key covers syncd's validation code: a new syncd with new defaults re-validates.
    from syncd.config import settings as module

    load_settings(env)
    [entry] = entries(env)
    key = json.loads(entry.read_text())["key"]
    presets = Path(module.__file__).with_name("presets.py")
    st = presets.stat()
    try:
        os.utime(presets, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        load_settings(env)
        assert json.loads(entry.read_text())["key"] != key
    finally:
        os.utime(presets, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_readable_by_others_warning_comes_on_cache_hits_too(
        env: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_settings(env)
    env.chmod(0o644)
    with caplog.at_level("WARNING", logger="syncd.config.load"):
        load_settings(env)  # the chmod changed no content: a cache hit
    assert "readable by other users" in caplog.text
    assert "accounts.work.password_command" in caplog.text
    assert "accounts.google.oauth2.client_secret" in caplog.text


def test_no_secret_is_written_to_the_cache(env: Path) -> None:
    """password_command's text may hold a password (``echo hunter2``) and client_secret is one:
    the entry keeps where they are in the file, never their text (issue 16 item 8)."""
    text = CONFIG.replace("password_command: pass show work",
                          "password_command: 'echo hunter2-a'\n    smtp: "
                          "{host: smtp.example.com, password_command: \"echo hunter2-b\"}")
    env.write_text(text.replace("client_secret: s3cret", "client_secret: hunter2-c"))
    validated = load_config(env)
    assert load_settings(env) == validated  # validates, writes the entry
    [entry] = entries(env)
    cached = entry.read_text()
    for secret in ("hunter2", "echo"):
        assert secret not in cached
    hit = load_settings(env)
    assert hit == validated
    assert hit.accounts["work"].password_command == "echo hunter2-a"
    assert hit.accounts["work"].smtp is not None
    assert hit.accounts["work"].smtp.password_command == "echo hunter2-b"
    assert hit.accounts["google"].oauth2 is not None
    assert hit.accounts["google"].oauth2.client_secret == "hunter2-c"


@pytest.mark.parametrize("written, value", [
    ("'it''s mine'", "it's mine"),       # sliced back out: cached
    ("&pw plain text", "plain text"),    # an anchor: not cached, still right
    ('"tab\\there"', "tab\there"),       # an escape: not cached, still right
    ("|\n      folded\n      lines", "folded\nlines\n"),
])
def test_secrets_in_any_yaml_form_load_the_same(env: Path, written: str, value: str) -> None:
    env.write_text(CONFIG.replace("pass show work", written))
    for _ in range(2):
        assert load_settings(env).accounts["work"].password_command == value
    for entry in entries(env):
        assert value not in entry.read_text()


def test_a_cache_entry_cannot_carry_a_secret_of_another_file(env: Path) -> None:
    # The offsets are only read from the very bytes the key was computed from: an edit that
    # moves the value (same length) is a new key, hence a full validation.
    load_settings(env)
    env.write_text(CONFIG.replace("pass show work", "pass show w0rk").replace(
        "host: imap.example.com", "host: imap.example.org"))
    assert load_settings(env).accounts["work"].password_command == "pass show w0rk"
