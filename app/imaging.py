"""Turning uploaded bytes into model input: decode safely, then MNIST-style preprocessing."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyspng
import torch
from PIL import Image, UnidentifiedImageError

from app.errors import InvalidInputError, UnsupportedMediaTypeError
from vae_common.grid import PNG_SIGNATURE
from vae_common.pixels import (
    IMAGE_SIZE,
    FloatImage,
    PreparedDigit,
    mnist_digit,
    to_unit_interval,
)

Preprocess = Literal["mnist", "none"]
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# Pictures are shrunk to this many pixels on their long side before preprocessing: the digit
# ends up 20 pixels tall anyway, and it bounds the memory a 25-megapixel upload can take.
WORKING_SIZE = 448
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# 8-bit greyscale PNGs up to this size, the common upload, skip Pillow (see _small_gray_png).
FAST_PNG_MAX_SIDE = 64
EXIF_ORIENTATION_TAG = 0x0112


class ImageInputError(InvalidInputError):
    """An uploaded image the service cannot use (422)."""


class UnsupportedImageError(UnsupportedMediaTypeError):
    """Bytes that are no image in a format the service reads (415)."""


@dataclass(frozen=True)
class DecodedImage:
    gray: FloatImage  # (H, W) float32 in [0, 1], as the picture shows it (no inversion yet)
    alpha: FloatImage | None  # (H, W) opacity in [0, 1], None when fully opaque
    original_size: tuple[int, int]  # (width, height) before shrinking


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may make the service decode (Settings names each knob)."""

    max_image_pixels: int = 25_000_000  # VAE_MAX_IMAGE_PIXELS
    max_request_pixels: int = 40_000_000  # VAE_MAX_REQUEST_PIXELS
    max_aspect_ratio: float = 20.0  # VAE_MAX_IMAGE_ASPECT_RATIO


@dataclass(frozen=True)
class OpenedImage:
    """An upload whose header has been read, not yet its pixels (Pillow opens lazily)."""

    image: Image.Image
    original_size: tuple[int, int]  # (width, height) as declared
    name: str

    @property
    def decode_samples(self) -> int:
        """Values the decoder will produce, pixels x channels: fewer pixels than declared for
        a JPEG in draft mode; channels because decoding and converting cost per value (a
        25 MP PNG: 89 ms of CPU greyscale, 433 ms RGBA; WEBP, always colour, 330-380 ms)."""
        width, height = self.image.size
        # Pillow's WEBP decoder always writes 4 bytes a pixel (RGBX or RGBA), and costs so:
        # 264 ms for a 13 MP RGB one, against 165 ms for a 10 MP RGBA PNG.
        channels = 4 if self.image.format == "WEBP" else len(self.image.getbands())
        return width * height * channels


# Pillow raises all of these on hostile files, not only OSError (struct.error on short
# headers, IndexError/KeyError in plugin tables): each means "not a usable image".
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombWarning,
)


def decode_image(
    data: bytes, max_pixels: int, name: str = "image", limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode any raster Pillow reads (first frame), refusing oversized or broken files."""
    limits = limits or DecodeLimits(max_image_pixels=max_pixels)
    opened = open_image(data, limits, name)
    return opened if isinstance(opened, DecodedImage) else load_image(opened)


def open_image(data: bytes, limits: DecodeLimits, name: str) -> OpenedImage | DecodedImage:
    """Read the header only and refuse what is not worth decoding; tiny greyscale PNGs are
    decoded at once (libspng, microseconds)."""
    if not data:
        raise ImageInputError(f"{name} is empty: send the bytes of a PNG, JPEG or other image")
    levels = _small_gray_png(data)
    if levels is not None:
        height, width = levels.shape
        return DecodedImage(gray=levels, alpha=None, original_size=(width, height))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            f"{name} is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ImageInputError(
            f"{name} has too many pixels (limit {limits.max_image_pixels}, VAE_MAX_IMAGE_PIXELS)"
        ) from None
    except _DECODE_ERRORS as exc:
        raise _undecodable(name, exc) from None
    width, height = image.size
    _check_declared_size(width, height, limits, name)
    # JPEG: decode at 1/2, 1/4 or 1/8 scale, as long as the result still covers
    # WORKING_SIZE. Set before load(), so it is what the decoder does, and what we charge.
    image.draft("L", (WORKING_SIZE, WORKING_SIZE))
    return OpenedImage(image, (width, height), name)


def _check_declared_size(width: int, height: int, limits: DecodeLimits, name: str) -> None:
    if width == 0 or height == 0:
        raise ImageInputError(f"{name} has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise ImageInputError(
            f"{name} is {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_image_pixels} (VAE_MAX_IMAGE_PIXELS)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageInputError(
            f"{name} is {width}x{height}, an aspect ratio of {ratio:.0f}:1; at most "
            f"{limits.max_aspect_ratio:g}:1 (VAE_MAX_IMAGE_ASPECT_RATIO): crop it to the digit"
        )


def load_image(opened: OpenedImage) -> DecodedImage:
    """Decode the pixels of an opened upload, shrunk to WORKING_SIZE and turned upright."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened.image.load()
            orientation = _exif_orientation(opened.image)
            gray, alpha = _to_gray_and_alpha(opened.image)
    except _DECODE_ERRORS as exc:
        raise _undecodable(opened.name, exc) from None
    gray = _upright(gray, orientation)
    alpha = None if alpha is None else _upright(alpha, orientation)
    return DecodedImage(gray=gray, alpha=alpha, original_size=opened.original_size)


def _undecodable(name: str, exc: BaseException) -> ImageInputError:
    reason = str(exc).strip()[:200] or type(exc).__name__
    return ImageInputError(
        f"{name} could not be decoded ({reason}); send a complete, valid image file"
    )


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1-8; 1 = upright), as phones write it: the sensor's pixels
    stay as shot and the tag says how to turn them. JPEG, PNG (eXIf), TIFF and WEBP carry it."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:  # a broken EXIF block says nothing about the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(levels: FloatImage, orientation: int) -> FloatImage:
    """Apply EXIF orientation to (H, W) levels, as ImageOps.exif_transpose would to the
    picture; done after shrinking, so it moves at most WORKING_SIZE^2 values."""
    turned = {
        1: levels,
        2: levels[:, ::-1],  # mirrored left-right
        3: levels[::-1, ::-1],  # rotated 180
        4: levels[::-1, :],  # mirrored top-bottom
        5: levels.T,  # transposed
        6: np.rot90(levels, k=-1),  # stored rotated 90 counter-clockwise: turn it clockwise
        7: levels[::-1, ::-1].T,  # transversed
        8: np.rot90(levels, k=1),
    }[orientation]
    result: FloatImage = np.ascontiguousarray(turned)
    return result


