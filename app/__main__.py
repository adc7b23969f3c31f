"""`python -m app` / `vae-serve`: run the service with uvicorn, settings from VAE_* env."""

from __future__ import annotations

import logging

import uvicorn

from app.config import get_settings
from app.logs import configure_logging

# By name: importing them would load torch before CpuExecution.tune_process has run.
STARTUP_ERRORS = ("CheckpointError", "DeviceUnavailableError")


class _OneLineStartupFailure(logging.Filter):
    """Our lifespan logs the one-line reason a start-up failed; drop uvicorn's traceback of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Traceback") and any(name in text for name in STARTUP_ERRORS))


def main() -> None:
    # The process tuning reads environment variables that must be set before torch loads.
    from app.execution import CpuExecution

    CpuExecution.tune_process()
    settings = get_settings()
    configure_logging(settings.log_level)
    for name in ("uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(_OneLineStartupFailure())
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        limit_concurrency=settings.limit_concurrency,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
