"""The ways a digit reaches /anomaly-score, built from MNIST digits: JSON pixels, the digit
as a 28x28 PNG file (with preprocess=mnist or none), a scan and a phone photo of it on paper.

Files go through the readers that serve requests (`app.imaging.image_bytes_to_pixels`, which
`app.uploads.decode_uploads` calls, VAE_MAX_BATCH files at a time under the service's decode
limits; JSON pixels through `pixels_to_array`), so whatever
preprocessing main serves is what gets measured. Every picture is drawn from its own
generator seeded by (seed, index): image i looks the same whatever --limit is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from app.config import Settings
from app.imaging import Digits, Preprocess, image_bytes_to_digits, pixels_to_array
from app.uploads import decode_limits
from training.renderings import (
    PHOTO_SIZE,
    FileMaker,
    drawn_like,
    photo_like,
    png_file,
    scan_like,
)
from vae_common.pixels import FloatImage

__all__ = ["INPUT_PATHS", "PHOTO_SIZE", "InputPath", "photo_like", "png_file", "scan_like"]


@dataclass(frozen=True)
class InputPath:
    """One way a client sends a digit: a file format and how the service preprocesses it."""

    name: str
    description: str
    preprocess: Preprocess | None  # None: JSON `pixels`, no file
    make_file: FileMaker | None = None

    def pixels(self, digits: np.ndarray, seed: int) -> FloatImage:
        """(N, 28, 28) uint8 digits -> (N, 28, 28) model input, as the service reads it."""
        return self.digits(digits, seed).pixels

    def digits(self, digits: np.ndarray, seed: int) -> Digits:
        """(N, 28, 28) uint8 digits -> the model input and refit flags, as the service reads
        them: files in requests of VAE_MAX_BATCH, each under the service's decode limits."""
        if self.make_file is None or self.preprocess is None:
            rows = (digits.astype(np.float32) / 255.0).reshape(len(digits), -1).tolist()
            pixels = pixels_to_array(rows)
            return Digits(pixels, np.zeros(len(pixels), dtype=bool))
        settings = Settings()
        files = self.files(digits, seed)
        requests = [
            image_bytes_to_digits(
                files[start : start + settings.max_batch],
                self.preprocess,
                decode_limits(settings),
            )
            for start in range(0, len(files), settings.max_batch)
        ]
        return Digits(
            np.concatenate([part.pixels for part in requests]),
            np.concatenate([part.refit for part in requests]),
        )

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
            "drawn_like",
            "resampled 2-6x, light or dark, anywhere in a frame up to 2x, PNG, preprocess=mnist",
            "mnist",
            drawn_like,
        ),
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
