from __future__ import annotations

import secrets

from fastapi import APIRouter, Body, Response

from app.deps import ServicesDep
from app.inference import sample_png
from app.schemas import ErrorResponse, SampleRequest

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
    },
)
def sample(services: ServicesDep, body: SampleRequest | None = Body(None)) -> Response:
    """Draw digits from the prior and return them as one PNG grid (plain `def`: runs in the
    thread pool, off the event loop)."""
    request = body or SampleRequest()
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    png = sample_png(services.model, request, seed)
    services.metrics.images.labels("sample").inc(request.n)
    return Response(
        png,
        media_type="image/png",
        headers={"X-Model-Id": services.model.model_id, "X-Seed": str(seed)},
    )
