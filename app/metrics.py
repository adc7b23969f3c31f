"""Prometheus metrics, one registry per app so several apps (tests) never collide.

With several uvicorn workers each process counts its own requests, and a scrape reaches one
of them. prometheus_client's multiprocess mode fixes that: when PROMETHEUS_MULTIPROC_DIR is
set before prometheus_client is imported, every metric value lives in a memory-mapped file
under that folder (one per process), and /metrics adds up the files of all workers.
`python -m app` sets it for VAE_WORKERS > 1 (prepare_multiprocess_metrics).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger("app.metrics")
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ServiceMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    images: Counter
    inference: Histogram
    batch_images: Histogram
    queued_images: Gauge
    multiprocess_dir: Path | None = None
    queue_readers: list[Callable[[], int]] = field(default_factory=list, init=False)

    @classmethod
    def create(cls) -> ServiceMetrics:
        registry = CollectorRegistry()
        multiprocess_dir = multiprocess_metrics_dir()
        if multiprocess_dir is not None:
            _forget_this_process_at_exit()
        return cls(
            registry=registry,
            requests=Counter(
                "vae_http_requests",
                "HTTP requests by route template, method and status code",
                ["route", "method", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "vae_http_request_duration_seconds",
                "Time from request start to the end of the response body",
                ["route", "method"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            images=Counter(
                "vae_images_processed",
                "Images decoded, reconstructed, scored or sampled",
                ["endpoint"],
                registry=registry,
            ),
            inference=Histogram(
                "vae_model_inference_seconds",
                "Time spent in the model per forward pass (a dynamic batch counts once)",
                ["operation"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_images=Histogram(
                "vae_batch_images",
                "Images per dynamic batch",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                registry=registry,
            ),
            queued_images=Gauge(
                "vae_batch_queued_images",
                "Images waiting for the model",
                registry=registry,
                # Across workers: the sum over the processes alive now.
                multiprocess_mode="livesum",
            ),
            multiprocess_dir=multiprocess_dir,
        )

    def watch_queue(self, read: Callable[[], int]) -> None:
        if self.multiprocess_dir is None:
            self.queued_images.set_function(read)  # read at each scrape
        else:
            # A scrape reaches one worker and reads the others' files, so every worker
            # writes its queue depth down: after each batch and at each scrape it answers.
            # An idle worker's last batch left its queue empty, so the sum settles at 0.
            self.queue_readers.append(read)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.inference.labels("batch").observe(seconds)
        self._write_queue_depth()

    def exposition(self) -> bytes:
        """The Prometheus text format: this app's registry, or every worker's files."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self._write_queue_depth()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def _write_queue_depth(self) -> None:
        for read in self.queue_readers:
            self.queued_images.set(read())


def multiprocess_metrics_dir() -> Path | None:
    """The shared folder when this process records into files (decided by prometheus_client
    when it was imported), else None."""
    if values.ValueClass is values.MutexValue:
        return None
    return Path(os.environ[MULTIPROC_DIR_ENV])


def prepare_multiprocess_metrics(workers: int) -> None:
    """Before uvicorn starts its workers: with more than one, give them a shared, empty
    folder for their metric files (a fresh one under the temp folder, which a read-only root
    filesystem in Kubernetes still allows as an emptyDir), removed when this process exits.
    A folder already named in PROMETHEUS_MULTIPROC_DIR is used, emptied of old files: values
    left there by an earlier run would otherwise be added to this one's."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    elif workers > 1:
        folder = tempfile.mkdtemp(prefix="vae-metrics-")
        os.environ[MULTIPROC_DIR_ENV] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    else:
        return
    logger.info("metrics of all workers add up through files in %s", os.environ[MULTIPROC_DIR_ENV])


@cache
def _forget_this_process_at_exit() -> None:
    # A live-sum gauge must stop counting a worker once it is gone; counters keep its
    # contribution (requests it served still happened).
    atexit.register(mark_process_dead, os.getpid())
