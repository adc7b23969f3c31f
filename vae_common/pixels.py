"""The one pixel convention of this project, and MNIST's recipe for getting there.

Convention: float32 in [0, 1], white digit (1.0) on black background (0.0), 28x28.
Training, the service, the benchmarks and the tests all go through `to_unit_interval`;
real-world pictures go through `mnist_style` first.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class PreparedDigit:
    """An upload after `mnist_digit`: the (28, 28) pixels, and whether they were refitted.
    `refit` False means the upload already was an MNIST-style digit and is scored exactly as
    its pixels; True means it was cropped, resized and centred here, a different input
    distribution with a calibration of its own (vae_common.scoring, `CALIBRATIONS`)."""

    pixels: FloatImage
    refit: bool


def mnist_style(gray: FloatImage, alpha: FloatImage | None = None) -> FloatImage:
    """A picture of one digit, any size, grey levels in [0, 1] -> (28, 28) MNIST-style image
    (`mnist_digit`'s pixels)."""
    return mnist_digit(gray, alpha).pixels


def mnist_digit(gray: FloatImage, alpha: FloatImage | None = None) -> PreparedDigit:
    """A picture of one digit, any size, grey levels in [0, 1] -> MNIST-style (28, 28).

    MNIST's own recipe: flatten transparency onto the background, make the digit white on
    black (inverting a light background), remove the background, crop to the ink, fit into
    20x20 keeping the aspect ratio (with anti-aliasing), stretch the strokes to full white,
    then place it so its centre of mass is the centre of 28x28.
    - A 28x28 upload already is in MNIST's format and is kept as sent (white on black, its
      background removed): refitting an MNIST digit would only resample it and cut its faint
      edge pixels, and refitting anything else would hide what makes it unlike a digit
      (Fashion-MNIST shrunk into a 20-pixel box looks far more digit-like than as sent).
    - The background is a plane fitted to the picture's border, not one grey level: a phone
      photo's paper darkens across the frame, and a flat level leaves a wedge of grey "ink".
    - Sensor noise above the background is removed before cropping (soft threshold at three
      times its spread on the border): MNIST's background is exactly 0.
    A picture with no ink at all comes back black.

    This runs once per uploaded image on the service's hot path, so each step is written
    with few numpy calls.
    """
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {gray.shape}")
    gray = gray.astype(np.float32, copy=False)
    if alpha is not None:
        gray = _flatten_alpha(gray, alpha.astype(np.float32, copy=False))
    level = _background_level(gray)
    if level > 0.5:
        gray = 1.0 - gray
        level = _background_level(gray)
    ink, noise = _remove_background(gray, level)
    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return PreparedDigit(ink, refit=False)
    if noise > 0.0:
        # Soft threshold: the faint edges of strokes keep their shape, the noise goes.
        ink = _clip_unit(ink - np.float32(NOISE_FLOOR_SIGMAS * noise))
    box = _ink_bounding_box(ink)
    if box is None:
        return PreparedDigit(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32), refit=True)
    digit = _fit_into_box(ink, box, DIGIT_BOX)
    # MNIST's sources were bilevel scans: its strokes always reach full white. Stretch so
    # that a photo's grey, anti-aliased strokes do too.
    peak = max(float(digit.max()), 1e-6)
    if peak != 1.0:
        digit /= peak
        digit = _clip_unit(digit)
    return PreparedDigit(_centre_by_mass(digit), refit=True)


NOISE_FLOOR_SIGMAS = 3.0
# Border pixels further than this many robust spreads from the fitted plane are ink (a
# digit touching the frame), left out of the second fit.
PLANE_OUTLIER_SIGMAS = 3.0


