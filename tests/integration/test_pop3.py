"""POP3 accounts against the real Dovecot (POP3 and POP3S): download-and-delete, leave on
server, delete_after, TLS modes and their errors, dropped connections, limits, streaming,
pipelining. Every test ends with an exact comparison: the Maildir holds exactly the expected
messages (server bytes with CRLF -> LF), each once."""

from __future__ import annotations

import os
import shutil
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from syncd.config.load import Settings, load_config
from syncd.outcome.results import AccountResult
from syncd.pop3.client import Pop3Session
from syncd.pop3.fetch import sync_pop3_account
from tests.support.dovecot import Dovecot, User, make_message
from tests.support.syncd_env import run_cli
from tests.support.tcp_proxy import TcpProxy

NAME = "isp"


# --------------------------------------------------------------------------------------------
# helpers


def write_pop3_config(tmp_path: Path, dovecot: Dovecot, user: User, *, tls: str = "implicit",
                      port: int | None = None, ca_file: Path | None = None,
                      password: str | None = None, **options: object) -> Path:
    """A config with one POP3 account; ``port`` overrides the server port (a proxy)."""
    if port is None:
        port = dovecot.pop3s_port if tls == "implicit" else dovecot.pop3_port
    extra = "".join(f"    {key}: {value}\n" for key, value in options.items())
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
general:
  maildir_root: {tmp_path}/Mail
  state_dir: {tmp_path}/state
