"""A FastAPI app that takes the service's payloads and answers at once: the HTTP stack's ceiling.

Each endpoint reads the whole request body (it does not parse multipart or JSON) and returns a
constant response, so what `benchmarks.serve_load` measures against it is uvicorn + FastAPI +
the load generator on this machine, with no decoding, model or encoding work.

    python -m uvicorn benchmarks.bare_app:create_app --factory --port 8001
"""

from __future__ import annotations

import io

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

ANOMALY_BODY = {"model_id": "bare", "score": "constant", "results": []}


def blank_png() -> bytes:
    """A 28x28 black grayscale PNG."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def create_app() -> FastAPI:
    app = FastAPI(title="serve_load bare app", docs_url=None, redoc_url=None, openapi_url=None)
    png = blank_png()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ready", "device": "none"})

    @app.post("/anomaly-score")
    async def anomaly_score(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(ANOMALY_BODY)

    @app.post("/sample")
    async def sample(request: Request) -> Response:
        await request.body()
        return Response(png, media_type="image/png")

    @app.post("/reconstruct")
    async def reconstruct(request: Request) -> Response:
        await request.body()
        return Response(png, media_type="image/png")

    return app
