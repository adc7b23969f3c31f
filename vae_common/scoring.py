"""Anomaly scores, computed the same way by training (calibration), the service and the
benchmarks. Higher means less like an MNIST digit. All scores are in nats per image.

Monte Carlo scores use a fixed bank of standard-normal draws (seeded, shared by every image
and every call), so a given image always gets the same score and calibration matches serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

NOISE_SEED = 20_261_127
DEFAULT_ELBO_SAMPLES = 16
DEFAULT_IWAE_SAMPLES = 64
MAX_SAMPLES = 1000

SCORE_DEFINITIONS: dict[str, str] = {
    "reconstruction": (
        "Bernoulli reconstruction loss -log p(x | z = mu(x)) in nats, decoding the posterior mean."
    ),
    "neg_elbo": (
        "Negative ELBO in nats: E_q[-log p(x | z)] over k fixed posterior draws "
        "+ KL(q(z | x) || p(z)) in closed form."
    ),
    "iwae_nll": (
        "Importance-weighted estimate of -log p(x) in nats with k fixed posterior draws "
        "(Burda et al. 2016); tighter than the ELBO, costs k decoder passes."
    ),
}


class ScriptedVAE(Protocol):
    """The exported methods of a checkpoint that scoring uses (TorchScript or eager)."""

    latent_dim: int

    def score(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def importance_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


@dataclass(frozen=True)
class ScoreBatch:
    """Per-image results, each (B,): the selected score plus the two terms every reply carries."""

    score: Tensor
    reconstruction_loss: Tensor
    kl: Tensor


def default_samples(score_name: str) -> int:
    return DEFAULT_IWAE_SAMPLES if score_name == "iwae_nll" else DEFAULT_ELBO_SAMPLES


def fixed_draws(k: int, latent_dim: int, device: torch.device) -> Tensor:
    """(k, D) standard-normal draws, identical on every call."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(k, latent_dim, generator=generator).to(device)


@torch.inference_mode()
def score_images(
    model: ScriptedVAE, x: Tensor, score_name: str, k: int | None = None
) -> ScoreBatch:
    """Score (B, 1, 28, 28) images in [0, 1] with `score_name`; `k` for Monte Carlo scores."""
    if score_name not in SCORE_DEFINITIONS:
        raise ValueError(
            f"unknown score {score_name!r}: expected one of {sorted(SCORE_DEFINITIONS)}"
        )
    recon_at_mean, kl = model.score(x)
    if score_name == "reconstruction":
        return ScoreBatch(recon_at_mean, recon_at_mean, kl)
    samples = k if k is not None else default_samples(score_name)
    if not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"k must be between 1 and {MAX_SAMPLES}, got {samples}")
    eps = fixed_draws(samples, model.latent_dim, x.device)
    recon, log_weights, _ = _chunked_importance_terms(model, x, eps)
    if score_name == "neg_elbo":
        score = recon.mean(dim=1) + kl
    else:
        score = -(torch.logsumexp(log_weights, dim=1) - math.log(samples))
    return ScoreBatch(score, recon_at_mean, kl)


def _chunked_importance_terms(
    model: ScriptedVAE, x: Tensor, eps: Tensor, max_decodes: int = 16_384
) -> tuple[Tensor, Tensor, Tensor]:
    """importance_terms over image chunks so that B * k decoder outputs stay bounded."""
    per_chunk = max(1, max_decodes // eps.shape[0])
    parts = [model.importance_terms(chunk, eps) for chunk in x.split(per_chunk)]
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
    )


# Calibration: empirical quantiles of each score on the validation split.
QUANTILE_LEVELS: tuple[float, ...] = tuple(
    sorted({round(q, 3) for q in np.linspace(0.0, 100.0, 201)} | {99.6, 99.7, 99.8, 99.9, 99.95})
)
NAMED_QUANTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
DEFAULT_THRESHOLD_PERCENTILE = 99.0


def calibration_table(scores: np.ndarray, k: int | None) -> dict[str, Any]:
    """Quantiles of validation scores, dense enough to interpolate percentiles from."""
    values = np.percentile(scores, QUANTILE_LEVELS)
    return {
        "n": len(scores),
        "k": k,
        "levels": list(QUANTILE_LEVELS),
        "values": [float(v) for v in values],
        "named": {name: float(np.percentile(scores, q)) for name, q in NAMED_QUANTILES.items()},
    }


@dataclass(frozen=True)
class Calibration:
    """Turns a score into a percentile of validation digits, and an FPR into a threshold."""

    levels: np.ndarray  # (L,) percentiles in [0, 100], increasing
    values: np.ndarray  # (L,) score at each percentile, non-decreasing

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Calibration:
        levels = np.asarray(table["levels"], dtype=np.float64)
        values = np.maximum.accumulate(np.asarray(table["values"], dtype=np.float64))
        return cls(levels=levels, values=values)

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Share of validation digits (in %) scoring at or below each score."""
        return np.interp(scores, self.values, self.levels, left=0.0, right=100.0)

    def threshold_for_fpr(self, fpr: float) -> float:
        """Score above which a fraction `fpr` of validation digits lie."""
        return float(np.interp(100.0 * (1.0 - fpr), self.levels, self.values))
