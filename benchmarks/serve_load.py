"""HTTP load benchmark of the running service, against a bare FastAPI app as the ceiling.

Starts the real service (`python -m app`, uvicorn on a free local port) and a bare FastAPI app
(`benchmarks.bare_app`: same routes, reads the body, answers a constant) as subprocesses. Each
scenario runs `--repeat` rounds; a round drives the service, then the bare app (one server
under load at a time), with `--concurrency` asyncio clients, each with its own
httpx.AsyncClient and keep-alive connection, for `--duration` seconds after `--warmup`
seconds that are not counted:

    anomaly-1    POST /anomaly-score?preprocess=none, one 28x28 PNG (multipart `files`)
    anomaly-64   the same with 64 PNGs per request
    sample-64    POST /sample {"n": 64, "seed": ...}
    reconstruct  POST /reconstruct?preprocess=none, one PNG (multipart `file`)

Requests/s and images/s count successful (2xx) responses that completed inside the measured
window; latency percentiles are over those responses. Errors are non-2xx responses plus
transport exceptions; 5xx are also counted on their own. "vs bare" is the median over rounds
of the service's requests/s over the bare app's in the same round; the table shows each
server's median round and every round is listed below it. The load generator runs on the
same machine and
takes CPU from the server, so the bare app's numbers are the ceiling of this setup, not of
uvicorn alone.

Then one client sends `--latency-requests` requests of each scenario to the service, one at
a time, for latency without queueing. Then a mixed soak sends `--mixed-requests` requests to
the service only (50% anomaly-1, 10% anomaly-64, 20% sample n=16, 20% reconstruct) and
reports errors, 5xx (there should be none) and the service's resident memory (VmRSS of the
process and its children) after start-up, after the first 10% of the soak and at the end.

Digits are MNIST test images when `--data-root` holds MNIST, else synthetic strokes. Results
print as Markdown tables (and go to `--output` when given). Run from the repository root:

    python -m benchmarks.serve_load --model models/model.pt [--duration 10] [--repeat 3]
        [--concurrency 32]
        [--env VAE_BATCH_MAX_DELAY_MS=5] [--scenarios anomaly-1 sample-64] [--output load.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("anomaly-1", "anomaly-64", "sample-64", "reconstruct")
MIXED_WEIGHTS = {"anomaly-1": 50, "anomaly-64": 10, "sample-16": 20, "reconstruct": 20}
MIXED_WARMUP_SHARE = 0.10
POOL_SIZE = 64
DIGIT_COUNT = 256
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 120.0


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One request, encoded once up front so the load generator spends no CPU building it."""

    kind: str
    path: str
    body: bytes
    content_type: str
    images: int


def multipart(field_name: str, files: Sequence[bytes]) -> tuple[bytes, str]:
    """Encode PNGs as multipart/form-data parts that all carry `field_name`."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for index, data in enumerate(files):
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name={json.dumps(field_name)}; "
            f'filename="digit{index}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def anomaly_pool(kind: str, digits: Sequence[bytes], per_request: int) -> list[Prepared]:
    pool = []
    for index in range(POOL_SIZE):
        start = index * per_request
        files = [digits[(start + i) % len(digits)] for i in range(per_request)]
        body, content_type = multipart("files", files)
        pool.append(
            Prepared(kind, "/anomaly-score?preprocess=none", body, content_type, per_request)
        )
    return pool


def reconstruct_pool(digits: Sequence[bytes]) -> list[Prepared]:
    pool = []
    for index in range(POOL_SIZE):
        body, content_type = multipart("file", [digits[index % len(digits)]])
        pool.append(Prepared("reconstruct", "/reconstruct?preprocess=none", body, content_type, 1))
    return pool


def sample_pool(kind: str, n: int) -> list[Prepared]:
    return [
        Prepared(
            kind, "/sample", json.dumps({"n": n, "seed": seed}).encode(), "application/json", n
        )
        for seed in range(POOL_SIZE)
    ]


def build_pool(kind: str, digits: Sequence[bytes]) -> list[Prepared]:
    if kind.startswith("anomaly-"):
        return anomaly_pool(kind, digits, int(kind.removeprefix("anomaly-")))
    if kind.startswith("sample-"):
        return sample_pool(kind, int(kind.removeprefix("sample-")))
    if kind == "reconstruct":
        return reconstruct_pool(digits)
    raise ValueError(f"unknown request kind {kind!r}")


# --- digits ---------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def mnist_digits(data_root: Path, count: int) -> list[bytes] | None:
    """The first `count` MNIST test digits as PNGs, or None when MNIST is not there."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return None
    try:
        images = MNIST(root=str(data_root), train=False, download=False).data[:count]
    except RuntimeError:  # torchvision's "Dataset not found"
        return None
    return [png_bytes(image.numpy()) for image in images]


