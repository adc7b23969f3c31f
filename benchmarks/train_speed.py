"""One training epoch of the reference MLP VAE: this project's data path against the
reference example's `DataLoader` + `ToTensor` loop, over the same images, in one run.

Both sides train the same architecture (784-400-20, Adam lr 1e-3, batch 128) from the same
initial weights on the same 55,000 training images; only the way batches are produced and
the loss is computed differs:
- reference: `torchvision.datasets.MNIST(transform=ToTensor())` -> `DataLoader(shuffle=True)`
  -> per-sample PIL conversion and collation, sigmoid + `binary_cross_entropy`;
- ours: the split loaded once as one uint8 tensor, batches drawn by indexing
  (`training.data.iterate_batches`), BCE on logits (`training.train.train_one_epoch`).

    python -m benchmarks.train_speed --data-root ../shared/data [--epochs 1] [--threads 2]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from training.data import iterate_batches, load_mnist
from training.model import VAE, ModelConfig, build_model
from training.train import train_one_epoch
from vae_common.devices import resolve_device

BATCH_SIZE = 128
TRAIN_IMAGES = 55_000


def reference_epoch(
    model: VAE, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> float:
    """The reference example's train(): sigmoid outputs and summed BCE, per-sample loading."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for batch, _ in loader:
        data = batch.to(device)
        optimizer.zero_grad()
        logits, mu, logvar = model(data)
        recon = torch.sigmoid(logits)
        bce = F.binary_cross_entropy(recon.view(-1, 784), data.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def our_epoch(model: VAE, images: torch.Tensor, seed: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    batches = iterate_batches(images, BATCH_SIZE, images.device, generator)
    train_one_epoch(model, batches, optimizer, scheduler, 0, 0, 1.0)
    synchronize(images.device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so an epoch's time includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed on each side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (benchmarks/gpu.sh)")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    torch.set_num_threads(args.threads)

    from torchvision import datasets, transforms

    torch.manual_seed(args.seed)
    initial = build_model(ModelConfig(arch="mlp", latent_dim=20)).to(device)
    dataset = datasets.MNIST(str(args.data_root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(Subset(dataset, range(TRAIN_IMAGES)), batch_size=BATCH_SIZE, shuffle=True)
    images = load_mnist(args.data_root, val_size=60_000 - TRAIN_IMAGES).train.to(device)

    reference_times, our_times = [], []
    for epoch in range(args.epochs):
        reference_times.append(reference_epoch(copy.deepcopy(initial), loader, device))
        our_times.append(our_epoch(copy.deepcopy(initial), images, args.seed + epoch))
    reference, ours = min(reference_times), min(our_times)
    print(
        f"MLP VAE, one epoch over {TRAIN_IMAGES} images, batch {BATCH_SIZE}, "
        f"{device}, {torch.get_num_threads()} torch threads, best of {args.epochs}\n"
    )
    print("| data path | seconds / epoch | images / s |")
    print("|---|---|---|")
    print(
        f"| reference: DataLoader + ToTensor | {reference:.2f} | {TRAIN_IMAGES / reference:,.0f} |"
    )
    print(f"| ours: uint8 tensor, indexed batches | {ours:.2f} | {TRAIN_IMAGES / ours:,.0f} |")
    print(f"\nspeed-up: {reference / ours:.2f}x")


if __name__ == "__main__":
    main()
