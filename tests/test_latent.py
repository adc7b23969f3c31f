"""/encode, /decode and /interpolate against the tiny checkpoint (latent size 4): shapes,
order, the round trip against /reconstruct, the strip's ends, and the path maths."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.jobs import latent_path
from app.main import create_app
from tests.conftest import png_of
from tests.synthetic import stroke_digits

TILE = 28 + 2  # make_grid's default padding of 2 pixels
# The reconstruction PNG is 8-bit; the decoded floats round to within half a grey level of it,
# and a value landing on .5 may round the other way after a different batch's arithmetic.
GREY_LEVEL = 1.0 / 255


@pytest.fixture(scope="module")
def latent_client(tiny_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_path=tiny_model_path, device="cpu"))) as client:
        yield client


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return stroke_digits(3, seed=21)


def uploads(field: str, images: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{i}.png", png_of(image), "image/png")) for i, image in enumerate(images)]


def encode(client: TestClient, images: np.ndarray) -> dict[str, object]:
    response = client.post("/encode?preprocess=none", files=uploads("files", images))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def mu_of(body: dict[str, object]) -> list[list[float]]:
    results = body["results"]
    assert isinstance(results, list)
    return [result["mu"] for result in results]


def png_array(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)), dtype=np.float32) / 255.0


def reconstruction(client: TestClient, image: np.ndarray) -> np.ndarray:
    response = client.post(
        "/reconstruct?preprocess=none", files={"file": ("x.png", png_of(image), "image/png")}
    )
    assert response.status_code == 200
    return png_array(response.content)


def tile(strip: np.ndarray, index: int) -> np.ndarray:
    """The index-th 28x28 digit of a one-row make_grid strip."""
    left = index * TILE + 2
    return strip[2:30, left : left + 28]


# --- /encode ------------------------------------------------------------------------------


def test_encode_gives_mu_and_sigma_of_the_latent_size_in_input_order(
    latent_client: TestClient, digits: np.ndarray
) -> None:
    body = encode(latent_client, digits)
    assert body["latent_dim"] == 4
    assert body["model_id"] == latent_client.get("/readyz").json()["model_id"]
    results = body["results"]
    assert isinstance(results, list)
    assert [result["index"] for result in results] == [0, 1, 2]
    for result in results:
        assert len(result["mu"]) == len(result["sigma"]) == 4
        assert all(sigma > 0 for sigma in result["sigma"])
    alone = encode(latent_client, digits[2:])
    np.testing.assert_allclose(mu_of(alone)[0], mu_of(body)[2], atol=1e-5)
    assert mu_of(body)[0] != mu_of(body)[1]


def test_encode_takes_the_three_input_forms_of_anomaly_score(
    latent_client: TestClient, digits: np.ndarray
) -> None:
    as_files = mu_of(encode(latent_client, digits[:2]))
    as_base64 = latent_client.post(
        "/encode?preprocess=none",
        json={"images": [base64.b64encode(png_of(image)).decode() for image in digits[:2]]},
    )
    as_pixels = latent_client.post(
        "/encode",
        json={
            "pixels": [(image.astype(np.float32) / 255).ravel().tolist() for image in digits[:2]]
        },
    )
    assert as_base64.status_code == as_pixels.status_code == 200
    np.testing.assert_allclose(mu_of(as_base64.json()), as_files, atol=1e-6)
    np.testing.assert_allclose(mu_of(as_pixels.json()), as_files, atol=1e-6)


# --- /decode ------------------------------------------------------------------------------


def test_decoding_the_mean_gives_the_reconstruction(
    latent_client: TestClient, digits: np.ndarray
) -> None:
    mu = mu_of(encode(latent_client, digits))
    response = latent_client.post("/decode?format=pixels", json={"latents": mu})
    assert response.status_code == 200
    body = response.json()
    assert body["model_id"] == latent_client.get("/readyz").json()["model_id"]
    pixels = np.asarray(body["pixels"], dtype=np.float32)
    assert pixels.shape == (3, 784)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    for index, image in enumerate(digits):
        expected = reconstruction(latent_client, image)
        np.testing.assert_allclose(pixels[index].reshape(28, 28), expected, atol=GREY_LEVEL)


def test_decode_png_is_a_grid_like_sample(latent_client: TestClient) -> None:
    latents = np.random.default_rng(0).standard_normal((5, 4)).tolist()
    response = latent_client.post("/decode?nrow=2&scale=2", json={"latents": latents})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-id"]
    grid = Image.open(io.BytesIO(response.content))
    # 2 columns, 3 rows of 28 px tiles with 2 px padding, doubled
    assert grid.size == ((2 * TILE + 2) * 2, (3 * TILE + 2) * 2)
    square = latent_client.post("/decode", json={"latents": latents[:4]})
    assert Image.open(io.BytesIO(square.content)).size == (2 * TILE + 2, 2 * TILE + 2)


def test_decode_png_and_pixels_show_the_same_digits(latent_client: TestClient) -> None:
    latents = np.random.default_rng(1).standard_normal((3, 4)).tolist()
    grid = png_array(latent_client.post("/decode?nrow=3", json={"latents": latents}).content)
    pixels = latent_client.post("/decode?format=pixels", json={"latents": latents}).json()
    for index, row in enumerate(pixels["pixels"]):
        expected = np.asarray(row, dtype=np.float32).reshape(28, 28)
        np.testing.assert_allclose(tile(grid, index), expected, atol=0.5 / 255 + 1e-6)


# --- /interpolate -------------------------------------------------------------------------


def test_interpolation_ends_are_the_reconstructions(
    latent_client: TestClient, digits: np.ndarray
) -> None:
    files = uploads("start", digits[:1]) + uploads("end", digits[1:2])
    response = latent_client.post("/interpolate?steps=5&preprocess=none", files=files)
    assert response.status_code == 200
    assert response.headers["x-model-id"]
    strip = png_array(response.content)
    assert strip.shape == (TILE + 2, 5 * TILE + 2)
    np.testing.assert_allclose(
        tile(strip, 0), reconstruction(latent_client, digits[0]), atol=GREY_LEVEL
    )
    np.testing.assert_allclose(
        tile(strip, 4), reconstruction(latent_client, digits[1]), atol=GREY_LEVEL
    )
    assert not np.array_equal(tile(strip, 2), tile(strip, 0))


def test_interpolating_pictures_equals_interpolating_their_codes(
    latent_client: TestClient, digits: np.ndarray
) -> None:
    start, end = mu_of(encode(latent_client, digits[:2]))
    for method in ("linear", "slerp"):
        query = f"?steps=6&method={method}&scale=2"
        from_codes = latent_client.post(f"/interpolate{query}", json={"start": start, "end": end})
        files = uploads("start", digits[:1]) + uploads("end", digits[1:2])
        from_pictures = latent_client.post(f"/interpolate{query}&preprocess=none", files=files)
        assert from_codes.status_code == from_pictures.status_code == 200
        np.testing.assert_allclose(
            png_array(from_codes.content), png_array(from_pictures.content), atol=GREY_LEVEL
        )


def test_slerp_and_linear_share_the_ends_and_differ_between(latent_client: TestClient) -> None:
    codes = {"start": [2.0, 0.0, 0.0, 0.0], "end": [0.0, 0.0, 2.0, 0.0]}
    strips = {
        method: png_array(
            latent_client.post(f"/interpolate?steps=3&method={method}", json=codes).content
        )
        for method in ("linear", "slerp")
    }
    for index in (0, 2):
        np.testing.assert_array_equal(tile(strips["linear"], index), tile(strips["slerp"], index))
    assert not np.array_equal(tile(strips["linear"], 1), tile(strips["slerp"], 1))


def test_latent_path_linear_and_slerp() -> None:
    start, end = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    linear = latent_path(start, end, 5, "linear")
    slerp = latent_path(start, end, 5, "slerp")
    for path in (linear, slerp):
        assert path.shape == (5, 2)
        torch.testing.assert_close(path[0], start)
        torch.testing.assert_close(path[-1], end)
    torch.testing.assert_close(linear[2], torch.tensor([1.5, 1.5]))
    # along the circle: every point keeps the norm of two equal-norm ends
    torch.testing.assert_close(slerp.norm(dim=1), torch.full((5,), 3.0))
    torch.testing.assert_close(slerp[2], torch.tensor([3.0, 3.0]) / 2**0.5)


def test_slerp_of_parallel_or_zero_codes_is_the_straight_line() -> None:
    start = torch.tensor([1.0, 2.0])
    for end in (2 * start, -start, torch.zeros(2)):
        torch.testing.assert_close(
            latent_path(start, end, 4, "slerp"), latent_path(start, end, 4, "linear")
        )


# --- /model, auth, limits -----------------------------------------------------------------


def test_model_card_gives_the_latent_size_and_the_prior(latent_client: TestClient) -> None:
    card = latent_client.get("/model").json()
    assert card["latent_dim"] == card["architecture"]["latent_dim"] == 4
    assert card["prior"]["name"] == "fitted"  # the pipeline fits one
    assert "N(0, I)" in card["priors"]["standard"]["distribution"]


def test_latent_routes_need_the_api_key(
    make_app: Callable[..., FastAPI], digits: np.ndarray
) -> None:
    with TestClient(make_app(api_key="sesame")) as client:
        latents = {"latents": [[0.0] * 4]}
        assert client.post("/decode", json=latents).status_code == 401
        assert client.post("/encode", files=uploads("files", digits[:1])).status_code == 401
        codes = {"start": [0.0] * 4, "end": [1.0] * 4}
        assert client.post("/interpolate", json=codes).status_code == 401
        authorised = {"Authorization": "Bearer sesame"}
        assert client.post("/decode", json=latents, headers=authorised).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(
    make_app: Callable[..., FastAPI], digits: np.ndarray
) -> None:
    with TestClient(make_app(batch_queue_images=1)) as client:
        response = client.post("/encode", files=uploads("files", digits[:2]))
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert client.post("/decode", json={"latents": [[0.0] * 4] * 2}).status_code == 503


# --- /docs: the examples "Try it out" sends work on the shipped model ---------------------


@pytest.mark.parametrize("path", ["/encode", "/decode", "/interpolate"])
def test_openapi_json_examples_work_on_the_shipped_model(
    shipped_client: httpx.Client, path: str
) -> None:
    operation = shipped_client.get("/openapi.json").json()["paths"][path]["post"]
    assert {"422", "415", "503"} <= set(operation["responses"])
    example = operation["requestBody"]["content"]["application/json"]["example"]
    if path == "/decode":
        assert example == {"latents": [[0.0] * shipped_client.get("/model").json()["latent_dim"]]}
    response = shipped_client.post(path, json=example)
    assert response.status_code == 200, response.text
    query = {parameter["name"] for parameter in operation["parameters"]}
    expected = {
        "/encode": {"preprocess"},
        "/decode": {"format", "nrow", "scale"},
        "/interpolate": {"steps", "method", "scale", "preprocess"},
    }[path]
    assert query == expected
