"""`syncd check` against the real Dovecot (and, where Dovecot cannot misbehave on cue, tiny
scripted servers on loopback): success over every transport, and each failure named precisely
(account, cause, one line, exit 1), bad configs and usage (exit 2), --version / --help.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import Account, run_cli, run_subprocess, write_config

# Capabilities `check` must report as present on Dovecot 2.3 (its default capability list).
DOVECOT_CAPS = ("IDLE", "CONDSTORE", "QRESYNC", "UIDPLUS", "MOVE")


# --------------------------------------------------------------------------------------------
# helpers


def _password() -> str:
    # Letters and digits only: write_config passes it through `printf`.
    return "Pw" + secrets.token_hex(8)


@pytest.fixture
def pw_user(dovecot: Dovecot) -> User:
    """A fresh user with a password distinctive enough to grep for."""
    return dovecot.add_user(password=_password())


def _edit(account: Account, old: str, new: str) -> None:
    text = account.config.read_text()
    assert old in text, f"{old!r} not in the config"
    account.config.write_text(text.replace(old, new))


def _set_port(account: Account, port: int) -> None:
    text = account.config.read_text()
    account.config.write_text(re.sub(r"(?m)^(    port: )\d+$", rf"\g<1>{port}", text))


def _set_host(account: Account, host: str) -> None:
    _edit(account, "host: 127.0.0.1", f"host: {host}")


def check(account: Account, *args: str) -> tuple[int, str, str]:
    return run_cli("--config", str(account.config), "check", *args)


def _capabilities(out: str) -> dict[str, bool]:
    """{capability: present} from the `capabilities:` line of `check`."""
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("capabilities:"))
    body = line.split(":", 1)[1]
    result = {}
    for match in re.finditer(r"(\S+)( \(no\))?", body):
        result[match.group(1)] = match.group(2) is None
    return result


def _folder_map(out: str) -> dict[str, str]:
    """{server folder: what check says it maps to} from the folder list of `check`."""
    result = {}
    for line in out.splitlines():
        match = re.match(r"^\s{4}(\S.*?)\s+->\s+(.*)$", line)
        if match:
            result[match.group(1)] = match.group(2)
    return result


def assert_one_failure_line(out: str, err: str, account: str, cause: str) -> str:
    """Exactly one line reports the failure; it names the account and the cause. No
    traceback anywhere. Returns that line."""
    lines = [ln for ln in (out + err).splitlines() if "FAILED" in ln or "error" in ln.lower()]
    assert len(lines) == 1, f"expected one failure line, got {lines!r}\n{out}\n{err}"
    line = lines[0]
    assert line.startswith(f"{account}:"), line
    assert f"({cause})" in line, line
    assert "Traceback" not in out + err
    return line


def assert_no_secret(password: str, *texts: str) -> None:
    for text in texts:
        assert password not in text, "the password was printed"


# --------------------------------------------------------------------------------------------
# scripted servers


class FakeImapServer:
    """A scripted IMAP server on 127.0.0.1 that records every line it receives.

    ``capabilities``: what the greeting and CAPABILITY announce. ``starttls``: the reply to
    STARTTLS ("NO" or "BAD": it never actually negotiates TLS). ``preauth``: greet with PREAUTH.
    LOGIN is accepted (so that a client that sends it would happily carry on in plaintext)."""

    def __init__(self, capabilities: str = "IMAP4rev1 AUTH=PLAIN", *, starttls: str = "NO",
                 preauth: bool = False) -> None:
        self.capabilities = capabilities
        self.starttls_reply = starttls
        self.preauth = preauth
        self.received: list[bytes] = []
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        kind = "PREAUTH" if self.preauth else "OK"
        conn.sendall(f"* {kind} [CAPABILITY {self.capabilities}] fake server ready\r\n".encode())
        reader = conn.makefile("rb")
        for line in reader:
            self.received.append(line)
            parts = line.decode("ascii", "replace").split()
            if len(parts) < 2:
                conn.sendall(b"* BAD what?\r\n")
                continue
            tag, command = parts[0], parts[1].upper()
            if command == "CAPABILITY":
                conn.sendall(f"* CAPABILITY {self.capabilities}\r\n{tag} OK done\r\n".encode())
            elif command == "STARTTLS":
                conn.sendall(f"{tag} {self.starttls_reply} no TLS here\r\n".encode())
            elif command in ("LOGIN", "AUTHENTICATE"):
                conn.sendall(f"{tag} OK [CAPABILITY {self.capabilities} IDLE] logged in\r\n"
                             .encode())
            elif command == "LOGOUT":
                conn.sendall(f"* BYE bye\r\n{tag} OK bye\r\n".encode())
                return
            else:
                conn.sendall(f"{tag} OK fine\r\n".encode())

    def commands(self) -> list[str]:
        """The command names received, upper-cased ("CAPABILITY", "LOGIN", ...)."""
        names = []
        for line in self.received:
            parts = line.decode("ascii", "replace").split()
            if len(parts) >= 2:
                names.append(parts[1].upper())
        return names

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


class SilentServer:
    """Accepts connections on 127.0.0.1 and never says a word (nor reads)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def fake_imap() -> Iterator[Callable[..., FakeImapServer]]:
    servers: list[FakeImapServer] = []

    def make(*args: object, **kwargs: object) -> FakeImapServer:
        server = FakeImapServer(*args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, never listened: connect is refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------
# success


@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_imap_implicit_tls_reports_capabilities_and_folders(
        tmp_path: Path, dovecot: Dovecot, pw_user: User, layout: str) -> None:
    dovecot.seed(pw_user, "INBOX", [make_message(1)])
    dovecot.seed(pw_user, "Work/Projects", [make_message(2, folder="Work/Projects")])
    dovecot.seed(pw_user, "Archive", [make_message(3, folder="Archive")])
    account = write_config(tmp_path, dovecot, pw_user, layout=layout)

    rc, out, err = check(account)

    assert rc == 0, out + err
    assert f"{account.config}: OK" in out
    assert re.search(rf"^test: OK .*IMAP 127\.0\.0\.1:{dovecot.imaps_port} over TLS, "
                     rf"logged in as {pw_user.name}$", out, re.M), out
    caps = _capabilities(out)
    for cap in DOVECOT_CAPS:
        assert caps.get(cap) is True, f"{cap} not reported as offered: {caps}"
    # Dovecot 2.3 does not offer NOTIFY: it must be reported as missing, not present.
    assert caps.get("NOTIFY") is False, caps
    folders = _folder_map(out)
    root = account.maildir
    if layout == "verbatim":
        expected = {"INBOX": root / "INBOX", "Work/Projects": root / "Work" / "Projects",
                    "Archive": root / "Archive"}
    else:
        expected = {"INBOX": root, "Work/Projects": root / ".Work.Projects",
                    "Archive": root / ".Archive"}
    for name, path in expected.items():
        assert folders.get(name) == str(path), f"{name}: {folders}"
    assert f"layout {layout}" in out
    assert err == ""
    assert_no_secret(pw_user.password, out, err)
    # check only looks: nothing is created locally.
    assert not account.maildir.exists()


def test_imap_excluded_folder_is_marked(tmp_path: Path, dovecot: Dovecot, pw_user: User) -> None:
    dovecot.seed(pw_user, "Junk", [make_message(1, folder="Junk")])
    account = write_config(tmp_path, dovecot, pw_user,
                           extra="    folders:\n      exclude: [Junk]\n")
    rc, out, err = check(account)
    assert rc == 0, out + err
    folders = _folder_map(out)
    assert folders["Junk"] == "(excluded)"
    assert folders["INBOX"] == str(account.maildir / "INBOX")


def test_imap_starttls(tmp_path: Path, dovecot: Dovecot, pw_user: User) -> None:
    account = write_config(tmp_path, dovecot, pw_user, tls="starttls")
    mark = dovecot.log_mark()
    rc, out, err = check(account)
    assert rc == 0, out + err
    assert re.search(rf"^test: OK .*IMAP 127\.0\.0\.1:{dovecot.imap_port} over STARTTLS",
                     out, re.M), out
    caps = _capabilities(out)
    assert all(caps.get(cap) for cap in DOVECOT_CAPS), caps
    assert "INBOX" in _folder_map(out)
    # Dovecot says how the login was protected: over TLS, not merely "secured" (loopback).
    # Dovecot's log process writes asynchronously: wait for the line rather than race it.
    dovecot.wait_for_log(rf"imap-login: Info: Login: user=<{pw_user.name}>.*\bTLS\b",
                         since=mark)


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_pop3(tmp_path: Path, dovecot: Dovecot, pw_user: User, tls: str) -> None:
    messages = [make_message(i) for i in range(3)]
    dovecot.seed(pw_user, "INBOX", messages)
    account = write_config(tmp_path, dovecot, pw_user, protocol="pop3", tls=tls)
    mark = dovecot.log_mark()

    rc, out, err = check(account)

    assert rc == 0, out + err
    port = dovecot.pop3s_port if tls == "implicit" else dovecot.pop3_port
    label = "TLS" if tls == "implicit" else "STARTTLS"
    assert re.search(rf"^test: OK .*POP3 127\.0\.0\.1:{port} over {label}, logged in as "
                     rf"{pw_user.name}$", out, re.M), out
    # STAT: the count and the size (CRLF bytes) of what is in the maildrop.
    size = sum(len(m) for m in messages)
    assert re.search(rf"\b3 message\(s\), {size} bytes", out), out
    assert "UIDL supported" in out
    assert str(account.maildir) in out
    assert_no_secret(pw_user.password, out, err)
    dovecot.wait_for_log(rf"pop3-login: Info: Login: user=<{pw_user.name}>.*\bTLS\b",
                         since=mark)
    # check does not take mail: everything is still on the server.
    assert len(dovecot.messages(pw_user, "INBOX")) == 3


# --------------------------------------------------------------------------------------------
# failures: one line, the account, the cause, exit 1


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "implicit"), ("imap", "starttls"),
                                               ("pop3", "implicit"), ("pop3", "starttls")])
