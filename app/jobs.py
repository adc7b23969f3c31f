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

from app.engine import Engine
from app.errors import InvalidInputError
from app.imaging import pixels_to_tensor
from vae_common.scoring import SCORES

Outputs = tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class Job(ABC):
    # False: each request runs as a batch of its own, for jobs whose rows are not
    # independent (a seeded draw, an interpolation); their outputs may then have any
    # number of rows, and the request gets them whole.
    shares_batches: ClassVar[bool] = True

    @abstractmethod
    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        """inputs: (N, ...) rows of every request in the batch -> outputs with N rows each."""


@dataclass(frozen=True, slots=True)
class ScoreJob(Job):
    """(N, 28, 28) pixels -> score, reconstruction loss, KL (float32) and the percentile
    of validation digits at or below each score (float64), each (N,)."""

    score: str
    k: int | None  # Monte Carlo samples; None for deterministic scores

    @classmethod
    def for_request(cls, score: str | None, k: int | None, engine: Engine, max_k: int) -> ScoreJob:
        """The job a request asks for: the model's default score unless it names one; k
        defaults per score; 422 for a score the model cannot serve or k above VAE_MAX_IWAE_K."""
        name = score or engine.default_score
        engine.check_available(name)
        default_k = SCORES[name].default_k
        samples = None if default_k is None else k or min(default_k, max_k)
        if samples is not None and samples > max_k:
            raise InvalidInputError(f"k must be at most {max_k} (VAE_MAX_IWAE_K), got {samples}")
        return cls(name, samples)

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        engine.check_available(self.score)  # the engine may have changed since for_request
        result = engine.score(pixels_to_tensor(inputs), self.score, self.k)
        scores = result.score.numpy()
        percentiles = engine.percentiles(self.score, scores.astype(np.float64))
        return scores, result.reconstruction_loss.numpy(), result.kl.numpy(), percentiles


@dataclass(frozen=True, slots=True)
class ReconstructJob(Job):
    """(N, 28, 28) pixels -> reconstructions (N, 1, 28, 28) and reconstruction loss (N,)."""

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        reconstruction, recon_loss = engine.reconstruct(pixels_to_tensor(inputs))
        return reconstruction.numpy(), recon_loss.numpy()


@dataclass(frozen=True, slots=True)
class SampleJob(Job):
    """n digits drawn from the prior with a seed -> (n, 1, 28, 28). Its input is n empty
    rows (`inputs()`): they count against the queue limit like n images would."""

    shares_batches: ClassVar[bool] = False  # one seed, one draw of all n latents

    n: int
    temperature: float
    seed: int

    def inputs(self) -> np.ndarray:
        return np.empty((self.n, 0), dtype=np.float32)

    def run(self, engine: Engine, inputs: np.ndarray) -> Outputs:
        return (engine.sample(self.n, self.temperature, self.seed).numpy(),)
