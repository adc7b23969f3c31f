"""Swagger UI with an API key, in a real Chromium: /docs opens without the key, the Authorize
button takes it, and "Try it out" on a guarded endpoint then gets 200 instead of 401."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.config import Settings
from app.main import create_app
from scripts.browser_demo import offline_page
from scripts.live_server import live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser
API_KEY = "swagger-test-key"
# POST /sample, guarded like every model endpoint, with a reply Swagger UI shows at once: the
# /model card (87 KB of JSON, syntax-highlighted) took 2-4 s to render per try here.
GUARDED_OPERATION = "#operations-sampling-sample_sample_post"


@pytest.fixture(scope="module")
def keyed_url(tiny_model_path: Path) -> Iterator[str]:
    settings = Settings(model_path=tiny_model_path, device="cpu", api_key=API_KEY)
    with live_server(create_app(settings)) as url:
        yield url


def try_sample(page: Page) -> str:
    """Try it out on POST /sample with its defaults; the status code Swagger UI shows."""
    from playwright.sync_api import expect

    operation = page.locator(GUARDED_OPERATION)
    try_out = operation.locator(".try-out__btn")
    if not try_out.is_visible():
        operation.locator(".opblock-summary").click()
    # Wait for the expanded operation before reading the button: on a busy machine Swagger UI
    # renders it after the click returns, and a check made too early skipped "Try it out".
    expect(try_out).to_be_visible()
    if "Try it out" in try_out.inner_text():  # after a first try it reads "Cancel"
        try_out.click()
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text(re.compile(r"^(200|401)\b"))
    text: str = status.inner_text().split()[0]  # "401 Undocumented"
    operation.locator(".btn-clear").click()
    return text


def test_authorize_makes_try_it_out_send_the_key(chromium: Browser, keyed_url: str) -> None:
    from playwright.sync_api import expect

    page, blocked = offline_page(chromium, keyed_url)
    page.goto(f"{keyed_url}/docs")
    expect(page.locator(GUARDED_OPERATION)).to_be_visible()
    assert try_sample(page) == "401"
    page.locator(".auth-wrapper .authorize").click()
    bearer = page.locator(".modal-ux .auth-container").filter(has_text="HTTPBearer")
    bearer.locator("input").fill(API_KEY)
    bearer.locator("button.authorize").click()
    page.locator(".modal-ux .btn-done").first.click()
    assert try_sample(page) == "200"
    assert blocked == []
