"""`vae-train`: train a VAE on MNIST and export a self-describing TorchScript checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.card import render_card
from training.data import (
    DatasetUnavailableError,
    MnistSplits,
    batch_count,
    iterate_batches,
    load_mnist,
)
from training.export import export_checkpoint, script_model
from training.model import VAE, ModelConfig, build_model
from training.orientation import fit_orientation_head
from training.plots import write_loss_curve, write_reconstructions, write_samples
from training.train import (
    BestWeights,
    LossTerms,
    active_units,
    evaluate,
    iwae_nll,
    timed,
    train_one_epoch,
)
from vae_common.checkpoint import state_dict_sha256
from vae_common.devices import DeviceUnavailableError, resolve_device
from vae_common.pixels import PixelSpec, to_unit_interval
from vae_common.scoring import calibrate_scores

logger = logging.getLogger("vae-train")

LATENT_DEFAULTS = {"conv": 32, "mlp": 20}
STATE_FILE = "last_state.pt"
TEST_METRICS_FILE = "test_metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    data_root: Path = Path("data")
    arch: str = "conv"
    latent_dim: int | None = None  # None: 32 for conv, 20 for mlp
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    kl_warmup_epochs: float = 2.0
    lr_schedule: str = "cosine"
    seed: int = 42
    device: str = "auto"
    val_size: int = 5000
    out: Path = Path("runs/latest")
    resume: bool = False
    limit: int | None = None
    iwae_k: int = 1000
    threads: int | None = None

    def model_config(self) -> ModelConfig:
        latent = self.latent_dim or LATENT_DEFAULTS[self.arch]
        return ModelConfig(arch=self.arch, latent_dim=latent)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="vae-train", description=__doc__)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("VAE_DATA_ROOT", str(defaults.data_root))),
        help="folder holding MNIST/raw in torchvision's layout (env VAE_DATA_ROOT; default ./data)",
    )
    parser.add_argument("--arch", choices=["conv", "mlp"], default=defaults.arch)
    parser.add_argument("--latent-dim", type=int, default=None, help="default: 32 conv, 20 mlp")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--beta", type=float, default=defaults.beta, help="weight of the KL term")
    parser.add_argument(
        "--kl-warmup-epochs",
        type=float,
        default=defaults.kl_warmup_epochs,
        help="ramp the KL weight linearly from 0 to --beta over this many epochs (0: off)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=["cosine", "constant"],
        default=defaults.lr_schedule,
        help="cosine: anneal the learning rate to 0 over all epochs; constant: as the reference",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=defaults.device)
    parser.add_argument("--val-size", type=int, default=defaults.val_size)
    parser.add_argument("--out", type=Path, default=defaults.out, help="run folder to write")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{STATE_FILE}")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--iwae-k", type=int, default=defaults.iwae_k)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    config = TrainConfig(**{key: value for key, value in vars(args).items()})
    _validate(parser, config)
    return config


def _validate(parser: argparse.ArgumentParser, config: TrainConfig) -> None:
    positive = {"epochs": config.epochs, "batch-size": config.batch_size, "iwae-k": config.iwae_k}
    for name, value in positive.items():
        if value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if config.limit is not None and config.limit < 1:
        parser.error(f"--limit must be at least 1, got {config.limit}")
    if config.lr <= 0 or config.beta < 0 or config.kl_warmup_epochs < 0:
        parser.error("--lr must be positive; --beta and --kl-warmup-epochs non-negative")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = parse_args(argv)
    try:
        run(config)
    except DatasetUnavailableError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate, calibrate and export; returns the published metadata."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        device = resolve_device(config.device, "--device")
    except DeviceUnavailableError as exc:
        raise SystemExit(f"vae-train: {exc}") from None
    seed_everything(config.seed)
    splits = load_mnist(config.data_root, config.val_size, config.limit)
    logger.info(
        "device %s; %d train, %d validation, %d test images",
        device,
        len(splits.train),
        len(splits.val),
        len(splits.test),
    )
    model_config = config.model_config()
    model = build_model(model_config).to(device)
    train_images, val_images = splits.train.to(device), splits.val.to(device)
    steps_per_epoch = batch_count(train_images, config.batch_size)
    # The orientation head is fitted after training (training/orientation.py), not here.
    vae_parameters = [*model.encoder.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.Adam(vae_parameters, lr=config.lr)
    scheduler = _lr_scheduler(optimizer, config.lr_schedule, config.epochs * steps_per_epoch)
    config.out.mkdir(parents=True, exist_ok=True)
    history, best, step = _start_or_resume(config, model, optimizer, scheduler)
    warmup_steps = round(config.kl_warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(len(history)):  # replay the shuffles of finished epochs on resume
        torch.randperm(len(train_images), generator=generator)
    for epoch in range(len(history) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        batches = tqdm(
            iterate_batches(train_images, config.batch_size, device, generator),
            total=batch_count(train_images, config.batch_size),
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=None,
        )
        train_terms, step = train_one_epoch(
            model, batches, optimizer, scheduler, step, warmup_steps, config.beta
        )
        val_terms = (
            evaluate(model, iterate_batches(val_images, 1024, device))
            if len(val_images)
            else train_terms
        )
        improved = best.offer(model, val_terms.loss, epoch)
        history.append(_epoch_record(epoch, train_terms, val_terms, step, timed(epoch_start)))
        _append_jsonl(config.out / "metrics.jsonl", history[-1])
        _save_state(config.out / STATE_FILE, model, optimizer, scheduler, history, best, step)
        logger.info(
            "epoch %d: train %.2f, validation %.2f (recon %.2f, KL %.2f)%s",
            epoch,
            train_terms.loss,
            val_terms.loss,
            val_terms.recon,
            val_terms.kl,
            " *" if improved else "",
        )
    if best.state is not None:
        _load_vae_weights(model, best.state)
    return _finish(config, model, model_config, splits, history, best, device, started)


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _start_or_resume(
    config: TrainConfig,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[list[dict[str, Any]], BestWeights, int]:
    state_path = config.out / STATE_FILE
    if not config.resume:
        (config.out / "metrics.jsonl").unlink(missing_ok=True)
        return [], BestWeights(), 0
    if not state_path.exists():
        raise SystemExit(f"vae-train: --resume given but {state_path} does not exist")
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    _load_vae_weights(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    best = BestWeights(state["best_val_loss"], state["best_epoch"], state["best_state"])
    logger.info("resuming %s after epoch %d", config.out, len(state["history"]))
    return list(state["history"]), best, int(state["step"])


def _load_vae_weights(model: VAE, state: dict[str, torch.Tensor]) -> None:
    """Load encoder/decoder weights; the orientation head is refitted after training, so
    states saved without it (or with an unfitted one) are fine."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("orientation.") for key in missing):
        raise SystemExit(f"vae-train: saved state does not match the model: {missing + unexpected}")