def is_small_png(data: bytes, max_side: int) -> bool:
    """Whether `data` declares itself a PNG of at most max_side x max_side, read from its
    header bytes alone: the IHDR chunk, which the PNG standard puts first, at bytes 12-24.

    Only a cheap routing hint: `decode_image` still checks everything.
    """
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width <= max_side and height <= max_side


def _small_gray_png(data: bytes) -> FloatImage | None:
    """Grey levels of a small 8-bit greyscale PNG, decoded by libspng; None for any other file.

    Such a PNG (an MNIST digit as most clients save one) decodes in ~4 us with libspng against
    ~25 us through Pillow, whose chunk reader is Python; at 64 images per request that is
    1.4 ms of CPU less. The result is the same array. Everything else (other formats, colour,
    palettes, bit depths other than 8, a transparency chunk, a broken file) goes through
    Pillow, which also reports what is wrong with a broken one.
    """
    eight_bit_greyscale = data[24:26] == b"\x08\x00"  # IHDR bit depth 8, colour type 0
    if not (is_small_png(data, FAST_PNG_MAX_SIDE) and eight_bit_greyscale):
        return None
    if b"tRNS" in data or b"eXIf" in data:  # transparency, or an orientation: Pillow's job
        return None
    try:
        pixels = pyspng.load(data)
    except Exception:  # libspng refused it: Pillow decodes it or says why not
        return None
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or pixels.size == 0:
        return None
    levels: FloatImage = pixels.astype(np.float32) / 255.0
    return levels


def _to_gray_and_alpha(image: Image.Image) -> tuple[FloatImage, FloatImage | None]:
    if image.mode in HIGH_BIT_MODES:
        return _shrink(_high_bit_levels(image)), None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    wanted = "LA" if has_alpha else "L"
    picture = image if image.mode == wanted else image.convert(wanted)
    picture.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    levels = np.asarray(picture, dtype=np.float32) / 255.0
    if not has_alpha:
        return levels, None
    return np.ascontiguousarray(levels[..., 0]), np.ascontiguousarray(levels[..., 1])


