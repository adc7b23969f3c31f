"""Every bad request to /encode, /decode and /interpolate gets the documented 4xx with a short
detail that says what to change (tiny checkpoint: latent size 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.schemas import MAX_LATENTS
from tests.conftest import png_of
from tests.synthetic import stroke_digits

MAX_DETAIL = 300  # characters: a detail names the first problem, never every one
GOOD = [0.5, -0.5, 1.0, 0.0]


@pytest.fixture(scope="module")
def latent_client(tiny_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=tiny_model_path, device="cpu", max_batch=4)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    return png_of(stroke_digits(1, seed=2)[0])


def rejected(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail) <= MAX_DETAIL, detail
    for fragment in fragments:
        assert fragment in detail, detail


def raw_json(client: TestClient, path: str, text: str) -> Any:
    """JSON as Python's json module reads it: NaN and Infinity included."""
    return client.post(path, content=text, headers={"content-type": "application/json"})


# --- /decode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latents", "fragments"),
    [
        ([GOOD[:3]], ("latents[0] has 3 numbers", "4")),
        ([GOOD, [*GOOD, 0.0]], ("latents[1] has 5 numbers",)),
        ([GOOD, "0.5"], ("latents[1] must be a list",)),
        ([GOOD, [0.0, "1", 0.0, 0.0]], ("latents[1][1] must be a number", "str")),
        ([[0.0, True, 0.0, 0.0]], ("latents[0][1] must be a number", "bool")),
        ([[0.0, 0.0, 1001.0, 0.0]], ("latents[0][2] is 1001", "|z| <= 1000")),
        ([[0.0, 0.0, 0.0, -(10**400)]], ("latents[0][3]", "finite")),
        ([], ("1 to 256",)),
        ([GOOD] * (MAX_LATENTS + 1), ("1 to 256", "got 257")),
        ("zeros", ("1 to 256", "got str")),
        ([[]], ("latents[0] has 0 numbers",)),
    ],
)
def test_decode_rejects_bad_latents(
    latent_client: TestClient, latents: object, fragments: tuple[str, ...]
) -> None:
    rejected(latent_client.post("/decode", json={"latents": latents}), 422, *fragments)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_decode_rejects_values_that_are_not_finite(latent_client: TestClient, literal: str) -> None:
    response = raw_json(latent_client, "/decode", f'{{"latents": [[0, 0, {literal}, 0]]}}')
    rejected(response, 422, "latents[0][2]", "finite")


def test_decode_checks_shapes_before_numbers_and_keeps_the_detail_short(
    latent_client: TestClient,
) -> None:
    # every number is bad too, yet the reply names the one shape problem
    bad = [["x"] * 2000 for _ in range(MAX_LATENTS)]
    rejected(latent_client.post("/decode", json={"latents": bad}), 422, "latents[0] has 2000")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({}, ("latents", "Field required")),
        ({"latents": [GOOD], "format": "png"}, ("format", "Extra inputs")),
        ([GOOD], ("valid dictionary",)),
    ],
)
def test_decode_rejects_a_body_of_the_wrong_shape(
    latent_client: TestClient, body: object, fragments: tuple[str, ...]
) -> None:
    rejected(latent_client.post("/decode", json=body), 422, *fragments)


def test_decode_rejects_a_body_that_is_not_json(latent_client: TestClient) -> None:
    rejected(raw_json(latent_client, "/decode", "[[0, 0"), 422, "not valid JSON")
    response = latent_client.post("/decode", files={"latents": ("z.json", b"[]", "text/plain")})
    rejected(response, 415, "application/json")


@pytest.mark.parametrize(
    ("query", "name"),
    [("format=gif", "format"), ("nrow=0", "nrow"), ("scale=17", "scale"), ("n=3", "n")],
)
def test_decode_rejects_bad_query_options(latent_client: TestClient, query: str, name: str) -> None:
    rejected(latent_client.post(f"/decode?{query}", json={"latents": [GOOD]}), 422, name)


# --- /encode ------------------------------------------------------------------------------


def test_encode_rejects_what_anomaly_score_rejects(
    latent_client: TestClient, digit_png: bytes
) -> None:
    too_many = [("files", (f"{i}.png", digit_png, "image/png")) for i in range(5)]
    rejected(latent_client.post("/encode", files=too_many), 422, "at most 4", "VAE_MAX_BATCH")
    rejected(
        latent_client.post("/encode", files={"other": ("a.png", digit_png, "image/png")}),
        422,
        "'files'",
    )
    rejected(
        latent_client.post("/encode", files={"files": ("a.png", b"not a picture", "image/png")}),
        415,
        "files[0]",
    )
    rejected(
        latent_client.post("/encode", json={"images": ["eA=="], "pixels": [[0.0] * 784]}),
        422,
        "exactly one",
    )
    rejected(latent_client.post("/encode", json={"pixels": [[0.0] * 783]}), 422, "784")
    rejected(latent_client.post("/encode", content=b"x"), 415, "multipart/form-data")
    rejected(latent_client.post("/encode?preprocess=magic", json={}), 422, "preprocess")


# --- /interpolate -------------------------------------------------------------------------


def files(digit_png: bytes, *fields: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{field}.png", digit_png, "image/png")) for field in fields]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("steps=1", "steps"),
        ("steps=65", "steps"),
        ("method=cubic", "method"),
        ("scale=0", "scale"),
    ],
)
def test_interpolate_rejects_bad_query_options(
    latent_client: TestClient, query: str, name: str
) -> None:
    codes = {"start": GOOD, "end": GOOD[::-1]}
    rejected(latent_client.post(f"/interpolate?{query}", json=codes), 422, name)


def test_interpolate_needs_both_pictures(latent_client: TestClient, digit_png: bytes) -> None:
    rejected(latent_client.post("/interpolate", files=files(digit_png, "start")), 422, "'end'")
    rejected(latent_client.post("/interpolate", files=files(digit_png, "end")), 422, "'start'")
    twice = files(digit_png, "start", "start", "end")
    rejected(latent_client.post("/interpolate", files=twice), 422, "start")
    broken = [*files(digit_png, "start"), ("end", ("end.png", b"no picture", "image/png"))]
    rejected(latent_client.post("/interpolate", files=broken), 415, "end[0] is not an image")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"start": GOOD}, ("end", "Field required")),
        ({"start": GOOD, "end": GOOD[:2]}, ("end has 2 numbers", "4")),
        (
            {"start": "aVZCT1J3MEtHZ28=", "end": GOOD},
            ("start must be a latent vector", "multipart"),
        ),
        ({"start": GOOD, "end": GOOD, "images": ["eA=="]}, ("images", "Extra inputs")),
        ({"start": [0.0, float("nan"), 0.0, 0.0], "end": GOOD}, ("start[1]", "finite")),
    ],
)
def test_interpolate_rejects_bad_codes(
    latent_client: TestClient, body: dict[str, object], fragments: tuple[str, ...]
) -> None:
    response = raw_json(latent_client, "/interpolate", json.dumps(body))
    rejected(response, 422, *fragments)


def test_interpolate_rejects_other_media_types(latent_client: TestClient) -> None:
    rejected(latent_client.post("/interpolate", content=b"x"), 415, "'start' and 'end'", "json")
