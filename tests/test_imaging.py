"""Decoding real-world pictures into MNIST's convention."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageOps

from app import imaging
from app.imaging import (
    DecodeLimits,
    ImageInputError,
    OpenedImage,
    decode_image,
    image_bytes_to_pixels,
    open_image,
    prepare_digit,
)
from benchmarks.hostile.images import blank_png, oriented_jpeg
from tests.conftest import encode, png_of
from vae_common.pixels import mnist_style, to_unit_interval


@pytest.fixture(scope="module")
def client(module_client: TestClient) -> TestClient:
    """The upload tests only send a picture and read the reply: one app for them all."""
    return module_client


def dark_digit_on_paper(size: int = 300, paper: int = 235) -> Image.Image:
    """A '7'-like pen stroke, dark on light paper, as a phone photo would show it."""
    image = Image.new("L", (size, size), paper)
    pen = ImageDraw.Draw(image)
    s = size / 300
    pen.line([(90 * s, 70 * s), (210 * s, 70 * s), (130 * s, 240 * s)], fill=30, width=int(18 * s))
    return image


def left_half(response_content: bytes) -> np.ndarray:
    pair = np.asarray(Image.open(io.BytesIO(response_content)))
    return pair[:, : pair.shape[1] // 2]


def test_to_unit_interval_maps_uint8_to_floats_in_0_1() -> None:
    images = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8).expand(2, 2, 2)
    with pytest.raises(ValueError, match="28, 28"):
        to_unit_interval(images)
    full = torch.zeros(2, 28, 28, dtype=torch.uint8)
    full[:, 0, 0] = 255
    converted = to_unit_interval(full)
    assert converted.shape == (2, 1, 28, 28) and converted.dtype == torch.float32
    assert float(converted.max()) == 1.0 and float(converted.min()) == 0.0


def test_mnist_style_inverts_crops_fits_and_centres() -> None:
    gray = np.asarray(dark_digit_on_paper(), dtype=np.float32) / 255.0
    digit = mnist_style(gray)
    assert digit.shape == (28, 28)
    assert digit.max() > 0.9  # white ink
    assert digit[:4].max() < 0.05 and digit[:, :4].max() < 0.05  # black margins
    rows, cols = np.nonzero(digit > 0.15)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 21  # fits MNIST's 20x20 box (+ anti-aliasing)
    mass = digit / digit.sum()
    centre_row = (mass.sum(1) * np.arange(28)).sum()
    centre_col = (mass.sum(0) * np.arange(28)).sum()
    assert abs(centre_row - 13.5) < 1.0 and abs(centre_col - 13.5) < 1.0


def test_mnist_style_of_a_blank_picture_is_black() -> None:
    assert mnist_style(np.ones((40, 30), dtype=np.float32)).max() == 0.0


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("PNG", "L"),
        ("PNG", "RGB"),
        ("PNG", "P"),
        ("JPEG", "L"),
        ("JPEG", "RGB"),
        ("BMP", "RGB"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("TIFF", "L"),
        ("PNG", "1"),
    ],
)
def test_common_formats_and_modes_reconstruct(client: TestClient, fmt: str, mode: str) -> None:
    data = encode(dark_digit_on_paper(120).convert(mode), fmt)
    response = client.post(
        "/reconstruct?layout=pair", files={"file": (f"digit.{fmt.lower()}", data, "")}
    )
    assert response.status_code == 200, response.text
    preprocessed = left_half(response.content)
    assert preprocessed.max() > 200 and preprocessed[:3].max() < 20


def test_rgba_with_transparent_background(client: TestClient) -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(50, 15), (50, 85)], fill=(20, 20, 20, 255), width=10)
    response = client.post(
        "/reconstruct?layout=pair", files={"file": ("t.png", encode(rgba), "image/png")}
    )
    assert response.status_code == 200
    preprocessed = left_half(response.content)
    assert preprocessed[:, 12:16].max() > 200  # the dark stroke became white ink in the middle
    assert preprocessed[:, :5].max() < 20


def test_sixteen_bit_png(client: TestClient) -> None:
    deep = np.zeros((56, 56), dtype=np.uint16)
    deep[10:46, 25:31] = 65535
    image = Image.fromarray(deep)
    assert image.mode.startswith("I;16")
    response = client.post(
        "/reconstruct?layout=pair", files={"file": ("deep.png", encode(image), "image/png")}
    )
    assert response.status_code == 200
    assert left_half(response.content).max() > 200


def test_a_one_pixel_image_is_accepted(client: TestClient) -> None:
    response = client.post(
        "/reconstruct", files={"file": ("dot.png", png_of(np.full((1, 1), 255, np.uint8)), "")}
    )
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (28, 28)


def test_a_4000x4000_image_is_accepted(client: TestClient) -> None:
    big = dark_digit_on_paper(4000)
    data = encode(big, "PNG", optimize=False)
    assert len(data) < 5 * 1024 * 1024
    response = client.post("/reconstruct?layout=pair", files={"file": ("big.png", data, "")})
    assert response.status_code == 200
    assert left_half(response.content).max() > 200


def test_jpeg_photo_of_paper_matches_the_png_preprocessing() -> None:
    picture = dark_digit_on_paper()
    from_png = prepare_digit(decode_image(encode(picture), 10**8), "mnist")
    from_jpeg = prepare_digit(decode_image(encode(picture, "JPEG", quality=85), 10**8), "mnist")
    assert np.abs(from_png - from_jpeg).mean() < 0.05


def test_gif_uses_the_first_frame() -> None:
    first = dark_digit_on_paper(60)
    second = Image.new("L", (60, 60), 235)
    buffer = io.BytesIO()
    first.convert("P").save(buffer, "GIF", save_all=True, append_images=[second.convert("P")])
    digit = prepare_digit(decode_image(buffer.getvalue(), 10**8), "mnist")
    assert digit.max() > 0.8


def test_small_greyscale_pngs_decode_exactly_as_pillow_decodes_them(
    mnist_sample: np.ndarray,
) -> None:
    # These take the libspng path; the result must be Pillow's array, value for value.
    for digit in mnist_sample[:100]:
        data = png_of(digit)
        pillow = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255.0
        decoded = decode_image(data, 10_000)
        assert decoded.alpha is None and decoded.original_size == (28, 28)
        np.testing.assert_array_equal(decoded.gray, pillow)


def test_pngs_the_fast_path_declines_keep_their_meaning() -> None:
    # 1-bit: white is 1.0, not 1/255 (the raw sample value).
    white = io.BytesIO()
    Image.new("1", (28, 28), 1).save(white, format="PNG")
    assert float(decode_image(white.getvalue(), 10_000).gray.min()) == 1.0
    # A greyscale PNG with a transparent grey level (tRNS chunk) keeps its alpha.
    keyed = io.BytesIO()
    Image.new("L", (28, 28), 0).save(keyed, format="PNG", transparency=0)
    decoded = decode_image(keyed.getvalue(), 10_000)
    assert decoded.alpha is not None and float(decoded.alpha.max()) == 0.0
    # A truncated file is still refused with Pillow's explanation.
    data = png_of(np.full((28, 28), 200, dtype=np.uint8))
    with pytest.raises(ImageInputError, match="could not be decoded"):
        decode_image(data[: len(data) - 30], 10_000, "files[0]")


def test_exif_orientation_turns_a_phone_jpeg_upright() -> None:
    upright = dark_digit_on_paper(200)
    # A phone that held the camera turned stores the sensor's pixels rotated and the tag 6
    # ("turn me 90 degrees clockwise"): store them rotated counter-clockwise, tag 6.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    tagged = prepare_digit(decode_image(oriented_jpeg(stored, 6), 10**8), "mnist")
    plain = prepare_digit(decode_image(encode(upright, "JPEG", quality=95), 10**8), "mnist")
    untagged = prepare_digit(decode_image(encode(stored, "JPEG", quality=95), 10**8), "mnist")
    assert np.abs(tagged - plain).mean() < 0.02
    assert np.abs(untagged - plain).mean() > 5 * np.abs(tagged - plain).mean()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    picture = Image.new("L", (40, 24), 0)
    picture.paste(255, (0, 0, 10, 6))  # a bright corner shows any turn or mirror
    data = oriented_jpeg(picture, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), np.float32)
    decoded = decode_image(data, 10**8).gray
    assert decoded.shape == expected.shape
    assert np.abs(decoded * 255 - expected).max() < 1.0


def test_png_exif_orientation_is_honoured_despite_the_fast_path() -> None:
    picture = Image.new("L", (28, 20), 0)
    picture.paste(255, (0, 0, 6, 4))
    exif = Image.Exif()
    exif[0x0112] = 8
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), 10**8).gray
    expected = np.asarray(picture.transpose(Image.Transpose.ROTATE_90), np.float32) / 255
    assert decoded.shape == (28, 20)
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize(("width", "height"), [(1, 10_000_000), (21 * 30, 30), (30, 21 * 30)])
def test_images_of_no_digit_shape_are_refused_before_decoding(width: int, height: int) -> None:
    with pytest.raises(ImageInputError, match="VAE_MAX_IMAGE_ASPECT_RATIO"):
        image_bytes_to_pixels([blank_png(width, height)], "mnist", DecodeLimits())


def test_an_aspect_ratio_within_the_limit_is_decoded() -> None:
    pixels = image_bytes_to_pixels([blank_png(20 * 30, 30)], "mnist", DecodeLimits())
    assert pixels.shape == (1, 28, 28)


def test_the_request_pixel_budget_counts_every_image_and_channel() -> None:
    limits = DecodeLimits(max_image_pixels=10_000, max_request_pixels=3 * 60 * 60)
    grey = blank_png(60, 60)
    assert image_bytes_to_pixels([grey] * 3, "mnist", limits).shape == (3, 28, 28)
    with pytest.raises(ImageInputError, match="VAE_MAX_REQUEST_PIXELS"):
        image_bytes_to_pixels([grey] * 4, "mnist", limits)
    rgba = encode(Image.new("RGBA", (60, 60)), "PNG")
    with pytest.raises(ImageInputError, match="VAE_MAX_REQUEST_PIXELS"):
        image_bytes_to_pixels([rgba], "mnist", limits)  # 4 channels: 14,400 values


def test_a_request_over_budget_is_refused_before_any_pixel_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []
    monkeypatch.setattr(imaging, "load_image", lambda opened: decoded.append(opened.name))
    with pytest.raises(ImageInputError, match="VAE_MAX_REQUEST_PIXELS"):
        image_bytes_to_pixels([blank_png(5000, 5000)] * 2, "mnist", DecodeLimits())
    assert decoded == []


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_charged_so() -> None:
    opened = open_image(encode(Image.new("L", (4000, 4000)), "JPEG"), DecodeLimits(), "file")
    assert isinstance(opened, OpenedImage)
    assert opened.original_size == (4000, 4000)
    assert opened.image.size == (500, 500)  # 1/8 scale, still >= WORKING_SIZE
    assert opened.decode_samples == 500 * 500


def test_webp_is_charged_four_channels_as_its_decoder_writes_them() -> None:
    opened = open_image(encode(Image.new("RGB", (64, 64)), "WEBP"), DecodeLimits(), "file")
    assert isinstance(opened, OpenedImage)
    assert opened.decode_samples == 64 * 64 * 4
