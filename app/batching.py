"""Dynamic batching, as TorchServe and Triton do it: requests that arrive close together
share one forward pass.

Each request submits (n, 28, 28) pixels (a numpy array) under a key naming the computation (e.g.
("score", "neg_elbo", 16)). A single collector task takes the oldest waiting request, waits
up to `max_delay` for more with the same key (until `max_size` images), runs the batch on
the one inference thread and hands every request its own rows of the result. The model sees
nothing but the concatenated rows, and every computation is per image, so batching never
changes a result. A bounded queue turns overload into 503s instead of unbounded latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger("app.batching")

# The worker's outputs: tensors or numpy arrays with one row per image, which the batcher
# slices back into each request's rows.
BatchOutputs = tuple[Any, ...]
# The worker gets the concatenated pixels, (N, 28, 28): tensors are made on its thread, once
# per batch, so the event loop runs no torch op.
BatchFn = Callable[[Hashable, np.ndarray], BatchOutputs]


class QueueFullError(RuntimeError):
    """Too many images are already waiting; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    pass


@dataclass
class _Request:
    key: Hashable
    images: np.ndarray  # (n, 28, 28)
    future: asyncio.Future[BatchOutputs]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Observed by the metrics module after each batch."""

    on_batch: Callable[[int, int, float], None] | None = None  # (requests, images, seconds)


class DynamicBatcher:
    def __init__(
        self,
        run_batch: BatchFn,
        executor: ThreadPoolExecutor,
        max_size: int,
        max_delay_s: float,
        max_queued_images: int,
        stats: BatchStats | None = None,
        max_running: int = 1,
    ) -> None:
        """`max_running` batches may run at once, one per executor thread (Triton's model
        instance count); the next batch is gathered as soon as one of them is free."""
        self._run_batch = run_batch
        self._executor = executor
        self._max_size = max_size
        self._max_delay_s = max_delay_s
        self._max_queued_images = max_queued_images
        self._stats = stats or BatchStats()
        self._waiting: deque[_Request] = deque()
        self._queued_images = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._max_running = max_running
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect_forever(), name="dynamic-batcher")

    async def stop(self) -> None:
        tasks = [*self._running, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        while self._waiting:
            request = self._waiting.popleft()
            if not request.future.done():
                request.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._queued_images = 0

    async def submit(self, key: Hashable, images: np.ndarray) -> BatchOutputs:
        """Queue `images` for `key`; returns this request's rows of every output."""
        if self._task is None:
            raise BatcherClosedError("the model is not serving yet")
        count = len(images)
        if self._queued_images + count > self._max_queued_images:
            raise QueueFullError(
                f"{self._queued_images} images are already waiting for the model "
                f"(limit {self._max_queued_images})"
            )
        future: asyncio.Future[BatchOutputs] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(key, images, future))
        self._queued_images += count
        self._arrived.set()
        return await future

    async def _collect_forever(self) -> None:
        free = asyncio.Semaphore(self._max_running)
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            await free.acquire()  # requests keep queueing while every instance is busy
            batch = await self._gather_batch()
            if not batch:
                free.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: free.release())

    async def _gather_batch(self) -> list[_Request]:
        """The oldest request plus same-key requests until full or the delay has passed."""
        first = self._waiting[0]
        deadline = first.enqueued + self._max_delay_s
        while self._images_for(first.key) < self._max_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                break
        batch: list[_Request] = []
        images = 0
        for request in list(self._waiting):
            if request.key != first.key:
                continue
            if batch and images + len(request.images) > self._max_size:
                break
            batch.append(request)
            images += len(request.images)
            self._waiting.remove(request)
        self._queued_images -= images
        # Requests whose caller went away are dropped rather than computed.
        return [request for request in batch if not request.future.done()]

    def _images_for(self, key: Hashable) -> int:
        return sum(len(request.images) for request in self._waiting if request.key == key)

    async def _run(self, batch: list[_Request]) -> None:
        images = np.concatenate([request.images for request in batch])
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._run_batch, batch[0].key, images
            )
        except Exception as exc:  # deliver the failure to the callers, keep serving
            logger.exception("batch of %d images failed", len(images))
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        if self._stats.on_batch is not None:
            self._stats.on_batch(len(batch), len(images), time.perf_counter() - started)
        offset = 0
        for request in batch:
            rows = slice(offset, offset + len(request.images))
            offset += len(request.images)
            if not request.future.done():
                request.future.set_result(tuple(output[rows] for output in outputs))
