"""Finding the servers of an address for `syncd init ADDRESS`, in the contract's order:
1. the built-in presets (syncd/config/presets.py), no network;
2. Thunderbird autoconfig: ``https://autoconfig.DOMAIN/mail/config-v1.1.xml``, then
   ``https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`` (HTTPS only, certificates
   checked: a forged answer would send the password elsewhere). The issue's "ISPDB copy
   shipped with a library" step is absent: no maintained Python library ships Mozilla's
   ISPDB (PyPI's ``ispdb`` is a 2013 client with no data), and the contract lists no ISPDB
   URL, so autoconfig.thunderbird.net is not asked;
3. RFC 6186 SRV records (``_imaps._tcp``, ``_imap._tcp``, ``_pop3s._tcp``, ``_pop3._tcp``,
   ``_submissions._tcp``, ``_submission._tcp``), in priority then weight order;
4. the MX host's provider (Google, Microsoft) -> that provider's preset.
Implicit TLS is preferred wherever there is a choice (RFC 8314). Every value says where it
came from. Test knobs: SYNCD_DNS_SERVER=IP:PORT, SYNCD_AUTOCONFIG_URLS="URL ..." (templates
with {domain} and {email})."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.config.presets import ACCOUNT_PRESETS, AccountPreset, preset_for_address

DEFAULT_AUTOCONFIG_URLS = (
    "https://autoconfig.{domain}/mail/config-v1.1.xml?emailaddress={email}",
    "https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={email}",
)
# (service, protocol, tls), implicit TLS first within each protocol (RFC 8314)
SRV_SERVICES = (
    ("_imaps._tcp", "imap", "implicit"), ("_imap._tcp", "imap", "starttls"),
    ("_pop3s._tcp", "pop3", "implicit"), ("_pop3._tcp", "pop3", "starttls"),
    ("_submissions._tcp", "smtp", "implicit"), ("_submission._tcp", "smtp", "starttls"),
)
# MX host suffix -> preset: the big providers host many domains that no preset names.
MX_PROVIDERS = (
    (".google.com", "gmail"), (".googlemail.com", "gmail"),
    (".protection.outlook.com", "office365"), (".outlook.com", "office365"),
)
TIMEOUT = 10.0
_MAX_XML = 1 << 20


@dataclass(frozen=True)
class Found:
    protocol: str  # imap | pop3 | smtp
    host: str
    port: int
    tls: str  # implicit | starttls
    source: str
    username: str | None = None


@dataclass
class Discovery:
    address: str
    servers: dict[str, Found] = field(default_factory=dict)
    preset: AccountPreset | None = None
    preset_source: str | None = None
    tried: list[str] = field(default_factory=list)  # what was asked and what came back

    def add(self, found: Found) -> None:
        self.servers.setdefault(found.protocol, found)  # the first source wins

    def lines(self) -> list[str]:
        out = [f"  tried {t}" for t in self.tried]
        if self.preset is not None:
            out.append(f"  provider preset {self.preset.name} ({self.preset.label}), from "
                       f"{self.preset_source}")
        for protocol in ("imap", "pop3", "smtp"):
            found = self.servers.get(protocol)
            if found is not None:
                out.append(f"  {protocol.upper()}: {found.host}:{found.port} ({found.tls} "
                           f"TLS), from {found.source}")
        return out


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def discover(address: str, *, network: bool = True,
             fetch: Callable[[str], bytes | None] | None = None) -> Discovery:
    result = Discovery(address)
    preset = preset_for_address(address)
    if preset is not None:
        result.preset, result.preset_source = preset, f"the address's domain ({preset.name})"
        return result
    if not network:
        result.tried.append("nothing on the network (--no-discover)")
        return result
    domain = domain_of(address)
    from_autoconfig(result, domain, fetch or fetch_https)
    if "imap" in result.servers and "smtp" in result.servers:
        return result
    resolver = make_resolver()
    from_srv(result, domain, resolver)
    if not result.servers:
        from_mx(result, domain, resolver)
    return result


# --- autoconfig -----------------------------------------------------------------------------

def autoconfig_urls(address: str) -> list[str]:
    templates = os.environ.get("SYNCD_AUTOCONFIG_URLS", "").split() or list(
        DEFAULT_AUTOCONFIG_URLS)
    return [t.format(domain=domain_of(address), email=address) for t in templates]


def fetch_https(url: str) -> bytes | None:
    """The body of a 200 answer; None for anything else. HTTPS only, certificates verified
    (requests' default; REQUESTS_CA_BUNDLE is honoured), no redirect off HTTPS."""
    import requests

    if not url.startswith("https://"):
        return None
    try:
        response = requests.get(url, timeout=TIMEOUT, allow_redirects=True, stream=True)
        if response.status_code != 200 or not response.url.startswith("https://"):
            return None
        body = response.raw.read(_MAX_XML + 1, decode_content=True)
    except requests.RequestException:
        return None
    return body if len(body) <= _MAX_XML else None


def from_autoconfig(result: Discovery, domain: str,
                    fetch: Callable[[str], bytes | None]) -> None:
    for url in autoconfig_urls(result.address):
        body = fetch(url)
        if body is None:
            result.tried.append(f"autoconfig {url}: no answer")
            continue
        servers = parse_autoconfig(body, result.address, f"autoconfig {url}")
        if not servers:
            result.tried.append(f"autoconfig {url}: no usable server in the answer")
            continue
        for found in servers:
            result.add(found)
        return


def parse_autoconfig(body: bytes, address: str, source: str) -> list[Found]:
    """Thunderbird's config-v1.1.xml -> servers, implicit TLS first per protocol; plain-text
    servers are left out. A document with a DTD is refused unread (entity expansion)."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        return []
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return []
    local, _, domain = address.rpartition("@")
    found: list[Found] = []
    for server in root.iter():
        if server.tag not in ("incomingServer", "outgoingServer"):
            continue
        kind = server.get("type", "")
        protocol = {"imap": "imap", "pop3": "pop3", "smtp": "smtp"}.get(kind)
        socket_type = (server.findtext("socketType") or "").strip().upper()
        tls = {"SSL": "implicit", "STARTTLS": "starttls"}.get(socket_type)
        host = (server.findtext("hostname") or "").strip()
        port = (server.findtext("port") or "").strip()
        if protocol is None or tls is None or not host or not port.isdigit():
            continue
        user = (server.findtext("username") or "").strip()
        user = (user.replace("%EMAILADDRESS%", address).replace("%EMAILLOCALPART%", local)
                .replace("%EMAILDOMAIN%", domain)) or None
        found.append(Found(protocol, host.replace("%EMAILDOMAIN%", domain), int(port), tls,
                           source, user))
    found.sort(key=lambda f: f.tls != "implicit")  # stable: document order otherwise
    return found


# --- DNS ------------------------------------------------------------------------------------

def make_resolver():  # -> dns.resolver.Resolver
    import dns.resolver

    knob = os.environ.get("SYNCD_DNS_SERVER")
    if not knob:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = knob.rpartition(":")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    resolver.lifetime = TIMEOUT
    return resolver


def _query(resolver, name: str, kind: str) -> list:
    import dns.exception
    import dns.resolver

    try:
        return list(resolver.resolve(name, kind, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
        return []
    except dns.exception.DNSException:
        return []


def from_srv(result: Discovery, domain: str, resolver) -> None:
    for service, protocol, tls in SRV_SERVICES:
        if protocol in result.servers:
            continue  # a better one (implicit TLS, or autoconfig) is already there
        name = f"{service}.{domain}"
        records = [r for r in _query(resolver, name, "SRV")
                   if str(r.target).rstrip(".")]  # "." = no such service (RFC 6186 3.4)
        if not records:
            result.tried.append(f"SRV {name}: none")
            continue
        best = sorted(records, key=lambda r: (r.priority, -r.weight))[0]
        result.add(Found(protocol, str(best.target).rstrip("."), int(best.port), tls,
                         f"DNS SRV {name}"))


def from_mx(result: Discovery, domain: str, resolver) -> None:
    records = _query(resolver, domain, "MX")
    if not records:
        result.tried.append(f"MX {domain}: none")
        return
    host = str(sorted(records, key=lambda r: r.preference)[0].exchange).rstrip(".").lower()
    for suffix, preset in MX_PROVIDERS:
        if host.endswith(suffix):
            result.preset = ACCOUNT_PRESETS[preset]
            result.preset_source = f"DNS MX {domain} -> {host}"
            return
    result.tried.append(f"MX {domain}: {host}, not a provider syncd knows")
