"""VAE architectures. Every model maps (B, 1, 28, 28) floats in [0, 1] (white on black) to a
diagonal Gaussian posterior over a latent vector and decodes latents to Bernoulli logits.

`VAE` is what gets scripted and exported: its `@torch.jit.export` methods are the contract
the service relies on (see `vae_common.checkpoint.REQUIRED_METHODS`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vae_common.pixels import IMAGE_SIZE, PIXELS_PER_IMAGE

Arch = Literal["resconv", "conv", "mlp"]
ARCHITECTURES: tuple[Arch, ...] = ("resconv", "conv", "mlp")


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape. The defaults are model v1's `conv` network, so that the
    metadata of a v1 checkpoint (which lacks the later fields) reads back unchanged."""

    arch: Arch = "conv"
    latent_dim: int = 32
    # mlp: the reference example's 784-400-20 network.
    hidden_dim: int = 400
    # conv, resconv: channels of the two stride-2 convolutions (28 -> 14 -> 7) and the dense
    # layer after.
    conv_channels: tuple[int, int] = (24, 48)
    conv_hidden_dim: int = 384
    # resconv: 3x3 residual blocks after each resolution change, in encoder and decoder.
    residual_blocks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["conv_channels"] = tuple(data["conv_channels"])
        return cls(**data)

    @classmethod
    def for_arch(cls, arch: Arch, latent_dim: int) -> ModelConfig:
        """Each architecture's published shape (resconv: model v2, conv: model v1)."""
        if arch == "resconv":
            return cls(
                arch=arch,
                latent_dim=latent_dim,
                conv_channels=(32, 64),
                conv_hidden_dim=512,
                residual_blocks=1,
            )
        return cls(arch=arch, latent_dim=latent_dim)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """Summed per-image BCE: (B, 1, 28, 28) logits and targets in [0, 1] -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


class MLPEncoder(nn.Module):
    """fc1 784 -> 400, then fc21/fc22 400 -> latent: the reference example's encoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(PIXELS_PER_IMAGE, config.hidden_dim)
        self.fc21 = nn.Linear(config.hidden_dim, config.latent_dim)
        self.fc22 = nn.Linear(config.hidden_dim, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.posterior(self.hidden(x))

    def hidden(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) -> (B, hidden_dim) features."""
        return F.relu(self.fc1(x.flatten(1)))

    def posterior(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc21(hidden), self.fc22(hidden)


class MLPDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc3 = nn.Linear(config.latent_dim, config.hidden_dim)
        self.fc4 = nn.Linear(config.hidden_dim, PIXELS_PER_IMAGE)
        self.to_image = nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE))

    def forward(self, z: Tensor) -> Tensor:
        logits = self.fc4(F.relu(self.fc3(z)))  # (B, 784)
        image: Tensor = self.to_image(logits)  # (B, 1, 28, 28)
        return image


class ConvEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c1, c2 = config.conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            nn.SiLU(),
            nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),  # (B, c2, 7, 7)
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, config.conv_hidden_dim),
            nn.SiLU(),
        )
        self.mu = nn.Linear(config.conv_hidden_dim, config.latent_dim)
        self.logvar = nn.Linear(config.conv_hidden_dim, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.posterior(self.hidden(x))

    def hidden(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) -> (B, conv_hidden_dim) features."""
        features: Tensor = self.features(x)
        return features

    def posterior(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(hidden), self.logvar(hidden)


class ConvDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c1, c2 = config.conv_channels
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, config.conv_hidden_dim),
            nn.SiLU(),
            nn.Linear(config.conv_hidden_dim, c2 * 7 * 7),
            nn.SiLU(),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            nn.SiLU(),
            nn.ConvTranspose2d(c1, 1, kernel_size=4, stride=2, padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, z: Tensor) -> Tensor:
        logits: Tensor = self.net(z)
        return logits


class ResidualBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), 3x3, same channels and size: depth at a resolution
    without the vanishing gradients of a plain stack (He et al. 2016, pre-activation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        residual: Tensor = self.conv2(F.silu(self.conv1(F.silu(x))))
        return x + residual


class ResConvEncoder(ConvEncoder):
    """Model v2's encoder: v1's two stride-2 convolutions, wider, each followed by residual
    blocks at its resolution. Builds its own layers; runs them as ConvEncoder does."""

    def __init__(self, config: ModelConfig) -> None:
        nn.Module.__init__(self)  # not ConvEncoder's layers: these
        c1, c2 = config.conv_channels
        blocks = config.residual_blocks
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            *[ResidualBlock(c1) for _ in range(blocks)],
            nn.SiLU(),
            nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),  # (B, c2, 7, 7)
            *[ResidualBlock(c2) for _ in range(blocks)],
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, config.conv_hidden_dim),
            nn.SiLU(),
        )
        self.mu = nn.Linear(config.conv_hidden_dim, config.latent_dim)
        self.logvar = nn.Linear(config.conv_hidden_dim, config.latent_dim)


