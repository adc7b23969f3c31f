"""Drive a server with wrk (a C load generator) and read its figures and the server's CPU.

wrk replays a pool of pre-built requests through replay.lua, whose `done` hook prints one JSON
line. The server's CPU time (utime + stime of its process tree, from /proc) is read just
before wrk starts and just after it exits.

When wrk stops it drops its connections, but the server still works through what it had
accepted: up to one request per connection, which at 64 images each is seconds of work on this
machine. Left alone, that backlog delays the next run's first replies and takes CPU from
whichever server runs next. So every run (the warm-up too) is followed by a wait until the
server is idle again, and each measured run starts from an idle server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.serve_load.payloads import Payload
from benchmarks.serve_load.procfs import tree_cpu_seconds, wait_until_idle
from benchmarks.serve_load.servers import LOOPBACK, Server

REPLAY_SCRIPT = Path(__file__).with_name("replay.lua")
SUMMARY_MARK = "serve_load-wrk "


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadShape:
    threads: int
    connections: int
    duration_s: int  # wrk counts whole seconds
    timeout_s: int  # a reply slower than this is a timeout error, not a latency


@dataclass(frozen=True)
class WrkSummary:
    duration_s: float
    responses: int  # every complete response, whatever its status
    status_errors: int  # responses with a status of 400 or more (wrk's "Non-2xx or 3xx")
    socket_errors: int  # connect, read and write errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors


@dataclass(frozen=True)
class Measurement:
    scenario: str
    server: str
    images_per_request: int
    wrk: WrkSummary
    server_cpu_s: float

    @property
    def requests_per_s(self) -> float:
        """Successful requests per second."""
        return (self.wrk.responses - self.wrk.status_errors) / self.wrk.duration_s

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    @property
    def cpu_ms_per_request(self) -> float:
        """The server's CPU per answered request (errors included: they cost CPU too)."""
        return 1000.0 * self.server_cpu_s / self.wrk.responses if self.wrk.responses else 0.0

    @property
    def server_cores(self) -> float:
        """Cores the server kept busy on average: 1.0 is one core flat out."""
        return self.server_cpu_s / self.wrk.duration_s


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
                duration_s=raw["duration_us"] / 1e6,
                responses=raw["requests"],
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


def drive(wrk: str, server: Server, request_files: Sequence[Path], shape: LoadShape) -> WrkSummary:
    """One wrk run, then a wait until the server has finished what wrk left behind."""
    summary = run_wrk(wrk, server.url, request_files, shape)
    wait_until_idle(server.pid)
    return summary


def run_wrk(wrk: str, url: str, request_files: Sequence[Path], shape: LoadShape) -> WrkSummary:
    argv = [
        wrk,
        f"-t{shape.threads}",
        f"-c{shape.connections}",
        f"-d{shape.duration_s}s",
        f"--timeout={shape.timeout_s}s",
        f"-s{REPLAY_SCRIPT}",
        url,
        "--",
        *map(str, request_files),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}:\n{done.stderr or done.stdout}")
    return parse_summary(done.stdout)


def measure(
    wrk: str,
    server: Server,
    scenario: str,
    images_per_request: int,
    request_files: Sequence[Path],
    shape: LoadShape,
) -> Measurement:
    cpu_before = tree_cpu_seconds(server.pid)
    summary = run_wrk(wrk, server.url, request_files, shape)
    cpu_used = tree_cpu_seconds(server.pid) - cpu_before
    wait_until_idle(server.pid)
    return Measurement(scenario, server.name, images_per_request, summary, cpu_used)
