"""The load benchmark's own parts: its payloads, wrk's summary, /proc accounting, the launcher.

No speed is asserted here: the benchmark prints figures, these tests check it reads them right.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from benchmarks.bare_app import create_app as create_bare_app
from benchmarks.serve_load.__main__ import parse_args
from benchmarks.serve_load.payloads import Payload, synthetic_digits
from benchmarks.serve_load.procfs import (
    CLOCK_TICKS_PER_S,
    cpu_seconds,
    process_tree,
    stat_cpu_seconds,
    tree_cpu_seconds,
    wait_until_idle,
)
from benchmarks.serve_load.scenarios import MIXED_WEIGHTS, SCENARIOS, Inputs
from benchmarks.serve_load.servers import Server, running, running_bare_app
from benchmarks.serve_load.wrk import (
    LoadShape,
    Measurement,
    WrkError,
    WrkSummary,
    find_wrk,
    measure,
    parse_summary,
    write_requests,
)
from tests.early_start import early_start

DIGITS = synthetic_digits(8)
INPUTS = Inputs(DIGITS, latent_dim=4)  # the tiny checkpoint's (tests/conftest.py)


def first_payloads() -> list[tuple[str, Payload]]:
    return [(name, scenario.build(INPUTS)[0]) for name, scenario in SCENARIOS.items()]


def post(client: TestClient, payload: Payload) -> int:
    response = client.request(
        payload.method,
        payload.path,
        content=payload.body,
        headers={"content-type": payload.content_type},
    )
    return response.status_code


def test_every_scenario_is_accepted_by_the_service(make_app: Callable[..., FastAPI]) -> None:
    # anomaly-256 needs VAE_MAX_BATCH=256, as benchmarks/gpu.sh sets it
    with TestClient(make_app(max_batch=256)) as client:
        for name, payload in first_payloads():
            assert post(client, payload) == 200, name


def test_every_scenario_is_accepted_by_the_bare_app() -> None:
    with TestClient(create_bare_app()) as bare:
        for name, payload in first_payloads():
            assert post(bare, payload) == 200, name


def test_the_soak_mixes_only_known_scenarios() -> None:
    assert set(MIXED_WEIGHTS) <= set(SCENARIOS)


def test_scenario_payloads_count_the_images_they_carry() -> None:
    assert SCENARIOS["anomaly-64"].build(INPUTS)[0].images == 64
    assert SCENARIOS["anomaly-64"].build(INPUTS)[0].body.count(b"image/png") == 64
    assert SCENARIOS["reconstruct-1"].build(INPUTS)[0].images == 1


def test_http_request_carries_the_body_and_its_length() -> None:
    payload = Payload("POST", "/sample", b'{"n": 4}', "application/json", 4)
    raw = payload.http_request("127.0.0.1")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /sample HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 8" in head
    assert body == b'{"n": 4}'


def test_parse_summary_reads_the_replay_script_line_in_milliseconds() -> None:
    stdout = (
        "Running 5s test @ http://127.0.0.1:1234\n"
        'serve_load-wrk {"duration_us": 5000000, "requests": 1000, "window_requests": 800, '
        '"bytes": 9, '
        '"connect_errors": 1, "read_errors": 2, "write_errors": 3, "status_errors": 10, '
        '"timeouts": 4, "p50_us": 1500, "p90_us": 2500, "p99_us": 9000, "max_us": 12000, '
        '"mean_us": 1700.0}\n'
    )
    summary = parse_summary(stdout)
    assert (summary.responses, summary.window_responses) == (1000, 800)
    assert (summary.status_errors, summary.socket_errors) == (10, 10)
    assert (summary.p50_ms, summary.p99_ms) == (1.5, 9.0)


def test_parse_summary_of_a_run_without_replies_has_no_latency() -> None:
    line = (
        'serve_load-wrk {"duration_us": 5000000, "requests": 0, "window_requests": 0, '
        '"bytes": 0, "connect_errors": 0, '
        '"read_errors": 0, "write_errors": 0, "status_errors": 0, "timeouts": 0, "p50_us": 0, '
        '"p90_us": 0, "p99_us": 0, "max_us": 0, "mean_us": 0.0}'
    )
    summary = parse_summary(line)
    assert summary.responses == 0
    assert math.isnan(summary.p50_ms) and math.isnan(summary.p99_ms)


def test_parse_summary_without_the_line_says_so() -> None:
    with pytest.raises(WrkError, match="serve_load-wrk"):
        parse_summary("Running 5s test\n")


def test_measurement_counts_only_successes_as_throughput_but_all_replies_for_cpu() -> None:
    summary = WrkSummary(1200, 1000, 120, 0, 1.0, 2.0, 3.0, 4.0)  # 10% of replies failed
    run = Measurement("anomaly-64", "service", 64, 1.0, 2.0, summary, server_cpu_s=1.5)
    assert run.requests_per_s == 450.0
    assert run.images_per_s == 450.0 * 64
    assert run.cpu_ms_per_request == 1.5
    assert run.server_cores == 0.75


def test_stat_cpu_seconds_survives_a_command_name_with_parentheses_and_spaces() -> None:
    fields = ["S", *["0"] * 10, str(3 * CLOCK_TICKS_PER_S), str(CLOCK_TICKS_PER_S), "0", "0"]
    assert stat_cpu_seconds("42 (odd) name (x)) " + " ".join(fields)) == 4.0


def test_process_tree_counts_a_child_and_its_cpu() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in process_tree(os.getpid())
        assert cpu_seconds(child.pid) >= 0.25
        assert tree_cpu_seconds(os.getpid()) >= cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()


def test_wait_until_idle_waits_for_a_busy_child_to_finish() -> None:
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(child.pid) < 0.15 and time.monotonic() < deadline:  # it is burning
            time.sleep(0.01)
        wait_until_idle(child.pid, timeout_s=60)
        assert cpu_seconds(child.pid) >= 0.55
    finally:
        child.kill()
        child.wait()


def test_variants_share_the_common_env_and_need_distinct_names() -> None:
    args = parse_args(["--env", "A=1", "--variant", "two:VAE_WORKERS=2,B=3", "--variant", "one:"])
    assert [(v.name, v.env) for v in args.variants] == [
        ("two", {"A": "1", "VAE_WORKERS": "2", "B": "3"}),
        ("one", {"A": "1"}),
    ]
    with pytest.raises(SystemExit):
        parse_args(["--variant", "x:A=1", "--variant", "x:A=2"])


def test_missing_wrk_names_the_package_to_install() -> None:
    with pytest.raises(WrkError, match="apt-get install wrk"):
        find_wrk("wrk-that-is-not-installed")


def test_launcher_reports_a_server_that_exits_before_it_is_ready(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"(?s)exited with 3.*no model here"),
        running("doomed", argv, {}, port=9, log_path=tmp_path / "log"),
    ):
        pass


@early_start()
def bare_app(request: pytest.FixtureRequest) -> AbstractContextManager[Server]:
    return running_bare_app(wait=False)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_wrk_replays_the_pool_against_the_bare_app(bare_app: Server, tmp_path: Path) -> None:
    files = write_requests(SCENARIOS["anomaly-1"].build(INPUTS), tmp_path)
    # Start, warm-up, window and tail add up to under 2 s: wrk's run is whole seconds.
    run = measure(find_wrk(), bare_app, "anomaly-1", 1, files, LoadShape(1, 2, 0.4, 0.6, 10))
    assert 0 < run.wrk.window_responses < run.wrk.responses
    assert run.wrk.errors == 0
    assert run.server_cpu_s > 0
    assert 0 < run.wrk.p50_ms <= run.wrk.p99_ms <= run.wrk.max_ms
