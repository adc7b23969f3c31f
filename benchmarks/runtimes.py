"""The default score's forward pass (`anomaly_terms`) as the service runs it on the CPU
(TorchScript, convolution weights in channels_last order, one thread), against other ways
of running the same float32 weights, side by side in one run:

- `torch.jit.freeze`: constants folded into the graph;
- `torch.jit.optimize_for_inference`: frozen, then convolutions rewritten to oneDNN's own
  tensor layout with fused activations;
- linear weights stored column-major (the transposed matrix contiguous), which some MKL
  GEMM shapes read faster; same values, like channels_last for the convolutions;
- ONNX Runtime (CPU, one thread), on the same method exported from the loaded checkpoint.
  Needs `pip install onnxruntime onnx`; left out with a note when they are missing.

Per batch size it reports the median milliseconds of thread CPU time per batch over
`--rounds` rounds in which the variants take turns (in alternating order), the median of
the per-round speed-ups against the service, and each output's largest difference from
the service's (a non-finite difference means a variant computes a term differently).

    python -m benchmarks.runtimes [--model models/model.pt] [--sizes 1 16 32 64]
        [--rounds 7]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.execution import CpuExecution
from vae_common.checkpoint import load_checkpoint
from vae_common.pixels import IMAGE_SIZE

Terms = tuple[torch.Tensor, ...]
Forward = Callable[[torch.Tensor], Terms]
METHOD = "anomaly_terms"
SERVICE = "service (TorchScript, NHWC)"


def _service_module(model: Path) -> torch.jit.ScriptModule:
    module = load_checkpoint(model, torch.device("cpu")).module
    CpuExecution().prepare(module)  # the service's channels_last weights
    return module


def _frozen(model: Path) -> torch.jit.ScriptModule:
    frozen: torch.jit.ScriptModule = torch.jit.freeze(
        _service_module(model), preserved_attrs=[METHOD]
    )
    return frozen


def _optimized(model: Path) -> torch.jit.ScriptModule:
    return torch.jit.optimize_for_inference(_frozen(model), other_methods=[METHOD])


def _column_major_linear(model: Path) -> torch.jit.ScriptModule:
    module = _service_module(model)
    for parameter in module.parameters():
        if parameter.dim() == 2:
            parameter.data = parameter.data.t().contiguous().t()
    return module


class _Method(torch.nn.Module):
    """The default score's method as `forward`: what the ONNX exporter exports."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self.module.anomaly_terms(x)
        return terms


def _onnx_runtime(model: Path) -> tuple[str, Forward] | str:
    """A one-thread ONNX Runtime session over the exported method, with its name, or why
    there is none."""
    try:
        runtime: Any = importlib.import_module("onnxruntime")
        importlib.import_module("onnx")  # the exporter writes its protobuf with it
    except ImportError:
        return "left out: pip install onnxruntime onnx"
    module = load_checkpoint(model, torch.device("cpu")).module
    example = torch.rand(16, 1, IMAGE_SIZE, IMAGE_SIZE)
    options = runtime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its dynamic batch axis warns on every run otherwise
    with tempfile.TemporaryDirectory() as folder:
        exported = Path(folder) / f"{METHOD}.onnx"
        torch.onnx.export(
            torch.jit.script(_Method(module)),
            (example,),
            exported,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
        session = runtime.InferenceSession(
            str(exported), options, providers=["CPUExecutionProvider"]
        )

    def forward(x: torch.Tensor) -> Terms:
        outputs = session.run(None, {"x": x.numpy()})
        return tuple(torch.from_numpy(output) for output in outputs)

    return f"ONNX Runtime {runtime.__version__}", forward


def _scripted(module: torch.jit.ScriptModule) -> Forward:
    def forward(x: torch.Tensor) -> Terms:
        terms: Terms = module.anomaly_terms(x)
        return terms

    return forward


def _variants(model: Path) -> tuple[dict[str, Forward], list[str]]:
    variants = {
        SERVICE: _scripted(_service_module(model)),
        "+ torch.jit.freeze": _scripted(_frozen(model)),
        "+ optimize_for_inference": _scripted(_optimized(model)),
        "+ linear weights column-major": _scripted(_column_major_linear(model)),
    }
    notes = []
    onnx = _onnx_runtime(model)
    if isinstance(onnx, str):
        notes.append(f"ONNX Runtime {onnx}")
    else:
        name, forward = onnx
        variants[name] = forward
    return variants, notes


def _cpu_ms(forward: Forward, x: torch.Tensor, repeats: int) -> float:
    started = time.thread_time()
    for _ in range(repeats):
        forward(x)
    return (time.thread_time() - started) / repeats * 1e3


def _largest_differences(reference: Terms, terms: Terms) -> str:
    return ", ".join(
        f"{float((a - b).abs().max()):.1e}" for a, b in zip(reference, terms, strict=True)
    )


def report(model: Path, sizes: list[int], rounds: int) -> str:
    """Measure every variant and return the Markdown table (with notes)."""
    with warnings.catch_warnings():
        # torch.jit.freeze, optimize_for_inference and the TorchScript-based ONNX exporter
        # announce their deprecation; they are what is being measured.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        variants, notes = _variants(model)
    generator = torch.Generator().manual_seed(0)
    inputs = {
        rows: torch.rand(rows, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator) for rows in sizes
    }
    differences: dict[tuple[int, str], str] = {}
    times: dict[tuple[int, str], list[float]] = {}
    with torch.inference_mode():
        for rows, x in inputs.items():
            reference = variants[SERVICE](x)
            for name, forward in variants.items():
                differences[rows, name] = _largest_differences(reference, forward(x))
                _cpu_ms(forward, x, 3)  # warm-up: kernels for this shape
        for round_index in range(rounds):
            for rows, x in inputs.items():
                order = list(variants.items())
                if round_index % 2:
                    order.reverse()
                for name, forward in order:
                    repeats = max(4, 160 // rows)
                    times.setdefault((rows, name), []).append(_cpu_ms(forward, x, repeats))
    lines = [
        f"{model}, `{METHOD}`, one thread, {platform.processor() or 'cpu'}, torch "
        f"{torch.__version__}, {datetime.date.today()}; thread CPU ms per batch, medians of "
        f"{rounds} rounds with the variants alternating",
        "",
        "| images | variant | ms per batch | speed-up | largest difference per output |",
        "|--:|---|--:|--:|---|",
    ]
    for rows in sizes:
        service = times[rows, SERVICE]
        for name in variants:
            own = times[rows, name]
            speed_up = statistics.median(s / o for s, o in zip(service, own, strict=True))
            lines.append(
                f"| {rows} | {name} | {statistics.median(own):.2f} | {speed_up:.2f}x "
                f"| {differences[rows, name]} |"
            )
    lines.extend(f"\n{note}" for note in notes)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(report(args.model, args.sizes, args.rounds))


if __name__ == "__main__":
    main()
