"""Huge messages (issue 21): `syncd sync` of one 200 MB message and of 20 messages of 25 MB,
down (empty Maildir <- server) and up (new local files -> server), against the same syncs of
as many small messages: wall time, MB/s, CPU and peak RSS (the VmHWM of `syncd sync`,
sampled). The goal: peak RSS < 40 MB above the small-message run. Both sides are checked byte
for byte (SHA-256 of the stored files).

    .venv/bin/python -m bench.huge            # 200 MB and 20 x 25 MB (about 2 GB of traffic)
    .venv/bin/python -m bench.huge --quick    # 50 MB and 4 x 8 MB

As root (the private Dovecot switches users). Everything goes under bench/work/huge/
(git-ignored); the table is printed and written to bench/work/results/huge-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from tests.faults.faultlib import run_syncd
from tests.support.dovecot import Dovecot, make_message
from tests.support.huge_mail import MB, digests_in, put_local, seed_server
from tests.support.syncd_env import Account, write_config

REPO = Path(__file__).resolve().parents[1]
GOAL_GROWTH_MB = 40


@dataclass
class Leg:
    """One `syncd sync`: what it moved and what it cost."""

    what: str
    direction: str  # "down" or "up"
    megabytes: float
    run: measure.Measurement

    def row(self, small: Leg | None) -> str:
        growth = "" if small is None else f"{self.run.peak_rss_mb - small.run.peak_rss_mb:+.1f}"
        rate = self.megabytes / self.run.wall if self.run.wall else 0.0
        return (f"| {self.what} | {self.direction} | {self.megabytes:.0f} | "
                f"{self.run.wall:.2f} | {rate:.0f} | {self.run.cpu:.2f} | "
                f"{self.run.peak_rss_mb:.1f} | {growth} |")


def _sync(account: Account, log: Path) -> measure.Measurement:
    """One `syncd sync`. Its peak RSS is its own VmHWM (faultlib.run_syncd), not
    measure.run's sum over the process tree: that counts the pages a fork for the
    password_command shares with syncd twice, ~40 MB of noise on a 40 MB budget."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    rc, out, err, peak_kb = run_syncd(account.config, "sync", timeout=1800)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as handle:
        handle.write(out + err)
    if rc != 0:
        raise SystemExit(f"bench.huge: syncd sync failed (exit {rc}); see {log}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return measure.Measurement(wall=wall, cpu=cpu, peak_rss_kb=peak_kb, returncode=rc)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"bench.huge: {what}")


def round_trip(dc: Dovecot, work: Path, what: str, sizes: list[int],
               seed_small: Callable[..., list[int]] | None = None) -> tuple[Leg, Leg]:
    """``sizes`` down into an empty Maildir, then as many new local files up."""
    user = dc.add_user()
    root = work / user.name
    root.mkdir()
    if seed_small is not None:
        seed_small(user, "INBOX", [make_message(i) for i in range(len(sizes))])
        want = None
    else:
        want = seed_server(dc, user, "INBOX", sizes, root)
    account = write_config(root, dc, user)
    inbox = account.folder_dir("INBOX")
    log = work / f"{user.name}.log"
    down = _sync(account, log)
    if want is not None:
        _check(digests_in(inbox) == want, f"{what}: downloaded files differ from the server's")
    local = put_local(inbox, sizes, seed=10_000)
    up = _sync(account, log)
    if want is not None:
        _check(digests_in(dc.folder_path(user, "INBOX")) == want + local,
               f"{what}: the server's copies differ from the uploaded files")
    megabytes = sum(sizes) / MB
    shutil.rmtree(root)  # the next leg's disk space
    return Leg(what, "down", megabytes, down), Leg(what, "up", megabytes, up)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.huge",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 MB and 4 x 8 MB")
    parser.add_argument("--workdir", default=str(REPO / "bench" / "work" / "huge"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.huge: must run as root (the private Dovecot switches users)",
              file=sys.stderr)
        return 2
    cases = [("1 x 50 MB", [50 * MB]), ("4 x 8 MB", [8 * MB] * 4)] if args.quick \
        else [("1 x 200 MB", [200 * MB]), ("20 x 25 MB", [25 * MB] * 20)]
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    dc = Dovecot(work / "dovecot")
    dc.start()
    rows = []
    try:
        for what, sizes in cases:
            small = round_trip(dc, work, f"{len(sizes)} small", [2_000] * len(sizes),
                               seed_small=dc.seed)
            huge = round_trip(dc, work, what, sizes)
            for big, base in zip(huge, small, strict=True):
                rows += [base.row(None), big.row(base)]
                print(rows[-2], rows[-1], sep="\n", flush=True)
                if big.run.peak_rss_mb - base.run.peak_rss_mb >= GOAL_GROWTH_MB:
                    print(f"bench.huge: {what} {big.direction}: peak RSS grew by "
                          f"{big.run.peak_rss_mb - base.run.peak_rss_mb:.1f} MB, more than "
                          f"the goal's {GOAL_GROWTH_MB} MB", file=sys.stderr)
    finally:
        dc.stop()
    _write(work, rows, args.quick)
    return 0


def _write(work: Path, rows: list[str], quick: bool) -> None:
    table = ["| messages | direction | MB | wall s | MB/s | CPU s | peak RSS MB | "
             "vs small MB |", "|---|---|---|---|---|---|---|---|", *rows]
    out = work.parent / "results" / f"huge-{dt.date.today()}{'-quick' if quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Huge messages ({dt.datetime.now():%Y-%m-%d %H:%M}, "
                   f"{os.cpu_count()} CPUs)\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))
    print(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
