"""The published checkpoint through the real HTTP path: `python -m app` (uvicorn) on loopback."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from scripts.paper_photos import paper_photo
from tests.conftest import PROJECT_ROOT, SHIPPED_MODEL, encode
from vae_common.checkpoint import load_checkpoint
from vae_common.pixels import to_unit_interval

pytestmark = [pytest.mark.shipped, pytest.mark.slow]
SCALE = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "VAE_HOST": "127.0.0.1",
        "VAE_PORT": str(port),
        "VAE_MODEL_PATH": str(SHIPPED_MODEL),
        "VAE_DEVICE": "cpu",
        "VAE_LOG_LEVEL": "warning",
    }
    log_path = tmp_path_factory.mktemp("server") / "stderr.log"
    log = log_path.open("w")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the service did not become ready within 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def latent_nearest_label(image: np.ndarray, sample: np.ndarray, labels: np.ndarray) -> int:
    """5-nearest-neighbour vote in latent space against labelled MNIST test digits."""
    module = load_checkpoint(SHIPPED_MODEL, torch.device("cpu")).module
    with torch.inference_mode():
        query, _ = module.encode(to_unit_interval(torch.from_numpy(image[None])))
        known, _ = module.encode(to_unit_interval(torch.from_numpy(sample)))
    nearest = torch.cdist(query, known)[0].argsort()[:5].numpy()
    return int(np.bincount(labels[nearest]).argmax())


@pytest.mark.parametrize("digit", ["7", "0"])
def test_paper_photo_reconstructs_into_a_recognisable_digit(
    live_server: str, digit: str, mnist_sample: np.ndarray, mnist_sample_labels: np.ndarray
) -> None:
    photo = encode(paper_photo(digit, size=300), "JPEG", quality=90)
    response = httpx.post(
        f"{live_server}/reconstruct",
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


def test_live_server_scores_and_reports_metrics(live_server: str, mnist_sample: np.ndarray) -> None:
    rows = (mnist_sample[:8].astype(np.float32) / 255.0).reshape(8, -1).tolist()
    scored = httpx.post(f"{live_server}/anomaly-score", json={"pixels": rows}, timeout=30)
    assert scored.status_code == 200
    assert len(scored.json()["results"]) == 8
    metrics = httpx.get(f"{live_server}/metrics", timeout=5).text
    assert 'vae_images_processed_total{endpoint="anomaly-score"} 8.0' in metrics
