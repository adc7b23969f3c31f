"""Progress for steps that take more than a few seconds: a tqdm bar on a terminal, and log
lines with counts and an estimate of the time left when stderr is a file or a pipe (CI, nohup),
where a bar would be either invisible or thousands of carriage returns."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

logger = logging.getLogger("vae-train")

LOG_EVERY_S = 15.0
Item = TypeVar("Item")


def track(items: Iterable[Item], total: int, desc: str) -> Iterator[Item]:
    """Yield `items` unchanged while showing how many of `total` are done."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start = last_report = time.perf_counter()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()  # the consumer has finished with item `done` by now
        if now - last_report >= LOG_EVERY_S and done < total:
            left = (now - start) / done * (total - done)
            logger.info(
                "%s: %d/%d, %.0f s so far, about %.0f s left", desc, done, total, now - start, left
            )
            last_report = now


@contextmanager
def heartbeat(desc: str, every_s: float | None = LOG_EVERY_S) -> Iterator[None]:
    """Say that a step started and how long it took; for a step with no loop of ours to count
    (calibration runs inside vae_common), also that it is still running every `every_s` s.
    `every_s=None` for steps whose loops report through `track`."""
    logger.info("%s ...", desc)
    start = time.perf_counter()
    finished = threading.Event()

    def beat(interval: float) -> None:
        while not finished.wait(interval):
            logger.info("%s: still running, %.0f s so far", desc, time.perf_counter() - start)

    beater = None
    if every_s is not None:
        beater = threading.Thread(target=beat, args=(every_s,), name="heartbeat", daemon=True)
        beater.start()
    try:
        yield
    finally:
        finished.set()
        if beater is not None:
            beater.join()
    logger.info("%s: done in %.1f s", desc, time.perf_counter() - start)
