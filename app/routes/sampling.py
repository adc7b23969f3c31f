from __future__ import annotations

import math
import secrets

import numpy as np
from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.jobs import SampleJob
from app.schemas import ErrorResponse, SampleRequest
from vae_common.grid import uint8_grid, uint8_png

router = APIRouter(tags=["sampling"])


@router.post(
    "/sample",
    response_class=Response,
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
async def sample(services: ServicesDep, body: SampleRequest | None = Body(None)) -> Response:
    """Draw digits from the prior and return them as one PNG grid."""
    request = body or SampleRequest()
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
