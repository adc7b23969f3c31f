"""benchmarks.runtimes: every variant runs the checkpoint's default-score pass and agrees
with the service's to float32 rounding."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from benchmarks import runtimes


def test_every_variant_is_timed_and_agrees_with_the_service(tiny_model_path: Path) -> None:
    table = runtimes.report(tiny_model_path, sizes=[1, 3], rounds=2)
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    names = {line.split(" | ")[1] for line in rows}
    assert {runtimes.SERVICE, "+ torch.jit.freeze", "+ linear weights column-major"} <= names
    assert len(rows) == 2 * len(names)
    for line in rows:
        milliseconds = float(line.split(" | ")[2])
        assert milliseconds > 0
        if "ONNX" in line:  # its lowering of the reconstruction term may overflow
            continue
        differences = [float(d) for d in line.split(" | ")[4].rstrip(" |").split(", ")]
        assert len(differences) == 3
        assert max(differences) < 1e-2, line  # scores are sums over 784 pixels
    if importlib.util.find_spec("onnxruntime") is None:
        assert "ONNX Runtime left out: pip install onnxruntime onnx" in table
