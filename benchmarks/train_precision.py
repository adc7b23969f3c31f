"""Model v2's training step under each numeric and memory-layout option, side by side in one
run: float32, bfloat16 autocast, channels_last (each alone and together) and torch.compile.

Every variant trains the same architecture from the same initial weights on the same
batches in the same order (one epoch over `--images` training images, batch 128, Adam
1e-3), then reports wall and CPU seconds per epoch (past the first steps, which hold
torch.compile's compilation and are reported apart) and the validation negative ELBO in
float32 (same evaluation for all), so a faster variant is only a win at equal loss.
Variants run in turn, each `--rounds` times, alternating, and the median is reported.

    python -m benchmarks.train_precision --data-root ../shared/data [--images 12800]
        [--rounds 1] [--threads 2] [--variants fp32 bf16 ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.data import iterate_batches, load_mnist
from training.model import VAE, ModelConfig, build_model
from training.train import evaluate, train_one_epoch

BATCH_SIZE = 128
WARM_UP_STEPS = 3


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # "fp32" or "bf16" (train_one_epoch's autocast)
    channels_last: bool = False
    compiled: bool = False


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("fp32", "fp32"),
        Variant("bf16", "bf16"),
        Variant("fp32+channels_last", "fp32", channels_last=True),
        Variant("bf16+channels_last", "bf16", channels_last=True),
        Variant("fp32+compile", "fp32", compiled=True),
        Variant("bf16+compile", "bf16", compiled=True),
    )
}


@dataclass(frozen=True)
class Epoch:
    warm_up_s: float  # the first WARM_UP_STEPS steps (compilation, for compiled variants)
    wall_s: float  # the rest, scaled to the whole epoch
    cpu_s: float
    val_loss: float


def train_variant(
    variant: Variant, initial: VAE, train: torch.Tensor, val: torch.Tensor, seed: int
) -> Epoch:
    model = copy.deepcopy(initial)
    layout = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    trained: nn.Module = model
    if variant.compiled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trained = torch.compile(model)  # type: ignore[assignment]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    generator = torch.Generator().manual_seed(seed)
    batches = [
        x.contiguous(memory_format=layout)
        for x in iterate_batches(train, BATCH_SIZE, train.device, generator)
    ]
    torch.manual_seed(seed)  # the reparameterisation noise
    # The first steps apart: they hold torch.compile's compilation (tens of seconds), paid
    # once per run, not per epoch.
    warm_up = time.perf_counter()
    step = _train(trained, batches[:WARM_UP_STEPS], optimizer, scheduler, 0, variant)
    warm_up = time.perf_counter() - warm_up
    wall, cpu = time.perf_counter(), time.process_time()
    _train(trained, batches[WARM_UP_STEPS:], optimizer, scheduler, step, variant)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.manual_seed(seed)
    loss = evaluate(model, iterate_batches(val, 1024, val.device)).loss
    scale = len(batches) / max(len(batches) - WARM_UP_STEPS, 1)
    return Epoch(warm_up, wall * scale, cpu * scale, loss)


def _train(
    model: nn.Module,
    batches: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    variant: Variant,
) -> int:
    _, step = train_one_epoch(
        model,  # type: ignore[arg-type]
        batches,
        optimizer,
        scheduler,
        step,
        0,
        1.0,
        variant.precision,
    )
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--images", type=int, default=12_800, help="training images per epoch")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_mnist(args.data_root, val_size=5000)
    train, val = splits.train[: args.images], splits.val
    torch.manual_seed(args.seed)
    initial = build_model(ModelConfig.for_arch("resconv", 32))
    results: dict[str, list[Epoch]] = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            results[name].append(train_variant(VARIANTS[name], initial, train, val, args.seed))
            print(f"  {name}: {results[name][-1]}", flush=True)
    print(
        f"\nModel v2 (resconv), one epoch over {len(train)} images, batch {BATCH_SIZE}, "
        f"{torch.get_num_threads()} torch threads, median of {args.rounds} round(s); "
        "validation -ELBO in float32 after the epoch\n"
    )
    print(
        "| variant | first 3 steps s | wall s / epoch | CPU s / epoch | x fp32 (CPU) "
        "| validation -ELBO |"
    )
    print("|---|---|---|---|---|---|")
    baseline = _median(results, args.variants[0], lambda e: e.cpu_s)
    for name in args.variants:
        cpu = _median(results, name, lambda e: e.cpu_s)
        print(
            f"| {name} | {_median(results, name, lambda e: e.warm_up_s):.1f} "
            f"| {_median(results, name, lambda e: e.wall_s):.1f} | {cpu:.1f} | "
            f"{baseline / cpu:.2f} | {_median(results, name, lambda e: e.val_loss):.2f} |"
        )
    scale = 55_000 / len(train)
    print(f"\n(a full epoch is {scale:.1f}x these; the first variant is the ratio's baseline)")


def _median(results: dict[str, list[Epoch]], name: str, field: Callable[[Epoch], float]) -> float:
    return statistics.median(field(epoch) for epoch in results[name])


if __name__ == "__main__":
    main()
