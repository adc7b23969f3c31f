"""The engine, its execution back ends and the jobs, without HTTP; and a checkpoint that
lacks calibration for some scores, over HTTP."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app.execution
from app.engine import Engine, batch_buckets, load_engine
from app.errors import InvalidInputError
from app.execution import CpuExecution, CudaExecution, choose_execution
from app.jobs import ReconstructJob, SampleJob, ScoreJob
from tests.conftest import SHIPPED_MODEL
from vae_common.checkpoint import load_checkpoint, weights_sha256
from vae_common.scoring import SCORES


@pytest.fixture(scope="module")
def engine(tiny_model_path: Path) -> Iterator[Engine]:
    execution = CpuExecution()
    yield load_engine(tiny_model_path, execution)
    execution.close()


# --- CPU execution ---------------------------------------------------------------------


def test_cpu_execution_runs_small_batches_on_one_thread_and_restores_the_setting() -> None:
    before = torch.get_num_threads()
    execution = CpuExecution(torch_threads=2)
    try:
        assert execution.large_batch_threads == 2
        with execution.running(8):
            assert torch.get_num_threads() == 1
        with execution.running(64):
            assert torch.get_num_threads() == 2
    finally:
        execution.close()
    assert torch.get_num_threads() == before


def test_bf16_precision_autocasts_every_pass_and_hands_back_float32() -> None:
    execution = CpuExecution(precision="bf16")
    try:
        for rows in (1, 256):
            with execution.running(rows):
                assert torch.is_autocast_enabled("cpu")
                product = torch.ones(4, 4) @ torch.ones(4, 4)
                assert product.dtype == torch.bfloat16
        assert not torch.is_autocast_enabled("cpu")
        assert execution.to_host(product).dtype == torch.float32
    finally:
        execution.close()
    fp32 = CpuExecution()
    with fp32.running(256):
        assert not torch.is_autocast_enabled("cpu")
    fp32.close()


def test_bf16_on_a_cpu_without_bfloat16_hardware_warns_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app.execution, "native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="app.execution"):
        CpuExecution(precision="bf16").close()
        CpuExecution(precision="fp32").close()
    (warning,) = caplog.records
    assert "without AMX or AVX-512 BF16" in warning.getMessage()


def test_bf16_weights_are_cast_once_and_compute_what_autocast_computes() -> None:
    # The shipped model: convolutions and linear layers, in channels_last order.
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    execution = CpuExecution(torch_threads=1, precision="bf16")
    module = load_engine(SHIPPED_MODEL, execution, warm_up_rows=8).checkpoint.module
    assert all(p.dtype == torch.bfloat16 for p in module.parameters())
    assert all(b.dtype == torch.float32 for b in module.buffers())  # the prior stays float32
    convolutions = [p for p in module.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert convolutions and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in convolutions
    )
    # The float32 checkpoint (in the same memory order) under autocast rounds the same
    # weights on every pass: the same numbers, bit for bit.
    reference = load_checkpoint(SHIPPED_MODEL, torch.device("cpu")).module
    reference.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = reference.anomaly_terms(x)
        with execution.running(8):
            got = module.anomaly_terms(x)
    execution.close()
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)


def test_bf16_scores_stay_close_to_float32_whatever_the_batch(tiny_model_path: Path) -> None:
    x = torch.rand(64, 1, 28, 28)
    results = {}
    for precision in ("fp32", "bf16"):
        execution = CpuExecution(precision=precision)
        engine = load_engine(tiny_model_path, execution)
        results[precision] = engine.score(x, "neg_elbo", None)
        if precision == "bf16":
            # Every pass is bf16, so a reply does not depend on the batch it shared.
            alone = torch.cat([engine.score(row, "neg_elbo", None).score for row in x[:5].split(1)])
            torch.testing.assert_close(alone, results["bf16"].score[:5])
        execution.close()
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16.score.dtype == torch.float32
    assert not torch.equal(bf16.score, fp32.score)  # bf16 really ran
    # The tiny model's losses are ~500 nats on noise; bf16 keeps them within a fraction of 1%.
    torch.testing.assert_close(bf16.score, fp32.score, rtol=1e-2, atol=0.5)


def test_channels_last_changes_the_memory_order_of_convolutions_only() -> None:
    # The shipped model: convolutions are what channels_last is for (the tiny model is an MLP).
    x = torch.rand(16, 1, 28, 28)
    engines = {}
    for channels_last in (False, True):
        execution = CpuExecution(torch_threads=1, channels_last=channels_last)
        engines[channels_last] = load_engine(SHIPPED_MODEL, execution, warm_up_rows=16)
        execution.close()
    nhwc, nchw = engines[True], engines[False]
    weights = {name: p for name, p in nhwc.checkpoint.module.named_parameters() if p.dim() == 4}
    assert weights and all(
        p.is_contiguous(memory_format=torch.channels_last) for p in weights.values()
    )
    # With one input channel both orders are the same bytes; every other one really moved.
    assert all(not p.is_contiguous() for p in weights.values() if p.shape[1] > 1)
    assert all(p.is_contiguous() for p in nchw.checkpoint.module.parameters())
    # Same weights (the hash reads contiguous copies), same results to float32 rounding.
    assert weights_sha256(nhwc.checkpoint.module) == nchw.checkpoint.metadata["weights_sha256"]
    torch.testing.assert_close(
        nhwc.score(x, nhwc.default_score, None).score, nchw.score(x, nchw.default_score, None).score
    )
    torch.testing.assert_close(nhwc.sample(16, 1.0, 3), nchw.sample(16, 1.0, 3))
    assert (nhwc.card()["channels_last"], nchw.card()["channels_last"]) == (True, False)


@pytest.mark.usefixtures("two_torch_threads")
def test_several_model_instances_compute_on_one_thread_each() -> None:
    before = torch.get_num_threads()
    execution = CpuExecution(torch_threads=2, model_instances=2)
    try:
        assert execution.large_batch_threads == 1
        with execution.running(256):
            assert torch.get_num_threads() == 1
    finally:
        execution.close()
    assert torch.get_num_threads() == before


# --- CUDA execution, its device calls faked ----------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """CudaExecution on the CPU: pinned allocation, device contexts and synchronisation are
    recorded instead of reaching a driver."""
    calls: dict[str, list[Any]] = {"pinned": [], "synchronize": [], "device": []}

    def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        calls["pinned"].append(shape)
        return torch.empty(shape, dtype=dtype)

    def device(index: Any) -> nullcontext[None]:
        calls["device"].append(index)
        return nullcontext()

    monkeypatch.setattr(app.execution, "pinned_empty", pinned_empty)
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda device=None: calls["synchronize"].append(device)
    )
    monkeypatch.setattr(torch.cuda, "device", device)
    return calls


def test_cuda_execution_stages_each_bucket_once_and_matches_the_cpu(
    fake_cuda: dict[str, list[Any]], tiny_model_path: Path, engine: Engine
) -> None:
    on_gpu = load_engine(tiny_model_path, CudaExecution(torch.device("cpu")), warm_up_rows=16)
    # Warm-up staged one pinned buffer per input shape, then synchronised once.
    staged = fake_cuda["pinned"]
    assert len(staged) == len(set(staged))
    for rows in batch_buckets(16):
        assert (rows, 1, 28, 28) in staged
    assert fake_cuda["synchronize"] == [torch.device("cpu")]
    warm = len(staged)
    pixels = np.random.default_rng(0).random((9, 28, 28), dtype=np.float32)
    for job in (ScoreJob("reconstruction", None), ScoreJob("neg_elbo", 4), ReconstructJob()):
        for gpu, cpu in zip(job.run(on_gpu, pixels), job.run(engine, pixels), strict=True):
            np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5)
    assert len(staged) == warm  # serving reuses the warm-up's buffers
    assert fake_cuda["device"]  # every forward pass ran inside the device's context


def test_vae_device_cuda_chooses_the_cuda_execution(
    fake_cuda: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    execution = choose_execution("cuda", torch_threads=0, model_instances=1)
    assert isinstance(execution, CudaExecution)
    assert execution.device == torch.device("cuda")
    assert isinstance(choose_execution("cpu", 0, 1), CpuExecution)


# --- primitives and jobs ------------------------------------------------------------------


def test_encode_and_decode_run_at_bucketed_sizes_without_changing_rows(engine: Engine) -> None:
    x = torch.rand(9, 1, 28, 28)  # runs as a batch of 10
    mu, logvar = engine.encode(x)
    assert mu.shape == logvar.shape == (9, engine.latent_dim)
    alone_mu, _ = engine.encode(x[3:4])
    torch.testing.assert_close(mu[3:4], alone_mu, rtol=1e-4, atol=1e-5)
    digits = engine.decode(mu)
    assert digits.shape == (9, 1, 28, 28)
    assert float(digits.min()) >= 0.0 and float(digits.max()) <= 1.0
    torch.testing.assert_close(digits[3:4], engine.decode(mu[3:4]), rtol=1e-4, atol=1e-5)


def test_jobs_are_hashable_and_equal_by_value() -> None:
    assert ScoreJob("neg_elbo", 16) == ScoreJob("neg_elbo", 16)
    assert len({ScoreJob("neg_elbo", 16), ScoreJob("neg_elbo", 16), ScoreJob("neg_elbo", 8)}) == 2
    assert ReconstructJob() == ReconstructJob() != ScoreJob("reconstruction", None)
    assert not SampleJob(4, 1.0, 0).shares_batches and ScoreJob("orientation", None).shares_batches


def test_score_job_picks_the_default_score_and_k(engine: Engine) -> None:
    assert ScoreJob.for_request(None, None, engine, max_k=1000) == ScoreJob(
        engine.default_score, None
    )
    assert (
        ScoreJob.for_request("iwae_nll", None, engine, max_k=1000).k == SCORES["iwae_nll"].default_k
    )
    assert ScoreJob.for_request("iwae_nll", None, engine, max_k=10).k == 10
    assert ScoreJob.for_request("orientation", 5, engine, max_k=1000).k is None
    with pytest.raises(InvalidInputError, match="at most 10 \\(VAE_MAX_IWAE_K\\)"):
        ScoreJob.for_request("neg_elbo", 11, engine, max_k=10)


def test_score_job_returns_one_row_per_image_with_percentiles(engine: Engine) -> None:
    pixels = np.random.default_rng(1).random((3, 28, 28), dtype=np.float32)
    scores, recon, kl, percentiles = ScoreJob("typical_upright", None).run(engine, pixels)
    assert scores.shape == recon.shape == kl.shape == percentiles.shape == (3,)
    np.testing.assert_array_equal(
        percentiles, engine.percentiles("typical_upright", scores.astype(np.float64))
    )


def test_sample_job_is_seeded(engine: Engine) -> None:
    job = SampleJob(5, 0.8, seed=11)
    (first,) = job.run(engine, job.inputs())
    (again,) = job.run(engine, job.inputs())
    assert first.shape == (5, 1, 28, 28) and job.inputs().shape == (5, 0)
    np.testing.assert_array_equal(first, again)


# --- a checkpoint without some calibration -------------------------------------------------


def recalibrated_copy(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """`source` re-saved with its embedded calibration edited (and no sidecar)."""
    extra = {"model.json": ""}
    module = torch.jit.load(str(source), _extra_files=extra)
    metadata = json.loads(extra["model.json"])
    edit(metadata["calibration"])
    torch.jit.save(module, str(target), _extra_files={"model.json": json.dumps(metadata)})
    return target


def test_a_score_without_calibration_is_unavailable_not_fatal(
    make_app: Callable[..., FastAPI], tiny_model_path: Path, tmp_path: Path
) -> None:
    partial = recalibrated_copy(
        tiny_model_path, tmp_path / "model.pt", lambda c: c["scores"].pop("iwae_nll")
    )
    with TestClient(make_app(model_path=partial)) as client:
        card = client.get("/model").json()
        refused = client.post("/anomaly-score?score=iwae_nll", json={"pixels": [[0.0] * 784]})
        served = client.post("/anomaly-score?score=neg_elbo", json={"pixels": [[0.0] * 784]})
        default = client.post("/anomaly-score", json={"pixels": [[0.0] * 784]})
    assert card["unavailable_scores"] == {"iwae_nll": "no calibration table in the checkpoint"}
    assert "iwae_nll" not in card["scores"] and "neg_elbo" in card["scores"]
    assert refused.status_code == 422
    assert "iwae_nll is unavailable" in refused.json()["detail"]
    assert "no calibration table" in refused.json()["detail"]
    assert served.status_code == default.status_code == 200


def test_without_fitted_components_the_default_score_answers_422(
    make_app: Callable[..., FastAPI], tiny_model_path: Path, tmp_path: Path
) -> None:
    partial = recalibrated_copy(
        tiny_model_path, tmp_path / "model.pt", lambda c: c.pop("components")
    )
    with TestClient(make_app(model_path=partial)) as client:
        assert client.get("/readyz").status_code == 200
        refused = client.post("/anomaly-score", json={"pixels": [[0.0] * 784]})
        served = client.post("/anomaly-score?score=reconstruction", json={"pixels": [[0.0] * 784]})
        card = client.get("/model").json()
    assert refused.status_code == 422
    assert "typical_upright is unavailable" in refused.json()["detail"]
    assert "no fitted score components" in refused.json()["detail"]
    assert served.status_code == 200
    assert set(card["unavailable_scores"]) == {"typical_upright"}
