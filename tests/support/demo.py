"""``make demo``: a throwaway Dovecot with sample mail, a syncd config for it, and syncd run on it.

    .venv/bin/python -m tests.support.demo [--keep] [--dir DIR]

Everything lives in ``./demo`` (the Dovecot, the config, the local Maildirs and the state).
Each run starts from scratch. The demo is a list of steps (``STEPS``); each step is a function
``step(demo) -> int`` (an exit status). Today there is ``check``; later steps (a one-off sync,
the daemon) are added by appending functions to ``STEPS``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.dovecot import Dovecot, HarnessError, User, make_message

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "secret"


@dataclass
class Demo:
    root: Path  # ./demo
    dovecot: Dovecot
    imap_user: User
    pop3_user: User
    config: Path
    maildir_root: Path
    state_dir: Path


# ----------------------------------------------------------------------------- sample mail

# (folder, number of messages, maildir flags per message index, subject prefix)
SAMPLE_FOLDERS: list[tuple[str, int, Callable[[int], str], str]] = [
    ("INBOX", 12, lambda i: "" if i >= 8 else ("FS" if i % 4 == 0 else "S"), "Hello"),
    ("Lists/python", 8, lambda i: "S" if i % 2 else "", "[Python-ideas] Proposal"),
    ("Entwürfe", 3, lambda i: "D", "Entwurf: Grüße aus Köln"),
    ("Sent", 5, lambda i: "S" if i % 2 else "RS", "Re: Meeting"),
    ("Archive/2023", 4, lambda i: "S", "Invoice"),
]


def seed_sample_mail(dc: Dovecot, imap_user: User, pop3_user: User) -> int:
    """About 30 messages in a few folders (nested, non-ASCII) for IMAP, 5 for POP3."""
    now = time.time()
    total = 0
    for folder, count, flags, subject in SAMPLE_FOLDERS:
        msgs = [
            (
                make_message(
                    i,
                    folder=folder,
                    subject=f"{subject} #{i + 1}",
                    size=2000 + 900 * (i % 5) if i % 3 == 0 else None,
                ),
                flags(i),
                now - 86400 * (count - i),
            )
            for i in range(count)
        ]
        dc.seed(imap_user, folder, msgs)
        total += count
    dc.seed(
        pop3_user,
        "INBOX",
        [make_message(100 + i, subject=f"POP3 message #{i + 1}") for i in range(5)],
    )
    return total


# ----------------------------------------------------------------------------- config


def write_config(demo: Demo) -> Path:
    dc = demo.dovecot
    text = f"""\
# Written by `make demo` for a throwaway Dovecot on 127.0.0.1 (it is stopped after the demo).
general:
  maildir_root: {demo.maildir_root}
  state_dir: {demo.state_dir}
  log_level: info

accounts:
  demo-imap:
    protocol: imap
    host: {dc.host}
    port: {dc.imaps_port}
    tls: implicit
    tls_ca_file: {dc.ca_file}
    username: {demo.imap_user.name}
    password_command: "printf {PASSWORD}"
    folders:
      include: ["*"]
    idle: [INBOX]
    poll_interval: 5m

  demo-pop3:
    protocol: pop3
    host: {dc.host}
    port: {dc.pop3s_port}
    tls: implicit
    tls_ca_file: {dc.ca_file}
    username: {demo.pop3_user.name}
    password_command: "printf {PASSWORD}"
    leave_on_server: false   # download, then delete from the server (the default)
    poll_interval: 10m
