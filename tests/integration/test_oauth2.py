"""OAuth2 against a real Dovecot whose oauth2 passdb validates access tokens through a token
introspection endpoint served by the test (tests/support/fake_idp.py), which also plays the
identity provider: device and browser sign-in, XOAUTH2 and OAUTHBEARER over IMAP and POP3,
refresh before expiry and after a rejected token, a revoked refresh token, no token leaks.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest

from syncd.auth import oauth
from syncd.config.load import AccountSettings, load_config
from syncd.errors import AccountError
from syncd.imap.client import ImapSession
from syncd.pop3.client import Pop3Session
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.fake_idp import FakeIdP, follow_redirects
from tests.support.file_keyring import FileKeyring, read_all
from tests.support.syncd_env import REPO, config_head, run_cli

NAME = "work"


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdP]:
    with FakeIdP(user="nobody") as provider:
        yield provider


@pytest.fixture(scope="module")
def servers(idp: FakeIdP, dovecot_workroot: Path) -> Iterator[dict[str, Dovecot]]:
    """Two Dovecots trusting the fake provider: one offering OAUTHBEARER and XOAUTH2, one
    offering only XOAUTH2 (so that syncd's choice follows what each server advertises)."""
    made: dict[str, Dovecot] = {}
    try:
        for label, mechanisms in (("both", "xoauth2 oauthbearer"), ("xoauth2", "xoauth2")):
            conf = idp.dovecot_conf(dovecot_workroot / f"oauth2-{label}.conf.ext", mechanisms)
            dc = Dovecot(dovecot_workroot / f"dovecot-oauth2-{label}", extra_conf=conf)
            made[label] = dc
            dc.start()
        yield made
    finally:
        for dc in made.values():
            dc.stop()


@pytest.fixture
def file_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("SYNCD_TEST_KEYRING", str(path))
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    try:
        yield path
    finally:
        keyring.set_keyring(previous)


@pytest.fixture(autouse=True)
def _fresh_providers() -> Iterator[None]:
    oauth._forget_providers()
    yield
    oauth._forget_providers()


@pytest.fixture
def oauth_user(servers: dict[str, Dovecot], idp: FakeIdP) -> User:
    user = servers["both"].add_user()
    servers["xoauth2"].add_user(name=user.name, password=user.password)
    idp.reset(user.name)
    return user


def write_config(tmp_path: Path, dc: Dovecot, user: User, idp: FakeIdP, *,
                 protocol: str = "imap", extra: str = "") -> Path:
    port = dc.imaps_port if protocol == "imap" else dc.pop3s_port
    config = tmp_path / "config.yaml"
    config.write_text(config_head(tmp_path, NAME, protocol=protocol, port=port) + f"""\
    tls_ca_file: {dc.ca_file}
    username: {user.name}
    auth: oauth2
{idp.oauth2_yaml()}{extra}""")
    return config


def account_of(config: Path) -> AccountSettings:
    return load_config(config).accounts[NAME]


def store_refresh_token(idp: FakeIdP, keyring_path: Path) -> dict[str, object]:
    """As if `syncd auth` had run: tokens issued, the refresh token in the keyring."""
    tokens = idp.issue()
    FileKeyring().set_password("syncd", f"{NAME}:oauth2", str(tokens["refresh_token"]))
    return tokens


def leaks(text: str, idp: FakeIdP) -> list[str]:
    return idp.leaks(text)


# --------------------------------------------------------------------------------------------
# sign-in flows


def test_device_flow_end_to_end(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                                oauth_user: User, file_keyring: Path) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp)
    rc, out, err = run_cli("--config", str(config), "auth", NAME)
    assert rc == 0, out + err
    # The URL and the code are shown; the endpoint approved after one "pending" poll.
    devicecode = next(form for path, form in idp.requests if path == "/devicecode")
    assert devicecode["client_id"] == idp.client_id
    assert devicecode["scope"] == "mail offline_access"
    assert f"{idp.url}/device" in out
    user_code = out.split("enter the code:")[1].split()[0]
    assert len(user_code) == 8
    assert idp.counts["urn:ietf:params:oauth:grant-type:device_code"] == 2
    # The refresh token is in the keyring, under ACCOUNT:oauth2, and nowhere else.
    stored = read_all(file_keyring)
    assert list(stored) == [("syncd", f"{NAME}:oauth2")]
    assert stored["syncd", f"{NAME}:oauth2"] in idp.refresh
    assert f"user '{NAME}:oauth2'" in out
    # `auth` goes on to log in: the fresh access token is used, no refresh needed.
    assert f"{NAME}: OK — IMAP" in out
    assert "(OAuth2, OAUTHBEARER)" in out
    assert idp.counts["refresh_token"] == 0
    assert not leaks(out + err, idp)
    assert not leaks(config.read_text(), idp)


