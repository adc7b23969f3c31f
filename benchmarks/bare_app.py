"""A FastAPI app that parses the service's request bodies and answers a constant: the ceiling.

Each endpoint takes the same body as the service's (multipart uploads through FastAPI's
`UploadFile`, read to the end; JSON through `Request.json()`) and returns a constant reply, so
what `benchmarks.serve_load` measures against it is uvicorn + FastAPI + multipart parsing +
the load generator on this machine, with no decoding, model or encoding work. If an endpoint
here rejects a scenario's body, the ceiling is meaningless: the benchmark reports its errors.

    python -m uvicorn benchmarks.bare_app:create_app --factory --port 8001
"""

from __future__ import annotations

import io

from fastapi import FastAPI, File, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

ANOMALY_BODY = {"model_id": "bare", "score": "constant", "results": []}
ENCODE_BODY = {"model_id": "bare", "latent_dim": 0, "results": []}


def blank_png() -> bytes:
    """A 28x28 black grayscale PNG."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


async def read_all(uploads: list[UploadFile]) -> None:
    for upload in uploads:
        await upload.read()


def create_app() -> FastAPI:
    app = FastAPI(title="serve_load bare app", docs_url=None, redoc_url=None, openapi_url=None)
    png = blank_png()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ready", "device": "none"})

    @app.post("/anomaly-score")
    async def anomaly_score(files: list[UploadFile] = File(...)) -> JSONResponse:
        await read_all(files)
        return JSONResponse(ANOMALY_BODY)

    @app.post("/reconstruct")
    async def reconstruct(file: UploadFile = File(...)) -> Response:
        await read_all([file])
        return Response(png, media_type="image/png")

    @app.post("/encode")
    async def encode(files: list[UploadFile] = File(...)) -> JSONResponse:
        await read_all(files)
        return JSONResponse(ENCODE_BODY)

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        await request.json()
        return Response(png, media_type="image/png")

    @app.post("/sample")
    async def sample(request: Request) -> Response:
        await request.json()
        return Response(png, media_type="image/png")

    return app
