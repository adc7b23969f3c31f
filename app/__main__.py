"""`python -m app` / `vae-serve`: run the service with uvicorn, settings from VAE_* env."""

from __future__ import annotations

import os

# Before torch loads: oneDNN keeps compiled kernels per input shape in a cache. Forward passes
# run at fixed batch buckets (app.runtime.padded_batch_size): up to 256 images that is 328
# kernels, all compiled at start-up. 512 holds them and some Monte Carlo shapes, so serving
# neither recompiles nor grows (the library default, 1024, with unbucketed batch sizes grew
# resident memory for tens of thousands of requests; 128 thrashed).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")

import ctypes
import logging

import uvicorn

from app.config import get_settings
from app.logs import configure_logging
from vae_common.checkpoint import CheckpointError
from vae_common.devices import DeviceUnavailableError

STARTUP_ERRORS = (CheckpointError, DeviceUnavailableError)


class _OneLineStartupFailure(logging.Filter):
    """Our lifespan logs the one-line reason a start-up failed; drop uvicorn's traceback of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (
            text.startswith("Traceback") and any(e.__name__ in text for e in STARTUP_ERRORS)
        )


# glibc malloc tuning (mallopt parameter number from <malloc.h>).
M_ARENA_MAX = -8


def tune_malloc() -> None:
    """At most two glibc malloc arenas, so the heap stops growing under varying batch sizes.

    By default every thread that allocates (the decode/encode pool, the inference thread)
    may get an arena of its own, and freed memory scattered over them is not returned.
    Mixed soak after the load scenarios, RSS every 4,000 requests: 737, 737, 764, 781, 781,
    782 MiB with the default; 745, 745, 745, 745, 745, 745 MiB with two arenas. (A fixed
    128 KiB mmap threshold kept RSS lower still, but put every batch buffer through mmap
    and cut 64-image throughput by ~40%.) Same as MALLOC_ARENA_MAX=2; no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_ARENA_MAX, 2)


def main() -> None:
    # uvicorn's extra worker processes (VAE_WORKERS > 1) are new interpreters: glibc reads
    # these at their start-up. This process is already running, hence mallopt.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    tune_malloc()
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
