"""The outbox against msmtp (issue 19): the same N messages, queued, delivered to one local
SMTP sink (aiosmtpd with STARTTLS, AUTH PLAIN and PIPELINING: tests/support/smtp_server.py).

- syncd: N messages queued with `syncd send` (not timed), then one `syncd outbox flush`
  (timed): one connection and one login for the whole queue, MAIL FROM + RCPT TO pipelined,
  and the queue's exactly-once records fsynced around each DATA.
- msmtp: `msmtp -t` once per message (timed, all N in a row): what a msmtpq-style queue
  runner does, a process, a connection, a TLS handshake and a login per message (msmtp
  pipelines within one message where offered).

Both verify the sink's certificate against the fixture CA and log in; the sink counts the
logins and each Message-ID it received, so a lost or doubled message is a failed row.

bench/run.py runs this as its ``outbox`` part. Only this part, as root, from the repository
root (results in bench/results/<date>-outbox.md and .json):

    .venv/bin/python -m bench.outbox_report [--messages 1000] [--networks loopback,20ms]
                                            [--repeats 1] [--notes FILE]

(bench/outbox_report.py: it drives bench.run, which imports this module.)
"""

from __future__ import annotations

import io
import logging
import os
import resource
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from bench import measure
from bench.tools import Endpoint, Syncd
from tests.support.dovecot import Dovecot, User
from tests.support.smtp_server import SmtpServer
from tests.support.syncd_env import write_config

SENDER = "me@example.org"
RECIPIENT = "you@example.net"
TOOLS = ("syncd", "msmtp")


def start_sink(dc: Dovecot) -> SmtpServer:
    """The SMTP sink both tools send to, for the whole run (the latency proxy needs its port
    before the first network)."""
    dc.ensure_certs()
    # aiosmtpd logs a warning at every login about an attribute it sets itself (a log line,
    # not a Python warning): 1,000 lines of noise.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    return SmtpServer(dc.cert_file, dc.key_file, tls="starttls", pipelining=True).start()


def message(n: int) -> bytes:
    """A plain 2 KB text message with a Message-ID the sink's count can be checked by."""
    body = "".join(f"Line {i} of message {n}: the outbox benchmark, nothing to see.\n"
                   for i in range(30))
    return (f"From: Me <{SENDER}>\nTo: You <{RECIPIENT}>\nSubject: outbox bench {n}\n"
            f"Date: Mon, 07 Dec 2026 12:00:00 +0000\nMessage-ID: {message_id(n)}\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n{body}"
            ).encode()


def message_id(n: int) -> str:
    return f"<outbox-bench-{n}@example.org>"


def syncd_config(root: Path, endpoint: Endpoint, user: User, smtp_port: int,
                 sink: SmtpServer) -> Path:
    """An IMAP account on the bench Dovecot (unused by the flush: save_sent is never) with
    the sink as its SMTP server."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shim = SimpleNamespace(imaps_port=endpoint.imaps_port, imap_port=endpoint.imaps_port,
                           pop3s_port=endpoint.pop3s_port, pop3_port=endpoint.pop3s_port,
                           ca_file=endpoint.ca_file)
    extra = (f"    from: [{SENDER}]\n"
             f"    smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: starttls, "
             f"username: {sink.user}, password_command: \"printf {sink.password}\"}}\n"
             "    save_sent: never\n")
    return write_config(root, shim, user, name="bench",  # type: ignore[arg-type]
                        extra=extra).config


def queue(config: Path, count: int) -> None:
    """`syncd send -oi -t` for each message, in this process (the queue's own code path,
    without N interpreter start-ups: queueing is not what is timed)."""
    from syncd.config.cache import load_settings
    from syncd.smtp.sendmail import send_command

    settings = load_settings(config)
    for n in range(count):
        rc = send_command(settings, ["-oi", "-t"], io.BytesIO(message(n)))
        if rc != 0:
            raise RuntimeError(f"syncd send exited {rc} for message {n}")


def msmtp_config(root: Path, ca_file: Path, smtp_port: int, sink: SmtpServer) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "msmtprc"
    path.write_text(f"""\
defaults
auth on
tls on
tls_starttls on
tls_trust_file {ca_file}

account bench
host 127.0.0.1
port {smtp_port}
from {SENDER}
user {sink.user}
password {sink.password}

account default : bench
""")
    path.chmod(0o600)  # msmtp refuses a password in a file others can read
    return path


def run_syncd(config: Path, count: int, logfile: Path, timeout: float) -> measure.Measurement:
    queue(config, count)
    return measure.run([str(Syncd.executable), "--config", str(config), "outbox", "flush"],
                       env=_env(config.parent), log=logfile, timeout=timeout)


def run_msmtp(config: Path, count: int, logfile: Path, timeout: float) -> measure.Measurement:
    """msmtp once per message; wall and CPU (rusage of the children) over all of them."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    failed = 0
    with open(logfile, "ab") as log:
        for n in range(count):
            done = subprocess.run(["msmtp", "-C", str(config), "-t"], input=message(n),
                                  stdout=log, stderr=log, env=_env(config.parent),
                                  timeout=timeout)
            failed = failed or done.returncode
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return measure.Measurement(wall=wall, cpu=cpu, peak_rss_kb=after.ru_maxrss,
                               returncode=failed)


def _env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8"}


def delivered(sink: SmtpServer, since: int, count: int) -> str:
    """'ok' when the sink got each message exactly once since index ``since``."""
    got = Counter()
    for received in sink.messages()[since:]:
        for line in received.data.split(b"\n"):
            if line.lower().startswith(b"message-id:"):
                got[line.split(b":", 1)[1].strip().decode()] += 1
                break
    want = {message_id(n) for n in range(count)}
    missing = len(want - set(got))
    doubled = sum(1 for c in got.values() if c > 1)
    if not missing and not doubled and set(got) == want:
        return "ok"
    return f"FAIL: {missing} missing, {doubled} more than once, {len(set(got) - want)} stray"


def counted(sink: SmtpServer) -> tuple[int, int]:
    """(messages received, logins) so far."""
    return len(sink.messages()), sink.logins


def remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.sync()  # the queue's fsyncs should not pay for what the set-up wrote