class ResConvDecoder(nn.Module):
    """Model v2's decoder: residual blocks at 7x7 and 14x14, and a 3x3 convolution at full
    resolution after the last upsampling, so that each output pixel sees its neighbours
    (v1's last layer is the transposed convolution itself, which leaves a checkerboard)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c1, c2 = config.conv_channels
        blocks = config.residual_blocks
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, config.conv_hidden_dim),
            nn.SiLU(),
            nn.Linear(config.conv_hidden_dim, c2 * 7 * 7),
            nn.Unflatten(1, (c2, 7, 7)),
            *[ResidualBlock(c2) for _ in range(blocks)],
            nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, kernel_size=4, stride=2, padding=1),  # (B, c1, 14, 14)
            *[ResidualBlock(c1) for _ in range(blocks)],
            nn.SiLU(),
            nn.ConvTranspose2d(c1, c1 // 2, kernel_size=4, stride=2, padding=1),  # 28x28
            nn.SiLU(),
            nn.Conv2d(c1 // 2, 1, kernel_size=3, padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, z: Tensor) -> Tensor:
        logits: Tensor = self.net(z)
        return logits


Encoder = MLPEncoder | ConvEncoder | ResConvEncoder
Decoder = MLPDecoder | ConvDecoder | ResConvDecoder

ORIENTATIONS = 8  # the dihedral group of the square: 4 rotations, each with or without transpose


def dihedral(x: Tensor, index: int) -> Tensor:
    """Element `index` (0..7) of the dihedral group applied to (B, 1, H, W); 0 is the identity."""
    if index >= 4:
        x = x.transpose(-1, -2)
    return torch.rot90(x, index % 4, dims=(-2, -1))


class OrientationHead(nn.Module):
    """Predicts which of the 8 dihedral transforms was applied to a digit, from the encoder's
    features. Trained after the VAE with the encoder frozen (self-supervised, as in Golan &
    El-Yaniv 2018 and Hendrycks et al. 2019); -log p(identity | x) measures how un-upright
    an input looks, which likelihoods alone barely notice for flipped digits."""

    def __init__(self, hidden_dim: int, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_dim, width), nn.SiLU(), nn.Linear(width, ORIENTATIONS)
        )

    def forward(self, hidden: Tensor) -> Tensor:
        logits: Tensor = self.net(hidden)  # (B, 8)
        return logits


class LatentPrior(nn.Module):
    """A Gaussian mixture over the latent space that /sample draws from: fitted after
    training to posterior draws of the training digits, i.e. to the aggregate posterior
    (ex-post density estimation, Ghosh et al. 2020), because that aggregate leaves holes in
    N(0, I) that decode to blurs. With it the decoder is a better density model too: the
    IWAE bound under this prior is tighter (`importance_weights`). Until it is fitted it is
    one component, N(0, I) itself."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.zeros(1))
        self.register_buffer("means", torch.zeros(1, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).unsqueeze(0))

    def set_mixture(self, log_weights: Tensor, means: Tensor, scale_tril: Tensor) -> None:
        """Replace the mixture: (K,) log weights, (K, D) means, (K, D, D) Cholesky factors."""
        self.log_weights = log_weights.detach().clone()
        self.means = means.detach().clone()
        self.scale_tril = scale_tril.detach().clone()

    def forward(self, uniform: Tensor, eps: Tensor, temperature: float) -> Tensor:
        """(N,) uniform draws pick components by inverse CDF; (N, D) standard-normal draws
        become mean + temperature * L eps. Draws come in so that a seed reproduces them."""
        cumulative = torch.cumsum(torch.softmax(self.log_weights, dim=0), dim=0)
        component = torch.searchsorted(cumulative, uniform.contiguous()).clamp(
            max=cumulative.shape[0] - 1
        )
        spread = torch.bmm(self.scale_tril[component], eps.unsqueeze(2)).squeeze(2)
        return self.means[component] + temperature * spread

    def log_density(self, z: Tensor) -> Tensor:
        """(N, D) latents -> (N,) log density under the mixture, in nats. Each point is
        whitened by every component's L^-1 (an (N, K, D) tensor: callers pass chunks) rather
        than through the expanded quadratic form, which cancels badly in float32 for the
        narrow components."""
        dims = self.means.shape[1]
        identity = torch.eye(dims, dtype=z.dtype, device=z.device).expand_as(self.scale_tril)
        inverse = torch.linalg.solve_triangular(self.scale_tril, identity, upper=False)
        offsets = z.unsqueeze(1) - self.means.unsqueeze(0)  # (N, K, D)
        whitened = torch.einsum("kij,nkj->nki", inverse, offsets)
        half_log_det = self.scale_tril.diagonal(dim1=1, dim2=2).log().sum(1)  # (K,)
        constant = (
            torch.log_softmax(self.log_weights, dim=0)
            - half_log_det
            - 0.5 * dims * math.log(2.0 * math.pi)
        )
        return torch.logsumexp(constant - 0.5 * whitened.pow(2).sum(2), dim=1)


