"""Every class of bad input gets a clear 4xx with a JSON `detail`; none gets a 500."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.schemas import README_PNG_BASE64
from tests.conftest import encode, png_of


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """These tests only send requests and read the replies: one app for them all."""
    return module_client


def assert_error(response: object, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    detail = response.json()["detail"]  # type: ignore[attr-defined]
    assert isinstance(detail, str) and detail
    for fragment in fragments:
        assert fragment in detail, detail


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is tiny (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": 257}, "n: Input should be less than or equal to 256"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"nrow": 0}, "nrow"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_sample_rejects_out_of_range_fields(
    client: TestClient, body: object, fragment: str
) -> None:
    assert_error(client.post("/sample", json=body), 422, fragment)


def test_sample_rejects_a_body_that_is_not_json(client: TestClient) -> None:
    response = client.post(
        "/sample", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422)


def test_reconstruct_rejects_text_as_unsupported_media(client: TestClient) -> None:
    response = client.post("/reconstruct", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert_error(response, 415, "not an image")


def test_reconstruct_rejects_a_truncated_png(client: TestClient, stroke_png: bytes) -> None:
    big = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    response = client.post("/reconstruct", files={"file": ("cut.png", big[: len(big) // 2], "")})
    assert_error(response, 422, "could not be decoded")


def test_reconstruct_rejects_an_empty_file(client: TestClient) -> None:
    assert_error(
        client.post("/reconstruct", files={"file": ("e.png", b"", "image/png")}), 422, "empty"
    )


def test_reconstruct_requires_the_file_field(client: TestClient) -> None:
    assert_error(
        client.post("/reconstruct", files={"other": ("x.png", b"x", "image/png")}), 422, "file"
    )


def test_reconstruct_takes_exactly_one_file_sent_as_a_file(
    client: TestClient, stroke_png: bytes
) -> None:
    two = [("file", ("a.png", stroke_png, "image/png")), ("file", ("b.png", stroke_png, ""))]
    assert_error(client.post("/reconstruct", files=two), 422, "at most 1 per request")
    as_text = client.post("/reconstruct", data={"file": "not a file"}, files={"x": ("x", b"")})
    assert_error(as_text, 422, "text field")
    as_json = client.post("/reconstruct", json={"file": "aGVsbG8="})
    assert_error(as_json, 415, "multipart/form-data")
    many = [("file", ("a.png", stroke_png, "image/png"))] + [("f", ("x", b"x", ""))] * 40
    assert_error(client.post("/reconstruct", files=many), 422, "too many parts")


@pytest.mark.parametrize(("width", "height"), [(30_000, 30_000), (100_000, 100_000)])
def test_reconstruct_refuses_a_decompression_bomb(
    client: TestClient, width: int, height: int
) -> None:
    bomb = png_with_header_size(width, height)
    assert len(bomb) < 200
    response = client.post("/reconstruct", files={"file": ("bomb.png", bomb, "image/png")})
    assert_error(response, 422, "pixels")


def test_reconstruct_respects_the_configured_pixel_limit(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(max_image_pixels=100 * 100)) as limited:
        image = png_of(np.zeros((101, 100), dtype=np.uint8))
        response = limited.post("/reconstruct", files={"file": ("big.png", image, "image/png")})
    assert_error(response, 422, "10100 pixels", "10000")


def test_preprocess_none_needs_28x28(client: TestClient) -> None:
    image = png_of(np.zeros((30, 30), dtype=np.uint8))
    response = client.post(
        "/reconstruct?preprocess=none", files={"file": ("x.png", image, "image/png")}
    )
    assert_error(response, 422, "28x28", "30x30")


@pytest.mark.parametrize("query", ["scale=0", "scale=17", "layout=grid", "preprocess=magic"])
def test_reconstruct_rejects_bad_options(client: TestClient, stroke_png: bytes, query: str) -> None:
    response = client.post(f"/reconstruct?{query}", files={"file": ("d.png", stroke_png, "")})
    assert_error(response, 422, query.split("=")[0])


def test_oversized_upload_gets_413_before_the_body_is_read(
    make_app: Callable[..., FastAPI],
) -> None:
    with TestClient(make_app(max_upload_bytes=2048)) as limited:
        response = limited.post(
            "/reconstruct", files={"file": ("big.png", b"\x89PNG" + b"0" * 4096, "image/png")}
        )
    assert_error(response, 413, "2048")


def test_oversized_chunked_upload_is_cut_off_with_413(make_app: Callable[..., FastAPI]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"0" * 1024

    with TestClient(make_app(max_upload_bytes=4096)) as limited:
        response = limited.post(
            "/anomaly-score", content=chunks(), headers={"content-type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "4096")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"pixels": [[0.5] * 783]}, "pixels[0] has 783 values; expected 784"),
        ({"pixels": [[0.0] * 784, [1.5] * 784]}, "pixels[1] has values outside [0, 1]"),
        ({"pixels": [[0.0] * 784, [-0.1] + [0.0] * 783]}, "pixels[1]"),
        ({"pixels": []}, "pixels"),
        ({"images": ["%%% not base64 %%%"]}, "images[0] is not valid base64"),
        ({"images": ["aGVsbG8="]}, "images[0] is not an image"),
        ({"images": ["aGk="], "pixels": [[0.0] * 784]}, "exactly one"),
        ({}, "exactly one"),
        ({"pixel": [[0.0] * 784]}, "pixel"),
        ({"pixels": "abc"}, "pixels"),
    ],
)
def test_anomaly_score_rejects_malformed_json(
    client: TestClient, payload: object, fragment: str
) -> None:
    response = client.post("/anomaly-score", json=payload)
    assert response.status_code in (415, 422)
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    ("literal", "fragment"),
    [
        ("NaN", "NaN or infinity"),  # not JSON, but what Python's json writes
        ("Infinity", "NaN or infinity"),
        ("1e400", "NaN or infinity"),  # valid JSON, but no double holds it
        ("-Infinity", "NaN or infinity"),
    ],
)
def test_anomaly_score_rejects_nan_and_infinity(
    client: TestClient, literal: str, fragment: str
) -> None:
    row = ", ".join(["0.0"] * 783 + [literal])
    body = '{"pixels": [[' + row + "]]}"
    response = client.post(
        "/anomaly-score", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, fragment)


def test_anomaly_score_rejects_invalid_json(client: TestClient) -> None:
    response = client.post(
        "/anomaly-score", content=b'{"pixels": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "not valid JSON")


def test_anomaly_score_rejects_other_media_types(client: TestClient) -> None:
    response = client.post("/anomaly-score", content=b"0,0,0", headers={"content-type": "text/csv"})
    assert_error(response, 415, "multipart/form-data", "application/json")


def test_anomaly_score_rejects_more_images_than_max_batch(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(max_batch=2)) as limited:
        response = limited.post("/anomaly-score", json={"pixels": [[0.0] * 784] * 3})
        files = [
            ("files", (f"{i}.png", png_of(np.zeros((28, 28), np.uint8)), "")) for i in range(3)
        ]
        multipart = limited.post("/anomaly-score", files=files)
    assert_error(response, 422, "at most 2")
    assert multipart.status_code in (400, 422)
    assert "detail" in multipart.json()


def test_anomaly_score_multipart_needs_files(client: TestClient) -> None:
    response = client.post("/anomaly-score", data={"note": "hi"}, files={"x": ("a", b"", "")})
    assert_error(response, 422, "'files'")


@pytest.mark.parametrize(
    "query",
    [
        "k=0",
        "k=1001",
        "score=likelihood",
        "fpr=0",
        "fpr=1",
        "threshold=nan",
        "fpr=0.1&threshold=3",
        "unknown=1",
    ],
)
def test_anomaly_score_rejects_bad_options(client: TestClient, query: str) -> None:
    response = client.post(f"/anomaly-score?{query}", json={"pixels": [[0.0] * 784]})
    assert_error(response, 422)


def test_a_bad_image_in_a_batch_names_its_position(client: TestClient, stroke_png: bytes) -> None:
    files = [
        ("files", ("ok.png", stroke_png, "image/png")),
        ("files", ("bad.png", b"GIF89a-broken", "image/gif")),
    ]
    response = client.post("/anomaly-score", files=files)
    assert response.status_code in (415, 422)
    assert "files[1]" in response.json()["detail"]


def test_unknown_route_is_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_wrong_method_is_json_405(client: TestClient) -> None:
    response = client.get("/sample")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_errors_never_poison_later_requests(client: TestClient, stroke_png: bytes) -> None:
    before = client.post("/anomaly-score", files={"files": ("d.png", stroke_png, "")}).json()
    for bad in (b"", b"junk", png_with_header_size(50_000, 50_000)):
        assert client.post("/anomaly-score", files={"files": ("b.png", bad, "")}).status_code < 500
    after = client.post("/anomaly-score", files={"files": ("d.png", stroke_png, "")}).json()
    assert json.dumps(before) == json.dumps(after)


def test_far_too_many_files_get_the_same_422(make_app: Callable[..., FastAPI]) -> None:
    tiny = png_of(np.zeros((28, 28), np.uint8))
    with TestClient(make_app(max_batch=2)) as limited:
        for count in (3, 40):
            files = [("files", (f"{i}.png", tiny, "image/png")) for i in range(count)]
            assert_error(limited.post("/anomaly-score", files=files), 422, "at most 2")


def test_malformed_multipart_is_422(client: TestClient) -> None:
    response = client.post(
        "/anomaly-score",
        content=b"--xyz\r\nContent-Disposition: form-data; name=files\r\n\r\nabc",
        headers={"content-type": "multipart/form-data"},  # no boundary parameter
    )
    assert response.status_code in (400, 422)
    assert isinstance(response.json()["detail"], str)


def test_k_above_the_configured_limit_is_422(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(max_iwae_k=32)) as limited:
        response = limited.post(
            "/anomaly-score?score=iwae_nll&k=33", json={"pixels": [[0.0] * 784]}
        )
        allowed = limited.post("/anomaly-score?score=iwae_nll&k=32", json={"pixels": [[0.0] * 784]})
    assert_error(response, 422, "at most 32", "VAE_MAX_IWAE_K")
    assert allowed.status_code == 200
    assert allowed.json()["k"] == 32


def test_k_times_images_above_the_limit_is_422(make_app: Callable[..., FastAPI]) -> None:
    pixels = {"pixels": [[0.0] * 784] * 4}
    with TestClient(make_app(max_request_decodes=64)) as limited:
        refused = limited.post("/anomaly-score?score=iwae_nll&k=17", json=pixels)
        allowed = limited.post("/anomaly-score?score=iwae_nll&k=16", json=pixels)
        deterministic = limited.post("/anomaly-score?score=reconstruction", json=pixels)
    assert_error(refused, 422, "17 x 4 = 68", "VAE_MAX_REQUEST_DECODES", "at most 16")
    assert allowed.status_code == 200 and allowed.json()["k"] == 16
    assert deterministic.status_code == 200


def test_the_documented_base64_example_is_scored(client: TestClient) -> None:
    response = client.post("/anomaly-score", json={"images": [README_PNG_BASE64]})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 1


AUTH_KEY = "s3cret-key"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": f"Bearer {AUTH_KEY}"}, 200),
        ({"X-API-Key": AUTH_KEY}, 200),
        ({"Authorization": f"Bearer {AUTH_KEY}", "X-API-Key": AUTH_KEY}, 200),
        ({"Authorization": "Bearer wrong", "X-API-Key": AUTH_KEY}, 401),
        ({"Authorization": f"Bearer {AUTH_KEY}", "X-API-Key": "wrong"}, 401),
        ({}, 401),
    ],
)
def test_every_api_key_offered_must_be_right(
    make_app: Callable[..., FastAPI], headers: dict[str, str], status: int
) -> None:
    with TestClient(make_app(api_key=AUTH_KEY)) as secured:
        response = secured.post("/sample", json={"n": 1, "seed": 1}, headers=headers)
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "body", [{"seed": False}, {"n": True}, {"nrow": True}, {"temperature": True}, {"n": "4"}]
)
def test_sample_refuses_booleans_and_strings_for_numbers(
    client: TestClient, body: dict[str, object]
) -> None:
    response = client.post("/sample", json=body)
    assert_error(response, 422, "body.", "expected a number")


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b'{"n": 1'])
def test_sample_answers_malformed_json_with_422(client: TestClient, body: bytes) -> None:
    response = client.post("/sample", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "not valid JSON")


def test_an_unexpected_error_is_a_500_that_carries_the_request_id(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("a bug, not the caller's fault")

    with TestClient(app, raise_server_exceptions=True) as test_client:
        response = test_client.get("/explode", headers={"X-Request-ID": "trace-42"})
        after = test_client.get("/healthz")
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-42"
    assert "trace-42" in response.json()["detail"]
    assert after.status_code == 200
