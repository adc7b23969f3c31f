"""/metrics with several uvicorn workers: every scrape, whichever worker answers it, shows the
requests of all of them (prometheus_client's multiprocess mode, set up by `python -m app`).

The live check runs in tests/test_lifecycle.py's two-worker test, on the one two-worker server
the suite starts (a start takes seconds: every worker imports torch and loads the model)."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.metrics import ServiceMetrics

WORKERS = 2
REQUESTS = 40
WORKERS_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 30.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:  # a new connection each time
        body: bytes = reply.read()
        return body


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


def leave_stale_counters(metrics_dir: Path) -> None:
    """Files of an earlier run would add up with this one's: start-up must remove them."""
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over")


def check_metrics_add_up_every_workers_requests(url: str, metrics_dir: Path) -> None:
    """On a fresh, idle server with WORKERS workers counting into `metrics_dir`."""
    with ThreadPoolExecutor(8) as pool:
        # Until every worker has answered (each writes its own counter file), so the
        # requests counted below are spread over all of them.
        deadline = time.monotonic() + WORKERS_TIMEOUT_S
        while len(counting_processes(metrics_dir)) < WORKERS:
            assert time.monotonic() < deadline, f"only {counting_processes(metrics_dir)} answer"
            list(pool.map(lambda _: get(f"{url}/readyz"), range(8)))
        # Concurrent, each on a new connection: any worker may accept each.
        list(pool.map(lambda _: get(f"{url}/healthz"), range(REQUESTS)))
    # A request is counted just after its reply is sent: give the last ones a moment.
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (seen := healthz_count(get(f"{url}/metrics"))) < REQUESTS:
        assert time.monotonic() < deadline, f"/metrics shows {seen} of {REQUESTS} requests"
        time.sleep(0.1)
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
