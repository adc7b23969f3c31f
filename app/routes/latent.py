"""The latent space as an API: pictures -> codes (/encode), codes -> digits (/decode), and
the path between two digits (/interpolate)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.errors import MODEL_ROUTE_ERRORS, UnsupportedMediaTypeError
from app.jobs import DecodeJob, EncodeJob, InterpolateJob
from app.multipart import openapi_form
from app.query import query_options, query_parameters
from app.schemas import (
    AnomalyJsonBody,
    DecodedPixels,
    DecodeOptions,
    DecodeRequest,
    EncodeOptions,
    EncodeResponse,
    InterpolateLatents,
    InterpolateOptions,
)
from app.uploads import media_type, parse_json, read_images, read_named_images
from vae_common.grid import make_grid, png_bytes

router = APIRouter(tags=["latent space"])

# Pixels in JSON: 6 decimals is far finer than the 8 bits of a PNG, and a third of the
# bytes of float32's shortest text.
PIXEL_DECIMALS = 6
PICTURE = {"type": "string", "format": "binary", "description": "a picture of one digit"}


def _json_body(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    """A JSON request body for /docs; `example` is what "Try it out" fills in."""
    return {"application/json": {"schema": schema, "example": example}}


def _example(model: type[Any]) -> Any:
    return model.model_config["json_schema_extra"]["examples"][0]


_ENCODE_BODY = {
    "required": True,
    "content": {
        **openapi_form("files", {"type": "array", "items": PICTURE}),
        # A blank digit: the base64 example of /anomaly-score is cut short to fit the page.
        **_json_body(AnomalyJsonBody.model_json_schema(), {"pixels": [[0.0] * 784]}),
    },
}
_DECODE_BODY = {
    "required": True,
    "content": _json_body(DecodeRequest.model_json_schema(), _example(DecodeRequest)),
}
_INTERPOLATE_BODY = {
    "required": True,
    # JSON first: "Try it out" opens on the first media type, and Swagger UI keeps the empty
    # form fields of multipart as the JSON text when one switches over (checked in Chromium).
    "content": {
        **_json_body(InterpolateLatents.model_json_schema(), _example(InterpolateLatents)),
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"start": PICTURE, "end": PICTURE},
                "required": ["start", "end"],
            }
        },
    },
}
_PNG_REPLY = {
    "content": {"image/png": {}},
    "headers": {"X-Model-Id": {"description": "the model that drew them"}},
}


@router.post(
    "/encode",
    response_model=EncodeResponse,
    openapi_extra={"requestBody": _ENCODE_BODY, "parameters": query_parameters(EncodeOptions)},
    responses=MODEL_ROUTE_ERRORS,
)
async def encode(
    request: Request,
    options: Annotated[EncodeOptions, Depends(query_options(EncodeOptions))],
    services: ServicesDep,
) -> Response:
    """The posterior q(z|x) = N(mu, sigma^2) of each image, in input order. The images come
    as for /anomaly-score: multipart `files`, JSON `images` (base64) or JSON `pixels`."""
    pixels = await read_images(request, options.preprocess, services.settings)
    served = await services.batcher.submit(EncodeJob(), pixels)
    services.metrics.images.labels("encode").inc(len(pixels))
    mu, sigma = served.outputs
    reply = {
        "model_id": served.engine.model_id,
        "latent_dim": int(mu.shape[1]),
        "results": [
            {"index": index, "mu": means, "sigma": deviations}
            for index, (means, deviations) in enumerate(
                zip(mu.astype(np.float64).tolist(), sigma.astype(np.float64).tolist(), strict=True)
            )
        ],
    }
    return Response(json.dumps(reply), media_type="application/json")


@router.post(
    "/decode",
    response_model=DecodedPixels,
    openapi_extra={"requestBody": _DECODE_BODY, "parameters": query_parameters(DecodeOptions)},
    responses={
        200: {
            **_PNG_REPLY,
            "description": "format=png: a grid of the decoded digits, white on black, like "
            "/sample; format=pixels: the JSON below",
        },
        **MODEL_ROUTE_ERRORS,
    },
)
async def decode(
    request: Request,
    options: Annotated[DecodeOptions, Depends(query_options(DecodeOptions))],
    services: ServicesDep,
) -> Response:
    """Decode latent vectors (of the size GET /model gives as latent_dim) into digits."""
    latent_dim = services.engine.latent_dim
    body = parse_json(await _json_only(request), DecodeRequest, {"latent_dim": latent_dim})
    latents = np.asarray(body.latents, dtype=np.float32)
    served = await services.batcher.submit(DecodeJob(latent_dim), latents)
    services.metrics.images.labels("decode").inc(len(latents))
    (digits,) = served.outputs
    if options.format == "pixels":
        rows = np.round(digits.reshape(len(digits), -1).astype(np.float64), PIXEL_DECIMALS)
        reply = {"model_id": served.engine.model_id, "pixels": rows.tolist()}
        return Response(json.dumps(reply), media_type="application/json")
    nrow = options.nrow or math.ceil(math.sqrt(len(digits)))
    png = await run_in_threadpool(digits_png, digits, nrow, options.scale)
    return Response(png, media_type="image/png", headers={"X-Model-Id": served.engine.model_id})


@router.post(
    "/interpolate",
    response_class=Response,
    openapi_extra={
        "requestBody": _INTERPOLATE_BODY,
        "parameters": query_parameters(InterpolateOptions),
    },
    responses={
        200: {**_PNG_REPLY, "description": "one row of `steps` digits, first to last"},
        **MODEL_ROUTE_ERRORS,
    },
)
async def interpolate(
    request: Request,
    options: Annotated[InterpolateOptions, Depends(query_options(InterpolateOptions))],
    services: ServicesDep,
) -> Response:
    """Digits along the path between two codes, ends included. From two pictures
    (multipart `start` and `end`) the codes are their means, so the ends of the strip are
    their reconstructions; or send the two codes as JSON."""
    content_type = media_type(request)
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type or '(none)'} is not accepted: send multipart/form-data "
            "with the pictures in fields 'start' and 'end', or application/json "
            '{"start": [...], "end": [...]} with two latent vectors'
        )
    if content_type == "application/json":
        latent_dim = services.engine.latent_dim
        body = parse_json(await request.body(), InterpolateLatents, {"latent_dim": latent_dim})
        ends = np.asarray([body.start, body.end], dtype=np.float32)
        job = InterpolateJob(options.steps, options.method, latent_dim)
    else:
        ends = await read_named_images(
            request, ("start", "end"), options.preprocess, services.settings
        )
        job = InterpolateJob(options.steps, options.method, None)
    served = await services.batcher.submit(job, ends)
    services.metrics.images.labels("interpolate").inc(options.steps)
    (digits,) = served.outputs
    png = await run_in_threadpool(digits_png, digits, options.steps, options.scale)
    return Response(png, media_type="image/png", headers={"X-Model-Id": served.engine.model_id})


async def _json_only(request: Request) -> bytes:
    if media_type(request) != "application/json":
        raise UnsupportedMediaTypeError(
            'send application/json: {"latents": [[...], ...]}, one list of latent_dim numbers '
            "per digit"
        )
    return await request.body()


def digits_png(digits: np.ndarray, nrow: int, scale: int) -> bytes:
    """(n, 1, 28, 28) in [0, 1] -> one PNG grid, `nrow` digits per row, as /sample draws it."""
    return png_bytes(make_grid(torch.from_numpy(digits), nrow=nrow), scale=scale)
