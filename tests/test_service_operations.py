"""Start-up, readiness, auth, dynamic batching and concurrency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.batching import DynamicBatcher, Served
from app.jobs import Job
from tests.conftest import PROJECT_ROOT, app_on, png_of
from tests.early_start import early_start
from tests.service_process import free_port
from tests.synthetic import stroke_digits
from vae_common.checkpoint import CheckpointError

API_KEY = "s3cret-key"


# --- readiness and start-up -------------------------------------------------------------


def test_readyz_is_503_before_the_lifespan_and_200_after(make_app: Callable[..., FastAPI]) -> None:
    application = make_app()
    not_started = TestClient(application)  # no `with`: the lifespan has not run
    response = not_started.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    assert not_started.post("/sample").status_code == 503
    with TestClient(application) as started:
        assert started.get("/readyz").status_code == 200
    # After shutdown the app reports not ready again.
    assert TestClient(application).get("/readyz").status_code == 503


def assert_startup_fails(app: FastAPI, reason: str) -> None:
    """Entering the app's lifespan must raise CheckpointError matching `reason`."""
    with pytest.raises(CheckpointError, match=reason), TestClient(app):
        pass


def test_startup_fails_on_a_corrupt_checkpoint(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"this is not a zip archive")
    assert_startup_fails(make_app(model_path=corrupt), "not a readable TorchScript checkpoint")


