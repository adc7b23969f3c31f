"""Synthetic stand-ins for MNIST, so the tests need neither network nor ../shared."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def stroke_digits(count: int, seed: int) -> np.ndarray:
    """(count, 28, 28) uint8: white pen strokes on black, roughly digit-sized and centred."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for index in range(count):
        canvas = Image.new("L", (28, 28), 0)
        pen = ImageDraw.Draw(canvas)
        points = [tuple(rng.integers(6, 22, size=2).tolist()) for _ in range(rng.integers(2, 5))]
        pen.line(points, fill=255, width=int(rng.integers(2, 4)))
        if rng.random() < 0.5:
            box = sorted(rng.integers(6, 22, size=2).tolist())
            pen.ellipse([box[0], 6, box[1] + 2, 21], outline=255, width=2)
        images[index] = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)))
    return images


def write_idx_mnist(root: Path, train_count: int, test_count: int, seed: int = 0) -> Path:
    """Write MNIST/raw/*-ubyte files in torchvision's layout under `root`; return `root`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    splits = {"train": train_count, "t10k": test_count}
    for offset, (prefix, count) in enumerate(splits.items()):
        images = stroke_digits(count, seed + offset)
        labels = np.zeros(count, dtype=np.uint8)
        header = struct.pack(">IIII", IDX_IMAGES_MAGIC, count, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        label_header = struct.pack(">II", IDX_LABELS_MAGIC, count)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(label_header + labels.tobytes())
    return root