def synthetic_digits(count: int, seed: int = 0) -> list[bytes]:
    """28x28 white strokes on black, a few random lines each."""
    rng = random.Random(seed)
    digits = []
    for _ in range(count):
        image = Image.new("L", (28, 28))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(2, 4)):
            points = [(rng.randint(5, 22), rng.randint(4, 23)) for _ in range(2)]
            draw.line(points, fill=255, width=rng.randint(2, 3))
        digits.append(png_bytes(np.asarray(image)))
    return digits


def load_digits(data_root: Path) -> tuple[list[bytes], str]:
    digits = mnist_digits(data_root, DIGIT_COUNT)
    if digits is not None:
        return digits, f"MNIST test digits from {data_root}"
    return synthetic_digits(DIGIT_COUNT), "synthetic stroke images (no MNIST under --data-root)"


# --- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    rss_at_ready_kib: int = 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_ready(server: Server, timeout: float) -> dict[str, Any]:
    """Poll GET /readyz until 200; fail early when the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode} before it was ready:\n"
                + log_tail(server.log_path)
            )
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"{server.base_url}/readyz", timeout=2.0)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
        time.sleep(0.25)
    raise TimeoutError(f"{server.name} was not ready after {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL when it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def launched(name: str, argv: list[str], env: dict[str, str], port: int) -> Iterator[Server]:
    """Run `argv` from the repository root, yield it once ready, and always stop it."""
    with tempfile.NamedTemporaryFile(prefix=f"serve_load-{name}-", suffix=".log") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        server = Server(name, process, f"http://127.0.0.1:{port}", Path(log.name))
        try:
            server.ready = wait_ready(server, READY_TIMEOUT_S)
            server.rss_at_ready_kib = rss_kib(process.pid)
            yield server
        finally:
            stop(process)
            report_log(server)


def report_log(server: Server) -> None:
    tail = log_tail(server.log_path)
    if tail.strip():
        print(f"--- last lines of the {server.name} log ---\n{tail}\n---", file=sys.stderr)


def service_argv_env(
    model: Path, port: int, extra: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    env = os.environ | {
        "VAE_HOST": "127.0.0.1",
        "VAE_PORT": str(port),
        "VAE_MODEL_PATH": str(model),
        "VAE_LOG_LEVEL": "warning",
    }
    return [sys.executable, "-m", "app"], env | extra


def bare_argv_env(port: int) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return argv, dict(os.environ)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` plus its descendants (uvicorn workers, when there are several), in KiB."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    with contextlib.suppress(FileNotFoundError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total += sum(rss_kib(int(child)) for child in children)
    return total


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    kind: str
    images: int
    started: float
    finished: float
    status: int  # 0 when the request raised
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def send(client: httpx.AsyncClient, request: Prepared) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            request.path, content=request.body, headers={"content-type": request.content_type}
        )
    except httpx.HTTPError as exc:
        finished = time.perf_counter()
        return Outcome(request.kind, request.images, started, finished, 0, type(exc).__name__)
    finished = time.perf_counter()
    error = None if response.is_success else str(response.status_code)
    return Outcome(request.kind, request.images, started, finished, response.status_code, error)


def new_client(base_url: str) -> httpx.AsyncClient:
    """One caller's client: a single keep-alive connection.

    Callers do not share one pooled client: httpx's pool scans every waiting request on each
    hand-off, which with 32 callers made the load generator the bottleneck (measured: the bare
    app at ~425 requests/s through one shared client, ~1,250 with a client per caller).
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S)


async def timed_load(
    base_url: str, pool: Sequence[Prepared], concurrency: int, warmup: float, duration: float
) -> list[Outcome]:
    """Loop `concurrency` workers over `pool`; keep responses that finished in the window."""
    outcomes: list[Outcome] = []
    window_start = time.perf_counter() + warmup
    window_end = window_start + duration

    async def worker(offset: int) -> None:
        index = offset
        async with new_client(base_url) as client:
            while time.perf_counter() < window_end:
                outcomes.append(await send(client, pool[index % len(pool)]))
                index += concurrency

    await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    return [o for o in outcomes if window_start <= o.finished <= window_end]


