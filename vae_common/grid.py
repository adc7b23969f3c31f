"""Image grids and PNG encoding, shared by the service and the training plots."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def make_grid(
    images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 0.0
) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (H_grid, W_grid) tiled like torchvision.utils.make_grid.

    `nrow` images per row; every tile gets `padding` pixels of `pad_value` on each side.
    """
    count, _, height, width = images.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = torch.full(
        (rows * cell_h + padding, columns * cell_w + padding), pad_value, dtype=images.dtype
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * cell_h + padding, column * cell_w + padding
        grid[top : top + height, left : left + width] = images[index, 0]
    return grid


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[0, 1] floats -> uint8 with rounding, as torchvision.utils.save_image does."""
    return image.detach().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def png_bytes(image: torch.Tensor, scale: int = 1) -> bytes:
    """(H, W) in [0, 1] -> grayscale PNG, upscaled by nearest neighbour when scale > 1."""
    picture = Image.fromarray(to_uint8(image))
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
