"""`syncd init ADDRESS` discovery against a local HTTPS autoconfig server (certificate from the
test CA, on 127.0.0.1) and a local DNS server on loopback, through the contract's test knobs
SYNCD_AUTOCONFIG_URLS and SYNCD_DNS_SERVER."""

from __future__ import annotations

import builtins
import http.server
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import dns.message
import dns.rcode
import dns.rrset
import pytest

from syncd.config.discover import parse_autoconfig
from syncd.config.load import parse_config
from tests.support.dovecot import Dovecot
from tests.support.syncd_env import run_cli

AUTOCONFIG = b"""<?xml version="1.0"?>
<clientConfig version="1.1">
  <emailProvider id="example.test">
    <domain>example.test</domain>
    <incomingServer type="imap">
      <hostname>imap.example.test</hostname><port>143</port>
      <socketType>STARTTLS</socketType><username>%EMAILADDRESS%</username>
    </incomingServer>
    <incomingServer type="imap">
      <hostname>imaps.example.test</hostname><port>993</port>
      <socketType>SSL</socketType><username>%EMAILLOCALPART%</username>
    </incomingServer>
    <incomingServer type="pop3">
      <hostname>pop.example.test</hostname><port>110</port>
      <socketType>plain</socketType>
    </incomingServer>
    <outgoingServer type="smtp">
      <hostname>smtp.example.test</hostname><port>465</port><socketType>SSL</socketType>
    </outgoingServer>
  </emailProvider>
</clientConfig>
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = self.pages.get(self.path.split("?")[0])
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https(dovecot: Dovecot) -> Iterator[type[_Handler]]:
    handler = type("Handler", (_Handler,), {"pages": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(dovecot.cert_file, dovecot.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.port = server.server_address[1]  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


class DnsServer:
    """A UDP DNS responder on loopback answering from a table (dnspython builds replies)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            self.asked.append(f"{kind} {name}")
            answers = self.records.get((name, kind))
            if answers:
                reply.answer.append(dns.rrset.from_text(question.name, 300, "IN", kind,
                                                        *answers))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[DnsServer]:
    server = DnsServer()
    monkeypatch.setenv("SYNCD_DNS_SERVER", f"127.0.0.1:{server.port}")
    yield server
    server.close()


@pytest.fixture
def knobs(monkeypatch: pytest.MonkeyPatch, dovecot: Dovecot, https: type[_Handler]) -> None:
    monkeypatch.setenv("SYNCD_AUTOCONFIG_URLS",
                       f"https://127.0.0.1:{https.port}/{{domain}}/config-v1.1.xml"  # type: ignore[attr-defined]
                       f"?emailaddress={{email}} "
                       f"https://127.0.0.1:{https.port}/wk/{{domain}}/config-v1.1.xml")  # type: ignore[attr-defined]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(dovecot.ca_file))  # the test CA, checked


def init(tmp_path: Path, address: str, *extra: str) -> tuple[int, str, str, Path]:
    config = tmp_path / "config.yaml"
    code, out, err = run_cli("--config", str(config), "init", address, "--non-interactive",
                             "--no-check", *extra)
    return code, out, err, config


def test_autoconfig_prefers_implicit_tls(tmp_path: Path, knobs: None, dns_server: DnsServer,
                                         https: type[_Handler]) -> None:
    https.pages["/example.test/config-v1.1.xml"] = AUTOCONFIG
    code, out, err, config = init(tmp_path, "jo@example.test")
    assert code == 0, out + err
    account = parse_config(config.read_text(), str(config)).accounts["example"]
    assert (account.host, account.port, account.tls) == ("imaps.example.test", 993, "implicit")
    assert account.username == "jo"  # %EMAILLOCALPART% of the SSL server's entry
    assert account.smtp_host == "smtp.example.test" and account.smtp_port == 465
    assert "from autoconfig https://127.0.0.1:" in out
    assert https.seen[0] == "/example.test/config-v1.1.xml?emailaddress=jo@example.test"
    assert dns_server.asked == []  # autoconfig answered everything: no DNS needed


