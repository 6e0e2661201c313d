"""TCP and TLS for the IMAP and POP3 adapters: the trust context, one-line descriptions of
connection failures, and connections opened ahead (`dial_ahead`) while the rest of syncd is
still starting.

Opening ahead is for `syncd sync`: importing the engine and imapclient costs the main thread
about 0.1 s of CPU, while the TCP connect, the TLS handshake and the server's greeting are
mostly waiting on the network (two to four round trips, 60-80 ms at 20 ms RTT); the dialing
thread waits in C with the GIL released, so the two overlap instead of adding up.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.errors import AccountError

_CONTEXTS: dict[tuple[str | None, int], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def ssl_context_for(ca_file: Path | None) -> ssl.SSLContext:
    """The system trust store, plus the account's own CA where given; hostname checked.

    Contexts are shared (keyed by the CA file and its mtime): loading the system store costs
    about 0.2 s, which every reconnect and every IDLE connection would otherwise pay."""
    key = (str(ca_file) if ca_file is not None else None,
           os.stat(ca_file).st_mtime_ns if ca_file is not None else 0)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            capath = _hashed_system_capath()
            # A hashed certificate directory is read lazily, one certificate per lookup;
            # the bundle file create_default_context() loads costs ~0.1 s per process.
            context = ssl.create_default_context(capath=capath) if capath \
                else ssl.create_default_context()
            if ca_file is not None:
                context.load_verify_locations(cafile=str(ca_file))
            _CONTEXTS[key] = context
        return context


def tls_context(account: str, ca_file: Path | None) -> ssl.SSLContext:
    """ssl_context_for(ca_file); a CA file that cannot be loaded is the account's error."""
    from syncd.errors import AccountError

    try:
        return ssl_context_for(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise AccountError(account, f"cannot load tls_ca_file {ca_file}: {exc}",
                           cause="certificate") from None


def _hashed_system_capath() -> str | None:
    """The system's CA directory if it is an OpenSSL hashed directory (Debian's
    /etc/ssl/certs is); None where only a bundle file exists (Fedora) or SSL_CERT_FILE asks for
    a specific bundle: then the default loading is the right one."""
    if os.environ.get("SSL_CERT_FILE"):
        return None
    capath = ssl.get_default_verify_paths().capath
    if not capath or not os.path.isdir(capath):
        return None
    try:
        names = os.listdir(capath)
    except OSError:
        return None
    return capath if any(re.fullmatch(r"[0-9a-f]{8}\.\d+", n) for n in names) else None


def connect_failed(account: AccountSettings, exc: BaseException) -> AccountError:
    """The AccountError for a failure to connect, secure or log in (see below)."""
    from syncd.errors import AccountError

    cause, message = describe_connect_error(exc, account.host, account.port)
    return AccountError(account.name, message, cause=cause)


def describe_connect_error(exc: BaseException, host: str, port: int) -> tuple[str, str]:
    """(cause, one-line message) for a failure to connect, secure or log in."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve host {host!r} ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return "certificate", f"TLS certificate of {where} not trusted: {reason}"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"connection to {where} refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout", f"timed out talking to {where}"
    if isinstance(exc, ConnectionError):
        return "network", f"connection to {where} lost: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return "network", f"cannot connect to {where}: {exc.strerror or exc}"
    return "protocol", f"{where}: {exc}"


class _Dial:
    """One connection being opened in a thread: the socket, or the exception it raised."""

    def __init__(self, account: AccountSettings) -> None:
        self.key = _dial_key(account)
        self.sock: socket.socket | None = None
        self.error: BaseException | None = None
        self.abandoned = False  # close_dialed() gave up on it: close the socket, keep nothing
        # Set once the TCP connection is up (reachable: what else a login needs may start)
        # or failed; ``reached`` says which.
        self.tcp_done = threading.Event()
        self.reached = False
        # The trust context is made here, by the caller: a few ms of CPU that the thread,
        # competing for the GIL with a main thread busy importing, took 5-7 ms to get (a
        # no-change `sync`'s timeline). A CA file that cannot be loaded is this dial's error,
        # raised by take_dialed like any other.
        self.context: ssl.SSLContext | None = None
        if account.tls == "implicit":
            try:
                self.context = ssl_context_for(account.tls_ca_file)
            except BaseException as exc:
                self.error = exc
        self.thread = threading.Thread(target=self._open, args=(account,), daemon=True,
                                       name=f"dial-{account.name}")

    def _open(self, account: AccountSettings) -> None:
        if self.error is not None:
            self.tcp_done.set()
            return
        # An ASCII name as bytes: the socket and ssl modules then take it as it is, where a
        # str is first put through the "idna" codec (whose import costs ~8 ms); for ASCII
        # that codec changes nothing.
        host: str | bytes = account.host.encode("ascii") if account.host.isascii() \
            else account.host
        try:
            try:
                sock = socket.create_connection((host, account.port), timeout=account.timeout)
                self.reached = True
            finally:
                self.tcp_done.set()
            if self.context is not None:
                try:
                    # The same context and server name as a connection opened on the spot.
                    sock = self.context.wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
        except BaseException as exc:  # handed to the connecting code, which describes it
            self.error = exc
            return
        with _DIALS_LOCK:
            if not self.abandoned:
                self.sock = sock
                return
        sock.close()


_DIALS: dict[tuple[str, str, int, str], _Dial] = {}
_DIALS_LOCK = threading.Lock()


def _dial_key(account: AccountSettings) -> tuple[str, str, int, str]:
    return (account.name, account.host, account.port, account.tls)


def dial_ahead(account: AccountSettings) -> None:
    """Start opening the account's connection (TCP, plus TLS where it is implicit; a STARTTLS
    or plaintext account gets TCP only) for the first `take_dialed` of this process."""
    from syncd.config.providers import PAUSES

    if PAUSES.get(account.name) is not None:
        return  # throttled: no connection before the pause ends (ImapSession.connect says so)
    dial = _Dial(account)
    with _DIALS_LOCK:
        if dial.key in _DIALS:
            return
        _DIALS[dial.key] = dial
    dial.thread.start()


def server_reached(account: AccountSettings) -> bool:
    """Whether the connection `dial_ahead` is opening for the account got through TCP (waits
    for that much, not for TLS); False if there is none or it failed. What a login needs
    besides the connection (a password command: gpg, pass) can then run during the TLS
    handshake instead of after it, and still never for a server that cannot be reached."""
    with _DIALS_LOCK:
        dial = _DIALS.get(_dial_key(account))
    if dial is None:
        return False
    dial.tcp_done.wait()
    return dial.reached


def take_dialed(account: AccountSettings) -> socket.socket | None:
    """The connection `dial_ahead` opened for this account, once; None if there is none.
    A failure to open it is raised here, as connecting on the spot would have raised it (so a
    refused or unreachable server costs one timeout, not two)."""
    with _DIALS_LOCK:
        dial = _DIALS.pop(_dial_key(account), None)
    if dial is None:
        return None
    dial.thread.join()
    if dial.error is not None:
        raise dial.error
    return dial.sock


def close_dialed() -> None:
    """Close connections opened ahead and never taken (the account was locked, or its sync
    failed before connecting). One still opening is not waited for (an unreachable server
    would hold the exit for its whole timeout): it closes its socket itself when done."""
    with _DIALS_LOCK:
        dials = list(_DIALS.values())
        _DIALS.clear()
        for dial in dials:
            dial.abandoned = True
    for dial in dials:
        if dial.sock is not None:
            with contextlib.suppress(OSError):
                dial.sock.close()