def test_browser_flow_with_pkce(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                                oauth_user: User, file_keyring: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp)
    opened: list[str] = []
    statuses: list[int] = []

    def browser(url: str) -> bool:
        # The user's browser: loads the authorization URL, signs in (the fake approves at
        # once) and follows the redirect to syncd's loopback listener.
        opened.append(url)
        threading.Thread(target=lambda: statuses.append(follow_redirects(url)),
                         daemon=True).start()
        return True

    monkeypatch.setattr(oauth, "_open_browser", browser)
    rc, out, err = run_cli("--config", str(config), "auth", "--browser", NAME)
    assert rc == 0, out + err
    assert statuses == [200]
    authorize = next(form for path, form in idp.requests if path == "/authorize")
    assert authorize["code_challenge_method"] == "S256"
    assert authorize["login_hint"] == oauth_user.name
    redirect = authorize["redirect_uri"]
    assert redirect.startswith("http://127.0.0.1:") and redirect.endswith("/")
    token_request = next(form for path, form in idp.requests
                         if path == "/token" and form.get("grant_type") == "authorization_code")
    assert len(token_request["code_verifier"]) >= 43
    assert token_request["redirect_uri"] == redirect
    assert read_all(file_keyring)["syncd", f"{NAME}:oauth2"] in idp.refresh
    assert "(OAuth2, OAUTHBEARER)" in out
    assert opened[0] in out  # the URL is printed too, for a browser on another machine
    assert not leaks(out + err, idp)


def test_browser_flow_accepts_a_pasted_redirect(tmp_path: Path, servers: dict[str, Dovecot],
                                                idp: FakeIdP, oauth_user: User,
                                                file_keyring: Path) -> None:
    """Headless: the browser is elsewhere and cannot reach the loopback port; the user pastes
    the address it ended up at."""
    import http.client
    import io
    from urllib.parse import urlsplit

    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp))
    read_end, write_end = os.pipe()

    def browser(url: str) -> bool:
        def elsewhere() -> None:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            conn.request("GET", f"{parts.path}?{parts.query}")
            location = conn.getresponse().getheader("Location")
            os.write(write_end, f"{location}\n".encode())

        threading.Thread(target=elsewhere, daemon=True).start()
        return False

    out = io.StringIO()
    with os.fdopen(read_end) as paste:
        provider = oauth.sign_in(account, browser=True, out=out, open_browser=browser,
                                 paste=paste, timeout=30)
    os.close(write_end)
    assert "Open this URL in a browser" in out.getvalue()
    assert provider.access_token() in idp.live_access_tokens()


def test_device_flow_declined_and_bad_client(tmp_path: Path, servers: dict[str, Dovecot],
                                             idp: FakeIdP, oauth_user: User,
                                             file_keyring: Path) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp)
    config.write_text(config.read_text().replace(idp.client_id, "someone-else"))
    rc, _out, err = run_cli("--config", str(config), "auth", NAME)
    assert rc == 1
    assert f"syncd: {NAME}: cannot start the device sign-in: invalid_client: unknown client" \
        in err
    assert read_all(file_keyring) == {}


# --------------------------------------------------------------------------------------------
# logins: mechanisms, protocols


