"""/docs, /redoc and /openapi.json with an API key: public by default (a browser cannot send a
header to open a page), the key declared in the schema so Swagger UI can send it, and the data
endpoints still guarded. VAE_PUBLIC_DOCS=false puts the pages behind the key too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import app_on

API_KEY = "docs-test-key"
PAGES = ("/docs", "/redoc", "/openapi.json")
KEYED = {"/sample": "post", "/reconstruct": "post", "/anomaly-score": "post", "/model": "get"}
OPEN = {"/healthz": "get", "/readyz": "get", "/metrics": "get"}
# Either header is enough: OpenAPI lists alternatives as separate requirement objects.
EITHER_SCHEME = [{"HTTPBearer": []}, {"APIKeyHeader": []}]


@pytest.fixture(scope="module")
def secured(tiny_model_path: Path) -> Iterator[TestClient]:
    """These tests only send requests: one keyed app for them all."""
    with TestClient(app_on(tiny_model_path, api_key=API_KEY)) as client:
        yield client


def schema_of(client: TestClient, **headers: str) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


@pytest.mark.parametrize("path", PAGES)
def test_with_a_key_the_docs_and_schema_stay_public_by_default(
    secured: TestClient, path: str
) -> None:
    assert secured.get(path).status_code == 200


def test_the_schema_declares_the_key_for_swagger_authorize(secured: TestClient) -> None:
    schema = schema_of(secured)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["HTTPBearer"]["description"],
    }
    assert schemes["APIKeyHeader"]["in"] == "header"
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    for path, method in KEYED.items():
        assert schema["paths"][path][method]["security"] == EITHER_SCHEME, path
    for path, method in OPEN.items():
        assert "security" not in schema["paths"][path][method], path


def test_without_a_key_the_schema_declares_none(client: TestClient) -> None:
    schema = schema_of(client)
    assert "securitySchemes" not in schema.get("components", {})
    assert all("security" not in op for ops in schema["paths"].values() for op in ops.values())


def test_the_data_still_needs_the_key(secured: TestClient) -> None:
    assert secured.get("/model").status_code == 401
    assert secured.get("/model", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert secured.post("/sample", json={"n": 1}).status_code == 401
    assert secured.post("/sample", json={"n": 1}, headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.mark.parametrize("path", PAGES)
def test_public_docs_off_puts_the_docs_behind_the_key(
    make_app: Callable[..., FastAPI], path: str
) -> None:
    with TestClient(make_app(api_key=API_KEY, public_docs=False)) as client:
        refused = client.get(path)
        assert refused.status_code == 401
        assert "API key" in refused.json()["detail"]
        assert client.get(path, headers={"X-API-Key": API_KEY}).status_code == 200


def test_swagger_ui_page_points_at_the_schema(secured: TestClient) -> None:
    page = secured.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
