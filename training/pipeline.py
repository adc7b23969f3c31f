"""One training run, start to finish: train (or resume), evaluate on the test split, fit the
orientation head, calibrate, export the checkpoint, draw the figures, say what was written."""

from __future__ import annotations

import copy
import json
import logging
import platform
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.card import render_card
from training.config import TrainConfig, TrainingSetupError
from training.data import MnistSplits, batch_count, iterate_batches, load_mnist
from training.export import export_checkpoint, script_model
from training.model import VAE, ModelConfig, build_model
from training.orientation import fit_orientation_head
from training.plots import write_loss_curve, write_reconstructions, write_samples
from training.prior import LIMITED_PRIOR, PriorConfig, fit_prior
from training.progress import heartbeat, track
from training.renderings import RENDERINGS, refit_calibration_digits
from training.state import (
    STATE_FILE,
    RunProgress,
    append_metrics,
    epoch_record,
    load_vae_weights,
    save_state,
    start_or_resume,
)
from training.train import (
    ImportanceEstimates,
    LossTerms,
    active_units,
    evaluate,
    importance_estimates,
    timed,
    train_one_epoch,
)
from vae_common.checkpoint import state_dict_sha256
from vae_common.devices import DeviceUnavailableError, resolve_device
from vae_common.pixels import PixelSpec, to_unit_interval
from vae_common.scoring import REFIT_PATH, calibrate_scores

logger = logging.getLogger("vae-train")

TEST_METRICS_FILE = "test_metrics.json"
# Under --limit, calibrate on at most this many images: calibration runs every score (IWAE with
# k=64 among them) on each image, and would otherwise be most of a smoke run's time.
LIMITED_CALIBRATION_IMAGES = 500
# Below this many optimiser steps (under one epoch of full MNIST at batch 128) the decoder has
# not learnt strokes yet, and its samples are plain grey squares.
BARELY_TRAINED_STEPS = 300


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate, calibrate and export; returns the published metadata (the sidecar)."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        device = resolve_device(config.device, "--device")
    except DeviceUnavailableError as exc:
        raise TrainingSetupError(str(exc)) from None
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
    if config.channels_last:  # before the optimiser takes the parameters
        model = model.to(memory_format=torch.channels_last)
    progress = _train(config, model, splits, device)
    if progress.best.state is not None:
        load_vae_weights(model, progress.best.state)
    # Exported, evaluated and served in the default order whatever it trained in.
    model = model.to(memory_format=torch.contiguous_format)
    sidecar = _finish(config, model, model_config, splits, progress, device, started)
    _log_summary(config, sidecar, progress)
    return sidecar


