"""Dynamic batching, as TorchServe and Triton do it: requests that arrive close together
share one forward pass.

Each request submits its input rows (an (n, ...) numpy array) under a job (app.jobs). A
single collector task takes the oldest waiting request, waits up to `max_delay` for more
with an equal job (until `max_size` rows), runs the job once on the concatenated rows on an
inference thread and hands every request its own rows of the result. As Triton's preferred
batch size does, a batch also starts from `submit` itself as soon as `preferred_size` rows
of one job wait and a model instance is free (see DynamicBatcher.submit). Every
computation is per row, so batching never changes a result. A bounded queue turns overload
into 503s instead of unbounded latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from app.engine import Engine, EngineHolder
    from app.jobs import Job, Outputs

logger = logging.getLogger("app.batching")


class QueueFullError(RuntimeError):
    """Too many images are already waiting; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    pass


class Served(NamedTuple):
    """One request's rows of every output, and the engine that computed them."""

    outputs: Outputs
    engine: Engine


@dataclass
class _Request:
    job: Job
    inputs: np.ndarray  # (n, ...)
    future: asyncio.Future[Served]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Observed by the metrics module after each batch."""

    on_batch: Callable[[int, int, float], None] | None = None  # (requests, images, seconds)


class DynamicBatcher:
    def __init__(
        self,
        engines: EngineHolder,
        executor: ThreadPoolExecutor,
        max_size: int,
        max_delay_s: float,
        max_queued_images: int,
        stats: BatchStats | None = None,
        max_running: int = 1,
        preferred_size: int = 0,
        busy_delay_s: float = 0.0,
    ) -> None:
        """`max_running` batches may run at once, one per executor thread (Triton's model
        instance count); the next batch is gathered as soon as one of them is free.
        `preferred_size` (0: off) rows of one job start a batch without waiting for the
        collector; while another batch runs, the next one waits up to `busy_delay_s` (rather
        than `max_delay_s`) to gather them."""
        self._engines = engines
        self._executor = executor
        self._max_size = max_size
        self._max_delay_s = max_delay_s
        self._max_queued_images = max_queued_images
        self._stats = stats or BatchStats()
        self._waiting: deque[_Request] = deque()
        self._rows_by_job: Counter[Job] = Counter()  # rows waiting, per job
        # Set when a request arrives or a batch finishes: what the collector waits for.
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._max_running = max_running
        self._preferred_size = preferred_size
        self._busy_delay_s = max(busy_delay_s, max_delay_s)
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_images(self) -> int:
        return sum(self._rows_by_job.values())  # a handful of distinct jobs at most

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
        self._rows_by_job.clear()

    async def submit(self, job: Job, inputs: np.ndarray) -> Served:
        """Queue `inputs` for `job`; returns this request's rows of every output."""
        if self._task is None:
            raise BatcherClosedError("the model is not serving yet")
        count = len(inputs)
        queued = self.queued_images
        if queued + count > self._max_queued_images:
            raise QueueFullError(
                f"{queued} images are already waiting for the model "
                f"(limit {self._max_queued_images})"
            )
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(job, inputs, future))
        self._rows_by_job[job] += count
        # Closed-loop clients fall into lockstep: a batch's replies come back together, the
        # next requests arrive together, and the event loop parses all of them in one turn
        # before the collector runs, so they made one batch and the model idled while they
        # were parsed (32 connections, one PNG each: batches of 32, no batch running 40% of
        # the time, half the machine idle). Started here, the first rows are computed while
        # the loop parses the rest.
        if (
            self._preferred_size
            and job.shares_batches
            and len(self._running) < self._max_running
            and self._rows_by_job[job] >= self._preferred_size
        ):
            self._start(self._take(job))
        self._changed.set()
        return await future

    async def _collect_forever(self) -> None:
        while True:
            # With every instance busy, requests keep queueing until one is free.
            if len(self._running) >= self._max_running or not self._waiting:
                self._changed.clear()
                await self._changed.wait()
            elif batch := await self._gather_batch():
                self._start(batch)

    def _start(self, batch: list[_Request]) -> None:
        inputs = np.concatenate([request.inputs for request in batch])
        started = time.perf_counter()
        # Handed to the thread now, not when a task first runs: submit starts batches in
        # the middle of a burst of requests, which the event loop finishes first.
        try:
            computing = asyncio.get_running_loop().run_in_executor(
                self._executor, self._execute, batch[0].job, inputs
            )
        except RuntimeError as exc:  # the executor has shut down: fail these, not the caller
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        task = asyncio.create_task(self._deliver(batch, len(inputs), started, computing))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._changed.set()

    async def _gather_batch(self) -> list[_Request]:
        """The oldest request plus equal-job requests until full or the delay has passed;
        none when submit has started a batch with that request meanwhile, or when every
        model instance is busy by then (the collector waits for one and gathers again)."""
        first = self._waiting[0]
        if not first.job.shares_batches:
            self._waiting.popleft()
            self._dequeued(first.job, len(first.inputs))
            return [] if first.future.done() else [first]
        while (rows := self._rows_by_job[first.job]) < self._max_size:
            # While another batch runs there is less hurry: the next one waits for
            # preferred_size rows, for the model to fall idle or for busy_delay. Batches
            # started every max_delay instead averaged 10.7 rows against 16 and cost 1.2x
            # the CPU per image (32 one-PNG connections, 2 model instances).
            busy = bool(self._preferred_size and self._running)
            if busy and rows >= self._preferred_size:
                break
            delay = self._busy_delay_s if busy else self._max_delay_s
            remaining = first.enqueued + delay - time.perf_counter()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except TimeoutError:
                break
            if not self._waiting or self._waiting[0] is not first:
                return []
        if len(self._running) >= self._max_running:
            return []
        return self._take(first.job)

    def _take(self, job: Job) -> list[_Request]:
        """The oldest waiting requests of `job`, up to max_size rows, out of the queue."""
        batch: list[_Request] = []
        rows = 0
        for request in list(self._waiting):
            if request.job != job:
                continue
            if batch and rows + len(request.inputs) > self._max_size:
                break
            batch.append(request)
            rows += len(request.inputs)
            self._waiting.remove(request)
        self._dequeued(job, rows)
        # Requests whose caller went away are dropped rather than computed.
        return [request for request in batch if not request.future.done()]

    def _dequeued(self, job: Job, rows: int) -> None:
        self._rows_by_job[job] -= rows
        if not self._rows_by_job[job]:
            del self._rows_by_job[job]

    def _execute(self, job: Job, inputs: np.ndarray) -> Served:
        """On an inference thread: the engine is read once, so the whole batch uses one."""
        engine = self._engines.current
        return Served(job.run(engine, inputs), engine)

    async def _deliver(
        self,
        batch: list[_Request],
        rows: int,
        started: float,
        computing: asyncio.Future[Served],
    ) -> None:
        try:
            served = await computing
        except Exception as exc:  # deliver the failure to the callers, keep serving
            logger.exception("batch of %d rows failed", rows)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        if self._stats.on_batch is not None:
            self._stats.on_batch(len(batch), rows, time.perf_counter() - started)
        if len(batch) == 1:  # all rows are its own; a solo job's may be any number of rows
            if not batch[0].future.done():
                batch[0].future.set_result(served)
            return
        offset = 0
        for request in batch:
            own = slice(offset, offset + len(request.inputs))
            offset += len(request.inputs)
            if not request.future.done():
                outputs = tuple(output[own] for output in served.outputs)
                request.future.set_result(Served(outputs, served.engine))


