"""Property-based fuzzing of the whole OpenAPI schema (schemathesis), in-process over ASGI:
any 5xx, or a reply the schema does not describe (status, media type, headers, body), fails.
Deterministic (derandomized Hypothesis) and bounded, so the suite stays fast and stable.

schemathesis's own pytest plugin does not run under this pytest (it reads a private
attribute pytest 9 dropped), so each operation's strategy is driven by Hypothesis here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.openapi import from_asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.config import Settings
from app.main import create_app

# Derandomized: the same 20 cases per operation and mode on every run, at most 320 in all.
# Generating a case costs 20-40 ms here (schemathesis drawing multipart and JSON bodies), far
# more than the call: 50 per operation took 18 s of the suite's 2 minutes, 20 take about 9.
EXAMPLES_PER_OPERATION = 20
OPERATIONS = [
    "POST /anomaly-score",
    "POST /reconstruct",
    "POST /sample",
    "POST /encode",
    "POST /decode",
    "POST /interpolate",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /model",
]


# Schema-valid bodies these take that the service must still refuse, and no static schema
# can say so: bytes that are no image (format: binary), base64 of them, k x images over
# VAE_MAX_REQUEST_DECODES, latent vectors whose length is the served model's latent_dim.
# Every other check stays on for them, negative data included.
UNDESCRIBABLE_BODIES = {
    "POST /anomaly-score",
    "POST /reconstruct",
    "POST /encode",
    "POST /decode",
    "POST /interpolate",
}


@pytest.fixture(scope="module")
def api_schema(tiny_model_path: Path) -> schemathesis.BaseSchema:
    app = create_app(Settings(model_path=tiny_model_path, device="cpu"))
    return from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_the_schema_has(api_schema: schemathesis.BaseSchema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


# Negative data needs something to break: the GET operations take no input at all.
RUNS = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")
]


@pytest.mark.parametrize(("label", "mode"), RUNS)
def test_operation_answers_as_its_schema_says(
    api_schema: schemathesis.BaseSchema, label: str, mode: GenerationMode
) -> None:
    method, path = label.split(" ")
    operation = api_schema[path][method]
    excluded = [positive_data_acceptance] if label in UNDESCRIBABLE_BODIES else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()
