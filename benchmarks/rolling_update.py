"""A rolling update on this machine: two replicas behind HAProxy, replaced one at a time under load.

Two replicas of `python -m app` listen on loopback ports behind HAProxy (Debian `haproxy`),
which health-checks `/readyz` every `--check-ms` like a Kubernetes Service whose endpoints
follow readiness. `wrk` sends one-PNG `/anomaly-score` requests through the proxy at a steady
rate (`--rate`: each of `--connections` connections waits between requests, wrk's Lua `delay`)
in three phases: before, during and after a rolling update that replaces each replica in turn
(SIGTERM, wait for the exit, start a new process on the same port, wait until it answers
`/readyz` 200 and the proxy has it back in rotation). Failed = non-2xx replies plus socket
errors (connect, read, write, timeout).

Before that, full-speed throughput (`--throughput-connections`, no delay) straight to one
replica, through the proxy to one, and through the proxy to two, with each replica's CPU per
request from /proc and its resident memory (VmRSS) after start-up and after the load. On two
cores this shows the proxy's cost more than scaling: the load generator, the proxy and both
replicas share the same two cores.

The proxy retries nothing by default (`--retry-on none`), like a Kubernetes Service: a request
sent to a replica that has closed its port before the health check noticed fails.
The drain the manifests rely on (`VAE_DRAIN_SECONDS`: `/readyz` 503 at once on SIGTERM while
requests are still served, then exit) is what makes "failed" zero; pass it with `--env`:

    python -m benchmarks.rolling_update [--model models/model.pt] [--rate 150]
        [--phase-seconds 10] [--env VAE_DRAIN_SECONDS=2] [--output rolling.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGITS = REPO_ROOT / "tests" / "data" / "mnist_sample.npz"
READY_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 60.0
WRK_TIMEOUT = "10s"

# wrk calls done() once at the end: one JSON line the benchmark parses (microseconds).
WRK_SCRIPT = """
local file = io.open("{body_path}", "rb")
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "{content_type}"
{delay}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"completed": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

HAPROXY_CONFIG = """
global
    maxconn 2048
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # With --retry-on conn-failure, a refused connection goes to the other replica (as some
    # ingresses do); the default, none, retries nothing, like a Kubernetes Service.
    option redispatch
    retries 3
    retry-on {retry_on}

frontend service
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server inter {check_ms}ms fall 1 rise 1
{servers}
"""


# --- the request ----------------------------------------------------------------------------


def one_png_request(index: int = 0) -> tuple[bytes, str]:
    """A multipart body with one MNIST test digit as the `files` part, and its content type."""
    pixels = np.load(DIGITS)["images"][index]
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    body = head.encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (and its reaped children) from /proc, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str) -> float:
    """A /proc/<pid>/status memory line: VmRSS (resident now) or VmHWM (peak resident)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Replica:
    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.log_dir / f"{self.name}.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name} exited before it was ready:\n{log[-2000:]}")
            if http_status(f"http://127.0.0.1:{self.port}/readyz") == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} was not ready after {READY_TIMEOUT_S:.0f} s")

    def terminate_and_wait(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate_and_wait()


@dataclass
class Proxy:
    port: int
    socket_path: Path
    process: subprocess.Popen[bytes]

    def server_states(self) -> dict[str, str]:
        """Each backend server's state as HAProxy sees it (UP, DOWN, ...), from `show stat`."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = [line.split(",") for line in data.decode().splitlines() if line]
        header = rows[0]
        name, status = header.index("svname"), header.index("status")
        return {row[name]: row[status] for row in rows[1:] if row[0] == "replicas"}

    def wait_in_rotation(self, server: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_states().get(server, "").startswith("UP"):
                return
            time.sleep(0.02)
        raise TimeoutError(f"HAProxy did not put {server} back in rotation in {timeout:.0f} s")


@contextlib.contextmanager
def proxy(replicas: Sequence[Replica], work: Path, check_ms: int, retry_on: str) -> Iterator[Proxy]:
    port = free_port()
    socket_path = work / f"haproxy-{port}.sock"
    servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in replicas)
    config = work / f"haproxy-{port}.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            socket=socket_path, port=port, check_ms=check_ms, retry_on=retry_on, servers=servers
        )
    )
    log = (work / f"haproxy-{port}.log").open("ab")
    process = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    handle = Proxy(port, socket_path, process)
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for replica in replicas:
            handle.wait_in_rotation(replica.name)
        yield handle
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    label: str
    completed: int
    seconds: float
    failed: int
    failure_kinds: str
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float = float("nan")

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds


