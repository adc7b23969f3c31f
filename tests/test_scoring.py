"""Scores, calibration and thresholds: tiny checkpoint for the mechanics, the shipped one
for the behaviour on real digits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.engine import batch_buckets, load_engine, padded_batch_size
from app.jobs import SCORE_OVERFLOW, finite
from app.schemas import AnomalyResponse, ScoreName
from tests.conftest import SHIPPED_MODEL
from vae_common.scoring import (
    SCORE_DEFINITIONS,
    Calibration,
    TailModel,
    calibration_table,
    fixed_draws,
    pixel_entropy,
)


def test_score_names_in_the_api_match_the_definitions() -> None:
    assert {name.value for name in ScoreName} == set(SCORE_DEFINITIONS)


def test_calibration_percentiles_are_monotone_and_bounded() -> None:
    scores = np.random.default_rng(0).gamma(3.0, 10.0, size=5000)
    calibration = Calibration.from_table(calibration_table(scores, None))
    grid = np.linspace(scores.min() - 10, scores.max() + 10, 2000)
    percentiles = calibration.percentile(grid)
    assert np.all(np.diff(percentiles) >= 0)
    assert percentiles[0] == 0.0 and percentiles[-1] == 100.0
    # About 1% of the calibration scores lie above the p99 threshold.
    assert (scores > calibration.threshold_for_fpr(0.01)).mean() == pytest.approx(0.01, abs=0.002)


def test_every_shipped_calibration_is_monotone() -> None:
    model = load_engine(SHIPPED_MODEL)
    for name, calibration in model.calibrations.items():
        assert np.all(np.diff(calibration.values) >= 0), name
        named = model.checkpoint.metadata["calibration"]["scores"][name]["named"]
        assert named["p50"] <= named["p90"] <= named["p95"] <= named["p99"] <= named["p99.9"]


def test_tail_model_is_continuous_and_monotone_beyond_the_data() -> None:
    scores = np.random.default_rng(1).normal(100.0, 15.0, size=5000)
    tail = TailModel.from_table(TailModel.fit(scores))
    grid = np.linspace(0.0, 250.0, 5001)
    upper = tail.upper_surprise(grid)
    assert np.all(np.diff(upper) >= -1e-9)  # rarer the higher the score
    two_sided = tail.two_sided_surprise(grid)
    middle = int(np.argmin(two_sided))
    assert abs(grid[middle] - 100.0) < 5.0  # least surprising near the median
    assert np.all(np.diff(two_sided[:middle]) <= 1e-9) and np.all(
        np.diff(two_sided[middle:]) >= -1e-9
    )
    assert np.all(np.abs(np.diff(upper)) < 0.1)  # no jumps at the tail boundaries


def test_pixel_entropy_is_zero_for_binary_images_and_maximal_at_grey() -> None:
    binary = torch.zeros(1, 1, 28, 28)
    binary[..., 10:18, 10:18] = 1.0
    grey = torch.full((1, 1, 28, 28), 0.5)
    assert float(pixel_entropy(binary)[0]) == pytest.approx(0.0, abs=1e-2)
    assert float(pixel_entropy(grey)[0]) == pytest.approx(784 * np.log(2), rel=1e-5)


def test_fixed_draws_are_the_same_on_every_call() -> None:
    first = fixed_draws(16, 4, torch.device("cpu"))
    torch.testing.assert_close(first, fixed_draws(16, 4, torch.device("cpu")))
    assert first.shape == (16, 4)


def test_scores_are_deterministic(tiny_model_path: Path) -> None:
    model = load_engine(tiny_model_path)
    x = torch.rand(5, 1, 28, 28)
    for name in SCORE_DEFINITIONS:
        first = model.score(x, name, None).score
        torch.testing.assert_close(first, model.score(x, name, None).score, msg=name)


def test_batch_buckets_are_few_and_pad_at_most_a_fifth() -> None:
    assert batch_buckets(256) == [
        *range(1, 9), 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64,
        80, 96, 112, 128, 160, 192, 224, 256,
    ]  # fmt: skip
    for rows in range(1, 2049):
        padded = padded_batch_size(rows)
        assert rows <= padded and padded - rows < padded / 5, rows
        assert padded_batch_size(padded) == padded  # a bucket is its own bucket


def test_padding_rows_change_no_result(tiny_model_path: Path) -> None:
    model = load_engine(tiny_model_path)
    x = torch.rand(9, 1, 28, 28)  # runs as a batch of 10: one blank row is added
    for name in SCORE_DEFINITIONS:
        batch = model.score(x, name, None)
        alone = [model.score(x[i : i + 1], name, None) for i in range(len(x))]  # no padding
        assert batch.score.shape == batch.kl.shape == (9,), name
        for field in ("score", "reconstruction_loss", "kl"):
            torch.testing.assert_close(
                getattr(batch, field),
                torch.cat([getattr(result, field) for result in alone]),
                rtol=1e-4,
                atol=1e-4,
                msg=f"{name}.{field}",
            )
    reconstruction, loss = model.reconstruct(x)
    assert reconstruction.shape == (9, 1, 28, 28) and loss.shape == (9,)
    torch.testing.assert_close(
        reconstruction[:1], model.reconstruct(x[:1])[0], rtol=1e-4, atol=1e-5
    )
    assert model.sample(9, 1.0, seed=3).shape == (9, 1, 28, 28)


def test_threshold_and_fpr_change_is_anomaly_as_documented(
    make_app: Callable[..., FastAPI],
) -> None:
    rows = [[0.0] * 784, [0.5] * 784]
    with TestClient(make_app()) as client:
        default = client.post("/anomaly-score", json={"pixels": rows}).json()
        scores = [result["score"] for result in default["results"]]
        low = min(scores) - 1.0
        everything = client.post(f"/anomaly-score?threshold={low}", json={"pixels": rows}).json()
        high = max(scores) + 1.0
        nothing = client.post(f"/anomaly-score?threshold={high}", json={"pixels": rows}).json()
        strict = client.post("/anomaly-score?fpr=0.5", json={"pixels": rows}).json()
        lenient = client.post("/anomaly-score?fpr=0.001", json={"pixels": rows}).json()
    assert default["threshold_source"] == "validation p99"
    assert everything["threshold"] == low and everything["threshold_source"] == "request"
    assert all(result["is_anomaly"] for result in everything["results"])
    assert not any(result["is_anomaly"] for result in nothing["results"])
    # A higher tolerated false-positive rate means a lower threshold, never a higher one.
    assert strict["threshold"] < default["threshold"] < lenient["threshold"]
    assert strict["threshold_source"] == "fpr=0.5"
    for loose, tight in zip(strict["results"], lenient["results"], strict=True):
        assert loose["is_anomaly"] or not tight["is_anomaly"]
        assert loose["is_anomaly"] == (loose["score"] > strict["threshold"])


@pytest.mark.shipped
def test_real_digits_score_lower_than_noise_and_blank(
    shipped_client: httpx.Client, mnist_sample: np.ndarray
) -> None:
    digits = (mnist_sample[:100].astype(np.float32) / 255.0).reshape(100, -1)
    noise = np.random.default_rng(0).random((20, 784), dtype=np.float32)
    blank = np.zeros((1, 784), dtype=np.float32)
    rows = np.concatenate([digits, noise, blank]).tolist()
    response = shipped_client.post("/anomaly-score", json={"pixels": rows[:64]})
    rest = shipped_client.post("/anomaly-score", json={"pixels": rows[64:]})
    assert response.status_code == rest.status_code == 200
    results = response.json()["results"] + rest.json()["results"]
    scores = np.array([result["score"] for result in results])
    flagged = np.array([result["is_anomaly"] for result in results])
    digit_scores, odd_scores = scores[:100], scores[100:]
    assert odd_scores.min() > np.percentile(digit_scores, 99)
    assert flagged[100:].all()
    assert flagged[:100].mean() <= 0.05  # calibrated for 1%; 100 digits leave room for chance


def test_overflowed_scores_read_as_the_largest_float32_and_finite_ones_pass_unchanged() -> None:
    values = np.array([1.5, np.inf, np.nan, -np.inf], dtype=np.float32)
    assert finite(values).tolist() == [1.5, SCORE_OVERFLOW, SCORE_OVERFLOW, -SCORE_OVERFLOW]
    ordinary = np.array([0.25, 7.0], dtype=np.float32)
    assert finite(ordinary) is ordinary


@pytest.mark.shipped
def test_a_blank_image_overflowing_the_model_is_flagged_with_a_finite_score(
    shipped_client: httpx.Client,
) -> None:
    """Model v2 encodes an all-black image with a log-variance of ~118, so its KL is
    infinite in float32; the reply must still be valid JSON of the documented schema."""
    response = shipped_client.post("/anomaly-score", json={"pixels": [[0.0] * 784]})
    assert response.status_code == 200
    reply = AnomalyResponse.model_validate(response.json())
    (result,) = reply.results
    assert result.score == result.kl == SCORE_OVERFLOW
    assert result.is_anomaly and result.percentile == 100.0


@pytest.mark.shipped
def test_flipped_digits_score_higher_than_upright_ones(
    shipped_client: httpx.Client, mnist_sample: np.ndarray
) -> None:
    digits = mnist_sample[:64].astype(np.float32) / 255.0
    upright = shipped_client.post(
        "/anomaly-score", json={"pixels": digits.reshape(64, -1).tolist()}
    )
    flipped = shipped_client.post(
        "/anomaly-score", json={"pixels": digits[:, :, ::-1].reshape(64, -1).tolist()}
    )
    upright_scores = [result["score"] for result in upright.json()["results"]]
    flipped_scores = [result["score"] for result in flipped.json()["results"]]
    assert np.median(flipped_scores) > np.percentile(upright_scores, 90)
