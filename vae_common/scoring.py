"""Anomaly scores, computed the same way by training (calibration), the service and the
benchmarks. Higher means less like an upright MNIST digit.

Monte Carlo scores use a fixed bank of standard-normal draws (seeded, shared by every image
and every call), so a given image always gets the same score and calibration matches serving.

The default, `typical_upright`, sums the surprises -log p of three tail probabilities, each
calibrated on validation digits (Fisher's method; `TailModel`, `Scorer.typical_upright`):
- typicality of the deterministic negative ELBO (Nalisnick et al. 2019), two-sided: neither
  unusually high (Fashion-MNIST, noise) nor unusually low (blank images, which generative
  models notoriously find "likely");
- typicality of the excess reconstruction loss BCE(x, p) - H(x), two-sided: the Bernoulli
  loss on grey levels contains the input's own pixel entropy H(x), which depends on the
  image alone (an input-complexity term, cf. Serra et al. 2020); without it, faint uniform
  images look like digits;
- orientation: -log p(upright | x) from a self-supervised head on the encoder's features
  (Golan & El-Yaniv 2018), upper tail, which catches flipped and rotated digits that
  likelihoods barely separate.
Using several statistics of one generative model in this way follows DoSE (Morningstar et
al. 2021), with a product of per-statistic tails instead of a fitted joint density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

NOISE_SEED = 20_261_127

# Input paths with a calibration of their own: percentiles and thresholds hold for inputs
# that arrive the way the calibration digits did.
PIXELS_PATH = "pixels"
REFIT_PATH = "refit"
CALIBRATION_PATH_DESCRIPTIONS = {
    PIXELS_PATH: "validation digits as MNIST stores them: JSON pixels, preprocess=none, and "
    "uploads that preprocess=mnist keeps as sent (already 28x28, fitted and centred)",
    REFIT_PATH: "validation digits rendered as pictures (resampled drawings, scans, phone "
    "photos under uneven light), then cropped, resized and centred by preprocess=mnist",
}
DEFAULT_ELBO_SAMPLES = 16
DEFAULT_IWAE_SAMPLES = 64
MAX_SAMPLES = 1000
DEFAULT_SCORE = "typical_upright"


class ScriptedVAE(Protocol):
    """The exported methods of a checkpoint that scoring uses (TorchScript or eager)."""

    latent_dim: int

    def anomaly_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def importance_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


@dataclass(frozen=True)
class ScoreBatch:
    """Per-image results, each (B,): the selected score plus the two terms every reply carries."""

    score: Tensor
    reconstruction_loss: Tensor
    kl: Tensor


def fixed_draws(k: int, latent_dim: int, device: torch.device) -> Tensor:
    """(k, D) standard-normal draws, identical on every call."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(k, latent_dim, generator=generator).to(device)


class AnomalyTerms(NamedTuple):
    """What one encoder and decoder pass gives every score, each (B,) in nats."""

    recon: Tensor  # -log p(x | z = mu(x))
    kl: Tensor  # KL(q(z | x) || p(z))
    surprisal: Tensor  # -log p(upright | x) from the orientation head


# A score from the images, the shared terms and k (None unless Monte Carlo) -> (B,).
ScoreFn = Callable[["Scorer", Tensor, AnomalyTerms, "int | None"], Tensor]


@dataclass(frozen=True)
class ScoreSpec:
    """One anomaly score: adding a score is one entry in SCORES (and its ScoreName)."""

    name: str
    definition: str
    compute: ScoreFn
    default_k: int | None = None  # Monte Carlo samples when a request names none
    max_k: int | None = None

    @property
    def monte_carlo(self) -> bool:
        return self.default_k is not None

    def samples(self, k: int | None) -> int | None:
        """The k this score runs with: None for deterministic scores (k is ignored)."""
        if self.default_k is None:
            return None
        samples = self.default_k if k is None else k
        limit = self.max_k or MAX_SAMPLES
        if not 1 <= samples <= limit:
            raise ValueError(f"k must be between 1 and {limit}, got {samples}")
        return samples


def _typical_upright(scorer: Scorer, x: Tensor, terms: AnomalyTerms, k: int | None) -> Tensor:
    return scorer.typical_upright(component_statistics(x, *terms))


def _neg_elbo(scorer: Scorer, x: Tensor, terms: AnomalyTerms, k: int | None) -> Tensor:
    assert k is not None
    recon_k, _ = scorer.importance_terms(x, k)
    return recon_k.mean(dim=1) + terms.kl


def _iwae_nll(scorer: Scorer, x: Tensor, terms: AnomalyTerms, k: int | None) -> Tensor:
    assert k is not None
    _, log_weights = scorer.importance_terms(x, k)
    return -(torch.logsumexp(log_weights, dim=1) - math.log(k))


