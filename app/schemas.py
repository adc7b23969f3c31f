"""Request and response models: the contract other services code against."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        1.0, gt=0.0, le=2.0, description="scales the prior's standard deviation"
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
        description="mnist: convert a real-world picture MNIST's way; none: already 28x28 "
        "white-on-black MNIST-style",
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


class AnomalyJsonBody(BaseModel):
    """Exactly one of `images` (base64-encoded files) or `pixels` (784 floats each)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"images": ["iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAA..."]},
                {"pixels": [[0.0] * 784]},
            ]
        },
    )

    images: list[str] | None = Field(None, min_length=1, description="base64 image files")
    pixels: list[list[float]] | None = Field(
        None,
        min_length=1,
        description="row-major 28x28 images, floats in [0, 1], white digit on black",
    )

    @model_validator(mode="after")
    def _exactly_one_input(self) -> Self:
        if (self.images is None) == (self.pixels is None):
            raise ValueError("send exactly one of 'images' or 'pixels'")
        return self


class ImageScore(BaseModel):
    index: int = Field(description="position of the image in the request")
    score: float
    reconstruction_loss: float = Field(description="-log p(x | z = mu(x)) in nats")
    kl: float = Field(description="KL(q(z|x) || p(z)) in nats")
    percentile: float = Field(description="% of validation digits scoring at or below this")
    is_anomaly: bool


class AnomalyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    score: ScoreName
    score_definition: str
    k: int | None = Field(description="Monte Carlo samples used; null for reconstruction")
    threshold: float
    threshold_source: str = Field(examples=["validation p99", "fpr=0.05", "request"])
    results: list[ImageScore]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ready", "not ready"]
    model_id: str | None = None
    device: str | None = None


ModelCard = dict[str, Any]
