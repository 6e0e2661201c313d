"""What a sync did, per folder and per account (counts, errors, the summary line), and the
progress sink it reports to. Shared by the IMAP engine, the no-change check, POP3, the CLI,
the daemon, hooks and the status file.

Plain classes rather than dataclasses: `syncd sync` with nothing to do never imports the
engine, and importing `dataclasses` (with inspect, ast, dis, tokenize) would be a fifth of
its instructions.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Progress sink (rich bars on a TTY, nothing otherwise)."""

    def folder_started(self, account: str, folder: str, messages: int, size: int) -> None: ...
    def advance(self, account: str, messages: int, size: int) -> None: ...
    def folder_done(self, account: str, folder: str) -> None: ...


class NullReporter:
    def folder_started(self, account: str, folder: str, messages: int, size: int) -> None:
        pass

    def advance(self, account: str, messages: int, size: int) -> None:
        pass

    def folder_done(self, account: str, folder: str) -> None:
        pass


class FolderResult:
    """Counts and problems of one folder in one sync."""

    def __init__(self, folder: str, *, downloaded: int = 0, downloaded_bytes: int = 0,
                 uploaded: int = 0, local_flag_changes: int = 0, remote_flag_changes: int = 0,
                 deleted_local: int = 0, deleted_remote: int = 0, paired: int = 0,
                 created_remote: bool = False, created_local: bool = False,
                 guard: str | None = None, error: str | None = None,
                 plan_lines: list[str] | None = None, new_mail: int = 0,
                 notice: str | None = None) -> None:
        self.folder = folder
        self.downloaded = downloaded
        self.downloaded_bytes = downloaded_bytes
        self.uploaded = uploaded
        self.local_flag_changes = local_flag_changes
        self.remote_flag_changes = remote_flag_changes
        self.deleted_local = deleted_local
        self.deleted_remote = deleted_remote
        self.paired = paired
        self.created_remote = created_remote
        self.created_local = created_local
        self.guard = guard  # the mass-deletion guard refused: the run fails until confirmed
        self.error = error
        # Worth a warning, not a failure: the local folder was missing and its messages were
        # downloaded again (nothing was refused, nothing is left to do).
        self.notice = notice
        self.plan_lines: list[str] = [] if plan_lines is None else plan_lines
        self.new_mail = new_mail  # downloads that arrived unseen (for on_new_mail)
        # Under a window (max_age, max_messages): (its description, the messages inside,
        # the messages on the server), for `syncd status`.
        self.window: tuple[str, int, int] | None = None
        # Placeholders (max_size): delivered (counted in ``downloaded`` too), replaced by the
        # full message, and originals copied on the server for a placeholder a mail reader
        # moved or copied.
        self.placeholders = 0
        self.fetched_full = 0
        self.copied_originals = 0

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.uploaded or self.local_flag_changes
                    or self.remote_flag_changes or self.deleted_local or self.deleted_remote
                    or self.paired or self.fetched_full or self.copied_originals)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        # The folder, and only what is not at its default: results are mostly zeros.
        shown = [f"{k}={v!r}" for k, v in vars(self).items()
                 if k != "folder" and v not in (0, False, None, [])]
        return f"{type(self).__name__}({self.folder!r}{''.join(', ' + s for s in shown)})"


class AccountResult:
    """Every folder's result of one account's sync, or the error that ended it."""

    def __init__(self, account: str, folders: list[FolderResult] | None = None, *,
                 error: str | None = None, error_cause: str | None = None,
                 seconds: float = 0.0) -> None:
        self.account = account
        self.folders: list[FolderResult] = [] if folders is None else folders
        self.error = error
        # AccountError.cause: auth, dns, refused, timeout, ...
        self.error_cause = error_cause
        self.seconds = seconds

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.error is None and f.guard is None
                                          for f in self.folders)

    def summary(self) -> str:
        down = sum(f.downloaded for f in self.folders)
        up = sum(f.uploaded for f in self.folders)
        dels = sum(f.deleted_local + f.deleted_remote for f in self.folders)
        flags = sum(f.local_flag_changes + f.remote_flag_changes for f in self.folders)
        created = sum(int(f.created_local) + int(f.created_remote) for f in self.folders)
        parts = [f"+{down} down", f"+{up} up", f"-{dels}", f"~{flags} flags"]
        if created:
            parts.append(f"{created} folders created")
        return self._with_problems(f"{self.account}: {' '.join(parts)}, {self.seconds:.1f} s")

    def _with_problems(self, text: str) -> str:
        problems = [f"{f.folder}: {f.error or f.guard or f.notice}" for f in self.folders
                    if f.error or f.guard or f.notice]
        if self.error:
            problems.insert(0, self.error)
        if problems:
            text += " — " + "; ".join(problems)
        return text

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.account!r}, folders={self.folders!r}, "
                f"error={self.error!r}, error_cause={self.error_cause!r}, "
                f"seconds={self.seconds!r})")
