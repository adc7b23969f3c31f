"""DynamicBatcher on its own: fake jobs on a fake engine, no model and no HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.batching import HEAVY_CHUNK_ROWS, DynamicBatcher, Lanes, QueueFullError, Served


@dataclass
class FakeEngine:
    """Stands in for app.engine.Engine: records every batch a job ran on it."""

    name: str
    batches: list[tuple[Any, list[float]]]
    gate: threading.Event | None = None  # when given, batches wait until it is set
    started: int = 0  # batches that have entered run()


@dataclass
class FakeHolder:
    current: FakeEngine


@dataclass(frozen=True)
class Tag:
    """A job that returns its input rows times ten, and the engine's name per row."""

    label: str
    shares_batches: ClassVar[bool] = True
    heavy: ClassVar[bool] = False

    def run(self, engine: FakeEngine, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        engine.started += 1
        if engine.gate is not None:
            assert engine.gate.wait(timeout=30)
        engine.batches.append((self, inputs[:, 0].tolist()))
        if self.label == "broken":
            raise RuntimeError("the model fell over")
        return inputs * 10, np.array([engine.name] * len(inputs))


@dataclass(frozen=True)
class Solo(Tag):
    shares_batches: ClassVar[bool] = False


def rows(*values: float) -> np.ndarray:
    """(n, 1) float32 input rows."""
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def run_batcher(
    scenario: Callable[[DynamicBatcher, FakeHolder], Coroutine[Any, Any, None]],
    engine: FakeEngine,
    **limits: Any,
) -> None:
    """Start a batcher on one inference thread, run `scenario`, stop it."""
    settings = {"max_size": 64, "max_delay_s": 0.0, "max_queued_images": 100, **limits}

    async def main() -> None:
        holder = FakeHolder(engine)
        with ThreadPoolExecutor(max_workers=settings.get("max_running", 1)) as executor:
            batcher = DynamicBatcher(holder, executor, **settings)
            batcher.start()
            try:
                await scenario(batcher, holder)
            finally:
                if engine.gate is not None:
                    engine.gate.set()
                await batcher.stop()

    asyncio.run(main())


def submitted(batcher: DynamicBatcher, job: Any, inputs: np.ndarray) -> asyncio.Task[Served]:
    return asyncio.ensure_future(batcher.submit(job, inputs))


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until `condition` holds (the batcher works in the background)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_equal_jobs_share_a_batch_and_each_caller_gets_its_own_rows() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        a1 = submitted(batcher, Tag("a"), rows(1, 2))
        b1 = submitted(batcher, Tag("b"), rows(3))
        a2 = submitted(batcher, Tag("a"), rows(4))
        (a1_rows, _), (b1_rows, _), (a2_rows, _) = [(await task).outputs for task in (a1, b1, a2)]
        np.testing.assert_array_equal(a1_rows, rows(10, 20))
        np.testing.assert_array_equal(b1_rows, rows(30))
        np.testing.assert_array_equal(a2_rows, rows(40))

    run_batcher(scenario, engine)
    assert engine.batches == [(Tag("a"), [1.0, 2.0, 4.0]), (Tag("b"), [3.0])]


def test_a_batch_stops_at_max_size() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        tasks = [submitted(batcher, Tag("a"), rows(i, i)) for i in range(3)]
        await asyncio.gather(*tasks)

    run_batcher(scenario, engine, max_size=4)
    assert [values for _, values in engine.batches] == [[0.0, 0.0, 1.0, 1.0], [2.0, 2.0]]


def test_the_batcher_waits_up_to_the_delay_for_more_requests() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        first = submitted(batcher, Tag("a"), rows(1))
        await asyncio.sleep(0.05)  # well inside the delay; the batch fills up with the next
        second = submitted(batcher, Tag("a"), rows(2))
        await asyncio.gather(first, second)

    run_batcher(scenario, engine, max_size=2, max_delay_s=60.0)
    assert engine.batches == [(Tag("a"), [1.0, 2.0])]


def test_without_a_delay_a_later_request_gets_a_batch_of_its_own() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        await submitted(batcher, Tag("a"), rows(1))
        await submitted(batcher, Tag("a"), rows(2))

    run_batcher(scenario, engine, max_size=2, max_delay_s=0.0)
    assert engine.batches == [(Tag("a"), [1.0]), (Tag("a"), [2.0])]


def test_preferred_rows_start_a_batch_from_submit_without_waiting_for_the_delay() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        # Submitted in one event-loop turn, as a burst of parsed requests is: the collector
        # does not run in between, so only submit can start the batch before the delay.
        burst = [submitted(batcher, Tag("a"), rows(i)) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*burst), timeout=10)

    run_batcher(scenario, engine, max_delay_s=60.0, preferred_size=3)
    assert engine.batches == [(Tag("a"), [0.0, 1.0, 2.0])]


