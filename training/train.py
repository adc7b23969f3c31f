"""The training loop and the held-out evaluations. Pure functions: everything they use is an
argument, nothing runs at import time."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from training.data import batch_count, iterate_batches
from training.model import VAE, bernoulli_nll, gaussian_kl
from training.progress import track

logger = logging.getLogger(__name__)

# Burda et al. (2016): a latent unit is active when Cov_x(E_q[z_u | x]) exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01


@dataclass(frozen=True)
class LossTerms:
    """Means per image, in nats."""

    loss: float
    recon: float
    kl: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def kl_weight(step: int, warmup_steps: int, beta: float) -> float:
    """Linear KL warm-up from 0 to beta over warmup_steps optimiser steps (none when 0)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def train_one_epoch(
    model: VAE,
    batches: Iterable[Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    first_step: int,
    warmup_steps: int,
    beta: float,
    precision: str = "fp32",
    encoder_noise: float = 0.0,
) -> tuple[LossTerms, int]:
    """One pass over (B, 1, 28, 28) `batches`; returns the mean terms and the next step.

    precision "bf16" runs the forward pass under bfloat16 autocast (the losses, the
    optimiser and the weights stay float32): on CPUs with AMX or AVX-512 BF16 and on recent
    GPUs the convolutions run several times faster (benchmarks/train_speed.py measures it).
    encoder_noise > 0 encodes x plus Gaussian noise of that standard deviation and scores the
    reconstruction against the clean x (TrainConfig.encoder_noise says why).
    """
    model.train()
    totals = torch.zeros(3)
    count = 0
    step = first_step
    for x in batches:
        weight = kl_weight(step, warmup_steps, beta)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            encoded = x + encoder_noise * torch.randn_like(x) if encoder_noise > 0 else x
            logits, mu, logvar = model(encoded)
        logits, mu, logvar = logits.float(), mu.float(), logvar.float()
        recon, kl = bernoulli_nll(logits, x), gaussian_kl(mu, logvar)
        loss = (recon + weight * kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        with torch.no_grad():
            totals += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()]).cpu()
        count += len(x)
    return _mean_terms(totals, count), step


@torch.no_grad()
def evaluate(model: VAE, batches: Iterable[Tensor]) -> LossTerms:
    """Negative ELBO per image with one posterior sample, as the reference example reports it."""
    model.eval()
    totals = torch.zeros(3)
    count = 0
    for x in batches:
        logits, mu, logvar = model(x)
        recon, kl = bernoulli_nll(logits, x), gaussian_kl(mu, logvar)
        totals += torch.stack([(recon + kl).sum(), recon.sum(), kl.sum()]).cpu()
        count += len(x)
    return _mean_terms(totals, count)


@dataclass(frozen=True)
class ImportanceEstimates:
    """Means per image in nats, from the same k posterior draws per image."""

    iwae_nll: float  # IWAE estimate of -log p(x) under N(0, I), the prior the VAE trained with
    # Under the fitted prior (LatentPrior, what /sample draws from): the IWAE estimate and
    # -ELBO as the mean of the k log weights. None for a module without one (model v1).
    fitted_iwae_nll: float | None
    fitted_neg_elbo: float | None


@torch.no_grad()
def importance_estimates(
    model: VAE, images: Tensor, k: int, device: torch.device, generator: torch.Generator
) -> ImportanceEstimates:
    """Importance-weighted estimates of -log p(x) per image (Burda et al. 2016), k samples.

    Images are processed a few at a time so that B * k decoder outputs fit in memory.
    """
    model.eval()
    with_fitted = hasattr(model, "importance_weights")
    images_per_chunk = max(1, 8192 // k)
    totals = torch.zeros(3, dtype=torch.float64)
    chunks = iterate_batches(images, images_per_chunk, device)
    for x in track(chunks, batch_count(images, images_per_chunk), f"test IWAE NLL, k={k}"):
        eps = torch.randn(k, model.latent_dim, generator=generator).to(device)  # (k, D)
        if with_fitted:
            standard, fitted = model.importance_weights(x, eps)  # (B, k) each
        else:
            _, standard, _ = model.importance_terms(x, eps)
            fitted = standard
        totals += torch.stack(
            [-_log_mean_exp(standard).sum(), -_log_mean_exp(fitted).sum(), -fitted.mean(1).sum()]
        ).cpu()
    iwae, fitted_iwae, fitted_elbo = (float(total) / len(images) for total in totals)
    if not with_fitted:
        return ImportanceEstimates(iwae, None, None)
    return ImportanceEstimates(iwae, fitted_iwae, fitted_elbo)


def _log_mean_exp(log_weights: Tensor) -> Tensor:
    """(B, k) -> (B,) log of the mean of exp over k, without overflow."""
    return torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1])


@torch.no_grad()
def active_units(model: VAE, images: Tensor, device: torch.device) -> int:
    model.eval()
    means = torch.cat([model.encode(x)[0] for x in iterate_batches(images, 1024, device)])
    return int((means.var(dim=0) > ACTIVE_UNIT_THRESHOLD).sum())


@dataclass
class BestWeights:
    """The weights with the lowest validation loss seen so far."""

    val_loss: float = math.inf
    epoch: int = -1
    state: dict[str, Tensor] | None = None

    def offer(self, model: VAE, val_loss: float, epoch: int) -> bool:
        if val_loss >= self.val_loss:
            return False
        self.val_loss, self.epoch = val_loss, epoch
        self.state = copy.deepcopy(model.state_dict())
        return True


def _mean_terms(totals: Tensor, count: int) -> LossTerms:
    loss, recon, kl = (totals / max(count, 1)).tolist()
    return LossTerms(loss=loss, recon=recon, kl=kl)


def timed(start: float) -> float:
    return round(time.perf_counter() - start, 2)
