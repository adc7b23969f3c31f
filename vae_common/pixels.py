"""The one pixel convention of this project, and MNIST's recipe for getting there.

Convention: float32 in [0, 1], white digit (1.0) on black background (0.0), 28x28.
Training, the service, the benchmarks and the tests all go through `to_unit_interval`;
real-world pictures go through `mnist_style` first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

IMAGE_SIZE = 28
PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
# MNIST fits each digit's bounding box into 20x20 and centres its mass in the 28x28 frame.
DIGIT_BOX = 20
# A pixel counts as ink when it is this far above the background (on a 0..1 scale).
INK_THRESHOLD = 0.15

FloatImage = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PixelSpec:
    """What a checkpoint expects as input; stored in its metadata."""

    height: int = IMAGE_SIZE
    width: int = IMAGE_SIZE
    channels: int = 1
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)
    polarity: str = "white digit on black background"
    source_scaling: str = "uint8 / 255"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] floats, (B, 28, 28) or (B, 1, 28, 28) -> float32 (B, 1, 28, 28)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"expected images of shape (B, 28, 28) or (B, 1, 28, 28), got {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32).clamp_(0.0, 1.0)


def mnist_style(gray: FloatImage, alpha: FloatImage | None = None) -> FloatImage:
    """A picture of one digit, any size, grey levels in [0, 1] -> (28, 28) MNIST-style image.

    MNIST's own recipe: flatten transparency onto the background, make the digit white on
    black (inverting a light background), crop to the ink, fit into 20x20 keeping the aspect
    ratio (with anti-aliasing), stretch the strokes to full white, then place it so its
    centre of mass is the centre of 28x28.
    A picture with no ink at all comes back black.

    This runs once per uploaded image on the service's hot path, so each step is written
    with few numpy calls (a 28x28 upload took ~200 us through np.median, np.clip and
    np.indices, ~50 us now); every step computes the same float32 values as the plain
    recipe (tests/test_pixels.py holds that recipe and compares).
    """
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {gray.shape}")
    gray = gray.astype(np.float32, copy=False)
    if alpha is not None:
        gray = _flatten_alpha(gray, alpha.astype(np.float32, copy=False))
    if _background_level(gray) > 0.5:
        gray = 1.0 - gray
    # Subtract the background so paper that is grey rather than black does not count as ink.
    ink = _clip_unit(gray - _background_level(gray))
    box = _ink_bounding_box(ink)
    if box is None:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    top, bottom, left, right = box
    digit = _fit_into_box(ink[top:bottom, left:right], DIGIT_BOX)
    # MNIST's sources were bilevel scans: its strokes always reach full white. Stretch so
    # that a photo's grey, anti-aliased strokes do too.
    peak = max(float(digit.max()), 1e-6)
    if peak != 1.0:  # dividing by 1 changes nothing: MNIST digits skip it
        digit /= peak
        digit = _clip_unit(digit)
    return _centre_by_mass(digit)


def _clip_unit(values: FloatImage) -> FloatImage:
    """np.clip(values, 0, 1) in place (NaN stays NaN), without np.clip's Python wrapper."""
    np.maximum(values, 0.0, out=values)
    np.minimum(values, 1.0, out=values)
    return values


def _flatten_alpha(gray: FloatImage, alpha: FloatImage) -> FloatImage:
    """Composite onto the backdrop that contrasts with the opaque strokes.

    A transparent PNG usually has strokes that are opaque and a background that is not;
    flattening onto the opposite of the strokes' colour keeps the strokes visible whether
    they were drawn dark or light.
    """
    weight = float(alpha.sum())
    stroke_level = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
    backdrop = 1.0 if stroke_level < 0.5 else 0.0
    flattened: FloatImage = gray * alpha + backdrop * (1.0 - alpha)
    return flattened


def _background_level(gray: FloatImage) -> float:
    """Median of the one-pixel border: the background of a picture of a centred digit.

    np.median's value (the mean of the two middle values of an even count, in float32; NaN
    when there is one), from one sort: np.median costs ~25 us on a 108-pixel border.
    """
    border = np.concatenate((gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]))
    border.sort()
    if np.isnan(border[-1]):  # NaN sorts last
        return float("nan")
    middle = border.size // 2
    if border.size % 2:
        return float(border[middle])
    return float((border[middle - 1] + border[middle]) / np.float32(2.0))


def _ink_bounding_box(ink: FloatImage) -> tuple[int, int, int, int] | None:
    is_ink = ink > INK_THRESHOLD
    rows = np.flatnonzero(is_ink.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(is_ink.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit_into_box(ink: FloatImage, box: int) -> FloatImage:
    """Resize (Lanczos) so the long side is `box` pixels; a new array, clipped to [0, 1]."""
    height, width = ink.shape
    scale = box / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == (width, height):
        # Pillow's resize to the same size returns a copy: skip the round trip (MNIST
        # digits already are 20 pixels on their long side).
        return _clip_unit(ink.copy())
    resized = Image.fromarray(ink).resize(new_size, Image.Resampling.LANCZOS)
    return _clip_unit(np.array(resized, dtype=np.float32))


@lru_cache(maxsize=512)
def _index_grids(height: int, width: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """np.indices((height, width)), built once per shape (digits are at most 20x20)."""
    rows, cols = np.indices((height, width))
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def _centre_by_mass(digit: FloatImage) -> FloatImage:
    height, width = digit.shape
    total = float(digit.sum())
    rows, cols = _index_grids(height, width)
    centre_row = float((rows * digit).sum() / total) if total > 0 else (height - 1) / 2
    centre_col = float((cols * digit).sum() / total) if total > 0 else (width - 1) / 2
    middle = (IMAGE_SIZE - 1) / 2
    top = min(max(round(middle - centre_row), 0), IMAGE_SIZE - height)
    left = min(max(round(middle - centre_col), 0), IMAGE_SIZE - width)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas
