"""A partial mirror's cost (issue 18): a first sync of the IMAP corpus with `max_age` covering
about 10 % of it against the full first sync, and the no-change sync of each.

    .venv/bin/python -m bench.window [--quick] [--messages N] [--share 0.10]

Goal: the windowed first sync takes <= 12 % of the full one's time, and its no-change sync is
no dearer than the full mirror's. Same private Dovecot and corpus as bench.run (the corpus's
INTERNALDATEs are 25 minutes apart, oldest first, so the newest N % are one age window).
The writing floor (bench/floor.py) runs the same pair, its window asked with the same
`UID SEARCH SINCE`: its own share is the least this machine and server allow.
Writes bench/results/<date>-window.{md,json} (a --quick run: under the work dir).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from bench import corpus, measure
from bench.run import Bench, log, parse_args, timed
from bench.tools import REPO, Floor, Syncd, direct_endpoint, make_tool

GOAL_SHARE_OF_TIME = 0.12


def window_days(seed: int, n: int, share: float, now: dt.datetime) -> tuple[int, int]:
    """The max_age in days that keeps about ``share`` of the corpus, and how many messages
    that window holds (INTERNALDATEs are the corpus's mtimes; whole days, as the key takes)."""
    dates = sorted(corpus.date_of(seed, i) for i in range(n))
    cutoff = dates[max(0, math.floor(n * (1 - share)))]
    days = max(1, (now - cutoff).days)
    since = now - dt.timedelta(days=days)
    inside = sum(1 for d in dates if d >= since.replace(hour=0, minute=0, second=0))
    return days, inside


def with_max_age(tool: Syncd, days: int | None) -> None:
    """The tool's config with (or without) max_age on its account."""
    config = yaml.safe_load(tool.config.read_text())
    account = config["accounts"][tool.account]
    if days is None:
        account.pop("max_age", None)
    else:
        account["max_age"] = f"{days}d"
    tool.config.write_text(yaml.safe_dump(config, sort_keys=False))


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_since(days: int) -> str:
    """The IMAP date syncd's max_age of ``days`` searches SINCE (syncd.imap.gather.since_day:
    the local day ``days`` ago)."""
    day = dt.date.fromtimestamp(time.time() - days * 86400)
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def measure_floor(bench: Bench, tool: Floor, since: str, repeats: int, timeout: float
                  ) -> list[dict[str, object]]:
    """The writing floor's first sync, whole and from ``since`` on, taking turns like
    measure_both; median wall of each."""
    walls: dict[str, list[float]] = {"full": [], "window": []}
    for r in range(repeats):
        for label, window in (("full", None), ("window", since)):
            bench.restore_server(tool.user)
            tool.prepare()
            tool.since = window
            m = timed(tool, bench.logs / f"window-floor-{label}.log", timeout)
            walls[label].append(m.wall)
            log(f"floor {label}: first sync {r + 1}/{repeats}: {m.wall:.2f} s (rc "
                f"{m.returncode})")
            if m.returncode != 0:
                raise RuntimeError(f"floor-write {label} failed: exit {m.returncode}")
    return [{"label": f"floor-write {label}", "first": sorted(w)[repeats // 2]}
            for label, w in walls.items()]


def measure_both(bench: Bench, tool: Syncd, windows: list[tuple[int | None, str]],
                 repeats: int, timeout: float) -> list[dict[str, object]]:
    """Median first sync and no-change sync of syncd under each window. The mirrors take turns
    (full, windowed, full, ...): the VM's first syncs drift slower as its page cache grows over
    a run, and the turns spread that drift over both instead of charging it to the later."""
    first: dict[str, list[measure.Measurement]] = {label: [] for _, label in windows}
    resync: dict[str, list[measure.Measurement]] = {label: [] for _, label in windows}
    files: dict[str, int] = {}
    for r in range(repeats):
        for days, label in windows:
            logfile = bench.logs / f"window-{label}.log"
            bench.restore_server(tool.user)
            tool.prepare()
            with_max_age(tool, days)
            log(f"window {label}: first sync {r + 1}/{repeats}")
            first[label].append(timed(tool, logfile, timeout))
            resync[label].append(timed(tool, logfile, timeout))
            log(f"  first {first[label][-1].wall:.2f} s (rc {first[label][-1].returncode}), "
                f"no-change {resync[label][-1].wall:.2f} s")
            files[label] = sum(len(list(p.glob("cur/*"))) + len(list(p.glob("new/*")))
                               for p in tool.folder_dirs().values())
    return [{"label": label, "max_age_days": days,
             "first": sorted(m.wall for m in first[label])[repeats // 2],
             "no_change": sorted(m.wall for m in resync[label])[repeats // 2],
             "peak_rss_mb": max(m.peak_rss_mb for m in first[label]),
             "returncodes": [m.returncode for m in first[label] + resync[label]],
             "files": files[label]} for days, label in windows]


def report(info: dict, rows: list[dict], floors: list[dict], out_dir: Path) -> Path:
    full, part = rows
    share_time = part["first"] / full["first"]
    floor_full, floor_part = floors
    floor_share = floor_part["first"] / floor_full["first"]
    lines = [
        f"# Partial mirror (max_age) — {info['date']}, {info['host']}", "",
        f"{info['messages']} messages (corpus seed {info['seed']}), max_age "
        f"{part['max_age_days']}d keeps {info['inside']} of them "
        f"({info['inside'] / info['messages']:.1%}); median of {info['repeats']}; "
        f"{info['cpus']} CPUs, syncd {info['commit']}.", "",
        "| mirror | first sync (s) | no-change (s) | peak RSS (MB) | files | exit |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row['label']} | {row['first']:.2f} | {row['no_change']:.2f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['files']} | "
                     f"{sorted(set(row['returncodes']))} |")
    ok_time = share_time <= GOAL_SHARE_OF_TIME
    ok_resync = part["no_change"] <= full["no_change"] * 1.1
    lines += ["", f"- windowed first sync = **{share_time:.1%}** of the full one (goal <= "
              f"{GOAL_SHARE_OF_TIME:.0%}): {'met' if ok_time else 'missed'}",
              f"- windowed no-change {part['no_change']:.2f} s against the full mirror's "
              f"{full['no_change']:.2f} s (goal: no dearer, 10 % noise allowed): "
              f"{'met' if ok_resync else 'missed'}",
              f"- the writing floor (bench/floor.py, same `UID SEARCH SINCE {info['since']}`): "
              f"{floor_full['first']:.2f} s whole, {floor_part['first']:.2f} s windowed = "
              f"**{floor_share:.1%}**" + (" — above the goal too: the fastest client this "
                                          "machine and server allow misses it"
                                          if floor_share > GOAL_SHARE_OF_TIME else ""), ""]
    stem = f"{info['date'][:10]}-window"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps({"info": info, "rows": rows,
                                                     "floors": floors}, indent=1))
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.window", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 messages, one run each")
    p.add_argument("--messages", type=int)
    p.add_argument("--share", type=float, default=0.10, help="share of the corpus in the window")
    p.add_argument("--repeats", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--workdir", default=str(REPO / "bench" / "work"))
    p.add_argument("--results-dir")
    args = p.parse_args(argv)
    args.messages = args.messages or (2000 if args.quick else 20000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if os.geteuid() != 0:
        print("bench: must run as root (the private Dovecot switches users)", file=sys.stderr)
        return 2
    out_dir = Path(args.results_dir or (Path(args.workdir) / "results" if args.quick
                                        else REPO / "bench" / "results"))
    now = dt.datetime.now(dt.UTC)
    days, inside = window_days(args.seed, args.messages, args.share, now)
    bench = Bench(parse_args(["--workdir", args.workdir, "--seed", str(args.seed)]))
    started = time.monotonic()
    try:
        bench.start()
        assert bench.dc is not None
        user = bench.corpus_user("c", args.messages)
        tool = make_tool("syncd", "imap", bench.work / "clients" / "syncd-window",
                         direct_endpoint(bench.dc), user)
        assert isinstance(tool, Syncd)
        rows = measure_both(bench, tool, [(None, "full"), (days, f"max_age {days}d")],
                            args.repeats, args.timeout)
        floor_tool = make_tool("floor-write", "imap", bench.work / "clients" / "floor-window",
                               direct_endpoint(bench.dc), user)
        assert isinstance(floor_tool, Floor)
        floors = measure_floor(bench, floor_tool, imap_since(days), args.repeats, args.timeout)
    finally:
        bench.stop()
    from bench.run import _git_describe

    info = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(),
            "cpus": os.cpu_count(), "commit": _git_describe(), "messages": args.messages,
            "seed": args.seed, "inside": inside, "repeats": args.repeats,
            "since": imap_since(days),
            "duration": time.monotonic() - started}
    md = report(info, rows, floors, out_dir)
    print(md.read_text())
    print(f"written: {md} ({info['duration'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