# Heavy requests run as chunks of this many images: several heavy requests take turns, and
# shutting down waits for one chunk (64 images at k=1000 on one thread: ~50 s; 8: ~6 s).
HEAVY_CHUNK_ROWS = 8


class Lanes:
    """Two batchers, each on inference threads of its own: heavy jobs (Monte Carlo scores,
    k decoder passes per image; 64 images at k=1000 held the one inference thread for 27 s)
    in one lane, everything else in the other, so a cheap request never waits behind a
    heavy one. On the CPU the heavy lane runs on one intra-op thread (see main.py): the
    other core stays with the cheap lane and the event loop. The heavy batcher's max_size
    must be `chunk_rows`, so that chunks are not gathered back into one batch."""

    def __init__(
        self, cheap: DynamicBatcher, heavy: DynamicBatcher, chunk_rows: int = HEAVY_CHUNK_ROWS
    ) -> None:
        self.cheap = cheap
        self.heavy = heavy
        self.chunk_rows = chunk_rows

    @property
    def queued_images(self) -> int:
        return self.cheap.queued_images + self.heavy.queued_images

    def start(self) -> None:
        self.cheap.start()
        self.heavy.start()

    async def stop(self) -> None:
        await asyncio.gather(self.cheap.stop(), self.heavy.stop())

    async def submit(self, job: Job, inputs: np.ndarray) -> Served:
        if not job.heavy:
            return await self.cheap.submit(job, inputs)
        chunk = self.chunk_rows
        while True:
            parts = await asyncio.gather(
                *(
                    self.heavy.submit(job, inputs[i : i + chunk])
                    for i in range(0, len(inputs), chunk)
                )
            )
            engine = parts[0].engine
            if all(part.engine is engine for part in parts):
                columns = zip(*(part.outputs for part in parts), strict=True)
                return Served(tuple(np.concatenate(column) for column in columns), engine)
            # A reload took effect between chunks: a reply comes whole from one model.
            logger.info("model changed during a heavy request: computing it again")
