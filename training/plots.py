"""Figures written after training, never from inside the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vae_common.grid import make_grid, png_bytes


def write_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot(epochs, [row["train"]["loss"] for row in history], marker="o", label="train")
    axis.plot(epochs, [row["val"]["loss"] for row in history], marker="o", label="validation")
    axis.set_xlabel("epoch")
    axis.set_ylabel("negative ELBO per image (nats)")
    axis.set_title("VAE training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_reconstructions(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: Path
) -> None:
    """(N, 1, 28, 28) test digits, each row of 8 directly above the row of its reconstructions."""
    per_row = min(8, len(originals))
    rows = [
        part
        for start in range(0, len(originals), per_row)
        for part in (originals[start : start + per_row], reconstructions[start : start + per_row])
    ]
    stacked = torch.cat(rows)
    path.write_bytes(png_bytes(make_grid(stacked, nrow=per_row), scale=2))


def write_samples(samples: torch.Tensor, path: Path) -> None:
    """(64, 1, 28, 28) draws from the prior as an 8x8 grid."""
    path.write_bytes(png_bytes(make_grid(samples, nrow=8), scale=2))
