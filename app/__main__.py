"""`python -m app` / `vae-serve`: run the service with uvicorn, settings from VAE_* env."""

from __future__ import annotations

import logging

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
    from app.server import serve

    CpuExecution.tune_process()
    settings = get_settings()
    configure_logging(settings.log_level)
    for name in ("uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(_OneLineStartupFailure())
    serve(settings)


if __name__ == "__main__":
    main()