accounts:
  {NAME}:
    protocol: pop3
    host: 127.0.0.1
    port: {port}
    tls: {tls}
    tls_ca_file: {ca_file or dovecot.ca_file}
    username: {user.name}
    password_command: "printf {password or user.password}"
    timeout: 20
{extra}""")
    return config


def sync_cli(config: Path, *args: str) -> tuple[int, str]:
    rc, out, err = run_cli("--config", str(config), "sync", *args)
    return rc, out + err


def sync_direct(config: Path, **kwargs: object) -> AccountResult:
    settings: Settings = load_config(config)
    return sync_pop3_account(settings, settings.accounts[NAME], **kwargs)  # type: ignore[arg-type]


def inbox(tmp_path: Path, layout: str = "verbatim") -> Path:
    root = tmp_path / "Mail" / NAME
    return root / "INBOX" if layout == "verbatim" else root


def local_bodies(tmp_path: Path, layout: str = "verbatim") -> Counter[bytes]:
    folder = inbox(tmp_path, layout)
    bodies: Counter[bytes] = Counter()
    for sub in ("new", "cur"):
        directory = folder / sub
        if directory.is_dir():
            bodies.update(p.read_bytes() for p in directory.iterdir())
    return bodies


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def expected(messages: list[bytes]) -> Counter[bytes]:
    return Counter(lf(m) for m in messages)


def server_bodies(dovecot: Dovecot, user: User) -> Counter[bytes]:
    return Counter(lf(m.body) for m in dovecot.messages(user, "INBOX").values())


# --------------------------------------------------------------------------------------------
# the basics


def test_download_and_delete_50(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(50)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user)

    rc, out = sync_cli(config)
    assert rc == 0, out
    assert f"{NAME}: +50 down" in out and "-50 deleted on the server" in out

    assert local_bodies(tmp_path) == expected(messages)
    assert dovecot.count(user, "INBOX") == 0
    # New mail lands in new/ (no flags), files 0600, directories 0700.
    folder = inbox(tmp_path)
    assert len(os.listdir(folder / "new")) == 50 and not os.listdir(folder / "cur")
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in (folder / "new").iterdir())
    assert (folder.stat().st_mode & 0o777) == 0o700

    rc, out = sync_cli(config)
    assert rc == 0 and "+0 down" in out and "-0 deleted" in out, out
    assert local_bodies(tmp_path) == expected(messages)


def test_leave_on_server_second_run_adds_nothing(dovecot: Dovecot, user: User,
                                                 tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(20)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, leave_on_server="true")

    assert sync_direct(config).folders[0].downloaded == 20
    again = sync_direct(config)
    assert again.ok and again.folders[0].downloaded == 0
    assert again.folders[0].deleted_remote == 0
    assert local_bodies(tmp_path) == expected(messages)
    assert server_bodies(dovecot, user) == expected(messages)

    # New mail arrives: only it is downloaded.
    late = make_message(100)
    dovecot.deliver(user, "INBOX", late)
    third = sync_direct(config)
    assert third.folders[0].downloaded == 1
    assert local_bodies(tmp_path) == expected([*messages, late])


def test_delete_after_with_a_faked_clock(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(10)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, leave_on_server="true",
                               delete_after="14d")
    t0 = 1_800_000_000.0
    day = 86400.0
    assert sync_direct(config, clock=lambda: t0).folders[0].downloaded == 10
    later = make_message(50)
    dovecot.deliver(user, "INBOX", later)

    r = sync_direct(config, clock=lambda: t0 + 10 * day)
    assert r.folders[0].downloaded == 1 and r.folders[0].deleted_remote == 0
    assert dovecot.count(user, "INBOX") == 11

    # 15 days after the first download: those ten go; the late one (downloaded on day 10)
    # stays until day 24.
    r = sync_direct(config, clock=lambda: t0 + 15 * day)
    assert r.ok and r.folders[0].downloaded == 0 and r.folders[0].deleted_remote == 10
    assert server_bodies(dovecot, user) == expected([later])

    r = sync_direct(config, clock=lambda: t0 + 25 * day)
    assert r.folders[0].deleted_remote == 1
    assert dovecot.count(user, "INBOX") == 0
    assert local_bodies(tmp_path) == expected([*messages, later])


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("layout", ["verbatim", "maildir++"])
def test_pop3s_and_stls_with_the_fixture_ca(dovecot: Dovecot, user: User, tmp_path: Path,
                                            tls: str, layout: str) -> None:
    messages = [make_message(i) for i in range(5)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, tls=tls, layout=layout)
    mark = dovecot.log_mark()
    rc, out = sync_cli(config)
    assert rc == 0, out
    assert local_bodies(tmp_path, layout) == expected(messages)
    assert dovecot.count(user, "INBOX") == 0
    # Dovecot logs the login with TLS in either mode: no plaintext session.
    log_text = dovecot.log_text(mark)
    logins = [line for line in log_text.splitlines() if "pop3-login: Info: Login:" in line]
    assert logins and all(", TLS," in line for line in logins), logins


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_wrong_ca_is_a_clear_error(dovecot: Dovecot, user: User, tmp_path: Path,
                                   tls: str) -> None:
    dovecot.seed(user, "INBOX", [make_message(1)])
    config = write_pop3_config(tmp_path, dovecot, user, tls=tls, ca_file=dovecot.other_ca_file)
    rc, out = sync_cli(config)
    assert rc == 1
    port = dovecot.pop3s_port if tls == "implicit" else dovecot.pop3_port
    assert f"{NAME}: " in out
    assert f"TLS certificate of 127.0.0.1:{port} not trusted" in out, out
    assert "Traceback" not in out
    assert dovecot.count(user, "INBOX") == 1
    assert not local_bodies(tmp_path)


def test_wrong_password_is_a_clear_error(dovecot: Dovecot, user: User,
                                         tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [make_message(1)])
    config = write_pop3_config(tmp_path, dovecot, user, password="not-the-password")
    rc, out = sync_cli(config)
    assert rc == 1
    assert (f"{NAME}: " in out and f"login as '{user.name}' on 127.0.0.1 failed: wrong "
            "username or password" in out), out
    assert "not-the-password" not in out
    rc, out, err = run_cli("--config", str(config), "check")
    assert rc == 1 and f"{NAME}: FAILED (auth)" in out, out + err


def test_check_reports_pop3_capabilities(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    dovecot.seed(user, "INBOX", [make_message(1), make_message(2)])
    config = write_pop3_config(tmp_path, dovecot, user)
    rc, out, err = run_cli("--config", str(config), "check")
    assert rc == 0, out + err
    assert "2 message(s)" in out and "UIDL supported" in out and "PIPELINING yes" in out


def test_dry_run_changes_nothing(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(3)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user)
    rc, out, _err = run_cli("--config", str(config), "sync", "--dry-run")
    assert rc == 0, out
    assert out.count("download message") == 3 and "delete it from the server" in out
    assert not local_bodies(tmp_path)
    assert dovecot.count(user, "INBOX") == 3


# --------------------------------------------------------------------------------------------
# dropped connections


@pytest.mark.parametrize("cut_after", [2_000, 30_000, 250_000])
def test_connection_dropped_mid_retr_then_rerun(dovecot: Dovecot, user: User, tmp_path: Path,
                                                cut_after: int) -> None:
    # Messages of ~20 kB: the cut lands inside some RETR reply, after 0, 1 or ~12 messages.
    messages = [make_message(i, size=20_000) for i in range(30)]
    dovecot.seed(user, "INBOX", messages)
    # Through the proxy in plaintext: the byte count then lands exactly in the POP3 stream.
    with TcpProxy(dovecot.pop3_port) as proxy:
        proxy.cut_after = cut_after
        config = write_pop3_config(tmp_path, dovecot, user, tls="none", port=proxy.port,
                                   allow_insecure="true")
        first = sync_direct(config)
    assert first.error is not None and first.error.startswith(
        ("connection", "127.0.0.1 closed the connection")), first.error
    partial = local_bodies(tmp_path)
    assert all(n == 1 for n in partial.values())
    assert not (partial - expected(messages))
    # The server restored everything: no QUIT was reached.
    assert dovecot.count(user, "INBOX") == 30

    direct = write_pop3_config(tmp_path, dovecot, user)
    second = sync_direct(direct)
    assert second.ok, second.summary()
    assert second.folders[0].downloaded == 30 - sum(partial.values())
    assert local_bodies(tmp_path) == expected(messages)
    assert dovecot.count(user, "INBOX") == 0


# --------------------------------------------------------------------------------------------
# limits


def test_max_message_size_skips_and_reports(dovecot: Dovecot, user: User,
                                            tmp_path: Path) -> None:
    small = [make_message(i) for i in range(5)]
    big = [make_message(100 + i, size=300_000) for i in range(2)]
    dovecot.seed(user, "INBOX", [*small[:2], big[0], *small[2:], big[1]])
    config = write_pop3_config(tmp_path, dovecot, user, max_message_size="100k")
    rc, out = sync_cli(config)
    assert rc == 0, out
    assert "+5 down" in out and "2 skipped (over max_message_size)" in out, out
    assert local_bodies(tmp_path) == expected(small)
    assert server_bodies(dovecot, user) == expected(big)
    # They stay skipped (and reported) on every run, and nothing else changes.
    rc, out = sync_cli(config)
    assert rc == 0 and "+0 down" in out and "2 skipped" in out, out


def test_max_messages_per_poll(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(25)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, max_messages_per_poll=10)
    counts = [sync_direct(config).folders[0].downloaded for _ in range(4)]
    assert counts == [10, 10, 5, 0]
    assert local_bodies(tmp_path) == expected(messages)
    assert dovecot.count(user, "INBOX") == 0


def test_a_20mb_message_is_streamed(dovecot: Dovecot, user: User, tmp_path: Path) -> None:
    huge = make_message(1, size=20 * 1000 * 1000)
    dovecot.seed(user, "INBOX", [huge, make_message(2)])
    config = write_pop3_config(tmp_path, dovecot, user)
    tracemalloc.start()
    try:
        result = sync_direct(config)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.summary()
    print(f"\n20 MB message: peak traced Python memory {peak / 1e6:.1f} MB")
    # Streaming: nowhere near the message's size (poplib.retr would hold it all, twice).
    assert peak < 8_000_000
    assert local_bodies(tmp_path) == expected([huge, make_message(2)])


def test_state_rebuilt_after_corruption_pairs_by_content(dovecot: Dovecot, user: User,
                                                         tmp_path: Path) -> None:
    messages = [make_message(i) for i in range(8)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, leave_on_server="true")
    assert sync_direct(config).folders[0].downloaded == 8
    state = tmp_path / "state" / f"{NAME}.sqlite3"
    for side in state.parent.glob(f"{NAME}.sqlite3-*"):
        side.unlink()
    state.write_bytes(b"this is not a database" * 100)
    dovecot.deliver(user, "INBOX", make_message(99))

    result = sync_direct(config)
    assert result.ok, result.summary()
    assert result.folders[0].downloaded == 1 and result.folders[0].paired == 8
    assert local_bodies(tmp_path) == expected([*messages, make_message(99)])
    assert sync_direct(config).folders[0].downloaded == 0


# --------------------------------------------------------------------------------------------
# pipelining


def _no_pipelining(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pop3Session, "pipelining", property(lambda self: False))


@pytest.mark.slow
def test_pipelining_pays_off_over_a_slow_link(dovecot: Dovecot, user: User, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """200 messages over a link with 10 ms round trips (5 ms each way), with PIPELINING and
    without it (the same code with a window of one command). Same result; much faster."""
    n = 200
    timings: dict[str, float] = {}
    for mode in ("pipelined", "one-at-a-time"):
        other = dovecot.add_user()
        messages = [make_message(i, subject=f"{mode} {i}") for i in range(n)]
        dovecot.seed(other, "INBOX", messages)
        workdir = tmp_path / mode
        workdir.mkdir()
        if mode == "one-at-a-time":
            _no_pipelining(monkeypatch)
        with TcpProxy(dovecot.pop3s_port, delay=0.005) as proxy:
            config = write_pop3_config(workdir, dovecot, other, port=proxy.port)
            started = time.monotonic()
            result = sync_direct(config)
            timings[mode] = time.monotonic() - started
        assert result.ok, result.summary()
        assert local_bodies(workdir) == expected(messages)
        assert dovecot.count(other, "INBOX") == 0
    print(f"\n{n} messages, 10 ms RTT: " + ", ".join(f"{k} {v:.2f} s"
                                                    for k, v in timings.items()))
    # One round trip per RETR and per DELE without pipelining: at least 2 * n * 10 ms.
    assert timings["one-at-a-time"] > 2 * n * 0.010
    assert timings["pipelined"] < timings["one-at-a-time"] / 2


def test_missing_inbox_is_downloaded_again(dovecot: Dovecot, user: User,
                                           tmp_path: Path) -> None:
    """leave_on_server: a wiped maildir is not "the user deleted all that mail"."""
    messages = [make_message(i) for i in range(6)]
    dovecot.seed(user, "INBOX", messages)
    config = write_pop3_config(tmp_path, dovecot, user, leave_on_server="true")
    assert sync_direct(config).folders[0].downloaded == 6
    # One message deleted locally by the user stays deleted (POP3 has no way back)...
    victim = next((inbox(tmp_path) / "new").iterdir())
    victim.unlink()
    assert sync_direct(config).folders[0].downloaded == 0
    # ...but the whole INBOX gone is a lost disk, not six deletions.
    shutil.rmtree(inbox(tmp_path))
    result = sync_direct(config)
    assert result.ok and result.folders[0].downloaded == 6, result.summary()
    assert local_bodies(tmp_path) == expected(messages)
    assert sync_direct(config).folders[0].downloaded == 0