async def one_running_one_waiting(
    batcher: DynamicBatcher, engine: FakeEngine
) -> tuple[asyncio.Task[Served], asyncio.Task[Served]]:
    """Row 1 in a batch that the engine's gate holds on one instance, then row 2 submitted."""
    running = submitted(batcher, Tag("a"), rows(1))
    await until(lambda: engine.started == 1)
    return running, submitted(batcher, Tag("a"), rows(2))


def test_while_a_batch_runs_the_next_waits_for_preferred_rows() -> None:
    gate = threading.Event()
    engine = FakeEngine("e1", [], gate=gate)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        running, waiting = await one_running_one_waiting(batcher, engine)
        await asyncio.sleep(0.05)  # an instance is free and the delay (0) long past
        assert engine.started == 1 and batcher.queued_images == 1
        more = submitted(batcher, Tag("a"), rows(3, 4))  # 3 rows wait: preferred
        await until(lambda: engine.started == 2)
        gate.set()
        await asyncio.gather(running, waiting, more)

    run_batcher(scenario, engine, max_running=2, preferred_size=3, busy_delay_s=60.0)
    assert sorted(values for _, values in engine.batches) == [[1.0], [2.0, 3.0, 4.0]]


def test_rows_short_of_preferred_start_once_the_model_falls_idle() -> None:
    gate = threading.Event()
    engine = FakeEngine("e1", [], gate=gate)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        running, waiting = await one_running_one_waiting(batcher, engine)
        await asyncio.sleep(0.05)
        assert engine.started == 1
        gate.set()
        await asyncio.wait_for(asyncio.gather(running, waiting), timeout=10)

    run_batcher(scenario, engine, max_running=2, preferred_size=8, busy_delay_s=60.0)
    assert engine.batches == [(Tag("a"), [1.0]), (Tag("a"), [2.0])]


def test_rows_short_of_preferred_start_on_a_free_instance_after_the_busy_delay() -> None:
    gate = threading.Event()
    engine = FakeEngine("e1", [], gate=gate)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        running, waiting = await one_running_one_waiting(batcher, engine)
        await until(lambda: engine.started == 2)  # the first batch is still running
        gate.set()
        await asyncio.gather(running, waiting)

    run_batcher(scenario, engine, max_running=2, preferred_size=8, busy_delay_s=0.05)
    assert sorted(values for _, values in engine.batches) == [[1.0], [2.0]]


def test_a_batch_that_cannot_reach_a_thread_fails_all_its_callers() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        batcher._executor.shutdown()  # as at the end of the lifespan
        burst = [submitted(batcher, Tag("a"), rows(i)) for i in range(2)]
        for task in burst:
            with pytest.raises(RuntimeError, match="shutdown"):
                await asyncio.wait_for(task, timeout=10)

    run_batcher(scenario, engine, max_delay_s=60.0, preferred_size=2)
    assert engine.batches == []


@pytest.mark.parametrize("preferred_size", [0, 1, 4, 16])
def test_every_caller_gets_its_own_rows_under_random_traffic(preferred_size: int) -> None:
    """Bursts and trickles of three jobs, some callers leaving early: every request that
    stays is answered with its own rows, and nothing is left queued."""
    engine = FakeEngine("e1", [])
    rng = np.random.default_rng(7)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        calls: list[tuple[asyncio.Task[Served], np.ndarray]] = []
        for i in range(300):
            inputs = rows(*[i + k / 10 for k in range(int(rng.integers(1, 6)))])
            job = Tag("abc"[int(rng.integers(0, 3))])
            calls.append((submitted(batcher, job, inputs), inputs))
            if rng.random() < 0.3:  # otherwise the next request joins this burst
                await asyncio.sleep(float(rng.uniform(0, 0.002)))
            if rng.random() < 0.05:
                calls[-1][0].cancel()
        for task, inputs in calls:
            if task.cancelled():
                continue
            served = await asyncio.wait_for(task, timeout=10)
            np.testing.assert_array_equal(served.outputs[0], inputs * 10)
        assert batcher.queued_images == 0

    run_batcher(
        scenario,
        engine,
        max_size=12,
        max_delay_s=0.001,
        max_queued_images=10_000,
        max_running=2,
        preferred_size=preferred_size,
        busy_delay_s=0.005,
    )
    assert all(len(values) <= 12 for _, values in engine.batches)


