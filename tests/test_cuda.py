"""The CUDA path on a real GPU: same results as the CPU, inputs staged in pinned memory.

Skipped (with the reason) where PyTorch sees no CUDA GPU; benchmarks/gpu.sh runs them on a
machine that has one (`pytest -m cuda`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.engine import Engine, load_engine
from app.execution import CpuExecution, CudaExecution
from app.imaging import pixels_to_tensor
from tests.conftest import png_of

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch"),
]


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path) -> Iterator[tuple[Engine, Engine]]:
    cpu = CpuExecution()
    yield (
        load_engine(tiny_model_path, cpu, warm_up_rows=64),
        load_engine(tiny_model_path, CudaExecution(torch.device("cuda")), warm_up_rows=64),
    )
    cpu.close()


def test_cuda_engine_scores_and_reconstructs_as_the_cpu_does(
    engines: tuple[Engine, Engine], mnist_sample: np.ndarray
) -> None:
    on_cpu, on_gpu = engines
    x = pixels_to_tensor(mnist_sample[:50].astype(np.float32) / 255.0)
    for name in on_cpu.calibrations:
        expected, got = on_cpu.score(x, name, None), on_gpu.score(x, name, None)
        assert got.score.device.type == "cpu"  # outputs come back to the host
        torch.testing.assert_close(got.score, expected.score, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got.kl, expected.kl, rtol=1e-4, atol=1e-3)
    expected_images, _ = on_cpu.reconstruct(x)
    got_images, _ = on_gpu.reconstruct(x)
    torch.testing.assert_close(got_images, expected_images, rtol=1e-4, atol=1e-4)


def test_cuda_inputs_are_staged_in_pinned_host_memory(engines: tuple[Engine, Engine]) -> None:
    _, on_gpu = engines
    execution = on_gpu.execution
    assert isinstance(execution, CudaExecution)
    on_device = execution.to_device(torch.rand(8, 1, 28, 28))
    assert on_device.device.type == "cuda"
    staged = execution._buffers.by_shape[(8, 1, 28, 28)]
    assert staged.is_pinned()


def test_service_on_cuda_answers_batched_as_unbatched(
    make_app: Callable[..., FastAPI], mnist_sample: np.ndarray
) -> None:
    files = [("files", (f"{i}.png", png_of(mnist_sample[i]), "image/png")) for i in range(8)]
    with TestClient(make_app(device="cuda")) as client:
        assert client.get("/readyz").json()["device"].startswith("cuda")
        together = client.post("/anomaly-score", files=files).json()["results"]
        alone = [client.post("/anomaly-score", files=[part]).json()["results"][0] for part in files]
    for joint, single in zip(together, alone, strict=True):
        assert joint["score"] == pytest.approx(single["score"], rel=1e-4, abs=1e-3)
