"""Profile syncd alone on the benchmark corpus: where does a sync spend its time?

    .venv/bin/python -m bench.profile [--messages 5000] [--latency-ms 20]
                                      [--profiler cprofile|pyspy|none] [--scenarios ...]

Runs the three IMAP scenarios of bench/run.py (initial sync, no-change resync, incremental)
once each against a private Dovecot, with `syncd sync` under cProfile (a .prof file per
scenario, and the top functions printed) or py-spy (a flame graph SVG), or plain (wall time
only, to compare before and after a change). Everything goes under --workdir (default
bench/work-profile/, git-ignored), so it can run beside `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from bench import corpus, measure, run, snap, verify
from bench.tools import REPO, Endpoint, Syncd, direct_endpoint

SCENARIOS = ("initial", "resync", "incremental")


def profiled(tool: Syncd, profiler: str, out: Path) -> list[str]:
    cmd = tool.command()
    if profiler == "cprofile":
        # main(), not the console script's entry(): entry() leaves with os._exit, before
        # cProfile could write its file. The interpreter of the syncd that runs.
        wrapper = out.parent / "syncd_main.py"
        wrapper.write_text("from syncd.cli import main\n\nraise SystemExit(main())\n")
        # -I: not the repository's syncd from the working directory, the installed one.
        return [str(Path(cmd[0]).with_name("python")), "-I", "-m", "cProfile", "-o",
                str(out.with_suffix(".prof")), str(wrapper), *cmd[1:]]
    if profiler == "pyspy":
        return [str(Path(sys.executable).with_name("py-spy")), "record", "--threads", "-r", "250",
                "-f", "raw", "-o", str(out.with_suffix(".txt")), "--", *cmd]
    return cmd


def summarize_pyspy(path: Path, top: int) -> None:
    """py-spy's collapsed stacks: the functions with the most samples, self and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")")
                  for f in stack.split(";")[1:]]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{path}: {total} samples")
    print("  -- by kind of work (bench.profile.CATEGORIES)")
    for name, share in breakdown(path.read_text()).items():
        print(f"  {share:6.1%}  {name}")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"  -- {title}")
        for frame, n in counter.most_common(top):
            print(f"  {n / total:6.1%}  {frame}")


#: Where a sample's time goes (issue 21: "parse, TLS, fsync, SQLite"): the first category,
#: from the innermost frame outwards, whose function or file a frame names.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fsync and syncfs", ("fsync", "syncfs", "flush_files")),
    ("SQLite", ("(sqlite3", "syncd/store/state.py")),
    ("TLS and socket reads", ("(ssl.py", "(socket.py")),
    ("IMAP parsing", ("(imaplib.py", "syncd/imap/wire.py", "syncd/imap/client.py",
                      "response_parser")),
    ("Maildir (files, paths)", ("syncd/store/maildir.py",)),
    ("waiting (threads, queues)", ("Condition.wait", "(queue.py", "Event.wait",
                                   "Thread.join")),
    ("imports", ("<frozen importlib",)),
)