SCORES: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec(
            "typical_upright",
            "Sum of -log tail probabilities, each calibrated on validation digits: two-sided "
            "for the deterministic negative ELBO and for the excess reconstruction loss "
            "BCE - H(x) (too unlikely, or implausibly simple), upper for the orientation "
            "surprisal -log p(upright | x). One forward pass.",
            _typical_upright,
        ),
        ScoreSpec(
            "reconstruction",
            "Bernoulli reconstruction loss -log p(x | z = mu(x)) in nats, decoding the "
            "posterior mean.",
            lambda scorer, x, terms, k: terms.recon,
        ),
        ScoreSpec(
            "neg_elbo",
            "Negative ELBO in nats: E_q[-log p(x | z)] over k fixed posterior draws "
            "+ KL(q(z | x) || p(z)) in closed form.",
            _neg_elbo,
            default_k=DEFAULT_ELBO_SAMPLES,
            max_k=MAX_SAMPLES,
        ),
        ScoreSpec(
            "iwae_nll",
            "Importance-weighted estimate of -log p(x) in nats with k fixed posterior draws "
            "(Burda et al. 2016); tighter than the ELBO, costs k decoder passes.",
            _iwae_nll,
            default_k=DEFAULT_IWAE_SAMPLES,
            max_k=MAX_SAMPLES,
        ),
        ScoreSpec(
            "orientation",
            "-log p(upright | x) in nats from the self-supervised orientation head "
            "(8 dihedral classes), alone.",
            lambda scorer, x, terms, k: terms.surprisal,
        ),
    )
}
# Views of SCORES under the names training and the benchmarks import.
SCORE_DEFINITIONS: dict[str, str] = {name: spec.definition for name, spec in SCORES.items()}
MONTE_CARLO_SCORES = tuple(name for name, spec in SCORES.items() if spec.monte_carlo)


def score_spec(score_name: str) -> ScoreSpec:
    spec = SCORES.get(score_name)
    if spec is None:
        raise ValueError(f"unknown score {score_name!r}: expected one of {sorted(SCORES)}")
    return spec


def default_samples(score_name: str) -> int | None:
    return score_spec(score_name).default_k


# Calibration: empirical quantiles of each score on the validation split.
QUANTILE_LEVELS: tuple[float, ...] = tuple(
    sorted({round(q, 3) for q in np.linspace(0.0, 100.0, 201)} | {99.6, 99.7, 99.8, 99.9, 99.95})
)
NAMED_QUANTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
DEFAULT_THRESHOLD_PERCENTILE = 99.0
TAIL_PERCENT = 5.0  # beyond the 5th/95th percentiles, tails are modelled as exponential


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
        percentiles: np.ndarray = np.interp(scores, self.values, self.levels, left=0.0, right=100.0)
        return percentiles

    def threshold_for_fpr(self, fpr: float) -> float:
        """Score above which a fraction `fpr` of validation digits lie."""
        return float(np.interp(100.0 * (1.0 - fpr), self.levels, self.values))


@dataclass(frozen=True)
class TailModel:
    """A score's distribution on validation digits: the empirical CDF in the body and
    exponential tails past the 5th and 95th percentiles (peaks-over-threshold with the
    mean excess as scale), so tail probabilities keep falling smoothly beyond the data."""

    calibration: Calibration
    low: float  # 5th percentile
    high: float  # 95th percentile
    low_scale: float  # mean distance below `low` of the scores under it
    high_scale: float

    @classmethod
    def fit(cls, scores: np.ndarray) -> dict[str, Any]:
        low, high = np.percentile(scores, [TAIL_PERCENT, 100.0 - TAIL_PERCENT])
        below, above = scores[scores < low], scores[scores > high]
        return {
            **calibration_table(scores, None),
            "low": float(low),
            "high": float(high),
            "low_scale": float(max(np.mean(low - below), 1e-6)) if len(below) else 1.0,
            "high_scale": float(max(np.mean(above - high), 1e-6)) if len(above) else 1.0,
        }

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> TailModel:
        return cls(
            Calibration.from_table(table),
            table["low"],
            table["high"],
            table["low_scale"],
            table["high_scale"],
        )

    def cdf(self, scores: np.ndarray) -> np.ndarray:
        body = self.calibration.percentile(scores) / 100.0
        tail = TAIL_PERCENT / 100.0
        # The clamps keep the branch np.where discards from overflowing.
        lower = tail * np.exp(-np.maximum(self.low - scores, 0.0) / self.low_scale)
        upper = 1.0 - tail * np.exp(-np.maximum(scores - self.high, 0.0) / self.high_scale)
        return np.where(scores < self.low, lower, np.where(scores > self.high, upper, body))

    def upper_surprise(self, scores: np.ndarray) -> np.ndarray:
        """-log P(S >= s) under the validation distribution."""
        tail = TAIL_PERCENT / 100.0
        beyond = math.log(1.0 / tail) + (scores - self.high) / self.high_scale
        body = -np.log(np.clip(1.0 - self.cdf(scores), 1e-300, 1.0))
        return np.where(scores > self.high, beyond, body)

    def two_sided_surprise(self, scores: np.ndarray) -> np.ndarray:
        """-log(2 min(P(S <= s), P(S >= s))): large for unusually low or high scores."""
        tail = TAIL_PERCENT / 100.0
        log_2tail = math.log(2.0 * tail)
        below = -(log_2tail - (self.low - scores) / self.low_scale)
        above = -(log_2tail - (scores - self.high) / self.high_scale)
        cdf = self.cdf(scores)
        body = -np.log(np.clip(2.0 * np.minimum(cdf, 1.0 - cdf), 1e-300, 1.0))
        return np.where(scores < self.low, below, np.where(scores > self.high, above, body))