def test_a_full_queue_refuses_more_rows_until_it_drains() -> None:
    gate = threading.Event()
    engine = FakeEngine("e1", [], gate=gate)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        running = submitted(batcher, Tag("a"), rows(1))  # taken into the model, which waits
        await until(lambda: engine.started == 1)
        waiting = submitted(batcher, Tag("b"), rows(2, 3, 4))
        await until(lambda: batcher.queued_images == 3)
        with pytest.raises(QueueFullError, match="3 images are already waiting"):
            await batcher.submit(Tag("b"), rows(5))
        gate.set()
        await asyncio.gather(running, waiting)
        assert batcher.queued_images == 0
        await batcher.submit(Tag("b"), rows(5))

    run_batcher(scenario, engine, max_queued_images=3)
    assert [values for _, values in engine.batches] == [[1.0], [2.0, 3.0, 4.0], [5.0]]


def test_a_caller_that_went_away_is_not_computed() -> None:
    gate = threading.Event()
    engine = FakeEngine("e1", [], gate=gate)

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        running = submitted(batcher, Tag("a"), rows(1))
        await until(lambda: engine.started == 1)
        gone = submitted(batcher, Tag("b"), rows(2))
        stays = submitted(batcher, Tag("c"), rows(3))
        await until(lambda: batcher.queued_images == 2)
        gone.cancel()  # e.g. the client disconnected
        gate.set()
        await asyncio.gather(running, stays)
        assert gone.cancelled()
        await until(lambda: batcher.queued_images == 0)

    run_batcher(scenario, engine)
    assert [job.label for job, _ in engine.batches] == ["a", "c"]


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_serving() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        broken = [submitted(batcher, Tag("broken"), rows(i)) for i in range(2)]
        for task in broken:
            with pytest.raises(RuntimeError, match="the model fell over"):
                await task
        served = await batcher.submit(Tag("a"), rows(7))
        np.testing.assert_array_equal(served.outputs[0], rows(70))

    run_batcher(scenario, engine)
    *failed, last = [job.label for job, _ in engine.batches]
    assert set(failed) == {"broken"} and last == "a"


def test_solo_jobs_never_share_a_batch_even_when_equal() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        first, second = (submitted(batcher, Solo("s"), rows(1, 2)) for _ in range(2))
        await asyncio.gather(first, second)

    run_batcher(scenario, engine, max_delay_s=5.0)
    assert engine.batches == [(Solo("s"), [1.0, 2.0]), (Solo("s"), [1.0, 2.0])]


