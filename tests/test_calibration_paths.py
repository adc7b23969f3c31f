"""Each image is scored against validation digits that arrived the same way: as MNIST pixels
(JSON pixels, preprocess=none, 28x28 uploads), or refitted from a picture by preprocess=mnist.
The reply says which calibration each image got, and its threshold."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging import DecodeLimits, image_bytes_to_digits
from tests.conftest import app_on, png_of
from training.export import export_checkpoint
from training.renderings import RENDERINGS, read_picture
from vae_common.checkpoint import load_checkpoint
from vae_common.scoring import SCORES


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    return module_client


def picture_of(digit: np.ndarray, side: int = 84) -> bytes:
    """The digit resampled to side x side: a picture preprocess=mnist must refit."""
    buffer = io.BytesIO()
    Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def score(client: TestClient, files: list[bytes], **params: str) -> dict[str, Any]:
    response = client.post(
        "/anomaly-score",
        files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)],
        params=params,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_checkpoint_holds_a_refit_calibration_for_every_score(
    client: TestClient, tiny_model_path: Path
) -> None:
    calibration = load_checkpoint(tiny_model_path, torch.device("cpu")).metadata["calibration"]
    refit = calibration["paths"]["refit"]
    assert set(refit["scores"]) == set(SCORES) == set(calibration["scores"])
    assert refit["components"] and refit["rendered_as"] == [r.__name__ for r in RENDERINGS]
    # Pictures are harder than pixels: the refit path's p99 is its own number.
    assert refit["scores"]["reconstruction"]["named"] != calibration["scores"]["reconstruction"]
    assert set(client.get("/model").json()["calibration_paths"]) == {"pixels", "refit"}


def test_28x28_uploads_get_the_pixel_calibration_and_the_pixel_paths_score(
    client: TestClient, mnist_sample: np.ndarray
) -> None:
    digits = mnist_sample[:3]
    as_files = score(client, [png_of(digit) for digit in digits])
    pixels = (digits.astype(np.float32) / 255.0).reshape(3, -1).tolist()
    response = client.post("/anomaly-score", json={"pixels": pixels})
    as_pixels = response.json()
    for file_result, pixel_result in zip(as_files["results"], as_pixels["results"], strict=True):
        assert file_result["calibration"] == pixel_result["calibration"] == "pixels"
        assert file_result["score"] == pytest.approx(pixel_result["score"], abs=1e-4)
        assert file_result["threshold"] == as_files["threshold"]


def test_pictures_get_the_refit_calibration_and_its_threshold(
    client: TestClient, mnist_sample: np.ndarray
) -> None:
    body = score(client, [picture_of(digit) for digit in mnist_sample[:3]])
    pixels_cut = score(client, [png_of(mnist_sample[0])])["threshold"]
    for result in body["results"]:
        assert result["calibration"] == "refit"
        assert result["threshold"] == body["threshold"] != pixels_cut
        assert result["is_anomaly"] == (result["score"] > result["threshold"])


def test_a_mixed_request_keeps_its_order_and_each_image_its_calibration(
    client: TestClient, mnist_sample: np.ndarray
) -> None:
    files = [png_of(mnist_sample[0]), picture_of(mnist_sample[1]), png_of(mnist_sample[2])]
    mixed = score(client, files, fpr="0.05")
    assert [r["index"] for r in mixed["results"]] == [0, 1, 2]
    assert [r["calibration"] for r in mixed["results"]] == ["pixels", "refit", "pixels"]
    assert mixed["threshold"] == mixed["results"][0]["threshold"]  # the first image's
    for index, data in enumerate(files):
        alone = score(client, [data], fpr="0.05")["results"][0]
        assert mixed["results"][index]["score"] == pytest.approx(alone["score"], abs=1e-4)
        assert mixed["results"][index]["threshold"] == alone["threshold"]


def test_a_checkpoint_without_a_refit_calibration_scores_pictures_as_pixels(
    tiny_model_path: Path, tmp_path: Path, mnist_sample: np.ndarray
) -> None:
    checkpoint = load_checkpoint(tiny_model_path, torch.device("cpu"))
    metadata = json.loads(json.dumps(checkpoint.metadata))
    for key in ("format_version", "model_id", "weights_sha256"):
        del metadata[key]
    del metadata["calibration"]["paths"]  # as model v1 was exported
    export_checkpoint(checkpoint.module, metadata, tmp_path / "model.pt")
    with TestClient(app_on(tmp_path / "model.pt")) as client:
        body = score(client, [picture_of(mnist_sample[0]), png_of(mnist_sample[1])])
        assert [r["calibration"] for r in body["results"]] == ["pixels", "pixels"]
        assert set(client.get("/model").json()["calibration_paths"]) == {"pixels"}


@pytest.mark.parametrize("render", RENDERINGS)
def test_training_reads_rendered_pictures_exactly_as_the_service_does(
    render: Any, mnist_sample: np.ndarray
) -> None:
    for index, digit in enumerate(mnist_sample[:5]):
        data = render(digit, np.random.default_rng([7, index]))
        served = image_bytes_to_digits([data], "mnist", DecodeLimits())
        trained = read_picture(data)
        assert bool(served.refit[0]) == trained.refit
        np.testing.assert_array_equal(served.pixels[0], trained.pixels)