def test_srv_records_in_priority_order(tmp_path: Path, knobs: None, dns_server: DnsServer,
                                       https: type[_Handler]) -> None:
    dns_server.records[("_imaps._tcp.srv.test", "SRV")] = [
        "20 0 993 backup.srv.test.", "10 5 993 mail.srv.test.", "10 50 9993 main.srv.test."]
    dns_server.records[("_imap._tcp.srv.test", "SRV")] = ["0 0 143 plain.srv.test."]
    dns_server.records[("_submissions._tcp.srv.test", "SRV")] = ["0 0 0 ."]  # not offered
    dns_server.records[("_submission._tcp.srv.test", "SRV")] = ["0 0 587 smtp.srv.test."]
    code, out, err, config = init(tmp_path, "me@srv.test")
    assert code == 0, out + err
    account = parse_config(config.read_text(), str(config)).accounts["srv"]
    # priority 10 beats 20; within it the heavier weight; _imaps beats _imap (RFC 8314)
    assert (account.host, account.port, account.tls) == ("main.srv.test", 9993, "implicit")
    assert (account.smtp_host, account.smtp_port) == ("smtp.srv.test", 587)
    assert "from DNS SRV _imaps._tcp.srv.test" in out
    assert "autoconfig https://127.0.0.1" in out and "no answer" in out  # tried first
    assert len(https.seen) == 2


def test_mx_of_a_known_provider(tmp_path: Path, knobs: None, dns_server: DnsServer) -> None:
    dns_server.records[("corp.test", "MX")] = ["5 alt1.aspmx.l.google.com.",
                                               "1 aspmx.l.google.com."]
    code, out, err, config = init(tmp_path, "me@corp.test", "--auth", "password")
    assert code == 0, out + err
    account = parse_config(config.read_text(), str(config)).accounts["corp"]
    assert account.host == "imap.gmail.com"
    assert "preset gmail" in out and "DNS MX corp.test -> aspmx.l.google.com" in out


def test_no_discover_stays_off_the_network(tmp_path: Path, knobs: None, dns_server: DnsServer,
                                           https: type[_Handler]) -> None:
    https.pages["/example.test/config-v1.1.xml"] = AUTOCONFIG
    code, out, err, config = init(tmp_path, "jo@example.test", "--no-discover")
    assert code == 0, out + err
    assert https.seen == [] and dns_server.asked == []
    account = parse_config(config.read_text(), str(config)).accounts["example"]
    assert account.host == "imap.example.test"  # the imap.DOMAIN guess


def test_autoconfig_certificate_is_checked(tmp_path: Path, dns_server: DnsServer,
                                           https: type[_Handler],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the test CA trusted, the autoconfig answer is not taken."""
    https.pages["/example.test/config-v1.1.xml"] = AUTOCONFIG
    monkeypatch.setenv("SYNCD_AUTOCONFIG_URLS",
                       f"https://127.0.0.1:{https.port}/{{domain}}/config-v1.1.xml")  # type: ignore[attr-defined]
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    code, out, err, config = init(tmp_path, "jo@example.test")
    assert code == 0, out + err
    account = parse_config(config.read_text(), str(config)).accounts["example"]
    assert account.host != "imaps.example.test"


def test_autoconfig_with_a_dtd_is_refused() -> None:
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + AUTOCONFIG[22:]
    assert parse_autoconfig(evil, "a@b.test", "x") == []
    assert [f.host for f in parse_autoconfig(AUTOCONFIG, "a@b.test", "x")] == [
        "imaps.example.test", "smtp.example.test", "imap.example.test"]


def test_an_address_typed_at_the_prompt_is_discovered_too(
        tmp_path: Path, knobs: None, dns_server: DnsServer, https: type[_Handler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`syncd init` without ADDRESS asks for it; the servers are then found as for
    `syncd init ADDRESS`, and the questions they answer are not asked (issue 20)."""
    https.pages["/example.test/config-v1.1.xml"] = AUTOCONFIG
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["jo@example.test", "", "", ""])  # address, then every default
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(builtins, "input", fake_input)
    config = tmp_path / "config.yaml"
    code, out, err = run_cli("--config", str(config), "init", "--no-check",
                             "--password-command", "printf secret")
    assert code == 0, out + err
    assert prompts == ["Email address: ",
                       "Account name (for syncd commands and the maildir) [example]: ",
                       "Protocol (imap or pop3) [imap]: ", "Username [jo]: "], prompts
    assert "servers for jo@example.test:" in out and "from autoconfig https://127.0.0.1:" in out
    account = parse_config(config.read_text(), str(config)).accounts["example"]
    assert (account.host, account.port, account.tls) == ("imaps.example.test", 993, "implicit")
    assert account.username == "jo"
    assert account.smtp_host == "smtp.example.test" and account.smtp_port == 465
    assert https.seen[0] == "/example.test/config-v1.1.xml?emailaddress=jo@example.test"
