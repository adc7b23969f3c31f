"""What a run folder keeps between epochs: `last_state.pt` to resume from and
`metrics.jsonl`, one line per finished epoch.

The state holds tensors and plain Python values only, so that resuming reads it with
`torch.load(weights_only=True)`: loading a file never runs code that was pickled into it."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.config import TrainingSetupError
from training.model import VAE
from training.train import BestWeights, LossTerms

logger = logging.getLogger("vae-train")

STATE_FILE = "last_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class RunProgress:
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best: BestWeights = field(default_factory=BestWeights)
    step: int = 0  # optimiser steps taken


def start_or_resume(
    out: Path,
    resume: bool,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> RunProgress:
    """A fresh start (forgetting earlier epochs' metrics) or the progress saved in `out`,
    with the model, optimiser, scheduler and torch's RNG restored in place."""
    if not resume:
        (out / METRICS_FILE).unlink(missing_ok=True)
        return RunProgress()
    path = out / STATE_FILE
    if not path.exists():
        raise TrainingSetupError(f"--resume given but {path} does not exist; drop --resume")
    state = read_state(path)
    load_vae_weights(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    best = BestWeights(float(state["best_val_loss"]), int(state["best_epoch"]), state["best_state"])
    logger.info("resuming %s after epoch %d", out, len(state["history"]))
    return RunProgress(list(state["history"]), best, int(state["step"]))


def read_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingSetupError(
            f"cannot resume from {path}: it is not a state file this vae-train can read safely "
            f"({first_line}); start again without --resume or with another --out"
        ) from None
    return state


def save_state(
    path: Path,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: RunProgress,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "history": progress.history,
        "best_val_loss": float(progress.best.val_loss),
        "best_epoch": int(progress.best.epoch),
        "best_state": progress.best.state,
        "step": int(progress.step),
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # a crash mid-write never leaves a torn state file


def load_vae_weights(model: VAE, state: dict[str, torch.Tensor]) -> None:
    """Load encoder/decoder weights; the orientation head and the prior are fitted after
    training, so states saved without them (or with unfitted ones) are fine."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith(("orientation.", "prior.")) for key in missing):
        raise TrainingSetupError(
            f"the saved state does not match the model ({missing + unexpected}); "
            "resume with the flags the run started with (--arch, --latent-dim)"
        )


def epoch_record(
    epoch: int, train: LossTerms, val: LossTerms, step: int, seconds: float
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "train": train.to_dict(),
        "val": val.to_dict(),
        "seconds": seconds,
    }


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    with (out / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(record) + "\n")
