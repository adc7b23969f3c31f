"""The loaded model: its calibrations, batch buckets and warm-up, and the primitives jobs
compose (score, reconstruct, encode, decode, sample). Every forward pass runs at a
bucketed batch size through the Execution chosen at start-up. No HTTP in here.

Engine methods run on the inference threads and take and return CPU tensors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from app.errors import InvalidInputError
from app.execution import CpuExecution, Execution
from vae_common.checkpoint import Checkpoint, load_checkpoint
from vae_common.pixels import IMAGE_SIZE
from vae_common.scoring import (
    CALIBRATION_PATH_DESCRIPTIONS,
    DEFAULT_SCORE,
    DEFAULT_THRESHOLD_PERCENTILE,
    MONTE_CARLO_SCORES,
    PIXELS_PATH,
    REFIT_PATH,
    SCORES,
    Calibration,
    ScoreBatch,
    Scorer,
)

logger = logging.getLogger("app.engine")
WARMUP_BATCH = 8
# Forward passes run at a few fixed batch sizes, as TensorRT's optimisation profiles and
# Triton's preferred batch sizes do: n images are padded with blank rows up to the next of
# 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... (four sizes per octave,
# so at most a fifth of a pass is padding). oneDNN compiles ~11 kernels per input shape into
# a bounded cache. With every size from 1 to 256 possible, that cache either thrashed or,
# made large, kept growing resident memory. On a mix of batch sizes like that of one-image
# traffic: 0.39 ms of CPU per image with a 128-entry cache, 0.27-0.31 with buckets, padding
# included. The buckets make the set of shapes small and fixed; start-up compiles them all.
SIZES_PER_OCTAVE = 4

# What `sample` can draw from; the card lists the ones a checkpoint has.
STANDARD_PRIOR: dict[str, Any] = {
    "name": "standard",
    "distribution": "standard normal N(0, I) over the latent_dim dimensions",
    "temperature": "/sample multiplies the standard deviation by its temperature",
}

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Thresholds:
    """How the anomaly threshold of a reply was chosen."""

    value: float
    source: str  # "validation p99", "fpr=0.05" or "request"


@dataclass
class CalibratedPath:
    """What turns scores into percentiles for one input path (vae_common.scoring's
    CALIBRATION_PATHS): the default score's fitted components and every score's table, from
    validation digits sent that way."""

    name: str
    scorer: Scorer
    calibrations: dict[str, Calibration]
    default_thresholds: dict[str, Thresholds]


@dataclass
class Engine:
    checkpoint: Checkpoint
    execution: Execution
    # "pixels" always; "refit" when the checkpoint has a calibration for refitted pictures.
    paths: dict[str, CalibratedPath]
    unavailable: dict[str, str]  # the scores it cannot serve, and why
    default_score: str
    load_seconds: float = 0.0
    # The priors `sample` can draw from (name -> description for the card), the one it
    # draws from unless told, and why the fitted one is missing when it is.
    priors: dict[str, dict[str, Any]] = field(init=False)
    default_prior: str = field(init=False)
    unavailable_priors: dict[str, str] = field(init=False)
    # v1 checkpoints lack the one-pass method; they reconstruct and score in two passes.
    reconstructs_in_one_pass: bool = field(init=False)

    def __post_init__(self) -> None:
        self.reconstructs_in_one_pass = hasattr(self.checkpoint.module, "reconstruct_with_terms")
        self.priors, self.unavailable_priors = _priors(self.checkpoint)
        self.default_prior = "fitted" if "fitted" in self.priors else "standard"

    @property
    def calibrations(self) -> dict[str, Calibration]:
        """The scores this checkpoint can serve (every path has the same ones)."""
        return self.paths[PIXELS_PATH].calibrations

    def calibration_groups(self, refit: np.ndarray) -> dict[str, list[int]]:
        """Row indices by the calibration each row gets: a picture preprocess=mnist refitted
        takes `refit`, anything else `pixels`; a checkpoint without a refit calibration
        (model v1) scores every input as pixels. In order of first appearance."""
        if REFIT_PATH not in self.paths or not refit.any():
            return {PIXELS_PATH: list(range(len(refit)))}
        groups: dict[str, list[int]] = {}
        for index, refitted in enumerate(refit.tolist()):
            groups.setdefault(REFIT_PATH if refitted else PIXELS_PATH, []).append(index)
        return groups

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def latent_dim(self) -> int:
        return self.checkpoint.latent_dim

    @property
    def device(self) -> torch.device:
        return self.execution.device

    # --- primitives: (B, ...) CPU tensors in, CPU tensors with B rows out ---------------

    def score(
        self, x: torch.Tensor, score_name: str, k: int | None, path: str = PIXELS_PATH
    ) -> ScoreBatch:
        """(B, 1, 28, 28) -> per-image (B,) score, reconstruction loss and KL, the default
        score's components calibrated for input path `path`."""
        scorer = self.paths[path].scorer

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = scorer.score(x, score_name, k)
            return result.score, result.reconstruction_loss, result.kl

        return ScoreBatch(*self.run(x, forward))

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) -> reconstructions (B, 1, 28, 28) and reconstruction loss (B,)."""

        module = self.checkpoint.module

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.reconstructs_in_one_pass:
                reconstruction, recon_loss, _, _ = module.reconstruct_with_terms(x)
                return reconstruction, recon_loss
            recon_loss, _ = module.score(x)
            return module.reconstruct(x), recon_loss

        reconstruction, recon_loss = self.run(x, forward)
        return reconstruction, recon_loss

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) -> posterior mean and log-variance, each (B, latent_dim)."""
        mu, logvar = self.run(x, lambda x: tuple(self.checkpoint.module.encode(x)))
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) latents -> (B, 1, 28, 28) pixel means in [0, 1]."""
        (digits,) = self.run(z, lambda z: (self.checkpoint.module.decode(z),))
        return digits

    def sample(
        self, n: int, temperature: float, seed: int, prior: str | None = None
    ) -> torch.Tensor:
        """n draws from `prior` (None: `default_prior`), decoded: (n, 1, 28, 28).

        standard: N(0, temperature^2 I). fitted: the checkpoint's mixture, its components'
        spread scaled by temperature (`prior_latents`). The draws come from a CPU generator,
        so a seed means the same digits on any device: first the (n, D) normals (alone, they
        are the standard prior's draw, as before fitted priors), then n uniforms that pick
        the mixture components.
        """
        prior = prior or self.default_prior
        self.check_prior(prior)
        generator = torch.Generator().manual_seed(seed)
        eps = torch.randn(n, self.latent_dim, generator=generator)
        if prior == "standard":
            return self.decode(eps * temperature)
        uniform = torch.rand(n, 1, generator=generator)
        module = self.checkpoint.module

        def forward(draws: torch.Tensor) -> tuple[torch.Tensor]:
            # One (n, 1 + D) tensor through `run`: device placement and batch buckets as for
            # any pass (a blank padding row picks the first component).
            uniform, eps = draws[:, 0].contiguous(), draws[:, 1:]
            return (module.prior_latents(uniform, eps, temperature),)

        (latents,) = self.run(torch.cat([uniform, eps], dim=1), forward)
        return self.decode(latents)

    def run(self, x: torch.Tensor, forward: Forward) -> tuple[torch.Tensor, ...]:
        """forward(x) at x's bucketed batch size; each output cut back to len(x) rows, on
        the CPU. Every computation is per row, so blank padding rows change no real row."""
        rows = padded_batch_size(len(x))
        execution = self.execution
        with execution.running(rows), torch.inference_mode():
            outputs = forward(execution.to_device(_pad_rows(x, rows)))
        return tuple(execution.to_host(output[: len(x)]) for output in outputs)

    # --- calibration: lookups, no model run -----------------------------------------------

    def check_available(self, score_name: str) -> None:
        if score_name not in self.calibrations:
            why = self.unavailable.get(score_name, "not a score this service computes")
            raise InvalidInputError(
                f"score {score_name} is unavailable with model {self.model_id} ({why}); "
                f"use one of {sorted(self.calibrations)}"
            )

    def check_prior(self, prior: str) -> None:
        if prior not in self.priors:
            why = self.unavailable_priors.get(prior, "not a prior this service draws from")
            raise InvalidInputError(
                f"prior={prior} is unavailable with model {self.model_id}: {why}; send "
                f"prior={self.default_prior} or leave prior out (priors: {sorted(self.priors)})"
            )

    def threshold(
        self,
        score_name: str,
        threshold: float | None,
        fpr: float | None,
        path: str = PIXELS_PATH,
    ) -> Thresholds:
        if threshold is not None:
            return Thresholds(threshold, "request")
        calibrated = self.paths[path]
        if fpr is not None:
            value = calibrated.calibrations[score_name].threshold_for_fpr(fpr)
            return Thresholds(value, f"fpr={fpr:g}")
        return calibrated.default_thresholds[score_name]

    def percentiles(
        self, score_name: str, scores: np.ndarray, path: str = PIXELS_PATH
    ) -> np.ndarray:
        return self.paths[path].calibrations[score_name].percentile(scores)

    def card(self) -> dict[str, Any]:
        metadata = self.checkpoint.metadata
        card = {
            "model_id": self.model_id,
            # The name only: the server's folder layout is none of a caller's business.
            "file": self.checkpoint.path.name,
            "sha256": self.checkpoint.file_sha256,
            "weights_sha256": metadata["weights_sha256"],
            "device": str(self.device),
            # VAE_PRECISION: "bf16" when large batches run under bfloat16 autocast.
            "precision": self.execution.precision,
            # VAE_CHANNELS_LAST: convolution weights in NHWC order (CPU).
            "channels_last": self.execution.channels_last,
            "architecture": metadata["architecture"],
            "latent_dim": self.latent_dim,
            # What /sample draws from unless told, then every prior it can draw from.
            "prior": self.priors[self.default_prior],
            "priors": self.priors,
            "preprocessing": metadata["preprocessing"],
            "metrics": metadata["metrics"],
            "calibration": metadata.get("calibration", {}),
            "calibration_paths": {name: CALIBRATION_PATH_DESCRIPTIONS[name] for name in self.paths},
            "default_score": self.default_score,
            "scores": {
                name: {"definition": SCORES[name].definition, "default_k": SCORES[name].default_k}
                for name in self.calibrations
            },
            "training": {
                name: _folder_hidden(value) for name, value in metadata.get("training", {}).items()
            },
            "dataset": metadata.get("dataset", {}),
            "environment": metadata.get("environment", {}),
        }
        if self.unavailable:
            card["unavailable_scores"] = dict(self.unavailable)
        if self.unavailable_priors:
            card["unavailable_priors"] = dict(self.unavailable_priors)
        return card


def _priors(checkpoint: Checkpoint) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The priors the checkpoint can be sampled from, each with the card's description, and
    why the fitted one is missing, if it is. Fitted needs both the exported method and a
    mixture recorded in the metadata: until fitted, `prior_latents` is N(0, I) itself."""
    fit = checkpoint.metadata.get("prior")
    if not hasattr(checkpoint.module, "prior_latents"):
        why = "this checkpoint predates fitted priors (it exports no prior_latents)"
    elif not isinstance(fit, dict) or fit.get("kind") != "gaussian_mixture":
        why = "this checkpoint was exported without fitting one"
    else:
        return {"standard": STANDARD_PRIOR, "fitted": _fitted_prior(fit)}, {}
    return {"standard": STANDARD_PRIOR}, {"fitted": why}


def _fitted_prior(fit: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "fitted",
        "distribution": f"mixture of {fit.get('components')} full-covariance Gaussians fitted "
        f"to the {fit.get('fitted_on', 'training codes')} (ex-post density estimation)",
        "temperature": "/sample multiplies each component's spread by its temperature; "
        "component weights and means stay",
        "fit": fit,
    }


def _folder_hidden(value: object) -> object:
    # A run trained with an absolute --out or --data-root would show the server's folders.
    if isinstance(value, str) and PurePath(value).is_absolute():
        return PurePath(value).name
    return value


class EngineHolder:
    """The engine jobs run on, read once per batch: replacing `current` (a reload) takes
    effect between batches, never inside one."""

    def __init__(self, engine: Engine) -> None:
        self.current = engine
        self._reloading = threading.Lock()  # one reload at a time

    def reload(self, model_path: Path, warm_up_rows: int) -> Engine:
        """Blocking, off the event loop: load, verify and warm up the checkpoint beside the
        serving engine, on the same Execution, then switch with one assignment (atomic for
        the batches that read `current`). Raises CheckpointError (or whatever the warm-up
        raised); `current` is then unchanged."""
        with self._reloading:
            engine = load_engine(model_path, self.current.execution, warm_up_rows)
            self.current = engine
        return engine


def padded_batch_size(rows: int) -> int:
    """The bucket a batch of `rows` images runs at (see SIZES_PER_OCTAVE): rows itself up to
    4, then the next multiple of an eighth of the power of two at or above rows."""
    if rows <= SIZES_PER_OCTAVE:
        return rows
    octave_top = 1 << (rows - 1).bit_length()
    step = octave_top // (2 * SIZES_PER_OCTAVE)
    return -(-rows // step) * step


def batch_buckets(max_rows: int) -> list[int]:
    """Every bucket a batch of 1 to max_rows images can land in, ascending."""
    return sorted({padded_batch_size(rows) for rows in range(1, max_rows + 1)})


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(n, ...) -> (rows, ...): x followed by zero rows."""
    if len(x) == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def load_engine(
    model_path: Path, execution: Execution | None = None, warm_up_rows: int = WARMUP_BATCH
) -> Engine:
    """Load, verify and warm up the checkpoint; raises CheckpointError.

    Warm-up runs every batch bucket up to `warm_up_rows` images, so that serving never
    compiles a kernel (the service passes VAE_BATCH_MAX_SIZE). A score the checkpoint has
    no calibration for is left out and reported, not fatal."""
    started = time.perf_counter()
    execution = execution or CpuExecution()
    checkpoint = load_checkpoint(model_path, execution.device)
    execution.prepare(checkpoint.module)
    calibration = checkpoint.metadata.get("calibration", {})
    unavailable = _unavailable_scores(calibration)
    if unavailable:
        logger.warning(
            "%s: scores unavailable: %s; export it with this version of vae-train",
            model_path,
            "; ".join(f"{name} ({why})" for name, why in unavailable.items()),
        )
    paths = {PIXELS_PATH: _calibrated_path(PIXELS_PATH, checkpoint, calibration, unavailable)}
    refit = calibration.get("paths", {}).get(REFIT_PATH)
    if refit is not None and not _unavailable_scores(refit).keys() - unavailable.keys():
        paths[REFIT_PATH] = _calibrated_path(REFIT_PATH, checkpoint, refit, unavailable)
    default_score = str(calibration.get("default_score", DEFAULT_SCORE))
    engine = Engine(checkpoint, execution, paths, unavailable, default_score)
    _warm_up(engine, warm_up_rows)
    engine.load_seconds = time.perf_counter() - started
    return engine


def _unavailable_scores(calibration: dict[str, Any]) -> dict[str, str]:
    """The scores a calibration block has no table (or components) for, and why."""
    tables = calibration.get("scores", {})
    unavailable = {
        name: "no calibration table in the checkpoint" for name in SCORES if name not in tables
    }
    if calibration.get("components") is None and DEFAULT_SCORE not in unavailable:
        unavailable[DEFAULT_SCORE] = "no fitted score components in the checkpoint"
    return unavailable


def _calibrated_path(
    name: str, checkpoint: Checkpoint, calibration: dict[str, Any], unavailable: dict[str, str]
) -> CalibratedPath:
    tables = calibration.get("scores", {})
    calibrations = {
        score: Calibration.from_table(tables[score]) for score in SCORES if score not in unavailable
    }
    percentile = calibration.get("default_threshold_percentile", DEFAULT_THRESHOLD_PERCENTILE)
    defaults = {
        score: Thresholds(
            table.threshold_for_fpr(1.0 - percentile / 100.0), f"validation p{percentile:g}"
        )
        for score, table in calibrations.items()
    }
    scorer = Scorer(checkpoint.module, calibration.get("components"))
    return CalibratedPath(name, scorer, calibrations, defaults)


def _warm_up(engine: Engine, max_rows: int) -> None:
    """Run every code path once, and one forward pass at every batch bucket up to
    max_rows, so that no request pays for lazy initialisation or kernel compilation.

    The default score runs the encoder and the decoder at the bucket's size: reconstruction
    and sampling then find all their kernels compiled (checked with ONEDNN_VERBOSE: no
    cache miss after this)."""
    x = torch.rand(WARMUP_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    for prior in engine.priors:
        engine.sample(WARMUP_BATCH, 1.0, 0, prior)
    engine.reconstruct(x)
    engine.encode(x)
    for name in engine.calibrations:
        engine.score(x, name, None)
    # Other paths differ only in their calibration lookups: the same forward passes.
    for path in engine.paths.keys() - {PIXELS_PATH}:
        for name in engine.calibrations.keys() - set(MONTE_CARLO_SCORES):
            engine.score(x, name, None, path)
    # Without the default score's calibration, the reconstruction score makes the same
    # encoder and decoder passes.
    bucket_score = (
        engine.default_score if engine.default_score in engine.calibrations else "reconstruction"
    )
    for rows in batch_buckets(max_rows):
        engine.score(torch.rand(rows, 1, IMAGE_SIZE, IMAGE_SIZE), bucket_score, None)
    engine.execution.after_warm_up()
