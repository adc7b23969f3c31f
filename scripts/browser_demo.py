"""Driving the demo page in Chromium through Playwright: shared by tests/test_browser.py and
scripts/screenshots.py. Playwright's own browser download is not available here, so it drives
the system's Chromium (Debian package `chromium`)."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importable without playwright, so that a missing package can be reported
    from playwright.sync_api import Browser, Page, Playwright, Route

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")

# Strokes in the coordinates of a 280x280 pad; a smaller pad scales them.
Stroke = Sequence[tuple[float, float]]
DIGIT_STROKES: dict[str, list[Stroke]] = {
    "1": [[(150, 45), (148, 140), (146, 235)]],
    "2": [
        [
            (80, 95),
            (100, 60),
            (140, 45),
            (180, 60),
            (195, 100),
            (180, 140),
            (140, 180),
            (95, 225),
            (200, 225),
        ]
    ],
    "3": [
        [
            (85, 70),
            (125, 45),
            (175, 55),
            (185, 95),
            (150, 130),
            (120, 135),
            (165, 145),
            (190, 185),
            (170, 225),
            (120, 235),
            (80, 215),
        ]
    ],
    "7": [[(80, 55), (200, 55), (160, 140), (120, 235)]],
}


def chromium_path() -> str | None:
    """$VAE_CHROMIUM, else the first Chromium on PATH."""
    configured = os.environ.get("VAE_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    return playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])


def offline_page(browser: Browser, base_url: str, width: int = 1280) -> tuple[Page, list[str]]:
    """A page that may reach `base_url` only; every other request is aborted and listed, as
    on a machine without internet."""
    page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
    blocked: list[str] = []

    def only_the_service(route: Route) -> None:
        url = route.request.url
        if url == base_url or url.startswith(f"{base_url}/"):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_the_service)
    return page, blocked


# canvas.toBlob (how the demo page encodes a drawing) waits for an idle period between frames;
# headless Chromium draws no frames for a still page, so it ran after a 1 s fallback, once per
# pad: 1000 ms per toBlob, the interpolation strip 2.3 s after the last stroke. With a frame
# loop running: 9-23 ms per toBlob, the strip 0.1 s after the stroke. Tests and screenshots only.
KEEP_DRAWING_FRAMES = """() => {
    if (window.keepingFrames) return;
    window.keepingFrames = true;
    const next = () => requestAnimationFrame(next);
    next();
}"""


def keep_drawing_frames(page: Page) -> None:
    page.evaluate(KEEP_DRAWING_FRAMES)


def draw(page: Page, canvas_selector: str, strokes: Sequence[Stroke]) -> None:
    """Mouse strokes on a canvas (points in 280x280 pad coordinates)."""
    keep_drawing_frames(page)
    canvas = page.locator(canvas_selector)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None, f"{canvas_selector} is not on the page"
    scale = box["width"] / 280

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * scale, box["y"] + point[1] * scale

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=6)
        page.mouse.up()


def touch_draw(page: Page, canvas_selector: str, strokes: Sequence[Stroke]) -> None:
    """The same strokes as `draw`, as touch events (Chrome DevTools Protocol): Playwright's
    touchscreen API only taps. The page must come from a context with has_touch=True."""
    canvas = page.locator(canvas_selector)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None, f"{canvas_selector} is not on the page"
    scale = box["width"] / 280
    keep_drawing_frames(page)
    devtools = page.context.new_cdp_session(page)

    def send(kind: str, points: Sequence[tuple[float, float]]) -> None:
        touch_points = [{"x": box["x"] + x * scale, "y": box["y"] + y * scale} for x, y in points]
        devtools.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touch_points})

    for stroke in strokes:
        send("touchStart", stroke[:1])
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for step in range(1, 7):
                t = step / 6
                send("touchMove", [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)])
        send("touchEnd", [])
    devtools.detach()
