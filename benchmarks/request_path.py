"""The event loop's share of a request, without the model, the network or a load generator.

Drives the service's ASGI app and the bare app (benchmarks/bare_app.py, the framework's
floor) in-process on one thread, alternating over rounds, and reports the median CPU time
per request. The service app is the real one (`create_app`, its lifespan and middleware, the
checkpoint loaded), except that the batcher hands back the first result it computed for each
job: what is left is the work the event loop does per request (body, decoding, preprocessing,
query options, reply), which `benchmarks.serve_load` cannot separate from the model's.

    python -m benchmarks.request_path [--model models/model.pt] [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import statistics
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from app.batching import Lanes, Served
from app.config import Settings
from app.deps import Services
from app.jobs import Job
from app.main import create_app
from benchmarks import bare_app
from benchmarks.serve_load.payloads import Payload, load_digits
from benchmarks.serve_load.scenarios import SCENARIOS, Inputs

ASGIApp = Callable[..., Awaitable[None]]
Message = MutableMapping[str, Any]


# serve_load's scenarios, so that both benchmarks send the same bodies.
SCENARIO_NAMES = ("anomaly-1", "anomaly-1-raw", "anomaly-64")


class ReplayingLanes(Lanes):
    """The service's Lanes, except that each job is computed once and then replayed."""

    def __init__(self, lanes: Lanes) -> None:
        super().__init__(lanes.cheap, lanes.heavy, lanes.chunk_rows)
        self._results: dict[tuple[Job, int], Served] = {}

    async def submit(self, job: Job, inputs: np.ndarray) -> Served:
        key = (job, len(inputs))
        if key not in self._results:
            self._results[key] = await super().submit(job, inputs)
        return self._results[key]


def payloads(digits: Sequence[bytes], latent_dim: int) -> dict[str, Payload]:
    """One request of each scenario, by scenario name."""
    inputs = Inputs(digits, latent_dim)
    return {name: SCENARIOS[name].build(inputs)[0] for name in SCENARIO_NAMES}


def http_scope(payload: Payload) -> dict[str, Any]:
    path, _, query = payload.path.partition("?")
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", payload.content_type.encode()),
        (b"content-length", str(len(payload.body)).encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": payload.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes) -> int:
    """One request through `app`; its status."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:  # the app asks again only to notice a disconnect
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(dict(scope, state={}), receive, send)
    status: int = sent[0]["status"]
    return status


async def cpu_us_per_request(app: ASGIApp, payload: Payload, requests: int) -> float:
    scope = http_scope(payload)
    started = time.thread_time()
    for _ in range(requests):
        status = await call(app, scope, payload.body)
        if status != 200:
            raise RuntimeError(f"{payload.path} answered {status}")
    return 1e6 * (time.thread_time() - started) / requests


@asynccontextmanager
async def served(model: Path) -> AsyncIterator[FastAPI]:
    """The service's app, started, with its batcher replaying results."""
    app = create_app(Settings(model_path=model, log_level="warning", drain_seconds=0))
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        app.state.services = replace(services, batcher=ReplayingLanes(services.batcher))
        yield app


async def measure(model: Path, digits: Sequence[bytes], requests: int, rounds: int) -> None:
    bare = bare_app.create_app()
    results: dict[tuple[str, str], list[float]] = {}
    async with served(model) as service:
        requests_by_name = payloads(digits, service.state.services.engine.latent_dim)
        apps: dict[str, ASGIApp] = {"service": service, "bare app": bare}
        for payload in requests_by_name.values():  # warm-up: each job's result is computed
            for app in apps.values():
                await cpu_us_per_request(app, payload, 20)
        for _ in range(rounds):
            for scenario, payload in requests_by_name.items():
                for name, app in apps.items():
                    cell = results.setdefault((scenario, name), [])
                    cell.append(await cpu_us_per_request(app, payload, requests))
    print(
        f"{model}, {platform.processor() or 'cpu'}, {datetime.date.today()}: CPU us per request "
        f"on the event loop, model replayed, median of {rounds} rounds of {requests}\n"
    )
    print("| scenario | service | bare app | service - bare |")
    print("|---|--:|--:|--:|")
    for scenario in SCENARIO_NAMES:
        service_us = statistics.median(results[(scenario, "service")])
        bare_us = statistics.median(results[(scenario, "bare app")])
        print(f"| {scenario} | {service_us:.0f} | {bare_us:.0f} | {service_us - bare_us:+.0f} |")
    print("\nEvery round (service / bare app):\n")
    for scenario in SCENARIO_NAMES:
        service_rounds = results[(scenario, "service")]
        rounds_us = zip(service_rounds, results[(scenario, "bare app")], strict=True)
        print(f"- {scenario}: " + ", ".join(f"{a:.0f} / {b:.0f}" for a, b in rounds_us))
    print("\n" + "\n".join(f"- {name}: {SCENARIOS[name].description}" for name in SCENARIO_NAMES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--requests", type=int, default=2000, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
    digits, source = load_digits(args.data_root)
    print(f"inputs: {source}")
    asyncio.run(measure(args.model, digits, args.requests, args.rounds))


if __name__ == "__main__":
    main()
