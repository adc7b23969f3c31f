"""`python -m app` / `vae-serve`: run the service with uvicorn, settings from VAE_* env."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from app.config import Settings, describe_invalid_settings, get_settings
from app.logs import configure_logging
from app.metrics import prepare_multiprocess_metrics


def settings_or_exit() -> Settings:
    """The settings, or one line naming the bad VAE_* variable and exit code 2 (a usage
    error, as argparse uses): a person reads this, not a pydantic traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        print(f"cannot start: {describe_invalid_settings(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    # Settings first: a bad VAE_* variable is reported before torch loads (1.8 s here).
    settings = settings_or_exit()
    # The process tuning reads environment variables that must be set before torch loads.
    from app.execution import CpuExecution
    from app.server import serve

    CpuExecution.tune_process()
    configure_logging(settings.log_level)
    prepare_multiprocess_metrics(settings.workers)
    serve(settings)


if __name__ == "__main__":
    main()
