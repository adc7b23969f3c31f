"""/metrics with several uvicorn workers: every scrape, whichever worker answers it, shows the
requests of all of them (prometheus_client's multiprocess mode, set up by `python -m app`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import ServiceMetrics
from tests.conftest import PROJECT_ROOT

WORKERS = 2
REQUESTS = 40
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:  # a new connection each time
        body: bytes = reply.read()
        return body


@contextmanager
def served(model_path: Path, metrics_dir: Path) -> Iterator[str]:
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    environment.update(
        VAE_MODEL_PATH=str(model_path),
        VAE_DEVICE="cpu",
        VAE_PORT=str(port),
        VAE_WORKERS=str(WORKERS),
        VAE_BATCH_MAX_SIZE="8",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, "python -m app exited during start-up"
            try:
                get(f"{url}/readyz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "python -m app did not become ready"
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def counting_processes(metrics_dir: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}


def healthz_count(exposition: bytes) -> float:
    for family in text_string_to_metric_families(exposition.decode()):
        if family.name == "vae_http_requests":
            return sum(
                sample.value
                for sample in family.samples
                if sample.name == "vae_http_requests_total" and sample.labels["route"] == "/healthz"
            )
    return 0.0


@pytest.mark.slow
def test_metrics_add_up_every_workers_requests(tiny_model_path: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # Files of an earlier run would add up with this one's: start-up removes them.
    (metrics_dir / "counter_1.db").write_bytes(b"left over")
    with served(tiny_model_path, metrics_dir) as url, ThreadPoolExecutor(8) as pool:
        # Until every worker has answered (each writes its own counter file), so the
        # requests counted below are spread over all of them.
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(counting_processes(metrics_dir)) < WORKERS:
            assert time.monotonic() < deadline, f"only {counting_processes(metrics_dir)} answer"
            list(pool.map(lambda _: get(f"{url}/readyz"), range(8)))
        # Concurrent, each on a new connection: any worker may accept each.
        list(pool.map(lambda _: get(f"{url}/healthz"), range(REQUESTS)))
        scrapes = [get(f"{url}/metrics") for _ in range(6)]
    assert [healthz_count(scrape) for scrape in scrapes] == [REQUESTS] * len(scrapes)
    # One queue-depth series summed over the live workers, not one per process.
    queue = [
        line for line in scrapes[-1].decode().splitlines() if line.startswith("vae_batch_queued")
    ]
    assert queue == ["vae_batch_queued_images 0.0"]


def test_one_process_keeps_a_registry_per_app() -> None:
    first, second = ServiceMetrics.create(), ServiceMetrics.create()
    assert first.multiprocess_dir is None
    first.requests.labels("/healthz", "GET", "200").inc()
    assert healthz_count(first.exposition()) == 1.0
    assert healthz_count(second.exposition()) == 0.0
