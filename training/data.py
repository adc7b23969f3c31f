"""MNIST as three uint8 tensors, batched by indexing (no per-sample PIL transforms)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from training.config import TrainingSetupError
from vae_common.pixels import to_unit_interval

logger = logging.getLogger("vae-train")
_IDX_PREFIX = {True: "train", False: "t10k"}


class DatasetUnavailableError(RuntimeError):
    """MNIST is neither on disk nor downloadable; the message says where we looked."""


@dataclass(frozen=True)
class MnistSplits:
    train: torch.Tensor  # (N_train, 28, 28) uint8
    val: torch.Tensor  # (N_val, 28, 28) uint8, the last val_size images of the 60k train set
    test: torch.Tensor  # (10000, 28, 28) uint8
    fingerprint: str  # sha256 of the train and test image bytes as read from disk


def read_mnist_images(root: Path, train: bool, download: bool = True) -> torch.Tensor:
    """One split of MNIST as (N, 28, 28) uint8, downloading it first if it is missing."""
    from torchvision.datasets import MNIST  # torchvision is a training-only dependency

    # torchvision prints its download attempts; keep them for the error message instead.
    chatter = io.StringIO()
    raw_images = root / "MNIST" / "raw" / f"{_IDX_PREFIX[train]}-images-idx3-ubyte"
    if download and not raw_images.exists():
        logger.info("MNIST is not under %s; downloading it there (about 12 MB)", root.resolve())
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            dataset = MNIST(root=str(root), train=train, download=download)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise DatasetUnavailableError(
            f"MNIST is not under {root.resolve() / 'MNIST' / 'raw'} and could not be downloaded "
            f"({type(exc).__name__}: {reason}). "
            "Fix: point --data-root (or VAE_DATA_ROOT) at a folder holding MNIST/raw/ "
            "in torchvision's layout, or run once with internet access."
        ) from None
    images: torch.Tensor = dataset.data
    return images


def load_mnist(root: Path, val_size: int, limit: int | None = None) -> MnistSplits:
    """Train/validation/test splits; `limit` keeps the first N training images (smoke runs)."""
    full_train = read_mnist_images(root, train=True)
    test = read_mnist_images(root, train=False)
    if not 0 <= val_size < len(full_train):
        raise TrainingSetupError(
            f"--val-size must be between 0 and {len(full_train) - 1} (this MNIST has "
            f"{len(full_train)} training images), got {val_size}"
        )
    digest = hashlib.sha256(full_train.numpy().tobytes())
    digest.update(test.numpy().tobytes())
    train, val = full_train[: len(full_train) - val_size], full_train[len(full_train) - val_size :]
    if limit is not None:
        train = train[:limit]
        val = val[:limit]
        test = test[:limit]
    return MnistSplits(train=train, val=val, test=test, fingerprint=digest.hexdigest())


def iterate_batches(
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield (B, 1, 28, 28) float batches in [0, 1]; shuffled when a generator is given.

    `images` should already live on `device` (see `to_device`), so a batch is one gather.
    """
    count = len(images)
    order = (
        torch.randperm(count, generator=generator).to(images.device)
        if generator is not None
        else torch.arange(count, device=images.device)
    )
    for start in range(0, count, batch_size):
        yield to_unit_interval(images[order[start : start + batch_size]]).to(device)


def batch_count(images: torch.Tensor, batch_size: int) -> int:
    return (len(images) + batch_size - 1) // batch_size
