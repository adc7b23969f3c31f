"""`vae-train`: train a VAE on MNIST and export a self-describing TorchScript checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from training.config import FULL_IWAE_K, TrainConfig, TrainingSetupError, iwae_k_for_limit
from training.data import DatasetUnavailableError
from training.model import ARCHITECTURES
from training.pipeline import run
from training.state import STATE_FILE

logger = logging.getLogger("vae-train")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the flag, the value and what is allowed (the usage block that
        # argparse prints by default buries it); exit 2 as argparse does.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Leave out "(default: None)" and "(default: False)": those helps say it in words.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _bounded(
    kind: Callable[[str], int | float], allowed: str, ok: Callable[[float], bool]
) -> Callable[[str], int | float]:
    name = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name} {allowed}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


POSITIVE_INT = _bounded(int, ">= 1", lambda value: value >= 1)
NON_NEGATIVE_INT = _bounded(int, ">= 0", lambda value: value >= 0)
POSITIVE_FLOAT = _bounded(float, "> 0", lambda value: value > 0)
NON_NEGATIVE_FLOAT = _bounded(float, ">= 0", lambda value: value >= 0)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = _Parser(prog="vae-train", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("VAE_DATA_ROOT", str(defaults.data_root))),
        help="folder holding MNIST/raw/ in torchvision's layout, downloaded there when missing "
        "and online (env VAE_DATA_ROOT sets the default)",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default=defaults.arch,
        help="network shape: resconv is model v2, conv model v1, mlp the reference example's",
    )
    parser.add_argument(
        "--latent-dim", type=POSITIVE_INT, default=None, help="default: 32 for conv, 20 for mlp"
    )
    parser.add_argument(
        "--epochs",
        type=POSITIVE_INT,
        default=defaults.epochs,
        help="passes over the training split",
    )
    parser.add_argument(
        "--batch-size", type=POSITIVE_INT, default=defaults.batch_size, help="images per step"
    )
    parser.add_argument("--lr", type=POSITIVE_FLOAT, default=defaults.lr, help="Adam learning rate")
    parser.add_argument(
        "--beta", type=NON_NEGATIVE_FLOAT, default=defaults.beta, help="weight of the KL term"
    )
    parser.add_argument(
        "--kl-warmup-epochs",
        type=NON_NEGATIVE_FLOAT,
        default=defaults.kl_warmup_epochs,
        help="ramp the KL weight linearly from 0 to --beta over this many epochs (0: off)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=["cosine", "constant"],
        default=defaults.lr_schedule,
        help="cosine: anneal the learning rate to 0 over all epochs; constant: as the reference",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="for every random draw")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=defaults.device,
        help="auto: the GPU when PyTorch sees one",
    )
    parser.add_argument(
        "--val-size",
        type=NON_NEGATIVE_INT,
        default=defaults.val_size,
        help="validation images, taken from the end of MNIST's 60,000 training images",
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="run folder to write")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE}")
    parser.add_argument(
        "--limit",
        type=POSITIVE_INT,
        default=None,
        help="use only the first N images of each split (smoke runs); default: all",
    )
    parser.add_argument(
        "--iwae-k",
        type=POSITIVE_INT,
        default=None,
        help=f"importance samples for the test-set IWAE NLL; default: {FULL_IWAE_K}, "
        "scaled down under --limit",
    )
    parser.add_argument(
        "--iwae-images",
        type=POSITIVE_INT,
        default=None,
        help="estimate the test-set IWAE NLL on this many test images (a fixed random subset "
        "drawn from --seed); default: all",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=defaults.precision,
        help="bf16: the training forward pass under bfloat16 autocast (weights, losses and "
        "every evaluation stay float32); faster on CPUs with AMX/AVX-512 BF16 and recent GPUs",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="train with convolutions in channels_last (NHWC) memory order; with --precision "
        "bf16 an epoch took 12.4 against 14.6 CPU s here (benchmarks/train_precision.py)",
    )
    parser.add_argument(
        "--encoder-noise",
        type=NON_NEGATIVE_FLOAT,
        default=defaults.encoder_noise,
        help="train a denoising encoder: Gaussian noise of this standard deviation added to "
        "its input (pixels in [0, 1]) while the decoder reconstructs the clean digit; "
        "regularises against overfitting; 0: none",
    )
    parser.add_argument(
        "--weight-decay",
        type=NON_NEGATIVE_FLOAT,
        default=defaults.weight_decay,
        help="decoupled weight decay (AdamW) against overfitting; 0: plain Adam",
    )
    parser.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="torch CPU threads; default: torch's"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    return config_from(build_parser().parse_args(argv))


def config_from(args: argparse.Namespace) -> TrainConfig:
    settings = vars(args).copy()
    if settings["iwae_k"] is None:
        settings["iwae_k"] = iwae_k_for_limit(settings["limit"])
    return TrainConfig(**settings)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    config = config_from(args)
    if args.iwae_k is None and config.iwae_k != FULL_IWAE_K:
        logger.info(
            "--limit %d: the test-set IWAE NLL uses k=%d instead of %d to keep the run short "
            "(pass --iwae-k to choose)",
            config.limit,
            config.iwae_k,
            FULL_IWAE_K,
        )
    try:
        run(config)
    except (DatasetUnavailableError, TrainingSetupError) as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
