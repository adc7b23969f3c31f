"""The pages for people (app/docs.py) without a browser: nothing they load comes from outside
the service, and the API key still guards the schema. tests/test_browser.py renders them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

API_KEY = "pages-test-key"
# src="..." and href="..." targets in an HTML page
LINKED = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """These tests only fetch pages: one app for them all (`secured` has its own)."""
    return module_client


@pytest.fixture
def secured(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(make_app(api_key=API_KEY, public_docs=False)) as client:
        yield client


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/"])
def test_pages_load_everything_from_the_service(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = LINKED.findall(page.text)
    assert links, "the page links no scripts or styles"
    for link in links:
        assert "://" not in link and not link.startswith("//"), f"{path} links {link}"
        if link.startswith("data:"):
            continue
        url = link if link.startswith("/") else f"/{link}"
        assert client.get(url).status_code == 200, url


def test_docs_assets_are_the_packaged_swagger_ui(client: TestClient) -> None:
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "SwaggerUIBundle" in script.text[:2000]


def test_demo_page_is_limited_to_this_origin(client: TestClient) -> None:
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self'" in policy
    # ReDoc's bundle would fetch a logo from its CDN: images are limited to this origin.
    assert client.get("/redoc").headers["content-security-policy"] == "img-src 'self' data:"


def test_with_private_docs_the_schema_and_docs_need_the_key_but_the_demo_page_does_not(
    secured: TestClient,
) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert secured.get(path).status_code == 401, path
        assert secured.get(path, headers={"X-API-Key": API_KEY}).status_code == 200, path
    # The page and the static bundles hold nothing about the model: the page asks for the key.
    assert secured.get("/").status_code == 200
    assert secured.get("/static/demo.js").status_code == 200
    assert secured.get("/docs-assets/swagger-ui.css").status_code == 200


def test_pages_stay_out_of_the_schema(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert not paths & {"/", "/docs", "/redoc", "/openapi.json"}
