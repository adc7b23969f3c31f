from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from app.batching import Served
from app.deps import ServicesDep
from app.errors import MODEL_ROUTE_ERRORS
from app.jobs import ScoreJob
from app.multipart import openapi_form
from app.query import query_options, query_parameters
from app.schemas import AnomalyJsonBody, AnomalyOptions, AnomalyResponse, ImageScore, ScoreName
from app.uploads import read_images
from vae_common.scoring import SCORES

router = APIRouter(tags=["scoring"])

# The body is parsed by hand (it may be multipart or JSON), so describe it for /docs here.
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        **openapi_form(
            "files",
            {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
                "maxItems": 64,  # VAE_MAX_BATCH's default
            },
        ),
        "application/json": {"schema": AnomalyJsonBody.model_json_schema()},
    },
}


@router.post(
    "/anomaly-score",
    response_model=AnomalyResponse,
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": query_parameters(AnomalyOptions)},
    responses=MODEL_ROUTE_ERRORS,
)
async def anomaly_score(
    request: Request,
    options: Annotated[AnomalyOptions, Depends(query_options(AnomalyOptions))],
    services: ServicesDep,
) -> Response:
    """Score how unlike MNIST digits the images are; results keep the order of the inputs."""
    pixels = await read_images(request, options.preprocess, services.settings)
    score = options.score.value if options.score else None
    settings = services.settings
    job = ScoreJob.for_request(
        score,
        options.k,
        services.engine,
        settings.max_iwae_k,
        images=len(pixels),
        max_decodes=settings.max_request_decodes,
    )
    served = await services.batcher.submit(job, pixels)
    services.metrics.images.labels("anomaly-score").inc(len(pixels))
    # Already validated on construction: serialise once, without FastAPI validating it again.
    reply = anomaly_response(job, served, options)
    return Response(reply.model_dump_json(), media_type="application/json")


def anomaly_response(job: ScoreJob, served: Served, options: AnomalyOptions) -> AnomalyResponse:
    """ScoreJob's rows -> the reply, flagged at the threshold the request chose."""
    scores, recon, kl, percentiles = served.outputs
    engine = served.engine
    threshold = engine.threshold(job.score, options.threshold, options.fpr)
    score_values = scores.astype(np.float64)
    results = [
        ImageScore(
            index=index,
            score=float(score_values[index]),
            reconstruction_loss=float(recon[index]),
            kl=float(kl[index]),
            percentile=round(float(percentiles[index]), 3),
            is_anomaly=bool(score_values[index] > threshold.value),
        )
        for index in range(len(scores))
    ]
    return AnomalyResponse(
        model_id=engine.model_id,
        score=ScoreName(job.score),
        score_definition=SCORES[job.score].definition,
        k=job.k,
        threshold=threshold.value,
        threshold_source=threshold.source,
        results=results,
    )