def wrk_script(work: Path, delay_ms: float) -> Path:
    body, content_type = one_png_request()
    body_path = work / "one-png.body"
    body_path.write_bytes(body)
    delay = f"function delay() return {delay_ms:.3f} end" if delay_ms > 0 else ""
    script = work / f"wrk-{delay_ms:g}.lua"
    script.write_text(
        WRK_SCRIPT.format(body_path=body_path, content_type=content_type, delay=delay)
    )
    return script


def start_wrk(port: int, script: Path, connections: int, seconds: float) -> subprocess.Popen[str]:
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", WRK_TIMEOUT]
    argv += ["-s", str(script), f"http://127.0.0.1:{port}/anomaly-score?preprocess=none"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_wrk(label: str, process: subprocess.Popen[str]) -> WrkResult:
    output, _ = process.communicate()
    match = re.search(r"^WRK_JSON (.*)$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    data = json.loads(match.group(1))
    kinds = ("connect", "read", "write", "status", "timeout")
    failed = sum(data[kind] for kind in kinds)
    described = ", ".join(f"{kind} {data[kind]}" for kind in kinds if data[kind]) or "-"
    return WrkResult(
        label,
        completed=data["completed"],
        seconds=data["duration_us"] / 1e6,
        failed=failed,
        failure_kinds=described,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def measured_load(
    label: str, port: int, script: Path, connections: int, seconds: float, pids: Sequence[int]
) -> WrkResult:
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    result = finish_wrk(label, start_wrk(port, script, connections, seconds))
    cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    ok = result.completed - result.failed
    return WrkResult(**{**result.__dict__, "cpu_ms_per_request": cpu_used * 1000 / max(ok, 1)})


# --- the benchmark --------------------------------------------------------------------------


@dataclass(frozen=True)
class Replacement:
    name: str
    exit_code: int
    exit_s: float
    ready_s: float
    in_rotation_s: float


def replace(replica: Replica, balancer: Proxy) -> Replacement:
    started = time.monotonic()
    exit_code = replica.terminate_and_wait()
    exited = time.monotonic()
    replica.start()
    replica.wait_ready()
    ready = time.monotonic()
    balancer.wait_in_rotation(replica.name)
    back = time.monotonic()
    return Replacement(replica.name, exit_code, exited - started, ready - started, back - started)


def rolling_update(
    replicas: Sequence[Replica], balancer: Proxy, script: Path, args: argparse.Namespace
) -> tuple[list[WrkResult], list[Replacement]]:
    port, connections = balancer.port, args.connections
    results = [finish_wrk("before", start_wrk(port, script, connections, args.phase_seconds))]
    # "during" runs until both replacements are done; SIGINT makes wrk stop and report.
    during = start_wrk(port, script, connections, 3600)
    time.sleep(args.settle_seconds)
    replacements = [replace(replica, balancer) for replica in replicas]
    time.sleep(args.settle_seconds)
    during.send_signal(signal.SIGINT)
    results.append(finish_wrk("during", during))
    results.append(finish_wrk("after", start_wrk(port, script, connections, args.phase_seconds)))
    return results, replacements


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN -> "-"


def load_table(results: Sequence[WrkResult], cpu: bool) -> list[str]:
    head = "| phase | completed | req/s | failed | failure kinds | p50 ms | p99 ms |"
    rule = "|---|--:|--:|--:|---|--:|--:|"
    if cpu:
        head, rule = head + " replica CPU ms/req |", rule + "--:|"
    lines = [head, rule]
    for r in results:
        row = f"| {r.label} | {r.completed:,} | {fmt(r.per_second)} | {r.failed} "
        row += f"| {r.failure_kinds} | {fmt(r.p50_ms, 2)} | {fmt(r.p99_ms, 2)} |"
        lines.append(row + (f" {fmt(r.cpu_ms_per_request, 2)} |" if cpu else ""))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "model.pt")
    parser.add_argument("--rate", type=float, default=150.0, help="target requests/s")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=2.0)
    parser.add_argument("--throughput-connections", type=int, default=32)
    parser.add_argument("--check-ms", type=int, default=500, help="HAProxy /readyz interval")
    # none: like a Kubernetes Service (kube-proxy retries nothing). conn-failure hides a
    # replica that closed its port before the health check saw it (measured: 0 failures
    # today with it, 33 without).
    parser.add_argument("--retry-on", default="none", help="HAProxy retry-on (none: no retries)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for replicas")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH")

    extra = dict(item.split("=", 1) for item in args.env)
    lines = [
        f"# Rolling update, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores",
        "",
        f"Replicas: `python -m app`, model {args.model.name}, extra env {extra or 'none'}; "
        f"HAProxy health check GET /readyz every {args.check_ms} ms (fall 1, rise 1), "
        f"retry-on {args.retry_on}.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="rolling-update-") as tmp:
        work = Path(tmp)
        replicas = []
        for name in ("r0", "r1"):
            port = free_port()
            env = os.environ | {
                "VAE_HOST": "127.0.0.1",
                "VAE_PORT": str(port),
                "VAE_MODEL_PATH": str(args.model),
                "VAE_LOG_LEVEL": "warning",
            }
            replicas.append(Replica(name, port, [sys.executable, "-m", "app"], env | extra, work))
        try:
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            lines += report_replicas(replicas, "after start-up")
            if not args.skip_throughput:
                lines += throughput(replicas, work, args)
                lines += report_replicas(replicas, "after the throughput runs")
            delay_ms = args.connections * 1000.0 / args.rate
            with proxy(replicas, work, args.check_ms, args.retry_on) as balancer:
                results, replacements = rolling_update(
                    replicas, balancer, wrk_script(work, delay_ms), args
                )
        finally:
            for replica in replicas:
                replica.stop()
    lines += [
        "",
        f"## Rolling update: {args.connections} connections, one request per connection "
        f"every {delay_ms:.0f} ms + latency (target {args.rate:g} req/s)",
        "",
        *load_table(results, cpu=False),
        "",
        f"Failed in all: {sum(r.failed for r in results)} of "
        f"{sum(r.completed for r in results):,} completed.",
        "",
        "| replica | exit code | SIGTERM -> exited s | -> ready s | -> back in rotation s |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {r.name} | {r.exit_code} | {r.exit_s:.2f} | {r.ready_s:.2f} "
            f"| {r.in_rotation_s:.2f} |"
            for r in replacements
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


def report_replicas(replicas: Sequence[Replica], when: str) -> list[str]:
    sizes = ", ".join(
        f"{r.name} {memory_mib(r.pid, 'VmRSS'):.0f} MiB (peak {memory_mib(r.pid, 'VmHWM'):.0f})"
        for r in replicas
    )
    return [f"Resident memory (VmRSS) {when}: {sizes}.", ""]


def throughput(replicas: Sequence[Replica], work: Path, args: argparse.Namespace) -> list[str]:
    script = wrk_script(work, delay_ms=0)
    connections, seconds = args.throughput_connections, args.phase_seconds
    first = replicas[0]
    results = [
        measured_load("direct, 1 replica", first.port, script, connections, seconds, [first.pid])
    ]
    with proxy(replicas[:1], work, args.check_ms, args.retry_on) as one:
        results.append(
            measured_load("proxy, 1 replica", one.port, script, connections, seconds, [first.pid])
        )
    with proxy(replicas, work, args.check_ms, args.retry_on) as two:
        pids = [r.pid for r in replicas]
        results.append(
            measured_load("proxy, 2 replicas", two.port, script, connections, seconds, pids)
        )
    return [
        f"## Throughput: wrk -c{connections}, no delay, {seconds:g} s each, one-PNG "
        "/anomaly-score (load generator, proxy and replicas share the machine's cores)",
        "",
        *load_table(results, cpu=True),
        "",
    ]


if __name__ == "__main__":
    main()
