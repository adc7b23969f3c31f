from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import get_services
from app.errors import MODEL_ROUTE_ERRORS
from app.jobs import ReconstructJob
from app.multipart import openapi_form
from app.query import query_options, query_parameters
from app.schemas import ReconstructOptions
from app.uploads import read_image
from vae_common.grid import uint8_grid, uint8_png
from vae_common.pixels import IMAGE_SIZE

router = APIRouter(tags=["reconstruction"])
_reconstruct_options = query_options(ReconstructOptions)
# A 28x28 or 56x28 PNG (x2) encodes in tens of microseconds: less than a hand-off to the
# thread pool costs. Larger scales are encoded there.
INLINE_PNG_MAX_SCALE = 2

# The body is read by app.multipart, so describe it for /docs here.
_REQUEST_BODY = {
    "required": True,
    "content": openapi_form(
        "file",
        {
            "type": "string",
            "format": "binary",
            "description": "a picture of one digit: PNG, JPEG, BMP, GIF, WEBP or TIFF",
        },
    ),
}


@router.post(
    "/reconstruct",
    response_class=Response,
    openapi_extra={
        "requestBody": _REQUEST_BODY,
        "parameters": query_parameters(ReconstructOptions),
    },
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "28x28 reconstruction (x scale), or input | reconstruction",
            "headers": {"X-Reconstruction-Loss": {"description": "-log p(x|z=mu) in nats"}},
        },
        **MODEL_ROUTE_ERRORS,
    },
)
async def reconstruct(request: Request) -> Response:
    """Encode an uploaded digit and decode it again."""
    # Not FastAPI dependencies, for speed: see app/routes/scoring.py.
    options = await _reconstruct_options(request)
    services = await get_services(request)
    pixels = await read_image(request, "file", options.preprocess, services.settings)
    served = await services.batcher.submit(ReconstructJob(), pixels)
    services.metrics.images.labels("reconstruct").inc()
    reconstruction, recon_loss = served.outputs
    if options.scale <= INLINE_PNG_MAX_SCALE:
        png = reconstruction_png(pixels, reconstruction, options)
    else:
        png = await run_in_threadpool(reconstruction_png, pixels, reconstruction, options)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Model-Id": served.engine.model_id,
            "X-Reconstruction-Loss": f"{float(recon_loss[0]):.4f}",
        },
    )


def reconstruction_png(
    pixels: np.ndarray, reconstruction: np.ndarray, options: ReconstructOptions
) -> bytes:
    """(1, 28, 28) input and (1, 1, 28, 28) reconstruction -> PNG, side by side for 'pair'."""
    shown = reconstruction.reshape(1, IMAGE_SIZE, IMAGE_SIZE)
    if options.layout == "pair":
        shown = np.concatenate([np.clip(pixels, 0.0, 1.0), shown])
    return uint8_png(uint8_grid(shown, nrow=len(shown), padding=0), scale=options.scale)
