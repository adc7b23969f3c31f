"""Service settings, read from the environment with the VAE_ prefix (see the README's table)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "model.pt"
ENV_PREFIX = "VAE_"
# What a browser sends in its Origin header: scheme://host[:port], no path, no trailing slash.
# CORSMiddleware compares strings exactly, so "https://app.example/" would never match.
_ORIGIN = re.compile(r"^https?://[^/\s]+$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="ignore")

    model_path: Path = Field(DEFAULT_MODEL_PATH, description="TorchScript checkpoint to serve")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto takes the GPU when there is one"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(
        None, description="when set, every endpoint but /healthz, /readyz, /metrics needs it"
    )
    max_upload_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)"
    )
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="largest decoded image, width x height (422 above)"
    )
    # Counted per channel: decoding costs ~3.5-5 ms of CPU per million values on the 2-core
    # box (PNG, GIF, WEBP, RGBA; JPEG is decoded at 1/8 scale when large), so 40 M keeps one
    # request's decoding near 200 ms: 40 MP greyscale, 13 MP RGB, 10 MP RGBA.
    max_request_pixels: int = Field(
        40_000_000,
        ge=1,
        description="pixel values (width x height x channels) decoded for one request, "
        "all images together (422 above)",
    )
    # A digit is at most ~1:4 (a "1"); 20:1 leaves room for a digit on a strip of paper and
    # refuses shapes such as 1 x 10,000,000 whose 10 M rows cost a second to decode.
    max_image_aspect_ratio: float = Field(
        20.0, ge=1.0, description="longest side / shortest side of an upload (422 above)"
    )
    max_batch: int = Field(64, ge=1, le=4096, description="images per /anomaly-score request")
    max_iwae_k: int = Field(1000, ge=1, le=1000, description="largest k a request may ask for")
    # 4096 = a full batch of 64 at the default k of iwae_nll (64), or 4 images at k=1000:
    # ~1.7 s of model time on 2 cores, against 27 s for 64 images at k=1000.
    max_request_decodes: int = Field(
        4096,
        ge=1,
        description="k x images for Monte Carlo scores in one request (422 above)",
    )
    batch_max_size: int = Field(
        256, ge=1, description="dynamic batching: most images in one forward pass"
    )
    # 1 ms: under 32 clients on 2 cores, 1 ms served 838-862 req/s of one-image scoring,
    # 5 ms 794-803 (serve_load, 3 rounds each): while the model is busy, requests pile up
    # into batches anyway, and a longer wait only adds latency.
    batch_max_delay_ms: float = Field(
        1.0, ge=0.0, le=1000.0, description="dynamic batching: longest wait to fill a batch"
    )
    # 16 with 10 ms: under 32 one-PNG connections on 2 cores (serve_load, 5 rounds,
    # 2026-11-29) 1,056 against 721 req/s with 0 (off), at the same CPU per request (1.44
    # against 1.41 ms) and p99 46 against 62 ms. Preferred 8, 24 and 32 served 830, 921 and
    # 696 req/s against 1,176 with 16 (3 rounds); a 5 ms busy delay made batches of ~14 at
    # 1.4x the CPU per request of 10 ms (docs/performance.md, "Closed-loop clients in lockstep").
    batch_preferred_size: int = Field(
        16,
        ge=0,
        description="dynamic batching: start a batch as soon as this many images wait and a "
        "model instance is free, without waiting for the delay (0: off)",
    )
    batch_busy_delay_ms: float = Field(
        10.0,
        ge=0.0,
        le=1000.0,
        description="dynamic batching: while a batch runs, longest wait for the preferred "
        "size before the next batch starts on a free instance",
    )
    batch_queue_images: int = Field(
        4096, ge=1, description="images waiting for the model before requests get 503"
    )
    # 1: on the shared 2-core box a 2-thread OpenMP team spun while its partner waited for
    # a core: /sample n=64 one client p50 91-135 ms with 2, 11-19 ms with 1; 64-PNG scoring
    # 20.6 vs 24.1 CPU ms/request (serve_load side by side, 2026-11-28, twice).
    torch_threads: int = Field(
        1, ge=0, description="intra-op CPU threads; 0 keeps torch's default (all cores)"
    )
    # 2: with model v2 the model thread is what saturates. On the 2-core box, one worker,
    # 32 connections (serve_load, 2026-11-29, 3 rounds): one PNG 705 against 570 req/s,
    # 64 PNGs 2,099 against 1,280 images/s, CPU per request 1.60 against 1.76 ms.
    model_instances: int = Field(
        2,
        ge=1,
        le=16,
        description="batches the model runs at once, each on one thread of its own",
    )
    # Opt-in: against a calibration made in float32, bf16 moves the default score by a median
    # 0.008 (max 0.18; threshold ~10.5) on the MNIST test digits, flagged share 1.45 -> 1.41%,
    # and Monte Carlo scores by a median 0.02 nats (max 0.29), where float32 replies agree
    # to rounding (docs/performance.md).
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: the model runs in bfloat16 on the CPU (~2x faster per image on CPUs "
        "with AMX/AVX-512 BF16; scores within ~0.3 of fp32)",
    )
    # On: the same float32 results, forward passes 3-20% faster on this CPU (more under bf16;
    # app.execution.CpuExecution.prepare). Off is for CPUs where oneDNN's NHWC kernels turn
    # out slower (benchmarks/cpu_layout.py compares both).
    channels_last: bool = Field(
        True,
        description="CPU: convolution weights in channels_last (NHWC) memory order; same "
        "results, faster batches with oneDNN",
    )
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    threadpool_size: int = Field(
        8, ge=1, le=256, description="threads decoding uploads and encoding PNGs"
    )
    keep_alive_s: int = Field(
        30, ge=1, le=3600, description="how long an idle keep-alive connection stays open"
    )
    limit_concurrency: int | None = Field(
        None,
        ge=1,
        description="requests in progress before more get 503; /healthz, /readyz, /metrics exempt",
    )
    # Kubernetes: terminationGracePeriodSeconds >= preStop + this + app.server's
    # GRACEFUL_SHUTDOWN_S (deploy/kubernetes/base/deployment.yaml).
    drain_seconds: float = Field(
        5.0,
        ge=0.0,
        le=600.0,
        description="after SIGTERM: /readyz answers 503 while requests are served this long",
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="longest wait for a request's headers (408, closed)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="longest time to receive a request's body (408)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    public_docs: bool = Field(
        True,
        description="/docs, /redoc and /openapi.json need no API key (the data endpoints still do)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins a browser app may call the API from (comma-separated or a JSON "
        "list, * for any); empty: no CORS headers",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_means_no_auth(cls, value: object) -> object:
        # `VAE_API_KEY=` (as compose writes an unset variable) must not enable auth with "".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_from_text(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list ({exc.msg} at character {exc.pos})") from None
        return [origin.strip() for origin in text.split(",") if origin.strip()]

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin} is not an origin (scheme://host[:port], no path, no trailing "
                    "slash, e.g. https://app.example.com)"
                )
        return origins


@lru_cache
def get_settings() -> Settings:
    return Settings()


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def describe_invalid_settings(error: ValidationError) -> str:
    """One line for a person: each bad variable by its environment name, the value it had and
    what it may be, e.g. `VAE_PORT='abc' is not valid; use an integer from 1 to 65535`."""
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        field = Settings.model_fields.get(name)
        if field is None:
            problems.append(item["msg"])
            continue
        value = "<hidden>" if field.annotation == SecretStr | None else repr(item["input"])
        # A validator's own message says what is wrong; pydantic's type messages repeat
        # what allowed_values() says better.
        reason = (
            f": {item['msg'].removeprefix('Value error, ')}"
            if item["type"] == "value_error"
            else ""
        )
        problems.append(
            f"{env_name(name)}={value} is not valid{reason}; use {allowed_values(field)}"
        )
    return "; ".join(problems)


def allowed_values(field: FieldInfo) -> str:
    annotation: Any = field.annotation
    members = get_args(annotation)
    optional = type(None) in members
    if optional:
        annotation = next(member for member in members if member is not type(None))
    if get_origin(annotation) is Literal:
        allowed = "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    elif annotation is bool:
        allowed = "true or false"
    elif annotation in (int, float):
        allowed = ("an integer" if annotation is int else "a number") + _bounds(field)
    elif annotation is Path:
        allowed = "a file path"
    elif get_origin(annotation) is list:
        allowed = "a comma-separated list or a JSON list of strings"
    else:
        allowed = "any text"
    return f"{allowed}, or leave it unset" if optional else allowed


def _bounds(field: FieldInfo) -> str:
    ge = next((bound.ge for bound in field.metadata if isinstance(bound, Ge)), None)
    le = next((bound.le for bound in field.metadata if isinstance(bound, Le)), None)
    if ge is not None and le is not None:
        return f" from {ge} to {le}"
    words = [
        f"of at least {bound.ge}"
        if isinstance(bound, Ge)
        else f"above {bound.gt}"
        if isinstance(bound, Gt)
        else f"of at most {bound.le}"
        if isinstance(bound, Le)
        else f"below {bound.lt}"
        for bound in field.metadata
        if isinstance(bound, Ge | Gt | Le | Lt)
    ]
    return " " + " and ".join(words) if words else ""
