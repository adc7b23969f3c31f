"""Typed dependencies: handlers ask for what they need, tests override it.

They are `async def` on purpose: they only read app.state, and FastAPI runs a plain `def`
dependency in the thread pool, which would cost a thread hand-off per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.batching import DynamicBatcher
from app.config import Settings
from app.metrics import ServiceMetrics
from app.runtime import LoadedModel


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_model(request: Request) -> LoadedModel:
    model: LoadedModel | None = getattr(request.app.state, "model", None)
    if model is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the model is not loaded yet; poll /readyz",
            headers={"Retry-After": "1"},
        )
    return model


async def get_batcher(request: Request) -> DynamicBatcher:
    batcher: DynamicBatcher = request.app.state.batcher
    return batcher


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
BatcherDep = Annotated[DynamicBatcher, Depends(get_batcher)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
