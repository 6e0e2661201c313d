"""A server's NO or BAD to one message: that message's error, not its folder's or account's.

Exchange refuses the APPEND of a message with a line over ~9,900 bytes (`BAD Command Error.
10`); other servers refuse a message too big, a date they do not like, a keyword. The message
is named (account, folder, file name, Subject) and stays in the Maildir untouched; its upload
is planned again at the next sync, as for any local message the server lacks, and the other
messages of the folder still go up.
"""

from __future__ import annotations

import logging
import re

from syncd.errors import FolderError

log = logging.getLogger("syncd.imap.account")

#: Response codes (RFC 5530, RFC 3501) that concern the folder, not the one message: every
#: other APPEND to it would be refused the same way.
FOLDER_CODES = frozenset({"TRYCREATE", "NOPERM", "OVERQUOTA", "READ-ONLY", "NONEXISTENT"})
#: After this many refusals in a row (none accepted in between) the rest of the folder's
#: uploads wait for the next sync: a server that refuses every APPEND is not sent thousands.
MAX_REFUSALS_IN_A_ROW = 20
#: How many refused messages the folder's error names one by one.
NAMED_IN_SUMMARY = 5

_CODE = re.compile(r"\[([A-Z-]+)[\] ]")


def is_refusal(exc: BaseException) -> bool:
    """A tagged NO or BAD on a connection that is still in step (not a dropped or
    desynchronised one, which ends the account's run)."""
    from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

    return isinstance(exc, IMAPClientError) and not isinstance(exc, IMAPClientAbortError)


def _response_code(text: str) -> str | None:
    match = _CODE.search(text)
    return match.group(1) if match else None


def subject_of(data: bytes) -> str | None:
    """The message's Subject, decoded (RFC 2047) and on one line; None if it has none."""
    end = data.find(b"\n\n")
    head = data if end < 0 else data[:end + 1]
    from email.header import decode_header, make_header
    from email.parser import BytesHeaderParser

    try:
        raw = BytesHeaderParser().parsebytes(head).get("Subject")
        if raw is None:
            return None
        text = str(make_header(decode_header(str(raw))))
    except Exception:  # a header we cannot decode still gets its file name reported
        return None
    return " ".join(text.split())[:120]


class RefusedUploads:
    """The APPENDs one folder's sync had refused; ``error()`` is the folder's error text."""

    def __init__(self, account: str, folder: str) -> None:
        self.account = account
        self.folder = folder
        self.refused: list[str] = []  # "<file> (Subject: ...): <server's words>"
        self.in_a_row = 0
        self.not_tried = 0

    def __bool__(self) -> bool:
        return bool(self.refused or self.not_tried)

    def add(self, key: str, data: bytes, reason: str) -> None:
        """One refused APPEND. Raises FolderError when the refusal concerns the whole folder
        (no such folder, no permission, over quota): the remaining uploads would all fail."""
        subject = subject_of(data)
        what = key + (f" (Subject: {subject})" if subject else "")
        log.warning("%s/%s: the server refused message %s: %s; it stays in the Maildir and "
                    "is tried again at the next sync", self.account, self.folder, what, reason)
        if _response_code(reason) in FOLDER_CODES:
            raise FolderError(self.account, self.folder,
                              f"the server refused to store message {what}: {reason}")
        self.refused.append(f"{what}: {reason}")
        self.in_a_row += 1

    def accepted(self) -> None:
        self.in_a_row = 0

    @property
    def give_up(self) -> bool:
        """Enough refusals in a row: leave the rest for the next sync."""
        return self.in_a_row >= MAX_REFUSALS_IN_A_ROW

    def error(self) -> str:
        count = len(self.refused)
        named = "; ".join(self.refused[:NAMED_IN_SUMMARY])
        more = f"; and {count - NAMED_IN_SUMMARY} more" if count > NAMED_IN_SUMMARY else ""
        waiting = (f"; {self.not_tried} more not tried after {self.in_a_row} refusals in a "
                   "row" if self.not_tried else "")
        noun = "message" if count == 1 else "messages"
        return (f"the server refused {count} {noun} (kept in the Maildir, tried again at the "
                f"next sync): {named}{more}{waiting}")


class RefusedDownloads:
    """The messages a server would not send (UID FETCH refused for them alone): Exchange's
    calendar and contact items, damaged items. Each is named (account, folder, UID, Subject);
    the folder's other messages are mirrored, and these are asked for again next time."""

    def __init__(self, account: str, folder: str) -> None:
        self.account = account
        self.folder = folder
        self.reasons: dict[int, str] = {}  # UID -> the server's words

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def add(self, uid: int, reason: str) -> None:
        """Called from the fetching thread; only records (the session is busy)."""
        self.reasons[uid] = reason

    def error(self, subjects: dict[int, str]) -> str:
        """The folder's error text, with each refused message logged by name."""
        named: list[str] = []
        for uid, reason in sorted(self.reasons.items()):
            subject = subjects.get(uid)
            what = f"UID {uid}" + (f" (Subject: {subject})" if subject else "")
            log.warning("%s/%s: the server would not send message %s: %s; it is asked for "
                        "again at the next sync", self.account, self.folder, what, reason)
            named.append(f"{what}: {reason}")
        count = len(named)
        more = f"; and {count - NAMED_IN_SUMMARY} more" if count > NAMED_IN_SUMMARY else ""
        noun = "message" if count == 1 else "messages"
        return (f"the server would not send {count} {noun} (the others are mirrored; asked "
                f"for again at the next sync; on Exchange these are calendar or contact items "
                f"that IMAP cannot carry, so a folder of them is best excluded): "
                f"{'; '.join(named[:NAMED_IN_SUMMARY])}{more}")
