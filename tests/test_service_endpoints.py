"""Happy paths of every endpoint against the tiny checkpoint."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.imaging import is_small_png
from app.jobs import ScoreJob
from app.logs import JsonFormatter
from tests.conftest import png_of
from tests.synthetic import stroke_digits


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """These tests only send requests and read the replies: one app for them all (the
    metrics test counts on a fresh app of its own)."""
    return module_client


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_loaded_model(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["model_id"].startswith("vae-mlp-z4-")
    assert body["device"] == "cpu"


def test_sample_returns_a_png_grid_padded_like_make_grid(client: TestClient) -> None:
    response = client.post("/sample", json={"n": 10, "seed": 5})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "5"
    assert response.headers["x-model-id"].startswith("vae-mlp-z4-")
    grid = Image.open(io.BytesIO(response.content))
    # n=10 -> nrow=ceil(sqrt(10))=4 columns, 3 rows; 28px tiles with 2px padding.
    assert grid.mode == "L"
    assert grid.size == (4 * 30 + 2, 3 * 30 + 2)
    pixels = np.asarray(grid)
    assert pixels[0, :].max() == 0 and pixels[:, 0].max() == 0  # black padding


def test_sample_with_the_same_seed_is_byte_identical(client: TestClient) -> None:
    first = client.post("/sample", json={"n": 16, "seed": 42, "temperature": 0.7})
    second = client.post("/sample", json={"n": 16, "seed": 42, "temperature": 0.7})
    other = client.post("/sample", json={"n": 16, "seed": 43, "temperature": 0.7})
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content
    assert first.content != other.content


def test_sample_without_a_body_uses_defaults_and_reports_its_seed(client: TestClient) -> None:
    response = client.post("/sample")
    assert response.status_code == 200
    seed = int(response.headers["x-seed"])
    again = client.post("/sample", json={"seed": seed})
    assert again.content == response.content
    assert Image.open(io.BytesIO(response.content)).size == (8 * 30 + 2, 8 * 30 + 2)


def test_sample_honours_nrow(client: TestClient) -> None:
    response = client.post("/sample", json={"n": 6, "nrow": 6, "seed": 1})
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (6 * 30 + 2, 30 + 2)


def test_reconstruct_returns_a_28x28_png_and_its_loss(
    client: TestClient, stroke_png: bytes
) -> None:
    response = client.post("/reconstruct", files={"file": ("digit.png", stroke_png, "image/png")})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert float(response.headers["x-reconstruction-loss"]) > 0
    assert Image.open(io.BytesIO(response.content)).size == (28, 28)


def test_reconstruct_pair_layout_and_scale(client: TestClient, stroke_png: bytes) -> None:
    response = client.post(
        "/reconstruct",
        params={"layout": "pair", "scale": 3, "preprocess": "none"},
        files={"file": ("digit.png", stroke_png, "image/png")},
    )
    assert response.status_code == 200
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (28 * 3, 56 * 3)
    # With preprocess=none the left half is the input itself, upscaled.
    original = np.asarray(Image.open(io.BytesIO(stroke_png)))
    np.testing.assert_array_equal(image[::3, :84:3], original)


def test_anomaly_score_multipart_keeps_input_order(client: TestClient) -> None:
    digits = stroke_digits(3, seed=9)
    blank = np.zeros((28, 28), dtype=np.uint8)
    files = [("files", (f"{i}.png", png_of(img), "image/png")) for i, img in enumerate(digits)]
    files.append(("files", ("blank.png", png_of(blank), "image/png")))
    response = client.post("/anomaly-score", files=files, params={"preprocess": "none"})
    assert response.status_code == 200
    body = response.json()
    assert [result["index"] for result in body["results"]] == [0, 1, 2, 3]
    single = client.post(
        "/anomaly-score",
        files=[files[2]],
        params={"preprocess": "none"},
    ).json()
    assert single["results"][0]["score"] == body["results"][2]["score"]
    assert body["threshold_source"] == "validation p99"
    assert body["score"] and body["score_definition"] and body["model_id"]
    for result in body["results"]:
        assert set(result) == {
            "index",
            "score",
            "reconstruction_loss",
            "kl",
            "percentile",
            "is_anomaly",
            "calibration",
            "threshold",
        }
        assert 0.0 <= result["percentile"] <= 100.0


def test_anomaly_score_accepts_base64_images_and_pixels_alike(client: TestClient) -> None:
    digit = stroke_digits(1, seed=3)[0]
    as_base64 = client.post(
        "/anomaly-score?preprocess=none",
        json={"images": [base64.b64encode(png_of(digit)).decode()]},
    )
    as_pixels = client.post(
        "/anomaly-score", json={"pixels": [(digit.astype(np.float32) / 255).ravel().tolist()]}
    )
    assert as_base64.status_code == as_pixels.status_code == 200
    assert as_base64.json()["results"][0]["score"] == as_pixels.json()["results"][0]["score"]


def test_anomaly_score_accepts_a_data_url(client: TestClient, stroke_png: bytes) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(stroke_png).decode()
    response = client.post("/anomaly-score", json={"images": [data_url]})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


def test_model_card_describes_the_checkpoint(client: TestClient, tiny_model_path: object) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    card = response.json()
    assert card["architecture"]["arch"] == "mlp"
    assert len(card["sha256"]) == 64
    assert card["device"] == "cpu"
    assert set(card["calibration"]["scores"]) >= {"reconstruction", "neg_elbo", "iwae_nll"}
    assert "test_neg_elbo" in card["metrics"]


def test_metrics_count_requests_images_and_inference(
    make_app: Callable[..., FastAPI], stroke_png: bytes
) -> None:
    with TestClient(make_app()) as client:  # a fresh app: nothing counted yet
        client.post("/reconstruct", files={"file": ("d.png", stroke_png, "image/png")})
        client.post("/sample", json={"n": 3, "seed": 0})
        client.post("/sample", json={"n": 999})
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'vae_http_requests_total{method="POST",route="/reconstruct",status="200"} 1.0' in text
    assert 'vae_http_requests_total{method="POST",route="/sample",status="422"} 1.0' in text
    assert 'vae_images_processed_total{endpoint="sample"} 3.0' in text
    assert "vae_http_request_duration_seconds_bucket" in text
    assert "vae_model_inference_seconds_count" in text


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.status_code == 200
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert generated.headers["x-request-id"] != "bad id\nwith newline"
    assert len(generated.headers["x-request-id"]) == 32


def test_openapi_documents_every_endpoint_with_schemas(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    for path in ("/sample", "/reconstruct", "/anomaly-score", "/healthz", "/readyz", "/model"):
        assert path in spec["paths"], path
    body = spec["paths"]["/anomaly-score"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    upload = spec["paths"]["/reconstruct"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "AnomalyResponse" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/anomaly-score", {"score", "k", "threshold", "fpr", "preprocess"}),
        ("/reconstruct", {"preprocess", "scale", "layout"}),
    ],
)
def test_openapi_documents_the_query_options(
    client: TestClient, path: str, names: set[str]
) -> None:
    parameters = client.get("/openapi.json").json()["paths"][path]["post"]["parameters"]
    assert {p["name"] for p in parameters} == names
    assert all(p["in"] == "query" and "$ref" not in json.dumps(p) for p in parameters)


def test_a_bad_query_option_names_itself(client: TestClient) -> None:
    response = client.post("/anomaly-score?k=0", json={"pixels": [[0.0] * 784]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query.k: ")


def test_access_log_is_structured_and_carries_the_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    records = [record for record in caplog.records if record.name == "app.access"]
    assert len(records) == 1
    record = records[0]
    assert record.request_id == "trace-42"  # type: ignore[attr-defined]
    assert record.status == 200 and record.route == "/healthz"  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "trace-42" and line["duration_ms"] >= 0


def test_small_batches_leave_the_thread_setting_as_it_was(client: TestClient) -> None:
    before = torch.get_num_threads()
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    for size in (1, 64):
        pixels = np.random.default_rng(size).random((size, 28, 28), dtype=np.float32)
        outputs = ScoreJob("typical_upright", None).run(engine, pixels)
        assert outputs[0].shape == (size,)
        assert torch.get_num_threads() == before


def test_the_inline_decode_hint_reads_only_a_png_header() -> None:
    small, large = io.BytesIO(), io.BytesIO()
    Image.new("L", (28, 28)).save(small, format="PNG")
    Image.new("L", (65, 20)).save(large, format="PNG")
    assert is_small_png(small.getvalue(), 64)
    assert not is_small_png(large.getvalue(), 64)
    assert not is_small_png(small.getvalue()[:20], 64)  # truncated before the size
    jpeg = io.BytesIO()
    Image.new("L", (28, 28)).save(jpeg, format="JPEG")
    assert not is_small_png(jpeg.getvalue(), 64)  # other formats go to the thread pool
