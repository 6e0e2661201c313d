"""Provider presets: plain data, no code paths per provider.

Two tables:

- ``ACCOUNT_PRESETS``: what ``provider: gmail`` (etc.) on an account fills in: the IMAP and POP3
  servers, the SMTP server (the outbox's ``smtp``), the default ``auth`` and, for OAuth2,
  which identity provider and tenant to use. Explicit keys in the config always win.
- ``OAUTH2_PROVIDERS``: the endpoints, scopes and quirks of each OAuth2 identity provider
  (``oauth2: {provider: microsoft}``). ``custom`` has no entry: every endpoint comes from the
  config.

``guess_servers`` is the fallback of ``syncd init`` for domains no preset knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from typing import Protocol as _Interface

__all__ = [
    "ACCOUNT_PRESETS",
    "OAUTH2_PROVIDERS",
    "AccountPreset",
    "OAuth2Provider",
    "Server",
    "guess_servers",
    "preset_for_address",
]

Protocol = Literal["imap", "pop3", "smtp"]


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    tls: Literal["implicit", "starttls"] = "implicit"


@dataclass(frozen=True, slots=True)
class AccountPreset:
    name: str
    label: str
    imap: Server | None
    pop3: Server | None
    smtp: Server | None
    auth: Literal["password", "oauth2"] = "password"
    oauth2_provider: str | None = None
    tenant: str | None = None
    # Address domains that identify the provider (for `syncd init`). A "*" as the last label
    # matches any country variant (yahoo.co.uk, hotmail.de).
    domains: tuple[str, ...] = ()
    # Shown by `syncd init` when the provider needs something from the user first.
    note: str | None = None
    # The provider files every message sent through its SMTP server in the Sent folder
    # itself: the outbox's `save_sent: auto` then saves no copy of its own.
    files_sent: bool = False

    def server(self, protocol: str) -> Server | None:
        return {"imap": self.imap, "pop3": self.pop3, "smtp": self.smtp}.get(protocol)


_MS_IMAP = Server("outlook.office365.com", 993)
_MS_POP3 = Server("outlook.office365.com", 995)

ACCOUNT_PRESETS: Mapping[str, AccountPreset] = MappingProxyType({
    p.name: p for p in (
        AccountPreset(
            "outlook", "Outlook.com / Hotmail (personal Microsoft account)",
            imap=_MS_IMAP, pop3=_MS_POP3, smtp=Server("smtp-mail.outlook.com", 587, "starttls"),
            auth="oauth2", oauth2_provider="microsoft", tenant="consumers", files_sent=True,
            domains=("outlook.*", "hotmail.*", "live.*", "msn.com", "passport.com"),
            note="Microsoft accepts only OAuth2: you need an application (client) ID; see "
                 "the README, then run `syncd auth ACCOUNT`"),
        AccountPreset(
            "office365", "Microsoft 365 / Exchange Online (work or school account)",
            imap=_MS_IMAP, pop3=_MS_POP3, smtp=Server("smtp.office365.com", 587, "starttls"),
            auth="oauth2", oauth2_provider="microsoft", tenant="organizations", files_sent=True,
            note="Microsoft accepts only OAuth2: you need an application (client) ID (your "
                 "IT department may have one); then run `syncd auth ACCOUNT`"),
        AccountPreset(
            "gmail", "Gmail / Google Workspace",
            imap=Server("imap.gmail.com", 993), pop3=Server("pop.gmail.com", 995),
            smtp=Server("smtp.gmail.com", 465),
            auth="oauth2", oauth2_provider="google", files_sent=True,
            domains=("gmail.com", "googlemail.com"),
            note="Google needs an OAuth2 client ID and secret (a 'Desktop app' client of a "
                 "Google Cloud project), or `auth: password` with an app password"),
        AccountPreset(
            "fastmail", "Fastmail",
            imap=Server("imap.fastmail.com", 993), pop3=Server("pop.fastmail.com", 995),
            smtp=Server("smtp.fastmail.com", 465),
            domains=("fastmail.com", "fastmail.fm", "fastmail.net", "fastmail.org",
                     "fastmail.to", "messagingengine.com"),
            note="use an app password (Settings > Privacy & Security > App passwords)"),
        AccountPreset(
            "icloud", "iCloud Mail",
            imap=Server("imap.mail.me.com", 993), pop3=None,
            smtp=Server("smtp.mail.me.com", 587, "starttls"),
            domains=("icloud.com", "me.com", "mac.com"),
            note="use an app-specific password (appleid.apple.com > Sign-In and Security)"),
        AccountPreset(
            "yahoo", "Yahoo Mail",
            imap=Server("imap.mail.yahoo.com", 993), pop3=Server("pop.mail.yahoo.com", 995),
            smtp=Server("smtp.mail.yahoo.com", 465),
            domains=("yahoo.*", "ymail.com", "rocketmail.com"),
            note="use an app password (Account security > Generate app password)"),
    )
})


@dataclass(frozen=True, slots=True)
class OAuth2Provider:
    name: str
    # Endpoints may contain "{tenant}".
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str | None
    # Scopes per mail protocol; every list asks for a refresh token too where the provider
    # needs a scope for that (Microsoft's offline_access).
    scopes: Mapping[str, tuple[str, ...]]
    default_tenant: str | None = None
    # The flow `syncd auth` uses unless told otherwise. Google refuses the mail scope in the
    # device flow, so it signs in through the browser.
    default_flow: Literal["device", "browser"] = "device"
    # Extra parameters of the authorization request (Google only issues a refresh token with
    # access_type=offline, and only on consent).
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    # The host name in the loopback redirect URI. Microsoft's app registrations accept any
    # port for "http://localhost"; others take 127.0.0.1 (RFC 8252 section 7.3).
    redirect_host: str = "127.0.0.1"
    # Where users get a client ID (shown in errors).
    registration_help: str = ""


_MS_BASE = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"

OAUTH2_PROVIDERS: Mapping[str, OAuth2Provider] = MappingProxyType({
    p.name: p for p in (
        OAuth2Provider(
            "microsoft",
            authorization_endpoint=f"{_MS_BASE}/authorize",
            token_endpoint=f"{_MS_BASE}/token",
            device_authorization_endpoint=f"{_MS_BASE}/devicecode",
            scopes=MappingProxyType({
                "imap": ("https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"),
                "pop3": ("https://outlook.office.com/POP.AccessAsUser.All", "offline_access"),
                # The outbox (smtp:); asked for at sign-in beside the mail protocol's.
                "smtp": ("https://outlook.office.com/SMTP.Send", "offline_access"),
            }),
            default_tenant="common",
            default_flow="device",
            redirect_host="localhost",
            registration_help="register an application in Microsoft Entra ID (App "
                              "registrations > New registration; allow public client flows; "
                              "API permissions: Office 365 Exchange Online IMAP.AccessAsUser.All "
                              "/ POP.AccessAsUser.All), or use a client ID your organisation "
                              "has approved"),
        OAuth2Provider(
            "google",
            authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
            token_endpoint="https://oauth2.googleapis.com/token",
            device_authorization_endpoint="https://oauth2.googleapis.com/device/code",
            scopes=MappingProxyType({
                "imap": ("https://mail.google.com/",),
                "pop3": ("https://mail.google.com/",),
                "smtp": ("https://mail.google.com/",),
            }),
            default_flow="browser",
            authorize_params=MappingProxyType({"access_type": "offline", "prompt": "consent"}),
            registration_help="create an OAuth client of type 'Desktop app' in a Google Cloud "
                              "project (APIs & Services > Credentials) with the Gmail API "
                              "enabled; put its client_id and client_secret under oauth2"),
    )
})


def _domain_matches(domain: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return domain.startswith(pattern[:-1])
    return domain == pattern


def preset_for_address(address: str) -> AccountPreset | None:
    """The preset whose domains include the domain of ``address`` (``me@gmail.com``)."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    if not domain:
        return None
    for preset in ACCOUNT_PRESETS.values():
        if any(_domain_matches(domain, pattern) for pattern in preset.domains):
            return preset
    return None


def guess_servers(address_or_domain: str) -> dict[str, Server]:
    """imap.<domain>, pop.<domain> and smtp.<domain>: the common naming, for domains no
    preset knows. Only a guess: `syncd init` runs `check` to find out."""
    domain = address_or_domain.rpartition("@")[2].strip().lower().rstrip(".")
    return {
        "imap": Server(f"imap.{domain}", 993),
        "pop3": Server(f"pop.{domain}", 995),
        "smtp": Server(f"smtp.{domain}", 465),
    }


class _Sender(_Interface):
    """What saves_sent reads of an account's settings (presets stay below the schema)."""

    save_sent: str
    protocol: str
    provider: str | None
    direction: str


def saves_sent(account: _Sender) -> bool:
    """``save_sent`` resolved: ``auto`` saves unless the provider files sent mail itself, or
    the account is ``direction: pull`` (the server is never written)."""
    if account.save_sent != "auto":
        return account.save_sent == "always"
    if account.protocol != "imap" or account.direction == "pull":
        return False
    preset = ACCOUNT_PRESETS.get(account.provider or "")
    return not (preset is not None and preset.files_sent)
