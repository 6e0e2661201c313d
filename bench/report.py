"""The results as markdown (tables with syncd/peer ratios and issue 6's goals) and a PNG chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SCENARIO_TITLE = {"initial": "initial sync", "resync": "no-change resync",
                  "incremental": "incremental + sync", "pop3": "download-and-delete",
                  "outbox": "deliver the queue",
                  "resync-nopyc": "no-change, first run after install (no bytecode yet)",
                  "resync-cold": "no-change, cold page cache"}
COLORS = {"syncd": "#2a7ab9", "mbsync": "#e08a2c", "offlineimap": "#5aa05a",
          "getmail": "#9467bd", "fetchmail": "#c44e52", "floor-write": "#555555",
          "floor-read": "#aaaaaa", "floor-status": "#777777"}


def _title(scenario: str) -> str:
    base, _, at = scenario.partition("@")
    title = SCENARIO_TITLE.get(base, base)
    return f"{title} ({int(at):,})" if at else title


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _row(rows: list[dict], part: str, network: str, scenario: str, tool: str) -> dict | None:
    for r in rows:
        if (r["part"], r["network"], r["scenario"], r["tool"]) == (part, network, scenario,
                                                                     tool):
            return r
    return None


def _wall(r: dict | None) -> float | None:
    if r is None or not r["walls"] or any(rc != 0 for rc in r["returncodes"]):
        return None
    return _median(r["walls"])


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def goals(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, PASS/MISS/n/a) for each goal of issue 6 that this run measured."""
    rows = results["rows"]
    out: list[tuple[str, str, str]] = []

    def ratio_goal(label: str, part: str, network: str, scenario: str, peer: str,
                   limit: float, floor: str | None = None) -> None:
        """``floor``: a floor tool whose own ratio to the peer is shown beside syncd's (what
        the fastest client this machine and server allow reaches against the same peer)."""
        s = _wall(_row(rows, part, network, scenario, "syncd"))
        p = _wall(_row(rows, part, network, scenario, peer))
        if _row(rows, part, network, scenario, peer) is None:
            return
        if s is None or p is None:
            out.append((label, f"syncd {_fmt(s)} s, {peer} {_fmt(p)} s", "n/a"))
            return
        ratio = s / p
        measured = f"syncd {s:.2f} s / {peer} {p:.2f} s = {ratio:.2f} (limit {limit:g})"
        f = _wall(_row(rows, part, network, scenario, floor)) if floor else None
        if f is not None:
            measured += f"; {floor} alone: {f:.2f} s = {f / p:.2f} × {peer}"
        out.append((label, measured, "PASS" if ratio <= limit else "MISS"))

    networks = sorted({r["network"] for r in rows}, key=lambda n: n != "loopback")
    for net in networks:
        ratio_goal(f"initial sync ≤ mbsync ({net})", "imap", net, "initial", "mbsync", 1.0)
        ratio_goal(f"initial sync ≤ offlineimap / 5 ({net})", "imap", net, "initial",
                   "offlineimap", 0.2)
    for net in networks:
        limit = 1.0 if net == "loopback" else 0.5
        ratio_goal(f"no-change resync ≤ {limit:g} × mbsync ({net})", "imap", net, "resync",
                   "mbsync", limit)
    for net in networks:
        ratio_goal(f"incremental ≤ mbsync ({net})", "imap", net, "incremental", "mbsync", 1.0)
    rss = [max(r["rss_mb"]) for r in rows if r["part"] == "imap" and r["tool"] == "syncd"
           and r["scenario"] == "initial" and r["rss_mb"]]
    if rss:
        out.append(("peak RSS of syncd during initial sync < 100 MB", f"{max(rss):.0f} MB",
                    "PASS" if max(rss) < 100 else "MISS"))
    small = _row(rows, "scaling", "loopback", "initial", "syncd")
    big = _row(rows, "imap", "loopback", "initial", "syncd")
    if small and big and small["rss_mb"] and big["rss_mb"]:
        a, b = max(small["rss_mb"]), max(big["rss_mb"])
        out.append((f"peak RSS flat from {small['messages']} to {big['messages']} messages "
                    "(≤ 1.2×)", f"{a:.0f} MB → {b:.0f} MB ({b / a:.2f}×)",
                    "PASS" if b / a <= 1.2 else "MISS"))
    small = _row(rows, "scaling", "loopback", "resync", "syncd")
    big = _row(rows, "imap", "loopback", "resync", "syncd")
    if small and big and _wall(small) and _wall(big):
        a, b = _wall(small), _wall(big)
        assert a is not None and b is not None
        out.append((f"no-change resync nearly constant, {small['messages']} → "
                    f"{big['messages']} messages (≤ 1.5×)",
                    f"{a:.2f} s → {b:.2f} s ({b / a:.2f}×)", "PASS" if b / a <= 1.5 else "MISS"))
    out += goals21(rows, networks, ratio_goal)
    for net in networks:
        for peer in ("getmail", "fetchmail"):
            if net == "loopback":
                ratio_goal(f"POP3 ≤ {peer} ({net})", "pop3", net, "pop3", peer, 1.0)
        if net != "loopback":
            ratio_goal(f"POP3 ≤ fetchmail / 4 ({net})", "pop3", net, "pop3", "fetchmail", 0.25)
    for net in networks:  # issue 19: the queue over one connection beats one by one
        ratio_goal(f"outbox flush ≤ msmtp one by one ({net})", "outbox", net, "outbox",
                   "msmtp", 1.0)
    for d in results["daemon"]:
        net = d["network"]
        for key, label in (("append_latencies", "server APPEND → Maildir file"),
                           ("flag_latencies", "local rename → server flag")):
            p95 = _pct(d[key], 95)
            if p95 is None:
                out.append((f"daemon {label} p95 < 1 s ({net})", d["note"] or "not measured",
                            "n/a"))
            else:
                ok = p95 < 1.0 and not d["timeouts"]
                out.append((f"daemon {label} p95 < 1 s ({net})",
                            f"{p95 * 1000:.0f} ms over {len(d[key])} events"
                            + (f", {d['timeouts']} timeouts" if d["timeouts"] else ""),
                            "PASS" if ok else "MISS"))
        if d["idle_seconds"]:
            pct = 100 * d["idle_cpu"] / d["idle_seconds"]
            out.append((f"daemon idle CPU < 1% ({net})",
                        f"{pct:.2f}% ({d['idle_cpu']:.2f} CPU s in {d['idle_seconds']:.0f} s)",
                        "PASS" if pct < 1 else "MISS"))
    bad = [r for r in rows if r["correct"] != "ok" and r["tool"] == "syncd"]
    out.append(("syncd correctness: counts and flags equal on both sides, every scenario",
                "all ok" if not bad else "; ".join(
                    f"{r['network']} {r['scenario']}: {r['correct']}" for r in bad)[:300],
                "PASS" if not bad else "MISS"))
    peers = [r for r in rows if r["correct"] != "ok" and r["tool"] != "syncd"]
    if peers:
        out.append(("(peers) runs that failed or ended wrong", "; ".join(
            f"{r['tool']} {r['network']} {r['scenario']}: {r['correct']}"
            for r in peers)[:400], "n/a"))
    return out