async def fixed_load(
    clients: Sequence[httpx.AsyncClient], requests: Sequence[Prepared]
) -> list[Outcome]:
    """Send every request in `requests` once, one at a time per client."""
    outcomes: list[Outcome] = []
    queue = iter(requests)  # shared: each worker takes the next request that nobody has sent

    async def worker(client: httpx.AsyncClient) -> None:
        for request in queue:
            outcomes.append(await send(client, request))

    await asyncio.gather(*(worker(client) for client in clients))
    return outcomes


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadStats:
    label: str
    server: str
    seconds: float
    requests: int
    images: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    server_errors: int
    error_kinds: Counter[str]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def summarize(label: str, server: str, outcomes: Sequence[Outcome], seconds: float) -> LoadStats:
    good = [o for o in outcomes if o.ok]
    latencies = np.array([(o.finished - o.started) * 1000 for o in good])
    p50, p95, p99 = (
        np.percentile(latencies, [50, 95, 99]) if len(latencies) else (float("nan"),) * 3
    )
    return LoadStats(
        label=label,
        server=server,
        seconds=seconds,
        requests=len(good),
        images=sum(o.images for o in good),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        errors=len(outcomes) - len(good),
        server_errors=sum(1 for o in outcomes if o.status >= 500),
        error_kinds=Counter(o.error for o in outcomes if o.error is not None),
    )


@dataclass(frozen=True)
class MixedResult:
    total: LoadStats
    per_kind: list[LoadStats]
    rss_at_ready_kib: int
    rss_before_kib: int
    rss_after_warmup_kib: int
    rss_end_kib: int

    @property
    def rss_growth_percent(self) -> float:
        return 100.0 * (self.rss_end_kib - self.rss_after_warmup_kib) / self.rss_after_warmup_kib


def run_scenario(server: Server, pool: Sequence[Prepared], args: argparse.Namespace) -> LoadStats:
    print(f"  {pool[0].kind} -> {server.name}", file=sys.stderr, flush=True)
    outcomes = asyncio.run(
        timed_load(server.base_url, pool, args.concurrency, args.warmup, args.duration)
    )
    return summarize(pool[0].kind, server.name, outcomes, args.duration)


def mixed_requests(pools: dict[str, list[Prepared]], total: int, seed: int = 0) -> list[Prepared]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIXED_WEIGHTS), weights=list(MIXED_WEIGHTS.values()), k=total)
    return [pools[kind][index % POOL_SIZE] for index, kind in enumerate(kinds)]


async def mixed_phases(
    server: Server, requests: Sequence[Prepared], concurrency: int
) -> tuple[list[Outcome], int, float]:
    """Warm-up share, RSS reading, then the rest; returns outcomes, that RSS and the wall time."""
    split = max(1, int(len(requests) * MIXED_WARMUP_SHARE))
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(new_client(server.base_url)) for _ in range(concurrency)
        ]
        started = time.perf_counter()
        outcomes = await fixed_load(clients, requests[:split])
        rss_after_warmup = rss_kib(server.process.pid)
        outcomes += await fixed_load(clients, requests[split:])
        return outcomes, rss_after_warmup, time.perf_counter() - started


