"""The demo page and /docs in a real Chromium, with every request outside the service
blocked. Skipped without Chromium; VAE_REQUIRE_BROWSER=1 (as in .ci/run) makes that a failure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from benchmarks.serve_load.servers import Server
from scripts.browser_demo import (
    DIGIT_STROKES,
    draw,
    offline_page,
    touch_draw,
)
from scripts.live_server import live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

NUMBER = re.compile(r"^-?\d+\.\d+$")
PERCENT = re.compile(r"^\d+(\.\d+)?%$")


@pytest.fixture(scope="module")
def demo_app(tiny_model_path: Path) -> FastAPI:
    return create_app(Settings(model_path=tiny_model_path, device="cpu"))


@pytest.fixture(scope="module")
def service_url(demo_app: FastAPI) -> Iterator[str]:
    with live_server(demo_app) as url:
        yield url


def test_drawing_shows_the_reconstruction_and_a_score(chromium: Browser, service_url: str) -> None:
    from playwright.sync_api import expect

    page, blocked = offline_page(chromium, service_url)
    page.goto(f"{service_url}/")
    draw(page, "#pad", DIGIT_STROKES["7"])

    reconstruction = page.locator("#recon-img")
    expect(reconstruction).to_be_visible()
    # layout=pair at scale 6: input | reconstruction, two 28x28 images side by side
    assert reconstruction.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [336, 168]
    expect(page.locator("#score-value")).to_have_text(NUMBER)
    expect(page.locator("#score-percentile")).to_have_text(PERCENT)
    expect(page.locator("#score-verdict")).to_have_text(re.compile("anomaly|looks like a digit"))
    assert page.locator("#draw-status").get_attribute("class") == "status"  # not an error
    assert blocked == []


def test_touch_strokes_draw_too(chromium: Browser, service_url: str) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(has_touch=True, viewport={"width": 800, "height": 900})
    page = context.new_page()
    page.goto(f"{service_url}/")
    touch_draw(page, "#pad", DIGIT_STROKES["1"])
    expect(page.locator("#recon-img")).to_be_visible()
    expect(page.locator("#score-value")).to_have_text(NUMBER)
    context.close()


def test_a_new_seed_redraws_the_sample_grid(chromium: Browser, service_url: str) -> None:
    from playwright.sync_api import expect

    page, blocked = offline_page(chromium, service_url)
    page.goto(f"{service_url}/")
    grid = page.locator("#sample-img")
    expect(grid).to_have_attribute("data-seed", "7")
    first = grid.screenshot()

    page.locator("#seed").fill("8")
    page.locator("#seed").dispatch_event("change")
    expect(grid).to_have_attribute("data-seed", "8")
    expect(page.locator("#sample-status")).to_contain_text("seed 8")
    assert grid.screenshot() != first
    assert blocked == []


def test_interpolation_between_two_drawn_digits_shows_a_strip(
    chromium: Browser, service_url: str
) -> None:
    from playwright.sync_api import expect

    page, blocked = offline_page(chromium, service_url)
    page.goto(f"{service_url}/")
    draw(page, "#pad-start", DIGIT_STROKES["1"])
    draw(page, "#pad-end", DIGIT_STROKES["7"])
    strip = page.locator("#interp-img")
    expect(strip).to_be_visible()
    expect(page.locator("#interp-status")).to_contain_text("8 steps")
    # 8 digits of 28 px with make_grid's 2 px padding, at the page's scale 3
    assert strip.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [
        (8 * 30 + 2) * 3,
        32 * 3,
    ]
    first = strip.screenshot()
    page.locator("#method").select_option("slerp")
    expect(page.locator("#interp-status")).to_contain_text("slerp")
    expect(page.locator("#interp-status")).not_to_have_class(re.compile("error"))
    assert strip.screenshot() != first
    assert blocked == []


@pytest.fixture(scope="module")
def shipped_docs(chromium: Browser, shipped_service: Server) -> Iterator[tuple[Page, list[str]]]:
    """/docs of the shipped model, loaded once (Swagger UI takes a second or two to render
    here): each test below opens operations of its own, and none changes the service."""
    page, blocked = offline_page(chromium, shipped_service.url)
    page.goto(f"{shipped_service.url}/docs")
    yield page, blocked
    page.close()


def test_docs_render_the_operations_without_internet(
    shipped_docs: tuple[Page, list[str]],
) -> None:
    from playwright.sync_api import expect

    page, blocked = shipped_docs
    operations = page.locator(".opblock-summary-path")
    expect(operations.first).to_be_visible()
    paths = set(operations.all_inner_texts())
    assert {"/anomaly-score", "/reconstruct", "/sample", "/model"} <= paths
    assert {"/encode", "/decode", "/interpolate"} <= paths
    assert blocked == []


@pytest.mark.parametrize("operation", ["decode", "encode", "interpolate"])
def test_docs_try_it_out_runs_the_latent_examples(
    shipped_docs: tuple[Page, list[str]], operation: str
) -> None:
    """The examples are sized for the shipped model (latent size 32): Try it out, Execute."""
    from playwright.sync_api import expect

    page, blocked = shipped_docs
    block = page.locator(f"#operations-latent_space-{operation}_{operation}_post")
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    if operation == "encode":  # multipart comes first, as for /anomaly-score
        block.locator(".opblock-section-request-body select").first.select_option(
            "application/json"
        )
    block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200")
    assert blocked == []


def test_redoc_renders_without_internet(chromium: Browser, service_url: str) -> None:
    from playwright.sync_api import expect

    page, blocked = offline_page(chromium, service_url)
    page.goto(f"{service_url}/redoc")
    expect(page.get_by_text("/anomaly-score").first).to_be_attached()
    expect(page.get_by_role("heading", name="Anomaly Score")).to_be_visible()
    assert blocked == []
