"""What the model computes for a request, as frozen, hashable jobs.

A job is the dynamic batcher's key: requests with equal jobs share one batch. `run` is the
one method that runs on an inference thread: it gets the engine of that batch (read once
per batch, so a reloaded model takes over between batches) and every request's input rows
concatenated, (N, ...) float32 with a trailing shape the job defines, and returns numpy
arrays with one row per input row, which the batcher hands back request by request.

A new endpoint that runs the model is a route, a job here and a schema.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from app.engine import Engine
from app.errors import InvalidInputError
from app.imaging import pixels_to_tensor
from vae_common.scoring import PIXELS_PATH, SCORES

Outputs = tuple[np.ndarray, ...]
# What an overflowed score reads as. An input far outside the training data can drive the
# encoder's log-variance past float32's exp range (model v2 on a blank image: 118, so the KL
# is infinite), and JSON has no infinity: orjson would write null, which the reply schema
# does not allow. The largest float32 is beyond every threshold and at percentile 100.
SCORE_OVERFLOW = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class Job(ABC):
    # False: each request runs as a batch of its own, for jobs whose rows are not
    # independent (a seeded draw, an interpolation); their outputs may then have any
    # number of rows, and the request gets them whole.
    shares_batches: ClassVar[bool] = True

    @property
    def heavy(self) -> bool:
        """True for work that grows with Monte Carlo samples: it runs in a lane of its own
        (app.batching.Lanes), so that it never holds up cheap requests."""
        return False

    @abstractmethod
    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        """inputs: (N, ...) rows of every request in the batch -> outputs with N rows each."""


@dataclass(frozen=True, slots=True)
class ScoreJob(Job):
    """(N, 28, 28) pixels -> score, reconstruction loss, KL (float32) and the percentile
    of validation digits at or below each score (float64), each (N,)."""

    score: str
    k: int | None  # Monte Carlo samples; None for deterministic scores
    # The input path whose calibration turns scores into percentiles (Engine.paths).
    calibration: str = PIXELS_PATH

    @classmethod
    def for_request(
        cls,
        score: str | None,
        k: int | None,
        engine: Engine,
        max_k: int,
        images: int = 1,
        max_decodes: int | None = None,
        calibration: str = PIXELS_PATH,
    ) -> ScoreJob:
        """The job a request asks for: the model's default score unless it names one; k
        defaults per score; 422 for a score the model cannot serve, k above VAE_MAX_IWAE_K,
        or k x images above VAE_MAX_REQUEST_DECODES (each sample is one decoder pass per
        image: the cost of the request, and how long it holds an inference thread)."""
        name = score or engine.default_score
        engine.check_available(name)
        default_k = SCORES[name].default_k
        samples = None if default_k is None else k or min(default_k, max_k)
        if samples is not None and samples > max_k:
            raise InvalidInputError(f"k must be at most {max_k} (VAE_MAX_IWAE_K), got {samples}")
        if samples is not None and max_decodes is not None and samples * images > max_decodes:
            raise InvalidInputError(
                f"k x images = {samples} x {images} = {samples * images}; at most "
                f"{max_decodes} per request (VAE_MAX_REQUEST_DECODES): lower k "
                f"(at most {max(max_decodes // images, 1)} for {images} images) or send "
                "fewer images per request"
            )
        return cls(name, samples, calibration)

    @property
    def heavy(self) -> bool:
        return self.k is not None

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        engine.check_available(self.score)  # the engine may have changed since for_request
        # A reloaded model may lack the calibration this job was made for (model v1 has no
        # refit calibration): it then scores the way it scores everything.
        path = self.calibration if self.calibration in engine.paths else PIXELS_PATH
        result = engine.score(pixels_to_tensor(inputs), self.score, self.k, path)
        scores, recon, kl = (
            finite(terms.numpy()) for terms in (result.score, result.reconstruction_loss, result.kl)
        )
        percentiles = engine.percentiles(self.score, scores.astype(np.float64), path)
        return scores, recon, kl, percentiles


def finite(values: np.ndarray) -> np.ndarray:
    """Scores and loss terms with overflow (+inf, and NaN, which only overflow produces
    here, e.g. inf - inf) read as SCORE_OVERFLOW: flagged, never a null in the reply."""
    if np.isfinite(values).all():
        return values
    cleaned: np.ndarray = np.nan_to_num(
        values, nan=SCORE_OVERFLOW, posinf=SCORE_OVERFLOW, neginf=-SCORE_OVERFLOW
    )
    return cleaned


@dataclass(frozen=True, slots=True)
class ReconstructJob(Job):
    """(N, 28, 28) pixels -> reconstructions (N, 1, 28, 28) and reconstruction loss (N,)."""

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        reconstruction, recon_loss = engine.reconstruct(pixels_to_tensor(inputs))
        return reconstruction.numpy(), recon_loss.numpy()


@dataclass(frozen=True, slots=True)
class SampleJob(Job):
    """n digits drawn from a prior with a seed -> (n, 1, 28, 28). Its input is n empty
    rows (`inputs()`): they count against the queue limit like n images would."""

    shares_batches: ClassVar[bool] = False  # one seed, one draw of all n latents

    n: int
    temperature: float
    seed: int
    # "fitted" or "standard"; None: the model's default (Engine.default_prior), decided by
    # the engine of the batch, so a reload to a model without a fitted prior still serves.
    prior: str | None = None

    def inputs(self) -> np.ndarray:
        return np.empty((self.n, 0), dtype=np.float32)

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        return (engine.sample(self.n, self.temperature, self.seed, self.prior).numpy(),)


@dataclass(frozen=True, slots=True)
class EncodeJob(Job):
    """(N, 28, 28) pixels -> posterior mean and standard deviation, each (N, latent_dim)."""

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        mu, logvar = engine.encode(pixels_to_tensor(inputs))
        return mu.numpy(), torch.exp(0.5 * logvar).numpy()


@dataclass(frozen=True, slots=True)
class DecodeJob(Job):
    """(N, latent_dim) latents -> (N, 1, 28, 28) pixel means. The latent size is part of the
    key: rows checked against one model never share a batch with rows of another size."""

    latent_dim: int

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        _check_latent_dim(engine, self.latent_dim)
        return (engine.decode(torch.from_numpy(inputs)).numpy(),)


@dataclass(frozen=True, slots=True)
class InterpolateJob(Job):
    """Two ends -> `steps` digits (steps, 1, 28, 28) along the path between their codes,
    ends included. The ends are two pictures ((2, 28, 28) pixels, encoded to their means, so
    the ends decode to their reconstructions) or two latent vectors ((2, latent_dim))."""

    shares_batches: ClassVar[bool] = False  # the output rows come from both input rows

    steps: int
    method: str  # "linear" or "slerp"
    latent_dim: int | None  # None: the inputs are pictures

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        if self.latent_dim is None:
            ends, _ = engine.encode(pixels_to_tensor(inputs))
        else:
            _check_latent_dim(engine, self.latent_dim)
            ends = torch.from_numpy(inputs)
        path = latent_path(ends[0], ends[1], self.steps, self.method)
        return (engine.decode(path).numpy(),)


def latent_path(start: torch.Tensor, end: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """(D,) and (D,) -> (steps, D) from start to end, both included.

    slerp follows the great circle between the two directions while the norm changes
    linearly with the angle (White 2016, "Sampling generative networks"): in a high-dimensional
    N(0, I) almost all mass lies near one norm, and a straight line between two codes cuts
    through the low-norm interior. Where the angle is ~0 or ~pi the circle is undefined or
    (anti)parallel, and the path is the straight line; so it is when either code is 0."""
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64).unsqueeze(1)  # (steps, 1)
    a, b = start.to(torch.float64), end.to(torch.float64)
    path = (1.0 - t) * a + t * b
    norms = float(a.norm() * b.norm())
    if method == "slerp" and norms > 0.0:
        omega = torch.arccos((a @ b / norms).clamp(-1.0, 1.0))
        sin_omega = torch.sin(omega)
        if float(sin_omega) > SLERP_MIN_SIN:
            path = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    return path.to(start.dtype)


# Below this sin(angle) between the two codes, slerp divides by ~0: use the straight line.
SLERP_MIN_SIN = 1e-4


def _check_latent_dim(engine: Engine, latent_dim: int) -> None:
    """The route checked the vectors against the engine of its time; a reload may have
    brought a model with another latent size since."""
    if latent_dim != engine.latent_dim:
        raise InvalidInputError(
            f"the model changed: latent vectors now need {engine.latent_dim} numbers, got "
            f"{latent_dim} (see GET /model)"
        )