@pytest.mark.parametrize(("protocol", "server", "mechanism"), [
    ("imap", "both", "OAUTHBEARER"),
    ("imap", "xoauth2", "XOAUTH2"),
    ("pop3", "both", "OAUTHBEARER"),
    ("pop3", "xoauth2", "XOAUTH2"),
])
def test_login_follows_the_advertised_mechanism(tmp_path: Path, servers: dict[str, Dovecot],
                                                idp: FakeIdP, oauth_user: User,
                                                file_keyring: Path, protocol: str, server: str,
                                                mechanism: str) -> None:
    dc = servers[server]
    dc.seed(oauth_user.name, "INBOX", [make_message(1), make_message(2)])
    config = write_config(tmp_path, dc, oauth_user, idp, protocol=protocol)
    store_refresh_token(idp, file_keyring)
    mark = dc.log_mark()
    rc, out, err = run_cli("--config", str(config), "sync")
    assert rc == 0, out + err
    inbox = tmp_path / "Mail" / NAME / "INBOX"
    assert len(list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())) == 2
    log_text = dc.log_text(mark)
    assert f"user=<{oauth_user.name}>, method={mechanism}" in log_text
    assert "oauth2 failed" not in log_text  # the first token was good: no retry
    assert idp.counts["refresh_token"] == 1


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_long_tokens(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                     oauth_user: User, file_keyring: Path, protocol: str) -> None:
    """Real access tokens are JWTs of a kilobyte or two: too long for a POP3 AUTH line with
    an initial response (255 octets, RFC 5034), so it goes after the "+" continuation."""
    idp.token_length = 2000
    config = write_config(tmp_path, servers["xoauth2"], oauth_user, idp, protocol=protocol)
    store_refresh_token(idp, file_keyring)
    rc, out, err = run_cli("--config", str(config), "check")
    assert rc == 0, out + err
    assert "(OAuth2" in out


# --------------------------------------------------------------------------------------------
# refresh


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_refresh_before_expiry(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                               oauth_user: User, file_keyring: Path) -> None:
    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp))
    store_refresh_token(idp, file_keyring)
    clock = FakeClock()
    tokens = oauth.TokenProvider(account, clock=clock)
    first = tokens.access_token()
    assert tokens.refreshes == 1
    clock.now += 3600 - 301  # more than the 300 s margin left: the cached token
    assert tokens.access_token() == first
    session = ImapSession.connect(account, lambda: pytest.fail("no password"), tokens=tokens)
    session.close()
    assert tokens.refreshes == 1
    clock.now += 2  # inside the margin: refreshed before the server would refuse it
    second = tokens.access_token()
    assert second != first and tokens.refreshes == 2
    assert tokens.expires_at == clock.now + 3600


def test_refresh_before_real_expiry(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                                    oauth_user: User, file_keyring: Path) -> None:
    """Short-lived tokens with the real clock: a login after 3/4 of a token's life uses a new
    token, so the server never sees an expired one."""
    idp.expires_in = 4
    dc = servers["both"]
    account = account_of(write_config(tmp_path, dc, oauth_user, idp))
    store_refresh_token(idp, file_keyring)
    mark = dc.log_mark()
    ImapSession.connect(account, lambda: "").close()
    time.sleep(3.2)
    ImapSession.connect(account, lambda: "").close()
    assert oauth.token_provider(account).refreshes == 2
    assert "oauth2 failed" not in dc.log_text(mark)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_refresh_after_a_rejected_token(tmp_path: Path, servers: dict[str, Dovecot],
                                        idp: FakeIdP, oauth_user: User, file_keyring: Path,
                                        caplog: pytest.LogCaptureFixture,
                                        protocol: str) -> None:
    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp,
                                      protocol=protocol))
    session_class = ImapSession if protocol == "imap" else Pop3Session
    store_refresh_token(idp, file_keyring)
    session_class.connect(account, lambda: "").close()
    tokens = oauth.token_provider(account)
    assert tokens.refreshes == 1
    idp.revoke_access_tokens()  # the server no longer accepts the cached token
    # Several connections at once (the daemon's workers and IDLE watchers): each is
    # rejected once, and the token is refreshed once for all of them.
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            session_class.connect(account, lambda: "").close()
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.INFO, logger="syncd.auth.oauth"):
        threads = [threading.Thread(target=connect) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert tokens.refreshes == 2
    assert ("rejected the OAuth2 access token (status invalid_token); refreshing it and "
            "trying once more") in caplog.text


def test_rotated_refresh_token_is_stored(tmp_path: Path, servers: dict[str, Dovecot],
                                         idp: FakeIdP, oauth_user: User,
                                         file_keyring: Path) -> None:
    idp.rotate_refresh = True
    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp, protocol="pop3"))
    old = store_refresh_token(idp, file_keyring)["refresh_token"]
    Pop3Session.connect(account, lambda: "").close()
    new = read_all(file_keyring)["syncd", f"{NAME}:oauth2"]
    assert new != old and new in idp.refresh and old in idp.revoked


