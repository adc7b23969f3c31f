"""Fitting the orientation head after the VAE: the encoder stays frozen, the head learns
which of the 8 dihedral transforms produced each (transformed) training digit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.data import batch_count, iterate_batches
from training.model import ORIENTATIONS, VAE, dihedral
from training.progress import track


@dataclass(frozen=True)
class OrientationConfig:
    images: int = 12_000  # training digits used, each in all 8 orientations
    epochs: int = 6
    batch_size: int = 512
    lr: float = 2e-3


@torch.no_grad()
def dihedral_features(model: VAE, images: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """uint8 (N, 28, 28) -> encoder features (8N, H) of every orientation and labels (8N,)."""
    model.eval()
    features, labels = [], []
    batches = iterate_batches(images, 1024, device)
    for x in track(batches, batch_count(images, 1024), "orientation head: encoding"):
        for index in range(ORIENTATIONS):
            features.append(model.encoder.hidden(dihedral(x, index)))
            labels.append(torch.full((len(x),), index, dtype=torch.long, device=device))
    return torch.cat(features), torch.cat(labels)


def fit_orientation_head(
    model: VAE,
    train_images: Tensor,
    val_images: Tensor,
    device: torch.device,
    seed: int,
    config: OrientationConfig | None = None,
) -> dict[str, float]:
    """Train `model.orientation` in place; returns its accuracy on validation orientations."""
    config = config or OrientationConfig()
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train_images), generator=generator)[: config.images]
    features, labels = dihedral_features(model, train_images[chosen], device)
    head = model.orientation
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    for _ in track(range(config.epochs), config.epochs, "orientation head: fitting"):
        order = torch.randperm(len(features), generator=generator).to(device)
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            loss = F.cross_entropy(head(features[rows]), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    return {"orientation_val_accuracy": round(_accuracy(model, val_images, device), 4)}


@torch.no_grad()
def _accuracy(model: VAE, images: Tensor, device: torch.device) -> float:
    if len(images) == 0:
        return float("nan")
    features, labels = dihedral_features(model, images, device)
    return float((model.orientation(features).argmax(1) == labels).float().mean())
