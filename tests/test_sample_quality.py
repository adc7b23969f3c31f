"""The sample-quality benchmark's metrics, its classifier cache and its sampling path, on
synthetic data and a tiny model. The figures it prints are not asserted here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine import load_engine
from benchmarks.digit_classifier import (
    FEATURES,
    ClassifierRecipe,
    as_input,
    features_and_probabilities,
    load_or_train,
)
from benchmarks.sample_quality import class_entropy, frechet_distance, judge, standard_prior
from tests.synthetic import stroke_digits

TINY_RECIPE = ClassifierRecipe(epochs=1, batch_size=16)


def features(count: int = 400, dims: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dims, dims))
    return rng.normal(size=(count, dims)) @ mixing + rng.normal(size=dims)


def test_frechet_distance_of_a_set_to_itself_is_zero() -> None:
    a = features()
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift() -> None:
    a = features()
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_of_a_doubled_set_matches_the_closed_form() -> None:
    # b = 2a: mean 2 mu, covariance 4 C, so |mu|^2 + tr(C + 4C - 2 * 2C) = |mu|^2 + tr(C).
    a = features(seed=1)
    expected = float((a.mean(axis=0) ** 2).sum() + np.trace(np.cov(a, rowvar=False)))
    assert frechet_distance(a, 2.0 * a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(2.0 * a, a) == pytest.approx(expected, rel=1e-6)


def test_class_entropy_is_log_10_for_uniform_classes_and_zero_for_one_class() -> None:
    assert class_entropy(np.repeat(np.arange(10), 7)) == pytest.approx(math.log(10))
    assert class_entropy(np.full(50, 3)) == 0.0
    assert 0.0 < class_entropy(np.array([0, 0, 0, 1])) < math.log(2)


def synthetic_training_set() -> tuple[np.ndarray, np.ndarray]:
    images = stroke_digits(64, seed=2)
    return images, np.arange(64) % 10


def test_classifier_is_trained_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    images, labels = synthetic_training_set()
    first = load_or_train(images, labels, TINY_RECIPE, tmp_path)
    second = load_or_train(images, labels, TINY_RECIPE, tmp_path)
    assert first.trained_now and not second.trained_now and first.path == second.path
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name])
    other_recipe = ClassifierRecipe(epochs=1, batch_size=16, seed=1)
    assert load_or_train(images, labels, other_recipe, tmp_path).path != first.path


def test_judge_gives_features_confidences_and_an_entropy(tmp_path: Path) -> None:
    images, labels = synthetic_training_set()
    model = load_or_train(images, labels, TINY_RECIPE, tmp_path).model
    found, probabilities = features_and_probabilities(model, as_input(images), chunk=10)
    assert found.shape == (64, FEATURES) and probabilities.shape == (64, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    distance, confidence, entropy = judge(model, images, found)
    assert distance == pytest.approx(0.0, abs=1e-6)
    assert 0.1 <= confidence <= 1.0 and 0.0 <= entropy <= math.log(10) + 1e-9


def test_standard_prior_draws_8_bit_digits_reproducibly(tiny_model_path: Path) -> None:
    engine = load_engine(tiny_model_path)
    samples = standard_prior(engine, 12, 1.0, 7)
    assert samples.shape == (12, 28, 28) and samples.dtype == np.uint8
    assert np.array_equal(samples, standard_prior(engine, 12, 1.0, 7))
    expected = (
        engine.sample(12, 1.0, 7, "standard")[:, 0].mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    )
    assert np.array_equal(samples, expected.numpy())
