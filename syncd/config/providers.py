"""What big providers do that the IMAP RFCs do not say, and how syncd keeps within it.

- Limits per provider, by IMAP host: how long an IDLE may last before the server drops it
  (Gmail: about 10 minutes, where RFC 2177 says 29), and how many connections one account may
  hold at once (Gmail: 15; more are refused, and count against the account).
- Throttling replies, recognised in the text of any response (``throttle_from``):
  Exchange Online's ``NO Request is throttled. Suggested Backoff Time: N milliseconds`` (then it
  drops the connection): wait N ms (bounded) before connecting again;
  Gmail's ``NO [ALERT] Account exceeded command or bandwidth limits`` (2,500 MB a day): pause
  the account for an hour, repeatedly if need be, never a retry storm; ``[THROTTLED]`` and
  Gmail's "Too many simultaneous connections": a short pause. Nothing else is a throttle: a
  NO about one message or folder (a full mailbox, RFC 5530's ``[LIMIT]`` on flags) stays that
  message's or folder's error.
- ``PAUSES``: the pause in force per account, shared by every connection of the process (the
  worker's and the IDLE watchers'). ``ImapSession.connect`` refuses to connect while it lasts
  (an AccountError with cause "throttled" saying until when), so whichever thread tries next
  waits instead of hammering; the worker and the watchers wait out ``remaining()``.

Pure data and small functions; the only state is ``PAUSES`` (a lock and a dict). No
dataclasses: the dial-ahead of a no-change `syncd sync` imports this, and that path keeps
its imports to a minimum (tests/integration/test_imap_round_trips.py).
"""

from __future__ import annotations

import re
import threading
import time

__all__ = ["PAUSES", "Provider", "Throttle", "idle_folders_within_limit", "provider_for",
           "throttle_from"]


class Provider:
    __slots__ = ("idle_renew", "max_connections", "name")

    def __init__(self, name: str, *, idle_renew: float | None = None,
                 max_connections: int | None = None) -> None:
        self.name = name
        #: Seconds after which an IDLE is ended and issued again (None: RFC 2177's 29
        #: minutes apply; syncd re-issues at 25).
        self.idle_renew = idle_renew
        #: Simultaneous connections one account may hold (None: no known limit).
        self.max_connections = max_connections


GENERIC = Provider("generic")
GMAIL = Provider("gmail", idle_renew=9 * 60.0, max_connections=15)
EXCHANGE = Provider("exchange")

_HOSTS = {
    "imap.gmail.com": GMAIL,
    "imap.googlemail.com": GMAIL,
    "outlook.office365.com": EXCHANGE,
    "outlook.office.com": EXCHANGE,
    "imap-mail.outlook.com": EXCHANGE,
    "imap.outlook.com": EXCHANGE,
}


def provider_for(host: str) -> Provider:
    return _HOSTS.get(host.strip().rstrip(".").lower(), GENERIC)


def idle_folders_within_limit(host: str, connections: int, idle: tuple[str, ...] | list[str]
                              ) -> tuple[list[str], list[str]]:
    """(folders watched with IDLE, folders left to polling) so that the daemon's connections
    for one account (the worker's, up to ``connections`` at once, plus one per IDLE folder)
    stay within the provider's limit (Gmail: 15)."""
    folders = list(idle)
    limit = provider_for(host).max_connections
    if limit is None:
        return folders, []
    room = max(1, limit - connections)
    return folders[:room], folders[room:]


# --- throttling --------------------------------------------------------------------------------

#: Exchange's suggested backoff is honoured within these bounds (seconds).
SUGGESTED_MIN = 1.0
SUGGESTED_MAX = 300.0
#: A bandwidth or command-limit alert (Gmail) pauses the account this long.
LIMIT_PAUSE = 3600.0
#: [THROTTLED] without a suggested time, too many connections.
SHORT_PAUSE = 60.0

_PATTERNS: tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]] | None = None


def _patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]]:
    """(suggested backoff, command/bandwidth limits, short), compiled on first use: importing
    this module stays cheap (the dial-ahead of a no-change sync does)."""
    global _PATTERNS
    if _PATTERNS is None:
        _PATTERNS = (
            re.compile(rb"throttled.{0,80}?backoff time:?\s*(\d{1,9})\s*(milli)?sec",
                       re.IGNORECASE | re.DOTALL),
            re.compile(rb"\b(?:command|bandwidth)s?\b.{0,30}?\blimits?\b", re.IGNORECASE),
            re.compile(rb"\[THROTTLED\]|too many simultaneous connections", re.IGNORECASE))
    return _PATTERNS


class Throttle:
    __slots__ = ("kind", "reason", "seconds")

    def __init__(self, seconds: float, reason: str, kind: str) -> None:
        self.seconds = seconds
        self.reason = reason  # the server's words, trimmed
        self.kind = kind  # "suggested" | "limit" | "short"

    def __repr__(self) -> str:
        return f"Throttle({self.seconds!r}, {self.reason!r}, {self.kind!r})"


def throttle_from(text: bytes | str) -> Throttle | None:
    """The pause a response asks for, if it is a throttling reply; None otherwise."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    lowered = data.lower()
    if b"thrott" not in lowered and b"limit" not in lowered and b"simultaneous" not in lowered:
        return None  # the common case, cheaply
    reason = _reason(data)
    suggested, limits, short = _patterns()
    match = suggested.search(data)
    if match:
        value = int(match.group(1)) / (1000.0 if match.group(2) else 1.0)
        return Throttle(min(SUGGESTED_MAX, max(SUGGESTED_MIN, value)), reason, "suggested")
    if limits.search(data):
        return Throttle(LIMIT_PAUSE, reason, "limit")
    if short.search(data):
        return Throttle(SHORT_PAUSE, reason, "short")
    return None


def _reason(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    # Drop the tag or "*", keep the status and the server's words.
    parts = text.split(" ", 1)
    if len(parts) == 2 and parts[1][:3].upper() in ("NO ", "BAD", "BYE", "OK "):
        text = parts[1]
    return " ".join(text.split())[:200]


class Pause:
    __slots__ = ("reason", "until")

    def __init__(self, until: float, reason: str) -> None:
        self.until = until  # time.time()
        self.reason = reason


class Pauses:
    """The pause in force for each account (thread-safe)."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pauses: dict[str, Pause] = {}

    def note(self, account: str, throttle: Throttle) -> Pause:
        """A throttling reply came for ``account``: pause it (a longer pause in force wins)."""
        until = self._clock() + throttle.seconds
        with self._lock:
            current = self._pauses.get(account)
            if current is None or current.until < until:
                current = self._pauses[account] = Pause(until, throttle.reason)
            return current

    def get(self, account: str) -> Pause | None:
        """The pause in force, or None (an expired one is forgotten)."""
        with self._lock:
            pause = self._pauses.get(account)
            if pause is not None and pause.until <= self._clock():
                del self._pauses[account]
                return None
            return pause

    def remaining(self, account: str) -> float:
        pause = self.get(account)
        return 0.0 if pause is None else max(0.0, pause.until - self._clock())

    def clear(self, account: str) -> None:
        with self._lock:
            self._pauses.pop(account, None)


PAUSES = Pauses()


def describe_pause(pause: Pause, now: float | None = None) -> str:
    """"throttled by the server until 14:05:09 (in 3600 s): NO [ALERT] ...\""""
    now = time.time() if now is None else now
    at = time.strftime("%H:%M:%S", time.localtime(pause.until))
    return (f"throttled by the server until {at} (in {max(0.0, pause.until - now):.0f} s): "
            f"{pause.reason}")
