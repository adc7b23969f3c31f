"""The loaded model and the inference it performs; no HTTP in here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
# Forward passes run at a few fixed batch sizes, as TensorRT's optimisation profiles and
# Triton's preferred batch sizes do: n images are padded with blank rows up to the next of
# 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... (four sizes per octave,
# so at most a fifth of a pass is padding). oneDNN compiles ~11 kernels per input shape into
# a bounded cache. With every size from 1 to 256 possible, that cache either thrashed or,
# made large, kept growing resident memory. On a mix of batch sizes like that of one-image
# traffic: 0.39 ms of CPU per image with a 128-entry cache, 0.27-0.31 with buckets, padding
# included. The buckets make the set of shapes small and fixed; start-up compiles them all.
SIZES_PER_OCTAVE = 4
# Batches smaller than this run on one intra-op thread (see intra_op_threads). One-image
# traffic forms batches of ~10-20 images; 64-image requests form batches of 64 and more.
SMALL_BATCH_IMAGES = 32


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
        (digits,) = self._run_padded(z, lambda z: (self.checkpoint.module.decode(z),))
        return digits

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) -> reconstructions (B, 1, 28, 28) and reconstruction loss (B,)."""

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            recon_loss, _ = self.checkpoint.module.score(x)
            return self.checkpoint.module.reconstruct(x), recon_loss

        reconstruction, recon_loss = self._run_padded(x, forward)
        return reconstruction, recon_loss

    def score(self, x: torch.Tensor, score_name: str, k: int | None) -> ScoreBatch:
        """(B, 1, 28, 28) -> per-image (B,) score, reconstruction loss and KL."""

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = self.scorer.score(x, score_name, k)
            return result.score, result.reconstruction_loss, result.kl

        return ScoreBatch(*self._run_padded(x, forward))

    def _run_padded(
        self, x: torch.Tensor, forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    ) -> tuple[torch.Tensor, ...]:
        """forward(x) at x's bucketed batch size; each output cut back to len(x) rows, on the CPU.

        Every computation is per row, so the blank padding rows change no real row's result.
        """
        rows = padded_batch_size(len(x))
        threads = 1 if rows < SMALL_BATCH_IMAGES else self.cpu_threads
        with intra_op_threads(threads), torch.inference_mode():
            outputs = forward(_pad_rows(x, rows).to(self.device))
        return tuple(output[: len(x)].cpu() for output in outputs)

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


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run torch ops on this thread with `count` intra-op threads.

    Small batches gain little from more threads (measured: 0.69 vs 0.66 ms for one image),
    and when many small requests keep the event loop busy, an OpenMP team that spins after
    each op takes the cores it needs. Large batches are the model's work alone: on 2 cores,
    64-image requests ran at 83-88 requests/s with two threads against 67-75 with one
    (serve_load, 3 rounds each, back to back).
    """
    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_model(
    model_path: Path,
    device_choice: str,
    warm_up_rows: int = WARMUP_BATCH,
    cpu_threads: int | None = None,
) -> LoadedModel:
    """Load, verify and warm up the checkpoint; raises CheckpointError/DeviceUnavailableError.

    Warm-up runs every batch bucket up to `warm_up_rows` images, so that serving never
    compiles a kernel (the service passes VAE_BATCH_MAX_SIZE). `cpu_threads`: intra-op
    threads for batches of SMALL_BATCH_IMAGES or more; torch's setting when None."""
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
    threads = cpu_threads or torch.get_num_threads()
    loaded = LoadedModel(
        checkpoint, device, scorer, calibrations, default_score, cpu_threads=threads
    )
    _warm_up(loaded, warm_up_rows)
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _warm_up(model: LoadedModel, max_rows: int) -> None:
    """Run every code path once, and the default score at every batch bucket up to
    max_rows, so that no request pays for lazy initialisation or kernel compilation.

    The default score runs the encoder and the decoder at the bucket's size: reconstruction
    and sampling then find all their kernels compiled (checked with ONEDNN_VERBOSE: no
    cache miss after this)."""
    x = torch.rand(WARMUP_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    model.sample(WARMUP_BATCH, 1.0, seed=0)
    model.reconstruct(x)
    for name in SCORE_DEFINITIONS:
        model.score(x, name, None)
    for rows in batch_buckets(max_rows):
        model.score(torch.rand(rows, 1, IMAGE_SIZE, IMAGE_SIZE), model.default_score, None)
