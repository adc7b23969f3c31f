"""Image files that are cheap to send and expensive to decode, built in memory.

Each is what a hostile client can upload within the body limit: the decode budget
(VAE_MAX_REQUEST_PIXELS, VAE_MAX_IMAGE_ASPECT_RATIO, VAE_MAX_IMAGE_PIXELS) must refuse it
or keep its decoding cheap.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=32)
def blank_png(width: int, height: int) -> bytes:
    """An all-black 8-bit greyscale PNG of any size, written without Pillow allocating it:
    zlib squeezes the zero rows ~1000:1 (5000x5000 -> ~25 KB)."""
    row = b"\x00" * (width + 1)  # filter byte 0, then the pixels
    rows_per_block = max(1, (1 << 20) // len(row))  # compress ~1 MB of rows per call
    full_blocks, rest = divmod(height, rows_per_block)
    compressor = zlib.compressobj(9)
    block = row * rows_per_block
    parts = [compressor.compress(block) for _ in range(full_blocks)]
    parts += [compressor.compress(row * rest), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height over a few rows of data: what a decoder sees
    first, for limits that must refuse a file before decoding it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + blank_png(1, 1)[33:]


def encoded(width: int, height: int, fmt: str, mode: str = "L", **options: object) -> bytes:
    """A flat picture of width x height in `fmt`, through Pillow."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 0).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noisy_jpeg(width: int, height: int, quality: int = 95, progressive: bool = False) -> bytes:
    """A JPEG whose every block carries detail: the most the decoder can be made to do."""
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, progressive=progressive)
    return buffer.getvalue()


def oriented_jpeg(picture: Image.Image, orientation: int) -> bytes:
    """`picture` stored as a JPEG with EXIF Orientation = `orientation`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()
