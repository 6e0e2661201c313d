"""OAuth2 for IMAP/POP3: signing in (`syncd auth`), access tokens for the daemon, SASL.

- ``resolve(account)`` merges the account's ``oauth2:`` settings with the provider preset
  (``syncd.config.presets.OAUTH2_PROVIDERS``): endpoints, scopes, quirks. Provider differences are
  data there, not branches here.
- ``device_flow`` (RFC 8628: prints a URL and a code; works on a headless machine) and
  ``browser_flow`` (authorization code with PKCE, RFC 7636, redirected to a loopback port,
  RFC 8252) obtain a refresh token; ``sign_in`` stores it in the keyring (service ``syncd``,
  user ``ACCOUNT:oauth2``). It is never written to the config, the state or a log.
- ``TokenProvider`` hands out access tokens: cached, refreshed shortly before they expire, and
  refreshed once more when a server rejects one. Thread-safe: the daemon has several
  connections per account. A refresh token the provider no longer accepts (revoked, expired)
  becomes one ``AccountError(cause="auth")`` telling the user to run ``syncd auth ACCOUNT``,
  and is not sent again until a new one is stored.
- ``OAuthSasl`` builds the XOAUTH2 and OAUTHBEARER (RFC 7628) client responses for the IMAP
  and POP3 adapters, and ``login_with_oauth2`` runs the try / refresh / try-once-more dance.

HTTP goes through Authlib's requests client. Every token, code and client secret is
registered with ``syncd.auth.secrets.register_secret`` the moment it is seen, so logs and error
messages are scrubbed of it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs, urlsplit

from syncd.auth.secrets import get_refresh_token, redact, register_secret, set_refresh_token
from syncd.config.presets import OAUTH2_PROVIDERS
from syncd.errors import AccountError

if TYPE_CHECKING:
    from authlib.integrations.requests_client import OAuth2Session

    from syncd.config.load import AccountSettings

__all__ = [
    "DEVICE_GRANT",
    "OAuth2Config",
    "OAuthSasl",
    "SaslRejected",
    "TokenProvider",
    "browser_flow",
    "choose_mechanism",
    "device_flow",
    "login_with_oauth2",
    "resolve",
    "sign_in",
    "token_provider",
]

log = logging.getLogger("syncd.auth.oauth")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: An access token is refreshed this long before it expires (at most a quarter of its life),
#: so that a connection made just before expiry does not log in with a dying token.
REFRESH_MARGIN = 300.0
#: Lifetime assumed when a token response has no expires_in (RFC 6749 leaves it optional).
DEFAULT_LIFETIME = 3600.0
HTTP_TIMEOUT = 30.0


# ---------------------------------------------------------------------------------------------
# Settings resolved against the provider presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuth2Config:
    account: str
    provider: str
    client_id: str
    client_secret: str | None
    token_endpoint: str
    device_authorization_endpoint: str | None
    authorization_endpoint: str | None
    scopes: tuple[str, ...]
    default_flow: str
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    redirect_host: str = "127.0.0.1"
    registration_help: str = ""

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


def resolve(account: AccountSettings, protocol: str | None = None) -> OAuth2Config:
    """The account's OAuth2 settings with the provider preset filled in. The scopes are the
    ``protocol``'s (what a token refresh for that protocol asks for); without one, those a
    sign-in asks for: the account's protocol's, plus SMTP's when the account sends mail."""
    settings = account.oauth2
    if account.auth != "oauth2" or settings is None:
        raise AccountError(account.name, "this account does not use OAuth2 (auth: oauth2)",
                           cause="config")
    preset = OAUTH2_PROVIDERS.get(settings.provider)
    tenant = settings.tenant or (preset.default_tenant if preset else None) or ""

    def pick(explicit: str | None, default: str | None) -> str | None:
        value = explicit or default
        return value.replace("{tenant}", tenant) if value else None

    token_endpoint = pick(settings.token_endpoint, preset and preset.token_endpoint)
    assert token_endpoint is not None  # the config validator requires it for custom
    wanted = [protocol] if protocol else [account.protocol] + (
        ["smtp"] if getattr(account, "smtp", None) is not None else [])
    scopes = tuple(settings.scopes or dict.fromkeys(
        scope for name in wanted for scope in (preset.scopes.get(name, ()) if preset else ())))
    device = pick(settings.device_authorization_endpoint,
                  preset and preset.device_authorization_endpoint)
    authorize = pick(settings.authorization_endpoint, preset and preset.authorization_endpoint)
    default_flow = preset.default_flow if preset else ("device" if device else "browser")
    if settings.client_secret:
        register_secret(settings.client_secret)
    return OAuth2Config(
        account=account.name, provider=settings.provider, client_id=settings.client_id,
        client_secret=settings.client_secret, token_endpoint=token_endpoint,
        device_authorization_endpoint=device, authorization_endpoint=authorize,
        scopes=scopes, default_flow=default_flow,
        authorize_params=dict(preset.authorize_params) if preset else {},
        redirect_host=preset.redirect_host if preset else "127.0.0.1",
        registration_help=preset.registration_help if preset else "")


