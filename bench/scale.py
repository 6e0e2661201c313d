"""Issue 21's "a million messages": N accounts of small messages in ONE `syncd run`.

    .venv/bin/python -m bench.scale [--quick] [--accounts 20] [--messages 50000]
                                    [--idle-minutes 30] [--poll-interval 300]

Run from the repository root, as root (the private Dovecot of bench/run.py switches users).
One corpus of small messages (bench/corpus.py ``build_small``, about 2 KB each, over the
corpus's 6 folders) is seeded once and cached as a pristine snapshot; every account is a
Dovecot user restored from it by hard links. Then one daemon syncs all accounts from empty
Maildirs, and stays idle (polls and IDLE running) while it is watched from /proc.

Measured (bench/scale_probe.py): peak RSS of the whole daemon over the first sync (VmHWM, and
its VmRSS plus that of the programs it runs, sampled every 0.2 s), the first sync's wall time;
then every --sample-seconds of the idle phase RSS, CPU seconds, wake-ups (voluntary context
switches of every thread), threads and open files; poll rounds (from syncd's status file); the
state files' bytes per message after the stop, and one account's state halved (linearity).
Output: bench/results/<date>-scale.{md,json} (a --quick run: under the work dir's results/).
Work dir: bench/work-scale/ (git-ignored), so it can run beside `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import run, scale_probe, scale_report
from bench.tools import REPO, SYNCD
from tests.support.dovecot import User

FIRST_SYNC_SAMPLE = 0.2  # seconds between RSS samples during the first sync


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="4 accounts x 2,000 messages, 2 minutes idle, polls every 30 s")
    p.add_argument("--accounts", type=int, help="accounts in the daemon (default 20)")
    p.add_argument("--messages", type=int, help="messages per account (default 50000)")
    p.add_argument("--idle-minutes", type=float, help="idle phase (default 30)")
    p.add_argument("--poll-interval", type=float,
                   help="each account's poll_interval in seconds (default 300, syncd's own)")
    p.add_argument("--sample-seconds", type=float, help="idle sampling step (default 60)")
    p.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the daemon (repeatable; experiments)")
    p.add_argument("--first-sync-timeout", type=float, default=4 * 3600.0)
    p.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    p.add_argument("--workdir", default=str(REPO / "bench" / "work-scale"))
    p.add_argument("--results-dir", default=None,
                   help="where the .md/.json go (default bench/results; quick: the work dir's "
                   "results/)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"accounts": 4 if q else 20, "messages": 2000 if q else 50_000,
                "idle_minutes": 2.0 if q else 30.0, "poll_interval": 30.0 if q else 300.0,
                "sample_seconds": 10.0 if q else 60.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.results_dir is None:
        args.results_dir = str(Path(args.workdir) / "results" if q
                               else REPO / "bench" / "results")
    return args


def account_name(k: int) -> str:
    return f"a{k:02d}"


def write_config(root: Path, bench: run.Bench, users: list[User], poll: float) -> Path:
    """One config, every account on the private Dovecot (implicit TLS, the fixture CA)."""
    assert bench.dc is not None
    lines = ["general:", f"  maildir_root: {root / 'Mail'}", f"  state_dir: {root / 'state'}",
             "accounts:"]
    for k, user in enumerate(users):
        lines += [f"  {account_name(k)}:", "    protocol: imap", "    host: 127.0.0.1",
                  f"    port: {bench.dc.imaps_port}", "    tls: implicit",
                  f"    tls_ca_file: {bench.dc.ca_file}", f"    username: {user.name}",
                  f'    password_command: "printf {user.password}"', "    layout: verbatim",
                  f"    poll_interval: {poll:g}s"]
    config = root / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


def prepare_accounts(bench: run.Bench, args: argparse.Namespace) -> list[User]:
    """The small corpus, seeded once, restored (hard links) into one Dovecot user each."""
    base = bench.corpus_user("s", args.messages)
    pristine = bench.work / "pristine" / base.name
    users = []
    for k in range(args.accounts):
        user = bench._user(f"scale{k:02d}")
        bench.restore_server(user, pristine)
        users.append(user)
    run.log(f"{args.accounts} accounts of {args.messages} messages "
            f"({bench.corpus_bytes[base.name] / 1e6:.0f} MB each) restored")
    return users


class FirstSyncWatch:
    """Samples the daemon's RSS during its first sync (the peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mb = 0.0
        self.timeline: list[tuple[float, float, int]] = []  # (t, RSS MB, threads) each second
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FirstSyncWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._done.wait(FIRST_SYNC_SAMPLE):
            s = scale_probe.sample(self.pid, t0)
            self.peak_rss_mb = max(self.peak_rss_mb, s.rss_mb, s.hwm_mb)
            if not self.timeline or s.t - self.timeline[-1][0] >= 1.0:
                self.timeline.append((s.t, s.rss_mb, s.threads))


