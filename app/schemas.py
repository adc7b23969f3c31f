"""Request and response models: the contract other services code against."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vae_common.scoring import MAX_SAMPLES


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["n must be between 1 and 256"])


class SampleRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"n": 16, "seed": 7, "temperature": 0.8}]},
    )

    n: int = Field(64, ge=1, le=256, description="digits to draw")
    nrow: int | None = Field(
        None, ge=1, le=256, description="digits per grid row; default ceil(sqrt(n))"
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="same seed and model give a byte-identical PNG; random when omitted",
    )
    temperature: float = Field(
        1.0,
        gt=0.0,
        le=2.0,
        description="scales the prior's standard deviation (fitted: each component's)",
    )

    @field_validator("n", "nrow", "seed", "temperature", mode="before")
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        # JSON true/false and strings are no counts or seeds (lax pydantic took
        # {"seed": false} as 0 and "7" as 7); 7.0 stays a valid integer, as in JSON Schema.
        if isinstance(value, bool | str):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        return value


class SampleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prior: Literal["fitted", "standard"] | None = Field(
        None,
        description="fitted: the mixture fitted to where the encoder puts the training "
        "digits (their aggregate posterior; digits look more like MNIST); standard: N(0, I). "
        "Default: fitted when the model has one (GET /model: prior, priors)",
    )


class ScoreName(StrEnum):
    """Mirrors vae_common.scoring.SCORES (a test keeps the two in step)."""

    typical_upright = "typical_upright"
    reconstruction = "reconstruction"
    neg_elbo = "neg_elbo"
    iwae_nll = "iwae_nll"
    orientation = "orientation"


class ReconstructOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preprocess: Literal["mnist", "none"] = Field(
        "mnist",
        description="mnist: convert a real-world picture MNIST's way (a 28x28 upload is kept "
        "as sent, only made white on black); none: already 28x28 white-on-black MNIST-style",
    )
    scale: int = Field(1, ge=1, le=16, description="nearest-neighbour upscaling of the PNG")
    layout: Literal["single", "pair"] = Field(
        "single", description="pair: preprocessed input and reconstruction side by side"
    )


class AnomalyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: ScoreName | None = Field(None, description="which score; the model's default if omitted")
    k: int | None = Field(
        None, ge=1, le=MAX_SAMPLES, description="Monte Carlo samples for neg_elbo and iwae_nll"
    )
    threshold: float | None = Field(
        None, allow_inf_nan=False, description="flag images whose score exceeds this"
    )
    fpr: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="flag at the score that this fraction of validation digits exceed",
    )
    preprocess: Literal["mnist", "none"] = Field("mnist", description="as for /reconstruct")

    @model_validator(mode="after")
    def _one_threshold_rule(self) -> Self:
        if self.threshold is not None and self.fpr is not None:
            raise ValueError("give threshold or fpr, not both")
        return self


# A complete 28x28 PNG of a "1" (116 characters): the example in /docs and the README.
README_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAHElEQVR42mNgGGSAEYX3H1WA"
    "CZ/OUcnhJTnoAADIzgEkQAMnJgAAAABJRU5ErkJggg=="
)
PixelRow = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=784, max_length=784)
]


class AnomalyJsonBody(BaseModel):
    """Exactly one of `images` (base64-encoded files) or `pixels` (784 floats each)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"images": [README_PNG_BASE64]},
                {"pixels": [[0.0] * 784]},
            ]
        },
    )

    # Documentation only: app.uploads checks bodies by hand (counts and shapes first).
    # max_length is VAE_MAX_BATCH's default.
    images: list[str] | None = Field(
        None, min_length=1, max_length=64, description="base64 image files"
    )
    pixels: list[PixelRow] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="row-major 28x28 images, floats in [0, 1], white digit on black",
    )

    @model_validator(mode="after")
    def _exactly_one_input(self) -> Self:
        if (self.images is None) == (self.pixels is None):
            raise ValueError("send exactly one of 'images' or 'pixels'")
        return self


class ImageScore(BaseModel):
    index: int = Field(description="position of the image in the request")
    score: float = Field(
        description="nats, higher is more anomalous; an input the model overflows on (model "
        "v2: a blank image) reads as 3.4028235e38, the largest float32, and is flagged"
    )
    reconstruction_loss: float = Field(description="-log p(x | z = mu(x)) in nats")
    kl: float = Field(description="KL(q(z|x) || p(z)) in nats")
    percentile: float = Field(
        description="% of validation digits sent the same way (see `calibration`) scoring at "
        "or below this"
    )
    is_anomaly: bool = Field(description="score > threshold")
    calibration: str = Field(
        description="the validation digits this image is compared with: `pixels` (digits as "
        "MNIST stores them: JSON pixels, preprocess=none, and 28x28 uploads preprocess=mnist "
        "keeps as sent) or `refit` (digits rendered as pictures and refitted by "
        "preprocess=mnist: scans, photos, drawings); see GET /model `calibration_paths`",
        examples=["pixels", "refit"],
    )
    threshold: float = Field(description="the cut for this image's calibration")


class AnomalyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    score: ScoreName
    score_definition: str
    k: int | None = Field(description="Monte Carlo samples used; null for reconstruction")
    threshold: float = Field(
        description="the cut for the first image's calibration; each result has its own"
    )
    threshold_source: str = Field(examples=["validation p99", "fpr=0.05", "request"])
    results: list[ImageScore]


# --- the latent space: /encode, /decode, /interpolate ------------------------------------

MAX_LATENTS = 256
# Far outside anything the prior (N(0, I)) or an encoder produces; beyond it the decoder
# only saturates, or overflows to NaN pixels in float32.
MAX_LATENT_ABS = 1e3
# The shipped model's latent size: the examples in /docs decode as they stand there.
EXAMPLE_LATENT_DIM = 32


