"""What /proc says about a server: CPU seconds and resident memory of its process tree.

The tree is the server's process and every descendant (uvicorn's worker processes when
VAE_WORKERS > 1); a process's /proc/<pid>/stat already sums all its threads (the inference
thread, the thread pools). CPU time is counted only for the processes alive at each reading,
so a child that exits between two readings takes its CPU with it; the servers measured here
keep theirs for their whole life.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of `pid`: each thread lists the children it started."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree = [pid]
    for child in children(pid):
        tree += process_tree(child)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 when it is gone."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def stat_cpu_seconds(stat: str) -> float:
    """utime + stime from the text of a /proc/<pid>/stat file."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    # Then field 3 (state) is at index 0, utime (field 14) at 11 and stime (field 15) at 12.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(member) for member in process_tree(pid))


def wait_until_idle(
    pid: int,
    below_cores: float = 0.05,
    window_s: float = 0.25,
    quiet_windows: int = 2,
    timeout_s: float = 120.0,
) -> float:
    """Wait until the tree's CPU use stays under `below_cores` for `quiet_windows` windows in a
    row (one could be a busy process that the crowded machine did not schedule); return the
    seconds waited (`timeout_s` when it never did). An idle server here uses ~0."""
    started = time.monotonic()
    before = tree_cpu_seconds(pid)
    quiet = 0
    while time.monotonic() - started < timeout_s:
        time.sleep(window_s)
        now = tree_cpu_seconds(pid)
        quiet = quiet + 1 if (now - before) / window_s < below_cores else 0
        if quiet == quiet_windows:
            return time.monotonic() - started
        before = now
    return timeout_s


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB, 0 when it is gone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(member) for member in process_tree(pid))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"
