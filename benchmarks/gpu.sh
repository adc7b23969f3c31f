#!/usr/bin/env bash
# The GPU checks in one run (about 6 minutes; at most 8 on a machine with one NVIDIA GPU):
#   1. the CUDA-marked tests (tests/test_cuda.py);
#   2. the service on VAE_DEVICE=cuda under wrk load against the bare app: one PNG, 64 and
#      256 PNGs per request, /reconstruct, /sample of 64; then one-client latency (/sample
#      of 64 included);
#   3. two training epochs on the GPU with benchmarks/train_speed.py.
# Run from the repository root:  bash benchmarks/gpu.sh [DATA_ROOT]   (default ../shared/data)
# Needs: an NVIDIA GPU visible to PyTorch, wrk (`apt-get install wrk`); MNIST under DATA_ROOT
# for the training epochs (the load test falls back to synthetic digits without it).
# Output: benchmarks/gpu-results/<UTC time>/ (one Markdown or log file per step).
set -uo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
DATA_ROOT=${1:-../shared/data}
OUT=${GPU_RESULTS:-benchmarks/gpu-results/$(date -u +%Y%m%dT%H%M%SZ)}
failed=0

step() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/summary.txt"; }

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "PyTorch sees no CUDA GPU: nothing to run here (see tests/test_cuda.py)." >&2
    exit 2
fi
command -v wrk >/dev/null || echo "wrk not found: step 2 will fail (apt-get install wrk)" >&2
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee "$OUT/gpu.txt" || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT/gpu.txt"

step "1/3 CUDA tests"
timeout 120 "$PYTHON" -m pytest -m cuda -q -rs tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt" \
    || failed=1

step "2/3 service on VAE_DEVICE=cuda under wrk load"
# 5 scenarios x 2 rounds x (service + bare) x ~9 s, plus one-client runs: ~4 minutes.
# VAE_MAX_BATCH=256 lets one request carry 256 PNGs; larger batches fill the GPU better.
timeout 330 "$PYTHON" -m benchmarks.serve_load \
    --duration 5 --repeat 2 --warmup 2 --latency-duration 3 --mixed-requests 0 \
    --data-root "$DATA_ROOT" \
    --env VAE_DEVICE=cuda --env VAE_MAX_BATCH=256 \
    --scenarios anomaly-1 anomaly-64 anomaly-256 reconstruct-1 sample-64 \
    --output "$OUT/serve_load.md" 2>"$OUT/serve_load.log" || failed=1

step "3/3 two training epochs on the GPU"
if [ -d "$DATA_ROOT/MNIST" ]; then
    timeout 150 "$PYTHON" -m benchmarks.train_speed --data-root "$DATA_ROOT" --epochs 2 \
        --device cuda 2>&1 | tee "$OUT/train_speed.md" || failed=1
else
    echo "no MNIST under $DATA_ROOT: training epochs skipped" | tee "$OUT/train_speed.md"
fi

step "done: results in $OUT (failed=$failed)"
exit "$failed"
