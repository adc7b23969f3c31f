"""Test-set likelihood of published checkpoints, side by side: negative ELBO (one posterior
sample per image) and the IWAE estimate of -log p(x) (Burda et al. 2016), in nats per image.

The same definitions and code as `vae-train`'s test metrics (training.pipeline.likelihood_bounds,
the same seed), run on the exported TorchScript module, so a checkpoint's figures
can be re-checked, or extended from the training run's fixed subset to the whole test set:

    python -m benchmarks.likelihood --data-root ../shared/data \
        [--models models/model.pt runs/v1/model.pt] [--iwae-images 1000] [--k 1000]

k=1000 decodes 1,000 latents per image: for model v2 on a 2-core CPU about 6 minutes per
1,000 test images, so the whole test set takes about an hour.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from app.config import DEFAULT_MODEL_PATH
from training.config import FULL_IWAE_K
from training.data import read_mnist_images
from training.model import VAE
from training.pipeline import iwae_subset, likelihood_bounds
from vae_common.checkpoint import load_checkpoint

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Likelihood:
    model_id: str
    neg_elbo: float
    iwae_nll: float
    # Under the checkpoint's fitted prior; None for one without (model v1).
    fitted_neg_elbo: float | None
    fitted_iwae_nll: float | None
    seconds: float  # all bounds


def measure(
    path: Path, test: torch.Tensor, iwae_images: torch.Tensor, k: int, seed: int
) -> Likelihood:
    """One checkpoint's test figures; `test` and `iwae_images` are (N, 28, 28) uint8."""
    checkpoint = load_checkpoint(path, CPU)
    # The scripted module exports forward(), importance_terms() and importance_weights() with
    # the training VAE's signatures, which is all evaluate() and importance_estimates() call.
    model = cast(VAE, checkpoint.module)
    started = time.perf_counter()
    elbo, iwae = likelihood_bounds(model, test, iwae_images, k, seed, CPU)
    return Likelihood(
        checkpoint.model_id,
        elbo.loss,
        iwae.iwae_nll,
        iwae.fitted_neg_elbo,
        iwae.fitted_iwae_nll,
        time.perf_counter() - started,
    )


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, nargs="+", default=[DEFAULT_MODEL_PATH])
    parser.add_argument("--k", type=int, default=FULL_IWAE_K, help="IWAE samples per image")
    parser.add_argument(
        "--iwae-images", type=int, default=None, help="a fixed random subset (default all)"
    )
    parser.add_argument("--seed", type=int, default=42, help="vae-train's default seed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = read_mnist_images(args.data_root, train=False)
    iwae_images = iwae_subset(test, args.iwae_images, args.seed)
    subset = "" if len(iwae_images) == len(test) else f" (a fixed subset, seed {args.seed})"
    print(
        f"MNIST test: -ELBO on all {len(test)} images, IWAE (k={args.k}) on "
        f"{len(iwae_images)}{subset}; nats per image, {args.threads} torch threads.\n"
    )
    print(
        "N(0, I): the prior the VAE trained with (v1's definitions). Fitted: the checkpoint's "
        "fitted prior, what /sample draws from; its -ELBO is the mean log weight of the IWAE "
        "draws, so it covers the IWAE images.\n"
    )
    print(
        "| checkpoint | test -ELBO, N(0, I) | IWAE NLL, N(0, I) | -ELBO, fitted prior "
        "| IWAE NLL, fitted prior | seconds |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for path in args.models:
        row = measure(path, test, iwae_images, args.k, args.seed)
        print(
            f"| `{path}` ({row.model_id}) | {row.neg_elbo:.3f} | {row.iwae_nll:.3f} "
            f"| {_cell(row.fitted_neg_elbo)} | {_cell(row.fitted_iwae_nll)} "
            f"| {row.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