def test_startup_fails_when_the_sha256_does_not_match(
    make_app: Callable[..., FastAPI], tiny_model_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model.pt"
    shutil.copy(tiny_model_path, copy)
    sidecar = json.loads(tiny_model_path.with_name("model.json").read_text())
    sidecar["sha256"] = "0" * 64
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    assert_startup_fails(make_app(model_path=copy), "sha256 mismatch")


def test_startup_fails_on_tampered_weights(
    make_app: Callable[..., FastAPI], tiny_model_path: Path, tmp_path: Path
) -> None:
    module = torch.jit.load(str(tiny_model_path), _extra_files=(extra := {"model.json": ""}))
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    tampered = tmp_path / "model.pt"
    torch.jit.save(module, str(tampered), _extra_files=extra)
    assert_startup_fails(make_app(model_path=tampered), "weights sha256 mismatch")


def test_startup_fails_when_the_model_file_is_missing(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    assert_startup_fails(make_app(model_path=tmp_path / "absent.pt"), "model file not found")


def test_cuda_without_a_gpu_is_a_clear_startup_error(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with (
        pytest.raises(RuntimeError, match="VAE_DEVICE=cuda but no CUDA GPU"),
        TestClient(make_app(device="cuda")),
    ):
        pass


@dataclass
class ExitedRun:
    """`python -m app` run to its exit; "ready" once it has exited (tests/early_start.py)."""

    process: subprocess.Popen[bytes]
    stderr_path: Path
    checkpoint: Path
    stderr: str = ""

    def wait_until_ready(self) -> None:
        self.process.wait(timeout=120)
        self.stderr = self.stderr_path.read_text()


def start_on_a_corrupt_checkpoint(
    request: pytest.FixtureRequest, workers: int
) -> AbstractContextManager[ExitedRun]:
    folder: Path = request.getfixturevalue("tmp_path_factory").mktemp("corrupt")
    corrupt = folder / "model.pt"
    corrupt.write_bytes(b"\x00" * 100)
    return _run_to_exit(corrupt, workers, folder / "stderr.log")


@early_start()
def corrupt_checkpoint_run(request: pytest.FixtureRequest) -> AbstractContextManager[ExitedRun]:
    return start_on_a_corrupt_checkpoint(request, workers=1)


@early_start()
def corrupt_checkpoint_run_two_workers(
    request: pytest.FixtureRequest,
) -> AbstractContextManager[ExitedRun]:
    return start_on_a_corrupt_checkpoint(request, workers=2)


@contextmanager
def _run_to_exit(checkpoint: Path, workers: int, stderr_path: Path) -> Iterator[ExitedRun]:
    env = {
        **os.environ,
        "VAE_MODEL_PATH": str(checkpoint),
        "VAE_PORT": str(free_port()),
        "VAE_WORKERS": str(workers),
    }
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        yield ExitedRun(process, stderr_path, checkpoint)
    finally:
        process.kill()
        process.wait()


def clear_startup_failure(result: ExitedRun) -> list[str]:
    """The critical lines of a run that stopped on a corrupt checkpoint, once checked that it
    exited nonzero, that each says why naming the file, and that no traceback was printed."""
    assert result.process.returncode != 0
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    critical = [r["message"] for r in records if r["level"] == "critical"]
    for line in critical:
        assert str(result.checkpoint) in line
        assert "not a readable TorchScript checkpoint" in line
    assert "Traceback" not in result.stderr
    return critical


@pytest.mark.slow
def test_process_exits_nonzero_with_one_clear_line_on_a_corrupt_checkpoint(
    corrupt_checkpoint_run: ExitedRun,
) -> None:
    assert len(clear_startup_failure(corrupt_checkpoint_run)) == 1


@pytest.mark.slow
def test_workers_that_cannot_start_stop_the_service_with_a_nonzero_exit(
    corrupt_checkpoint_run_two_workers: ExitedRun,
) -> None:
    # uvicorn's supervisor stopped with exit 0, after a traceback from every worker.
    critical = clear_startup_failure(corrupt_checkpoint_run_two_workers)
    assert 1 <= len(critical) <= 2  # one per worker that got as far as loading
    assert "failed to start, stopping" in corrupt_checkpoint_run_two_workers.stderr


# --- API key ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tiny_model_path: Path) -> Iterator[TestClient]:
    """The API key tests only send requests: one keyed app for them all."""
    with TestClient(app_on(tiny_model_path, api_key=API_KEY)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/sample"),
        ("get", "/model"),
        ("post", "/anomaly-score"),
        ("post", "/reconstruct"),
    ],
)
def test_auth_on_rejects_requests_without_the_key(
    secured: TestClient, method: str, path: str
) -> None:
    response = getattr(secured, method)(path)
    assert response.status_code == 401
    assert "API key" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_auth_on_rejects_a_wrong_key(secured: TestClient) -> None:
    response = secured.post("/sample", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}]
)
def test_auth_on_accepts_bearer_or_header_key(secured: TestClient, headers: dict[str, str]) -> None:
    assert secured.post("/sample", json={"n": 1}, headers=headers).status_code == 200
    assert secured.get("/model", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_auth_on_leaves_probes_and_metrics_open(secured: TestClient, path: str) -> None:
    assert secured.get(path).status_code == 200


def test_auth_off_needs_no_key(client: TestClient) -> None:
    assert client.post("/sample", json={"n": 1}).status_code == 200


def test_a_blank_api_key_setting_means_auth_off(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(api_key="  ")) as client:
        assert client.get("/model").status_code == 200


# --- dynamic batching -------------------------------------------------------------------


def _score_concurrently(client: TestClient, rows: list[list[float]], query: str) -> list[dict]:  # type: ignore[type-arg]
    def one(row: list[float]) -> dict:  # type: ignore[type-arg]
        response = client.post(f"/anomaly-score?{query}", json={"pixels": [row]})
        assert response.status_code == 200, response.text
        return response.json()["results"][0]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        return list(pool.map(one, rows))


def _batch_sizes(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    count = float(text.split("vae_batch_images_count ")[1].split()[0])
    total = float(text.split("vae_batch_images_sum ")[1].split()[0])
    return count, total


@pytest.mark.parametrize("score", ["typical_upright", "neg_elbo"])
def test_batched_and_unbatched_results_agree(make_app: Callable[..., FastAPI], score: str) -> None:
    digits = stroke_digits(12, seed=21).astype(np.float32) / 255.0
    rows = [digit.ravel().tolist() for digit in digits]
    query = f"score={score}"
    with TestClient(make_app(batch_max_size=1)) as unbatched:
        alone = _score_concurrently(unbatched, rows, query)
        assert _batch_sizes(unbatched) == (12.0, 12.0)
    with TestClient(make_app(batch_max_size=64, batch_max_delay_ms=200)) as batched:
        together = _score_concurrently(batched, rows, query)
        batches, images = _batch_sizes(batched)
    assert images == 12.0 and batches < 12.0  # some requests really shared a forward pass
    # Equal up to float32 rounding: BLAS picks kernels by batch size, so the last bits of a
    # matrix product can differ between a batch of 1 and a batch of 12.
    for single, shared in zip(alone, together, strict=True):
        assert shared["index"] == single["index"] == 0
        assert shared["score"] == pytest.approx(single["score"], rel=1e-4, abs=1e-4)
        assert shared["reconstruction_loss"] == pytest.approx(
            single["reconstruction_loss"], rel=1e-5
        )
        assert shared["kl"] == pytest.approx(single["kl"], rel=1e-4, abs=1e-5)
        assert shared["is_anomaly"] == single["is_anomaly"]


def test_queue_full_answers_503_with_retry_after(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(batch_queue_images=2)) as client:
        response = client.post("/anomaly-score", json={"pixels": [[0.0] * 784] * 3})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "capacity" in response.json()["detail"]
        assert client.post("/anomaly-score", json={"pixels": [[0.0] * 784] * 2}).status_code == 200


# --- concurrency ------------------------------------------------------------------------


def test_health_answers_while_a_batch_is_being_scored(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model runs on its own thread: /healthz must answer while it is busy."""
    inside_model, release = threading.Event(), threading.Event()
    real_execute = DynamicBatcher._execute

    def slow_execute(batcher: DynamicBatcher, job: Job, inputs: np.ndarray) -> Served:
        inside_model.set()
        assert release.wait(timeout=30)
        return real_execute(batcher, job, inputs)

    monkeypatch.setattr(DynamicBatcher, "_execute", slow_execute)
    with TestClient(make_app()) as client, ThreadPoolExecutor(max_workers=1) as pool:
        scoring = pool.submit(client.post, "/anomaly-score", json={"pixels": [[0.0] * 784] * 64})
        assert inside_model.wait(timeout=30)
        started = time.perf_counter()
        health = client.get("/healthz")
        ready = client.get("/readyz")
        elapsed = time.perf_counter() - started
        assert not scoring.done()  # the batch is still inside the model
        release.set()
        assert scoring.result(timeout=30).status_code == 200
    assert health.status_code == 200 and ready.status_code == 200
    assert elapsed < 5.0


@pytest.mark.usefixtures("two_torch_threads")
def test_two_model_instances_run_two_batches_at_once(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    """VAE_MODEL_INSTANCES=2: a second batch starts while the first is still in the model."""
    both_inside = threading.Barrier(2, timeout=30)
    real_execute = DynamicBatcher._execute
    threads_seen: list[int] = []

    def meeting_execute(batcher: DynamicBatcher, job: Job, inputs: np.ndarray) -> Served:
        threads_seen.append(torch.get_num_threads())
        both_inside.wait()  # BrokenBarrierError (a 500) unless two batches are inside at once
        return real_execute(batcher, job, inputs)

    monkeypatch.setattr(DynamicBatcher, "_execute", meeting_execute)
    digit = png_of(stroke_digits(1, seed=5)[0])
    with TestClient(make_app(model_instances=2)) as client, ThreadPoolExecutor(2) as pool:
        # Different computations never share a batch, so these are two batches.
        scoring = pool.submit(client.post, "/anomaly-score", files={"files": ("d.png", digit, "")})
        rebuilt = pool.submit(client.post, "/reconstruct", files={"file": ("d.png", digit, "")})
        assert scoring.result(timeout=60).status_code == 200
        assert rebuilt.result(timeout=60).status_code == 200
    assert threads_seen == [1, 1]  # each instance computes on one thread


def test_bf16_precision_serves_large_batches(make_app: Callable[..., FastAPI]) -> None:
    digits = stroke_digits(64, seed=5)
    rows = [(digit.astype(np.float32) / 255.0).ravel().tolist() for digit in digits]
    with TestClient(make_app(precision="bf16")) as client:
        assert client.get("/model").json()["precision"] == "bf16"
        scored = client.post("/anomaly-score", json={"pixels": rows})
        assert scored.status_code == 200, scored.text
        assert len(scored.json()["results"]) == 64
        assert client.post("/sample", json={"n": 64}).headers["content-type"] == "image/png"
        files = [
            ("files", (f"{i}.png", png_of(digit), "image/png")) for i, digit in enumerate(digits)
        ]
        assert client.post("/encode", files=files).status_code == 200


@pytest.mark.usefixtures("two_torch_threads")
def test_one_instance_gives_large_batches_every_intra_op_thread(
    make_app: Callable[..., FastAPI],
) -> None:
    # VAE_TORCH_THREADS=0 keeps torch's default (the default setting is 1 thread)
    with TestClient(make_app(torch_threads=0, model_instances=1)) as client:
        engine = client.app.state.services.engine  # type: ignore[attr-defined]
        assert engine.execution.large_batch_threads == torch.get_num_threads() == 2


def test_a_bad_request_does_not_affect_concurrent_good_ones(client: TestClient) -> None:
    digit = png_of(stroke_digits(1, seed=4)[0])
    expected = client.post("/anomaly-score", files={"files": ("d.png", digit, "")}).json()

    def good() -> dict:  # type: ignore[type-arg]
        response = client.post("/anomaly-score", files={"files": ("d.png", digit, "")})
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    def bad(index: int) -> int:
        payloads = [b"", b"not an image", digit[: len(digit) // 3]]
        response = client.post(
            "/anomaly-score", files={"files": ("b.png", payloads[index % 3], "")}
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        goods = [pool.submit(good) for _ in range(12)]
        bads = [pool.submit(bad, i) for i in range(12)]
        assert all(400 <= future.result() < 500 for future in bads)
        for future in goods:
            # Good requests may share a batch with each other (never with the bad ones, which
            # fail before reaching the model), so compare up to float32 rounding.
            result, reference = future.result()["results"][0], expected["results"][0]
            assert result["score"] == pytest.approx(reference["score"], rel=1e-4)
            assert result["is_anomaly"] == reference["is_anomaly"]
