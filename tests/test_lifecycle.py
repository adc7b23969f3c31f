"""Drain and reload of a live `python -m app`: SIGTERM under load (/readyz 503 before the
listener closes, no request fails), a second signal, and two workers: /metrics adds up both,
SIGHUP reloads both, SIGTERM drains both."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from app.server import EXIT_FORCED
from tests.early_start import early_start
from tests.service_process import ServiceProcess, service_process
from tests.test_ops_metrics_workers import (
    WORKERS,
    check_metrics_add_up_every_workers_requests,
    leave_stale_counters,
)

CLIENTS = 3
# Every drain test waits the whole drain. The clients' last requests start by
# CLIENTS_STOP_AFTER_S after the 503, a second and a half before the listener closes: a reply
# slower than that, and a client's next request would find the port closed.
DRAIN_S = 2.0
CLIENTS_STOP_AFTER_S = 0.5


@dataclass
class Load:
    """Clients posting one PNG each in a loop, and a prober polling /readyz, until stopped."""

    url: str
    png: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    replies: list[tuple[float, int | str]] = field(default_factory=list)  # (time, status)
    readiness: list[tuple[float, int | str]] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, probe_until_refused: bool = True) -> None:
        # Daemon threads: a failed assertion before finish() must not keep pytest from exiting.
        self.threads = [threading.Thread(target=self._post, daemon=True) for _ in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._probe, daemon=True))
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads[:-1]:
            thread.join(timeout=60)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.02)

    def _post(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    reply = client.post("/anomaly-score", files={"files": ("d.png", self.png)})
                except httpx.TransportError as exc:
                    self.replies.append((time.monotonic(), type(exc).__name__))
                    continue
                self.replies.append((time.monotonic(), reply.status_code))
                if reply.status_code == 200:
                    self.model_ids.append(reply.json()["model_id"])

    def _probe(self) -> None:
        """Until the port refuses connections (the process is gone): fresh connections."""
        while True:
            try:
                status: int | str = httpx.get(f"{self.url}/readyz", timeout=5).status_code
            except httpx.ConnectError:
                self.readiness.append((time.monotonic(), "refused"))
                return
            except httpx.TransportError as exc:
                status = type(exc).__name__
            self.readiness.append((time.monotonic(), status))
            time.sleep(0.02)

    def first(self, status: int | str) -> float:
        return next(when for when, seen in self.readiness if seen == status)


def drain(service: ServiceProcess, load: Load) -> None:
    """SIGTERM while `load` runs; its clients stop CLIENTS_STOP_AFTER_S after /readyz turned
    503 (as a load balancer would), well inside the service's DRAIN_S."""
    service.signal(signal.SIGTERM)
    load.wait_until(lambda: any(status == 503 for _, status in load.readiness))
    time.sleep(CLIENTS_STOP_AFTER_S)
    load.finish()
    service.process.wait(timeout=60)
    load.threads[-1].join(timeout=30)


def drain_under_load(service: ServiceProcess, png: bytes) -> Load:
    load = Load(service.url, png)
    load.start()
    load.wait_until(lambda: len(load.replies) >= 10)
    drain(service, load)
    return load


Starts = AbstractContextManager[ServiceProcess]


def tiny_service(request: pytest.FixtureRequest, drain_seconds: str) -> Starts:
    return service_process(
        request.getfixturevalue("tiny_model_path"),
        request.getfixturevalue("tmp_path_factory").mktemp("lifecycle"),
        wait=False,
        drain_seconds=drain_seconds,
    )


@early_start()
def draining_service(request: pytest.FixtureRequest) -> Starts:
    return tiny_service(request, str(DRAIN_S))


@early_start()
def long_draining_service(request: pytest.FixtureRequest) -> Starts:
    return tiny_service(request, "120")


def test_sigterm_answers_503_on_readyz_serves_the_drain_then_exits(
    draining_service: ServiceProcess, stroke_png: bytes
) -> None:
    service = draining_service
    load = drain_under_load(service, stroke_png)
    assert service.process.returncode == -signal.SIGTERM, service.log_text()
    failed = [status for _, status in load.replies if status != 200]
    assert failed == [], failed
    not_ready = load.first(503)
    assert any(when > not_ready for when, _ in load.replies), "no request served while draining"
    statuses = [status for _, status in load.readiness]
    assert statuses[-1] == "refused"
    assert statuses.index(503) < statuses.index("refused")
    after = statuses[statuses.index(503) : -1]
    last_503 = max(index for index, status in enumerate(after) if status == 503)
    assert set(after[: last_503 + 1]) == {503}  # never ready again while it listens
    # The closing listener may reset a connection still in its queue: only then, no reply.
    assert all(isinstance(status, str) for status in after[last_503 + 1 :]), after
    log = service.log_text()
    assert log.index("/readyz answers 503") < log.index("drained: closing the listener")


def test_second_signal_exits_at_once(long_draining_service: ServiceProcess) -> None:
    service = long_draining_service
    service.signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while httpx.get(f"{service.url}/readyz", timeout=5).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    service.signal(signal.SIGINT)
    # Well before the 120 s drain would have ended; killed by the SIGTERM it re-raises (as
    # uvicorn does), or by our forced exit.
    returncode = service.process.wait(timeout=30)
    assert returncode in {-signal.SIGTERM, EXIT_FORCED}, service.log_text()
    assert "second SIGINT: exiting at once" in service.log_text()