@dataclass(frozen=True)
class Between:
    """A solo job whose outputs are not row for row: `steps` values from its two inputs."""

    steps: int
    shares_batches: ClassVar[bool] = False

    def run(self, engine: FakeEngine, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        start, end = inputs[:, 0]
        return (np.linspace(start, end, self.steps),)


def test_a_solo_job_gets_all_its_outputs_whatever_their_row_count() -> None:
    engine = FakeEngine("e1", [])

    async def scenario(batcher: DynamicBatcher, _: FakeHolder) -> None:
        served = await batcher.submit(Between(5), rows(0, 1))
        np.testing.assert_allclose(served.outputs[0], [0.0, 0.25, 0.5, 0.75, 1.0])

    run_batcher(scenario, engine)


def test_each_batch_reads_the_engine_once_and_reports_which_it_used() -> None:
    old, new = FakeEngine("old", []), FakeEngine("new", [])

    async def scenario(batcher: DynamicBatcher, holder: FakeHolder) -> None:
        before = await batcher.submit(Tag("a"), rows(1, 2))
        holder.current = new  # a reload, between batches
        after = await batcher.submit(Tag("a"), rows(3))
        assert before.engine is old and before.outputs[1].tolist() == ["old", "old"]
        assert after.engine is new and after.outputs[1].tolist() == ["new"]

    run_batcher(scenario, old)
    assert len(old.batches) == len(new.batches) == 1


# --- /sample goes through the batcher ---------------------------------------------------


def test_sample_counts_against_the_queue_limit(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(batch_queue_images=4)) as client:
        refused = client.post("/sample", json={"n": 5, "seed": 1})
        drawn = client.post("/sample", json={"n": 4, "seed": 1})
        metrics = client.get("/metrics").text
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "capacity" in refused.json()["detail"]
    assert drawn.status_code == 200
    assert "vae_batch_images_count 1.0" in metrics  # the four digits were one batch


def test_sample_runs_on_an_inference_thread(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real_execute = DynamicBatcher._execute

    def recording_execute(batcher: DynamicBatcher, job: Any, inputs: np.ndarray) -> Any:
        threads.append(threading.current_thread().name)
        return real_execute(batcher, job, inputs)

    monkeypatch.setattr(DynamicBatcher, "_execute", recording_execute)
    with TestClient(make_app()) as client:
        response = client.post("/sample", json={"n": 3, "seed": 2})
    assert response.status_code == 200
    assert len(threads) == 1 and threads[0].startswith("inference")


@dataclass(frozen=True)
class Heavy(Tag):
    """A Monte Carlo-like job: it runs in the heavy lane, and waits for `gate` if given."""

    heavy: ClassVar[bool] = True
    gate: threading.Event | None = None

    def run(self, engine: FakeEngine, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        engine.started += 1
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        engine.batches.append((self, inputs[:, 0].tolist()))
        return inputs * 10, np.array([engine.name] * len(inputs))


def run_lanes(
    scenario: Callable[[Lanes, FakeHolder], Coroutine[Any, Any, None]], engine: FakeEngine
) -> None:
    """Lanes as main.py builds them: one inference thread each, heavy batches of a chunk."""

    async def main() -> None:
        holder = FakeHolder(engine)
        with ThreadPoolExecutor(1) as cheap_thread, ThreadPoolExecutor(1) as heavy_thread:
            lanes = Lanes(
                cheap=DynamicBatcher(holder, cheap_thread, 64, 0.0, 1000),
                heavy=DynamicBatcher(holder, heavy_thread, HEAVY_CHUNK_ROWS, 0.0, 1000),
            )
            lanes.start()
            try:
                await scenario(lanes, holder)
            finally:
                await lanes.stop()

    asyncio.run(main())


def test_cheap_job_is_served_while_heavy_jobs_hold_their_lane() -> None:
    engine = FakeEngine("e1", [])
    gate = threading.Event()

    async def scenario(lanes: Lanes, _: FakeHolder) -> None:
        job = Heavy("mc", gate)
        heavy = [asyncio.ensure_future(lanes.submit(job, rows(1, 2))) for _ in range(3)]
        await until(lambda: engine.started == 1)  # the heavy lane is busy and has a queue
        cheap = await lanes.submit(Tag("default"), rows(5))
        assert cheap.outputs[0].tolist() == [[50.0]]
        assert not any(task.done() for task in heavy)
        gate.set()
        for task in heavy:
            assert (await task).outputs[0].tolist() == [[10.0], [20.0]]

    run_lanes(scenario, engine)


def test_heavy_request_runs_in_chunks_and_gets_its_rows_in_order() -> None:
    engine = FakeEngine("e1", [])
    values = [float(v) for v in range(2 * HEAVY_CHUNK_ROWS + 3)]

    async def scenario(lanes: Lanes, _: FakeHolder) -> None:
        served = await lanes.submit(Heavy("mc"), rows(*values))
        assert served.outputs[0][:, 0].tolist() == [10 * v for v in values]

    run_lanes(scenario, engine)
    assert [len(batch) for _, batch in engine.batches] == [HEAVY_CHUNK_ROWS] * 2 + [3]


def test_heavy_request_spanning_a_reload_is_answered_whole_by_the_new_engine() -> None:
    first = FakeEngine("old", [])
    gate = threading.Event()

    async def scenario(lanes: Lanes, holder: FakeHolder) -> None:
        task = asyncio.ensure_future(lanes.submit(Heavy("mc", gate), rows(*range(12))))
        await until(lambda: first.started == 1)  # the first chunk runs on the old engine
        holder.current = FakeEngine("new", [])
        gate.set()
        served = await task
        assert set(served.outputs[1].tolist()) == {"new"}
        assert served.engine is holder.current

    run_lanes(scenario, first)