def test_refresh_token_rotated_by_another_process(tmp_path: Path,
                                                  servers: dict[str, Dovecot], idp: FakeIdP,
                                                  oauth_user: User, file_keyring: Path) -> None:
    """`syncd sync` beside the daemon: one process rotates the refresh token just after the
    other read the old one from the keyring. The refused refresh is retried once with the
    token now in the keyring, and is not reported as a revoked sign-in."""
    idp.rotate_refresh = True
    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp))
    old = str(store_refresh_token(idp, file_keyring)["refresh_token"])
    other_process = oauth.TokenProvider(account)
    reads: list[str | None] = []

    def stale_then_current(name: str) -> str | None:
        reads.append(old if not reads else FileKeyring().get_password("syncd", f"{name}:oauth2"))
        return reads[-1]

    this_process = oauth.TokenProvider(account, load=stale_then_current)
    other_process.access_token()  # rotates: `old` is now refused
    assert old in idp.revoked
    token = this_process.access_token()
    assert token in idp.live_access_tokens()
    assert reads[0] == old and reads[1] != old
    assert read_all(file_keyring)["syncd", f"{NAME}:oauth2"] in idp.refresh


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_token_the_server_keeps_rejecting(tmp_path: Path, servers: dict[str, Dovecot],
                                            idp: FakeIdP, oauth_user: User,
                                            file_keyring: Path, protocol: str) -> None:
    """Tokens for another user (the mailbox does not accept this app): one retry, then one
    clear error, cause auth. The server's reason (the JSON of the SASL error challenge)
    is in it."""
    account = account_of(write_config(tmp_path, servers["xoauth2"], oauth_user, idp,
                                      protocol=protocol))
    store_refresh_token(idp, file_keyring)
    idp.user = "someone-else"
    for grant in idp.refresh.values():
        grant.user = "someone-else"
    session_class = ImapSession if protocol == "imap" else Pop3Session
    with pytest.raises(AccountError) as caught:
        session_class.connect(account, lambda: "")
    assert caught.value.cause == "auth"
    assert str(caught.value).startswith(
        f"{NAME}: OAuth2 login (XOAUTH2) as {oauth_user.name!r} on 127.0.0.1 failed: the server "
        "rejected a freshly refreshed access token (status 401)")
    assert oauth.token_provider(account).refreshes == 2


# --------------------------------------------------------------------------------------------
# revoked / missing sign-in


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_revoked_refresh_token(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                               oauth_user: User, file_keyring: Path, protocol: str) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp, protocol=protocol)
    store_refresh_token(idp, file_keyring)
    idp.revoke_refresh_tokens()
    rc, out, err = run_cli("--config", str(config), "check")
    assert rc == 1
    expected = (f"{NAME}: FAILED (auth): the OAuth2 sign-in has expired or was revoked "
                f"(AADSTS70008: The refresh token has expired or was revoked.); run "
                f"`syncd auth {NAME}` to sign in again")
    assert expected in out
    rc, out, err = run_cli("--config", str(config), "sync")
    assert rc == 1
    assert f"run `syncd auth {NAME}` to sign in again" in out + err
    assert not leaks(out + err, idp)


def test_revoked_refresh_token_is_not_retried(tmp_path: Path, servers: dict[str, Dovecot],
                                              idp: FakeIdP, oauth_user: User,
                                              file_keyring: Path) -> None:
    """The daemon reconnects again and again: a refused refresh token is sent once, not on
    every attempt, until `syncd auth` stores a new one."""
    account = account_of(write_config(tmp_path, servers["both"], oauth_user, idp))
    store_refresh_token(idp, file_keyring)
    idp.revoke_refresh_tokens()
    for _ in range(3):
        with pytest.raises(AccountError, match="expired or was revoked"):
            ImapSession.connect(account, lambda: "")
    assert idp.counts["refresh_token"] == 1
    store_refresh_token(idp, file_keyring)  # the user ran `syncd auth`
    ImapSession.connect(account, lambda: "").close()
    assert idp.counts["refresh_token"] == 2


