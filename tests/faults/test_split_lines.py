"""Issue 15, defect 3: every line the server sends arrives in two TCP segments (the fault
proxy's ``split_lines``), as pymap and congested paths deliver them.

imapclient's idle_check() read the first half alone and failed with "unterminated line"
(imapclient issue 519): the IDLE connection was dropped and made again for every event. Now
the daemon gets a server APPEND down through IDLE on the one connection it opened, and a plain
`syncd sync` through the same proxy is exact.

The connection is plaintext (``tls: none``, Dovecot's port 143): under TLS the proxy would cut
records, not lines (tests/unit/test_imap_idle.py cuts TLS records at line level).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from tests.faults.faultlib import fault, in_sync, lf, make_account, secret_user
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.dovecot import Dovecot, make_message
from tests.support.syncd_env import Account, local_files, run_cli
from tests.support.tcp_proxy import TcpProxy

SPLIT_DELAY = 0.02  # between the two halves of every line


def plaintext_account(tmp_path: Path, dovecot: Dovecot, user, port: int,
                      extra: str = "") -> Account:
    account = make_account(tmp_path, dovecot, user, port=port, timeout="5s",
                           extra=f"    allow_insecure: true\n{extra}")
    text = account.config.read_text()
    account.config.write_text(re.sub(r"(?m)^    tls: implicit$", "    tls: none", text))
    return account


def count(folder: Path) -> int:
    return len(local_files(folder))


def test_daemon_idles_through_split_lines_without_reconnecting(dovecot: Dovecot,
                                                               tmp_path: Path) -> None:
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(i) for i in range(3)])
    with TcpProxy(dovecot.imap_port) as proxy:
        proxy.split_lines = SPLIT_DELAY
        account = plaintext_account(tmp_path, dovecot, user, proxy.port,
                                    "    poll_interval: 1h\n")
        inbox = account.folder_dir("INBOX")
        with DaemonProcess(account.config, log_path=tmp_path / "daemon.log") as daemon:
            try:
                wait_until(lambda: count(inbox) == 3, 30, message="the initial sync")
                # The worker's connection and the IDLE one; then IDLE is up.
                wait_until(lambda: proxy.accepted >= 2, 15, message="the IDLE connection")
                wait_until(lambda: "watching INBOX with IDLE" in daemon.log(), 10)
                time.sleep(1.0)
                connections = proxy.accepted
                for i in range(3):
                    dovecot.append(user, "INBOX", make_message(100 + i))
                    started = time.monotonic()
                    wait_until(lambda n=4 + i: count(inbox) == n, 15,
                               message=lambda: f"the APPEND through IDLE\n{daemon.log()}")
                    print(f"APPEND #{i} arrived after {time.monotonic() - started:.2f} s")
                    time.sleep(0.5)  # let the echo of the delivery pass
                fault("proxy: every server line split in two segments", proxy.splits)
                log = daemon.log()
                assert "IDLE connection lost" not in log, log
                assert "unterminated line" not in log, log
                assert proxy.accepted == connections, (
                    f"{proxy.accepted - connections} new connection(s) while idling:\n{log}")
                assert proxy.splits > 100
            finally:
                rc, _ = daemon.stop()
            assert rc == 0, daemon.log()
        in_sync(dovecot, user, account, "INBOX")


def test_sync_through_split_lines_is_exact(dovecot: Dovecot, tmp_path: Path) -> None:
    user = secret_user(dovecot)
    dovecot.seed(user, "INBOX", [make_message(i, size=3000) for i in range(4)])
    dovecot.seed(user, "Archive", [make_message(i, folder="Archive") for i in range(2)])
    with TcpProxy(dovecot.imap_port) as proxy:
        proxy.split_lines = 0.005
        account = plaintext_account(tmp_path, dovecot, user, proxy.port)
        rc, out, err = run_cli("--config", str(account.config), "sync")
        assert rc == 0, out + err
        in_sync(dovecot, user, account, "INBOX")
        in_sync(dovecot, user, account, "Archive")

        # Changes on both sides, then one more sync through the same proxy.
        uids = dovecot.uids(user, "INBOX")
        dovecot.add_flags(user, "INBOX", uids[0], ["\\Flagged"])
        dovecot.expunge(user, "INBOX", uids[1])
        dovecot.append(user, "INBOX", make_message(50))
        new_local = make_message(60, folder="Archive")
        (account.folder_dir("Archive") / "new" / "local.1:2,").write_bytes(lf(new_local))
        rc, out, err = run_cli("--config", str(account.config), "sync")
        assert rc == 0, out + err
        fault("proxy: every server line split in two segments (sync)", proxy.splits)
        assert proxy.splits > 100
        bodies = Counter(lf(m.body) for m in dovecot.messages(user, "Archive").values())
        assert bodies[lf(new_local)] == 1
        in_sync(dovecot, user, account, "INBOX")
        in_sync(dovecot, user, account, "Archive")
        # Idempotent.
        rc, out, err = run_cli("--config", str(account.config), "sync")
        assert rc == 0 and "+0 down +0 up -0 ~0 flags" in out, out + err