def test_wrong_password(tmp_path: Path, dovecot: Dovecot, pw_user: User, protocol: str,
                        tls: str) -> None:
    account = write_config(tmp_path, dovecot, pw_user, protocol=protocol, tls=tls)
    wrong = _password()
    _edit(account, f"printf {pw_user.password}", f"printf {wrong}")

    rc, out, err = check(account)

    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "auth")
    assert pw_user.name in line
    assert_no_secret(wrong, out, err)
    assert_no_secret(pw_user.password, out, err)
    # Also with --debug (protocol traces on): the wrong password is still nowhere.
    rc, out, err = run_cli("--debug", "--config", str(account.config), "check")
    assert rc == 1
    assert_no_secret(wrong, out, err)


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "implicit"), ("imap", "starttls"),
                                               ("pop3", "implicit"), ("pop3", "starttls")])
def test_unknown_ca(tmp_path: Path, dovecot: Dovecot, pw_user: User, protocol: str,
                    tls: str) -> None:
    account = write_config(tmp_path, dovecot, pw_user, protocol=protocol, tls=tls)
    _edit(account, str(dovecot.ca_file), str(dovecot.other_ca_file))
    mark = dovecot.log_mark()

    rc, out, err = check(account)

    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "certificate")
    assert "certificate" in line.lower()
    # The password was never sent (nor even asked for: the command is not run).
    assert "Login: user=" not in dovecot.log_text(mark)


