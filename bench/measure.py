"""Running a tool and measuring it: wall time, CPU seconds, peak RSS of its process tree.

- Wall time: from spawning the process to reaping it (start-up cost included: that is what a
  user waits for).
- CPU seconds: user + system time from ``wait4`` of the tool, which includes every descendant
  it waited for (the same number as ``resource.getrusage(RUSAGE_CHILDREN)`` deltas).
- Peak RSS: the larger of the tool's VmHWM (its own high-water mark since exec, kernel-tracked)
  and the largest sum of VmRSS over the process tree, both sampled every 20 ms from /proc (the
  sum catches helpers running side by side, e.g. fetchmail plus its MDA). Not wait4's
  ``ru_maxrss``: Linux carries the forking process's high-water mark into the child's, which
  floored every tool at this runner's own size (~60 MB) before 2026-11-27 10:10.

Only processes started here are ever signalled, by PID (or the process group made for them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measurement:
    wall: float
    cpu: float  # user + system seconds of the tree
    peak_rss_kb: int
    returncode: int
    timed_out: bool = False

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    result: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                result.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return result


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(_children(p))
    return found


def _hwm_kb(pid: int) -> int:
    """VmHWM: the peak RSS of the process's own memory since its exec."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    return sum(_rss_kb(p) for p in tree(pid))


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of running processes (for a daemon that is not reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            data = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        log: Path | None = None, timeout: float = 3600.0, stdin: bytes | None = None
        ) -> Measurement:
    """Run ``argv`` to completion and measure it. Output goes to ``log`` (appended)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        if log is not None:
            out.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
            out.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(a) for a in argv], env=dict(env) if env is not None else None, cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out, stderr=out, start_new_session=True)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        peak = hwm = 0
        done = threading.Event()
        timed_out = threading.Event()

        def sample() -> None:
            nonlocal peak, hwm
            deadline = time.monotonic() + timeout
            while not done.wait(0.02):
                peak = max(peak, tree_rss_kb(proc.pid))
                hwm = max(hwm, _hwm_kb(proc.pid))
                if time.monotonic() > deadline and not timed_out.is_set():
                    timed_out.set()
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group made for this tool

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Not wait4's ru_maxrss: Linux carries the forking process's high-water mark across
        # fork and exec into it, so every tool "peaked" at least at this runner's own size.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Measurement(
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            peak_rss_kb=max(peak, hwm),
            returncode=proc.returncode,
            timed_out=timed_out.is_set(),
        )
    finally:
        if log is not None:
            out.close()


class Proxy:
    """The latency proxy (bench/proxy.py) as a child process: ``ports[target] -> listen``."""

    def __init__(self, targets: Sequence[int], delay: float, python: str, log: Path) -> None:
        self.targets = list(targets)
        self.delay = delay
        self.python = python
        self.log = log
        self.ports: dict[int, int] = {}
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Proxy:
        repo = Path(__file__).resolve().parents[1]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [self.python, "-m", "bench.proxy", "--delay", str(self.delay),
                 *map(str, self.targets)],
                cwd=repo, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line == "READY":
                break
            target, listen = line.split()
            self.ports[int(target)] = int(listen)
        if len(self.ports) != len(self.targets):
            self.__exit__()
            raise RuntimeError(f"the latency proxy did not start (see {self.log})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
