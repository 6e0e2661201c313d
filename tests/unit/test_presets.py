"""Provider presets and the OAuth2 settings: three-line configs validate, explicit keys win,
endpoints and scopes come from the data table, and every mistake names its key and line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from syncd.auth import oauth
from syncd.config.init import AccountAnswers, account_block, add_account, fill_defaults
from syncd.config.load import AccountSettings, parse_config
from syncd.config.presets import (
    ACCOUNT_PRESETS,
    OAUTH2_PROVIDERS,
    guess_servers,
    preset_for_address,
)
from syncd.errors import ConfigError


def account(body: str, name: str = "a") -> AccountSettings:
    text = "accounts:\n  " + name + ":\n" + "".join(f"    {line}\n"
                                                   for line in body.strip().splitlines())
    return parse_config(text).accounts[name]


def config_error(body: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        account(body)
    return caught.value


def three_lines(preset: str) -> str:
    extra = ("oauth2: {client_id: 0123-abc, client_secret: s3cret}"
             if ACCOUNT_PRESETS[preset].auth == "oauth2" else "password_command: pass mail")
    return f"provider: {preset}\nusername: me@example.com\n{extra}"


# --------------------------------------------------------------------------------------------
# account presets


@pytest.mark.parametrize("name", sorted(ACCOUNT_PRESETS))
def test_three_line_config_for_every_preset(name: str) -> None:
    preset = ACCOUNT_PRESETS[name]
    settings = account(three_lines(name))
    assert preset.imap is not None and preset.smtp is not None
    assert (settings.protocol, settings.host, settings.port, settings.tls) == (
        "imap", preset.imap.host, preset.imap.port, preset.imap.tls)
    assert (settings.smtp_host, settings.smtp_port) == (preset.smtp.host, preset.smtp.port)
    assert settings.auth == preset.auth
    if preset.auth == "oauth2":
        assert settings.oauth2 is not None
        assert settings.oauth2.provider == preset.oauth2_provider
        assert settings.oauth2.client_id == "0123-abc"  # YAML would have read 0123 as a number


@pytest.mark.parametrize("name", sorted(n for n, p in ACCOUNT_PRESETS.items() if p.pop3))
def test_pop3_presets(name: str) -> None:
    preset = ACCOUNT_PRESETS[name]
    settings = account(three_lines(name) + "\nprotocol: pop3")
    assert preset.pop3 is not None
    assert (settings.host, settings.port) == (preset.pop3.host, preset.pop3.port)


def test_a_preset_without_pop3() -> None:
    error = config_error("provider: icloud\nprotocol: pop3\nusername: me")
    assert error.key == "accounts.a.protocol" and error.line == 4
    assert "iCloud Mail) offers no POP3" in str(error)


def test_explicit_keys_override_the_preset() -> None:
    settings = account(three_lines("fastmail") + "\nhost: mail.example.com\nport: 1993")
    assert (settings.host, settings.port, settings.smtp_host) == (
        "mail.example.com", 1993, "smtp.fastmail.com")
    # tls changed: the port follows tls, not the preset's implicit-TLS port
    settings = account(three_lines("yahoo") + "\ntls: starttls")
    assert (settings.host, settings.port, settings.tls) == ("imap.mail.yahoo.com", 143, "starttls")
    settings = account(three_lines("gmail") + "\nsmtp_host: smtp.example.com\nsmtp_port: 587")
    assert (settings.smtp_host, settings.smtp_port) == ("smtp.example.com", 587)
    # an app password instead of OAuth2
    settings = account("provider: gmail\nusername: me@gmail.com\nauth: password")
    assert settings.auth == "password" and settings.oauth2 is None


def test_preset_errors_name_key_and_line() -> None:
    error = config_error("username: me\nprovider: gmial")
    assert (error.key, error.line) == ("accounts.a.provider", 4)
    assert "unknown provider 'gmial'" in str(error) and "did you mean 'gmail'?" in str(error)
    error = config_error("provider: office365\nusername: me")
    assert (error.key, error.line) == ("accounts.a.provider", 3)
    assert "signs in with OAuth2: add oauth2: {client_id: YOUR-APP-ID}" in str(error)


def test_preset_for_address_and_guesses() -> None:
    assert preset_for_address("Me@GMail.com").name == "gmail"  # type: ignore[union-attr]
    assert preset_for_address("x@hotmail.co.uk").name == "outlook"  # type: ignore[union-attr]
    assert preset_for_address("x@outlook.de").name == "outlook"  # type: ignore[union-attr]
    assert preset_for_address("x@yahoo.fr").name == "yahoo"  # type: ignore[union-attr]
    assert preset_for_address("x@me.com").name == "icloud"  # type: ignore[union-attr]
    assert preset_for_address("x@example.com") is None
    assert preset_for_address("x@gmail.com.evil.example") is None
    guessed = guess_servers("joe@Example.org")
    assert (guessed["imap"].host, guessed["pop3"].host, guessed["smtp"].host) == (
        "imap.example.org", "pop.example.org", "smtp.example.org")


# --------------------------------------------------------------------------------------------
# OAuth2 settings


def test_microsoft_endpoints_and_scopes_come_from_the_table() -> None:
    office = oauth.resolve(account(three_lines("office365")))
    base = "https://login.microsoftonline.com/organizations/oauth2/v2.0"
    assert (office.token_endpoint, office.device_authorization_endpoint,
            office.authorization_endpoint) == (f"{base}/token", f"{base}/devicecode",
                                               f"{base}/authorize")
    # Sign-in asks for SMTP.Send too (the preset's smtp: the outbox); IMAP refreshes do not,
    # so a refresh token from before the outbox keeps working for IMAP.
    assert office.scopes == ("https://outlook.office.com/IMAP.AccessAsUser.All",
                             "offline_access", "https://outlook.office.com/SMTP.Send")
    assert oauth.resolve(account(three_lines("office365")), "imap").scopes == (
        "https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access")
    assert oauth.resolve(account(three_lines("office365")), "smtp").scopes == (
        "https://outlook.office.com/SMTP.Send", "offline_access")
    assert office.default_flow == "device" and office.client_secret == "s3cret"
    personal = oauth.resolve(account(three_lines("outlook") + "\nprotocol: pop3"))
    assert "/consumers/" in personal.token_endpoint
    assert personal.scopes[0] == "https://outlook.office.com/POP.AccessAsUser.All"
    tenant = oauth.resolve(account(three_lines("office365").replace(
        "client_id: 0123-abc", "client_id: x, tenant: contoso.onmicrosoft.com")))
    assert "/contoso.onmicrosoft.com/" in tenant.token_endpoint
    generic = oauth.resolve(account(
        "protocol: imap\nhost: outlook.office365.com\nusername: me\n"
        "oauth2: {provider: microsoft, client_id: x}"))
    assert "/common/" in generic.token_endpoint


def test_google_uses_the_browser_and_asks_for_offline_access() -> None:
    google = oauth.resolve(account(three_lines("gmail")))
    assert google.scopes == ("https://mail.google.com/",)
    assert google.default_flow == "browser"
    assert google.authorize_params == {"access_type": "offline", "prompt": "consent"}
    assert google.token_endpoint == OAUTH2_PROVIDERS["google"].token_endpoint


def test_explicit_oauth2_settings_win() -> None:
    settings = account(three_lines("gmail").replace(
        "client_secret: s3cret", "client_secret: s, scopes: [a, b], "
        "token_endpoint: 'https://idp.example.com/t'"))
    resolved = oauth.resolve(settings)
    assert resolved.scopes == ("a", "b")
    assert resolved.token_endpoint == "https://idp.example.com/t"


def test_custom_provider() -> None:
    body = ("protocol: imap\nhost: mail.example.com\nusername: me\noauth2:\n"
            "  provider: custom\n  client_id: c\n  scopes: mail\n"
            "  token_endpoint: https://idp.example.com/token\n"
            "  device_authorization_endpoint: https://idp.example.com/device\n")
    settings = account(body)
    assert settings.auth == "oauth2"  # implied by the oauth2 mapping
    resolved = oauth.resolve(settings)
    assert resolved.default_flow == "device" and resolved.scopes == ("mail",)
    # loopback http is accepted (a local token broker, the tests); other http is not
    account(body.replace("https://idp.example.com", "http://127.0.0.1:8080"))
    error = config_error(body.replace("https://idp.example.com/token",
                                      "http://idp.example.com/token"))
    assert (error.key, error.line) == ("accounts.a.oauth2.token_endpoint", 10)
    assert "https://" in str(error)


@pytest.mark.parametrize(("body", "key", "line", "text"), [
    ("protocol: imap\nhost: h\nusername: u\nauth: oauth2", "accounts.a.auth", 6,
     "auth: oauth2 needs an oauth2 mapping"),
    ("protocol: imap\nhost: h\nusername: u\nauth: password\noauth2: {provider: google, "
     "client_id: c}", "accounts.a.oauth2", 7, "only used with auth: oauth2"),
    ("protocol: imap\nhost: h\nusername: u\npassword_command: x\noauth2: {provider: google, "
     "client_id: c}", "accounts.a.password_command", 6, "not used with auth: oauth2"),
    ("protocol: imap\nhost: h\nusername: u\noauth2:\n  provider: google\n  client_id: c\n"
     "  tenant: t", "accounts.a.oauth2.tenant", 9, "tenant only applies to provider microsoft"),
    ("protocol: imap\nhost: h\nusername: u\noauth2:\n  provider: custom\n  client_id: c",
     "accounts.a.oauth2.token_endpoint", 6, "provider custom needs token_endpoint"),
    ("protocol: imap\nhost: h\nusername: u\noauth2:\n  provider: custom\n  client_id: c\n"
     "  token_endpoint: https://x/t\n  scopes: [s]", "accounts.a.oauth2.provider", 7,
     "needs device_authorization_endpoint"),
    ("protocol: imap\nhost: h\nusername: u\noauth2:\n  provider: google\n  clientid: c",
     "accounts.a.oauth2.clientid", 8, "did you mean 'client_id'?"),
    ("protocol: imap\nhost: h\nusername: u\noauth2:\n  provider: google",
     "accounts.a.oauth2.client_id", 6, "missing required key 'client_id'"),
    ("protocol: imap\nhost: h\nusername: u\noauth2: {provider: facebook, client_id: c}",
     "accounts.a.oauth2.provider", 6, "must be 'microsoft', 'google' or 'custom'"),
])
def test_oauth2_errors_name_key_and_line(body: str, key: str, line: int, text: str) -> None:
    error = config_error(body)
    assert (error.key, error.line) == (key, line), str(error)
    assert text in str(error)


def test_secrets_are_not_echoed_in_errors() -> None:
    error = config_error("protocol: imap\nhost: h\nusername: u\noauth2: {provider: google, "
                         "client_id: c, client_secret: [hunter2secret]}")
    assert "hunter2secret" not in str(error)


# --------------------------------------------------------------------------------------------
# SASL


def test_sasl_responses() -> None:
    xoauth2 = oauth.OAuthSasl("XOAUTH2", "tok", "imap.example.com", 993)
    assert xoauth2.initial_response("me@example.com") == \
        b"user=me@example.com\x01auth=Bearer tok\x01\x01"
    assert xoauth2.error_response() == b""
    bearer = oauth.OAuthSasl("OAUTHBEARER", "tok", "imap.example.com", 993)
    assert bearer.initial_response("a,b=c") == (
        b"n,a=a=2Cb=3Dc,\x01host=imap.example.com\x01port=993\x01auth=Bearer tok\x01\x01")
    assert bearer.error_response() == b"\x01"
    # the base64 spelling is registered as a secret, for --debug traces
    from syncd.auth.secrets import redact

    line = base64.b64encode(bearer.initial_response("me")).decode()
    assert redact(f"> {line}") == "> ***"
    callback = bearer.imap_callback("me")
    assert callback(b"") == bearer.initial_response("me")
    assert callback(b'{"status":"invalid_token","scope":"mail"}') == b"\x01"
    assert bearer.describe_error() == "status invalid_token"


def test_choose_mechanism() -> None:
    assert oauth.choose_mechanism(["PLAIN", "XOAUTH2", "OAUTHBEARER"]) == "OAUTHBEARER"
    assert oauth.choose_mechanism(["plain", "xoauth2"]) == "XOAUTH2"
    assert oauth.choose_mechanism([]) == "XOAUTH2"


# --------------------------------------------------------------------------------------------
# init: the account block, and appending without losing anything


@pytest.mark.parametrize("preset", sorted(ACCOUNT_PRESETS))
def test_init_answers_for_every_preset_validate(preset: str) -> None:
    answers = fill_defaults(AccountAnswers(name="acct", email="me@example.com",
                                           provider=preset))
    if ACCOUNT_PRESETS[preset].auth == "oauth2":
        answers.oauth2 = {"client_id": "0000-1111", "client_secret": "s"}
    text = "accounts:\n" + account_block(answers)
    settings = parse_config(text).accounts["acct"]
    assert settings.host == ACCOUNT_PRESETS[preset].imap.host  # type: ignore[union-attr]
    assert len(text.splitlines()) <= 7


def test_init_guesses_servers_for_unknown_domains() -> None:
    answers = fill_defaults(AccountAnswers(name="ex", email="joe@example.org",
                                           password_command='pass "mail/ex"'))
    settings = parse_config("accounts:\n" + account_block(answers)).accounts["ex"]
    assert (settings.host, settings.smtp_host, settings.username) == (
        "imap.example.org", "smtp.example.org", "joe@example.org")
    assert settings.password_command == 'pass "mail/ex"'
    answers = fill_defaults(AccountAnswers(name="ex", email="joe@example.org",
                                           protocol="pop3"))
    assert parse_config("accounts:\n" + account_block(answers)).accounts["ex"].host == \
        "pop.example.org"


EXISTING = """\
# my mail setup
defaults: &defaults   # not a syncd key: rejected... so it lives in an account below
accounts:
  # the work account
  work:
    protocol: imap
    host: imap.work.example   # the big one
    username: me
    password_command: pass work
    folders:
      exclude: [Junk]
      # Spam too, one day

