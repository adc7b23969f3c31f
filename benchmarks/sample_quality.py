"""How much samples look like MNIST digits, judged by a small MNIST classifier of our own
(benchmarks/digit_classifier.py; trained on the training split, cached under --cache-dir).

For n samples of each checkpoint, side by side in one table:
- Frechet distance between the classifier's penultimate features of the samples and of the
  test set (FID's formula on our features; lower is better), with the floor: n training
  digits against the test set;
- mean max-softmax confidence (digits that are clearly some digit score near 1);
- entropy of the predicted class frequencies in nats (log 10 = 2.303 when every class is
  drawn equally often; low when the model favours a few digits).
The classifier's test accuracy is printed to show the judge is sound.

Samples come from `app.jobs.SampleJob`, as /sample draws them: latents from a seeded
generator, decoded to pixel means by the checkpoint, then rounded to 8 bits as the PNG
/sample returns. `--prior` names the prior, as /sample's `prior` option does: `standard`
(N(0, T^2 I)), `fitted` (the checkpoint's fitted mixture; checkpoints without one fail)
or `default` (what /sample draws from when not told: fitted if the checkpoint has one).

    python -m benchmarks.sample_quality --data-root ../shared/data \
        [--models models/model.pt runs/v2/model.pt] [--samples 10000]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from app.config import DEFAULT_MODEL_PATH
from app.engine import Engine, load_engine
from app.jobs import SampleJob
from benchmarks.digit_classifier import (
    DEFAULT_CACHE,
    ClassifierRecipe,
    DigitClassifier,
    as_input,
    features_and_probabilities,
    load_or_train,
)
from vae_common.grid import to_uint8

CLASSES = 10

# (engine, n, temperature, seed) -> (n, 28, 28) uint8 samples, as /sample serves them.
Prior = Callable[[Engine, int, float, int], np.ndarray]


def drawn_by(prior: str | None) -> Prior:
    def draw(engine: Engine, n: int, temperature: float, seed: int) -> np.ndarray:
        job = SampleJob(n, temperature, seed, prior)
        (digits,) = job.run(engine, job.inputs())  # (n, 1, 28, 28) pixel means in [0, 1]
        return to_uint8(torch.from_numpy(digits[:, 0]))

    return draw


standard_prior = drawn_by("standard")
PRIORS: dict[str, Prior] = {
    "standard": standard_prior,
    "fitted": drawn_by("fitted"),
    "default": drawn_by(None),
}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2).

    The matrix square roots come from symmetric eigendecompositions (no scipy), with
    round-off's tiny negative eigenvalues clipped to zero."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    distance = float(((mean_a - mean_b) ** 2).sum()) + float(np.trace(cov_a + cov_b))
    return max(0.0, distance - 2.0 * trace_sqrt)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    root: np.ndarray = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    return root


def class_entropy(predicted: np.ndarray, classes: int = CLASSES) -> float:
    """Entropy in nats of the frequencies of the predicted classes (N,) ints."""
    counts = np.bincount(predicted, minlength=classes).astype(np.float64)
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def judge(
    classifier: DigitClassifier, images: np.ndarray, reference: np.ndarray
) -> tuple[float, float, float]:
    """(N, 28, 28) uint8 -> FD to the reference features, mean confidence, class entropy."""
    features, probabilities = features_and_probabilities(classifier, as_input(images))
    return (
        frechet_distance(features, reference),
        float(probabilities.max(axis=1).mean()),
        class_entropy(probabilities.argmax(axis=1)),
    )


def load_mnist(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    dataset = MNIST(root=str(root), train=train, download=False)
    return dataset.data.numpy(), dataset.targets.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", type=Path, nargs="+", default=[DEFAULT_MODEL_PATH])
    parser.add_argument("--samples", type=int, default=10_000, help="per model, and the floor's")
    parser.add_argument("--prior", choices=list(PRIORS), default="default")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=ClassifierRecipe.epochs)
    parser.add_argument("--limit", type=int, default=None, help="training and test digits")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_images, train_labels = (a[: args.limit] for a in load_mnist(args.data_root, True))
    test_images, test_labels = (a[: args.limit] for a in load_mnist(args.data_root, False))
    recipe = ClassifierRecipe(epochs=args.epochs, seed=args.seed)
    cached = load_or_train(train_images, train_labels, recipe, args.cache_dir)
    classifier = cached.model
    test_features, test_probabilities = features_and_probabilities(
        classifier, as_input(test_images)
    )
    accuracy = float((test_probabilities.argmax(axis=1) == test_labels).mean())
    floor_rows = np.random.default_rng(args.seed).choice(
        len(train_images), size=min(args.samples, len(train_images)), replace=False
    )

    rows = [
        (
            f"MNIST train, {len(floor_rows)} random digits (floor)",
            judge(classifier, train_images[floor_rows], test_features),
        ),
        (f"MNIST test ({len(test_images)}) itself", judge(classifier, test_images, test_features)),
    ]
    for path in args.models:
        engine = load_engine(path)
        started = time.perf_counter()
        samples = PRIORS[args.prior](engine, args.samples, args.temperature, args.seed)
        seconds = time.perf_counter() - started
        label = (
            f"`{path}` ({engine.model_id}): {args.samples} samples, prior "
            f"{engine.default_prior if args.prior == 'default' else args.prior}, "
            f"T={args.temperature:g}, seed {args.seed} ({seconds:.1f} s)"
        )
        rows.append((label, judge(classifier, samples, test_features)))

    origin = "trained now" if cached.trained_now else "loaded from cache"
    print(
        f"Judge: DigitClassifier (2 strided conv layers, {test_features.shape[1]} penultimate "
        f"features), {recipe.epochs} epochs on {len(train_images)} training digits in "
        f"{cached.train_seconds:.0f} s ({origin}: {cached.path}); test accuracy "
        f"{100 * accuracy:.2f}% on {len(test_images)} digits.\n"
    )
    print(
        "| images | Frechet distance to MNIST test | mean max-softmax | class entropy "
        f"(nats; uniform = {math.log(CLASSES):.3f}) |"
    )
    print("|---|---|---|---|")
    for label, (distance, confidence, entropy) in rows:
        print(f"| {label} | {distance:.2f} | {confidence:.3f} | {entropy:.3f} |")


if __name__ == "__main__":
    main()