def test_no_ca_file_means_system_store_only(tmp_path: Path, dovecot: Dovecot,
                                            pw_user: User) -> None:
    """Without tls_ca_file a private CA is not trusted: nothing falls back to 'accept'."""
    account = write_config(tmp_path, dovecot, pw_user)
    _edit(account, f"    tls_ca_file: {dovecot.ca_file}\n", "")
    rc, out, err = check(account)
    assert rc == 1, out + err
    assert_one_failure_line(out, err, "test", "certificate")


def test_bad_ca_file_is_a_certificate_error(tmp_path: Path, dovecot: Dovecot,
                                            pw_user: User) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("this is not a certificate\n")
    account = write_config(tmp_path, dovecot, pw_user)
    _edit(account, str(dovecot.ca_file), str(bogus))
    rc, out, err = check(account)
    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "certificate")
    assert "tls_ca_file" in line


def test_starttls_not_offered_by_dovecot(tmp_path: Path, dovecot_factory: Callable[..., Dovecot],
                                         ) -> None:
    """A Dovecot whose IMAP and POP3 services do not offer STARTTLS/STLS: syncd refuses
    before sending any credentials (Dovecot would accept a plaintext login here)."""
    dc = dovecot_factory(extra_conf="protocol imap {\n  ssl = no\n}\n"
                                    "protocol pop3 {\n  ssl = no\n}\n")
    user = dc.add_user(password=_password())
    for protocol, keyword in (("imap", "STARTTLS"), ("pop3", "STLS")):
        workdir = tmp_path / protocol
        workdir.mkdir()
        account = write_config(workdir, dc, user, protocol=protocol, tls="starttls")
        mark = dc.log_mark()

        rc, out, err = check(account)

        assert rc == 1, out + err
        line = assert_one_failure_line(out, err, "test", "tls")
        assert keyword in line and "refus" in line, line
        assert_no_secret(user.password, out, err)
        log = dc.log_text(mark)
        assert "Login:" not in log and "auth failed" not in log, log
        # The connection really was made (and abandoned without authenticating).
        dc.wait_for_log(r"no auth attempts", since=mark)