def test_not_signed_in(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                       oauth_user: User, file_keyring: Path) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp)
    rc, out, _err = run_cli("--config", str(config), "check")
    assert rc == 1
    assert (f"{NAME}: FAILED (auth): not signed in with OAuth2 yet: run `syncd auth {NAME}`"
            in out)
    rc, _out, err = run_cli("--config", str(config), "password", "set", NAME)
    assert rc == 2 and f"run `syncd auth {NAME}`" in err


def test_token_endpoint_unreachable(tmp_path: Path, servers: dict[str, Dovecot], idp: FakeIdP,
                                    oauth_user: User, file_keyring: Path) -> None:
    config = write_config(tmp_path, servers["both"], oauth_user, idp)
    store_refresh_token(idp, file_keyring)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    config.write_text(config.read_text().replace(f"{idp.url}/token",
                                                 f"http://127.0.0.1:{dead}/token"))
    rc, out, _err = run_cli("--config", str(config), "check")
    assert rc == 1
    assert (f"{NAME}: FAILED (network): cannot refresh the OAuth2 access token: connection "
            f"refused (127.0.0.1)") in out


# --------------------------------------------------------------------------------------------
# the daemon, and no token anywhere


def test_daemon_with_oauth2_and_no_token_in_any_output(tmp_path: Path,
                                                       servers: dict[str, Dovecot],
                                                       idp: FakeIdP, oauth_user: User,
                                                       file_keyring: Path) -> None:
    """`syncd --debug run` (protocol traces on) and `syncd --debug sync` as real processes:
    the mail arrives, and no access token, refresh token or SASL line shows up in their
    output, the state directory or the maildir."""
    idp.expires_in = 5  # several refreshes while the daemon runs
    dc = servers["both"]
    dc.seed(oauth_user.name, "INBOX", [make_message(i) for i in range(3)])
    config = write_config(tmp_path, dc, oauth_user, idp, extra="    poll_interval: 2s\n")
    store_refresh_token(idp, file_keyring)
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "tests.support.file_keyring.FileKeyring",
           "SYNCD_TEST_KEYRING": str(file_keyring)}
    sync = subprocess.run([sys.executable, "-m", "syncd", "--debug", "--config", str(config),
                           "sync"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "AUTHENTICATE" in sync.stderr  # the trace is there, with the secrets scrubbed
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "--debug", "--config", str(config),
                             "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, env=env)
    try:
        inbox = tmp_path / "Mail" / NAME / "INBOX"
        deadline = time.monotonic() + 60
        dc.seed(oauth_user.name, "INBOX", [make_message(10)])
        while time.monotonic() < deadline:
            files = list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())
            if len(files) == 4:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the daemon did not fetch the new message")
        # The daemon keeps its connections (IDLE), so a token's expiry alone changes nothing.
        # An outage after the token expired makes it reconnect: it must refresh first, so
        # Dovecot never sees the expired token.
        refreshed = idp.counts["refresh_token"]
        time.sleep(5.5)
        mark = dc.log_mark()
        dc.restart()
        dc.seed(oauth_user.name, "INBOX", [make_message(11)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = list((inbox / "new").iterdir()) + list((inbox / "cur").iterdir())
            if len(files) == 5:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the daemon did not fetch mail after the token expired")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert idp.counts["refresh_token"] > refreshed
    assert "oauth2 failed" not in dc.log_text(mark)
    everything = sync.stdout + sync.stderr + output + config.read_text()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("latin-1")
    assert not leaks(everything, idp)


def test_the_leak_detector_detects(idp: FakeIdP, oauth_user: User) -> None:
    """Guard against a vacuous no-leak assertion: a token, raw or inside a SASL response in
    base64, is found."""
    token = str(idp.issue()["access_token"])
    sasl = oauth.OAuthSasl("XOAUTH2", token, "127.0.0.1", 993).initial_response("me")
    assert leaks(f"x {token} y", idp) == [token]
    assert leaks(f"> b'{base64.b64encode(sasl).decode()}'", idp) == [token]
    assert leaks("nothing here", idp) == []
