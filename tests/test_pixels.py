"""vae_common.pixels.mnist_style is written for speed; these tests hold it to the plain recipe
(MNIST's steps as straightforward numpy and Pillow calls): the same float32 values, exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_common.pixels import (
    DIGIT_BOX,
    IMAGE_SIZE,
    INK_THRESHOLD,
    FloatImage,
    mnist_digit,
    mnist_style,
)

MNIST_SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


def plain_mnist_style(gray: FloatImage, alpha: FloatImage | None = None) -> FloatImage:
    """The recipe with one numpy call per idea (before the fast version)."""

    def border_of(image: FloatImage) -> FloatImage:
        return np.concatenate([image[0, :], image[-1, :], image[:, 0], image[:, -1]])

    gray = gray.astype(np.float32, copy=False)
    if alpha is not None:
        weight = float(alpha.sum())
        stroke_level = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
        backdrop = 1.0 if stroke_level < 0.5 else 0.0
        gray = gray * alpha + backdrop * (1.0 - alpha)
    if float(np.median(border_of(gray))) > 0.5:
        gray = 1.0 - gray
    border = border_of(gray)
    noise = 0.0
    if float(border.max() - border.min()) <= 1.0 / 255.0:
        ink = np.clip(gray - np.float32(np.median(border)), 0.0, 1.0)
    else:  # a plane through the border, refitted without the pixels that stand out
        height, width = gray.shape
        grid_rows, grid_cols = np.indices((height, width))
        rows = border_of(grid_rows.astype(np.float32)).astype(np.float64)
        cols = border_of(grid_cols.astype(np.float32)).astype(np.float64)
        design = np.stack([np.ones_like(rows), rows, cols], axis=1)
        values = border.astype(np.float64)
        coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
        residuals = values - design @ coefficients
        noise = 1.4826 * float(np.median(np.abs(residuals)))
        keep = residuals <= 3.0 * max(noise, 1.0 / 255.0)
        if not keep.all() and keep.sum() >= 3:
            coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
            noise = 1.4826 * float(np.median(np.abs(values[keep] - design[keep] @ coefficients)))
        down = (coefficients[0] + coefficients[1] * np.arange(height)).astype(np.float32)
        across = (coefficients[2] * np.arange(width)).astype(np.float32)
        ink = np.clip(gray - down[:, None] - across[None, :], 0.0, 1.0)
    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return ink  # already MNIST's format
    if noise > 0.0:
        ink = np.clip(ink - np.float32(3.0 * noise), 0.0, 1.0)
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    scale = DIGIT_BOX / max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    margin = math.ceil(2.0 / scale)
    top, left = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    cropped = ink[top : rows[-1] + 1 + margin, left : cols[-1] + 1 + margin]
    height, width = cropped.shape
    new_size = (
        min(IMAGE_SIZE, max(1, round(width * scale))),
        min(IMAGE_SIZE, max(1, round(height * scale))),
    )
    resized = Image.fromarray(cropped).resize(new_size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    digit = np.clip(digit / max(float(digit.max()), 1e-6), 0.0, 1.0)
    height, width = digit.shape
    total = float(digit.sum())
    grid_rows, grid_cols = np.indices(digit.shape)
    centre_row = float((grid_rows * digit).sum() / total) if total > 0 else (height - 1) / 2
    centre_col = float((grid_cols * digit).sum() / total) if total > 0 else (width - 1) / 2
    middle = (IMAGE_SIZE - 1) / 2
    top, left = round(middle - centre_row), round(middle - centre_col)
    frame = np.zeros((3 * IMAGE_SIZE, 3 * IMAGE_SIZE), dtype=np.float32)  # room either side
    frame[
        IMAGE_SIZE + top : IMAGE_SIZE + top + height, IMAGE_SIZE + left : IMAGE_SIZE + left + width
    ] = digit
    return frame[IMAGE_SIZE : 2 * IMAGE_SIZE, IMAGE_SIZE : 2 * IMAGE_SIZE]


def mnist_digits() -> FloatImage:
    images: FloatImage = np.load(MNIST_SAMPLE)["images"].astype(np.float32) / 255.0
    return images


def assert_same_as_plain(gray: FloatImage, alpha: FloatImage | None = None) -> None:
    expected = plain_mnist_style(gray.copy(), None if alpha is None else alpha.copy())
    np.testing.assert_array_equal(mnist_style(gray, alpha), expected)


def test_mnist_digits_as_uploaded_come_out_exactly_as_the_plain_recipe() -> None:
    for digit in mnist_digits():
        assert_same_as_plain(digit)


def test_28x28_uploads_are_kept_as_sent_and_anything_else_is_refitted() -> None:
    for digit in mnist_digits()[:50]:
        kept = mnist_digit(digit)
        assert not kept.refit
        np.testing.assert_array_equal(kept.pixels, digit)  # exactly the pixel path's input
        np.testing.assert_allclose(mnist_digit(1.0 - digit).pixels, digit, atol=1e-6)
        picture = Image.fromarray(digit).resize((56, 56), Image.Resampling.BICUBIC)
        assert mnist_digit(np.asarray(picture, dtype=np.float32)).refit


def lit_unevenly(digit: FloatImage, drop: float, side: int = 120) -> FloatImage:
    """The digit in dark ink on light paper, the light falling by `drop` (0..1) from the
    left edge of the frame to the right, and a little sensor noise."""
    ink = np.asarray(Image.fromarray(digit).resize((side // 2, side // 2)), dtype=np.float32)
    page = np.zeros((side, side), dtype=np.float32)
    page[side // 4 : side // 4 + side // 2, side // 3 : side // 3 + side // 2] = ink
    paper = np.float32(0.94) - np.float32(0.8) * np.clip(page, 0.0, 1.0)
    light = 1.0 - drop * np.linspace(0.0, 1.0, side, dtype=np.float32)[None, :]
    noise = np.random.default_rng(0).normal(0.0, 0.01, page.shape).astype(np.float32)
    return np.clip(paper * light + noise, 0.0, 1.0)


def aligned_correlation(a: FloatImage, b: FloatImage) -> float:
    """The best correlation of a with b shifted by at most one pixel each way."""
    return max(
        float(np.corrcoef(a.ravel(), np.roll(b, (dy, dx), axis=(0, 1)).ravel())[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    """mask dilated by a (2 pixels + 1) square."""
    padded = np.pad(mask, pixels)
    height, width = mask.shape
    shifts = range(2 * pixels + 1)
    return np.logical_or.reduce(
        [padded[dy : dy + height, dx : dx + width] for dy in shifts for dx in shifts]
    )


@pytest.mark.parametrize("drop", [0.25, 0.4])  # 60 and 100 grey levels of 240
def test_uneven_light_is_removed_before_looking_for_ink(drop: float) -> None:
    for digit in mnist_digits()[:20]:
        even = mnist_style(lit_unevenly(digit, 0.0))
        uneven = mnist_style(lit_unevenly(digit, drop))
        # The same digit (centring may round a pixel differently)...
        assert aligned_correlation(even, uneven) > 0.9
        # ...and no grey wedge of paper: as much ink as under even light, and black
        # wherever the strokes (grown by two pixels) are not.
        assert abs(float(uneven.sum()) / float(even.sum()) - 1.0) < 0.15
        near_strokes = grown(np.maximum(even, uneven) > 0.05, 2)
        assert float(uneven[~near_strokes].max(initial=0.0)) < 0.1


def test_inverted_and_grey_paper_digits_come_out_exactly_as_the_plain_recipe() -> None:
    for digit in mnist_digits()[:100]:
        assert_same_as_plain(1.0 - digit)  # dark ink on white
        assert_same_as_plain(np.float32(0.2) + np.float32(0.6) * digit)  # grey paper, grey ink


@pytest.mark.parametrize("size", [(7, 7), (28, 40), (56, 56), (100, 37), (300, 300)])
def test_resized_digits_come_out_exactly_as_the_plain_recipe(size: tuple[int, int]) -> None:
    for digit in mnist_digits()[:40]:
        picture = Image.fromarray(digit).resize(size, Image.Resampling.BILINEAR)
        assert_same_as_plain(np.asarray(picture, dtype=np.float32))


def test_transparent_and_odd_pictures_come_out_exactly_as_the_plain_recipe() -> None:
    rng = np.random.default_rng(0)
    for digit in mnist_digits()[:40]:
        assert_same_as_plain(np.zeros_like(digit), alpha=digit)  # black strokes on clear
        assert_same_as_plain(rng.random(digit.shape, dtype=np.float32))  # noise
        assert_same_as_plain(np.float32(0.3) * digit)  # faint strokes, stretched to white
    for shape in [(1, 1), (1, 9), (9, 1), (2, 3)]:
        assert_same_as_plain(rng.random(shape, dtype=np.float32))
    assert_same_as_plain(np.ones((40, 30), dtype=np.float32))  # no ink at all
