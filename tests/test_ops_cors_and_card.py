"""CORS (VAE_CORS_ORIGINS, off by default) and a model card without the server's folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings

APP_ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": APP_ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/sample", headers=PREFLIGHT)
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers
    reply = client.post("/sample", json={"n": 1}, headers={"Origin": APP_ORIGIN})
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in reply.headers


def test_a_listed_origin_gets_its_preflight_answered_without_the_key(
    make_app: Callable[..., FastAPI],
) -> None:
    with TestClient(make_app(cors_origins=[APP_ORIGIN], api_key="k")) as client:
        preflight = client.options("/sample", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "x-api-key", "content-type"} <= set(allowed.split(", "))
        reply = client.post(
            "/sample", json={"n": 1}, headers={"Origin": APP_ORIGIN, "X-API-Key": "k"}
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "X-Seed" in reply.headers["access-control-expose-headers"]
        # An error reply carries the headers too, so the page can read its detail.
        refused = client.post("/sample", json={"n": 1}, headers={"Origin": APP_ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP_ORIGIN


def test_an_unlisted_origin_is_refused(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(cors_origins=[APP_ORIGIN])) as client:
        preflight = client.options(
            "/sample", headers={**PREFLIGHT, "Origin": "https://evil.example"}
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers


def test_star_allows_any_origin(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(cors_origins=["*"])) as client:
        preflight = client.options("/sample", headers={**PREFLIGHT, "Origin": "http://x.test:3000"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    ("text", "origins"),
    [
        ("", []),
        ("https://a.example", ["https://a.example"]),
        (
            " https://a.example , http://localhost:3000 ",
            ["https://a.example", "http://localhost:3000"],
        ),
        (
            '["https://a.example", "http://127.0.0.1:5173"]',
            ["https://a.example", "http://127.0.0.1:5173"],
        ),
        ("*", ["*"]),
    ],
)
def test_cors_origins_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, origins: list[str]
) -> None:
    monkeypatch.setenv("VAE_CORS_ORIGINS", text)
    assert Settings().cors_origins == origins


@pytest.mark.parametrize("text", ["https://a.example/", "a.example", "https://a.example/app", "[1"])
def test_cors_origins_refuse_what_no_browser_sends(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("VAE_CORS_ORIGINS", text)
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings()


def test_model_card_names_the_file_not_the_servers_folders(
    client: TestClient, tiny_model_path: Path
) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    card = response.json()
    assert card["file"] == tiny_model_path.name
    assert "path" not in card
    # The tiny run was trained with an absolute --out and --data-root: only their names show.
    assert str(tiny_model_path.parent) not in json.dumps(card)
    assert card["training"]["out"] == tiny_model_path.parent.name
    assert not any(str(value).startswith("/") for value in card["training"].values())
