"""What the benchmark sends: one entry per scenario, each a pool of pre-built requests.

To add a scenario, add one `Scenario` to `SCENARIOS`: a name, a line saying what it sends,
and a function from the `Inputs` (digit PNGs, the model's latent size) to a pool of
`Payload`s; `under_load` puts it
in the wrk table (against the bare app, which must accept the same body: see
benchmarks/bare_app.py), `one_client` in the one-client latency table, `default` in a run
without `--scenarios`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.serve_load.payloads import Payload, post_json, upload

POOL_SIZE = 64  # distinct requests per scenario, replayed in turn


@dataclass(frozen=True)
class Inputs:
    digits: Sequence[bytes]  # PNGs
    latent_dim: int  # of the model served: /decode takes vectors of exactly this size


PoolBuilder = Callable[[Inputs], list[Payload]]  # -> request pool


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: PoolBuilder
    under_load: bool = True
    one_client: bool = False
    default: bool = True
    # Replies must be flowing before the counted window opens: with 32 connections of 64
    # images each, the first replies take seconds on a crowded 2-core machine.
    min_warmup_s: float = 0.0


def uploads(path: str, per_request: int) -> PoolBuilder:
    """`per_request` digit PNGs in multipart field `files` (/anomaly-score, /encode)."""

    def build(inputs: Inputs) -> list[Payload]:
        digits = inputs.digits
        pool = []
        for index in range(POOL_SIZE):
            start = index * per_request
            files = [digits[(start + i) % len(digits)] for i in range(per_request)]
            pool.append(upload(path, "files", files))
        return pool

    return build


def anomaly_uploads(per_request: int, query: str = "") -> PoolBuilder:
    return uploads(f"/anomaly-score{query}", per_request)


def reconstruct_upload(query: str = "") -> PoolBuilder:
    def build(inputs: Inputs) -> list[Payload]:
        digits = inputs.digits
        return [
            upload(f"/reconstruct{query}", "file", [digits[index % len(digits)]])
            for index in range(POOL_SIZE)
        ]

    return build


def sample_requests(n: int) -> PoolBuilder:
    def build(inputs: Inputs) -> list[Payload]:
        return [post_json("/sample", {"n": n, "seed": seed}, n) for seed in range(POOL_SIZE)]

    return build


def decode_requests(n: int, query: str = "") -> PoolBuilder:
    """n draws from N(0, I) per request, 6 decimals each, as a client would send codes."""

    def build(inputs: Inputs) -> list[Payload]:
        pool = []
        for seed in range(POOL_SIZE):
            rng = random.Random(seed)
            latents = [
                [round(rng.gauss(0.0, 1.0), 6) for _ in range(inputs.latent_dim)] for _ in range(n)
            ]
            pool.append(post_json(f"/decode{query}", {"latents": latents}, n))
        return pool

    return build


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in [
        Scenario(
            "anomaly-1",
            "POST /anomaly-score, one PNG (multipart `files`), default preprocessing",
            anomaly_uploads(1),
            one_client=True,
        ),
        Scenario(
            "anomaly-1-raw",
            "POST /anomaly-score?preprocess=none, one PNG",
            anomaly_uploads(1, "?preprocess=none"),
        ),
        Scenario(
            "anomaly-64",
            "POST /anomaly-score, 64 PNGs per request, default preprocessing",
            anomaly_uploads(64),
            min_warmup_s=6.0,
        ),
        Scenario(
            "anomaly-64-raw",
            "POST /anomaly-score?preprocess=none, 64 PNGs per request",
            anomaly_uploads(64, "?preprocess=none"),
            min_warmup_s=4.0,
            default=False,
        ),
        Scenario(
            "anomaly-256",
            "POST /anomaly-score, 256 PNGs per request (the service needs VAE_MAX_BATCH=256)",
            anomaly_uploads(256),
            min_warmup_s=6.0,
            default=False,
        ),
        Scenario(
            "reconstruct-1",
            "POST /reconstruct, one PNG (multipart `file`), default preprocessing",
            reconstruct_upload(),
            one_client=True,
        ),
        Scenario(
            "encode-1",
            "POST /encode, one PNG (multipart `files`), default preprocessing",
            uploads("/encode", 1),
        ),
        Scenario(
            "encode-64",
            "POST /encode, 64 PNGs per request, default preprocessing",
            uploads("/encode", 64),
            min_warmup_s=6.0,
        ),
        Scenario(
            "decode-64",
            'POST /decode {"latents": 64 vectors from N(0, I)} -> one PNG grid',
            decode_requests(64),
        ),
        Scenario(
            "decode-64-pixels",
            "POST /decode?format=pixels, 64 vectors -> JSON pixels",
            decode_requests(64, "?format=pixels"),
            default=False,
        ),
        Scenario(
            "sample-64",
            'POST /sample {"n": 64, "seed": ...}',
            sample_requests(64),
            one_client=True,
        ),
        Scenario(
            "sample-16",
            'POST /sample {"n": 16, "seed": ...} (in the mixed soak)',
            sample_requests(16),
            under_load=False,
            default=False,
        ),
    ]
}

# The mixed soak: a share of each scenario's requests, sent to the service only.
MIXED_WEIGHTS = {"anomaly-1": 50, "anomaly-64": 10, "sample-16": 20, "reconstruct-1": 20}


def default_names() -> list[str]:
    return [name for name, scenario in SCENARIOS.items() if scenario.default]
