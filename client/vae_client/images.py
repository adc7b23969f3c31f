"""Turning what callers hold (paths, bytes, PIL images, numpy arrays) into request payloads."""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | Image.Image | np.ndarray
LatentInput: TypeAlias = Sequence[float] | np.ndarray
LatentsInput: TypeAlias = Sequence[Sequence[float]] | np.ndarray

# (filename, content, content type): one part of a multipart body as httpx takes it
Upload: TypeAlias = tuple[str, bytes, str]


def as_upload(image: ImageInput, name: str = "image") -> Upload:
    """One image as a multipart file part. Files and bytes go as they are (the service reads
    PNG, JPEG, BMP, GIF, WebP, TIFF); PIL images and arrays are encoded as PNG."""
    if isinstance(image, bytes | bytearray):
        return (f"{name}.bin", bytes(image), "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return (path.name, path.read_bytes(), content_type)
    if isinstance(image, Image.Image):
        return (f"{name}.png", _png(image), "image/png")
    if isinstance(image, np.ndarray):
        return (f"{name}.png", _png(Image.fromarray(array_to_uint8(image))), "image/png")
    raise TypeError(
        f"expected a path, bytes, a PIL image or a numpy array, got {type(image).__name__}"
    )


def array_to_uint8(array: np.ndarray) -> np.ndarray:
    """(28, 28), (784,), (H, W), (H, W, 3|4) -> uint8 of the same picture. Floats must lie in
    [0, 1] (the service's convention: white digit on black); integers in 0..255."""
    pixels = np.asarray(array)
    if pixels.ndim == 1 and pixels.size == 28 * 28:
        pixels = pixels.reshape(28, 28)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ValueError(
            f"an image array must be (H, W), (H, W, 3), (H, W, 4) or (784,); got {pixels.shape}"
        )
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)) or pixels.min() < 0.0 or pixels.max() > 1.0:
            raise ValueError("float image arrays must hold finite values in [0, 1]")
        return np.rint(pixels * 255.0).astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.integer):
        if pixels.min() < 0 or pixels.max() > 255:
            raise ValueError("integer image arrays must hold values in 0..255")
        return pixels.astype(np.uint8)
    raise ValueError(f"unsupported image array dtype {pixels.dtype}")


def latent_rows(latents: LatentsInput | LatentInput) -> list[list[float]]:
    """(N, D) or one (D,) vector -> a list of rows of floats for JSON."""
    rows = np.asarray(latents, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"latents must be (N, latent_dim) or (latent_dim,); got {rows.shape}")
    return [[float(value) for value in row] for row in rows]


def latent_vector(latent: LatentInput) -> list[float]:
    vector = np.asarray(latent, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"a latent vector must be one-dimensional; got shape {vector.shape}")
    return [float(value) for value in vector]


def png_to_array(png: bytes) -> np.ndarray:
    """PNG bytes -> float32 (H, W) in [0, 1] (greyscale; the service returns greyscale)."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
