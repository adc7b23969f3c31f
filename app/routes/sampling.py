from __future__ import annotations

import math
import secrets

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.jobs import SampleJob
from app.query import query_options, query_parameters
from app.schemas import ErrorResponse, SampleOptions, SampleRequest
from app.uploads import read_sample_request
from vae_common.grid import uint8_grid, uint8_png

router = APIRouter(tags=["sampling"])
_sample_options = query_options(SampleOptions)

# The body is read by app.uploads (malformed JSON gets the service's 422), so describe it here.
_REQUEST_BODY = {
    "required": False,
    "content": {"application/json": {"schema": SampleRequest.model_json_schema()}},
}


@router.post(
    "/sample",
    response_class=Response,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": query_parameters(SampleOptions)},
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "Grid of n digits drawn from the prior, white on black",
            "headers": {
                "X-Model-Id": {"description": "the model that drew them"},
                "X-Seed": {"description": "the seed used; send it back to get the same PNG"},
                "X-Prior": {"description": "the prior drawn from: fitted or standard"},
            },
        },
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def sample(http_request: Request, services: ServicesDep) -> Response:
    """Draw digits from the prior and return them as one PNG grid."""
    options = await _sample_options(http_request)
    request = await read_sample_request(http_request)
    if options.prior is not None:
        services.engine.check_prior(options.prior)  # before queueing; the job checks again
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    job = SampleJob(request.n, request.temperature, seed, options.prior)
    served = await services.batcher.submit(job, job.inputs())
    (digits,) = served.outputs
    nrow = request.nrow or math.ceil(math.sqrt(request.n))
    png = await run_in_threadpool(grid_png, digits, nrow)
    services.metrics.images.labels("sample").inc(request.n)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Model-Id": served.engine.model_id,
            "X-Seed": str(seed),
            "X-Prior": options.prior or served.engine.default_prior,
        },
    )


def grid_png(digits: np.ndarray, nrow: int) -> bytes:
    """(n, 1, 28, 28) in [0, 1] -> one PNG grid, `nrow` digits per row."""
    return uint8_png(uint8_grid(digits, nrow=nrow))
