"""Pages for people: the API docs (Swagger UI, ReDoc) and the demo page at `/`.

Everything these pages load comes from this service: the Swagger UI and ReDoc bundles ship in
the `fastapi-offline` wheel (FastAPI's defaults fetch them from a CDN, which leaves a blank
page on a machine without internet), and the demo page lives in app/static/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.params import Depends
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs-assets"
DEMO_DIR = Path(__file__).resolve().parent / "static"
DEMO_URL = "/static"

# The demo page may talk to this service only: a browser enforces it even if a later edit
# slips in an outside URL. blob: and data: carry the PNGs the API returns.
DEMO_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def add_docs(app: FastAPI, dependencies: Sequence[Depends]) -> None:
    """/openapi.json, /docs and /redoc behind `dependencies`: the API key when one is set and
    VAE_PUBLIC_DOCS is false; none by default, as a browser opening /docs cannot send a
    header, and the schema describes the API, not its data. With a key, the schema declares
    it (app/security.py), so Swagger UI's Authorize button takes it and "Try it out" sends it.
    The script and style bundles themselves are public: they hold nothing about this API."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    favicon = f"{DOCS_ASSETS_URL}/favicon.png"

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,  # fonts.googleapis.com is outside too
        )
        # The bundle shows a "by Redocly" logo from cdn.redoc.ly: without this the browser
        # would try to fetch it; the page renders the same without it.
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page


def add_demo_page(app: FastAPI) -> None:
    """The demo at `/`: static files only; every panel calls the public API like any client,
    so the page needs no key of its own and adds no endpoint."""
    app.mount(DEMO_URL, StaticFiles(directory=DEMO_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def demo() -> FileResponse:
        return FileResponse(DEMO_DIR / "index.html", headers={"Content-Security-Policy": DEMO_CSP})