def test_starttls_missing_from_capabilities_sends_no_login(
        tmp_path: Path, dovecot: Dovecot, pw_user: User,
        fake_imap: Callable[..., FakeImapServer]) -> None:
    server = fake_imap("IMAP4rev1 AUTH=PLAIN LOGIN-REFERRALS")
    account = write_config(tmp_path, dovecot, pw_user, tls="starttls")
    _set_port(account, server.port)

    rc, out, err = check(account)

    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "tls")
    assert "STARTTLS" in line
    assert server.connections == 1
    assert "LOGIN" not in server.commands(), server.received
    assert "AUTHENTICATE" not in server.commands(), server.received
    assert not any(pw_user.password.encode() in line for line in server.received)


def test_starttls_rejected_by_server_sends_no_login(
        tmp_path: Path, dovecot: Dovecot, pw_user: User,
        fake_imap: Callable[..., FakeImapServer]) -> None:
    """STARTTLS announced, then refused (a downgrade attack looks like this): no fallback."""
    server = fake_imap("IMAP4rev1 STARTTLS AUTH=PLAIN", starttls="NO")
    account = write_config(tmp_path, dovecot, pw_user, tls="starttls")
    _set_port(account, server.port)

    rc, out, err = check(account)

    assert rc == 1, out + err
    assert_one_failure_line(out, err, "test", "tls")
    assert "STARTTLS" in server.commands()
    assert "LOGIN" not in server.commands(), server.received
    assert not any(pw_user.password.encode() in line for line in server.received)


def test_preauth_greeting_is_not_trusted_in_plaintext(
        tmp_path: Path, dovecot: Dovecot, pw_user: User,
        fake_imap: Callable[..., FakeImapServer]) -> None:
    """A PREAUTH greeting on a STARTTLS port means an unencrypted session: refuse it."""
    server = fake_imap("IMAP4rev1 STARTTLS", preauth=True)
    account = write_config(tmp_path, dovecot, pw_user, tls="starttls")
    _set_port(account, server.port)

    rc, out, err = check(account)

    assert rc == 1, out + err
    assert_one_failure_line(out, err, "test", "tls")
    assert not {"LOGIN", "LIST", "SELECT"} & set(server.commands()), server.received


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "implicit"), ("imap", "starttls"),
                                               ("pop3", "implicit")])
