"""The ways a digit reaches /anomaly-score, built from MNIST digits: JSON pixels, the digit
as a 28x28 PNG file (with preprocess=mnist or none), a scan and a phone photo of it on paper.

Files go through the readers that serve requests (`app.imaging.image_bytes_to_pixels`, which
`app.uploads.decode_uploads` calls, VAE_MAX_BATCH files at a time under the service's decode
limits; JSON pixels through `pixels_to_array`), so whatever
preprocessing main serves is what gets measured. Every picture is drawn from its own
generator seeded by (seed, index): image i looks the same whatever --limit is.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image, ImageFilter

from app.config import Settings
from app.imaging import Preprocess, image_bytes_to_pixels, pixels_to_array
from app.uploads import decode_limits
from vae_common.pixels import IMAGE_SIZE, FloatImage

# One digit (28, 28) uint8, white on black, and its generator -> the bytes of a file.
FileMaker = Callable[[np.ndarray, np.random.Generator], bytes]

# Photo frames are 4:3, as phone cameras take them; below the service's 448-pixel working
# size, so what is measured is the preprocessing, not the shrinking.
PHOTO_SIZE = (320, 240)


def png_file(digit: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
    """The digit as MNIST stores it: an 8-bit greyscale 28x28 PNG, white on black."""
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()


def scan_like(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A flatbed scan: dark ink on evenly lit light paper, upscaled 3-5x, JPEG."""
    side = IMAGE_SIZE * int(rng.integers(3, 6))
    ink = _upscaled_ink(digit, side)
    paper = rng.uniform(220.0, 250.0)
    page = paper - (paper - rng.uniform(10.0, 60.0)) * ink
    page += rng.normal(0.0, 2.0, page.shape)
    return _jpeg(Image.fromarray(_to_uint8(page)), int(rng.integers(75, 96)))


def photo_like(
    digit: np.ndarray, rng: np.random.Generator, light_drop: tuple[float, float] = (0.0, 100.0)
) -> bytes:
    """A phone photo of the digit written on paper: the digit off-centre and slightly
    rotated, the paper darkening linearly by `light_drop` grey levels (drawn from that
    range) from one side of the frame to the other in a random direction, sensor noise, a
    slight blur, a warm colour cast, JPEG."""
    width, height = PHOTO_SIZE
    side = round(height * rng.uniform(0.45, 0.65))  # the 28x28 frame, digit box ~5/7 of it
    ink_layer = Image.fromarray(_to_uint8(255.0 * _upscaled_ink(digit, side)))
    ink_layer = ink_layer.rotate(rng.uniform(-10.0, 10.0), Image.Resampling.BILINEAR)
    # Off-centre: anywhere that keeps the whole 28x28 frame inside the photo.
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    ink = np.zeros((height, width), dtype=np.float32)
    ink[top : top + side, left : left + side] = np.asarray(ink_layer, np.float32) / 255.0

    paper = rng.uniform(215.0, 245.0)
    page = paper - (paper - rng.uniform(20.0, 70.0)) * ink
    drop = rng.uniform(*light_drop)
    page *= 1.0 - (drop / paper) * _ramp(height, width, rng.uniform(0.0, 2.0 * math.pi))
    page += rng.normal(0.0, rng.uniform(2.0, 6.0), page.shape)
    picture = Image.fromarray(_to_uint8(page)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))
    )
    tint = (1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 0.95))  # warm indoor light
    colour = Image.merge("RGB", [picture.point(lambda v, f=f: v * f) for f in tint])
    return _jpeg(colour, int(rng.integers(70, 93)))


def _upscaled_ink(digit: np.ndarray, side: int) -> FloatImage:
    """(28, 28) uint8 -> (side, side) ink coverage in [0, 1], bicubic like a smooth pen."""
    resized = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(resized, np.float32) / 255.0


def _ramp(height: int, width: int, angle: float) -> FloatImage:
    """(height, width): 0 at one corner of the frame rising to 1 at the opposite side,
    along direction `angle`."""
    rows, cols = np.indices((height, width), dtype=np.float32)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    ramp: FloatImage = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    return ramp


def _to_uint8(levels: np.ndarray) -> np.ndarray:
    quantised: np.ndarray = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return quantised


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class InputPath:
    """One way a client sends a digit: a file format and how the service preprocesses it."""

    name: str
    description: str
    preprocess: Preprocess | None  # None: JSON `pixels`, no file
    make_file: FileMaker | None = None

    def pixels(self, digits: np.ndarray, seed: int) -> FloatImage:
        """(N, 28, 28) uint8 digits -> (N, 28, 28) model input, as the service reads it:
        files in requests of VAE_MAX_BATCH, each under the service's decode limits."""
        if self.make_file is None or self.preprocess is None:
            rows = (digits.astype(np.float32) / 255.0).reshape(len(digits), -1).tolist()
            return pixels_to_array(rows)
        settings = Settings()
        files = self.files(digits, seed)
        requests = [
            image_bytes_to_pixels(
                files[start : start + settings.max_batch],
                self.preprocess,
                decode_limits(settings),
            )
            for start in range(0, len(files), settings.max_batch)
        ]
        pixels: FloatImage = np.concatenate(requests)
        return pixels

    def files(self, digits: np.ndarray, seed: int) -> list[bytes]:
        assert self.make_file is not None
        return [
            self.make_file(digit, np.random.default_rng([seed, index]))
            for index, digit in enumerate(digits)
        ]


INPUT_PATHS: dict[str, InputPath] = {
    path.name: path
    for path in (
        InputPath("pixels_json", "JSON `pixels`, 784 floats (uint8 / 255)", None),
        InputPath(
            "png_mnist", "28x28 greyscale PNG, preprocess=mnist (default)", "mnist", png_file
        ),
        InputPath("png_none", "28x28 greyscale PNG, preprocess=none", "none", png_file),
        InputPath(
            "scan_like",
            "dark on light paper, upscaled 3-5x, JPEG q75-95, preprocess=mnist",
            "mnist",
            scan_like,
        ),
        InputPath(
            "photo_like",
            "320x240 RGB JPEG q70-92: off-centre, rotated +-10 deg, light drop 0-100 levels "
            "across the frame, noise, blur; preprocess=mnist",
            "mnist",
            photo_like,
        ),
        InputPath(
            "photo_like_drop0",
            "photo_like under even light (no drop)",
            "mnist",
            partial(photo_like, light_drop=(0.0, 0.0)),
        ),
        InputPath(
            "photo_like_drop60",
            "photo_like with a light drop of 60 grey levels",
            "mnist",
            partial(photo_like, light_drop=(60.0, 60.0)),
        ),
        InputPath(
            "photo_like_drop100",
            "photo_like with a light drop of 100 grey levels",
            "mnist",
            partial(photo_like, light_drop=(100.0, 100.0)),
        ),
    )
}
