"""vae_common.pixels.mnist_style is written for speed; these tests hold it to the plain recipe
(MNIST's steps as straightforward numpy and Pillow calls): the same float32 values, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_common.pixels import DIGIT_BOX, IMAGE_SIZE, INK_THRESHOLD, FloatImage, mnist_style

MNIST_SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


def plain_mnist_style(gray: FloatImage, alpha: FloatImage | None = None) -> FloatImage:
    """The recipe as first written (before the fast version): one numpy call per idea."""

    def background(image: FloatImage) -> float:
        border = np.concatenate([image[0, :], image[-1, :], image[:, 0], image[:, -1]])
        return float(np.median(border))

    gray = gray.astype(np.float32, copy=False)
    if alpha is not None:
        weight = float(alpha.sum())
        stroke_level = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
        backdrop = 1.0 if stroke_level < 0.5 else 0.0
        gray = gray * alpha + backdrop * (1.0 - alpha)
    if background(gray) > 0.5:
        gray = 1.0 - gray
    ink = np.clip(gray - background(gray), 0.0, 1.0)
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    cropped = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = cropped.shape
    scale = DIGIT_BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(cropped).resize(new_size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    digit = np.clip(digit / max(float(digit.max()), 1e-6), 0.0, 1.0)
    height, width = digit.shape
    total = float(digit.sum())
    grid_rows, grid_cols = np.indices(digit.shape)
    centre_row = float((grid_rows * digit).sum() / total) if total > 0 else (height - 1) / 2
    centre_col = float((grid_cols * digit).sum() / total) if total > 0 else (width - 1) / 2
    middle = (IMAGE_SIZE - 1) / 2
    top = int(np.clip(round(middle - centre_row), 0, IMAGE_SIZE - height))
    left = int(np.clip(round(middle - centre_col), 0, IMAGE_SIZE - width))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas


def mnist_digits() -> FloatImage:
    images: FloatImage = np.load(MNIST_SAMPLE)["images"].astype(np.float32) / 255.0
    return images


def assert_same_as_plain(gray: FloatImage, alpha: FloatImage | None = None) -> None:
    expected = plain_mnist_style(gray.copy(), None if alpha is None else alpha.copy())
    np.testing.assert_array_equal(mnist_style(gray, alpha), expected)


def test_mnist_digits_as_uploaded_come_out_exactly_as_the_plain_recipe() -> None:
    for digit in mnist_digits():
        assert_same_as_plain(digit)


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