def _high_bit_levels(image: Image.Image) -> FloatImage:
    """16-bit and 32-bit greyscale -> [0, 1], scaled by the range the data can hold."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        full_scale = 1.0 if float(values.max(initial=0.0)) <= 1.0 else 255.0
    elif image.mode == "I" and float(values.max(initial=0.0)) <= 255.0:
        full_scale = 255.0
    else:
        full_scale = 65535.0
    scaled: FloatImage = np.clip(values / full_scale, 0.0, 1.0)
    return scaled


def _shrink(levels: FloatImage) -> FloatImage:
    height, width = levels.shape
    if max(height, width) <= WORKING_SIZE:
        return levels
    picture = Image.fromarray(levels)
    picture.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    return np.asarray(picture, dtype=np.float32)


@dataclass(frozen=True)
class Digits:
    """Decoded uploads: (B, 28, 28) float32 pixels in [0, 1], and for each whether
    preprocess=mnist refitted it (which calibration its score takes)."""

    pixels: FloatImage
    refit: npt.NDArray[np.bool_]


def prepare_digit(decoded: DecodedImage, preprocess: Preprocess, name: str = "image") -> FloatImage:
    """A decoded picture -> (28, 28) MNIST-style pixels in [0, 1]."""
    return prepare(decoded, preprocess, name).pixels


def prepare(decoded: DecodedImage, preprocess: Preprocess, name: str = "image") -> PreparedDigit:
    """A decoded picture -> (28, 28) MNIST-style pixels, and whether they were refitted."""
    if preprocess == "mnist":
        return mnist_digit(decoded.gray, decoded.alpha)
    if decoded.original_size != (IMAGE_SIZE, IMAGE_SIZE):
        width, height = decoded.original_size
        raise ImageInputError(
            f"{name}: preprocess=none needs a 28x28 MNIST-style image, got {width}x{height}; "
            "send preprocess=mnist to have it converted"
        )
    # Already MNIST-style: white on black; transparent pixels count as background.
    pixels = decoded.gray if decoded.alpha is None else decoded.gray * decoded.alpha
    return PreparedDigit(pixels, refit=False)


def image_bytes_to_pixels(
    payloads: list[bytes],
    preprocess: Preprocess,
    limits: DecodeLimits | int,
    label: str = "files",
) -> FloatImage:
    """Decode and preprocess several uploads -> (B, 28, 28) float32 pixels in [0, 1]."""
    return image_bytes_to_digits(payloads, preprocess, limits, label).pixels


def image_bytes_to_digits(
    payloads: list[bytes],
    preprocess: Preprocess,
    limits: DecodeLimits | int,
    label: str = "files",
) -> Digits:
    """Decode and preprocess several uploads -> their pixels and refit flags.

    Every header is read before any pixel is decoded, so a request over the decode budget
    is refused having cost microseconds, not the seconds its images would take."""
    if isinstance(limits, int):
        limits = DecodeLimits(max_image_pixels=limits)
    names = (
        [label]
        if len(payloads) == 1 and label == "file"
        else [f"{label}[{index}]" for index in range(len(payloads))]
    )
    opened = [open_image(data, limits, name) for data, name in zip(payloads, names, strict=True)]
    total = sum(_decode_cost(image) for image in opened)
    if total > limits.max_request_pixels:
        raise ImageInputError(
            f"the {len(payloads)} image(s) of this request hold {total} pixel values to "
            f"decode (width x height x channels); at most {limits.max_request_pixels} per "
            "request (VAE_MAX_REQUEST_PIXELS): send smaller pictures or fewer per request"
        )
    digits = [
        prepare(image if isinstance(image, DecodedImage) else load_image(image), preprocess, name)
        for image, name in zip(opened, names, strict=True)
    ]
    return Digits(
        np.stack([digit.pixels for digit in digits]),
        np.array([digit.refit for digit in digits], dtype=bool),
    )


def _decode_cost(image: OpenedImage | DecodedImage) -> int:
    if isinstance(image, OpenedImage):
        return image.decode_samples
    width, height = image.original_size
    return width * height


def pixels_to_array(rows: list[Any]) -> FloatImage:
    """Rows of 784 numbers (row-major 28x28, MNIST convention) -> (B, 28, 28), checked.

    Lengths first, then numpy converts all rows at once (~2 ms for 64 rows, against ~2.3 ms
    for pydantic then numpy) and the dtype it infers says whether every value was a number:
    one message for a body full of bad values, not one per value.
    """
    expected = IMAGE_SIZE * IMAGE_SIZE
    for index, row in enumerate(rows):
        if len(row) != expected:
            raise InvalidInputError(f"pixels[{index}] has {len(row)} values; expected {expected}")
    try:
        numbers = np.array(rows)
    except (ValueError, TypeError, OverflowError):  # rows of unequal nesting
        numbers = np.array(rows, dtype=object)
    if numbers.ndim != 2 or numbers.dtype.kind not in "iuf":
        raise InvalidInputError(f"{_first_non_number(rows)}; send numbers in [0, 1]")
    values = numbers.astype(np.float32).reshape(len(rows), IMAGE_SIZE, IMAGE_SIZE)
    finite = np.isfinite(values).all(axis=(1, 2))
    if not finite.all():
        raise InvalidInputError(f"pixels[{int(np.argmin(finite))}] contains NaN or infinity")
    in_range = ((values >= 0.0) & (values <= 1.0)).all(axis=(1, 2))
    if not in_range.all():
        raise InvalidInputError(
            f"pixels[{int(np.argmin(in_range))}] has values outside [0, 1]: "
            "send floats with 0 = black background and 1 = white ink"
        )
    return values


def _first_non_number(rows: list[Any]) -> str:
    for index, row in enumerate(rows):
        for position, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                kind = "a boolean" if isinstance(value, bool) else type(value).__name__
                return f"pixels[{index}][{position}] is {kind}, not a number"
    return "pixels holds values that are not numbers"


def pixels_to_tensor(pixels: FloatImage) -> torch.Tensor:
    """(B, 28, 28) pixels from the functions above -> the model's (B, 1, 28, 28) input."""
    return to_unit_interval(torch.from_numpy(pixels))