def test_port_closed(tmp_path: Path, dovecot: Dovecot, pw_user: User, protocol: str,
                     tls: str) -> None:
    account = write_config(tmp_path, dovecot, pw_user, protocol=protocol, tls=tls)
    port = _closed_port()
    _set_port(account, port)
    rc, out, err = check(account)
    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "refused")
    assert f"127.0.0.1:{port}" in line


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_dns_failure(tmp_path: Path, dovecot: Dovecot, pw_user: User, protocol: str) -> None:
    account = write_config(tmp_path, dovecot, pw_user, protocol=protocol)
    _set_host(account, "nonexistent.invalid")
    rc, out, err = check(account)
    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "dns")
    assert "nonexistent.invalid" in line


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "implicit"), ("imap", "starttls"),
                                               ("pop3", "implicit"), ("pop3", "starttls")])
def test_timeout(tmp_path: Path, dovecot: Dovecot, pw_user: User, silent_server: SilentServer,
                 protocol: str, tls: str) -> None:
    account = write_config(tmp_path, dovecot, pw_user, protocol=protocol, tls=tls,
                           extra="    timeout: 2s\n")
    _set_port(account, silent_server.port)

    started = time.monotonic()
    rc, out, err = check(account)
    elapsed = time.monotonic() - started

    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "timeout")
    assert f"127.0.0.1:{silent_server.port}" in line
    assert silent_server.accepted, "syncd never connected"
    # The configured timeout is used (the default is 60 s).
    assert 1.5 <= elapsed < 15, elapsed


def test_password_command_failure(tmp_path: Path, dovecot: Dovecot, pw_user: User) -> None:
    account = write_config(tmp_path, dovecot, pw_user)
    _edit(account, f'"printf {pw_user.password}"', '"sh -c \'echo leaked-output >&2; exit 3\'"')
    rc, out, err = check(account)
    assert rc == 1, out + err
    line = assert_one_failure_line(out, err, "test", "secret")
    assert "password_command" in line and "3" in line
    assert "leaked-output" not in out + err


def test_one_failing_account_does_not_stop_the_others(tmp_path: Path, dovecot: Dovecot,
                                                      pw_user: User) -> None:
    closed = _closed_port()
    second = f"""\
  broken:
    protocol: imap
    host: 127.0.0.1
    port: {closed}
    username: nobody
    password_command: "printf x"
    tls_ca_file: {dovecot.ca_file}
"""
    account = write_config(tmp_path, dovecot, pw_user, name="good", extra=second)
    rc, out, err = check(account)
    assert rc == 1, out + err
    assert re.search(r"^good: OK ", out, re.M), out
    assert_one_failure_line(out, err, "broken", "refused")
    assert "2 account(s)" in out

    # Naming only the good account checks only that one.
    rc, out, err = check(account, "good")
    assert rc == 0, out + err
    assert "broken" not in out


# --------------------------------------------------------------------------------------------
# bad config, bad usage: exit 2, nothing contacted


@pytest.mark.parametrize(("extra", "key", "line_no"), [
    ("    tsl: implicit\n", "accounts.test.tsl", 15),
    ("    timeout: soon\n", "accounts.test.timeout", 15),
])
def test_bad_config_names_key_and_line(tmp_path: Path, dovecot: Dovecot, pw_user: User,
                                       extra: str, key: str, line_no: int) -> None:
    account = write_config(tmp_path, dovecot, pw_user, extra=extra)
    lines = account.config.read_text().splitlines()
    assert lines[line_no - 1].strip() == extra.strip()  # the test's own premise
    mark = dovecot.log_mark()

    rc, out, err = check(account)

    assert rc == 2, out + err
    assert key in err, err
    assert f"{account.config}:{line_no}" in err, err
    assert "Traceback" not in out + err
    assert "OK" not in out
    assert "Login:" not in dovecot.log_text(mark)


def test_tls_none_without_allow_insecure(tmp_path: Path, dovecot: Dovecot,
                                         pw_user: User) -> None:
    account = write_config(tmp_path, dovecot, pw_user)
    _edit(account, "tls: implicit", "tls: none")
    rc, out, err = check(account)
    assert rc == 2, out + err
    assert "accounts.test.tls" in err and "allow_insecure" in err, err
    assert re.search(rf"{re.escape(str(account.config))}:\d+", err), err