def goals21(rows: list[dict], networks: list[str], ratio_goal: Any
            ) -> list[tuple[str, str, str]]:
    """Issue 21's goals: the floor, the stricter ratios to mbsync, 100 ms, O(folders)."""
    out: list[tuple[str, str, str]] = []
    if "loopback" in networks:
        ratio_goal("initial sync ≤ 1.3 × the writing floor (loopback)", "imap", "loopback",
                   "initial", "floor-write", 1.3)
        ratio_goal("initial sync ≤ 0.5 × mbsync (loopback)", "imap", "loopback", "initial",
                   "mbsync", 0.5, "floor-write")
        ratio_goal("no-change resync ≤ 0.6 × mbsync (loopback, warm)", "imap", "loopback",
                   "resync", "mbsync", 0.6, "floor-status")
    if "100ms" in networks:
        ratio_goal("initial sync ≤ 0.5 × mbsync (100ms)", "imap", "100ms", "initial", "mbsync",
                   0.5, "floor-write")
        ratio_goal("no-change resync ≤ 0.3 × mbsync (100ms)", "imap", "100ms", "resync",
                   "mbsync", 0.3, "floor-status")
    counts = sorted({int(r["scenario"].split("@")[1]) for r in rows
                     if r["part"] == "folders" and r["scenario"].startswith("resync@")})
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        a = _wall(_row(rows, "folders", "loopback", f"resync@{lo}", "syncd"))
        b = _wall(_row(rows, "folders", "loopback", f"resync@{hi}", "syncd"))
        if a and b:
            out.append((f"no-change resync with {hi:,} folders ≤ 3 × with {lo:,} (syncd)",
                        f"{a:.2f} s → {b:.2f} s ({b / a:.2f}×)",
                        "PASS" if b / a <= 3 else "MISS"))
    return out


