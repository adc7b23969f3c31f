"""The loaded model and the inference it performs; no HTTP in here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_common.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from vae_common.devices import resolve_device
from vae_common.pixels import IMAGE_SIZE
from vae_common.scoring import (
    DEFAULT_SCORE,
    SCORE_DEFINITIONS,
    Calibration,
    ScoreBatch,
    Scorer,
    default_samples,
)

logger = logging.getLogger("app.runtime")
WARMUP_BATCH = 8


@dataclass(frozen=True)
class Thresholds:
    """How the anomaly threshold of a reply was chosen."""

    value: float
    source: str  # "validation p99", "fpr=0.05" or "request"


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    device: torch.device
    scorer: Scorer
    calibrations: dict[str, Calibration]
    default_score: str
    load_seconds: float = 0.0
    cpu_threads: int = 1  # intra-op threads for large batches (torch's setting at load)
    # Per score: the validation percentile named in the checkpoint (p99), as a score.
    default_thresholds: dict[str, Thresholds] = field(init=False)

    def __post_init__(self) -> None:
        percentile = self.checkpoint.metadata["calibration"]["default_threshold_percentile"]
        self.default_thresholds = {
            name: Thresholds(
                calibration.threshold_for_fpr(1.0 - percentile / 100.0),
                f"validation p{percentile:g}",
            )
            for name, calibration in self.calibrations.items()
        }

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def latent_dim(self) -> int:
        return self.checkpoint.latent_dim

    def sample(self, n: int, temperature: float, seed: int) -> torch.Tensor:
        """n draws from N(0, temperature^2 I), decoded: (n, 1, 28, 28) on the CPU.

        The latents come from a CPU generator so a seed means the same digits on any device.
        """
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        with torch.inference_mode():
            digits: torch.Tensor = self.checkpoint.module.decode(z.to(self.device))
        return digits.cpu()

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) -> reconstructions (B, 1, 28, 28) and reconstruction loss (B,)."""
        with torch.inference_mode():
            x = x.to(self.device)
            reconstruction = self.checkpoint.module.reconstruct(x)
            recon_loss, _ = self.checkpoint.module.score(x)
        return reconstruction.cpu(), recon_loss.cpu()

    def score(self, x: torch.Tensor, score_name: str, k: int | None) -> ScoreBatch:
        result = self.scorer.score(x.to(self.device), score_name, k)
        return ScoreBatch(result.score.cpu(), result.reconstruction_loss.cpu(), result.kl.cpu())

    def threshold(self, score_name: str, threshold: float | None, fpr: float | None) -> Thresholds:
        if threshold is not None:
            return Thresholds(threshold, "request")
        if fpr is not None:
            return Thresholds(self.calibrations[score_name].threshold_for_fpr(fpr), f"fpr={fpr:g}")
        return self.default_thresholds[score_name]

    def percentiles(self, score_name: str, scores: np.ndarray) -> np.ndarray:
        return self.calibrations[score_name].percentile(scores)

    def card(self) -> dict[str, Any]:
        metadata = self.checkpoint.metadata
        return {
            "model_id": self.model_id,
            "path": str(self.checkpoint.path),
            "sha256": self.checkpoint.file_sha256,
            "weights_sha256": metadata["weights_sha256"],
            "device": str(self.device),
            "architecture": metadata["architecture"],
            "preprocessing": metadata["preprocessing"],
            "metrics": metadata["metrics"],
            "calibration": metadata["calibration"],
            "default_score": self.default_score,
            "scores": {
                name: {"definition": SCORE_DEFINITIONS[name], "default_k": default_samples(name)}
                for name in self.calibrations
            },
            "training": metadata.get("training", {}),
            "dataset": metadata.get("dataset", {}),
            "environment": metadata.get("environment", {}),
        }


def load_model(model_path: Path, device_choice: str) -> LoadedModel:
    """Load, verify and warm up the checkpoint; raises CheckpointError/DeviceUnavailableError."""
    started = time.perf_counter()
    device = resolve_device(device_choice, "VAE_DEVICE")
    checkpoint = load_checkpoint(model_path, device)
    calibration = checkpoint.metadata.get("calibration", {})
    tables = calibration.get("scores", {})
    missing = [name for name in SCORE_DEFINITIONS if name not in tables]
    if missing or "components" not in calibration:
        raise CheckpointError(
            f"{model_path} lacks calibration for {missing or ['default score components']}: "
            "export it with this version of vae-train"
        )
    calibrations = {name: Calibration.from_table(tables[name]) for name in SCORE_DEFINITIONS}
    default_score = str(calibration.get("default_score", DEFAULT_SCORE))
    scorer = Scorer(checkpoint.module, calibration["components"])
    loaded = LoadedModel(
        checkpoint, device, scorer, calibrations, default_score, cpu_threads=torch.get_num_threads()
    )
    _warm_up(loaded)
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _warm_up(model: LoadedModel) -> None:
    """Run every code path once so the first request does not pay for lazy initialisation."""
    x = torch.rand(WARMUP_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    model.sample(WARMUP_BATCH, 1.0, seed=0)
    model.reconstruct(x)
    for name in SCORE_DEFINITIONS:
        model.score(x, name, None)
