"""The service's numpy grid and PNG writer draw the same pixels as make_grid + png_bytes."""

from __future__ import annotations

import io

import numpy as np
import pyspng
import pytest
import torch
from PIL import Image

from vae_common.grid import make_grid, png_bytes, to_uint8, uint8_grid, uint8_png


def pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.parametrize(("count", "nrow"), [(1, 1), (2, 1), (5, 3), (63, 8), (64, 8), (10, 100)])
def test_uint8_grid_matches_make_grid(count: int, nrow: int) -> None:
    images = np.random.default_rng(count).random((count, 1, 28, 28), dtype=np.float32)
    images[0, 0, 0, :4] = [0.0, 1.0, 0.5 / 255, 1.5 / 255]  # the rounding edges
    expected = to_uint8(make_grid(torch.from_numpy(images), nrow=nrow))
    np.testing.assert_array_equal(uint8_grid(images, nrow), expected)


@pytest.mark.parametrize("scale", [1, 2, 5])
def test_uint8_png_shows_what_png_bytes_shows(scale: int) -> None:
    images = np.random.default_rng(scale).random((2, 1, 28, 28), dtype=np.float32)
    expected = png_bytes(make_grid(torch.from_numpy(images), nrow=2, padding=0), scale=scale)
    got = uint8_png(uint8_grid(images, nrow=2, padding=0), scale=scale)
    np.testing.assert_array_equal(pixels_of(got), pixels_of(expected))


@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (242, 242)])
def test_uint8_png_reads_back_exactly_in_strict_decoders(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    encoded = uint8_png(pixels)
    with Image.open(io.BytesIO(encoded)) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(encoded)) as image:
        assert image.mode == "L" and image.size == (shape[1], shape[0])
    np.testing.assert_array_equal(pyspng.load(encoded), pixels)  # libspng checks CRCs too