def run_latency(
    server: Server, digits: Sequence[bytes], args: argparse.Namespace
) -> list[LoadStats]:
    """Each scenario's requests sent one at a time: latency without queueing behind others."""
    results = []
    for kind in args.scenarios:
        print(f"  {kind} x{args.latency_requests}, one client -> {server.name}", file=sys.stderr)
        pool = build_pool(kind, digits)
        requests = [pool[index % len(pool)] for index in range(args.latency_requests)]

        async def one_client(requests: list[Prepared] = requests) -> tuple[list[Outcome], float]:
            async with new_client(server.base_url) as client:
                await fixed_load([client], requests[: max(1, len(requests) // 10)])  # warm-up
                started = time.perf_counter()
                outcomes = await fixed_load([client], requests)
                return outcomes, time.perf_counter() - started

        outcomes, seconds = asyncio.run(one_client())
        results.append(summarize(kind, server.name, outcomes, seconds))
    return results


def latency_table(results: Sequence[LoadStats]) -> list[str]:
    lines = ["| scenario | p50 ms | p95 ms | p99 ms | errors |", "|---|--:|--:|--:|--:|"]
    for stats in results:
        cells = [stats.label, fmt(stats.p50_ms), fmt(stats.p95_ms), fmt(stats.p99_ms)]
        lines.append("| " + " | ".join([*cells, str(stats.errors)]) + " |")
    return lines


def run_mixed(server: Server, digits: Sequence[bytes], args: argparse.Namespace) -> MixedResult:
    print(f"  mixed x{args.mixed_requests} -> {server.name}", file=sys.stderr, flush=True)
    pools = {kind: build_pool(kind, digits) for kind in MIXED_WEIGHTS}
    requests = mixed_requests(pools, args.mixed_requests)
    rss_before = rss_kib(server.process.pid)
    outcomes, rss_after_warmup, seconds = asyncio.run(
        mixed_phases(server, requests, args.concurrency)
    )
    per_kind = [
        summarize(kind, server.name, [o for o in outcomes if o.kind == kind], seconds)
        for kind in MIXED_WEIGHTS
    ]
    total = summarize("all", server.name, outcomes, seconds)
    rss_end = rss_kib(server.process.pid)
    return MixedResult(
        total, per_kind, server.rss_at_ready_kib, rss_before, rss_after_warmup, rss_end
    )


# --- report ---------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "—" if np.isnan(value) else f"{value:,.{digits}f}"


@dataclass
class Rounds:
    """One scenario's runs, in the order they alternated."""

    service: list[LoadStats] = field(default_factory=list)
    bare: list[LoadStats] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Each round's service requests/s over the bare app's, side by side in time."""
        pairs = zip(self.service, self.bare, strict=False)  # no bare runs: no ratios
        return [service.requests_per_s / bare.requests_per_s for service, bare in pairs]


def median_run(runs: Sequence[LoadStats]) -> LoadStats:
    """The run with the median requests/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda run: run.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def scenario_table(results: Sequence[Rounds]) -> list[str]:
    lines = [
        "| scenario | server | req/s | images/s | p50 ms | p95 ms | p99 ms | errors | 5xx "
        "| vs bare |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for rounds in results:
        ratio = float(np.median(rounds.ratios)) if rounds.bare else float("nan")
        lines.append(table_row(median_run(rounds.service), fmt(ratio, 2)))
        if rounds.bare:
            lines.append(table_row(median_run(rounds.bare), ""))
    return lines


def rounds_lines(results: Sequence[Rounds]) -> list[str]:
    """Every round's figures, so the spread behind each median is visible."""
    lines = []
    for rounds in results:
        service = ", ".join(fmt(run.requests_per_s) for run in rounds.service)
        line = f"- {rounds.service[0].label}: service req/s {service}"
        if rounds.bare:
            bare = ", ".join(fmt(run.requests_per_s) for run in rounds.bare)
            ratios = ", ".join(fmt(ratio, 2) for ratio in rounds.ratios)
            line += f"; bare app {bare}; ratio per round {ratios}"
        lines.append(line)
    return lines


def table_row(stats: LoadStats, ratio: str) -> str:
    cells = [
        stats.label,
        stats.server,
        fmt(stats.requests_per_s),
        fmt(stats.images_per_s),
        fmt(stats.p50_ms),
        fmt(stats.p95_ms),
        fmt(stats.p99_ms),
        str(stats.errors),
        str(stats.server_errors),
        ratio,
    ]
    return "| " + " | ".join(cells) + " |"


def mixed_table(result: MixedResult) -> list[str]:
    lines = [
        "| kind | requests | req/s | p50 ms | p95 ms | p99 ms | errors | 5xx |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for stats in [*result.per_kind, result.total]:
        cells = [
            stats.label,
            str(stats.requests + stats.errors),
            fmt(stats.requests_per_s),
            fmt(stats.p50_ms),
            fmt(stats.p95_ms),
            fmt(stats.p99_ms),
            str(stats.errors),
            str(stats.server_errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    mib = 1024.0
    lines += [
        "",
        f"Service RSS: {result.rss_at_ready_kib / mib:.1f} MiB once ready (before any load), "
        f"{result.rss_before_kib / mib:.1f} MiB before the soak, "
        f"{result.rss_after_warmup_kib / mib:.1f} MiB after the first "
        f"{MIXED_WARMUP_SHARE:.0%} of the soak, {result.rss_end_kib / mib:.1f} MiB at the end "
        f"({result.rss_growth_percent:+.1f}% since the warm-up).",
    ]
    return lines


def error_lines(stats: Sequence[LoadStats]) -> list[str]:
    lines = []
    for item in stats:
        if item.error_kinds:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in item.error_kinds.most_common())
            lines.append(f"- {item.label} on {item.server}: {kinds}")
    return ["", "Errors:", *lines] if lines else []


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def header(args: argparse.Namespace, device: str, digits_source: str) -> list[str]:
    overrides = " ".join(f"{key}={value}" for key, value in args.env.items()) or "none"
    return [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; service device: {device}.",
        f"Model {args.model}; {args.concurrency} concurrent clients; {args.repeat} rounds per "
        f"scenario alternating service and bare app, {args.duration:g} s each after a "
        f"{args.warmup:g} s warm-up; env overrides: {overrides}; inputs: {digits_source}.",
        "Each row is the round with the median requests/s; 'vs bare' is the median of the "
        "per-round ratios.",
    ]


# --- main -----------------------------------------------------------------------------------


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="measured s per run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per scenario and server, alternating"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted s per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--mixed-requests", type=int, default=20000, help="requests in the soak")
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=200,
        help="requests per scenario sent by one client, one at a time (0: skip)",
    )
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra service env"
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--skip-bare", action="store_true", help="do not run the bare app")
    parser.add_argument("--skip-mixed", action="store_true", help="do not run the mixed soak")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        args.env = parse_env(args.env)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.concurrency < 1 or args.duration <= 0 or args.mixed_requests < 1 or args.repeat < 1:
        parser.error("--concurrency, --duration, --repeat and --mixed-requests must be positive")
    if args.latency_requests < 0:
        parser.error("--latency-requests must be 0 (skip) or more")
    return args


def run_scenarios(
    service: Server, bare: Server | None, digits: Sequence[bytes], args: argparse.Namespace
) -> list[Rounds]:
    """Each scenario `--repeat` times, alternating service and bare app (one server under
    load at a time), so that a slow spell of this shared machine hits both alike."""
    results = []
    for kind in args.scenarios:
        pool = build_pool(kind, digits)
        rounds = Rounds()
        for _ in range(args.repeat):
            rounds.service.append(run_scenario(service, pool, args))
            if bare:
                rounds.bare.append(run_scenario(bare, pool, args))
        results.append(rounds)
    return results


def run_all(args: argparse.Namespace) -> list[str]:
    digits, digits_source = load_digits(args.data_root)
    with contextlib.ExitStack() as stack:
        print("starting the service ...", file=sys.stderr, flush=True)
        port = free_port()
        service = stack.enter_context(
            launched("service", *service_argv_env(args.model.resolve(), port, args.env), port)
        )
        bare = None
        if not args.skip_bare:
            print("starting the bare app ...", file=sys.stderr, flush=True)
            port = free_port()
            bare = stack.enter_context(launched("bare app", *bare_argv_env(port), port))
        lines = header(args, str(service.ready.get("device", "unknown")), digits_source)
        results = run_scenarios(service, bare, digits, args)
        lines += ["", *scenario_table(results), "", "Rounds:", "", *rounds_lines(results)]
        stats = [run for rounds in results for run in [*rounds.service, *rounds.bare]]
        if args.latency_requests:
            latency = run_latency(service, digits, args)
            lines += ["", f"One client, {args.latency_requests} requests one after another:"]
            lines += ["", *latency_table(latency)]
            stats += latency
        if not args.skip_mixed:
            mixed = run_mixed(service, digits, args)
            lines += ["", f"Mixed soak, {args.mixed_requests} requests:", "", *mixed_table(mixed)]
            stats += mixed.per_kind
        return lines + error_lines(stats)


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    """Treat SIGTERM as Ctrl-C: asyncio cancels the load and the servers are stopped."""
    signal.raise_signal(signal.SIGINT)


def main() -> None:
    args = parse_args()
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt (or cancel asyncio.run's task), even when
    # the shell started us with SIGINT ignored; the servers are stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    try:
        lines = run_all(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; the servers were stopped")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