def replace_checkpoint(path: Path, new: Path) -> None:
    staged = path.with_suffix(".new")
    shutil.copy(new, staged)
    staged.replace(path)  # atomic: a reload reads the old file or the new one, never half


@dataclass
class TwoWorkers:
    """A two-worker server on a copy of the tiny checkpoint that the test may overwrite."""

    service: ServiceProcess
    model: Path
    metrics_dir: Path

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.service.process

    def wait_until_ready(self) -> None:
        self.service.wait_until_ready()


@early_start()
def two_workers(request: pytest.FixtureRequest) -> AbstractContextManager[TwoWorkers]:
    folder: Path = request.getfixturevalue("tmp_path_factory").mktemp("two-workers")
    model = folder / "serving" / "model.pt"
    model.parent.mkdir()
    shutil.copy(request.getfixturevalue("tiny_model_path"), model)
    metrics_dir = folder / "metrics"
    leave_stale_counters(metrics_dir)
    return _two_workers(model, folder, metrics_dir)


@contextmanager
def _two_workers(model: Path, folder: Path, metrics_dir: Path) -> Iterator[TwoWorkers]:
    with service_process(
        model,
        folder,
        environment={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        wait=False,
        workers=str(WORKERS),
        batch_max_size="8",
        drain_seconds=str(DRAIN_S),
    ) as service:
        yield TwoWorkers(service, model, metrics_dir)


@pytest.mark.slow
def test_two_workers_add_up_metrics_reload_on_sighup_and_drain_on_sigterm(
    two_workers: TwoWorkers, second_model_path: Path, stroke_png: bytes
) -> None:
    # One two-worker server for three facts, in this order: the metrics check needs it fresh
    # and idle, and the drain ends it.
    service = two_workers.service
    check_metrics_add_up_every_workers_requests(service.url, two_workers.metrics_dir)
    old_id = httpx.get(f"{service.url}/model", timeout=10).json()["model_id"]
    load = Load(service.url, stroke_png)
    load.start()
    load.wait_until(lambda: len(load.model_ids) >= 10)
    replace_checkpoint(two_workers.model, second_model_path)
    service.signal(signal.SIGHUP)
    # Both workers answer on the shared port: once the last 40 replies all come from
    # the new model, both have switched.
    load.wait_until(lambda: load.model_ids.count(old_id) > 0 and _all_new(load, old_id))
    assert service.log_text().count("now serving") == WORKERS, service.log_text()
    drain(service, load)
    failed = [status for _, status in load.replies if status != 200]
    assert failed == [], failed
    assert set(load.model_ids) == {old_id, _new_id(load, old_id)}
    statuses = [status for _, status in load.readiness]
    assert statuses.index(503) < statuses.index("refused")


def _all_new(load: Load, old_id: str) -> bool:
    recent = load.model_ids[-40:]
    return len(recent) == 40 and old_id not in recent


def _new_id(load: Load, old_id: str) -> str:
    return next(model_id for model_id in reversed(load.model_ids) if model_id != old_id)


# --- the supervisor's health checks, with fake worker processes ----------------------------


class _FakeWorker:
    """A worker whose health check fails (its pipe is closed); `exits_with` is the exit code
    it reaches on its own while the supervisor waits for it, None when it hangs."""

    def __init__(self, exits_with: int | None) -> None:
        self.exits_with = exits_with
        self.exitcode: int | None = None
        self.pid = 4242
        self.killed_while_running = False
        self.process = self  # uvicorn's Process wraps a multiprocessing one: join(timeout)

    def is_alive(self, timeout: float) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is None and self.exits_with is not None:
            self.exitcode = self.exits_with

    def kill(self) -> None:
        if self.exitcode is None:
            self.killed_while_running = True
            self.exitcode = -signal.SIGKILL


def _supervising(worker: _FakeWorker) -> tuple[Any, list[object]]:
    from app.server import Supervisor

    supervisor = Supervisor.__new__(Supervisor)  # no sockets, signals or logging set-up
    replacements: list[object] = []
    supervisor.should_exit = threading.Event()
    supervisor.config = SimpleNamespace(timeout_worker_healthcheck=0.01)  # type: ignore[assignment]
    supervisor.processes = [worker]  # type: ignore[list-item]
    supervisor.startup_failed = False
    supervisor._new_worker = lambda: replacements.append(object()) or replacements[-1]  # type: ignore[method-assign]
    supervisor.keep_subprocess_alive()
    return supervisor, replacements


def test_a_worker_exiting_after_a_failed_start_stops_the_service_instead_of_a_restart() -> None:
    from uvicorn.config import STARTUP_FAILURE

    worker = _FakeWorker(exits_with=STARTUP_FAILURE)
    supervisor, replacements = _supervising(worker)
    assert not worker.killed_while_running  # it was given the time to exit with its own code
    assert supervisor.startup_failed and supervisor.should_exit.is_set()
    assert replacements == []


def test_a_hung_worker_is_killed_and_replaced() -> None:
    worker = _FakeWorker(exits_with=None)
    supervisor, replacements = _supervising(worker)
    assert worker.killed_while_running
    assert not supervisor.startup_failed and not supervisor.should_exit.is_set()
    assert supervisor.processes == replacements and len(replacements) == 1