def _session(config: OAuth2Config) -> OAuth2Session:
    from authlib.integrations.requests_client import OAuth2Session

    # A public client (no secret: Microsoft's "mobile and desktop" apps) sends only its
    # client_id; Google's installed-app clients send their (not really secret) secret in the
    # body, which every provider accepts.
    method = "client_secret_post" if config.client_secret else "none"
    session = OAuth2Session(client_id=config.client_id, client_secret=config.client_secret,
                            token_endpoint_auth_method=method, code_challenge_method="S256",
                            default_timeout=HTTP_TIMEOUT)
    session.headers["User-Agent"] = "syncd"
    return session


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or url


def _one_line(text: str | None, limit: int = 200) -> str:
    if not text:
        return ""
    first = redact(str(text)).strip().splitlines()[0] if str(text).strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _http_failure(account: str, url: str, exc: BaseException, what: str) -> AccountError:
    """An AccountError for a failed HTTP exchange with an OAuth2 endpoint (no body quoted)."""
    import requests

    host = _host_of(url)
    if isinstance(exc, requests.Timeout):
        return AccountError(account, f"{what}: {host} timed out", cause="timeout")
    if isinstance(exc, requests.exceptions.SSLError):
        return AccountError(account, f"{what}: TLS with {host} failed (certificate not "
                                     f"trusted?)", cause="certificate")
    if isinstance(exc, requests.ConnectionError):
        reason = "cannot connect"
        for inner in _causes(exc):
            if isinstance(inner, socket.gaierror):
                reason = "cannot resolve the host name"
                break
            if isinstance(inner, ConnectionRefusedError):
                reason = "connection refused"
                break
        return AccountError(account, f"{what}: {reason} ({host})", cause="network")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return AccountError(account, f"{what}: {host} answered HTTP "
                                     f"{exc.response.status_code}", cause="protocol")
    return AccountError(account, f"{what}: unexpected answer from {host} "
                                 f"({_one_line(str(exc)) or type(exc).__name__})",
                        cause="protocol")


