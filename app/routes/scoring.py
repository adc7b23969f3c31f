from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from app.deps import ServicesDep
from app.inference import read_anomaly_images, score_anomalies
from app.multipart import openapi_form
from app.query import query_options, query_parameters
from app.schemas import AnomalyJsonBody, AnomalyOptions, AnomalyResponse, ErrorResponse

router = APIRouter(tags=["scoring"])

# The body is parsed by hand (it may be multipart or JSON), so describe it for /docs here.
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        **openapi_form("files", {"type": "array", "items": {"type": "string", "format": "binary"}}),
        "application/json": {"schema": AnomalyJsonBody.model_json_schema()},
    },
}


@router.post(
    "/anomaly-score",
    response_model=AnomalyResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": query_parameters(AnomalyOptions)},
    responses={
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def anomaly_score(
    request: Request,
    options: Annotated[AnomalyOptions, Depends(query_options(AnomalyOptions))],
    services: ServicesDep,
) -> Response:
    """Score how unlike MNIST digits the images are; results keep the order of the inputs."""
    images = await read_anomaly_images(request, options.preprocess, services.settings)
    reply = await score_anomalies(images, options, services)
    # Already validated on construction: serialise once, without FastAPI validating it again.
    return Response(reply.model_dump_json(), media_type="application/json")
