"""What a training run is told to do: one frozen config, built by `vae-train`'s flags
(training/cli.py) or directly by tests, and embedded in the checkpoint as `training`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.model import ModelConfig

LATENT_DEFAULTS = {"resconv": 32, "conv": 32, "mlp": 20}
MNIST_TRAIN_IMAGES = 60_000
FULL_IWAE_K = 1000  # the test-set IWAE estimate of a full run (README, model card)
MIN_LIMITED_IWAE_K = 10


class TrainingSetupError(RuntimeError):
    """The run cannot start as configured (a flag, the run folder or its saved state); the
    message says what to change. `vae-train` prints it as one line and exits 2."""


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
    iwae_k: int = FULL_IWAE_K
    threads: int | None = None
    precision: str = "fp32"
    # Convolution weights and activations in NHWC order while training (exported back in the
    # default order): the same arithmetic, which oneDNN runs faster with bf16.
    channels_last: bool = False
    # Standard deviation of Gaussian noise added to the encoder's input while training (the
    # decoder still reconstructs the clean digit): a denoising encoder, which regularises the
    # amortised posterior and through it the decoder (Shu et al. 2018, "Amortized Inference
    # Regularization"). 0: none. Evaluation and serving always encode the clean image.
    encoder_noise: float = 0.0
    # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019) against overfitting; 0: plain
    # Adam. Model v2's recipe with 0.05: test -ELBO 89.58 against 89.89 (docs/model.md).
    weight_decay: float = 0.0
    # None: the whole test split. A k=1000 estimate decodes 1,000 latents per image, which
    # for model v2 on a 2-core CPU is ~10 minutes per 1,000 images.
    iwae_images: int | None = None

    def model_config(self) -> ModelConfig:
        latent = self.latent_dim or LATENT_DEFAULTS[self.arch]
        return ModelConfig.for_arch(self.arch, latent)  # type: ignore[arg-type]


def iwae_k_for_limit(limit: int | None) -> int:
    """The IWAE sample count when --iwae-k is not given: the full k for a full run, and under
    --limit a k scaled by the share of MNIST's training images used, so that a smoke run's
    test-set IWAE takes seconds instead of the full estimate's minutes."""
    if limit is None:
        return FULL_IWAE_K
    scaled = round(FULL_IWAE_K * limit / MNIST_TRAIN_IMAGES)
    return max(MIN_LIMITED_IWAE_K, min(FULL_IWAE_K, scaled))