def test_yaml_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("accounts:\n  test:\n    host: [unclosed\n")
    rc, out, err = run_cli("--config", str(config), "check")
    assert rc == 2, out + err
    assert str(config) in err
    assert "Traceback" not in err


def test_missing_config_file(tmp_path: Path) -> None:
    rc, out, err = run_cli("--config", str(tmp_path / "nope.yaml"), "check")
    assert rc == 2, out + err
    assert "nope.yaml" in err
    assert "Traceback" not in err


def test_unknown_account(tmp_path: Path, dovecot: Dovecot, pw_user: User) -> None:
    account = write_config(tmp_path, dovecot, pw_user)
    mark = dovecot.log_mark()
    rc, out, err = check(account, "test", "nosuch")
    assert rc == 2, out + err
    assert "nosuch" in err and "test" in err  # names it and what is configured
    assert "Login:" not in dovecot.log_text(mark)


# --------------------------------------------------------------------------------------------
# --version, --help


def test_version() -> None:
    from syncd import __version__

    result = run_subprocess("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"syncd {__version__}"


@pytest.mark.parametrize("command", [
    [], ["sync"], ["run"], ["status"], ["check"], ["password"], ["password", "set"],
])
def test_help_on_every_command(command: list[str]) -> None:
    result = run_subprocess(*command, "--help")
    assert result.returncode == 0, result.stderr
    usage = " ".join(["syncd", *command])
    assert result.stdout.startswith(f"usage: {usage}"), result.stdout
    assert result.stderr == ""


def test_no_command_is_a_usage_error() -> None:
    result = run_subprocess()
    assert result.returncode == 2
    assert "usage: syncd" in result.stdout + result.stderr


def test_unknown_option_is_a_usage_error() -> None:
    result = run_subprocess("check", "--frobnicate")
    assert result.returncode == 2
    assert "--frobnicate" in result.stderr
    assert "Traceback" not in result.stderr


def test_imap_check_sizes_a_first_sync_under_the_policy(tmp_path: Path, dovecot: Dovecot,
                                                        pw_user: User) -> None:
    now = time.time()
    for i in range(5):
        dovecot.append(pw_user, "INBOX", make_message(i, size=2000), date=now - i * 40 * 86400)
    dovecot.seed(pw_user, "Archive", [make_message(i, folder="Archive", size=1000 + 1000 * i)
                                      for i in range(3)])
    dovecot.seed(pw_user, "Outbox", [make_message(1, folder="Outbox")])
    account = write_config(tmp_path, dovecot, pw_user, extra=(
        "    max_age: 100d\n"
        "    folder_settings:\n"
        "      Archive: {max_messages: 2, max_size: 2500}\n"
        "      Outbox: {direction: push}\n"))
    before = {f: dovecot.messages(pw_user, f) for f in ("INBOX", "Archive", "Outbox")}
    rc, out, err = check(account)
    assert rc == 0, out + err
    lines = out.splitlines()

    def note(folder: str) -> str:
        i = next(n for n, line in enumerate(lines) if re.match(rf"^\s{{4}}{folder}\s+->", line))
        return lines[i + 1].strip()

    # INBOX: ages 0, 40, 80 days are inside 100d (120 and 160 are not)
    assert note("INBOX") == ("a first sync downloads 3 message(s) in the window, 6.0 KB, of 5 "
                             "on the server"), out
    # Archive overrides the window: the newest 2 (max_age still the account's: all recent),
    # of which the 3,000-byte one is over max_size: a placeholder, not counted in the bytes
    assert note("Archive") == ("a first sync downloads 1 message(s) in the window, 2.0 KB "
                               "and 1 placeholder(s) for messages over max_size, of 3 on the "
                               "server"), out
    assert note("Outbox").startswith("push: a first sync downloads nothing (1 on the server)")
    # check only looks (EXAMINE): nothing changed on the server, nothing created locally
    assert {f: dovecot.messages(pw_user, f) for f in before} == before
    assert not account.maildir.exists()
