"""IDLE watchers: one connection per watched folder, each in its own thread. They never sync;
they only tell the account's worker which folder changed."""

from __future__ import annotations

import contextlib
import imaplib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from syncd.config.providers import PAUSES
from syncd.core.folders import Namespace, prefixed_name
from syncd.errors import AccountError
from syncd.service.health import Heartbeat
from syncd.service.worker import AUTH_RETRY, next_backoff

if TYPE_CHECKING:
    from syncd.config.load import AccountSettings
    from syncd.imap.client import ImapSession

log = logging.getLogger("syncd.idle")

# RFC 2177: servers may drop an IDLE after 30 minutes; re-issue well before. Providers with
# a shorter limit are in syncd/config/providers.py (Gmail: about 10 minutes).
IDLE_RENEW = 25 * 60.0
# How often a reconnect backoff wakes to look at the stop flag. IDLE itself does not wake to
# look: stop() and reconnect() wake it through a socket pair (issue 21: with 20 accounts a
# one-second step was 1,200 wake-ups a minute of an idle daemon).
POLL_STEP = 1.0


def idle_renew_interval(host: str) -> float:
    """Seconds after which IDLE is ended and issued again on ``host``."""
    from syncd.config.providers import provider_for

    limit = provider_for(host).idle_renew
    return IDLE_RENEW if limit is None else min(IDLE_RENEW, limit)