def _save_state(
    path: Path,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, Any]],
    best: BestWeights,
    step: int,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "history": history,
        "best_val_loss": best.val_loss,
        "best_epoch": best.epoch,
        "best_state": best.state,
        "step": step,
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)  # a crash mid-write never leaves a torn state file


def _epoch_record(
    epoch: int, train: LossTerms, val: LossTerms, step: int, seconds: float
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "train": train.to_dict(),
        "val": val.to_dict(),
        "seconds": seconds,
    }


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _finish(
    config: TrainConfig,
    model: VAE,
    model_config: ModelConfig,
    splits: MnistSplits,
    history: list[dict[str, Any]],
    best: BestWeights,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    script_model(model)  # first, so a scripting error cannot waste the evaluation below
    metrics = {
        **_test_metrics(config, model, splits, device),
        "best_epoch": best.epoch,
        "best_val_neg_elbo": round(best.val_loss, 3),
        "epochs_trained": len(history),
    }
    logger.info("fitting the orientation head on the frozen encoder")
    metrics.update(
        fit_orientation_head(
            model, splits.train.to(device), splits.val.to(device), device, config.seed
        )
    )
    logger.info("test metrics: %s", metrics)
    scripted = script_model(model)
    calibration_images = splits.val if len(splits.val) else splits.train
    metadata = {
        "architecture": model_config.to_dict(),
        "preprocessing": {
            **PixelSpec().to_dict(),
            "function": "vae_common.pixels.to_unit_interval",
            "real_world_images": "vae_common.pixels.mnist_style",
        },
        "training": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "dataset": {
            "name": "MNIST",
            "fingerprint_sha256": splits.fingerprint,
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "test_images": len(splits.test),
        },
        "metrics": metrics,
        "calibration": {
            "split": "validation" if len(splits.val) else "train",
            **calibrate_scores(scripted, to_unit_interval(calibration_images)),
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "wall_time_s": timed(started),  # this process (a resumed run: its last part)
            "train_seconds": round(sum(row["seconds"] for row in history), 1),
        },
    }
    sidecar = export_checkpoint(scripted, metadata, config.out / "model.pt")
    (config.out / "MODEL_CARD.md").write_text(render_card(sidecar))
    _write_figures(model, splits, history, config.out, device)
    logger.info("wrote %s (%s)", config.out / "model.pt", sidecar["model_id"])
    return sidecar


def _test_metrics(
    config: TrainConfig, model: VAE, splits: MnistSplits, device: torch.device
) -> dict[str, Any]:
    """Test-set figures of the VAE weights; cached in the run folder by a hash of those
    weights, because the k=1000 IWAE estimate takes minutes and re-exporting a finished run
    (e.g. to refit the orientation head) does not change it."""
    vae_hash = _vae_weights_hash(model)
    cache = config.out / TEST_METRICS_FILE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("vae_weights_sha256") == vae_hash and cached.get("iwae_k") == config.iwae_k:
            logger.info("reusing test metrics from %s", cache)
            return {key: value for key, value in cached.items() if key != "vae_weights_sha256"}
    seed_everything(config.seed)
    test_images = splits.test.to(device)
    test_terms = evaluate(model, iterate_batches(test_images, 1024, device))
    logger.info("test negative ELBO %.2f; IWAE NLL with k=%d next", test_terms.loss, config.iwae_k)
    iwae_generator = torch.Generator().manual_seed(config.seed)
    metrics = {
        "test_neg_elbo": round(test_terms.loss, 3),
        "test_recon": round(test_terms.recon, 3),
        "test_kl": round(test_terms.kl, 3),
        "test_iwae_nll": round(
            iwae_nll(model, test_images, config.iwae_k, device, iwae_generator), 3
        ),
        "iwae_k": config.iwae_k,
        "active_units": active_units(model, test_images, device),
    }
    cache.write_text(json.dumps({**metrics, "vae_weights_sha256": vae_hash}, indent=2))
    return metrics


def _vae_weights_hash(model: VAE) -> str:
    """Hash of the encoder and decoder only (the orientation head is fitted afterwards)."""
    state = model.state_dict()
    return state_dict_sha256({k: v for k, v in state.items() if not k.startswith("orientation.")})


@torch.no_grad()
def _write_figures(
    model: VAE, splits: MnistSplits, history: list[dict[str, Any]], out: Path, device: torch.device
) -> None:
    model.eval()
    write_loss_curve(history, out / "loss_curve.png")
    originals = to_unit_interval(splits.test[:32]).to(device)
    write_reconstructions(
        originals.cpu(), model.reconstruct(originals).cpu(), out / "reconstructions.png"
    )
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(64, model.latent_dim, generator=generator).to(device)
    write_samples(model.decode(z).cpu(), out / "samples.png")


if __name__ == "__main__":
    main(sys.argv[1:])
