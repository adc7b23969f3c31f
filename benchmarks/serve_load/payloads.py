"""Request bodies, encoded once up front so that the load generator only replays bytes."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DIGIT_COUNT = 256
# Every multipart body uses this boundary: a request is replayed as fixed bytes anyway.
BOUNDARY = "serve-load-boundary-7f3a9c"


@dataclass(frozen=True)
class Payload:
    method: str
    path: str  # with the query string
    body: bytes
    content_type: str
    images: int  # digits sent (scoring, reconstruction) or asked for (sampling)

    def http_request(self, host: str) -> bytes:
        """The whole HTTP/1.1 request, as wrk sends it on a keep-alive connection."""
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode("ascii") + self.body


def multipart(field_name: str, files: Sequence[bytes]) -> tuple[bytes, str]:
    """PNGs as multipart/form-data parts that all carry `field_name`; (body, content type)."""
    chunks: list[bytes] = []
    for index, data in enumerate(files):
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name={json.dumps(field_name)}; "
            f'filename="digit{index}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        chunks += [head.encode(), data, b"\r\n"]
    chunks.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={BOUNDARY}"


def upload(path: str, field_name: str, files: Sequence[bytes]) -> Payload:
    body, content_type = multipart(field_name, files)
    return Payload("POST", path, body, content_type, len(files))


def post_json(path: str, document: object, images: int) -> Payload:
    return Payload("POST", path, json.dumps(document).encode(), "application/json", images)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def mnist_digits(data_root: Path, count: int) -> list[bytes] | None:
    """The first `count` MNIST test digits as PNGs, or None when MNIST is not there."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return None
    try:
        images = MNIST(root=str(data_root), train=False, download=False).data[:count]
    except RuntimeError:  # torchvision's "Dataset not found"
        return None
    return [png_bytes(image.numpy()) for image in images]


def synthetic_digits(count: int, seed: int = 0) -> list[bytes]:
    """28x28 white strokes on black, a few random lines each."""
    rng = random.Random(seed)
    digits = []
    for _ in range(count):
        image = Image.new("L", (28, 28))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(2, 4)):
            points = [(rng.randint(5, 22), rng.randint(4, 23)) for _ in range(2)]
            draw.line(points, fill=255, width=rng.randint(2, 3))
        digits.append(png_bytes(np.asarray(image)))
    return digits


def load_digits(data_root: Path) -> tuple[list[bytes], str]:
    """(PNGs, where they came from): MNIST test digits when there, else synthetic strokes."""
    digits = mnist_digits(data_root, DIGIT_COUNT)
    if digits is not None:
        return digits, f"MNIST test digits from {data_root}"
    return synthetic_digits(DIGIT_COUNT), "synthetic stroke images (no MNIST under --data-root)"
