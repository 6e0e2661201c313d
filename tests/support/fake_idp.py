"""A fake OAuth2 identity provider on loopback, for the OAuth2 tests.

One HTTP server (127.0.0.1, a free port, a thread) serves:

- ``POST /devicecode`` (RFC 8628 device authorization): a device code and a user code; the
  sign-in is "approved" after ``pending_polls`` polls of the token endpoint;
- ``GET /authorize`` (authorization code + PKCE): approves at once and redirects to the
  ``redirect_uri`` with a code, as a browser would be redirected after a sign-in;
- ``POST /token``: the device_code, authorization_code (PKCE S256 checked) and refresh_token
  grants; refresh tokens can be revoked (``invalid_grant``) and rotated;
- ``POST /introspect`` (RFC 7662): what Dovecot's oauth2 passdb asks
  (``introspection_mode = post``): ``{"active": true, "email": <user>}`` for a live access
  token, ``{"active": false}`` otherwise.

``dovecot_conf(path)`` writes the oauth2 passdb args file and returns the ``extra_conf`` for
the test Dovecot. This module must not import pytest or syncd.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

HOST = "127.0.0.1"
_BASE64 = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")


@dataclass
class _Grant:
    user: str
    scope: str
    client_id: str


@dataclass
class _DeviceCode:
    grant: _Grant
    user_code: str
    polls: int = 0


@dataclass
class FakeIdP:
    """The provider. Tokens it issues start with ``at-`` (access) and ``rt-`` (refresh) so
    that tests can grep output for them."""

    user: str  # whom every sign-in signs in as
    client_id: str = "syncd-test-client"
    client_secret: str | None = None
    expires_in: int = 3600
    pending_polls: int = 1  # device flow: polls answered "authorization_pending" first
    interval: int = 1
    rotate_refresh: bool = False
    token_length: int = 32  # hex digits of random in each token (real ones are ~1-2 kB JWTs)

    access: dict[str, tuple[_Grant, float]] = field(default_factory=dict)
    refresh: dict[str, _Grant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _devices: dict[str, _DeviceCode] = field(default_factory=dict)
    _codes: dict[str, tuple[_Grant, str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeIdP:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                auth = self.headers.get("Authorization", "")
                status, answer = idp.handle_post(urlsplit(self.path).path, form, auth)
                self._json(status, answer)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/authorize":
                    location, error = idp.authorize(query)
                    if error is None:
                        self.send_response(302)
                        self.send_header("Location", location)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self._json(400, {"error": error})
                    return
                self._json(404, {"error": "not_found"})

            def _json(self, status: int, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="fake-idp").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeIdP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def oauth2_yaml(self, indent: str = "    ") -> str:
        """The ``oauth2:`` block of an account using this provider (provider: custom)."""
        lines = [
            "oauth2:",
            "  provider: custom",
            f"  client_id: {self.client_id}",
            f"  token_endpoint: {self.url}/token",
            f"  device_authorization_endpoint: {self.url}/devicecode",
            f"  authorization_endpoint: {self.url}/authorize",
            "  scopes: [mail, offline_access]",
        ]
        if self.client_secret:
            lines.insert(3, f"  client_secret: {self.client_secret}")
        return "".join(f"{indent}{line}\n" for line in lines)

    def dovecot_conf(self, args_file: Path, mechanisms: str = "xoauth2 oauthbearer") -> str:
        """Write Dovecot's oauth2 passdb args file; return the ``extra_conf`` that enables it
        (for the SASL mechanisms given: the server advertises exactly those)."""
        args_file.write_text(
            f"introspection_url = {self.url}/introspect\n"
            "introspection_mode = post\n"
            "force_introspection = yes\n"
            "username_attribute = email\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        args_file.chmod(0o644)
        return (
            f"auth_mechanisms = plain login {mechanisms}\n"
            "passdb {\n"
            "  driver = oauth2\n"
            f"  mechanisms = {mechanisms}\n"
            f"  args = {args_file}\n"
            "}\n"
        )

    # ---------------------------------------------------------------- test controls

    def reset(self, user: str) -> None:
        """Forget every token and counter; sign-ins now sign in as ``user``."""
        with self._lock:
            self.user = user
            self.expires_in, self.pending_polls, self.interval = 3600, 1, 1
            self.rotate_refresh, self.token_length = False, 32
            for table in (self.access, self.refresh, self._devices, self._codes):
                table.clear()
            self.revoked.clear()
            self.counts.clear()
            self.requests.clear()

    def issue(self, user: str | None = None, scope: str = "mail offline_access") -> dict[str, Any]:
        """Tokens as if a sign-in had just happened (for tests that skip the flow)."""
        with self._lock:
            return self._issue(_Grant(user or self.user, scope, self.client_id))

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self.revoked.update(self.refresh)

    def revoke_access_tokens(self) -> None:
        """The server forgets every access token (as if they had expired early)."""
        with self._lock:
            self.revoked.update(self.access)

    def live_access_tokens(self) -> list[str]:
        now = time.time()
        with self._lock:
            return [t for t, (_, exp) in self.access.items()
                    if t not in self.revoked and exp > now]

    def introspect(self, token: str) -> str | None:
        """Whom a live access token was issued to (None: unknown, revoked or expired): what
        the introspection endpoint answers, for a server in this process (the test SMTP
        server)."""
        _status, answer = self.handle_post("/introspect", {"token": token}, "")
        return answer.get("email") if answer.get("active") else None

    def all_tokens(self) -> list[str]:
        with self._lock:
            return [*self.access, *self.refresh, *self._devices, *self._codes]

    def leaks(self, text: str) -> list[str]:
        """Every token, device code or authorization code this provider issued that appears
        in ``text``, as is or inside a base64 string (a SASL response in a protocol trace)."""
        secrets_seen = set(self.all_tokens())
        for _path, form in self.requests:
            secrets_seen.update(v for v in form.values()
                                if v.startswith(("at-", "rt-", "dc-", "ac-")))
        decoded = []
        for match in _BASE64.finditer(text):
            chunk = match.group(0)
            with contextlib.suppress(ValueError):
                decoded.append(base64.b64decode(chunk + "=" * (-len(chunk) % 4))
                               .decode("latin-1"))
        haystack = text + "\n".join(decoded)
        return sorted(s for s in secrets_seen if s in haystack)

    # ---------------------------------------------------------------- endpoints

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = "at-" + secrets.token_hex(self.token_length // 2)
        refresh = "rt-" + secrets.token_hex(self.token_length // 2)
        self.access[access] = (grant, time.time() + self.expires_in)
        self.refresh[refresh] = grant
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                "refresh_token": refresh, "scope": grant.scope}

    def _client_ok(self, form: dict[str, str], auth: str) -> bool:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if client_id != self.client_id:
            return False
        return self.client_secret is None or secret == self.client_secret

    def handle_post(self, path: str, form: dict[str, str],
                    auth: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append((path, dict(form)))
            if path == "/introspect":
                self.counts["introspect"] += 1
                token = form.get("token", "")
                entry = self.access.get(token)
                if entry is None or token in self.revoked or entry[1] < time.time():
                    return 200, {"active": False}
                return 200, {"active": True, "email": entry[0].user, "scope": entry[0].scope}
            if not self._client_ok(form, auth):
                return 401, {"error": "invalid_client",
                             "error_description": "unknown client"}
            if path == "/devicecode":
                self.counts["devicecode"] += 1
                device = "dc-" + secrets.token_hex(16)
                user_code = secrets.token_hex(4).upper()
                self._devices[device] = _DeviceCode(
                    _Grant(self.user, form.get("scope", ""), self.client_id), user_code)
                return 200, {"device_code": device, "user_code": user_code,
                             "verification_uri": f"{self.url}/device",
                             "expires_in": 600, "interval": self.interval}
            if path != "/token":
                return 404, {"error": "not_found"}
            grant_type = form.get("grant_type", "")
            self.counts[grant_type] += 1
            if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
                pending = self._devices.get(form.get("device_code", ""))
                if pending is None:
                    return 400, {"error": "expired_token"}
                pending.polls += 1
                if pending.polls <= self.pending_polls:
                    return 400, {"error": "authorization_pending"}
                del self._devices[form["device_code"]]
                return 200, self._issue(pending.grant)
            if grant_type == "authorization_code":
                entry = self._codes.pop(form.get("code", ""), None)
                if entry is None:
                    return 400, {"error": "invalid_grant", "error_description": "bad code"}
                grant, challenge, redirect_uri = entry
                verifier = form.get("code_verifier", "")
                expected = base64.urlsafe_b64encode(
                    hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if expected != challenge:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
                if form.get("redirect_uri") != redirect_uri:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "redirect_uri mismatch"}
                return 200, self._issue(grant)
            if grant_type == "refresh_token":
                token = form.get("refresh_token", "")
                grant = self.refresh.get(token)
                if grant is None or token in self.revoked:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "AADSTS70008: The refresh token has "
                                                      "expired or was revoked."}
                answer = self._issue(grant)
                if not self.rotate_refresh:
                    del self.refresh[answer["refresh_token"]]
                    answer["refresh_token"] = token
                else:
                    self.revoked.add(token)
                return 200, answer
            return 400, {"error": "unsupported_grant_type"}

    def authorize(self, query: dict[str, str]) -> tuple[str, str | None]:
        with self._lock:
            self.counts["authorize"] += 1
            self.requests.append(("/authorize", dict(query)))
            if query.get("client_id") != self.client_id:
                return "", "invalid_client"
            if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
                return "", "invalid_request"
            code = "ac-" + secrets.token_hex(16)
            redirect_uri = query.get("redirect_uri", "")
            self._codes[code] = (_Grant(self.user, query.get("scope", ""), self.client_id),
                                 query["code_challenge"], redirect_uri)
            params = {"code": code, "state": query.get("state", "")}
            return f"{redirect_uri}?{urlencode(params)}", None


def follow_redirects(url: str, timeout: float = 10.0) -> int:
    """What a browser does with the authorization URL: GET it and follow the redirect to the
    loopback listener. Returns the final HTTP status."""
    import http.client

    for _ in range(5):
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            path = parts.path or "/"
            conn.request("GET", f"{path}?{parts.query}" if parts.query else path)
            response = conn.getresponse()
            response.read()
            if response.status in (301, 302, 303, 307) and response.getheader("Location"):
                url = response.getheader("Location")
                continue
            return response.status
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    raise RuntimeError("too many redirects")
