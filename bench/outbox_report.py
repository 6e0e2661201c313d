"""Only the outbox part of bench.run, reported on its own as bench/results/<date>-outbox.md
and .json (see bench/outbox.py for what is measured):

    .venv/bin/python -m bench.outbox_report [--messages 1000] [--networks loopback,20ms]
                                            [--repeats 1] [--notes FILE]

Apart from bench/outbox.py because it drives bench.run, which imports that module.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

from bench.tools import REPO


def msmtp_version() -> str:
    """'1.8.23' from msmtp's first line, 'msmtp version 1.8.23'."""
    first = subprocess.run(["msmtp", "--version"], capture_output=True, text=True,
                           timeout=30).stdout.partition("\n")[0]
    return first.rsplit(" ", 1)[-1] or "?"


def outbox_markdown(results: dict, messages: int) -> str:
    """The report of an outbox-only run: bench.report's table and goal, without the corpus
    paragraph and chart of a full run (no IMAP part ran)."""
    from bench import report

    info = results["info"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    networks = ",".join(info["args"]["networks"])
    out = [f"# syncd outbox against msmtp: {info['date']} on {info['host']}", "",
           f"`python -m bench.outbox_report --messages {messages} --networks {networks} --repeats "
           f"{info['args']['repeats']}` ({messages:,} queued 2 KB "
           f"messages, bench/README.md) — {info['cpus']} CPUs, Linux {info['kernel']}, Python "
           f"{info['python']}; {versions}. syncd at commit "
           f"{info.get('commit', '?')}. The whole run took {info['duration'] / 60:.1f} min.", ""]
    out += [f"- {goal}: {measured}: {verdict}" for goal, measured, verdict
            in report.goals(results) if "outbox" in goal]
    for network in sorted({r["network"] for r in results["rows"]}, key=lambda n: n != "loopback"):
        out += ["", f"## {network}", "", *report._table(results["rows"], "outbox", network)]
    if results.get("notes_md"):
        out += ["", results["notes_md"].strip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Only the outbox part of bench.run, its report written as <date>-outbox."""
    p = argparse.ArgumentParser(prog="python -m bench.outbox_report",
                                description="syncd's outbox against msmtp (issue 19)")
    p.add_argument("--messages", type=int, default=1000, help="queued messages (default 1000)")
    p.add_argument("--networks", default="loopback,20ms",
                   help="comma-separated: loopback, 20ms (default both)")
    p.add_argument("--repeats", type=int, default=1, help="runs per tool (default 1)")
    p.add_argument("--notes", help="a markdown file appended to the report")
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    p.add_argument("--workdir", default=str(REPO / "bench" / "work"))
    args = p.parse_args(argv)
    from bench import run

    # bench.run's own report (named after the host, with a chart of the IMAP parts that did
    # not run) stays in the work dir; its .json is written before the chart.
    raw = Path(args.workdir) / "outbox-results"
    if raw.exists():
        shutil.rmtree(raw)
    run_argv = ["--peers", "", "--skip", "imap,incremental,pop3,daemon,scaling",
                "--outbox-messages", str(args.messages), "--repeats", str(args.repeats),
                "--networks", args.networks, "--workdir", args.workdir, "--results-dir", str(raw)]
    try:
        rc = run.main(run_argv + (["--notes", args.notes] if args.notes else []))
    except ImportError as exc:  # its chart needs matplotlib (the bench extra); this report not
        print(f"bench.run's chart: {exc}; the results are kept")
        rc = 0
    if rc != 0:
        return rc
    (written,) = raw.glob("*.json")
    results = json.loads(written.read_text())
    results["info"]["versions"]["msmtp"] = msmtp_version()
    out = Path(args.results_dir)
    stem = f"{dt.date.today().isoformat()}-outbox"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(outbox_markdown(results, args.messages))
    print(f"written: {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