class VAE(nn.Module):
    """Encoder + decoder (+ orientation head) with the exported methods the service calls."""

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        latent_dim: int,
        hidden_dim: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.orientation = OrientationHead(hidden_dim)
        self.prior = LatentPrior(latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One reparameterised sample: (B, 1, 28, 28) -> logits (B, 1, 28, 28), mu, logvar (B, D)"""
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar

    @torch.jit.export
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, 28, 28) -> posterior mean and log-variance, each (B, D)."""
        mu, logvar = self.encoder(x)
        return mu, logvar

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        """(B, D) latents -> (B, 1, 28, 28) pixel means in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    @torch.jit.export
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean: deterministic, (B, 1, 28, 28) -> (B, 1, 28, 28)."""
        mu, _ = self.encoder(x)
        return torch.sigmoid(self.decoder(mu))

    @torch.jit.export
    def score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image reconstruction loss at the posterior mean and analytic KL, each (B,) nats."""
        mu, logvar = self.encoder(x)
        return bernoulli_nll(self.decoder(mu), x), gaussian_kl(mu, logvar)

    @torch.jit.export
    def anomaly_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One encoder and one decoder pass -> per-image (B,) reconstruction loss at the
        posterior mean, analytic KL and orientation surprisal -log p(upright | x), in nats."""
        hidden = self.encoder.hidden(x)
        mu, logvar = self.encoder.posterior(hidden)
        upright = torch.log_softmax(self.orientation(hidden), dim=1)[:, 0]
        return bernoulli_nll(self.decoder(mu), x), gaussian_kl(mu, logvar), -upright

    @torch.jit.export
    def reconstruct_with_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`reconstruct` and `anomaly_terms` from one encoder and one decoder pass: the
        (B, 1, 28, 28) reconstruction, then the three (B,) terms as `anomaly_terms` has them."""
        hidden = self.encoder.hidden(x)
        mu, logvar = self.encoder.posterior(hidden)
        upright = torch.log_softmax(self.orientation(hidden), dim=1)[:, 0]
        logits = self.decoder(mu)
        return torch.sigmoid(logits), bernoulli_nll(logits, x), gaussian_kl(mu, logvar), -upright

    @torch.jit.export
    def prior_latents(self, uniform: Tensor, eps: Tensor, temperature: float) -> Tensor:
        """Latents drawn from the fitted prior (`LatentPrior`): (N,) uniform and (N, D)
        standard-normal draws -> (N, D). N(0, I) itself until the prior is fitted."""
        latents: Tensor = self.prior(uniform, eps, temperature)
        return latents

    @torch.jit.export
    def importance_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Terms of the ELBO and IWAE bounds for K given standard-normal draws, under the
        N(0, I) prior the VAE was trained with.

        x: (B, 1, 28, 28); eps: (K, D). Returns reconstruction loss -log p(x|z_k) (B, K),
        log importance weights log p(x, z_k) - log q(z_k|x) (B, K) and the analytic KL (B,).
        Passing eps in (rather than drawing it here) makes the estimates reproducible.
        """
        z, recon, log_posterior, kl = self._posterior_draws(x, eps)
        return recon, -recon + standard_normal_log_density(z) - log_posterior, kl

    @torch.jit.export
    def importance_weights(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Log importance weights log p(x, z_k) - log q(z_k|x), (B, K), under N(0, I) and
        under the fitted prior (`LatentPrior`), from one decoder pass over the same draws."""
        z, recon, log_posterior, _ = self._posterior_draws(x, eps)
        log_likelihood = -recon - log_posterior
        fitted = self.prior.log_density(z.reshape(-1, z.shape[2])).view(z.shape[0], z.shape[1])
        return log_likelihood + standard_normal_log_density(z), log_likelihood + fitted

    def _posterior_draws(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z_k = mu + std * eps_k (B, K, D), -log p(x|z_k) (B, K), log q(z_k|x) (B, K) and
        the analytic KL (B,)."""
        mu, logvar = self.encoder(x)
        std = torch.exp(0.5 * logvar)
        batch, k = mu.shape[0], eps.shape[0]
        z = mu.unsqueeze(1) + std.unsqueeze(1) * eps.unsqueeze(0)  # (B, K, D)
        logits = self.decoder(z.reshape(batch * k, -1))  # (B*K, 1, 28, 28)
        targets = x.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(logits.shape)
        recon = bernoulli_nll(logits, targets).view(batch, k)
        # log N(z; mu, std) at z = mu + std * eps
        log_posterior = standard_normal_log_density(eps).unsqueeze(0) - 0.5 * logvar.sum(
            1, keepdim=True
        )
        return z, recon, log_posterior, gaussian_kl(mu, logvar)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) over the last dimension: (..., D) -> (...)."""
    return -0.5 * (z.pow(2) + math.log(2.0 * math.pi)).sum(-1)


def build_model(config: ModelConfig) -> VAE:
    if config.arch == "mlp":
        return VAE(MLPEncoder(config), MLPDecoder(config), config.latent_dim, config.hidden_dim)
    if config.arch == "conv":
        return VAE(
            ConvEncoder(config), ConvDecoder(config), config.latent_dim, config.conv_hidden_dim
        )
    if config.arch == "resconv":
        return VAE(
            ResConvEncoder(config),
            ResConvDecoder(config),
            config.latent_dim,
            config.conv_hidden_dim,
        )
    raise ValueError(
        f"unknown architecture {config.arch!r}: expected one of {', '.join(ARCHITECTURES)}"
    )
