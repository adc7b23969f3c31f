"""The anomaly benchmark's own parts: its metrics, the input paths it builds from digits,
and its tables on a tiny model. No figure of merit is asserted: the benchmark prints those."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.engine import load_engine
from benchmarks.anomaly import (
    anomaly_sets,
    auroc,
    default_job,
    file_table,
    path_table,
    score_pixels,
    wilson_interval,
)
from benchmarks.input_paths import INPUT_PATHS, PHOTO_SIZE, photo_like, png_file, scan_like
from tests.synthetic import stroke_digits

DIGITS = stroke_digits(6, seed=5)


def opened(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def test_auroc_is_one_when_every_anomaly_scores_higher_and_half_for_equal_sets() -> None:
    normal = np.array([0.1, 0.2, 0.3])
    assert auroc(normal, np.array([0.5, 0.9])) == 1.0
    assert auroc(normal, np.array([0.0, 0.05])) == 0.0
    assert auroc(normal, normal.copy()) == pytest.approx(0.5)


def test_wilson_interval_brackets_the_share_and_narrows_with_more_images() -> None:
    low, high = wilson_interval(10, 100)
    assert low < 0.10 < high
    more_low, more_high = wilson_interval(100, 1000)
    assert more_high - more_low < high - low
    assert wilson_interval(0, 50)[0] == 0.0


def test_png_file_is_the_digit_as_an_8_bit_greyscale_png() -> None:
    picture = opened(png_file(DIGITS[0]))
    assert (picture.format, picture.mode, picture.size) == ("PNG", "L", (28, 28))
    assert np.array_equal(np.asarray(picture), DIGITS[0])


def test_scan_like_is_an_upscaled_jpeg_of_dark_ink_on_light_paper() -> None:
    picture = opened(scan_like(DIGITS[0], np.random.default_rng(0)))
    assert picture.format == "JPEG" and picture.mode == "L"
    assert picture.size[0] == picture.size[1] and picture.size[0] in (84, 112, 140)
    levels = np.asarray(picture, np.float32)
    assert np.median(levels[0]) > 200  # paper
    assert levels.min() < 100  # ink


@pytest.mark.parametrize(("drop", "low", "high"), [(0.0, 0.0, 40.0), (100.0, 80.0, 120.0)])
def test_photo_like_paper_darkens_by_the_light_drop_across_the_frame(
    drop: float, low: float, high: float
) -> None:
    blank_digit = np.zeros((28, 28), dtype=np.uint8)  # paper only: its range is the lighting
    data = photo_like(blank_digit, np.random.default_rng(3), light_drop=(drop, drop))
    picture = opened(data)
    assert picture.format == "JPEG" and picture.mode == "RGB" and picture.size == PHOTO_SIZE
    grey = np.asarray(picture.convert("L"), np.float32)
    spread = float(np.percentile(grey, 99.5) - np.percentile(grey, 0.5))
    assert low <= spread <= high


def test_each_file_depends_only_on_the_seed_and_its_index() -> None:
    path = INPUT_PATHS["photo_like"]
    assert path.files(DIGITS[:2], seed=1) == path.files(DIGITS[:3], seed=1)[:2]
    assert path.files(DIGITS[:1], seed=1) != path.files(DIGITS[:1], seed=2)


@pytest.mark.parametrize("name", list(INPUT_PATHS))
def test_every_input_path_reads_digits_into_model_pixels(name: str) -> None:
    pixels = INPUT_PATHS[name].pixels(DIGITS, seed=0)
    assert pixels.shape == (len(DIGITS), 28, 28) and pixels.dtype == np.float32
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert (pixels.reshape(len(DIGITS), -1).max(axis=1) > 0.5).all()  # the digit survived


def test_png_with_preprocess_none_reads_exactly_the_json_pixels() -> None:
    json_pixels = INPUT_PATHS["pixels_json"].pixels(DIGITS, seed=0)
    assert np.array_equal(INPUT_PATHS["png_none"].pixels(DIGITS, seed=0), json_pixels)


def test_tables_list_every_path_and_set_on_a_tiny_model(tiny_model_path: Path) -> None:
    engine = load_engine(tiny_model_path)
    paths = [INPUT_PATHS[name] for name in ("pixels_json", "png_mnist", "png_none", "scan_like")]
    table, by_path = path_table(engine, DIGITS, paths, seed=0)
    for path in paths:
        assert f"| {path.name} |" in table
        assert by_path[path.name].scores.shape == (len(DIGITS),)
        assert len(by_path[path.name].calibrations) == len(DIGITS)
    assert np.array_equal(by_path["pixels_json"].scores, by_path["png_none"].scores)

    sets = anomaly_sets(DIGITS, stroke_digits(4, seed=9), seed=0)
    normal = {name: by_path[name].scores for name in ("pixels_json", "png_mnist")}
    files = file_table(engine, sets, normal, seed=0)
    assert "| hflip (6) |" in files and "| uniform_noise (6) |" in files
    assert "inverted" not in files  # preprocess=mnist makes it an ordinary digit


def test_score_pixels_scores_in_chunks_like_one_batch(tiny_model_path: Path) -> None:
    engine = load_engine(tiny_model_path)
    job = default_job(engine, "reconstruction")
    pixels = np.random.default_rng(0).random((300, 28, 28), dtype=np.float32)
    chunked = score_pixels(engine, pixels, job)
    whole = job.run(engine, pixels)[0]
    assert chunked.shape == (300,)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)