class Scorer:
    """Every score of a checkpoint; `components` are the fitted tail models (None while
    calibrating them, when only the raw scores can be computed)."""

    def __init__(self, model: ScriptedVAE, components: dict[str, Any] | None) -> None:
        self.model = model
        self.components = (
            {name: TailModel.from_table(table) for name, table in components.items()}
            if components
            else None
        )

    @torch.inference_mode()
    def score(self, x: Tensor, score_name: str, k: int | None = None) -> ScoreBatch:
        """Score (B, 1, 28, 28) images in [0, 1] with `score_name`; `k` for Monte Carlo ones."""
        spec = score_spec(score_name)
        terms = AnomalyTerms(*self.model.anomaly_terms(x))
        return ScoreBatch(spec.compute(self, x, terms, spec.samples(k)), terms.recon, terms.kl)

    def typical_upright(self, statistics: dict[str, np.ndarray]) -> Tensor:
        if self.components is None:
            raise RuntimeError("typical_upright needs fitted components (see calibrate_scores)")
        total = np.zeros_like(statistics["orientation"])
        for name, two_sided in COMPONENT_SIDES.items():
            tail = self.components[name]
            total += (tail.two_sided_surprise if two_sided else tail.upper_surprise)(
                statistics[name]
            )
        return torch.from_numpy(total).float()

    def importance_terms(self, x: Tensor, samples: int) -> tuple[Tensor, Tensor]:
        """(B, k) reconstruction losses and log importance weights over k fixed draws."""
        eps = fixed_draws(samples, self.model.latent_dim, x.device)
        return self._chunked_importance_terms(x, eps)

    def _chunked_importance_terms(
        self, x: Tensor, eps: Tensor, max_decodes: int = 16_384
    ) -> tuple[Tensor, Tensor]:
        """importance_terms over image chunks so that B * k decoder outputs stay bounded."""
        per_chunk = max(1, max_decodes // eps.shape[0])
        parts = [self.model.importance_terms(chunk, eps) for chunk in x.split(per_chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# The default score's statistics, and whether each is tested on both tails.
COMPONENT_SIDES = {"deterministic_nll": True, "excess_reconstruction": True, "orientation": False}


def pixel_entropy(x: Tensor) -> Tensor:
    """H(x) = sum of binary entropies of the pixel intensities: (B, 1, 28, 28) -> (B,) nats.
    The smallest Bernoulli loss any decoder could reach on these grey levels."""
    p = x.clamp(1e-7, 1 - 1e-7)
    return -(p * p.log() + (1 - p) * (1 - p).log()).flatten(1).sum(1)


def component_statistics(
    x: Tensor, recon: Tensor, kl: Tensor, surprisal: Tensor
) -> dict[str, np.ndarray]:
    """(B,) float64 arrays of the statistics the default score combines."""
    return {
        "deterministic_nll": (recon + kl).double().cpu().numpy(),
        "excess_reconstruction": (recon - pixel_entropy(x)).double().cpu().numpy(),
        "orientation": surprisal.double().cpu().numpy(),
    }


@torch.inference_mode()
def calibrate_scores(model: ScriptedVAE, x: Tensor, chunk: int = 1000) -> dict[str, Any]:
    """Fit the default score's components and tabulate every score on `x` (validation)."""
    raw = Scorer(model, None)
    parts = [component_statistics(part, *model.anomaly_terms(part)) for part in x.split(chunk)]
    components = {
        name: TailModel.fit(np.concatenate([part[name] for part in parts]))
        for name in COMPONENT_SIDES
    }
    scorer = Scorer(model, components)
    tables = {}
    for name, spec in SCORES.items():
        k = spec.default_k
        active = scorer if name == DEFAULT_SCORE else raw
        scores = torch.cat([active.score(part, name, k).score for part in x.split(chunk)])
        tables[name] = calibration_table(scores.double().numpy(), k)
    return {
        "noise_seed": NOISE_SEED,
        "default_score": DEFAULT_SCORE,
        "default_threshold_percentile": DEFAULT_THRESHOLD_PERCENTILE,
        "components": components,
        "scores": tables,
    }