def _causes(exc: BaseException) -> Iterable[BaseException]:
    """``exc`` and everything it wraps (requests -> urllib3 -> socket errors)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None),
                   *current.args]
        stack.extend(w for w in wrapped if isinstance(w, BaseException))


def _oauth_error(exc: Any) -> tuple[str, str]:
    """(error code, first line of the description) of an Authlib OAuthError."""
    return str(getattr(exc, "error", "") or ""), _one_line(getattr(exc, "description", None))


def _is_http_problem(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.RequestException | ValueError)


# ---------------------------------------------------------------------------------------------
# Token provider
# ---------------------------------------------------------------------------------------------


def not_signed_in(account: str) -> AccountError:
    return AccountError(account, f"not signed in with OAuth2 yet: run `syncd auth {account}`",
                        cause="auth")


def sign_in_expired(account: str, detail: str = "") -> AccountError:
    why = f" ({detail})" if detail else ""
    return AccountError(account, f"the OAuth2 sign-in has expired or was revoked{why}; run "
                                 f"`syncd auth {account}` to sign in again", cause="auth")


class _Refused(Exception):
    """The token endpoint refused the refresh token (invalid_grant)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TokenProvider:
    """Access tokens for one account: cached, refreshed before expiry, thread-safe.

    ``clock`` (wall-clock seconds) and ``load``/``store`` (the keyring) can be replaced in
    tests."""

    def __init__(self, account: AccountSettings, *,
                 clock: Callable[[], float] = time.time,
                 load: Callable[[str], str | None] = get_refresh_token,
                 store: Callable[[str, str], None] = set_refresh_token,
                 protocol: str | None = None) -> None:
        self.account = account
        self.name = account.name
        self.protocol = protocol or account.protocol
        # Refreshes ask for one protocol's scopes (the SMTP token has its own provider): a
        # refresh token signed in before the outbox existed keeps working for IMAP.
        self.config = resolve(account, protocol or account.protocol)
        self.clock = clock
        self._load = load
        self._store = store
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        # The refresh token the provider refused last: not sent again until another is stored.
        self._dead_refresh: str | None = None
        self.refreshes = 0  # how many refreshes were made (status, tests)

    def access_token(self) -> str:
        """A valid access token, refreshed first if it expires within the margin."""
        with self._lock:
            if self._access is not None and self.clock() < self._refresh_at:
                return self._access
            return self._refresh()

    def invalidate(self, token: str) -> None:
        """A server rejected ``token``: the next ``access_token()`` refreshes. Only the token
        the caller used is dropped, so that several connections failing with one old token
        cause one refresh, not one each."""
        with self._lock:
            if token == self._access:
                self._access = None

    def seed(self, token: Mapping[str, Any]) -> None:
        """Adopt a token response just obtained by a sign-in flow."""
        with self._lock:
            self._dead_refresh = None
            self._adopt(token, self.clock())

    @property
    def expires_at(self) -> float:
        return self._expires_at

    # -- internals (called with the lock held) ----------------------------------------------

    def _refresh(self) -> str:
        refresh = self._load(self.name)
        if not refresh:
            raise not_signed_in(self.name)
        register_secret(refresh)
        if refresh == self._dead_refresh:
            raise sign_in_expired(self.name)
        now = self.clock()  # the token's life is counted from before the request
        try:
            token = self._request(refresh)
        except _Refused as refused:
            # Another syncd process (`syncd sync` beside the daemon) may have rotated the
            # refresh token a moment ago: try the one in the keyring now, once.
            current = self._load(self.name)
            if not current or current == refresh:
                self._dead_refresh = refresh
                raise sign_in_expired(self.name, refused.detail) from None
            register_secret(current)
            refresh = current
            try:
                token = self._request(refresh)
            except _Refused as again:
                self._dead_refresh = refresh
                raise sign_in_expired(self.name, again.detail) from None
        self.refreshes += 1
        self._adopt(token, now)
        new_refresh = token.get("refresh_token")
        if new_refresh and new_refresh != refresh:
            # Providers may rotate refresh tokens (Microsoft does): keep the newest.
            try:
                self._store(self.name, new_refresh)
            except AccountError as exc:
                log.warning("%s: could not store the new refresh token: %s", self.name, exc)
        assert self._access is not None
        return self._access

    def _request(self, refresh: str) -> Mapping[str, Any]:
        """One refresh_token grant. Raises _Refused for invalid_grant, AccountError for the
        rest."""
        config = self.config
        what = "cannot refresh the OAuth2 access token"
        try:
            with _session(config) as session:
                return session.refresh_token(config.token_endpoint, refresh_token=refresh,
                                             scope=config.scope or None)
        except Exception as exc:
            from authlib.common.errors import AuthlibBaseError

            if isinstance(exc, AuthlibBaseError):
                error, detail = _oauth_error(exc)
                if error == "invalid_grant":
                    raise _Refused(detail) from None
                if error in ("invalid_client", "unauthorized_client"):
                    raise AccountError(self.name, f"{what}: the provider rejected client_id "
                                                  f"{config.client_id!r} ({error}: {detail})",
                                       cause="auth") from None
                raise AccountError(self.name, f"{what}: {error or 'error'}"
                                              f"{': ' + detail if detail else ''}",
                                   cause="protocol") from None
            if _is_http_problem(exc):
                raise _http_failure(self.name, config.token_endpoint, exc, what) from None
            raise

    def _adopt(self, token: Mapping[str, Any], now: float) -> None:
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise AccountError(self.name, f"the OAuth2 token endpoint "
                                          f"{_host_of(self.config.token_endpoint)} returned no "
                                          f"access token", cause="protocol")
        register_secret(access)
        if isinstance(token.get("refresh_token"), str):
            register_secret(token["refresh_token"])
        try:
            lifetime = float(token.get("expires_in") or DEFAULT_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        lifetime = max(lifetime, 1.0)
        self._access = access
        self._expires_at = now + lifetime
        self._refresh_at = now + lifetime - min(REFRESH_MARGIN, lifetime / 4)
        log.debug("%s: OAuth2 access token valid for %.0f s", self.name, lifetime)


_providers: dict[tuple[str, str], TokenProvider] = {}
_providers_lock = threading.Lock()


def _fingerprint(account: AccountSettings) -> str:
    # A config reload (SIGHUP) that changes the OAuth2 settings gets a fresh provider.
    data = json.dumps([account.username, account.protocol,
                       account.oauth2._asdict() if account.oauth2 else None],
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def token_provider(account: AccountSettings, protocol: str | None = None) -> TokenProvider:
    """The process-wide TokenProvider of an account (shared by all its connections); with
    ``protocol="smtp"``, the one for sending."""
    key = (account.name if protocol in (None, account.protocol) else f"{account.name}:{protocol}",
           _fingerprint(account))
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            for stale in [k for k in _providers if k[0] == account.name]:
                del _providers[stale]
            provider = _providers[key] = TokenProvider(account, protocol=protocol)
        return provider


def _forget_providers() -> None:
    """For tests: drop every cached provider (and its access token)."""
    with _providers_lock:
        _providers.clear()


# ---------------------------------------------------------------------------------------------
# SASL: XOAUTH2 and OAUTHBEARER
# ---------------------------------------------------------------------------------------------

MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def choose_mechanism(advertised: Iterable[str]) -> str:
    """OAUTHBEARER (RFC 7628, the standard) where the server offers it, else XOAUTH2 (what
    Microsoft and Google offer; also tried when a server lists neither)."""
    offered = {m.upper() for m in advertised}
    for mechanism in MECHANISMS:
        if mechanism in offered:
            return mechanism
    return "XOAUTH2"


class SaslRejected(Exception):
    """The server refused the OAuth2 login; ``detail`` is what it said (redacted)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass
class OAuthSasl:
    """One OAuth2 SASL exchange. Usable as imapclient's ``sasl_login`` callback (called with
    each server challenge) and as the POP3 adapter's ``SaslMechanism``."""

    name: str  # "XOAUTH2" or "OAUTHBEARER"
    token: str
    host: str
    port: int
    # The server's error (JSON, RFC 7628 section 3.2.2) when it rejected the token.
    error: dict[str, Any] | None = None
    _steps: int = 0

    def initial_response(self, username: str) -> bytes:
        if self.name == "OAUTHBEARER":
            # gs2 header with the authzid; "=" and "," escaped as RFC 5801 says.
            authzid = username.replace("=", "=3D").replace(",", "=2C")
            text = (f"n,a={authzid},\x01host={self.host}\x01port={self.port}\x01"
                    f"auth=Bearer {self.token}\x01\x01")
        else:
            text = f"user={username}\x01auth=Bearer {self.token}\x01\x01"
        data = text.encode()
        # --debug protocol traces show the base64 form of this line.
        register_secret(base64.b64encode(data).decode("ascii"))
        return data

    def error_response(self) -> bytes:
        """What the client sends after an error challenge: a lone %x01 for OAUTHBEARER
        (RFC 7628 section 3.2.3), an empty response for XOAUTH2."""
        return b"\x01" if self.name == "OAUTHBEARER" else b""

    def record_challenge(self, challenge: bytes) -> None:
        try:
            value = json.loads(challenge.decode("utf-8", "replace"))
        except ValueError:
            value = None
        self.error = value if isinstance(value, dict) else {"status": _one_line(
            challenge.decode("utf-8", "replace"), 80)}

    def imap_callback(self, username: str) -> Callable[[bytes], bytes]:
        def respond(challenge: bytes) -> bytes:
            self._steps += 1
            if self._steps == 1 and not challenge:
                return self.initial_response(username)
            self.record_challenge(challenge)
            return self.error_response()

        return respond

    def describe_error(self) -> str:
        if not self.error:
            return ""
        status = self.error.get("status")
        return f"status {redact(str(status))}" if status else ""


def login_with_oauth2(account: AccountSettings, mechanism: str, host: str, port: int,
                      authenticate: Callable[[OAuthSasl], None],
                      tokens: TokenProvider | None = None,
                      username: str | None = None) -> OAuthSasl:
    """Log in with an access token; if the server rejects it, refresh and try exactly once
    more. ``authenticate`` runs one SASL exchange and raises SaslRejected on a refusal.
    ``username`` (default: the account's) is the one named in the error."""
    tokens = tokens or token_provider(account)
    detail = ""
    for attempt in range(2):
        token = tokens.access_token()
        sasl = OAuthSasl(mechanism, token, host, port)
        try:
            authenticate(sasl)
            return sasl
        except SaslRejected as exc:
            detail = sasl.describe_error() or _one_line(exc.detail, 120)
            tokens.invalidate(token)
            if attempt == 0:
                log.info("%s: %s rejected the OAuth2 access token (%s); refreshing it and "
                         "trying once more", account.name, host, detail or "no reason given")
    protocol = tokens.protocol.upper()
    who = username or account.username
    raise AccountError(
        account.name,
        f"OAuth2 login ({mechanism}) as {who!r} on {host} failed: the server "
        f"rejected a freshly refreshed access token{f' ({detail})' if detail else ''}. Check "
        f"that {protocol} access is enabled for this mailbox and that the app may use it "
        f"(scopes: {tokens.config.scope or 'none'}); or run `syncd auth {account.name}` again",
        cause="auth")


# ---------------------------------------------------------------------------------------------
# Sign-in flows
# ---------------------------------------------------------------------------------------------


def _check_tokens(account: str, token: Mapping[str, Any]) -> None:
    for key in ("access_token", "refresh_token"):
        value = token.get(key)
        if isinstance(value, str):
            register_secret(value)
    if not token.get("refresh_token"):
        raise AccountError(account, "the provider returned no refresh token, so syncd could "
                                    "not stay signed in (the scopes must include offline "
                                    "access, e.g. offline_access for Microsoft)", cause="auth")


def device_flow(account: AccountSettings, *, out: TextIO = sys.stdout,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """RFC 8628: ask for a device code, show the URL and code, poll until the user approved.
    Returns the token response."""
    config = resolve(account)
    name = account.name
    url = config.device_authorization_endpoint
    if not url:
        raise AccountError(name, "this OAuth2 provider has no device_authorization_endpoint; "
                                 "use `syncd auth --browser`", cause="config")
    what = "cannot start the device sign-in"
    with _session(config) as session:
        try:
            response = session.post(
                url, data={"scope": config.scope} if config.scope else {},
                auth=session.client_auth(session.token_endpoint_auth_method),
                withhold_token=True, headers={"Accept": "application/json"})
            answer = response.json()
        except Exception as exc:
            if _is_http_problem(exc):
                raise _http_failure(name, url, exc, what) from None
            raise
        if not isinstance(answer, dict):
            raise AccountError(name, f"{what}: unexpected answer from {_host_of(url)}",
                               cause="protocol")
        if "error" in answer or response.status_code >= 400:
            error = str(answer.get("error") or f"HTTP {response.status_code}")
            detail = _one_line(answer.get("error_description"))
            raise AccountError(name, f"{what}: {error}{': ' + detail if detail else ''}"
                                     f"{_client_hint(config, error)}", cause="auth")
        device_code = answer.get("device_code")
        user_code = answer.get("user_code")
        verification = answer.get("verification_uri") or answer.get("verification_url")
        if not (isinstance(device_code, str) and isinstance(user_code, str) and verification):
            raise AccountError(name, f"{what}: {_host_of(url)} sent an incomplete answer",
                               cause="protocol")
        register_secret(device_code)
        interval = _number(answer.get("interval"), 5.0)
        deadline = clock() + _number(answer.get("expires_in"), 900.0)
        print(f"To sign in account {name!r}, open {verification} in a browser (on any "
              f"device) and enter the code:\n\n    {user_code}\n", file=out)
        complete = answer.get("verification_uri_complete")
        if isinstance(complete, str):
            print(f"(or open {complete})", file=out)
        print("Waiting for the sign-in to complete...", file=out, flush=True)
        what = "device sign-in failed"
        while True:
            sleep(interval)
            if clock() > deadline:
                raise AccountError(name, "the sign-in code expired before it was used; run "
                                         f"`syncd auth {name}` again", cause="auth")
            try:
                token = session.fetch_token(config.token_endpoint, grant_type=DEVICE_GRANT,
                                            device_code=device_code)
            except Exception as exc:
                from authlib.common.errors import AuthlibBaseError

                if not isinstance(exc, AuthlibBaseError):
                    if _is_http_problem(exc):
                        raise _http_failure(name, config.token_endpoint, exc, what) from None
                    raise
                error, detail = _oauth_error(exc)
                if error == "authorization_pending":
                    continue
                if error == "slow_down":
                    interval += 5
                    continue
                if error in ("access_denied", "authorization_declined"):
                    raise AccountError(name, "the sign-in was declined", cause="auth") from None
                if error in ("expired_token", "code_expired"):
                    raise AccountError(name, "the sign-in code expired before it was used; "
                                             f"run `syncd auth {name}` again",
                                       cause="auth") from None
                raise AccountError(name, f"{what}: {error or 'error'}"
                                         f"{': ' + detail if detail else ''}"
                                         f"{_client_hint(config, error)}",
                                   cause="auth") from None
            token = dict(token)
            _check_tokens(name, token)
            return token


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _client_hint(config: OAuth2Config, error: str) -> str:
    if error in ("invalid_client", "unauthorized_client") and config.registration_help:
        return f" (client_id {config.client_id!r}: {config.registration_help})"
    return ""


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>syncd</title></head>
<body style="font-family: sans-serif"><h1>syncd</h1><p>{text}</p></body></html>"""


class _Redirects:
    """Collects what arrives at the loopback redirect URI (or is pasted)."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.results: queue.Queue[dict[str, str]] = queue.Queue()

    def offer(self, query: str) -> bool:
        params = {k: v[0] for k, v in parse_qs(query).items() if v}
        if params.get("state") != self.state:
            return False  # not ours (a stray request, or a forged one): keep waiting
        if "code" in params:
            register_secret(params["code"])
        self.results.put(params)
        return True


def _handler(redirects: _Redirects, account: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urlsplit(self.path).query
            if redirects.offer(query):
                params = parse_qs(query)
                if "code" in params:
                    text = (f"Account {html.escape(account)} is signed in. You can close this "
                            f"tab and return to the terminal.")
                else:
                    text = "The sign-in did not complete; see the terminal."
                status = 200
            else:
                text, status = "Nothing to see here.", 404
            body = _PAGE.format(text=text).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line carries the authorization code

    return Handler


def _open_browser(url: str) -> bool:
    import webbrowser

    try:
        return webbrowser.open(url)
    except Exception:
        return False


def browser_flow(account: AccountSettings, *, out: TextIO = sys.stdout,
                 open_browser: Callable[[str], bool] | None = None,
                 paste: TextIO | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Authorization code with PKCE, redirected to http://127.0.0.1:<random port>/. The URL
    is printed too; on a machine without a browser, open it elsewhere and paste the address
    the browser ends up at (``paste``: a terminal to read it from)."""
    from authlib.common.security import generate_token

    config = resolve(account)
    name = account.name
    if not config.authorization_endpoint:
        raise AccountError(name, "this OAuth2 provider has no authorization_endpoint; use "
                                 "the device flow (`syncd auth` without --browser)",
                           cause="config")
    state = generate_token(32)
    verifier = generate_token(64)
    register_secret(verifier)
    redirects = _Redirects(state)
    server = HTTPServer(("127.0.0.1", 0), _handler(redirects, name))
    port = server.server_address[1]
    redirect_uri = f"http://{config.redirect_host}:{port}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="syncd-oauth-redirect", daemon=True)
    thread.start()
    try:
        with _session(config) as session:
            extra = dict(config.authorize_params)
            extra.setdefault("login_hint", account.username)
            url, _ = session.create_authorization_url(
                config.authorization_endpoint, state=state, code_verifier=verifier,
                redirect_uri=redirect_uri, scope=config.scope or None, **extra)
            opened = (open_browser or _open_browser)(url)
            print(f"{'A browser window should open' if opened else 'Open this URL in a browser'}"
                  f" to sign in account {name!r}:\n\n    {url}\n", file=out)
            if paste is not None:
                print(f"If the browser is on another machine, sign in there, then paste the "
                      f"address it ends up at (it starts with http://{config.redirect_host}:"
                      f"{port}/) here and press Enter.", file=out)
                _read_pasted(paste, redirects)
            print("Waiting for the sign-in to complete...", file=out, flush=True)
            try:
                params = redirects.results.get(timeout=timeout)
            except queue.Empty:
                raise AccountError(name, f"no sign-in arrived within {timeout:.0f} s; run "
                                         f"`syncd auth {name}` again", cause="auth") from None
            if "code" not in params:
                error = params.get("error", "no authorization code")
                detail = _one_line(params.get("error_description"))
                raise AccountError(name, f"the sign-in failed: {error}"
                                         f"{': ' + detail if detail else ''}", cause="auth")
            what = "cannot complete the sign-in"
            try:
                token = session.fetch_token(config.token_endpoint,
                                            grant_type="authorization_code",
                                            code=params["code"], redirect_uri=redirect_uri,
                                            code_verifier=verifier)
            except Exception as exc:
                from authlib.common.errors import AuthlibBaseError

                if isinstance(exc, AuthlibBaseError):
                    error, detail = _oauth_error(exc)
                    raise AccountError(name, f"{what}: {error or 'error'}"
                                             f"{': ' + detail if detail else ''}"
                                             f"{_client_hint(config, error)}",
                                       cause="auth") from None
                if _is_http_problem(exc):
                    raise _http_failure(name, config.token_endpoint, exc, what) from None
                raise
    finally:
        server.shutdown()
        server.server_close()
    token = dict(token)
    _check_tokens(name, token)
    return token


def _read_pasted(stream: TextIO, redirects: _Redirects) -> None:
    def read() -> None:
        with contextlib.suppress(Exception):
            for line in stream:
                text = line.strip()
                if not text:
                    continue
                query = urlsplit(text).query or text.lstrip("?")
                if redirects.offer(query):
                    return

    threading.Thread(target=read, name="syncd-oauth-paste", daemon=True).start()


def sign_in(account: AccountSettings, *, browser: bool | None = None,
            out: TextIO = sys.stdout, **flow_options: Any) -> TokenProvider:
    """Run a sign-in flow (the provider's default unless ``browser`` says), store the refresh
    token in the keyring, and return the account's TokenProvider, seeded with the fresh
    access token."""
    config = resolve(account)
    use_browser = browser if browser is not None else config.default_flow == "browser"
    if use_browser:
        token = browser_flow(account, out=out, **flow_options)
    else:
        token = device_flow(account, out=out, **flow_options)
    set_refresh_token(account.name, token["refresh_token"])
    provider = token_provider(account)
    provider.seed(token)
    return provider
