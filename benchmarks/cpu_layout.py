"""The model's forward passes as the service runs them on the CPU, with the convolution
weights in the default (NCHW) order against channels_last (NHWC, VAE_CHANNELS_LAST), each in
float32 and in the bfloat16 of VAE_PRECISION=bf16, side by side in one run. One more variant
runs bf16 NHWC with float32 weights that autocast rounds on every pass, against the service's
weights cast to bfloat16 once at load (the same numbers).

Each variant loads the checkpoint through `app.engine.load_engine` with its own
`CpuExecution` (one intra-op thread, as every model instance of the default configuration
runs), so that the passes, padding buckets and autocast rules are the service's. Per batch
size and operation it reports the median milliseconds of a batch over `--rounds` rounds in
which the variants take turns, and the largest difference of each variant's outputs from the
float32 NCHW ones.

    python -m benchmarks.cpu_layout [--model models/model.pt] [--sizes 1 8 16 64 256]
        [--repeats 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engine import Engine, load_engine
from app.execution import CpuExecution, Precision
from vae_common.pixels import IMAGE_SIZE


@dataclass(frozen=True)
class Variant:
    name: str
    precision: Precision
    channels_last: bool
    cast_weights: bool = True  # bf16: weights cast once at load (the service), or per pass


VARIANTS = (
    Variant("fp32 NCHW", "fp32", channels_last=False),
    Variant("fp32 NHWC", "fp32", channels_last=True),
    Variant("bf16 NCHW", "bf16", channels_last=False),
    Variant("bf16 NHWC", "bf16", channels_last=True),
    Variant("bf16 NHWC, cast per pass", "bf16", channels_last=True, cast_weights=False),
)


class CastPerPassExecution(CpuExecution):
    """bf16 passes over float32 weights, which autocast rounds to bfloat16 on every pass."""

    def prepare(self, module: torch.jit.ScriptModule) -> None:
        self.precision = "fp32"  # prepare leaves the weights in float32
        super().prepare(module)
        self.precision = "bf16"


def _execution(variant: Variant) -> CpuExecution:
    kind = CpuExecution if variant.cast_weights else CastPerPassExecution
    return kind(1, precision=variant.precision, channels_last=variant.channels_last)


Operation = Callable[[Engine, int], torch.Tensor]


def _score(engine: Engine, rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rows)
    x = torch.rand(rows, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return engine.score(x, engine.default_score, None).score


def _sample(engine: Engine, rows: int) -> torch.Tensor:
    return engine.sample(rows, 1.0, rows, None)


OPERATIONS: dict[str, Operation] = {"default score": _score, "sample": _sample}


def _median_ms(engine: Engine, operation: Operation, rows: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation(engine, rows)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=30, help="batches timed per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
    torch.set_num_threads(1)
    engines = {
        variant.name: load_engine(args.model, _execution(variant), max(args.sizes))
        for variant in VARIANTS
    }
    cells: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, operation in OPERATIONS.items():
            for rows in args.sizes:
                for variant, engine in engines.items():
                    cell = cells.setdefault((name, rows, variant), [])
                    cell.append(_median_ms(engine, operation, rows, args.repeats))
    reference = engines[VARIANTS[0].name]
    print(
        f"{args.model} ({reference.model_id}), one intra-op thread, {platform.processor() or 'cpu'}"
        f", torch {torch.__version__}, {datetime.date.today()}; median ms per batch over "
        f"{args.rounds} rounds of {args.repeats} batches\n"
    )
    header = " | ".join(v.name for v in VARIANTS)
    print(f"| operation | images | {header} | NHWC speed-up | bf16 cast once: speed-up |")
    print("|---|--:|" + "--:|" * len(VARIANTS) + "--:|--:|")
    for name in OPERATIONS:
        for rows in args.sizes:
            times = [statistics.median(cells[(name, rows, v.name)]) for v in VARIANTS]
            speed_up = f"{times[0] / times[1]:.2f}x fp32, {times[2] / times[3]:.2f}x bf16"
            cast_once = f"{times[4] / times[3]:.2f}x per pass, {times[1] / times[3]:.2f}x fp32"
            row = " | ".join(f"{t:.2f}" for t in times)
            print(f"| {name} | {rows} | {row} | {speed_up} | {cast_once} |")
    print("\nLargest difference from fp32 NCHW (64 images):\n")
    for name, operation in OPERATIONS.items():
        expected = operation(reference, 64)
        differences = ", ".join(
            f"{v.name} {float((operation(engines[v.name], 64) - expected).abs().max()):.2g}"
            for v in VARIANTS[1:]
        )
        print(f"- {name}: {differences}")


if __name__ == "__main__":
    main()