def wait_first_sync(proc: subprocess.Popen, state_dir: Path, accounts: list[str],
                    since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"syncd run exited with {proc.returncode}")
        done = {a for a, t in scale_probe.last_syncs(state_dir).items() if t >= since}
        if done >= set(accounts):
            return
        if time.monotonic() - last_report > 60:
            run.log(f"  first sync: {len(done & set(accounts))}/{len(accounts)} accounts done")
            last_report = time.monotonic()
        time.sleep(0.5)
    raise RuntimeError("the daemon's first sync did not finish in time")


def idle_phase(pid: int, state_dir: Path, args: argparse.Namespace) -> dict:
    """Sample the idle daemon every --sample-seconds for --idle-minutes; count poll rounds."""
    t0 = time.monotonic()
    samples = [scale_probe.sample(pid, t0)]
    seen = scale_probe.last_syncs(state_dir)
    rounds = 0
    counted = [0]  # poll rounds (account syncs) by each sample
    end = t0 + args.idle_minutes * 60
    while time.monotonic() < end:
        time.sleep(min(args.sample_seconds, max(0.0, end - time.monotonic())))
        samples.append(scale_probe.sample(pid, t0))
        now = scale_probe.last_syncs(state_dir)
        rounds += sum(1 for a, t in now.items() if t > seen.get(a, 0.0))
        counted.append(rounds)
        seen = now
        s = samples[-1]
        run.log(f"  idle {s.t:.0f} s: RSS {s.rss_mb:.1f} MB, CPU {s.cpu_s:.2f} s, "
                f"wake-ups {s.wakeups}, threads {s.threads}, poll rounds {rounds}")
    return {"samples": [dict(s.as_dict(), rounds=r) for s, r in zip(samples, counted,
                                                                      strict=True)],
            "poll_rounds": rounds}


def stop(proc: subprocess.Popen) -> float:
    """SIGTERM the daemon (started here, its own session); seconds it took to exit."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


def run_daemon(bench: run.Bench, users: list[User], args: argparse.Namespace) -> dict:
    root = bench.work / "client"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    config = write_config(root, bench, users, args.poll_interval)
    state_dir = root / "state"
    accounts = [account_name(k) for k in range(len(users))]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(root),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           **dict(kv.split("=", 1) for kv in args.daemon_env)}
    out: dict = {"accounts": accounts}
    started = time.time()
    t0 = time.monotonic()
    with open(bench.logs / "scale-daemon.log", "wb") as log_file:
        proc = subprocess.Popen([str(SYNCD), "--config", str(config), "run"], env=env,
                                stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        run.log(f"syncd run: {len(accounts)} accounts, pid {proc.pid}")
        with FirstSyncWatch(proc.pid) as watch:
            wait_first_sync(proc, state_dir, accounts, started, args.first_sync_timeout)
        out["first_sync_s"] = time.monotonic() - t0
        out["first_sync_peak_rss_mb"] = watch.peak_rss_mb
        out["first_sync_timeline"] = watch.timeline
        run.log(f"first sync done in {out['first_sync_s']:.0f} s, peak RSS "
                f"{watch.peak_rss_mb:.1f} MB")
        out["local_messages"] = {a: scale_probe.local_messages(root / "Mail" / a)
                                 for a in accounts}
        out.update(idle_phase(proc.pid, state_dir, args))
    except (RuntimeError, OSError) as exc:
        out["error"] = str(exc)
        run.log(f"  failed: {exc}")
    finally:
        out["stop_s"] = stop(proc)
        out["returncode"] = proc.returncode
    # After the stop: the daemon closed its states, so no WAL is left (that is the size
    # a user's disk holds; the halving shows how it follows the message count).
    out["state"] = {a: {"bytes": scale_probe.state_bytes(state_dir, a),
                        "messages": scale_probe.state_messages(state_dir, a)}
                    for a in accounts}
    with contextlib.suppress(OSError, sqlite3.Error):
        out["state_halved"] = scale_probe.state_halved(state_dir / f"{accounts[0]}.sqlite3",
                                                       root)
    return out


def machine_info(args: argparse.Namespace, argv: list[str]) -> dict:
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(),
            "cpus": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(), "commit": run._git_describe(),
            "args": vars(args), "argv": argv}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.scale: must run as root (the private Dovecot switches users)")
        return 2
    bench = run.Bench(run.parse_args(["--workdir", args.workdir, "--seed", str(args.seed),
                                      "--messages", str(args.messages)]))
    info = machine_info(args, sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    results: dict = {"info": info}
    try:
        bench.start()
        users = prepare_accounts(bench, args)
        info["corpus_bytes_per_account"] = next(iter(bench.corpus_bytes.values()))
        results["daemon"] = run_daemon(bench, users, args)
    finally:
        bench.stop()
    info["duration"] = time.monotonic() - started
    stem = f"{dt.date.today().isoformat()}-scale"
    md = scale_report.write(results, Path(args.results_dir), stem)
    print(md.read_text())
    print(f"written: {md} and .json ({info['duration'] / 60:.1f} min)")
    return 0 if all(v == "PASS" for _, _, v in scale_report.goals(results)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