def enable_keepalive(sock: socket.socket) -> None:
    """TCP keep-alives find a dead connection (a laptop that changed networks) in about 90 s
    instead of waiting for the next IDLE renewal."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


def is_change(response: object) -> bool:
    """Anything but a keep-alive status line ("* OK Still here") means the folder changed."""
    if isinstance(response, tuple) and response:
        head = response[0]
        if isinstance(head, bytes) and head.upper() == b"BYE":
            raise ConnectionError("the server closed the connection (BYE)")
        keepalive = (b"OK", b"NO", b"BAD", b"CAPABILITY")
        return not (isinstance(head, bytes) and head.upper() in keepalive)
    return False


def changed_folder(response: object) -> str | None:
    """The folder a NOTIFY event names (`* STATUS "Lists/a" (...)`), decoded; None for
    events of the selected folder (EXISTS, EXPUNGE, FETCH, VANISHED)."""
    if (isinstance(response, tuple) and len(response) >= 2 and isinstance(response[0], bytes)
            and response[0].upper() == b"STATUS"):
        from imapclient.imap_utf7 import decode

        name = response[1]
        if isinstance(name, bytes):
            return decode(name)
        return str(name)
    return None


class IdleWatcher(threading.Thread):
    """IDLE on one folder; or, where the server offers NOTIFY (RFC 5465) and `notify` is set,
    one connection that reports changes in every folder (then no other watcher is needed)."""

    def __init__(self, account: AccountSettings, folder: str, *,
                 connect: Callable[[], ImapSession],
                 on_change: Callable[[str, str | None], None],
                 on_reconnect: Callable[[str, str | None], None] | None = None,
                 notify: bool = False,
                 on_mode: Callable[[str], None] | None = None) -> None:
        super().__init__(name=f"idle-{account.name}-{folder}", daemon=True)
        self.account = account
        self.folder = folder
        self.connect = connect
        self.on_change = on_change
        self.allow_notify = notify
        self.on_mode = on_mode  # told once whether this watcher runs "notify" or "idle"
        self.mode: str | None = None
        # Called instead of on_change when the connection is back after a loss: the server is
        # reachable again, so the worker need not wait out its backoff.
        self.on_reconnect = on_reconnect
        self._halt = threading.Event()
        self._reconnect = threading.Event()
        # stop() and reconnect() write a byte to _waker; IDLE waits on _woken beside the
        # server's socket. Socket objects, not pipe numbers: a write after close() raises
        # instead of reaching whatever file reused the number.
        self._woken, self._waker = socket.socketpair()
        self._woken.setblocking(False)
        self._waker.setblocking(False)
        self.session: ImapSession | None = None
        # The `idle:` name as the server spells it ("Lists" is INBOX.Lists on Courier), and
        # the personal namespace: both known once connected (see _learn_namespace).
        self.server_folder = folder
        self.namespace: Namespace | None = None
        self.state = "starting"
        # Beats at least every POLL_STEP while IDLE or a backoff runs (service/health.py).
        self.heartbeat = Heartbeat(f"IDLE {account.name}/{folder}")

    def stop(self) -> None:
        self._halt.set()
        self._wake()

    def reconnect(self) -> None:
        """Drop the connection and make a new one at once (wake from suspend)."""
        self._reconnect.set()
        self._wake()

    def _wake(self) -> None:
        # Full buffer: a wake-up is pending already. Closed: the thread has ended.
        with contextlib.suppress(OSError):
            self._waker.send(b"w")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._woken.recv(64):
                pass

    def _set_state(self, state: str) -> None:
        self.state = state

    def run(self) -> None:
        # What to announce once IDLE is up: at start, a change that landed between the
        # worker's first sync and our IDLE would otherwise wait for the next poll; after a
        # lost connection, events may have been missed while we were away.
        notice = "start"
        try:
            self._watch(notice)
        finally:
            self._woken.close()
            self._waker.close()

    def _watch(self, notice: str) -> None:
        backoff: float | None = None
        while not self._halt.is_set():
            try:
                self._drain_wake()
                self._reconnect.clear()
                self.heartbeat.beat("connecting")
                self.session = self.connect()
                sock = self.session.client.socket()
                enable_keepalive(sock)
                # With NOTIFY nothing is selected: Dovecot reports the selected folder's
                # changes only once IDLE ends, but every other folder's at once (STATUS).
                mode = self._choose_mode()
                self._learn_namespace(mode)
                if mode == "idle":
                    self.session.client.select_folder(self.server_folder, readonly=True)
                backoff = None
                self._set_state("idle")
                self._idle_loop(notice)
                notice = "reconnect"
            except AccountError as exc:
                notice = "reconnect"
                wait = AUTH_RETRY if exc.cause == "auth" else next_backoff(backoff)
                backoff = wait
                # A throttling reply paused the account: connect again only after it.
                wait = max(wait, PAUSES.remaining(self.account.name))
                self._set_state(f"offline: {exc.cause}")
                log.info("%s/%s: IDLE connection failed: %s (retry in %.0f s)",
                         self.account.name, self.folder, exc, wait)
                self._sleep(wait)
            except Exception as exc:  # a watcher must survive whatever a server does
                notice = "reconnect"
                backoff = next_backoff(backoff)
                self._set_state("offline")
                backoff = max(backoff, PAUSES.remaining(self.account.name))
                log.info("%s/%s: IDLE connection lost: %s (retry in %.0f s)",
                         self.account.name, self.folder, exc or type(exc).__name__, backoff)
                self._sleep(backoff)
            finally:
                self._close()

    def _choose_mode(self) -> str:
        assert self.session is not None
        mode = "notify" if self.allow_notify and self.session.has("NOTIFY") else "idle"
        if mode == "notify" and not self._notify_accepted():
            mode = "idle"
        if self.mode is None and self.on_mode is not None:
            self.on_mode(mode)
        self.mode = mode
        return mode

    def _learn_namespace(self, mode: str) -> None:
        """Ask the personal namespace where it matters: NOTIFY reports server names, which the
        daemon's include/exclude filter matches with and without the prefix; and an `idle:`
        folder may be written as syncd shows it locally. `idle: [INBOX]` on IDLE (the common
        case) costs no round trip."""
        assert self.session is not None
        if mode == "idle" and self.folder.upper() == "INBOX":
            return
        self.namespace = self.session.personal_namespace()
        if mode == "idle":
            self.server_folder = self._resolve_folder(self.namespace)

    def _resolve_folder(self, namespace: Namespace) -> str:
        """`idle: [Lists]` on a server with an INBOX. prefix means INBOX.Lists, unless the
        server really has a folder named Lists (outside the personal namespace)."""
        assert self.session is not None
        candidate = prefixed_name(self.folder, namespace)
        if candidate == self.folder or self._listed(self.folder):
            return self.folder
        if candidate != self.server_folder:
            log.info("%s: IDLE folder %s is %s on the server", self.account.name, self.folder,
                     candidate)
        return candidate

    def _listed(self, name: str) -> bool:
        assert self.session is not None
        try:
            return bool(self.session.client.list_folders("", name))
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error:
            return False  # a server that refuses the name outside its namespace: not there

    def _notify_accepted(self) -> bool:
        """NOTIFY SET on this connection. A server that advertises NOTIFY and then refuses it
        (NO or BAD; a proxy, a misconfigured plugin) gets IDLE on the `idle:` folders for
        good, as a server without NOTIFY: retrying NOTIFY would leave no push at all."""
        assert self.session is not None
        try:
            self.session.notify_every_folder()
        except imaplib.IMAP4.abort:
            raise  # the connection, not the command: reconnect as usual
        except (AccountError, imaplib.IMAP4.error) as exc:
            log.warning("%s: the server offers NOTIFY but refused it (%s); watching the "
                        "`idle:` folders with IDLE instead", self.account.name, exc)
            self.allow_notify = False
            return False
        return True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.heartbeat.waiting("waiting to reconnect")
        while not self._halt.is_set() and not self._reconnect.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._halt.wait(min(remaining, POLL_STEP))

    def _idle_loop(self, notice: str | None) -> None:
        from syncd.imap.idle_stream import IdleStream

        assert self.session is not None
        # Not imapclient's idle_check(): it fails on a line that arrives in two TCP segments
        # (imapclient issue 519) and cannot read literals; see adapters/imap_idle.py.
        stream = IdleStream(self.session.client)
        renew = idle_renew_interval(self.account.host)
        while not self._halt.is_set() and not self._reconnect.is_set():
            changed: set[str] = set()
            for response in stream.start():
                if is_change(response):
                    changed.add(changed_folder(response) or self.server_folder)
            if notice is not None:
                # IDLE is up: from here on no change goes unnoticed; sync what came before
                # (with NOTIFY that is every folder: None).
                callback = self.on_reconnect if notice == "reconnect" else None
                (callback or self.on_change)(
                    self.account.name, None if self.mode == "notify" else self.server_folder)
                notice = None
            started = time.monotonic()
            while not changed and not self._halt.is_set() and not self._reconnect.is_set():
                if time.monotonic() - started > renew or stream.ended is not None:
                    break  # re-issue IDLE (the server's limit, or it ended IDLE itself)
                # Waiting for the server on purpose (bounded by the timeout); busy again, and
                # so watched for getting stuck, as soon as it hands us something.
                self.heartbeat.waiting("idling")
                left = max(0.0, renew - (time.monotonic() - started))
                responses = stream.check(left, wake=self._woken.fileno())
                self.heartbeat.beat("handling IDLE responses")
                if not responses:
                    self._drain_wake()  # woken (the loop looks at the flags), or renewal
                for response in responses:
                    if is_change(response):
                        changed.add(changed_folder(response) or self.server_folder)
            # Responses that arrive while DONE is on its way come back from done():
            # dropping them lost events that landed in that instant.
            for response in stream.done():
                if is_change(response):
                    changed.add(changed_folder(response) or self.server_folder)
            for folder in sorted(changed):
                self.on_change(self.account.name, folder)

    def _close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.close()
            self.session = None
