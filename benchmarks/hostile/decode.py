"""Decode CPU of the worst uploads the decode budget lets through (and of those it refuses).

    python -m benchmarks.hostile.decode

time.process_time around app.imaging.image_bytes_to_pixels with the default limits, best of
two runs per case: what one request costs the thread that decodes it. Run by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.errors import ClientError
from app.imaging import DecodeLimits, image_bytes_to_pixels
from benchmarks.hostile.images import blank_png, encoded, noisy_jpeg

CASES: list[tuple[str, Callable[[], list[bytes]]]] = [
    ("64 x PNG 5000x5000 all-zero", lambda: [blank_png(5000, 5000)] * 64),
    ("PNG 1 x 10,000,000", lambda: [blank_png(1, 10_000_000)]),
    ("PNG 25 MP + 15 MP grey", lambda: [blank_png(5000, 5000), blank_png(3872, 3872)]),
    ("PNG 1118x22360 + 790x15800 (20:1)", lambda: [blank_png(1118, 22360), blank_png(790, 15800)]),
    ("64 x PNG 790x790 grey", lambda: [blank_png(790, 790)] * 64),
    ("PNG 3162x3162 RGBA", lambda: [encoded(3162, 3162, "PNG", mode="RGBA")]),
    ("PNG 5000x5000 RGBA", lambda: [encoded(5000, 5000, "PNG", mode="RGBA")]),
    ("JPEG 1980x1980 noise q95 (3.9 MB)", lambda: [noisy_jpeg(1980, 1980)]),
    ("JPEG 1980x1980 noise progressive", lambda: [noisy_jpeg(1980, 1980, progressive=True)]),
    ("17 x JPEG 5000x5000 flat (4.9 MB)", lambda: [encoded(5000, 5000, "JPEG")] * 17),
    ("GIF 5000x5000 + 3872x3872", lambda: [encoded(5000, 5000, "GIF"), encoded(3872, 3872, "GIF")]),
    ("GIF 5000x5000", lambda: [encoded(5000, 5000, "GIF")]),
    (
        "TIFF deflate 5000x5000",
        lambda: [encoded(5000, 5000, "TIFF", compression="tiff_adobe_deflate")],
    ),
    ("WEBP lossy 3651x3651 RGB", lambda: [encoded(3651, 3651, "WEBP", mode="RGB", quality=80)]),
    ("WEBP lossy 3162x3162 RGB", lambda: [encoded(3162, 3162, "WEBP", mode="RGB", quality=80)]),
    (
        "WEBP lossless 3651x3651 RGB",
        lambda: [encoded(3651, 3651, "WEBP", mode="RGB", lossless=True)],
    ),
    ("BMP 2000x2500 grey (5 MB)", lambda: [encoded(2000, 2500, "BMP")]),
]


def measure(payloads: list[bytes], limits: DecodeLimits) -> tuple[float, str]:
    best = float("inf")
    outcome = ""
    for _ in range(2):
        start = time.process_time()
        try:
            image_bytes_to_pixels(payloads, "mnist", limits)
            outcome = "accepted"
        except ClientError as exc:
            outcome = f"{exc.status_code} {str(exc)[:48]}"
        best = min(best, time.process_time() - start)
    return best * 1000, outcome


def main() -> None:
    limits = DecodeLimits()
    print(f"# decode CPU per request, default limits {limits}")
    print(f"{'upload':36} {'bytes':>10} {'CPU ms':>8}  outcome")
    for name, make in CASES:
        payloads = make()
        cpu_ms, outcome = measure(payloads, limits)
        size = sum(map(len, payloads))
        print(f"{name:36} {size:>10,} {cpu_ms:8.1f}  {outcome}", flush=True)


if __name__ == "__main__":
    main()
