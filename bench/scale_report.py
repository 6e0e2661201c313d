"""The scale bench's goals (issue 21, "A million messages") and its markdown report.

"CPU per poll round" and "wake-ups per minute" are split: between polls (the sampling windows
in which no account synced) and what one poll round adds on top (the other windows' excess
over that rate, divided by the rounds in them).

Flat means: the last third of the idle phase against its first third. RSS: the peak of
each third (as the soak test compares, so that where the polls fall does not matter) may grow
by at most 5 %. The CPU and wake-ups between polls, and what a poll round costs, by at most
25 % plus a little absolute slack (timer-tick resolution of CPU time, a few wake-ups more);
the wake-ups of a poll round, which vary much from round to round, may not double.

Linear state: one account's state, copied after the daemon stopped and vacuumed,
then vacuumed again with every second message row deleted: the bytes a message adds are
within 0.5-1.5x of the bytes per message of the whole.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

RSS_LIMIT_MB = 250.0
STATE_LIMIT = 1024  # bytes per message
RSS_GROWTH = 0.05
RATE_GROWTH, CPU_SLACK, WAKE_SLACK = 0.25, 0.05, 30.0
ROUND_CPU_SLACK, ROUND_WAKE_SLACK = 0.01, 30.0
# Wake-ups of one poll round vary 40-130 from round to round (which threads the sync wakes,
# whether a kept-open connection had to be made anew): only a doubling counts.
ROUND_WAKE_GROWTH = 1.0


def _windows(samples: list[dict]) -> list[dict[str, float]]:
    """Per interval between two samples: CPU s/min, wake-ups/min, mean RSS."""
    out = []
    for a, b in itertools.pairwise(samples):
        minutes = (b["t"] - a["t"]) / 60
        if minutes <= 0:
            continue
        out.append({"cpu": (b["cpu_s"] - a["cpu_s"]) / minutes,
                    "wake": (b["wakeups"] - a["wakeups"]) / minutes,
                    "rss": b["rss_mb"], "minutes": minutes,
                    "rounds": b.get("rounds", 0) - a.get("rounds", 0)})
    return out


def _costs(w: list[dict[str, float]]) -> dict[str, float | None]:
    """Over windows ``w``: between polls (windows in which no account synced) CPU s/min and
    wake-ups/min; and what one poll round (one account's sync) adds on top: CPU s, wake-ups."""
    quiet = [x for x in w if x["rounds"] == 0]
    out: dict[str, float | None] = {"quiet_cpu": None, "quiet_wake": None,
                                    "round_cpu": None, "round_wake": None,
                                    "rss_max": max((x["rss"] for x in w), default=None)}
    if quiet:
        out["quiet_cpu"] = statistics.mean(x["cpu"] for x in quiet)
        out["quiet_wake"] = statistics.mean(x["wake"] for x in quiet)
    busy = [x for x in w if x["rounds"]]
    rounds = sum(x["rounds"] for x in busy)
    if busy and quiet:
        extra_cpu = sum((x["cpu"] - out["quiet_cpu"]) * x["minutes"] for x in busy)
        extra_wake = sum((x["wake"] - out["quiet_wake"]) * x["minutes"] for x in busy)
        out["round_cpu"], out["round_wake"] = extra_cpu / rounds, extra_wake / rounds
    return out


def _thirds(samples: list[dict]) -> tuple[dict, dict] | None:
    """The costs of the first and of the last third of the idle phase's windows."""
    w = _windows(samples)
    if len(w) < 3:
        return None
    k = len(w) // 3
    return _costs(w[:k]), _costs(w[-k:])


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the goals and the table use."""
    d = results.get("daemon", {})
    samples = d.get("samples", [])
    s: dict[str, Any] = {"messages": sum(d.get("local_messages", {}).values())}
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        seconds = last["t"] - first["t"]
        cpu = last["cpu_s"] - first["cpu_s"]
        s.update(idle_seconds=seconds, idle_cpu_s=cpu, idle_cpu_pct=100 * cpu / seconds,
                 wakeups_per_min=(last["wakeups"] - first["wakeups"]) / (seconds / 60),
                 poll_rounds=d.get("poll_rounds", 0),
                 cpu_per_round=cpu / d["poll_rounds"] if d.get("poll_rounds") else None,
                 rss_start=first["rss_mb"], rss_end=last["rss_mb"],
                 rss_max=max(x["rss_mb"] for x in samples),
                 threads=(first["threads"], last["threads"]), fds=(first["fds"], last["fds"]))
    s["thirds"] = _thirds(samples)
    s.update({k: v for k, v in _costs(_windows(samples)).items() if k != "rss_max"})
    states = d.get("state", {})
    per = [v["bytes"] / v["messages"] for v in states.values() if v.get("messages")]
    s["state_bytes"] = sum(v["bytes"] for v in states.values())
    s["state_per_message"] = max(per) if per else None
    halved = d.get("state_halved")
    if halved and halved["messages"] > halved["kept"]:
        s["state_vacuumed_per_message"] = halved["bytes"] / halved["messages"]
        s["state_marginal"] = ((halved["bytes"] - halved["kept_bytes"])
                               / (halved["messages"] - halved["kept"]))
    return s


def goals(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/MISS/n/a)."""
    d = results.get("daemon", {})
    args = results["info"]["args"]
    s = summary(results)
    want = args["accounts"] * args["messages"]
    out: list[tuple[str, str, str]] = []
    done = s["messages"] == want and "first_sync_s" in d
    out.append(("first sync completes (every message of every account)",
                f"{s['messages']:,} of {want:,} messages" + (f"; {d['error']}" if d.get("error")
                                                             else ""),
                "PASS" if done else "MISS"))
    peak = d.get("first_sync_peak_rss_mb")
    out.append((f"peak RSS of the daemon < {RSS_LIMIT_MB:.0f} MB",
                "–" if peak is None else f"{peak:.1f} MB",
                "n/a" if peak is None else "PASS" if peak < RSS_LIMIT_MB else "MISS"))
    out += _flat_goals(s)
    out += _state_goals(s)
    return out


def _flat_goals(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    thirds = s["thirds"]
    if thirds is None:
        return [("idle cost and RSS flat", "too few idle samples", "n/a")]
    a, b = thirds
    out = [("idle RSS flat (peak of the last third <= the first's + 5 %)",
            f"{a['rss_max']:.1f} -> {b['rss_max']:.1f} MB",
            "PASS" if b["rss_max"] <= a["rss_max"] * (1 + RSS_GROWTH) else "MISS")]
    checks = [("quiet_cpu", "idle CPU between polls", "s/min", ".3f", RATE_GROWTH, CPU_SLACK),
              ("quiet_wake", "idle wake-ups between polls", "/min", ".0f", RATE_GROWTH,
               WAKE_SLACK),
              ("round_cpu", "CPU per poll round", "s", ".3f", RATE_GROWTH, ROUND_CPU_SLACK),
              ("round_wake", "wake-ups per poll round", "", ".0f", ROUND_WAKE_GROWTH,
               ROUND_WAKE_SLACK)]
    for key, label, unit, spec, growth, slack in checks:
        first, last = a[key], b[key]
        if first is None or last is None:
            out.append((f"{label} flat", "not measured in both thirds (too few windows "
                        "without, or with, a poll round)", "n/a"))
            continue
        ok = last <= first * (1 + growth) + slack
        out.append((f"{label} flat (last third vs first)",
                    f"{first:{spec}} -> {last:{spec}} {unit}".rstrip(),
                    "PASS" if ok else "MISS"))
    return out


def _state_goals(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    per = s.get("state_per_message")
    out = [(f"state < {STATE_LIMIT} bytes per message (worst account)",
            "–" if per is None else f"{per:.0f} B",
            "n/a" if per is None else "PASS" if per < STATE_LIMIT else "MISS")]
    marginal, whole = s.get("state_marginal"), s.get("state_vacuumed_per_message")
    if whole and marginal is not None:
        ratio = marginal / whole
        out.append(("state grows linearly (bytes a message adds vs bytes per message, "
                    "one account's state halved)",
                    f"{marginal:.0f} B vs {whole:.0f} B ({ratio:.2f}x)",
                    "PASS" if 0.5 <= ratio <= 1.5 else "MISS"))
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(results: dict[str, Any]) -> str:
    info, d = results["info"], results.get("daemon", {})
    args = info["args"]
    s = summary(results)
    lines = [f"# syncd at scale: {args['accounts']} accounts x {args['messages']:,} messages "
             f"in one daemon ({info['date']})", "",
             f"Machine: {info['host']}, {info['cpus']} CPUs, {info['memory_mb']:,} MB RAM, "
             f"Linux {info['kernel']}, Python {info['python']}; syncd at {info['commit']}. "
             f"Corpus: bench/corpus.py `build_small` (seed {args['seed']}), "
             f"{info.get('corpus_bytes_per_account', 0) / 1e6:.0f} MB per account. "
             f"poll_interval {args['poll_interval']:g} s, idle: [INBOX] (the default), "
             f"connections 3 (the default). Run: "
             f"`{' '.join(['.venv/bin/python -m bench.scale', *info.get('argv', [])])}` "
             f"({info['duration'] / 60:.1f} min).", "",
             "## Goals (issue 21)", "", "| goal | measured | |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goals(results)]
    lines += ["", "## Figures", "", "| | |", "|---|---|"]
    rows = [
        ("first sync (all accounts, one daemon)", f"{_fmt(d.get('first_sync_s'), '.0f')} s"),
        ("messages synced", f"{s['messages']:,}"),
        ("peak RSS during the first sync", f"{_fmt(d.get('first_sync_peak_rss_mb'), '.1f')} MB"),
        ("idle phase", f"{_fmt(s.get('idle_seconds'), '.0f')} s, "
                       f"{s.get('poll_rounds', 0)} poll rounds (account syncs)"),
        ("idle CPU", f"{_fmt(s.get('idle_cpu_s'), '.2f')} s "
                     f"({_fmt(s.get('idle_cpu_pct'), '.2f')} %)"),
        ("idle CPU per poll round (all idle CPU / rounds)",
         f"{_fmt(s.get('cpu_per_round'), '.3f')} s"),
        ("wake-ups (voluntary context switches, all threads)",
         f"{_fmt(s.get('wakeups_per_min'), '.0f')} per minute"),
        ("between polls: CPU, wake-ups", f"{_fmt(s.get('quiet_cpu'), '.3f')} s/min, "
         f"{_fmt(s.get('quiet_wake'), '.0f')} per minute"),
        ("one poll round (one account's sync) adds: CPU, wake-ups",
         f"{_fmt(s.get('round_cpu'), '.3f')} s, {_fmt(s.get('round_wake'), '.0f')}"),
        ("RSS idle: start / end / max", f"{_fmt(s.get('rss_start'), '.1f')} / "
         f"{_fmt(s.get('rss_end'), '.1f')} / {_fmt(s.get('rss_max'), '.1f')} MB"),
        ("threads, open files (idle start -> end)", f"{s.get('threads')}, {s.get('fds')}"),
        ("state files (SQLite + WAL, all accounts)", f"{s['state_bytes'] / 1e6:.1f} MB, "
         f"{_fmt(s.get('state_per_message'), '.0f')} B per message (worst account)"),
        ("daemon exit after SIGTERM", f"{_fmt(d.get('stop_s'), '.1f')} s, "
                                      f"status {d.get('returncode')}"),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Idle samples (t s, RSS MB, CPU s, wake-ups, threads):", "", "```"]
    lines += [f"{x['t']:7.0f} {x['rss_mb']:7.1f} {x['cpu_s']:8.2f} {x['wakeups']:9d} "
              f"{x['threads']:4d}" for x in d.get("samples", [])]
    lines += ["```", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results))
    return md