# general settings come after the accounts here
general:
  log_level: info   # or debug
"""


def test_add_account_keeps_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    original = EXISTING.replace("defaults: &defaults   # not a syncd key: rejected... so it "
                                "lives in an account below\n", "")
    path.write_text(original)
    path.chmod(0o640)
    answers = fill_defaults(AccountAnswers(name="home", email="me@fastmail.com",
                                           password_command="pass home"))
    settings = add_account(path, answers)
    assert list(settings.accounts) == ["work", "home"]
    text = path.read_text()
    # Everything that was there is still there, in order; the account went into the
    # accounts block, before the comment that introduces general.
    assert text.replace(account_block(answers), "") == original
    assert text.index("  home:\n") < text.index("# general settings")
    assert text.index("      # Spam too, one day") < text.index("  home:\n")
    assert path.stat().st_mode & 0o777 == 0o640


def test_add_account_to_other_shapes(tmp_path: Path) -> None:
    answers = fill_defaults(AccountAnswers(name="home", email="me@fastmail.com",
                                           password_command="pass home"))
    path = tmp_path / "new" / "config.yaml"
    add_account(path, answers)  # created, with its directory
    assert path.stat().st_mode & 0o777 == 0o600
    assert "home" in parse_config(path.read_text()).accounts
    for text in ("general:\n  log_level: info\n", "accounts:\n", "accounts: {}  # none yet\n",
                 "general:\n  log_level: info\naccounts: ~\n",
                 "accounts:\n    deep:\n        protocol: imap\n        host: h\n"
                 "        username: u\n        password_command: p\n"):
        path.write_text(text)
        settings = add_account(path, answers)
        assert "home" in settings.accounts, text


def test_add_account_refuses_duplicates_and_broken_files(tmp_path: Path) -> None:
    from syncd.errors import UsageError

    path = tmp_path / "config.yaml"
    answers = fill_defaults(AccountAnswers(name="work", email="me@fastmail.com",
                                           password_command="pass home"))
    path.write_text(EXISTING.replace("defaults: &defaults   # not a syncd key: rejected... so "
                                     "it lives in an account below\n", ""))
    with pytest.raises(UsageError, match="already in"):
        add_account(path, answers)
    broken = "accounts:\n  work:\n    protocol: imap\n    hots: x\n"
    path.write_text(broken)
    answers.name = "home"
    with pytest.raises(ConfigError, match="fix it before adding an account"):
        add_account(path, answers)
    assert path.read_text() == broken
    # an answer that makes an invalid account: nothing is written
    path.write_text("accounts:\n")
    answers.port = 0
    with pytest.raises(ConfigError, match="the account was not added"):
        add_account(path, answers)
    assert path.read_text() == "accounts:\n"


def scripted(replies: list[str]) -> tuple[list[str], object]:
    asked: list[str] = []
    answers = iter(replies)

    def prompt(text: str) -> str:
        asked.append(text)
        return next(answers)

    return asked, prompt


def test_init_questions_for_an_oauth2_preset() -> None:
    from syncd.config.init import ask

    asked, prompt = scripted(["me@contoso.com", "work", "office365", "", "", "app-id-1"])
    said: list[str] = []
    answers = ask(AccountAnswers(name="", email=""), prompt, said.append)  # type: ignore[arg-type]
    assert (answers.name, answers.provider, answers.protocol, answers.username) == (
        "work", "office365", "imap", "me@contoso.com")
    assert answers.oauth2 == {"client_id": "app-id-1"}
    assert asked[1] == "Account name (for syncd commands and the maildir) [contoso]: "
    assert any("Microsoft accepts only OAuth2" in line for line in said)
    settings = parse_config("accounts:\n" + account_block(fill_defaults(answers)))
    assert settings.accounts["work"].oauth2.tenant == "organizations"  # type: ignore[union-attr]
    # Google asks for the client secret too; "password" means an app password instead.
    _asked, prompt = scripted(["me@gmail.com", "", "", "", "", "cid", "csecret"])
    answers = ask(AccountAnswers(name="", email=""), prompt, said.append)  # type: ignore[arg-type]
    assert answers.provider == "gmail"
    assert answers.oauth2 == {"client_id": "cid", "client_secret": "csecret"}
    _asked, prompt = scripted(["me@gmail.com", "", "", "", "", "password"])
    answers = ask(AccountAnswers(name="", email=""), prompt, said.append)  # type: ignore[arg-type]
    assert answers.auth == "password" and answers.oauth2 == {}


def test_init_questions_repeat_until_valid() -> None:
    from syncd.config.init import ask

    _asked, prompt = scripted(["not an address", "me@example.org", "bad name!", "ok",
                              "aol", "other", "smtp", "imap", "", "", ""])
    said: list[str] = []
    answers = ask(AccountAnswers(name="", email=""), prompt, said.append)  # type: ignore[arg-type]
    assert (answers.email, answers.name, answers.provider, answers.host, answers.smtp_host) == (
        "me@example.org", "ok", None, "imap.example.org", "smtp.example.org")
    assert said[:4] == ["  that is not an email address",
                        "  letters, digits, '.', '_' or '-' only",
                        "  one of outlook, office365, gmail, fastmail, icloud, yahoo, or other",
                        "  imap or pop3"]