def breakdown(raw: str) -> dict[str, float]:
    """py-spy raw (collapsed) stacks -> share of samples per CATEGORIES entry, plus "other"."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the thread
        found = next((name for frame in reversed(frames) for name, marks in CATEGORIES
                      if any(m in frame for m in marks)), "other")
        counts[found] += int(count)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name in [*(n for n, _ in CATEGORIES), "other"]}


def hold(tool: Syncd) -> None:
    import shlex
    import signal

    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in tool.env.items())
    line = f"env -i {env} {shlex.join(tool.command())}"
    (Path(tool.root) / "command.sh").write_text(line + "\n")
    run.log(f"holding; run syncd with: {line}  (also in {tool.root}/command.sh)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="round trip added by bench/proxy.py (default 0: loopback)")
    p.add_argument("--profiler", choices=("cprofile", "pyspy", "none"), default="cprofile")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--top", type=int, default=25, help="functions printed per cProfile")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each scenario")
    p.add_argument("--hold", action="store_true",
                   help="after the initial sync, keep Dovecot up and print the syncd command "
                   "line and its environment (for runs by hand); ends on SIGTERM or Ctrl-C")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=str(REPO / "bench" / "work-profile"))
    args = p.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    # The parts of bench.run this needs, with its defaults.
    bench = run.Bench(run.parse_args(["--workdir", args.workdir, "--seed", str(args.seed),
                                      "--messages", str(args.messages)]))
    out_dir = Path(args.workdir) / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        bench.start()
        assert bench.dc is not None
        user = bench.corpus_user("c", args.messages)
        delay = args.latency_ms / 2000
        proxy = (measure.Proxy([bench.dc.imaps_port, bench.dc.pop3s_port], delay,
                               sys.executable, bench.logs / "proxy.log")
                 if delay else contextlib.nullcontext())
        with proxy as px:
            endpoint = direct_endpoint(bench.dc) if px is None else Endpoint(
                imaps_port=px.ports[bench.dc.imaps_port],
                pop3s_port=px.ports[bench.dc.pop3s_port], ca_file=bench.dc.ca_file)
            tool = Syncd(Path(args.workdir) / "clients" / "syncd", endpoint, user)
            logfile = bench.logs / "syncd-profile.log"
            folders = bench.folders_of(user)

            def once(scenario: str) -> None:
                walls = []
                for r in range(args.repeats):
                    target = out_dir / f"{scenario}"
                    if scenario == "initial":
                        bench.restore_server(user)
                        tool.prepare()
                    cmd = profiled(tool, args.profiler if r == 0 else "none", target)
                    time.sleep(run.PAUSE)
                    m = measure.run(cmd, env=tool.env, log=logfile, timeout=1800)
                    walls.append(m.wall)
                    run.log(f"{scenario}: {m.wall:.2f} s wall, CPU {m.cpu:.2f} s, peak RSS "
                            f"{m.peak_rss_mb:.0f} MB, rc {m.returncode}"
                            + (" (profiled)" if cmd != tool.command() else ""))
                if args.profiler == "pyspy":
                    summarize_pyspy((out_dir / scenario).with_suffix(".txt"), args.top)
                if args.profiler == "cprofile":
                    stats = pstats.Stats(str((out_dir / scenario).with_suffix(".prof")))
                    stats.sort_stats("cumulative").print_stats(args.top)
                    stats.sort_stats("tottime").print_stats(args.top)

            if "initial" in scenarios:
                once("initial")
            else:
                bench.restore_server(user)
                tool.prepare()
                measure.run(tool.command(), env=tool.env, log=logfile, timeout=1800)
            if args.hold:
                hold(tool)
                return 0
            post_server = Path(args.workdir) / "snapshots" / "server"
            post_local = Path(args.workdir) / "snapshots" / "local"
            bench.snapshot_server(user, post_server)
            snap.copy_tree(tool.root, post_local)
            if "resync" in scenarios:
                once("resync")
            if "incremental" in scenarios:
                changes = corpus.changes(args.seed, args.messages)
                walls = []
                for r in range(args.repeats):
                    bench.restore_server(user, post_server)
                    snap.copy_tree(post_local, tool.root)
                    bench.apply_changes(user, tool, changes, want_expected=False)
                    cmd = profiled(tool, args.profiler if r == 0 else "none",
                                   out_dir / "incremental")
                    time.sleep(run.PAUSE)
                    m = measure.run(cmd, env=tool.env, log=logfile, timeout=1800)
                    walls.append(m.wall)
                    run.log(f"incremental: {m.wall:.2f} s wall, CPU {m.cpu:.2f} s, rc "
                            f"{m.returncode}")
                correct, _ = verify.check(
                    bench.dc, user, folders, tool.folder_dirs(),
                    expected_count=args.messages + len(changes.new_server)
                    - len(changes.local_deletions))
                run.log(f"incremental correctness: {correct}")
                if args.profiler == "pyspy":
                    summarize_pyspy(out_dir / "incremental.txt", args.top)
                if args.profiler == "cprofile":
                    stats = pstats.Stats(str(out_dir / "incremental.prof"))
                    stats.sort_stats("cumulative").print_stats(args.top)
                    stats.sort_stats("tottime").print_stats(args.top)
            for d in (post_server, post_local):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
