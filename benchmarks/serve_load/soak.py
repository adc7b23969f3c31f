"""The mixed soak: a fixed number of mixed requests to the service, every reply counted.

Python clients (httpx) on purpose: this checks that nothing fails and that memory settles,
which needs each reply's status; throughput comes from wrk, not from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from benchmarks.serve_load.payloads import Payload
from benchmarks.serve_load.procfs import tree_rss_kib
from benchmarks.serve_load.servers import Server

WARMUP_SHARE = 0.10
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sent:
    kind: str
    payload: Payload


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int  # 0 when the request raised
    seconds: float
    error: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class KindStats:
    kind: str
    requests: int
    errors: int
    server_errors: int  # 5xx: there should be none
    p50_ms: float
    p99_ms: float
    error_kinds: Counter[str]


@dataclass(frozen=True)
class SoakResult:
    requests: int
    seconds: float
    per_kind: list[KindStats]
    rss_at_start_kib: int
    rss_after_warmup_kib: int
    rss_end_kib: int

    @property
    def rss_growth_percent(self) -> float:
        return 100.0 * (self.rss_end_kib - self.rss_after_warmup_kib) / self.rss_after_warmup_kib


def mixed_requests(
    pools: Mapping[str, Sequence[Payload]], weights: Mapping[str, int], total: int, seed: int = 0
) -> list[Sent]:
    rng = random.Random(seed)
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=total)
    return [Sent(kind, pools[kind][index % len(pools[kind])]) for index, kind in enumerate(kinds)]


def new_client(base_url: str) -> httpx.AsyncClient:
    """One caller's client with one keep-alive connection (a shared pool made the client the
    bottleneck), and no proxy from the environment: the server is on loopback."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S, trust_env=False
    )


async def send(client: httpx.AsyncClient, sent: Sent) -> Outcome:
    payload = sent.payload
    started = time.perf_counter()
    try:
        response = await client.request(
            payload.method,
            payload.path,
            content=payload.body,
            headers={"content-type": payload.content_type},
        )
    except httpx.HTTPError as exc:
        return Outcome(sent.kind, 0, time.perf_counter() - started, type(exc).__name__)
    error = None if response.is_success else str(response.status_code)
    return Outcome(sent.kind, response.status_code, time.perf_counter() - started, error)


async def send_all(clients: Sequence[httpx.AsyncClient], requests: Sequence[Sent]) -> list[Outcome]:
    """Every request once; each client sends the next one nobody has sent yet."""
    outcomes: list[Outcome] = []
    queue = iter(requests)

    async def caller(client: httpx.AsyncClient) -> None:
        for sent in queue:
            outcomes.append(await send(client, sent))

    await asyncio.gather(*(caller(client) for client in clients))
    return outcomes


async def soak_phases(
    server: Server, requests: Sequence[Sent], concurrency: int
) -> tuple[list[Outcome], int, float]:
    """The warm-up share, an RSS reading, then the rest: (outcomes, that RSS, wall seconds)."""
    split = max(1, int(len(requests) * WARMUP_SHARE))
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(new_client(server.url)) for _ in range(concurrency)
        ]
        started = time.perf_counter()
        outcomes = await send_all(clients, requests[:split])
        rss_after_warmup = tree_rss_kib(server.pid)
        outcomes += await send_all(clients, requests[split:])
        return outcomes, rss_after_warmup, time.perf_counter() - started


def kind_stats(kind: str, outcomes: Sequence[Outcome]) -> KindStats:
    good = np.array([o.seconds * 1000 for o in outcomes if o.ok])
    p50, p99 = np.percentile(good, [50, 99]) if len(good) else (float("nan"),) * 2
    return KindStats(
        kind=kind,
        requests=len(outcomes),
        errors=sum(1 for o in outcomes if not o.ok),
        server_errors=sum(1 for o in outcomes if o.status >= 500),
        p50_ms=float(p50),
        p99_ms=float(p99),
        error_kinds=Counter(o.error for o in outcomes if o.error is not None),
    )


def run_soak(
    server: Server,
    pools: Mapping[str, Sequence[Payload]],
    weights: Mapping[str, int],
    total: int,
    concurrency: int,
) -> SoakResult:
    requests = mixed_requests(pools, weights, total)
    rss_at_start = tree_rss_kib(server.pid)
    outcomes, rss_after_warmup, seconds = asyncio.run(soak_phases(server, requests, concurrency))
    per_kind = [kind_stats(kind, [o for o in outcomes if o.kind == kind]) for kind in weights]
    per_kind.append(kind_stats("all", outcomes))
    return SoakResult(
        total, seconds, per_kind, rss_at_start, rss_after_warmup, tree_rss_kib(server.pid)
    )