def _train(
    config: TrainConfig, model: VAE, splits: MnistSplits, device: torch.device
) -> RunProgress:
    train_images, val_images = splits.train.to(device), splits.val.to(device)
    steps_per_epoch = batch_count(train_images, config.batch_size)
    # The orientation head is fitted after training (training/orientation.py), not here.
    vae_parameters = [*model.encoder.parameters(), *model.decoder.parameters()]
    optimizer: torch.optim.Optimizer = (
        torch.optim.AdamW(vae_parameters, lr=config.lr, weight_decay=config.weight_decay)
        if config.weight_decay > 0
        else torch.optim.Adam(vae_parameters, lr=config.lr)
    )
    scheduler = _lr_scheduler(optimizer, config.lr_schedule, config.epochs * steps_per_epoch)
    config.out.mkdir(parents=True, exist_ok=True)
    progress = start_or_resume(config.out, config.resume, model, optimizer, scheduler)
    warmup_steps = round(config.kl_warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(len(progress.history)):  # replay the shuffles of finished epochs on resume
        torch.randperm(len(train_images), generator=generator)
    for epoch in range(len(progress.history) + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        batches = track(
            iterate_batches(train_images, config.batch_size, device, generator),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
        )
        train_terms, progress.step = train_one_epoch(
            model,
            batches,
            optimizer,
            scheduler,
            progress.step,
            warmup_steps,
            config.beta,
            config.precision,
            config.encoder_noise,
        )
        val_terms = (
            evaluate(model, iterate_batches(val_images, 1024, device))
            if len(val_images)
            else train_terms
        )
        improved = progress.best.offer(model, val_terms.loss, epoch)
        record = epoch_record(epoch, train_terms, val_terms, progress.step, timed(epoch_start))
        progress.history.append(record)
        append_metrics(config.out, record)
        save_state(config.out / STATE_FILE, model, optimizer, scheduler, progress)
        logger.info(
            "epoch %d/%d: train %.2f, validation %.2f (recon %.2f, KL %.2f), %.1f s%s",
            epoch,
            config.epochs,
            train_terms.loss,
            val_terms.loss,
            val_terms.recon,
            val_terms.kl,
            record["seconds"],
            " *" if improved else "",
        )
    return progress


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _finish(
    config: TrainConfig,
    model: VAE,
    model_config: ModelConfig,
    splits: MnistSplits,
    progress: RunProgress,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    script_model(model)  # first, so a scripting error cannot waste the evaluation below
    with heartbeat("fitting the orientation head on the frozen encoder", every_s=None):
        orientation = fit_orientation_head(
            model, splits.train.to(device), splits.val.to(device), device, config.seed
        )
    prior = _fit_prior(config, model, splits, device)  # before the test IWAE, which uses it
    metrics = {
        **_test_metrics(config, model, splits, device),
        "best_epoch": progress.best.epoch,
        "best_val_neg_elbo": round(progress.best.val_loss, 3),
        "epochs_trained": len(progress.history),
        **orientation,
    }
    logger.info("test metrics: %s", metrics)
    scripted = script_model(model)
    calibration_images = splits.val if len(splits.val) else splits.train
    calibration_split = "validation" if len(splits.val) else "train"
    if config.limit is not None:  # a smoke run: its calibration only has to exist
        calibration_images = calibration_images[:LIMITED_CALIBRATION_IMAGES]
    with heartbeat(
        f"calibrating the anomaly scores on {len(calibration_images)} {calibration_split} images"
    ):
        calibration = calibrate_scores(scripted, to_unit_interval(calibration_images))
    with heartbeat(
        f"calibrating the refit path: {len(calibration_images)} {calibration_split} images "
        "rendered as pictures, then preprocess=mnist"
    ):
        refit = refit_calibration_digits(calibration_images.numpy(), config.seed)
        calibration["paths"] = {
            REFIT_PATH: {
                "split": calibration_split,
                "rendered_as": [render.__name__ for render in RENDERINGS],
                **calibrate_scores(scripted, to_unit_interval(torch.from_numpy(refit))),
            }
        }
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
        "calibration": {"split": calibration_split, **calibration},
        "prior": prior,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "wall_time_s": timed(started),  # this process (a resumed run: its last part)
            "train_seconds": round(sum(row["seconds"] for row in progress.history), 1),
        },
    }
    sidecar = export_checkpoint(scripted, metadata, config.out / "model.pt")
    (config.out / "MODEL_CARD.md").write_text(render_card(sidecar))
    with heartbeat("drawing the figures"):
        _write_figures(model, splits, progress.history, config.out, device)
    return sidecar


def _fit_prior(
    config: TrainConfig, model: VAE, splits: MnistSplits, device: torch.device
) -> dict[str, Any]:
    """Fit the mixture /sample draws from to the training digits' posterior draws, set it in
    `model.prior` (exported with the model) and return what metadata["prior"] records."""
    prior_config = LIMITED_PRIOR if config.limit is not None else PriorConfig()
    started = time.perf_counter()
    with heartbeat("fitting the latent prior to the training posterior"):
        fit = fit_prior(model, splits.train, splits.val, device, config.seed, prior_config)
    mixture = fit.mixture
    model.prior.set_mixture(
        *(
            tensor.to(device=device, dtype=torch.float32)
            for tensor in (mixture.log_weights, mixture.means, mixture.scale_tril)
        )
    )
    logger.info(
        "prior: %d-component Gaussian mixture, validation log-likelihood %.2f (%s)",
        fit.metrics["components"],
        fit.metrics["val_log_likelihood"],
        ", ".join(
            f"K={k}: {row['val_log_likelihood']:.2f}"
            for k, row in fit.metrics["candidates"].items()
        ),
    )
    return {**fit.metrics, "seconds": timed(started)}


def _test_metrics(
    config: TrainConfig, model: VAE, splits: MnistSplits, device: torch.device
) -> dict[str, Any]:
    """Test-set figures of the VAE weights and fitted prior; cached in the run folder by a
    hash of those, because the k=1000 IWAE estimate takes minutes and re-exporting a
    finished run (e.g. to refit the orientation head) does not change it."""
    weights_hash = _likelihood_weights_hash(model)
    iwae_images = iwae_subset(splits.test, config.iwae_images, config.seed)
    cache = config.out / TEST_METRICS_FILE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if (
            cached.get("likelihood_weights_sha256") == weights_hash
            and cached.get("iwae_k") == config.iwae_k
            and cached.get("iwae_images") == len(iwae_images)
        ):
            logger.info("reusing test metrics from %s", cache)
            return {k: v for k, v in cached.items() if k != "likelihood_weights_sha256"}
    test_images = splits.test.to(device)
    iwae_started = time.perf_counter()
    test_terms, iwae = likelihood_bounds(
        model, test_images, iwae_images.to(device), config.iwae_k, config.seed, device
    )
    logger.info(
        "test IWAE NLL %.2f, %.2f under the fitted prior (k=%d, %d images) in %.1f s",
        iwae.iwae_nll,
        iwae.fitted_iwae_nll,
        config.iwae_k,
        len(iwae_images),
        timed(iwae_started),
    )
    metrics = {
        "test_neg_elbo": round(test_terms.loss, 3),
        "test_recon": round(test_terms.recon, 3),
        "test_kl": round(test_terms.kl, 3),
        "test_iwae_nll": round(iwae.iwae_nll, 3),
        # Under the fitted prior, on the IWAE images (the -ELBO: mean of the k log weights).
        "test_iwae_nll_fitted_prior": _rounded(iwae.fitted_iwae_nll),
        "test_neg_elbo_fitted_prior": _rounded(iwae.fitted_neg_elbo),
        "iwae_k": config.iwae_k,
        "iwae_images": len(iwae_images),
        "active_units": active_units(model, test_images, device),
    }
    cache.write_text(json.dumps({**metrics, "likelihood_weights_sha256": weights_hash}, indent=2))
    return metrics


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def likelihood_bounds(
    model: VAE,
    test: torch.Tensor,
    iwae_images: torch.Tensor,
    k: int,
    seed: int,
    device: torch.device,
) -> tuple[LossTerms, ImportanceEstimates]:
    """The published test figures of a model (vae-train's, and benchmarks/likelihood's for an
    exported one): -ELBO with one draw per image from the global generator seeded with
    `seed`, then the k-sample estimates on `iwae_images` from a generator of its own."""
    seed_everything(seed)
    terms = evaluate(model, iterate_batches(test, 1024, device))
    logger.info("test negative ELBO %.2f", terms.loss)
    # channels_last: the same float32 arithmetic in another memory order, which oneDNN's
    # convolutions run ~1.5x faster on CPU (model v2's decoder: 0.79 -> 0.52 ms per latent).
    evaluated = copy.deepcopy(model).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    return terms, importance_estimates(evaluated, iwae_images, k, device, generator)


def iwae_subset(test: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """The test images the IWAE estimate runs on: all of them, or a fixed random subset."""
    if count is None or count >= len(test):
        return test
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test[order[:count]]


def _likelihood_weights_hash(model: VAE) -> str:
    """Hash of what the test likelihoods depend on: encoder, decoder and fitted prior (not
    the orientation head)."""
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
    # One set of draws for both grids: the standard grid decodes eps itself, the fitted one
    # the same eps carried through the mixture (prior_latents, as /sample does).
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn(64, model.latent_dim, generator=generator)
    uniform = torch.rand(64, generator=generator)
    fitted = model.prior_latents(uniform.to(device), eps.to(device), 1.0)
    write_samples(model.decode(fitted).cpu(), out / "samples.png")
    write_samples(model.decode(eps.to(device)).cpu(), out / "samples_standard.png")


def _log_summary(config: TrainConfig, sidecar: dict[str, Any], progress: RunProgress) -> None:
    """The last lines of a run: where it went, what is in it, and what to expect of it."""
    out = config.out.resolve()
    files = sorted(path.name for path in out.iterdir() if path.is_file())
    logger.info("run folder %s: %s", out, ", ".join(files))
    logger.info(
        "checkpoint %s (%s); serve it with VAE_MODEL_PATH=%s vae-serve",
        out / "model.pt",
        sidecar["model_id"],
        out / "model.pt",
    )
    if config.limit is not None or progress.step < BARELY_TRAINED_STEPS:
        logger.info(
            "short run (%d epoch(s) on %d images, %d optimiser steps): samples.png and "
            "reconstructions.png look like grey squares because the model is barely trained; "
            "that is expected. A full run (vae-train without --limit, 30 epochs) draws digits",
            len(progress.history),
            sidecar["dataset"]["train_images"],
            progress.step,
        )
