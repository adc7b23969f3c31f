from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from app.deps import ServicesDep
from app.inference import read_upload, reconstruct_png
from app.multipart import openapi_form
from app.query import query_options, query_parameters
from app.schemas import ErrorResponse, ReconstructOptions

router = APIRouter(tags=["reconstruction"])

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
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def reconstruct(
    request: Request,
    options: Annotated[ReconstructOptions, Depends(query_options(ReconstructOptions))],
    services: ServicesDep,
) -> Response:
    """Encode an uploaded digit and decode it again."""
    png, recon_loss = await reconstruct_png(await read_upload(request, "file"), options, services)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Model-Id": services.model.model_id,
            "X-Reconstruction-Loss": f"{recon_loss:.4f}",
        },
    )