"""
    # 0600 from the start: the file names a password_command, and syncd warns about a config
    # that others can read.
    demo.config.touch(mode=0o600)
    demo.config.chmod(0o600)
    demo.config.write_text(text)
    return demo.config


# ----------------------------------------------------------------------------- running syncd


def syncd_command() -> list[str]:
    """The installed console script next to this Python, or ``python -m syncd``."""
    script = Path(sys.executable).parent / "syncd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "syncd"]


def run_syncd(demo: Demo, *args: str) -> int:
    cmd = [*syncd_command(), "--config", str(demo.config), *args]
    shown = " ".join(["syncd", "--config", _rel(demo.config), *args])
    print(f"\n$ {shown}", flush=True)
    return subprocess.run(cmd, cwd=REPO, check=False).returncode


def step_check(demo: Demo) -> int:
    """`syncd check`: log in to both accounts, print capabilities and folders."""
    return run_syncd(demo, "check")


def _tree(demo: Demo, limit: int = 14) -> None:
    """A short listing of the local Maildirs: folder, files per cur/new."""
    shown = 0
    for account_dir in sorted(p for p in demo.maildir_root.iterdir() if p.is_dir()):
        for cur in sorted(account_dir.rglob("cur")):
            folder = cur.parent
            n_cur = sum(1 for _ in cur.iterdir())
            n_new = sum(1 for _ in (folder / "new").iterdir())
            print(f"  {_rel(folder):<48} cur {n_cur:>3}  new {n_new:>3}")
            shown += 1
            if shown >= limit:
                return


def step_sync(demo: Demo) -> int:
    """`syncd sync`: both accounts in parallel; then the Maildirs it made."""
    rc = run_syncd(demo, "sync")
    print("\nLocal Maildirs now:")
    _tree(demo)
    return rc


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def step_daemon(demo: Demo) -> int:
    """`syncd run`: a message delivered on the server arrives through IDLE; a flag set
    locally (as mutt would, by renaming the file) reaches the server; then `syncd status`."""
    dc, user = demo.dovecot, demo.imap_user
    inbox = demo.maildir_root / "demo-imap" / "INBOX"
    cmd = [*syncd_command(), "--config", str(demo.config), "run"]
    print(f"\n$ syncd --config {_rel(demo.config)} run   (in the background)", flush=True)
    daemon = subprocess.Popen(cmd, cwd=REPO)
    status = 0
    try:
        def count() -> int:
            return sum(1 for d in ("cur", "new") for _ in (inbox / d).iterdir())

        before = count()
        time.sleep(2.0)  # the daemon's first sync and IDLE set-up
        print("\n- a new message is APPENDed on the server ...", flush=True)
        dc.append(user, "INBOX", make_message(900, subject="Delivered while syncd runs"))
        took = _wait(lambda: count() > before)
        if took is None:
            print("  ... did not arrive within 10 s", flush=True)
            status = 1
        else:
            print(f"  ... and is in {_rel(inbox)}/new after {took * 1000:.0f} ms", flush=True)
        new_files = sorted((inbox / "new").iterdir())
        if new_files:
            target = new_files[-1]
            key = target.name.split(":2,")[0]
            print(f"- marking it read locally (mv new/{key} cur/{key}:2,S) ...", flush=True)
            os.rename(target, inbox / "cur" / f"{key}:2,S")

            def seen_on_server() -> bool:
                flags = dc.flags(user, "INBOX")
                return "\\Seen" in flags[max(flags)]

            took = _wait(seen_on_server)
            if took is None:
                print("  ... the server did not show \\Seen within 10 s", flush=True)
                status = 1
            else:
                print(f"  ... the server shows \\Seen after {took * 1000:.0f} ms", flush=True)
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return run_syncd(demo, "status") or status


STEPS: list[tuple[str, Callable[[Demo], int]]] = [
    ("check", step_check),
    ("sync", step_sync),
    ("daemon", step_daemon),
]


# ----------------------------------------------------------------------------- setup


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def dovecot_dir(root: Path) -> Path:
    """``root/dovecot``, or (if Dovecot's users could not reach it, e.g. under /root) a
    directory in /var/tmp with ``root/dovecot`` as a symlink to it."""
    link = root / "dovecot"
    if _traversable(root):
        return link
    target = Path(f"/var/tmp/syncd-demo-{os.getuid()}")
    target.mkdir(mode=0o755, exist_ok=True)
    os.chmod(target, 0o755)
    link.symlink_to(target)
    return target


def _refuse_if_running(workdir: Path) -> None:
    pidfile = workdir / "run" / "master.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(workdir).encode() in cmdline:
        raise SystemExit(
            f"a demo Dovecot is still running (PID {pid}, {workdir}); stop it first "
            f"(kill {pid}) and run the demo again"
        )


def reset(root: Path) -> None:
    """Remove what an earlier demo left (the Dovecot, Maildirs, state, config)."""
    dc_link = root / "dovecot"
    target = dc_link.resolve() if dc_link.is_symlink() else dc_link
    _refuse_if_running(target)
    if dc_link.is_symlink():
        dc_link.unlink()
    for path in (target, root / "Mail", root / "state"):
        shutil.rmtree(path, ignore_errors=True)
    (root / "config.yaml").unlink(missing_ok=True)


def report(demo: Demo) -> None:
    dc = demo.dovecot
    rows = [
        ("config", _rel(demo.config)),
        ("maildir root", _rel(demo.maildir_root)),
        ("state", _rel(demo.state_dir)),
        ("dovecot dir", _rel(demo.root / "dovecot")),
        ("dovecot log", _rel(demo.root / "dovecot" / dc.log_file.name)),
        ("dovecot CA", _rel(demo.root / "dovecot" / "tls" / dc.ca_file.name)),
        (
            "server",
            f"{dc.host}: IMAP {dc.imap_port} (STARTTLS), IMAPS {dc.imaps_port}, "
            f"POP3 {dc.pop3_port} (STLS), POP3S {dc.pop3s_port}",
        ),
        ("imap user", f"{demo.imap_user.name} / {PASSWORD}"),
        ("server store", str(demo.imap_user.maildir)),
        ("pop3 user", f"{demo.pop3_user.name} / {PASSWORD}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nWhere everything is:")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=REPO / "demo", help="default: ./demo")
    parser.add_argument(
        "--keep", action="store_true", help="keep Dovecot running until Enter or Ctrl-C"
    )
    args = parser.parse_args(argv)
    root = args.dir.absolute()
    root.mkdir(parents=True, exist_ok=True)
    reset(root)
    dc = Dovecot(dovecot_dir(root))
    try:
        dc.start()
    except HarnessError as e:
        print(f"demo: cannot start Dovecot: {e}", file=sys.stderr)
        return 1
    try:
        demo = Demo(
            root=root,
            dovecot=dc,
            imap_user=dc.add_user("alice", PASSWORD),
            pop3_user=dc.add_user("bob", PASSWORD),
            config=root / "config.yaml",
            maildir_root=root / "Mail",
            state_dir=root / "state",
        )
        count = seed_sample_mail(dc, demo.imap_user, demo.pop3_user)
        write_config(demo)
        print(
            f"Dovecot {dc.host}:{dc.imaps_port} is up; {demo.imap_user.name} has {count} "
            f"messages in {len(SAMPLE_FOLDERS)} folders, {demo.pop3_user.name} has 5 (POP3)."
        )
        status = 0
        for name, step in STEPS:
            rc = step(demo)
            if rc != 0:
                print(f"demo: step {name!r} exited with status {rc}", file=sys.stderr)
                status = status or rc
        report(demo)
        if args.keep:
            print("\nDovecot keeps running; press Enter (or Ctrl-C) to stop it.", flush=True)
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input()
        else:
            print("\nDovecot is stopped now (`make demo DEMO_ARGS=--keep` keeps it running).")
        return status
    finally:
        dc.stop()


if __name__ == "__main__":
    sys.exit(main())
