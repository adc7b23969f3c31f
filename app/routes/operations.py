from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import MetricsDep, ServicesDep
from app.schemas import HealthResponse, ModelCard, ReadyResponse

router = APIRouter(tags=["operations"])
protected_router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded, verified and warmed up; 503 before that and when draining."""
    state = request.app.state
    services = getattr(state, "services", None)
    if services is None or not getattr(state, "ready", False) or state.lifecycle.draining:
        # Draining: the process is still serving, but load balancers should stop sending.
        body = ReadyResponse(status="draining" if state.lifecycle.draining else "not ready")
        return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    engine = services.engine
    body = ReadyResponse(status="ready", model_id=engine.model_id, device=str(engine.device))
    return JSONResponse(body.model_dump())


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition (the sum over all workers when there are several)."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@protected_router.get("/model")
async def model_card(services: ServicesDep) -> ModelCard:
    """The model card: architecture, metrics, calibration, sha256, device and precision."""
    return services.engine.card()
