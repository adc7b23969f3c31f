"""Typed results. Numpy fields are float32; PNG results keep the bytes the service sent."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vae_client.images import png_to_array


@dataclass(frozen=True)
class PngImage:
    png: bytes = field(repr=False)
    model_id: str

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.png))
        image.load()
        return image

    def array(self) -> np.ndarray:
        """(H, W) float32 in [0, 1], white on black."""
        return png_to_array(self.png)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.png)


@dataclass(frozen=True)
class Samples(PngImage):
    seed: int  # send it back to get the same grid
    prior: str  # what they were drawn from: "fitted" or "standard"


@dataclass(frozen=True)
class Reconstruction(PngImage):
    reconstruction_loss: float  # -log p(x | z = mu(x)) in nats


@dataclass(frozen=True)
class ImageScore:
    index: int  # position of the image in the request
    score: float
    reconstruction_loss: float
    kl: float
    percentile: float  # % of validation digits sent the same way scoring at or below this
    is_anomaly: bool
    # "pixels" or "refit": the validation digits this image is compared with (services
    # before model v2 send neither field).
    calibration: str = "pixels"
    threshold: float | None = None  # the cut for this image's calibration


@dataclass(frozen=True)
class AnomalyReport:
    model_id: str
    score: str
    score_definition: str
    k: int | None
    threshold: float
    threshold_source: str
    results: list[ImageScore]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AnomalyReport:
        return cls(
            model_id=body["model_id"],
            score=body["score"],
            score_definition=body["score_definition"],
            k=body["k"],
            threshold=body["threshold"],
            threshold_source=body["threshold_source"],
            results=[ImageScore(**_known(ImageScore, result)) for result in body["results"]],
        )


@dataclass(frozen=True, eq=False)
class LatentCode:
    index: int
    mu: np.ndarray  # (latent_dim,) float32: the posterior mean
    sigma: np.ndarray  # (latent_dim,) float32: the posterior standard deviation


@dataclass(frozen=True, eq=False)
class Encoding:
    model_id: str
    latent_dim: int
    results: list[LatentCode]

    @property
    def mu(self) -> np.ndarray:
        """(N, latent_dim): every image's mean, in input order (what decode() takes)."""
        return np.stack([code.mu for code in self.results])

    @property
    def sigma(self) -> np.ndarray:
        return np.stack([code.sigma for code in self.results])

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Encoding:
        codes = [
            LatentCode(
                index=result["index"],
                mu=np.asarray(result["mu"], dtype=np.float32),
                sigma=np.asarray(result["sigma"], dtype=np.float32),
            )
            for result in body["results"]
        ]
        return cls(model_id=body["model_id"], latent_dim=body["latent_dim"], results=codes)


@dataclass(frozen=True, eq=False)
class DecodedPixels:
    model_id: str
    pixels: np.ndarray  # (N, 28, 28) float32 in [0, 1], white on black


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    latent_dim: int | None
    device: str | None
    default_score: str | None
    raw: dict[str, Any] = field(repr=False)  # the whole card as the service sent it

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelCard:
        architecture = body.get("architecture") or {}
        latent_dim = body.get("latent_dim", architecture.get("latent_dim"))
        return cls(
            model_id=body["model_id"],
            latent_dim=int(latent_dim) if latent_dim is not None else None,
            device=body.get("device"),
            default_score=body.get("default_score"),
            raw=body,
        )


def _known(kind: type, reply: dict[str, Any]) -> dict[str, Any]:
    """The fields of a reply that `kind` has: a newer service may add more."""
    names = {known.name for known in fields(kind)}
    return {name: value for name, value in reply.items() if name in names}
