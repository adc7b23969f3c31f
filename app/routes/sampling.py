from __future__ import annotations

import math
import secrets

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.jobs import SampleJob
from app.schemas import ErrorResponse, SampleRequest
from app.uploads import read_sample_request
from vae_common.grid import uint8_grid, uint8_png

router = APIRouter(tags=["sampling"])

# The body is read by app.uploads (malformed JSON gets the service's 422), so describe it here.
_REQUEST_BODY = {
    "required": False,
    "content": {"application/json": {"schema": SampleRequest.model_json_schema()}},
}


@router.post(
    "/sample",
    response_class=Response,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "Grid of n digits drawn from the prior, white on black",
            "headers": {
                "X-Model-Id": {"description": "the model that drew them"},
                "X-Seed": {"description": "the seed used; send it back to get the same PNG"},
            },
        },
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def sample(http_request: Request, services: ServicesDep) -> Response:
    """Draw digits from the prior and return them as one PNG grid."""
    request = await read_sample_request(http_request)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    job = SampleJob(request.n, request.temperature, seed)
    served = await services.batcher.submit(job, job.inputs())
    (digits,) = served.outputs
    nrow = request.nrow or math.ceil(math.sqrt(request.n))
    png = await run_in_threadpool(grid_png, digits, nrow)
    services.metrics.images.labels("sample").inc(request.n)
    return Response(
        png,
        media_type="image/png",
        headers={"X-Model-Id": served.engine.model_id, "X-Seed": str(seed)},
    )


def grid_png(digits: np.ndarray, nrow: int) -> bytes:
    """(n, 1, 28, 28) in [0, 1] -> one PNG grid, `nrow` digits per row."""
    return uint8_png(uint8_grid(digits, nrow=nrow))
