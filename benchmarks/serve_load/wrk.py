"""Drive a server with wrk (a C load generator) and read its figures and the server's CPU.

One wrk run per measurement: `warmup_s` on the connections first, then a counted window of
`duration_s`. replay.lua counts the replies completed inside the window; the server's CPU time
(utime + stime of its process tree, from /proc) is read at the window's start and end. Both
edges of the window then fall in the steady state, so CPU per reply is not skewed by the
start (an idle server that has not replied yet) or the end (requests still in flight). Latency
percentiles and error counts are wrk's, over the whole run, warm-up included.

When wrk stops it drops its connections, but the server still works through what it had
accepted: up to one request per connection, which at 64 images each is seconds of work on this
machine. Left alone, that backlog would take CPU from whichever server runs next, so every run
is followed by a wait until the server is idle again.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.serve_load.payloads import Payload
from benchmarks.serve_load.procfs import tree_cpu_seconds, wait_until_idle
from benchmarks.serve_load.servers import LOOPBACK, Server

REPLAY_SCRIPT = Path(__file__).with_name("replay.lua")
SUMMARY_MARK = "serve_load-wrk "
WRK_START_S = 0.3  # wrk's own start-up (connection check, threads), before the warm-up counts
WRK_TAIL_S = 0.5  # wrk runs on past the window by at least this much


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadShape:
    threads: int
    connections: int
    warmup_s: float  # on the same connections, before the counted window
    duration_s: float  # the counted window
    timeout_s: int  # a reply slower than this is a timeout error, not a latency


@dataclass(frozen=True)
class WrkSummary:
    responses: int  # every complete reply of the run, whatever its status
    window_responses: int  # replies completed inside the counted window
    status_errors: int  # replies with a status of 400 or more (wrk's "Non-2xx or 3xx")
    socket_errors: int  # connect, read and write errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def success_share(self) -> float:
        return 1.0 - self.status_errors / self.responses if self.responses else 0.0


@dataclass(frozen=True)
class Measurement:
    scenario: str
    server: str
    images_per_request: int
    warmup_s: float
    window_s: float
    wrk: WrkSummary
    server_cpu_s: float  # over the counted window

    @property
    def requests_per_s(self) -> float:
        """Successful requests per second in the counted window."""
        return self.wrk.window_responses * self.wrk.success_share / self.window_s

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    @property
    def cpu_ms_per_request(self) -> float:
        """The server's CPU per reply in the window (errors included: they cost CPU too)."""
        replies = self.wrk.window_responses
        return 1000.0 * self.server_cpu_s / replies if replies else float("nan")

    @property
    def warmed_up(self) -> bool:
        """Whether replies were flowing when the window opened (p50 within the warm-up); if
        not, the window holds the CPU of replies it does not count."""
        return self.wrk.p50_ms <= 1000.0 * self.warmup_s

    @property
    def server_cores(self) -> float:
        """Cores the server kept busy on average: 1.0 is one core flat out."""
        return self.server_cpu_s / self.window_s


def find_wrk(name: str = "wrk") -> str:
    path = shutil.which(name)
    if path is None:
        raise WrkError(
            f"{name!r} not found on PATH: the load comes from wrk, a C load generator. "
            "Install it with `sudo apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`, "
            "or name it with --wrk PATH."
        )
    return path


def write_requests(payloads: Sequence[Payload], directory: Path) -> list[Path]:
    """One file per request, for replay.lua to read; the Host header is the loopback address."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, payload in enumerate(payloads):
        path = directory / f"request-{index}.http"
        path.write_bytes(payload.http_request(LOOPBACK))
        paths.append(path)
    return paths


def latency_ms(raw: dict[str, Any], key: str) -> float:
    """A latency figure in ms; NaN when no reply came back (wrk then says 0)."""
    return raw[key] / 1000 if raw["requests"] else float("nan")


def parse_summary(stdout: str) -> WrkSummary:
    for line in stdout.splitlines():
        if line.startswith(SUMMARY_MARK):
            raw = json.loads(line.removeprefix(SUMMARY_MARK))
            return WrkSummary(
                responses=raw["requests"],
                window_responses=raw["window_requests"],
                status_errors=raw["status_errors"],
                socket_errors=sum(
                    raw[key]
                    for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
                ),
                p50_ms=latency_ms(raw, "p50_us"),
                p90_ms=latency_ms(raw, "p90_us"),
                p99_ms=latency_ms(raw, "p99_us"),
                max_ms=latency_ms(raw, "max_us"),
            )
    raise WrkError(f"wrk printed no {SUMMARY_MARK.strip()!r} line:\n{stdout[-2000:]}")


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def measure(
    wrk: str,
    server: Server,
    scenario: str,
    images_per_request: int,
    request_files: Sequence[Path],
    shape: LoadShape,
) -> Measurement:
    """One wrk run against `server`; then wait until the server is idle again."""
    start = time.monotonic() + WRK_START_S + shape.warmup_s
    stop = start + shape.duration_s
    seconds = math.ceil(stop + WRK_TAIL_S - time.monotonic())  # wrk counts whole seconds
    argv = [
        wrk,
        f"-t{shape.threads}",
        f"-c{shape.connections}",
        f"-d{seconds}s",
        f"--timeout={shape.timeout_s}s",
        f"-s{REPLAY_SCRIPT}",
        server.url,
        "--",
        f"{start:.6f}",
        f"{stop:.6f}",
        *map(str, request_files),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sleep_until(start)
        cpu_at_start = tree_cpu_seconds(server.pid)
        sleep_until(stop)
        cpu_used = tree_cpu_seconds(server.pid) - cpu_at_start
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:  # interrupted: leave no wrk behind
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}:\n{stderr or stdout}")
    wait_until_idle(server.pid)
    summary = parse_summary(stdout)
    return Measurement(
        scenario,
        server.name,
        images_per_request,
        shape.warmup_s,
        shape.duration_s,
        summary,
        cpu_used,
    )
