"""The lean Starlette routes (app/lean.py) answer exactly as the FastAPI routes behind them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.lean import LeanRoute

KEY = "lean-route-key"
LEAN_PATHS = {"/anomaly-score", "/reconstruct"}
# Headers that differ between any two replies.
VARYING = {"x-request-id", "date"}


def without_lean_routes(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, LeanRoute)]
    return app


def requests(png: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    good = {"X-API-Key": KEY}
    upload = {"files": ("d.png", png, "image/png")}
    return [
        ("post", "/anomaly-score", {"files": upload, "headers": good}),
        ("post", "/anomaly-score?score=iwae&k=4", {"files": upload, "headers": good}),
        ("post", "/anomaly-score?preprocess=none", {"files": upload, "headers": good}),
        ("post", "/anomaly-score?k=0", {"files": upload, "headers": good}),
        ("post", "/anomaly-score?preprocess=bogus", {"files": upload, "headers": good}),
        ("post", "/anomaly-score", {"files": upload}),
        ("post", "/anomaly-score", {"files": upload, "headers": {"X-API-Key": "wrong"}}),
        ("post", "/anomaly-score", {"files": upload, "headers": {"Authorization": "Basic x"}}),
        ("post", "/anomaly-score", {"content": b"x", "headers": good}),
        ("post", "/anomaly-score", {"json": {"images": ["!"]}, "headers": good}),
        ("post", "/anomaly-score", {"files": {"other": upload["files"]}, "headers": good}),
        ("get", "/anomaly-score", {"headers": good}),
        ("post", "/reconstruct", {"files": {"file": upload["files"]}, "headers": good}),
        (
            "post",
            "/reconstruct?format=bogus",
            {"files": {"file": upload["files"]}, "headers": good},
        ),
        ("post", "/reconstruct", {"files": upload, "headers": good}),
        ("post", "/reconstruct", {"files": {"file": upload["files"]}}),
        ("put", "/reconstruct", {"headers": good}),
    ]


def reply(client: TestClient, method: str, path: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    response = getattr(client, method)(path, **kwargs)
    headers = sorted((k, v) for k, v in response.headers.items() if k not in VARYING)
    return response.status_code, headers, response.content


@pytest.mark.parametrize("api_key", [None, KEY])
def test_lean_routes_answer_as_the_fastapi_routes(
    make_app: Callable[..., FastAPI], stroke_png: bytes, api_key: str | None
) -> None:
    lean_app = make_app(api_key=api_key)
    assert {r.path for r in lean_app.router.routes if isinstance(r, LeanRoute)} == LEAN_PATHS
    with (
        TestClient(lean_app) as lean,
        TestClient(without_lean_routes(make_app(api_key=api_key))) as plain,
    ):
        statuses = set()
        for method, path, kwargs in requests(stroke_png):
            expected = reply(plain, method, path, kwargs)
            assert reply(lean, method, path, kwargs) == expected, (method, path)
            statuses.add(expected[0])
    assert {200, 405, 415, 422} <= statuses
    assert (401 in statuses) == (api_key is not None)


def test_the_lean_routes_stay_in_the_schema_and_the_metrics(client: TestClient) -> None:
    operations = client.get("/openapi.json").json()["paths"]
    assert "post" in operations["/anomaly-score"]
    assert "post" in operations["/reconstruct"]
    client.post("/anomaly-score", content=b"x")
    metrics = client.get("/metrics").text
    assert 'route="/anomaly-score",status="415"' in metrics
