"""The application factory. Importing this module does no work; `create_app()` does."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app.admission import AdmissionMiddleware
from app.batching import HEAVY_CHUNK_ROWS, BatchStats, DynamicBatcher, Lanes
from app.config import Settings, get_settings
from app.deps import Services
from app.docs import add_demo_page, add_docs
from app.engine import EngineHolder, load_engine
from app.errors import install_error_handlers
from app.execution import Execution, choose_execution, one_intra_op_thread
from app.lean import add_lean_routes
from app.lifecycle import LIFECYCLE_STATE, Lifecycle, reload_model
from app.metrics import ServiceMetrics
from app.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.routes import latent, operations, reconstruction, sampling, scoring
from app.security import require_api_key
from vae_common.checkpoint import CheckpointError
from vae_common.devices import DeviceUnavailableError

logger = logging.getLogger("app")

DESCRIPTION = """
A variational autoencoder trained on MNIST. Pixels everywhere are floats in [0, 1], white
digit on black, 28x28. Draw digits from the prior, reconstruct an uploaded picture, or
score how unlike a handwritten digit an image is, with percentiles calibrated on held-out
digits. The latent space is open too: encode pictures to their codes, decode codes into
digits, and walk from one digit to another.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Load, verify and warm up the model; start the batcher; report ready. Any failure
    here stops start-up (the process exits non-zero) instead of serving half-working."""
    settings: Settings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    # Decoding and PNG encoding are CPU-bound: more threads than a few per core only add
    # contention and per-thread malloc arenas (resident memory), not throughput.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threadpool_size
    execution: Execution | None = None
    try:
        execution = choose_execution(
            settings.device,
            settings.torch_threads,
            settings.model_instances,
            settings.precision,
            settings.channels_last,
        )
        engine = await run_in_threadpool(
            load_engine, settings.model_path, execution, settings.batch_max_size
        )
    except (CheckpointError, DeviceUnavailableError) as exc:
        logger.critical("cannot start: %s", exc)
        if execution is not None:
            execution.close()
        raise
    logger.info(
        "model %s loaded from %s on %s in %.2fs",
        engine.model_id,
        settings.model_path,
        engine.device,
        engine.load_seconds,
        extra={"model_id": engine.model_id, "device": str(engine.device)},
    )
    engines = EngineHolder(engine)
    executor = ThreadPoolExecutor(
        max_workers=settings.model_instances, thread_name_prefix="inference"
    )
    heavy_executor = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="inference-heavy", initializer=one_intra_op_thread
    )

    def lane(
        executor: ThreadPoolExecutor, max_running: int, max_size: int, preferred_size: int = 0
    ) -> DynamicBatcher:
        return DynamicBatcher(
            engines=engines,
            executor=executor,
            max_size=max_size,
            max_delay_s=settings.batch_max_delay_ms / 1000.0,
            max_queued_images=settings.batch_queue_images,
            stats=BatchStats(on_batch=partial(_observe_batch, metrics)),
            max_running=max_running,
            preferred_size=preferred_size,
            busy_delay_s=settings.batch_busy_delay_ms / 1000.0,
        )

    chunk_rows = min(HEAVY_CHUNK_ROWS, settings.batch_max_size)
    batcher = Lanes(
        cheap=lane(
            executor,
            settings.model_instances,
            settings.batch_max_size,
            min(settings.batch_preferred_size, settings.batch_max_size),
        ),
        heavy=lane(heavy_executor, 1, chunk_rows),
        chunk_rows=chunk_rows,
    )
    metrics.watch_queue(lambda: batcher.queued_images)
    batcher.start()
    app.state.services = Services(settings, engines, batcher, metrics)
    # torch, FastAPI and the model leave ~200k objects that live as long as the process.
    # A full garbage collection walks all of them (measured: 94 ms, during which no request
    # moves); frozen, they are skipped, and a full collection takes microseconds.
    gc.collect()
    gc.freeze()
    lifecycle: Lifecycle = app.state.lifecycle
    lifecycle.reloader = partial(
        reload_model, engines, settings.model_path, settings.batch_max_size
    )
    app.state.ready = True
    try:
        yield {LIFECYCLE_STATE: lifecycle}  # app.server drains and reloads through it
    finally:
        app.state.ready = False
        lifecycle.reloader = None
        await batcher.stop()
        executor.shutdown(wait=True)
        heavy_executor.shutdown(wait=True)
        execution.close()


def _observe_batch(metrics: ServiceMetrics, requests: int, images: int, seconds: float) -> None:
    metrics.observe_batch(images, seconds)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="MNIST VAE service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below, behind the API key when one is set
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics.create()
    app.state.ready = False
    app.state.lifecycle = Lifecycle()
    install_error_handlers(app)
    # Without a key there is nothing to check: no dependency, and no lock icons in /docs.
    protected = [Depends(require_api_key)] if settings.api_key is not None else []
    # Routes are matched in order: the busiest first.
    app.include_router(scoring.router, dependencies=protected)
    app.include_router(reconstruction.router, dependencies=protected)
    app.include_router(sampling.router, dependencies=protected)
    app.include_router(latent.router, dependencies=protected)
    app.include_router(operations.router)
    app.include_router(operations.protected_router, dependencies=protected)
    # The busiest routes skip FastAPI's request handler (app/lean.py); their FastAPI
    # routes stay for the schema and /docs.
    add_lean_routes(
        app,
        (scoring.router, reconstruction.router),
        ("/anomaly-score", "/reconstruct"),
        protected=bool(protected),
    )
    add_docs(app, [] if settings.public_docs else protected)
    add_demo_page(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(
        AdmissionMiddleware,
        lifecycle=app.state.lifecycle,
        body_timeout_s=settings.body_timeout_s,
        limit_concurrency=settings.limit_concurrency,
    )
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:  # outermost: preflights answered first, every reply has headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            # The key travels in a header (no cookies); scripts may read the reply headers.
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-Model-Id",
                "X-Seed",
                "X-Prior",
                "X-Reconstruction-Loss",
            ],
            max_age=600,
        )
    return app
