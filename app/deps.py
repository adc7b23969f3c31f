"""Typed dependencies: handlers ask for what they need, tests override it.

The model routes take one `Services` bundle rather than four dependencies: FastAPI resolves
each dependency separately on every request, and on the one-image /anomaly-score path that
resolution was a measurable share of the event loop's time.

They are `async def` on purpose: they only read app.state, and FastAPI runs a plain `def`
dependency in the thread pool, which would cost a thread hand-off per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.batching import Lanes
from app.config import Settings
from app.engine import Engine, EngineHolder
from app.metrics import ServiceMetrics


@dataclass(frozen=True)
class Services:
    """Everything the model routes use; assembled once, in the lifespan."""

    settings: Settings
    engines: EngineHolder
    batcher: Lanes
    metrics: ServiceMetrics

    @property
    def engine(self) -> Engine:
        """The engine serving now (for lookups: a reply names the engine of its batch)."""
        return self.engines.current


async def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the model is not loaded yet; poll /readyz",
            headers={"Retry-After": "1"},
        )
    return services


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


ServicesDep = Annotated[Services, Depends(get_services)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
