"""Photo-like pictures of a dark digit on white paper, for the README demo
(scripts/paper_digit.py) and the tests of real-world uploads: no network, no camera needed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def paper_photo(digit: str, size: int = 300, seed: int = 0) -> Image.Image:
    """A dark pen digit ('0' or '7') on slightly uneven white paper, like a phone photo."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(225, 245, size, dtype=np.float32)[None, :]  # uneven lighting
    paper = gradient + rng.normal(0.0, 4.0, size=(size, size)).astype(np.float32)
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    s = size / 300
    width = max(1, int(16 * s))
    if digit == "7":
        pen.line([(95 * s, 75 * s), (205 * s, 70 * s), (135 * s, 235 * s)], fill=35, width=width)
    elif digit == "0":
        # A slanted oval, drawn on its own layer and rotated, as handwritten zeros lean.
        oval = Image.new("L", (size, size), 0)
        ImageDraw.Draw(oval).ellipse(
            [88 * s, 62 * s, 212 * s, 238 * s], outline=255, width=int(22 * s)
        )
        ink = np.asarray(oval.rotate(-18, resample=Image.Resampling.BILINEAR), np.float32) / 255
        pixels = np.asarray(image, np.float32) * (1 - ink) + 35 * ink
        image = Image.fromarray(pixels.astype(np.uint8))
    else:
        raise ValueError(f"no drawing for digit {digit!r}")
    return image.filter(ImageFilter.GaussianBlur(1.2 * s))
