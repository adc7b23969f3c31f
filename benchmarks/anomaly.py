"""Out-of-distribution benchmark for /anomaly-score.

Scores MNIST test (normal) against Fashion-MNIST test, flipped and rotated MNIST, uniform
noise, blank and constant images and inverted digits, through the service's own scoring
path (`app.engine.load_engine` -> `Engine.score`, the function the dynamic batcher
calls; pixels enter as the JSON `pixels` / preprocess=none path builds them). Prints, per
set and score: AUROC, FPR at 95% TPR and the detection rate at the default threshold, then
the false-positive rate on MNIST test at each score's default threshold, and the latency of
one image through the default score.

    python -m benchmarks.anomaly --data-root ../shared/data [--write-readme]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from app.config import DEFAULT_MODEL_PATH
from app.engine import Engine, load_engine
from app.imaging import pixels_to_array, pixels_to_tensor
from vae_common.scoring import DEFAULT_SCORE, SCORE_DEFINITIONS

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- anomaly-benchmark:begin -->", "<!-- anomaly-benchmark:end -->"


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(score of an anomaly > score of a normal image), ties counting half (Mann-Whitney)."""
    scores = np.concatenate([normal, anomalous])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of tied scores.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    rank_sums = np.bincount(inverse, weights=ranks)
    ranks = (rank_sums / counts)[inverse]
    anomaly_ranks = ranks[len(normal) :].sum()
    count = len(anomalous)
    return float((anomaly_ranks - count * (count + 1) / 2) / (len(normal) * count))


def fpr_at_tpr(normal: np.ndarray, anomalous: np.ndarray, tpr: float = 0.95) -> float:
    """Share of normal images flagged when the threshold catches `tpr` of the anomalies."""
    threshold = np.quantile(anomalous, 1.0 - tpr)
    return float((normal >= threshold).mean())


def load_split(root: Path, dataset: str) -> torch.Tensor:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if dataset == "mnist" else FashionMNIST
    images: torch.Tensor = cls(root=str(root), train=False, download=False).data
    return images  # (N, 28, 28) uint8


def anomaly_sets(mnist: torch.Tensor, fashion: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Every set as (N, 28, 28) floats in [0, 1], as a caller would send them."""
    digits = mnist.float() / 255.0
    generator = torch.Generator().manual_seed(seed)
    levels = torch.arange(1, 255, 4, dtype=torch.float32) / 255.0  # 64 grey levels
    return {
        "fashion_mnist": fashion.float() / 255.0,
        "hflip": digits.flip(-1),
        "vflip": digits.flip(-2),
        "rot90": torch.rot90(digits, 1, dims=(-2, -1)),
        "uniform_noise": torch.rand(2000, 28, 28, generator=generator),
        "blank": torch.zeros(1, 28, 28),
        "constant_grey": levels.view(-1, 1, 1).expand(-1, 28, 28).clone(),
        "inverted": 1.0 - digits,
    }


def score_all(model: Engine, images: torch.Tensor, score: str) -> np.ndarray:
    scores = []
    for chunk in images.split(512):
        x = pixels_to_tensor(pixels_to_array(chunk.reshape(len(chunk), -1).tolist()))
        scores.append(model.score(x, score, None).score.double().numpy())
    return np.concatenate(scores)


def time_one_image(model: Engine, image: torch.Tensor, repeats: int) -> list[float]:
    def once() -> None:
        model.score(
            pixels_to_tensor(pixels_to_array([image.reshape(-1).tolist()])), DEFAULT_SCORE, None
        )

    return _timings(once, repeats)


def _timings(fn: Callable[[], None], repeats: int) -> list[float]:
    for _ in range(10):
        fn()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        durations.append((time.perf_counter() - start) * 1000)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--limit", type=int, default=None, help="images per set (default all)")
    parser.add_argument("--scores", nargs="*", default=list(SCORE_DEFINITIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_engine(args.model)
    mnist = load_split(args.data_root, "mnist")[: args.limit]
    fashion = load_split(args.data_root, "fashion")[: args.limit]
    sets = anomaly_sets(mnist, fashion, seed=0)
    normal_images = mnist.float() / 255.0

    started = time.perf_counter()
    normal = {score: score_all(model, normal_images, score) for score in args.scores}
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, images in sets.items():
        results[name] = {}
        for score in args.scores:
            flagged_at = model.threshold(score, None, None).value
            anomalous = score_all(model, images, score)
            results[name][score] = (
                auroc(normal[score], anomalous),
                fpr_at_tpr(normal[score], anomalous),
                float((anomalous > flagged_at).mean()),
            )
    seconds = time.perf_counter() - started
    default_fpr = {
        score: float((normal[score] > model.threshold(score, None, None).value).mean())
        for score in args.scores
    }
    latency = time_one_image(model, normal_images[0], repeats=300)
    table = render(results, default_fpr, args.scores, len(normal_images), latency, model)
    print(table)
    print(f"\n(scored in {seconds:.0f} s)")
    if args.write_readme:
        write_readme(table)


def render(
    results: dict[str, dict[str, tuple[float, float, float]]],
    default_fpr: dict[str, float],
    scores: list[str],
    normal_count: int,
    latency: list[float],
    model: Engine,
) -> str:
    header = "| set (n) | " + " | ".join(f"`{s}`" for s in scores) + " |"
    lines = [
        f"Model `{model.model_id}`; normal = MNIST test ({normal_count} images). "
        "Each cell: AUROC / FPR at 95% TPR / share flagged at the default threshold.",
        "",
        header,
        "|---|" + "---|" * len(scores),
    ]
    for name, by_score in results.items():
        cells = [f"{a:.4f} / {f:.3f} / {d:.3f}" for a, f, d in (by_score[s] for s in scores)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **FPR on MNIST test at the default threshold (target 1%)** | "
        + " | ".join(f"{100 * default_fpr[s]:.2f}%" for s in scores)
        + " |"
    )
    quantiles = statistics.quantiles(latency, n=100)
    lines += [
        "",
        f"Default score `{DEFAULT_SCORE}`, one image through `Engine.score` "
        f"(pixels parsed, one forward pass, calibration): p50 {statistics.median(latency):.2f} ms,"
        f" p95 {quantiles[94]:.2f} ms, p99 {quantiles[98]:.2f} ms "
        f"({torch.get_num_threads()} torch threads).",
    ]
    return "\n".join(lines)


def write_readme(table: str) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {BEGIN} ... {END} block to replace")
    README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))


if __name__ == "__main__":
    main()
