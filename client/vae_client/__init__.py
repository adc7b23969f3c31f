"""Client for the MNIST VAE service. Every call is safe to retry (see vae_client.retry)."""

from vae_client.client import AsyncVaeClient, VaeClient
from vae_client.errors import VaeApiError
from vae_client.images import ImageInput, LatentInput, LatentsInput
from vae_client.results import (
    AnomalyReport,
    DecodedPixels,
    Encoding,
    ImageScore,
    LatentCode,
    ModelCard,
    PngImage,
    Reconstruction,
    Samples,
)
from vae_client.retry import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "AnomalyReport",
    "AsyncVaeClient",
    "DecodedPixels",
    "Encoding",
    "ImageInput",
    "ImageScore",
    "LatentCode",
    "LatentInput",
    "LatentsInput",
    "ModelCard",
    "PngImage",
    "Reconstruction",
    "RetryPolicy",
    "Samples",
    "VaeApiError",
    "VaeClient",
]