def _remove_background(gray: FloatImage, level: float) -> tuple[FloatImage, float]:
    """gray minus its background, clipped to [0, 1], and the noise spread on the border.

    A border of one level (MNIST's, a clean scan's) is that level, with no noise: the
    common case costs one sort. Otherwise the background is a plane a + b*row + c*col
    fitted to the border by least squares, refitted without the border pixels that stand
    out from it (strokes reaching the frame); the spread is 1.4826 x the median absolute
    residual (the standard deviation of Gaussian noise). `level`: the border's median."""
    border = _border(gray)
    if not np.isfinite(level) or float(border.max() - border.min()) <= 1.0 / 255.0:
        return _clip_unit(gray - np.float32(level)), 0.0
    height, width = gray.shape
    rows, cols = _border_coordinates(height, width)
    design = np.stack((np.ones_like(rows), rows, cols), axis=1)
    values = border.astype(np.float64)
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    residuals = values - design @ coefficients
    spread = 1.4826 * float(np.median(np.abs(residuals)))
    keep = residuals <= PLANE_OUTLIER_SIGMAS * max(spread, 1.0 / 255.0)
    if not keep.all() and keep.sum() >= 3:
        coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residuals = values[keep] - design[keep] @ coefficients
        spread = 1.4826 * float(np.median(np.abs(residuals)))
    # a + b*row + c*col as a column plus a row, broadcast: one pass over the picture.
    down = (coefficients[0] + coefficients[1] * np.arange(height)).astype(np.float32)
    across = (coefficients[2] * np.arange(width)).astype(np.float32)
    ink = gray - down[:, None]
    ink -= across[None, :]
    return _clip_unit(ink), spread


def _border(gray: FloatImage) -> FloatImage:
    """The one-pixel border, in the order `_border_coordinates` lists."""
    border: FloatImage = np.concatenate((gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]))
    return border


@lru_cache(maxsize=64)
def _border_coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate(
        (np.zeros(width), np.full(width, height - 1), np.arange(height), np.arange(height))
    ).astype(np.float64)
    cols = np.concatenate(
        (np.arange(width), np.arange(width), np.zeros(height), np.full(height, width - 1))
    ).astype(np.float64)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


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
    border = _border(gray)
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


def _fit_into_box(ink: FloatImage, box: tuple[int, int, int, int], side: int) -> FloatImage:
    """Resize (Lanczos) so the ink box's long side is `side` pixels; a new array, clipped
    to [0, 1]. The crop keeps a margin of two output pixels around the box: the faint
    anti-aliased edges that fall under the ink threshold are part of the digit."""
    top, bottom, left, right = box
    height, width = bottom - top, right - left
    scale = side / max(height, width)
    margin = math.ceil(2.0 / scale)
    height_limit, width_limit = ink.shape
    top, left = max(top - margin, 0), max(left - margin, 0)
    bottom, right = min(bottom + margin, height_limit), min(right + margin, width_limit)
    crop = ink[top:bottom, left:right]
    crop_height, crop_width = crop.shape
    # At most 28 pixels: the margin may not push a side past the frame.
    new_size = (
        min(IMAGE_SIZE, max(1, round(crop_width * scale))),
        min(IMAGE_SIZE, max(1, round(crop_height * scale))),
    )
    if new_size == (crop_width, crop_height):
        # Pillow's resize to the same size returns a copy: skip the round trip.
        return _clip_unit(crop.copy())
    resized = Image.fromarray(crop).resize(new_size, Image.Resampling.LANCZOS)
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
    # The digit's box fits the frame wherever its centre of mass lands (20 of 28 pixels);
    # only the faint margin around it may fall outside, and is cut there.
    top, left = round(middle - centre_row), round(middle - centre_col)
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    source_top, source_left = max(-top, 0), max(-left, 0)
    top, left = max(top, 0), max(left, 0)
    rows_kept = min(height - source_top, IMAGE_SIZE - top)
    cols_kept = min(width - source_left, IMAGE_SIZE - left)
    canvas[top : top + rows_kept, left : left + cols_kept] = digit[
        source_top : source_top + rows_kept, source_left : source_left + cols_kept
    ]
    return canvas