def _table(rows: list[dict], part: str, network: str) -> list[str]:
    lines = [
        "| scenario | tool | runs | wall s (median) | msgs/s | MB/s | peak RSS MB | CPU s "
        "| syncd/tool (wall) | correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    selected = [r for r in rows if r["part"] == part and r["network"] == network]
    for r in selected:
        wall = _wall(r)
        syncd = _wall(_row(rows, part, network, r["scenario"], "syncd"))
        ratio = "–" if r["tool"] == "syncd" or wall is None or syncd is None \
            else f"{syncd / wall:.2f}"
        msgs = "–" if wall is None else f"{r['messages'] / wall:,.0f}"
        mbs = "–" if wall is None or not r["bytes"] else f"{r['bytes'] / 1e6 / wall:.1f}"
        correct = r["correct"] if r["correct"] else "–"
        if r["note"]:
            correct += f" ({r['note']})"
        if r["returncodes"] and any(rc != 0 for rc in r["returncodes"]):
            correct = f"exit {r['returncodes'][-1]}; " + correct
        runs = len(r["walls"])
        spread = ""
        if runs > 1:
            spread = f" ({min(r['walls']):.2f}–{max(r['walls']):.2f})"
        lines.append(
            f"| {_title(r['scenario'])} | {r['tool']} | {runs} "
            f"| {_fmt(wall)}{spread} | {msgs} | {mbs} "
            f"| {_fmt(max(r['rss_mb']) if r['rss_mb'] else None, 0)} "
            f"| {_fmt(_median(r['cpus']), 1)} | {ratio} | {correct} |")
    return lines


def markdown(results: dict[str, Any], png_name: str) -> str:
    info = results["info"]
    args = info["args"]
    rows = results["rows"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    imap_rows = [r for r in rows if r["part"] == "imap" and r["scenario"] == "initial"]
    corpus_mb = imap_rows[0]["bytes"] / 1e6 if imap_rows else 0
    out = [
        f"# syncd benchmark: {info['date']} on {info['host']}",
        "",
        f"`python -m bench.run {' '.join(_argv(args))}` — {info['cpus']} CPUs, Linux "
        f"{info['kernel']}, Python {info['python']}, Dovecot {info.get('dovecot', '?')}; "
        f"{versions}. syncd at commit {info.get('commit', '?')}. The whole run took "
        f"{info['duration'] / 60:.1f} min.",
        "",
        f"Corpus: {args['messages']:,} messages, {corpus_mb:,.0f} MB as stored in a Maildir, "
        "over INBOX, Archive, Sent, Lists/python, Lists/rust (under a \\Noselect parent) and "
        "Überweisungen; ~60% 2-8 KB text, ~30% 10-60 KB multipart/alternative, ~10% 100 KB-2 MB "
        "with an attachment; ~70% \\Seen, some \\Answered and \\Flagged (bench/corpus.py, "
        f"seed {args['seed']}). Incremental: "
        "200 new server messages + 1,000 server flag changes + 500 local flag changes + 100 "
        "local deletions (scaled down below 5,000 messages), then one sync. MB/s counts Maildir "
        "bytes; msgs/s for a no-change resync is messages checked per second; for incremental, "
        "changes per second. Wall time is the median of the runs (range in brackets); peak "
        "RSS is the maximum over the runs. \"syncd/tool\" < 1 means syncd was faster. The "
        "20ms and 100ms rows go through bench/proxy.py, which delays each direction by half "
        "the round trip. syncd is the pip-installed one (bench/install.py) unless the "
        "arguments say --syncd editable; floor-read, floor-write and floor-status are "
        "bench/floor.py (bench/README.md).",
        "",
        f"![chart]({png_name})",
        "",
        f"![time against mailbox size]({png_name.removesuffix('.png')}-sizes.png)",
        "",
        "## Goals (issues 6 and 21)",
        "",
        "| goal | measured | result |",
        "|---|---|---|",
    ]
    for goal, measured, verdict in goals(results):
        mark = {"PASS": "PASS", "MISS": "**MISS**", "n/a": "n/a"}[verdict]
        out.append(f"| {goal} | {measured} | {mark} |")
    networks = sorted({r["network"] for r in rows}, key=lambda n: n != "loopback")
    for part, title in (("imap", "IMAP ↔ Maildir"),
                        ("start", "Start-up: a no-change resync started cold (warm: the "
                                  "no-change rows above)"),
                        ("pop3", "POP3 download-and-delete"),
                        ("folders", "O(folders): 5 messages per folder"),
                        ("sizes", "Initial sync against mailbox size"),
                        ("scaling", "syncd at a smaller size (scaling)"),
                        ("outbox", "Outbox: `syncd outbox flush` (one connection, pipelined) "
                                   "against msmtp once per message")):
        for net in networks:
            if any(r["part"] == part and r["network"] == net for r in rows):
                suffix = {"pop3": f", {args['pop3_messages']:,} messages",
                          "outbox": f", {args.get('outbox_messages', 0):,} messages"
                          }.get(part, "")
                out += ["", f"## {title}: {net}{suffix}", "", *_table(rows, part, net)]
    if results["daemon"]:
        out += ["", "## syncd daemon (`syncd run`)", "",
                "Server APPEND (another IMAP session) until the file is in the Maildir; local "
                "rename (\\Flagged toggled) until the server reports the flag (polled every "
                "5 ms). Events are sequential, 100 ms apart, after two warm-up events.", "",
                "| network | events | APPEND→file p50 | p95 | rename→flag p50 | p95 | timeouts "
                "| idle CPU | RSS MB | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for d in results["daemon"]:
            a, f = d["append_latencies"], d["flag_latencies"]
            ms = (lambda v: "–" if v is None else f"{v * 1000:.0f} ms")  # noqa: E731
            idle = (f"{100 * d['idle_cpu'] / d['idle_seconds']:.2f}% over "
                    f"{d['idle_seconds']:.0f} s" if d["idle_seconds"] else "–")
            out.append(f"| {d['network']} | {len(a)}/{len(f)} | {ms(_pct(a, 50))} "
                       f"| {ms(_pct(a, 95))} | {ms(_pct(f, 50))} | {ms(_pct(f, 95))} "
                       f"| {d['timeouts']} | {idle} | {d['rss_mb']:.0f} | {d['note']} |")
    for note in info.get("notes", []):
        out += ["", f"> {note}"]
    if results.get("notes_md"):
        out += ["", results["notes_md"].strip()]
    out.append("")
    return "\n".join(out)


def _argv(args: dict[str, Any]) -> list[str]:
    parts = [f"--messages {args['messages']}", f"--peers {','.join(args['tools'][1:]) or '-'}",
             f"--repeats {args['repeats']}"]
    if args.get("quick"):
        parts.insert(0, "--quick")
    if args.get("no_latency"):
        parts.append("--no-latency")
    if args.get("skip"):
        parts.append(f"--skip {','.join(args['skip'])}")
    if args.get("networks"):
        parts.append(f"--networks {','.join(args['networks'])}")
    if args.get("syncd") == "editable":
        parts.append("--syncd editable")
    return parts


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    networks = sorted({r["network"] for r in rows if r["part"] in ("imap", "pop3")},
                      key=lambda n: n != "loopback")
    panels = [
        ("imap", "initial", "Initial sync: MB/s (higher is better)", "mbs"),
        ("imap", "resync", "No-change resync: seconds", "wall"),
        ("imap", "incremental", "Incremental: seconds", "wall"),
        ("imap", "initial", "Initial sync: peak RSS MB", "rss"),
        ("pop3", "pop3", "POP3 download-and-delete: seconds", "wall"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = COLORS
    for ax, (part, scenario, title, metric) in zip(axes.flat, panels, strict=False):
        tools = []
        for r in rows:
            if r["part"] == part and r["scenario"] == scenario and r["tool"] not in tools:
                tools.append(r["tool"])
        width = 0.8 / max(1, len(tools))
        for k, tool in enumerate(tools):
            values, labels = [], []
            for net in networks:
                r = _row(rows, part, net, scenario, tool)
                wall = _wall(r)
                labels.append("failed" if r is not None and wall is None else "")
                if r is None or wall is None:
                    values.append(0.0)
                elif metric == "mbs":
                    values.append(r["bytes"] / 1e6 / wall)
                elif metric == "rss":
                    values.append(max(r["rss_mb"]))
                else:
                    values.append(wall)
            xs = [i + (k - (len(tools) - 1) / 2) * width for i in range(len(networks))]
            bars = ax.bar(xs, values, width, label=tool, color=colors.get(tool))
            for bar, v, label in zip(bars, values, labels, strict=True):
                ax.annotate(label or f"{v:.3g}",
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(networks)), networks)
        ax.set_title(title, fontsize=10)
        if tools:
            ax.legend(fontsize=8)
    ax = axes.flat[5]
    daemon = results["daemon"]
    if daemon:
        labels, p50, p95 = [], [], []
        for d in daemon:
            for key, name in (("append_latencies", "APPEND→file"),
                              ("flag_latencies", "rename→flag")):
                labels.append(f"{name}\n{d['network']}")
                p50.append(1000 * (_pct(d[key], 50) or 0))
                p95.append(1000 * (_pct(d[key], 95) or 0))
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50", color="#2a7ab9")
        ax.bar([x + 0.2 for x in xs], p95, 0.4, label="p95", color="#9ecae1")
        ax.axhline(1000, color="#c44e52", lw=1, ls="--", label="goal (p95)")
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_title("syncd daemon latency: ms", fontsize=10)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    info = results["info"]
    fig.suptitle(f"syncd benchmark, {info['args']['messages']:,} messages — {info['date']}, "
                 f"{info['host']}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def size_points(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """tool -> [(messages, initial sync wall s)] on loopback, from the sizes part and the
    IMAP part's initial sync (the main size), sorted by size."""
    points: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["network"] != "loopback":
            continue
        if not (r["part"] == "sizes" or (r["part"] == "imap" and r["scenario"] == "initial")):
            continue
        wall = _wall(r)
        if wall is not None:
            points.setdefault(r["tool"], {})[r["messages"]] = wall
    return {tool: sorted(by_size.items()) for tool, by_size in points.items()}


def size_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for tool, pts in size_points(results["rows"]).items():
        if tool == "offlineimap":
            continue  # an order of magnitude above the rest: it would flatten them
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=tool, color=COLORS.get(tool))
    ax.set_xlabel("messages (bench corpus, 6 folders)")
    ax.set_ylabel("initial sync, seconds (loopback)")
    ax.set_title(f"Initial sync against mailbox size — {results['info']['date']}, "
                 f"{results['info']['host']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, stem: str) -> Path:
    """results -> <stem>.json, .md and .png in out_dir; returns the .md path."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    chart(results, out_dir / f"{stem}.png")
    size_chart(results, out_dir / f"{stem}-sizes.png")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(results, png_name=f"{stem}.png"))
    return md


def main(argv: list[str] | None = None) -> int:
    """Regenerate the .md and .png of a results .json (e.g. after adding notes)."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("json", type=Path)
    p.add_argument("--notes", type=Path, help="markdown appended to the report (kept in the json)")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    if args.notes is not None:
        results["notes_md"] = args.notes.read_text()
    md = write(results, args.json.parent, args.json.stem)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
