from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Response, UploadFile

from app.deps import ServicesDep
from app.inference import reconstruct_png
from app.query import query_options, query_parameters
from app.schemas import ErrorResponse, ReconstructOptions

router = APIRouter(tags=["reconstruction"])


@router.post(
    "/reconstruct",
    response_class=Response,
    openapi_extra={"parameters": query_parameters(ReconstructOptions)},
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
    file: Annotated[UploadFile, File(description="a picture of one digit, any Pillow format")],
    options: Annotated[ReconstructOptions, Depends(query_options(ReconstructOptions))],
    services: ServicesDep,
) -> Response:
    """Encode an uploaded digit and decode it again."""
    png, recon_loss = await reconstruct_png(await file.read(), options, services)
    return Response(
        png,
        media_type="image/png",
        headers={
            "X-Model-Id": services.model.model_id,
            "X-Reconstruction-Loss": f"{recon_loss:.4f}",
        },
    )
