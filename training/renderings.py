"""Digits as users send them, rendered from MNIST digits: a drawing resampled to another size,
a flatbed scan, a phone photo of the digit on paper under uneven light.

Training calibrates preprocess=mnist's input path on validation digits rendered this way
(vae_common.scoring's `refit` calibration), and benchmarks/input_paths.py measures the
service on test digits rendered the same way. Each picture comes from the generator it is
given, so a (seed, index) generator gives image i the same picture whatever else is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from vae_common.pixels import IMAGE_SIZE, FloatImage, PreparedDigit, mnist_digit

# One digit (28, 28) uint8, white on black, and its generator -> the bytes of a file.
FileMaker = Callable[[np.ndarray, np.random.Generator], bytes]
# The service decodes pictures at most this large (app.imaging.WORKING_SIZE).
WORKING_SIZE = 448

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


def drawn_like(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A digit drawn in an app or resized by a client: resampled to 2-6x, light or dark on
    its background, placed anywhere in a frame up to twice its size, PNG."""
    side = IMAGE_SIZE * int(rng.integers(2, 7))
    ink = _upscaled_ink(digit, side)
    frame = int(side * rng.uniform(1.0, 2.0))
    top, left = (int(rng.integers(0, frame - side + 1)) for _ in range(2))
    canvas = np.zeros((frame, frame), dtype=np.float32)
    canvas[top : top + side, left : left + side] = ink
    if rng.random() < 0.5:
        canvas = 1.0 - canvas
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(255.0 * canvas)).save(buffer, format="PNG")
    return buffer.getvalue()


# What training's refit calibration renders validation digit i as: RENDERINGS[i % 3].
RENDERINGS: tuple[FileMaker, ...] = (drawn_like, scan_like, photo_like)


def read_picture(data: bytes) -> PreparedDigit:
    """A rendered file -> what preprocess=mnist makes of it, decoded as app.imaging decodes
    uploads (JPEG drafted to greyscale, shrunk to the working size); tests compare the two."""
    image = Image.open(io.BytesIO(data))
    image.draft("L", (WORKING_SIZE, WORKING_SIZE))
    picture = image if image.mode == "L" else image.convert("L")
    picture.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    return mnist_digit(np.asarray(picture, dtype=np.float32) / 255.0)


def refit_calibration_digits(digits: np.ndarray, seed: int) -> FloatImage:
    """(N, 28, 28) uint8 digits -> (M, 28, 28) model inputs of those that preprocess=mnist
    refits once rendered (all but a few), digit i rendered by RENDERINGS[i % 3] from its
    own (seed, i) generator."""
    prepared = [
        read_picture(
            RENDERINGS[index % len(RENDERINGS)](digit, np.random.default_rng([seed, index]))
        )
        for index, digit in enumerate(digits)
    ]
    refit = [digit.pixels for digit in prepared if digit.refit]
    return np.stack(refit) if refit else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)


def _generator(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])