def check_latent_rows(value: Any, name: str, latent_dim: int | None) -> list[list[float]]:
    """JSON rows of latent numbers, checked in an order that keeps messages short: the
    count, then each row's length against the model's latent size (`latent_dim`; None: the
    first row's), then each number: finite, |z| <= MAX_LATENT_ABS."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LATENTS:
        count = f"got {len(value)}" if isinstance(value, list) else f"got {type(value).__name__}"
        raise ValueError(f"{name} must be a list of 1 to {MAX_LATENTS} latent vectors; {count}")
    if latent_dim is None and isinstance(value[0], list):
        latent_dim = len(value[0])
    for index, row in enumerate(value):
        _check_length(row, f"{name}[{index}]", latent_dim)
    for index, row in enumerate(value):
        _check_numbers(row, f"{name}[{index}]")
    return value


def check_latent_vector(value: Any, name: str, latent_dim: int | None) -> list[float]:
    _check_length(value, name, latent_dim)
    _check_numbers(value, name)
    return list(value)


def _check_length(row: Any, where: str, latent_dim: int | None) -> None:
    if not isinstance(row, list):
        raise ValueError(f"{where} must be a list of numbers, got {type(row).__name__}")
    if latent_dim is not None and len(row) != latent_dim:
        raise ValueError(
            f"{where} has {len(row)} numbers; a latent vector of this model has {latent_dim} "
            "(latent_dim in GET /model)"
        )
    if not row:
        raise ValueError(f"{where} is empty; a latent vector has latent_dim numbers")


def _check_numbers(row: list[Any], where: str) -> None:
    for position, number in enumerate(row):
        # bool is an int to Python, not a number to a JSON client
        if type(number) is not float and type(number) is not int:
            raise ValueError(f"{where}[{position}] must be a number, got {type(number).__name__}")
        if not abs(number) <= MAX_LATENT_ABS:  # also NaN, which compares False
            shown = f"{number:.6g}" if isinstance(number, float) else "an integer that large"
            raise ValueError(
                f"{where}[{position}] is {shown}; latent values must be finite, with "
                f"|z| <= {MAX_LATENT_ABS:g}"
            )


def _latent_dim(info: ValidationInfo) -> int | None:
    """The model's latent size, passed as validation context by the route."""
    return (info.context or {}).get("latent_dim")


class LatentCode(BaseModel):
    index: int = Field(description="position of the image in the request")
    mu: list[float] = Field(description="posterior mean, one number per latent dimension")
    sigma: list[float] = Field(description="posterior standard deviation, exp(logvar / 2)")


class EncodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preprocess: Literal["mnist", "none"] = Field("mnist", description="as for /reconstruct")


class EncodeResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    latent_dim: int
    results: list[LatentCode] = Field(description="one per image, in input order")


class DecodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["png", "pixels"] = Field(
        "png", description="png: one grid like /sample; pixels: JSON rows of 784 floats"
    )
    nrow: int | None = Field(
        None, ge=1, le=MAX_LATENTS, description="digits per grid row; default ceil(sqrt(n))"
    )
    scale: int = Field(1, ge=1, le=16, description="nearest-neighbour upscaling of the PNG")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"latents": [[0.0] * EXAMPLE_LATENT_DIM]}]},
    )

    latents: list[list[float]] = Field(
        min_length=1,
        max_length=MAX_LATENTS,
        description=f"1 to {MAX_LATENTS} latent vectors of the model's latent size (GET "
        f"/model), finite, each value within +-{MAX_LATENT_ABS:g}",
    )

    @field_validator("latents", mode="before")
    @classmethod
    def _checked(cls, value: Any, info: ValidationInfo) -> list[list[float]]:
        return check_latent_rows(value, "latents", _latent_dim(info))


class DecodedPixels(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    pixels: list[list[float]] = Field(
        description="per latent, row-major 28x28 floats in [0, 1] (6 decimals), white on black"
    )


class InterpolateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(10, ge=2, le=64, description="digits in the strip, both ends included")
    method: Literal["linear", "slerp"] = Field(
        "linear",
        description="linear: straight line between the codes; slerp: along the great circle "
        "(keeps the norm typical of the prior; linear where the codes are (anti)parallel)",
    )
    scale: int = Field(1, ge=1, le=16, description="nearest-neighbour upscaling of the PNG")
    preprocess: Literal["mnist", "none"] = Field(
        "mnist", description="as for /reconstruct; for pictures only"
    )


class InterpolateLatents(BaseModel):
    """The two ends as latent vectors (pictures go as multipart `start` and `end`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    # two orthogonal codes: slerp and linear paths differ
                    "start": [
                        float(i < EXAMPLE_LATENT_DIM // 2) for i in range(EXAMPLE_LATENT_DIM)
                    ],
                    "end": [float(i >= EXAMPLE_LATENT_DIM // 2) for i in range(EXAMPLE_LATENT_DIM)],
                }
            ]
        },
    )

    start: list[float] = Field(description="latent vector of the first digit")
    end: list[float] = Field(description="latent vector of the last digit")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _checked(cls, value: Any, info: ValidationInfo) -> list[float]:
        name = str(info.field_name)
        if not isinstance(value, list):
            raise ValueError(
                f"{name} must be a latent vector (a list of numbers), got "
                f"{type(value).__name__}; send pictures as multipart/form-data fields "
                "'start' and 'end'"
            )
        return check_latent_vector(value, name, _latent_dim(info))


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ready", "not ready", "draining"]
    model_id: str | None = None
    device: str | None = None


ModelCard = dict[str, Any]
