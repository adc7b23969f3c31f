"""What the server process tells the app: that it is draining (SIGTERM), that a new
checkpoint should be loaded (SIGHUP). app.server sets these from its signal handlers; the
app hands its Lifecycle to the server through the ASGI lifespan state (LIFECYCLE_STATE),
so under a plain `uvicorn` nothing calls them and the app works as before."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:  # app.server imports this module; its worker processes must not wait
    # for torch before they answer the supervisor's first health check.
    from app.engine import Engine, EngineHolder

logger = logging.getLogger("app.lifecycle")
LIFECYCLE_STATE = "lifecycle"  # key in the lifespan state

Reloader = Callable[[], Awaitable["Engine | None"]]


class Lifecycle:
    def __init__(self) -> None:
        self.draining_since: float | None = None  # time.monotonic() of the SIGTERM
        self.reloader: Reloader | None = None  # set by the lifespan once the model serves

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def start_draining(self) -> None:
        """From a signal handler: a plain assignment, safe there; /readyz reads it next."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    async def reload(self) -> Engine | None:
        if self.reloader is None:
            logger.warning("reload asked for before the model is serving: ignored")
            return None
        return await self.reloader()


async def reload_model(engines: EngineHolder, model_path: Path, warm_up_rows: int) -> Engine | None:
    """Load, verify and warm up the checkpoint at model_path on a worker thread while the
    serving one keeps answering, then switch. Any failure is logged and changes nothing."""
    serving = engines.current.model_id
    logger.info("reloading the checkpoint at %s (serving %s)", model_path, serving)
    try:
        engine = await run_in_threadpool(engines.reload, model_path, warm_up_rows)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any failure must leave the serving model in place
        logger.error("reload from %s failed, still serving %s: %s", model_path, serving, exc)
        return None
    logger.info(
        "model %s now serving (was %s), loaded from %s in %.2fs",
        engine.model_id,
        serving,
        model_path,
        engine.load_seconds,
        extra={"model_id": engine.model_id, "device": str(engine.device)},
    )
    return engine
