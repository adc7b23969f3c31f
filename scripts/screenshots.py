"""Screenshots of the demo page and /docs for the README, served from the shipped checkpoint
in a real Chromium with everything outside the service blocked.

    python -m scripts.screenshots            # writes docs/demo.png and docs/docs.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from app.config import DEFAULT_MODEL_PATH, Settings
from app.main import create_app
from scripts.browser_demo import DIGIT_STROKES, chromium_path, draw, launch_chromium, offline_page
from scripts.live_server import live_server

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--digit", choices=sorted(DIGIT_STROKES), default="2")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or set VAE_CHROMIUM")
    args.out.mkdir(exist_ok=True)
    app = create_app(Settings(model_path=args.model, device="cpu"))
    with live_server(app) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        page, blocked = offline_page(browser, url)
        page.goto(f"{url}/")
        draw(page, "#pad", DIGIT_STROKES[args.digit])
        expect(page.locator("#score-value")).not_to_have_text("-")
        draw(page, "#pad-start", DIGIT_STROKES["1"])
        draw(page, "#pad-end", DIGIT_STROKES["7"])
        expect(page.locator("#interp-img")).to_be_visible()
        expect(page.locator("#interp-status")).to_contain_text("steps")
        expect(page.locator("#sample-img")).to_have_attribute("data-seed", "7")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=args.out / "demo.png", full_page=True)

        page.goto(f"{url}/docs")
        expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
        page.screenshot(path=args.out / "docs.png")
        browser.close()
    if blocked:
        raise SystemExit(f"the page tried to reach outside the service: {blocked}")
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'docs.png'}")


if __name__ == "__main__":
    main()
