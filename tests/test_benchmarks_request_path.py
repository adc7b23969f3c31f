"""benchmarks.request_path: the service app and the bare app, driven in-process.

No speed is asserted: the test checks that both apps answer every request of each case and
that the service's batcher computed each job once, then replayed it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from benchmarks import request_path
from benchmarks.serve_load.payloads import synthetic_digits


def test_the_table_has_a_figure_per_case_and_app(
    tiny_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(request_path.measure(tiny_model_path, synthetic_digits(64), requests=5, rounds=2))
    out = capsys.readouterr().out
    for scenario in request_path.SCENARIO_NAMES:
        row = next(line for line in out.splitlines() if line.startswith(f"| {scenario} |"))
        service_us, bare_us, _ = (
            float(cell) for cell in re.findall(r"[-+]?\d+(?:\.\d+)?", row)[-3:]
        )
        assert service_us > 0 and bare_us > 0


def test_the_service_computes_each_job_once_and_replays_it(tiny_model_path: Path) -> None:
    payload = request_path.payloads(synthetic_digits(64), latent_dim=0)["anomaly-1"]

    async def scenario() -> int:
        async with request_path.served(tiny_model_path) as app:
            lanes = app.state.services.batcher
            assert isinstance(lanes, request_path.ReplayingLanes)
            computed = 0
            submit = lanes.cheap.submit

            async def counted(*args: object) -> object:
                nonlocal computed
                computed += 1
                return await submit(*args)  # type: ignore[arg-type]

            lanes.cheap.submit = counted  # type: ignore[method-assign]
            for _ in range(3):
                assert (
                    await request_path.call(app, request_path.http_scope(payload), payload.body)
                    == 200
                )
            return computed

    assert asyncio.run(scenario()) == 1
